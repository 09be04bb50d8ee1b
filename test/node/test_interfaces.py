"""The generated interfaces are installed with the fields the design specifies."""

from pathlib import Path

import svlm_ros
from svlm_ros.msg import Narration
from svlm_ros.srv import Ask


def test_narration_fields_in_order():
    assert Narration.get_fields_and_field_types() == {
        "header": "std_msgs/Header",
        "camera": "string",
        "stream_time": "double",
        "text": "string",
        "silent": "boolean",
        "latency": "float",
        "cache_tokens": "uint32",
    }


def test_ask_request_and_response_fields():
    assert Ask.Request.get_fields_and_field_types() == {
        "question": "string",
        "camera": "string",
    }
    assert Ask.Response.get_fields_and_field_types() == {
        "success": "boolean",
        "answer": "string",
        "message": "string",
        "latency": "float",
    }


def test_narration_defaults_and_types():
    message = Narration(camera="front", stream_time=2.0, text="a cat", cache_tokens=7)
    assert message.silent is False
    assert message.header.frame_id == ""
    assert (message.camera, message.stream_time, message.text, message.cache_tokens) == (
        "front",
        2.0,
        "a cat",
        7,
    )


def test_installed_package_is_the_hand_written_one_with_interfaces():
    # Installed before rosidl_generate_interfaces, our __init__.py would be replaced by the
    # generated empty one; imported from the source tree, msg/srv would be missing.
    assert svlm_ros.__doc__, "svlm_ros/__init__.py is the generated empty one"
    package_dir = Path(svlm_ros.__file__).parent
    assert "site-packages" in package_dir.parts, f"svlm_ros imported from {package_dir}"
    assert (package_dir / "node" / "narrator.py").exists()


REPO = Path(__file__).resolve().parents[2]


def run_python_in_repo_root(code: str, env: dict[str, str] | None = None):
    import os
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_interfaces_import_from_the_repository_root():
    # `python -c` puts the current folder first on sys.path: the source svlm_ros/ (no
    # generated msg/srv) is imported, and must still find the built interfaces.
    code = (
        "import svlm_ros, svlm_ros.engine\n"
        "from svlm_ros.msg import Narration\n"
        "from svlm_ros.srv import Ask\n"
        "print(svlm_ros.__file__)\n"
        "print(Narration(camera='x').camera, Ask.Request(question='q').question)\n"
    )
    result = run_python_in_repo_root(code)
    assert result.returncode == 0, result.stderr
    source_init, values = result.stdout.splitlines()
    assert Path(source_init) == REPO / "svlm_ros" / "__init__.py"  # the source did shadow it
    assert values == "x q"


def test_interfaces_missing_from_the_path_say_what_to_do():
    # Only the source folder and the standard library: no build anywhere on sys.path.
    code = (
        "import sys\n"
        "sys.path[:] = ['', *[p for p in sys.path if 'site-packages' not in p]]\n"
        "try:\n"
        "    from svlm_ros.msg import Narration\n"
        "except ImportError as error:\n"
        "    print(error)\n"
        "else:\n"
        "    print('imported')\n"
    )
    result = run_python_in_repo_root(code, env={"PYTHONPATH": ""})
    assert result.returncode == 0, result.stderr
    assert "scripts/setup.sh" in result.stdout, result.stdout
