"""The simulated camera world (numpy and OpenCV; bags through ``rosbags``; never rclpy).

- ``world``: a seeded procedural world with per-second ground-truth sentences.
- ``bag_writer``: rosbag2 files (sqlite3 or mcap) of the world's camera and ground truth.
- ``cli``: ``svlm-sim bag ...`` (and ``svlm-sim publish ...``, which starts the ROS camera node
  in ``svlm_ros.node.sim_camera``).
"""

from svlm_ros.sim.world import Event, World, WorldConfig, parse_event

__all__ = ["Event", "World", "WorldConfig", "parse_event"]
