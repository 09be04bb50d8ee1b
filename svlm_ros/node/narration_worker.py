"""The narration worker: one thread that runs the engine rounds and publishes the narrations.

Woken when a frame was sampled (and at least every ``WORKER_WAKE_SECONDS``), it runs a round
on each camera's newest completed second and skips older ones, so it never falls behind by
more than a round. Every round takes the model lock (first come, first served), so an ask
waits at most for the round in progress. A failed round is rolled back by the engine, logged
and counted; the worker goes on.
"""

from __future__ import annotations

import threading
import time

from rclpy.lifecycle import LifecycleNode
from std_msgs.msg import String

from svlm_ros.engine.streaming_session import RoundResult
from svlm_ros.msg import Narration
from svlm_ros.node.stamps import seconds_to_stamp
from svlm_ros.node.streams import CameraStream, Streams

# The worker wakes at least this often (seconds) to notice shutdown and state changes.
WORKER_WAKE_SECONDS = 0.2
# How long stopping waits for the thread; a round in progress stops at its next token.
JOIN_TIMEOUT_SECONDS = 10.0


class NarrationWorker:
    """Runs rounds on a thread of its own and publishes ``narration`` and ``narration_text``.

    Args:
        node: The lifecycle node that owns the (lifecycle) publishers, clock and logger.
        streams: The cameras and the shared model.
    """

    def __init__(self, node: LifecycleNode, streams: Streams) -> None:
        self._node = node
        self._streams = streams
        self._narration_publisher = node.create_lifecycle_publisher(Narration, "narration", 10)
        self._text_publisher = node.create_lifecycle_publisher(String, "narration_text", 10)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread (it idles until the node is active)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._work, name="narration", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Make the thread look for completed seconds now (from any thread)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop the thread; a round in progress stops at its next token."""
        self._stop.set()
        self._wake.set()
        # A round or an answer in progress stops at its next token, so stopping takes at
        # most one decoding step instead of up to max_answer_tokens of them.
        self._streams.interrupt()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=JOIN_TIMEOUT_SECONDS)

    def _work(self) -> None:
        """Thread body: run rounds while any camera has a completed second."""
        streams = self._streams
        while not self._stop.is_set():
            self._wake.wait(timeout=WORKER_WAKE_SECONDS)
            self._wake.clear()
            while streams.active and not self._stop.is_set():
                ran = False
                for camera in streams.cameras:
                    if self._stop.is_set() or not streams.active:
                        break
                    try:
                        ran = self._run_round(camera) or ran
                    except Exception as error:  # noqa: BLE001 - the worker must survive
                        if not self._node.context.ok():
                            return  # SIGINT/SIGTERM shut ROS down under a round: just stop
                        self._node.get_logger().error(f"narration worker: {error!r}")
                if not ran:
                    break

    def _run_round(self, camera: CameraStream) -> bool:
        """One engine round on the camera's newest completed second; True if one ran."""
        started = time.perf_counter()
        with self._streams.model_lock:
            session = camera.session
            if session is None:
                return False
            try:
                result, skipped = session.run_pending(latest_only=True)
            except Exception as error:  # noqa: BLE001 - one bad round must not end narration
                # The engine rolls a failed round back, so the stream stays usable; that
                # second is lost and counted.
                reason = f"{type(error).__name__}: {error}"
                self._node.get_logger().error(
                    f"camera {camera.spec.name}: round failed, second skipped: {reason}"
                )
                camera.stats.record_round_error(reason)
                return False
        camera.stats.record_skipped(skipped)
        if result is None:
            return False
        self._publish(camera, result, time.perf_counter() - started)
        return True

    def _publish(self, camera: CameraStream, result: RoundResult, step: float) -> None:
        latency = self._node.get_clock().now().nanoseconds * 1e-9 - result.end_stamp
        message = Narration()
        message.header.stamp = seconds_to_stamp(result.end_stamp)
        message.header.frame_id = camera.frame_id
        message.camera = camera.spec.name
        message.stream_time = float(result.end)
        message.text = result.text
        message.silent = bool(result.silent)
        message.latency = float(latency)
        message.cache_tokens = int(result.cache_tokens)
        self._narration_publisher.publish(message)
        if not result.silent:
            self._text_publisher.publish(String(data=result.text))
        camera.stats.record_round(
            silent=result.silent,
            step_seconds=step,
            publish_latency=latency,
            stream_time=float(result.end),
            cache_tokens=int(result.cache_tokens),
        )
