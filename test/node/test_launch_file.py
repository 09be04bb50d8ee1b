"""launch/narrator.launch.py, read statically: what it starts is what the build installs.

`launch` and `launch_ros` are not installable here, so the file is parsed (never imported);
test_narrator_launch.py runs it for real where launch_pytest exists.
"""

import ast
import os
from pathlib import Path

from ament_index_python.packages import get_package_prefix
from ros_helpers import installed_share

from svlm_ros.node import parameters as narrator_params

LAUNCH_FILE = installed_share("svlm_ros") / "launch" / "narrator.launch.py"


def module_constants(tree: ast.Module) -> dict[str, object]:
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                try:
                    constants[target.id] = ast.literal_eval(node.value)
                except ValueError:
                    pass
    return constants


def calls_named(tree: ast.Module, name: str) -> list[ast.Call]:
    return [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == name
    ]


def keyword_value(call: ast.Call, name: str, constants: dict[str, object]):
    for keyword in call.keywords:
        if keyword.arg == name:
            if isinstance(keyword.value, ast.Name):
                return constants[keyword.value.id]
            return ast.literal_eval(keyword.value)
    raise KeyError(f"{name}= not given")


def test_launch_file_is_installed_and_parses():
    assert LAUNCH_FILE.is_file()
    tree = ast.parse(LAUNCH_FILE.read_text())
    assert [f.name for f in tree.body if isinstance(f, ast.FunctionDef)].count(
        "generate_launch_description"
    ) == 1


def test_launch_file_starts_the_installed_narrator_with_the_installed_params_file():
    tree = ast.parse(LAUNCH_FILE.read_text())
    constants = module_constants(tree)
    (node,) = calls_named(tree, "Node")
    package = keyword_value(node, "package", constants)
    executable = keyword_value(node, "executable", constants)
    assert keyword_value(node, "name", constants) == "narrator"
    # What `ros2 run <package> <executable>` (and launch_ros) would start.
    path = Path(get_package_prefix(package)) / "lib" / package / executable
    assert os.access(path, os.X_OK), f"{path} is not an installed executable"
    params_file = installed_share(package).joinpath(*constants["PARAMS_FILE"])
    assert params_file.is_file(), f"{params_file} is not installed"
    # The remapped default camera topic is the node's default camera topic.
    assert [constants["DEFAULT_CAMERA_TOPIC"]] == narrator_params.SPECS["camera_topics"].default


def test_launch_file_declares_the_documented_arguments():
    tree = ast.parse(LAUNCH_FILE.read_text())
    declared = {
        ast.literal_eval(call.args[0]): call
        for call in calls_named(tree, "DeclareLaunchArgument")
    }
    assert set(declared) == {
        "namespace", "params_file", "camera_topic", "model_path", "use_sim_time", "log_level"
    }
    assert keyword_value(declared["namespace"], "default_value", {}) == "svlm"
    assert keyword_value(declared["use_sim_time"], "default_value", {}) == "false"
