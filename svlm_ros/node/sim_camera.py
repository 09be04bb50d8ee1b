"""The simulated camera as a ROS 2 node: the world of ``svlm_ros.sim`` on real topics.

Publishes (relative names; run it in the narrator's namespace or remap):
  * ``camera/image_raw`` (``sensor_msgs/Image``, rgb8) at ``rate`` Hz;
  * ``ground_truth`` (``svlm_ros/Narration``, as the narrator's own output): one message at
    the end of every second, stamped like a narration (end of the second on the camera clock),
    with the event's sentence, or ``silent`` for a quiet second; so narration and ground truth
    pair up by stamp. (Bags written by ``svlm-sim bag`` carry it as ``std_msgs/String``.)
  * ``/clock`` (``rosgraph_msgs/Clock``) when ``sim_time`` is on.

``wait_for_subscribers`` holds the world at second 0 until that many subscriptions matched the
camera topic, so a narrator started alongside sees the stream from its first frame and its
seconds line up with the world's (the ground truth is per world second).

Two clocks:
  * wall time (default): frames are stamped with the node's clock as they are made;
  * sim time (``sim_time: true``): the node owns the clock. It publishes ``/clock`` itself,
    starting at ``start_stamp`` and advancing ``1 / rate`` per frame, ``speed`` times faster than
    real time; narrators started with ``use_sim_time`` follow it.
"""

from __future__ import annotations

from typing import Any

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image

from svlm_ros.msg import Narration
from svlm_ros.node.stamps import seconds_to_stamp
from svlm_ros.sim.world import World, WorldConfig

PARAMETERS: dict[str, tuple[Any, str]] = {
    "seed": (0, "Seed of the world: the same seed gives the same scene and ground truth."),
    "rate": (30.0, "Camera frames per second."),
    "width": (224, "Frame width in pixels."),
    "height": (168, "Frame height in pixels."),
    "seconds": (0, "Stop after this many stream seconds (0: run until stopped)."),
    "sim_time": (False, "Publish /clock and stamp frames with it instead of the wall clock."),
    "speed": (1.0, "With sim_time: stream seconds per wall second (2.0 runs twice as fast)."),
    "start_stamp": (1_750_000_000.0, "With sim_time: the clock at stream second 0."),
    "frame_id": ("sim_camera", "Header frame_id of the images."),
    "reliable": (False, "Publish images reliably (default: best effort, as camera drivers)."),
    "wait_for_subscribers": (0, "Start the world only once this many subscriptions matched the "
                                "camera topic (0: start at once)."),
}


class SimCameraNode(Node):
    """Publishes the simulated world's camera and ground truth; see the module docstring."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("sim_camera", **kwargs)
        values = {}
        for name, (default, description) in PARAMETERS.items():
            values[name] = self.declare_parameter(
                name, default, ParameterDescriptor(description=description, read_only=True)
            ).value
        problems = []
        if not 0 < values["rate"] <= 120:
            problems.append(f"rate must be in (0, 120], got {values['rate']}")
        if values["speed"] <= 0:
            problems.append(f"speed must be > 0, got {values['speed']}")
        if problems:
            raise ValueError("; ".join(problems))
        self.values = values
        self.world = World(WorldConfig(seed=values["seed"], width=values["width"],
                                       height=values["height"]))
        reliability = (ReliabilityPolicy.RELIABLE if values["reliable"]
                       else ReliabilityPolicy.BEST_EFFORT)
        self.images = self.create_publisher(
            Image, "camera/image_raw", QoSProfile(depth=5, reliability=reliability)
        )
        self.truth = self.create_publisher(Narration, "ground_truth", 50)
        self.clock = self.create_publisher(Clock, "/clock", 10) if values["sim_time"] else None
        self.frame = 0
        self.truth_seconds = 0  # seconds whose ground truth went out
        self.wall_origin: float | None = None  # set when the world starts
        self.finished = False
        # Wall timer in both modes: sim time is driven by this node, not by /clock.
        period = 1.0 / (values["rate"] * (values["speed"] if values["sim_time"] else 1.0))
        self.timer = self.create_timer(period, self._tick)
        self.get_logger().info(
            f"simulated camera: seed {values['seed']}, {values['width']}x{values['height']} at "
            f"{values['rate']:g} Hz, {'sim' if values['sim_time'] else 'wall'} time, background "
            f"{self.world.background_style}"
        )

    def _stream_time(self) -> float:
        if self.values["sim_time"]:
            return self.frame / self.values["rate"]
        return self.get_clock().now().nanoseconds * 1e-9 - self.wall_origin

    def _origin(self) -> float:
        return self.values["start_stamp"] if self.values["sim_time"] else self.wall_origin

    def _tick(self) -> None:
        values = self.values
        if self.wall_origin is None:
            if self.images.get_subscription_count() < values["wait_for_subscribers"]:
                return
            self.wall_origin = self.get_clock().now().nanoseconds * 1e-9
        t = self._stream_time()
        # Ground truth of every second that has ended, stamped with its end.
        while self.truth_seconds < int(t) and (not values["seconds"]
                                               or self.truth_seconds < values["seconds"]):
            self._publish_truth(self.truth_seconds)
            self.truth_seconds += 1
        if values["seconds"] and t >= values["seconds"]:
            if not self.finished:
                self.finished = True
                self.get_logger().info(f"{values['seconds']} s simulated; done")
            return
        stamp = self._origin() + t
        if self.clock is not None:
            self.clock.publish(Clock(clock=seconds_to_stamp(stamp)))
        picture = self.world.render(t)
        message = Image()
        message.header.stamp = seconds_to_stamp(stamp)
        message.header.frame_id = values["frame_id"]
        message.height, message.width = picture.shape[:2]
        message.encoding = "rgb8"
        message.step = message.width * 3
        message.data = picture.tobytes()
        self.images.publish(message)
        self.frame += 1

    def _publish_truth(self, second: int) -> None:
        sentence = self.world.sentence_at(second)
        message = Narration()
        message.header.stamp = seconds_to_stamp(self._origin() + second + 1)
        message.header.frame_id = self.values["frame_id"]
        message.camera = "sim"
        message.stream_time = float(second + 1)
        message.text = sentence
        message.silent = not sentence
        self.truth.publish(message)

    def flush(self, timeout: float = 2.0) -> None:
        """Wait (bounded) until reliable subscribers acknowledged what was published.

        The last second's ground truth goes out just before the process exits; without this,
        DDS may drop it with the writer (Fast DDS 2.x on Jazzy did in CI).
        """
        for publisher in (self.truth, self.images):
            publisher.wait_for_all_acked(Duration(seconds=timeout))


def main(args: list[str] | None = None) -> int:
    """Run the simulated camera until ``seconds`` have passed or it is interrupted."""
    rclpy.init(args=args)
    node = None
    try:
        node = SimCameraNode()
        while rclpy.ok() and not node.finished:
            rclpy.spin_once(node, timeout_sec=0.1)
        if node.finished:
            node.flush()
        return 0
    except (KeyboardInterrupt, ExternalShutdownException):
        return 0
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
