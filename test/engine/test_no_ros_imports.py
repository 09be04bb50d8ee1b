"""The engine and image conversion never import rclpy, so they run on a training box.

Checked in a fresh interpreter, in this very environment where rclpy *is* importable: an
import of rclpy anywhere under the engine would show up in ``sys.modules``.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
import importlib, pkgutil, sys
import svlm_ros.engine, svlm_ros.image_conversion
modules = ["svlm_ros.image_conversion"]
for info in pkgutil.walk_packages(svlm_ros.engine.__path__, "svlm_ros.engine."):
    importlib.import_module(info.name)
    modules.append(info.name)
ros = sorted(name for name in sys.modules if name.split(".")[0] in {"rclpy", "rosidl_runtime_py"})
print(len(modules))
print(",".join(ros))
"""


def test_engine_and_image_conversion_load_no_rclpy():
    probe = subprocess.run([sys.executable, "-c", "import rclpy"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("rclpy is not importable here, so no import of it could show up")
    result = subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    count, loaded = (result.stdout.splitlines() + [""])[:2]
    assert int(count) >= 12, f"only {count} engine modules were imported"
    assert loaded == "", f"importing the engine loaded ROS modules: {loaded}"
