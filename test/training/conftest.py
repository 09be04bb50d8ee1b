"""Fixtures of the training tests: real rosbag2 bags, small frame settings, the tiny model.

``svlm_training`` lives in ``training/`` at the top of the repository (``scripts/env.sh`` puts it
on PYTHONPATH); it is put on ``sys.path`` here as well so the tests also run without env.sh.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

TRAINING = Path(__file__).resolve().parents[2] / "training"
if str(TRAINING) not in sys.path:
    sys.path.insert(0, str(TRAINING))

from training_helpers import SMALL_FRAMES  # noqa: E402 - needs svlm_training on sys.path


@pytest.fixture
def build_dataset(tmp_path):
    """Run ``svlm-bag2dataset`` on bags with small frames; returns ``(exit code, out dir)``."""
    from svlm_training.bag2dataset import main

    def run(bags, *extra, out=None):
        out = Path(out or tmp_path / "dataset")
        argv = [str(b) for b in bags] + ["--image-topic", "/camera/image", "--text-topic",
                                          "/commentary", "--out", str(out), "--quiet",
                                          *SMALL_FRAMES, *extra]
        code = main(argv)
        return code, out

    return run

