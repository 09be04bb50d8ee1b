"""Drive a running narrator over real DDS: publish camera frames, collect what it publishes.

``NarratorHarness`` owns an rclpy context, a node and a background executor thread, so tests
can wait for conditions (``wait_for``) while messages keep arriving. ``CameraFeed`` publishes one
camera's frames at a fixed rate from a background thread, stamped with a camera clock the test
controls (an offset from wall time that can jump ahead to fake a stall). Every wait has a
deadline and wakes as soon as a message changes what it waits for.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import rclpy
from builtin_interfaces.msg import Time
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.client import Client
from rclpy.context import Context
from rclpy.parameter import Parameter
from rclpy.parameter_client import AsyncParameterClient
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rclpy.task import Future
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from svlm_ros.msg import Answer, Narration, NarratorStatus
from svlm_ros.node.steady_executor import SteadyMultiThreadedExecutor
from svlm_ros.srv import Ask

try:
    from diagnostic_msgs.msg import DiagnosticArray
except ImportError:  # pragma: no cover
    DiagnosticArray = None


# The state each lifecycle transition ends in when it succeeds.
TRANSITION_GOALS = {
    Transition.TRANSITION_CONFIGURE: "inactive",
    Transition.TRANSITION_ACTIVATE: "active",
    Transition.TRANSITION_DEACTIVATE: "inactive",
    Transition.TRANSITION_CLEANUP: "unconfigured",
}


def to_stamp(seconds: float) -> Time:
    nanoseconds = round(seconds * 1e9)
    return Time(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)


def from_stamp(stamp: Time) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def synthetic_frame(height: int, width: int, seed: int = 0) -> np.ndarray:
    """An RGB frame with gradients and blocks (compresses like a camera image)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    frame = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1)
    frame = frame.astype(np.uint8)
    for _ in range(8):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        frame[y0 : y0 + height // 6, x0 : x0 + width // 6] = rng.integers(0, 256, 3)
    return frame


def raw_image(
    frame: np.ndarray, stamp: float, frame_id: str, encoding: str = "rgb8"
) -> Image:
    message = Image(
        height=frame.shape[0], width=frame.shape[1], encoding=encoding,
        step=frame.shape[1] * 3, is_bigendian=0,
    )  # fmt: skip
    message.header.stamp = to_stamp(stamp)
    message.header.frame_id = frame_id
    message.data = frame.tobytes()
    return message


def compressed_image(data: bytes, stamp: float, frame_id: str, format: str = "jpeg"):
    message = CompressedImage(format=format)
    message.header.stamp = to_stamp(stamp)
    message.header.frame_id = frame_id
    message.data = data
    return message


class CameraFeed:
    """One camera publishing the same frame at ``rate`` Hz, stamped with its own clock.

    The camera clock is wall time plus ``clock_offset``; ``jump(seconds)`` moves it ahead (a
    stall of that many seconds, as the narrator sees it). ``publish`` sends any message in
    between, in order with the regular frames.
    """

    def __init__(
        self,
        node,
        topic: str,
        frame_id: str,
        *,
        compressed: bool = False,
        width: int = 640,
        height: int = 480,
        rate: float = 30.0,
        clock_offset: float = 0.0,
        seed: int = 0,
        qos: QoSProfile | None = None,
    ) -> None:
        self.topic = topic
        self.frame_id = frame_id
        self.compressed = compressed
        self.rate = rate
        self.clock_offset = clock_offset
        self.frame = synthetic_frame(height, width, seed)
        # Bursts use small frames: dozens of 900 kB best-effort messages within a second are
        # partly lost between processes, which would test the transport, not the narrator.
        self.burst_frame = synthetic_frame(48, 64, seed)
        self.jpeg = cv2.imencode(".jpg", self.frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 80])[
            1
        ].tobytes()
        # Unless ``qos`` is given: sensor-data QoS (best effort), but a deep writer history: a
        # burst published faster than the middleware sends it would otherwise overwrite itself
        # before leaving.
        qos = qos or QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=64,
            reliability=ReliabilityPolicy.BEST_EFFORT,
            durability=DurabilityPolicy.VOLATILE,
        )
        self.publisher = node.create_publisher(
            CompressedImage if compressed else Image, topic, qos
        )
        self.lock = threading.Lock()
        self.published = 0
        self.last_stamp = -1.0
        self.paused = False

    def now(self) -> float:
        """The camera clock."""
        return time.time() + self.clock_offset

    def frame_message(self, stamp: float):
        if self.compressed:
            return compressed_image(self.jpeg, stamp, self.frame_id)
        return raw_image(self.frame, stamp, self.frame_id)

    def tick(self) -> None:
        """Publish one regular frame stamped now (camera clock)."""
        with self.lock:
            if self.paused:
                return
            stamp = max(self.now(), self.last_stamp + 1e-3)
            self.publisher.publish(self.frame_message(stamp))
            self.last_stamp = stamp
            self.published += 1

    def publish(self, message) -> None:
        """Publish an extra message (e.g. a bad one) between regular frames."""
        with self.lock:
            self.publisher.publish(message)

    def jump(self, seconds: float) -> None:
        """Move the camera clock ahead: to the narrator, no frames for ``seconds``."""
        with self.lock:
            self.clock_offset += seconds

    def burst(self, count: int, spacing: float, interval: float) -> None:
        """Publish ``count`` frames stamped ``spacing`` s apart, ``interval`` s of wall time
        apart (a replay ``spacing / interval`` times faster than real time), then carry on
        from the last stamp."""
        with self.lock:
            start = max(self.now(), self.last_stamp + 1e-3)
            for index in range(count):
                stamp = start + index * spacing
                if self.compressed:
                    self.publisher.publish(self.frame_message(stamp))
                else:
                    self.publisher.publish(raw_image(self.burst_frame, stamp, self.frame_id))
                self.last_stamp = stamp
                self.published += 1
                time.sleep(interval)  # pacing the publisher, not waiting for anything
            self.clock_offset = self.last_stamp + 1e-3 - time.time()


@dataclass
class Received:
    """Everything the harness received, with arrival times (wall clock)."""

    narrations: list[tuple[float, Narration]] = field(default_factory=list)
    texts: list[tuple[float, str]] = field(default_factory=list)
    answers: list[tuple[float, Answer]] = field(default_factory=list)
    statuses: list[tuple[float, NarratorStatus]] = field(default_factory=list)
    diagnostics: list[tuple[float, Any]] = field(default_factory=list)


class NarratorHarness:
    """Test-side ROS node for one narrator namespace, spinning in a background thread."""

    def __init__(self, namespace: str = "/svlm", node_name: str = "narrator_harness") -> None:
        self.namespace = namespace.rstrip("/")
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(node_name, context=self.context)
        self.executor = SteadyMultiThreadedExecutor(num_threads=4, context=self.context)
        self.executor.add_node(self.node)
        self.changed = threading.Condition()
        self.received = Received()
        self.feeds: list[CameraFeed] = []
        group = ReentrantCallbackGroup()
        subscriptions = (
            (Narration, "narration", self.received.narrations, lambda m: m),
            (String, "narration_text", self.received.texts, lambda m: m.data),
            (Answer, "answer", self.received.answers, lambda m: m),
            (NarratorStatus, "status", self.received.statuses, lambda m: m),
        )
        for message_type, name, store, extract in subscriptions:
            self.node.create_subscription(
                message_type,
                self.name(name),
                lambda message, s=store, e=extract: self._store(s, e(message)),
                QoSProfile(depth=100),
                callback_group=group,
            )
        if DiagnosticArray is not None:
            self.node.create_subscription(
                DiagnosticArray,
                "/diagnostics",
                lambda message: self._store(self.received.diagnostics, message),
                QoSProfile(depth=100),
                callback_group=group,
            )
        self._stop = threading.Event()
        self._spinner = threading.Thread(target=self._spin, daemon=True)
        self._spinner.start()
        self._feeder: threading.Thread | None = None
        self._clients: dict[tuple[type, str], Client] = {}
        self._clients_lock = threading.Lock()
        self._parameter_client: AsyncParameterClient | None = None

    def name(self, relative: str) -> str:
        return f"{self.namespace}/{relative}"

    def _spin(self) -> None:
        while not self._stop.is_set() and self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.1)
            except Exception:  # noqa: BLE001 - the context was shut down under us
                if self._stop.is_set():
                    return
                raise

    def _store(self, store: list, item) -> None:
        with self.changed:
            store.append((time.time(), item))
            self.changed.notify_all()

    # ----- waiting ------------------------------------------------------------------------
    def wait_for(self, condition: Callable[[], Any], timeout: float, what: str = "") -> Any:
        """Wait until ``condition()`` is truthy (re-checked on every message); return it.

        Raises:
            AssertionError: not within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                value = condition()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
                self.changed.wait(timeout=min(remaining, 0.25))

    def narrations(self, camera: str | None = None, since: float = 0.0) -> list[Narration]:
        with self.changed:
            return [
                message for arrived, message in self.received.narrations
                if arrived >= since and (camera is None or message.camera == camera)
            ]  # fmt: skip

    def latest_status(self, since: float = 0.0) -> NarratorStatus | None:
        with self.changed:
            for arrived, status in reversed(self.received.statuses):
                if arrived >= since:
                    return status
            return None

    def camera_status(self, camera: str, since: float = 0.0):
        status = self.latest_status(since)
        if status is None:
            return None
        return next((entry for entry in status.cameras if entry.name == camera), None)

    def wait_narrations(self, camera: str, count: int, timeout: float, since: float = 0.0):
        return self.wait_for(
            lambda: (found := self.narrations(camera, since)) and len(found) >= count and found,
            timeout,
            f"{count} narrations of {camera}",
        )

    # ----- cameras ------------------------------------------------------------------------
    def add_feed(self, topic: str, frame_id: str, **options) -> CameraFeed:
        """A camera publishing on ``topic`` (relative names are in the narrator's namespace)."""
        topic = topic if topic.startswith("/") else self.name(topic)
        feed = CameraFeed(self.node, topic, frame_id, **options)
        self.feeds.append(feed)
        return feed

    def start_feeds(self, rate: float = 30.0, clock: Callable[[], float] | None = None) -> None:
        """Publish every feed's frame at ``rate`` Hz from a background thread; with ``clock``,
        also publish ``/clock`` (simulated time, seconds) at the same rate."""
        clock_publisher = (
            self.node.create_publisher(Clock, "/clock", QoSProfile(depth=10))
            if clock is not None
            else None
        )

        def run() -> None:
            started = time.monotonic()
            ticks = 0
            while not self._stop.is_set():
                if clock_publisher is not None:
                    clock_publisher.publish(Clock(clock=to_stamp(clock())))
                for feed in self.feeds:
                    feed.tick()
                ticks += 1
                delay = started + ticks / rate - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)

        self._feeder = threading.Thread(target=run, daemon=True)
        self._feeder.start()

    # ----- services -----------------------------------------------------------------------
    # Service calls here work around a middleware race. A client learns that a service exists
    # once it has matched the server's endpoints, but the server may not yet have matched the
    # new client's response reader; Fast DDS then waits 100 ms and drops the response
    # (ros2/rmw_fastrtps#467). On a loaded 2-core CI machine that wait can pass, and a call
    # waited 20 s for a state that had been sent. So each client is created once and kept
    # (its later calls are long matched), queries are sent again when unanswered, and a
    # transition whose answer was lost is judged by the state it left.
    def client(self, service_type, relative: str) -> Client:
        """The harness's one client for ``relative`` (created on first use, then reused)."""
        key = (service_type, self.name(relative))
        with self._clients_lock:
            if key not in self._clients:
                self._clients[key] = self.node.create_client(
                    service_type, key[1], qos_profile=QoSProfile(depth=100)
                )
            return self._clients[key]

    def result(self, future: Future, timeout: float, what: str):
        done = threading.Event()
        future.add_done_callback(lambda _: done.set())
        if not done.wait(timeout):
            raise AssertionError(f"no response to {what} within {timeout} s")
        return future.result()

    def call(self, client: Client, request, timeout: float = 20.0, resend_after: float = 0.0):
        """Call ``client``'s service; with ``resend_after`` > 0 (only for a request that is
        safe to repeat, a query), send it again whenever that many seconds pass unanswered.

        Raises:
            AssertionError: the service is not found, or nothing answers within ``timeout`` s.
        """
        if not client.wait_for_service(timeout_sec=timeout):
            raise AssertionError(f"service {client.srv_name} not available")
        return self._answered(
            lambda: client.call_async(request), client.srv_name, timeout, resend_after,
            forget=client.remove_pending_request,
        )  # fmt: skip

    def _answered(
        self,
        send: Callable[[], Future],
        what: str,
        timeout: float,
        resend_after: float = 0.0,
        forget: Callable[[Future], None] = Future.cancel,
    ):
        """The result of ``send()``'s future, sending again every ``resend_after`` s."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            attempt = min(remaining, resend_after) if resend_after > 0 else remaining
            future = send()
            try:
                return self.result(future, max(attempt, 0.0), what)
            except AssertionError:
                forget(future)
                if attempt >= remaining:
                    raise AssertionError(f"no response to {what} within {timeout} s") from None

    def ask(self, question: str, camera: str = "", timeout: float = 30.0) -> Ask.Response:
        request = Ask.Request(question=question, camera=camera)
        return self.call(self.client(Ask, "ask"), request, timeout)

    def lifecycle(self, transition_id: int, timeout: float = 30.0) -> bool:
        """Ask for a lifecycle transition; True if the node reports it done.

        Not sent twice (a repeated transition would be refused); when its answer is lost,
        the node's state says whether it happened.
        """
        client = self.client(ChangeState, "narrator/change_state")
        request = ChangeState.Request(transition=Transition(id=transition_id))
        try:
            return self.call(client, request, timeout).success
        except AssertionError:
            state = self.lifecycle_state()
            if state == TRANSITION_GOALS.get(transition_id):
                return True
            raise AssertionError(
                f"no response to transition {transition_id} within {timeout} s; "
                f"the node is {state!r}"
            ) from None

    def lifecycle_state(self) -> str:
        client = self.client(GetState, "narrator/get_state")
        response = self.call(client, GetState.Request(), resend_after=2.0)
        return response.current_state.label

    def parameter_client(self) -> AsyncParameterClient:
        """The harness's one parameter client for the narrator (see ``client``)."""
        if self._parameter_client is None:
            client = AsyncParameterClient(self.node, self.name("narrator"))
            if not client.wait_for_services(timeout_sec=20.0):
                raise AssertionError("parameter services of the narrator not available")
            self._parameter_client = client
        return self._parameter_client

    def set_parameters(self, parameters: list[Parameter], atomically: bool = False):
        client = self.parameter_client()
        if atomically:
            response = self.result(
                client.set_parameters_atomically(parameters), 20.0, "set_parameters_atomically"
            )
            return [response.result]
        return self.result(client.set_parameters(parameters), 20.0, "set_parameters").results

    def get_parameters(self, names: list[str]) -> list:
        client = self.parameter_client()
        values = self._answered(
            lambda: client.get_parameters(names), "get_parameters", 20.0, resend_after=2.0
        ).values
        return [Parameter.from_parameter_msg(_named(name, value))
                for name, value in zip(names, values, strict=True)]

    def close(self) -> None:
        self._stop.set()
        if self._feeder is not None:
            self._feeder.join(timeout=5.0)
        self._spinner.join(timeout=5.0)
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def _named(name: str, value):
    from rcl_interfaces.msg import Parameter as ParameterMessage

    return ParameterMessage(name=name, value=value)
