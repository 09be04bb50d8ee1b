"""launch/narrator.launch.py brings up /svlm/narrator serving /svlm/ask.

Needs launch_pytest, which a ROS 2 install has (ros-<distro>-launch-pytest) but PyPI does
not: on the pip-built environment of scripts/setup.sh this module is skipped.
"""

import pytest

launch_pytest = pytest.importorskip(
    "launch_pytest",
    reason="launch_pytest is not installed (not on PyPI); runs on a ROS 2 install",
)

from launch import LaunchDescription  # noqa: E402
from launch.actions import IncludeLaunchDescription  # noqa: E402
from launch.launch_description_sources import PythonLaunchDescriptionSource  # noqa: E402
from ros_helpers import call_service, installed_share, wait_for_service  # noqa: E402

from svlm_ros.srv import Ask  # noqa: E402


@launch_pytest.fixture
def narrator_launch():
    launch_file = installed_share("svlm_ros") / "launch" / "narrator.launch.py"
    return LaunchDescription(
        [
            IncludeLaunchDescription(PythonLaunchDescriptionSource(str(launch_file))),
            launch_pytest.actions.ReadyToTest(),
        ]
    )


@pytest.mark.launch(fixture=narrator_launch)
def test_launch_file_serves_ask(ros_node, executor):
    client = ros_node.create_client(Ask, "/svlm/ask")
    wait_for_service(client, timeout=30.0)
    response = call_service(executor, client, Ask.Request(question="What is in view?"), 10.0)
    assert response.success or response.message
