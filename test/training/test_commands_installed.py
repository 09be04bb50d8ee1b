"""The colcon build installs the training package and its commands (issue: the walk-through in
training/README.md calls them by name after `source scripts/env.sh`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COMMANDS = ["svlm-bag2dataset", "svlm-train", "svlm-export", "svlm-eval", "svlm-narrate",
            "svlm-make-sim-narrator", "svlm-sim-ablations"]


@pytest.mark.parametrize("command", COMMANDS)
def test_training_command_is_on_the_path_from_the_colcon_install(command):
    path = shutil.which(command)
    assert path is not None, f"{command} is not on PATH after sourcing scripts/env.sh"
    assert Path(os.path.abspath(path)).is_relative_to(REPO / "install"), path
    # Nothing from the checkout on PYTHONPATH: the installed svlm_training must be found.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
        if p and not Path(p).resolve().is_relative_to((REPO / "training").resolve()))
    done = subprocess.run([path, "--help"], capture_output=True, text=True, env=env,
                          cwd="/", timeout=120)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
