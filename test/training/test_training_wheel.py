"""``pip install .[train]``: the wheel's training commands work with no ROS and no checkout."""

from __future__ import annotations

import subprocess
import sys

import pytest
from bag_factory import BagSpec, write_bag

CHECK = """
import sys
from svlm_training import bag_reading, trainer, evaluation, export
assert bag_reading.__file__.startswith(sys.argv[1]), bag_reading.__file__
assert "rclpy" not in sys.modules, "the training package must not import rclpy"
found = bag_reading.narration_msg_file()
assert str(found).startswith(sys.argv[1]), found
print("training ok", found)
"""


@pytest.mark.slow  # the wheel is built and installed once per session: about 20 s
def test_wheel_ships_the_training_package_and_the_narration_type(tmp_path, installed_wheel):
    # No ROS environment and no checkout on the path: only the wheel (and the venv's packages).
    target, env = installed_wheel.site, installed_wheel.env
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
