"""Camera intake: one image subscription per camera; frames offered to the stream.

An image callback asks the camera's frame sampler whether the frame is needed, converts it
to RGB only then (a 30 Hz camera at fps 2 has 28 of 30 frames per second that are not), hands
it over and returns: it never runs the model. Each camera has its own mutually exclusive
callback group, so a camera's frames stay in order while cameras are taken in parallel. One
bad message is counted and dropped; it never ends the node. With ``qos_reliability: auto`` each
subscription takes the reliability and durability its publishers offer (``qos_matching.py``),
re-checked every ``QOS_RECHECK_SECONDS`` while publishers come and go. Every arrival is also
recorded for the transport monitor (frames lost before the node), and the newest frame's stamp
and arrival time map the node clock to the camera clock (for closing periods on time).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.clock import Clock, ClockType
from rclpy.event_handler import SubscriptionEventCallbacks
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image

from svlm_ros.engine.frame_sampler import FrameRejected
from svlm_ros.engine.vision_input import fit_frame_size
from svlm_ros.image_conversion import compressed_image_to_rgb, image_message_to_rgb
from svlm_ros.node.qos_matching import (
    RELIABLE,
    TRANSIENT_LOCAL,
    QosChoice,
    choose_qos,
    offers_from_endpoints,
)
from svlm_ros.node.stamps import stamp_to_seconds
from svlm_ros.node.streams import CameraStream, Streams

#: How often ``qos_reliability: auto`` looks at a camera topic's publishers again.
QOS_RECHECK_SECONDS = 2.0

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE = b"\xff\xd8\xff"


def check_compressed_format(format: str, data) -> None:  # `format`: the message field
    """Raise ``FrameRejected`` when ``data`` is not what ``format`` declares (jpeg or png).

    A decoder would read a PNG labelled "jpeg" all the same; a publisher that mislabels its
    data is broken, and says so here rather than by chance later. Unknown formats are left to
    the converter, which names them.
    """
    tokens = format.lower().replace(";", " ").replace(",", " ").split()
    codec = next((token for token in tokens if token in ("jpeg", "jpg", "png")), None)
    if codec is None:
        return
    head = bytes(data[:8])
    actual = "png" if head == _PNG_SIGNATURE else "jpeg" if head[:3] == _JPEG_SIGNATURE else None
    declared = "png" if codec == "png" else "jpeg"
    if actual != declared:
        found = f"{actual} data" if actual else f"data starting {head[:4].hex(' ')}"
        raise FrameRejected(f"format says {declared} but the message holds {found}")


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
        #: Per camera, the QoS subscribed with and why (``qos_reliability: auto``, or given).
        self.qos_choices: dict[str, QosChoice] = {}
        self._recheck_timer = None
        self._groups = {
            camera.spec.name: MutuallyExclusiveCallbackGroup() for camera in streams.cameras
        }

    @property
    def callback_groups(self) -> int:
        """Executor threads the intake can use at once (one per camera)."""
        return len(self._groups)

    @property
    def auto_qos(self) -> bool:
        return self._values["qos_reliability"] == "auto"

    def subscribe(self) -> None:
        """Subscribe to every camera that has no subscription yet."""
        for camera in self._streams.cameras:
            if camera.spec.name not in self._subscriptions:
                self._subscriptions[camera.spec.name] = self._subscribe(camera)
        if self.auto_qos and self._recheck_timer is None:
            # Steady time, not the node's clock: publishers come and go in wall time, and
            # under use_sim_time with no /clock yet ROS time stands still (the timer would
            # never fire) or runs at the simulation's pace.
            self._recheck_timer = self._node.create_timer(
                QOS_RECHECK_SECONDS, self.recheck_qos,
                clock=Clock(clock_type=ClockType.STEADY_TIME),
            )

    def unsubscribe(self) -> None:
        """Destroy every image subscription."""
        if self._recheck_timer is not None:
            self._node.destroy_timer(self._recheck_timer)
            self._recheck_timer = None
        for subscription in self._subscriptions.values():
            self._node.destroy_subscription(subscription)
        self._subscriptions.clear()
        # No subscription, no QoS: status and /diagnostics no longer show one.
        self.qos_choices.clear()
        for camera in self._streams.cameras:
            camera.qos_choice = None

    def _choose(self, camera: CameraStream) -> QosChoice:
        if not self.auto_qos:
            given = self._values["qos_reliability"]
            return QosChoice(given, "volatile", -1, f"qos_reliability: {given} (given)")
        endpoints = self._node.get_publishers_info_by_topic(camera.spec.subscription_topic)
        return choose_qos(offers_from_endpoints(endpoints))

    def recheck_qos(self) -> None:
        """Resubscribe a camera whose publishers now offer another QoS (``auto`` only)."""
        for camera in self._streams.cameras:
            name = camera.spec.name
            if name not in self._subscriptions:
                continue
            choice = self._choose(camera)
            held = self.qos_choices.get(name)
            if held and (held.reliability, held.durability) == (choice.reliability,
                                                                choice.durability):
                # The reason's publisher count may change.
                self.qos_choices[name] = camera.qos_choice = choice
                continue
            self._node.destroy_subscription(self._subscriptions.pop(name))
            self._subscriptions[name] = self._subscribe(camera, choice)

    def _qos(self, choice: QosChoice) -> QoSProfile:
        return QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=self._values["qos_depth"],
            reliability=(ReliabilityPolicy.RELIABLE if choice.reliability == RELIABLE
                         else ReliabilityPolicy.BEST_EFFORT),
            durability=(DurabilityPolicy.TRANSIENT_LOCAL if choice.durability == TRANSIENT_LOCAL
                        else DurabilityPolicy.VOLATILE),
        )

    def _subscribe(self, camera: CameraStream, choice: QosChoice | None = None):
        choice = choice or self._choose(camera)
        self.qos_choices[camera.spec.name] = camera.qos_choice = choice
        self._node.get_logger().info(
            f"camera {camera.spec.name}: subscribing {camera.spec.subscription_topic} "
            f"{choice.reliability}/{choice.durability} ({choice.reason})")
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
            self._qos(choice),
            callback_group=self._groups[camera.spec.name],
            # No QoS event handlers: rclpy's default ones are waitables that its executor
            # builds wait sets from without a guard, so destroying a subscription (the auto
            # QoS re-check, cleanup) while another executor thread waits crashed the process
            # with InvalidHandle (seen in CI). The transport monitor reports what they would.
            event_callbacks=SubscriptionEventCallbacks(use_default_callbacks=False),
        )

    def _on_raw_image(self, camera: CameraStream, message: Image) -> None:
        self.offer_frame(
            camera,
            message,
            lambda: image_message_to_rgb(message, max_pixels=self._values["max_input_pixels"]),
        )

    def _on_compressed_image(self, camera: CameraStream, message: CompressedImage) -> None:
        def convert():
            check_compressed_format(message.format, message.data)
            return compressed_image_to_rgb(
                format=message.format,
                data=message.data,
                max_pixels=self._values["max_input_pixels"],
            )

        self.offer_frame(camera, message, convert)

    def offer_frame(self, camera: CameraStream, message, convert: Callable[[], Any]) -> None:
        """Hand a frame to the camera's sampler, converting it only if it is needed.

        Cheap; never runs the model. ``convert`` returns the RGB array or raises for bad data.
        """
        camera.stats.record_received()
        stamp = stamp_to_seconds(message.header.stamp)
        camera.arrivals.record(stamp, len(message.data))
        session = camera.session
        if not self._streams.active or session is None:
            return  # counted as dropped: received, neither rejected nor sampled

        def checked_frame():
            rgb = convert()
            size = rgb.shape[:2]
            if size != camera.checked_size:
                # The vision input refuses extreme aspect ratios; refuse such frames here,
                # where they are counted, not in the middle of a round.
                fit_frame_size(*size, session.config.max_pixels, session.config.min_pixels)
                camera.checked_size = size
            return rgb

        try:
            sampled = session.sampler.offer(stamp, checked_frame)
            camera.note_frame(stamp, self._node.get_clock().now().nanoseconds * 1e-9)
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
