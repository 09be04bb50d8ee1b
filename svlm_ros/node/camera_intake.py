"""Camera intake: one image subscription per camera; frames converted and offered to the stream.

An image callback converts the message to RGB, offers it to the camera's frame sampler and
returns: it never runs the model. Each camera has its own mutually exclusive callback group,
so a camera's frames stay in order while cameras are taken in parallel. One bad message is
counted and dropped; it never ends the node.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

from svlm_ros.engine.vision_input import fit_frame_size
from svlm_ros.image_conversion import compressed_image_to_rgb, image_message_to_rgb
from svlm_ros.node.stamps import stamp_to_seconds
from svlm_ros.node.streams import CameraStream, Streams


class CameraIntake:
    """Subscribes to every camera of ``streams`` and feeds their frame samplers.

    Args:
        node: The node that owns the subscriptions.
        streams: The cameras and their sessions.
        values: The node's parameter values (QoS, ``max_input_pixels``).
        on_sampled: Called (from the image callback) when a frame entered a stream; the
            narration worker's wake-up.
    """

    def __init__(
        self,
        node: Node,
        streams: Streams,
        values: Mapping[str, Any],
        on_sampled: Callable[[], None],
    ) -> None:
        self._node = node
        self._streams = streams
        self._values = values
        self._on_sampled = on_sampled
        self._subscriptions: dict[str, Any] = {}
        self._groups = {
            camera.spec.name: MutuallyExclusiveCallbackGroup() for camera in streams.cameras
        }

    @property
    def callback_groups(self) -> int:
        """Executor threads the intake can use at once (one per camera)."""
        return len(self._groups)

    def subscribe(self) -> None:
        """Subscribe to every camera that has no subscription yet."""
        for camera in self._streams.cameras:
            if camera.spec.name not in self._subscriptions:
                self._subscriptions[camera.spec.name] = self._subscribe(camera)

    def unsubscribe(self) -> None:
        """Destroy every image subscription."""
        for subscription in self._subscriptions.values():
            self._node.destroy_subscription(subscription)
        self._subscriptions.clear()

    def _qos(self) -> QoSProfile:
        reliability = (
            ReliabilityPolicy.RELIABLE
            if self._values["qos_reliability"] == "reliable"
            else ReliabilityPolicy.BEST_EFFORT
        )
        return QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=self._values["qos_depth"],
            reliability=reliability,
            durability=DurabilityPolicy.VOLATILE,
        )

    def _subscribe(self, camera: CameraStream):
        compressed = camera.spec.transport == "compressed"
        callback: Callable[[Any], None] = (
            (lambda message: self._on_compressed_image(camera, message))
            if compressed
            else (lambda message: self._on_raw_image(camera, message))
        )
        return self._node.create_subscription(
            CompressedImage if compressed else Image,
            camera.spec.subscription_topic,
            callback,
            self._qos(),
            callback_group=self._groups[camera.spec.name],
        )

    def _on_raw_image(self, camera: CameraStream, message: Image) -> None:
        self.offer_frame(
            camera,
            message,
            lambda: image_message_to_rgb(message, max_pixels=self._values["max_input_pixels"]),
        )

    def _on_compressed_image(self, camera: CameraStream, message: CompressedImage) -> None:
        self.offer_frame(
            camera,
            message,
            lambda: compressed_image_to_rgb(
                format=message.format,
                data=message.data,
                max_pixels=self._values["max_input_pixels"],
            ),
        )

    def offer_frame(self, camera: CameraStream, message, convert: Callable[[], Any]) -> None:
        """Convert a frame and hand it to the camera's sampler; cheap, never runs the model."""
        camera.stats.record_received()
        session = camera.session
        if not self._streams.active or session is None:
            return  # counted as dropped: received, neither rejected nor sampled
        try:
            rgb = convert()
            size = rgb.shape[:2]
            if size != camera.checked_size:
                # The vision input refuses extreme aspect ratios; refuse such frames here,
                # where they are counted, not in the middle of a round.
                fit_frame_size(*size, session.config.max_pixels, session.config.min_pixels)
                camera.checked_size = size
            sampled = session.add_frame(rgb, stamp_to_seconds(message.header.stamp))
        except Exception as error:  # noqa: BLE001 - ImageRejected, FrameRejected, anything:
            # one bad message is counted and dropped, it never ends the node
            camera.stats.record_rejection(str(error))
            self._node.get_logger().warning(
                f"camera {camera.spec.name}: frame rejected: {error}", throttle_duration_sec=5.0
            )
            return
        camera.frame_id = message.header.frame_id
        camera.stats.record_accepted(sampled)
        if sampled:
            self._on_sampled()
