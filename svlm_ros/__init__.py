"""Streaming vision-language narration for ROS 2.

The streaming engine and the training code in this package never import rclpy; only the
node modules do. The generated interfaces live in ``svlm_ros.msg`` and ``svlm_ros.srv``
once the package is built with colcon.
"""
