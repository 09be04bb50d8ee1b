"""Start the narrator node (default /svlm/narrator) with the installed parameter file.

    ros2 launch svlm_ros narrator.launch.py camera_topic:=/front/image_raw model_path:=/models/x

Arguments:
    namespace: namespace of the node and all its names (default svlm).
    params_file: parameter file (default: the installed config/narrator.yaml).
    camera_topic: topic of the default camera (remaps camera/image_raw, and
        camera/image_raw/compressed to <camera_topic>/compressed). For several cameras set
        camera_topics in a parameter file instead.
    model_path: checkpoint directory; when given it overrides the parameter file's model_path.
    use_sim_time: take the node clock from /clock (default false).
    log_level: ROS log level of the node (default info).
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

PACKAGE = "svlm_ros"
EXECUTABLE = "narrator"
PARAMS_FILE = ("config", "narrator.yaml")
# The node's default camera topic (camera_topics in config/narrator.yaml).
DEFAULT_CAMERA_TOPIC = "camera/image_raw"


def _narrator(context, *args, **kwargs):
    camera_topic = LaunchConfiguration("camera_topic").perform(context)
    model_path = LaunchConfiguration("model_path").perform(context)
    use_sim_time = LaunchConfiguration("use_sim_time").perform(context).lower() == "true"
    overrides = {"use_sim_time": use_sim_time}
    if model_path:
        overrides["model_path"] = model_path
    return [
        Node(
            package=PACKAGE,
            executable=EXECUTABLE,
            name="narrator",
            namespace=LaunchConfiguration("namespace"),
            parameters=[LaunchConfiguration("params_file"), overrides],
            remappings=[
                (DEFAULT_CAMERA_TOPIC, camera_topic),
                (f"{DEFAULT_CAMERA_TOPIC}/compressed", f"{camera_topic.rstrip('/')}/compressed"),
            ],
            ros_arguments=["--log-level", LaunchConfiguration("log_level").perform(context)],
            output="screen",
            emulate_tty=True,
        )
    ]


def generate_launch_description() -> LaunchDescription:
    default_params_file = os.path.join(get_package_share_directory(PACKAGE), *PARAMS_FILE)
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
            DeclareLaunchArgument(
                "camera_topic",
                default_value=DEFAULT_CAMERA_TOPIC,
                description="Image topic of the default camera (remaps camera/image_raw).",
            ),
            DeclareLaunchArgument(
                "model_path",
                default_value="",
                description="Checkpoint directory; empty keeps the parameter file's model_path.",
            ),
            DeclareLaunchArgument(
                "use_sim_time", default_value="false", description="Use /clock as node clock."
            ),
            DeclareLaunchArgument(
                "log_level", default_value="info", description="Log level of the node."
            ),
            OpaqueFunction(function=_narrator),
        ]
    )
