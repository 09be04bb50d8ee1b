"""The pip world: ``setup.py`` builds a wheel whose engine works without ROS on the path."""

from __future__ import annotations

import subprocess
import sys

import pytest

ENGINE_CHECK = """
import sys
import svlm_ros.engine.streaming_session, svlm_ros.engine.benchmark, svlm_ros.engine.tiny_model
assert svlm_ros.__file__.startswith(sys.argv[1]), svlm_ros.__file__
assert "rclpy" not in sys.modules, "the engine must not import rclpy"
print("engine ok")
"""


@pytest.mark.slow  # the wheel is built and installed once per session: about 20 s
def test_wheel_installs_the_engine_and_its_commands_without_ros(tmp_path, installed_wheel):
    # No ROS environment at all: only the installed wheel (and the venv's torch etc.).
    target, env = installed_wheel.site, installed_wheel.env
    check = subprocess.run([sys.executable, "-c", ENGINE_CHECK, str(target)], env=env,
                           cwd=tmp_path, capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    assert "engine ok" in check.stdout
    tiny = subprocess.run([str(target / "bin" / "svlm-make-tiny"), str(tmp_path / "tiny")],
                          env=env, cwd=tmp_path, capture_output=True, text=True)
    assert tiny.returncode == 0, tiny.stderr
    assert (tmp_path / "tiny" / "model.safetensors").is_file()
