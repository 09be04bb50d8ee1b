"""launch/narrator.launch.py brings up /svlm/narrator: it narrates a camera and answers /svlm/ask.

Needs launch_pytest, which a ROS 2 install has (ros-<distro>-launch-pytest) but PyPI does
not: on the pip-built environment of scripts/setup.sh this module is skipped, and
test_launch_file.py checks the launch file statically instead.
"""

import pytest

launch_pytest = pytest.importorskip(
    "launch_pytest",
    reason="launch_pytest is not installed (not on PyPI); runs on a ROS 2 install",
)

from launch import LaunchDescription  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
from narrator_harness import NarratorHarness  # noqa: E402
from ros_helpers import installed_share  # noqa: E402

CAMERA_TOPIC = "/launch_test/image_raw"


@launch_pytest.fixture
def narrator_launch(tiny_model_path):
    launch_file = installed_share("svlm_ros") / "launch" / "narrator.launch.py"
    arguments = {
        "model_path": str(tiny_model_path),
        "camera_topic": CAMERA_TOPIC,
        "log_level": "info",
    }
    return LaunchDescription(
        [
            IncludeLaunchDescription(
                PythonLaunchDescriptionSource(str(launch_file)),
                launch_arguments=arguments.items(),
            ),
            launch_pytest.actions.ReadyToTest(),
        ]
    )


@pytest.mark.launch(fixture=narrator_launch)
def test_launch_file_narrates_the_remapped_camera_and_answers():
    harness = NarratorHarness("/svlm", node_name="launch_test_client")
    try:
        harness.add_feed(CAMERA_TOPIC, "launch_test_frame")
        harness.start_feeds(rate=30.0)
        (narration,) = harness.wait_narrations("camera", 1, 120.0)[:1]
        assert narration.header.frame_id == "launch_test_frame"
        response = harness.ask("What is in view?")
        assert response.success, response.message
    finally:
        harness.close()
