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

#: Frame settings that keep the tiny-model tests small: the 64x48 synthetic camera becomes
#: 56x56 frames, 4 video tokens per second.
SMALL_FRAMES = ["--max-pixels", "6272", "--min-pixels", "3136"]


@pytest.fixture
def build_dataset(tmp_path):
    """Run ``svlm-bag2dataset`` on bags; returns ``(exit code, stdout, stderr, out dir)``."""
    from svlm_training.bag2dataset import main

    def run(bags, *extra, out=None, capsys=None):
        out = Path(out or tmp_path / "dataset")
        argv = [str(b) for b in bags] + ["--image-topic", "/camera/image", "--text-topic",
                                          "/commentary", "--out", str(out), "--quiet",
                                          *SMALL_FRAMES, *extra]
        code = main(argv)
        return code, out

    return run


def leftovers(directory: Path) -> list[str]:
    """Hidden temporary folders a failed build might have left behind."""
    return sorted(p.name for p in directory.iterdir() if ".incomplete" in p.name)
