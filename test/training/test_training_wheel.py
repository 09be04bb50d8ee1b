"""``pip install .[train]``: the wheel's training commands work with no ROS and no checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from bag_factory import BagSpec, write_bag

REPO = Path(__file__).resolve().parents[2]

CHECK = """
import sys
from svlm_training import bag_reading, trainer, evaluation, export
assert bag_reading.__file__.startswith(sys.argv[1]), bag_reading.__file__
assert "rclpy" not in sys.modules, "the training package must not import rclpy"
found = bag_reading.narration_msg_file()
assert str(found).startswith(sys.argv[1]), found
print("training ok", found)
"""


@pytest.mark.slow  # builds and installs a wheel: about 20 s
def test_wheel_ships_the_training_package_and_the_narration_type(tmp_path):
    wheels, target = tmp_path / "wheels", tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         str(REPO), "-w", str(wheels)],
        check=True, cwd=tmp_path,
    )
    (wheel,) = wheels.glob("svlm_ros-*.whl")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
         str(target), str(wheel)],
        check=True, cwd=tmp_path,
    )
    # No ROS environment and no checkout on the path: only the wheel (and the venv's packages).
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("AMENT", "COLCON", "ROS", "CMAKE", "PYTHONPATH"))}
    env["PYTHONPATH"] = str(target)
    check = subprocess.run([sys.executable, "-c", CHECK, str(target)], env=env, cwd=tmp_path,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert "training ok" in check.stdout

    # The installed command reads a bag with svlm_ros/msg/Narration text.
    bag = write_bag(tmp_path / "bag", BagSpec(seconds=4, text_type="narration"))
    result = subprocess.run(
        [str(target / "bin" / "svlm-bag2dataset"), str(bag), "--image-topic", "/camera/image",
         "--text-topic", "/commentary", "--out", str(tmp_path / "data"), "--quiet",
         "--max-pixels", "6272", "--min-pixels", "3136"],
        env=env, cwd=tmp_path, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "dataset written to" in result.stdout
    assert (tmp_path / "data" / "manifest.json").is_file()
