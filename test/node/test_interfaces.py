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
