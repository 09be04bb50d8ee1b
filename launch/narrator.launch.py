"""Start the narrator node as /svlm/narrator with the installed parameter file."""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    default_params_file = os.path.join(
        get_package_share_directory("svlm_ros"), "config", "narrator.yaml"
    )
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "namespace", default_value="svlm", description="Namespace of the node."
            ),
            DeclareLaunchArgument(
                "params_file",
                default_value=default_params_file,
                description="Parameter file in the `/**: ros__parameters:` form.",
            ),
            Node(
                package="svlm_ros",
                executable="narrator",
                name="narrator",
                namespace=LaunchConfiguration("namespace"),
                parameters=[LaunchConfiguration("params_file")],
                output="screen",
                emulate_tty=True,
            ),
        ]
    )
