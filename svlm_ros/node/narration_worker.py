"""The narration worker: one thread that runs the engine rounds and publishes the narrations.

Woken when a frame was sampled, and at least every ``WORKER_WAKE_SECONDS``, it

* closes every period whose end has passed on the camera clock by ``period_close_slack``
  (the camera clock from the node clock, mapped by the newest frames), so a second is
  narrated on time even when no frame of the next second comes (a stall, the stream's end);
* restarts the streams when stream parameters changed (requested by the parameter callback,
  which must not wait for the model itself: parameter and lifecycle services stay free);
* runs a round on each camera's newest completed second and skips older ones, so it never
  falls behind by more than a round. With ``batch_cameras`` the rounds of every camera with a
  completed second run together (``CameraGroup.run_rounds``: one batched decode). Cameras'
  seconds rarely complete at the same instant, so a completed second waits up to
  ``batch_gather_seconds`` for the other live cameras' seconds; without that wait a round of
  one camera would start as soon as its second closed, and the others would follow alone. If a
  batched round fails, each of its cameras runs alone, so one camera's bad round does not cost
  the others their second.

When no round is due it runs one due watch question (``watcher.Watcher``: one question on
one camera), so a round that falls due waits for at most one evaluation.

All model work runs on this thread (CUDA-graph trees are per thread): rounds, stream rebuilds,
watch questions and the asks the ask service hands over. An ask in the checkpoint's format
(``ask_mode: inline``) is held for its camera's next round (``held_questions.HeldQuestions``):
the round takes it after its time text and answers it first, and the answer goes back through
the ask's future. An ask between rounds (``worker_jobs.WorkerJobs``) runs after each round, so
it waits at most for the round in progress, and narration is delayed by at most one answer.
A failed round is rolled back by the engine, logged and counted; the worker goes on (a
question it held gets the error).

Deactivation (``deactivate``) interrupts the round or answer in progress (it stops at its next
token and is rolled back) and refuses the asks not started; a result of a round that started
before a deactivation is discarded: not published, not counted (``Streams.still_active``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from rclpy.lifecycle import LifecycleNode
from std_msgs.msg import String

from svlm_ros.engine.camera_group import RoundsPartlyClosed
from svlm_ros.engine.frame_sampler import SecondOfFrames
from svlm_ros.engine.stream_config import Answer
from svlm_ros.engine.streaming_session import GenerationInterrupted, RoundResult, StreamingSession
from svlm_ros.msg import Narration
from svlm_ros.node.held_questions import HeldQuestion, HeldQuestions
from svlm_ros.node.stamps import seconds_to_stamp
from svlm_ros.node.streams import CameraStream, StreamRebuildFailed, Streams, StreamsDown
from svlm_ros.node.watcher import Watcher
from svlm_ros.node.worker_jobs import WorkerJobs

# The worker wakes at least this often (seconds) to close periods on the clock and to notice
# shutdown and state changes.
WORKER_WAKE_SECONDS = 0.1
# How long stopping waits for the thread; a round in progress stops at its next token. The
# README promises that SIGINT/SIGTERM end the process within 5 s: this, plus the executor's
# 1 s shutdown and rclpy's, fits. A step with no token to stop at (a first-round
# torch.compile, a CUDA call) can outlast it: the node is then left alone, not destroyed
# under the thread (NarratorNode.close), and the process exits.
JOIN_TIMEOUT_SECONDS = 3.0


class NarrationWorker:
    """Runs rounds on a thread of its own and publishes ``narration`` and ``narration_text``.

    Args:
        node: The lifecycle node that owns the (lifecycle) publishers, clock and logger.
        streams: The cameras and the shared model.
        values: The node's parameter values (``period_close_slack``).
        on_rebuild_failed: Called (on the worker thread) when new stream settings could not
            be built and the previous ones were restored; the node puts the previous
            parameter values back.
    """

    def __init__(
        self,
        node: LifecycleNode,
        streams: Streams,
        values: Mapping[str, Any],
        on_rebuild_failed: Callable[[StreamRebuildFailed], None],
    ) -> None:
        self._node = node
        self._streams = streams
        self._values = values
        self._on_rebuild_failed = on_rebuild_failed
        self._narration_publisher = node.create_lifecycle_publisher(Narration, "narration", 10)
        self._text_publisher = node.create_lifecycle_publisher(String, "narration_text", 10)
        self.watcher = Watcher(node, streams, values)
        self._wake = threading.Event()
        #: Model work other threads hand to this thread (asks).
        self.jobs = WorkerJobs(self.wake)
        #: Questions held for each camera's next round (``ask_mode: inline``).
        self.held_questions = HeldQuestions()
        # Threads that outlived stop()'s join: the node must not be destroyed under them.
        self._outlived: list[threading.Thread] = []
        # Each thread gets its own stop event: a thread that outlived stop()'s join (stuck in
        # a slow step) still sees its own event set and ends, whatever start() does later.
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rebuild_lock = threading.Lock()
        self._rebuild_reason = ""
        # When the first completed second of the next batch was seen (monotonic), or None.
        self._gather_started: float | None = None

    def start(self) -> None:
        """Start the thread (it idles until the node is active)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._work, args=(self._stop,), name="narration", daemon=True
        )
        self.jobs.open()
        self._thread.start()

    def activate(self) -> None:
        """Narrate (lifecycle activate, after the publishers): re-arm the sessions; rebuild
        the streams when they are down (a rebuild and its rollback failed)."""
        self._streams.set_active(True)
        if self._streams.down:
            self.request_rebuild("activated with no streams")
        self.wake()

    def deactivate(self, reason: str = "the narrator was deactivated; activate it to ask"
                   ) -> None:
        """Pause (lifecycle deactivate, before the publishers): the round or answer in
        progress stops at its next token and is discarded; asks not started are refused."""
        self._streams.set_active(False)
        self.jobs.refuse_pending(reason)
        self.held_questions.refuse_all(reason)

    def request_rebuild(self, reason: str) -> None:
        """Ask the thread to restart the streams with the current values (from any thread)."""
        with self._rebuild_lock:
            self._rebuild_reason = reason
        self._wake.set()

    def _take_rebuild_request(self) -> str:
        with self._rebuild_lock:
            reason, self._rebuild_reason = self._rebuild_reason, ""
            return reason

    def wake(self) -> None:
        """Make the thread look for completed seconds now (from any thread)."""
        self._wake.set()

    def stop(self, reason: str = "the narrator is stopping; ask again later") -> bool:
        """Stop the thread; a round in progress stops at its next token, asks not started are
        refused with ``reason``.

        Returns:
            True when no worker thread runs any more; False when one is still inside a step
            after ``JOIN_TIMEOUT_SECONDS`` (one with no token to stop at: a first-round
            torch.compile, a CUDA call), and the node must not be destroyed under it.
        """
        self._stop.set()
        self._wake.set()
        self.jobs.close(reason)
        self.held_questions.refuse_all(reason)
        # A round or an answer in progress stops at its next token, so stopping takes at
        # most one decoding step instead of up to max_answer_tokens of them.
        self._streams.interrupt()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            self._outlived.append(thread)
        deadline = time.monotonic() + JOIN_TIMEOUT_SECONDS
        for thread in self._outlived:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        self._outlived = [thread for thread in self._outlived if thread.is_alive()]
        return not self._outlived

    def _work(self, stop: threading.Event) -> None:
        """Thread body: rebuild when asked, close periods on time, run rounds while any camera
        has a completed second."""
        streams = self._streams
        while not stop.is_set():
            self._wake.wait(timeout=self._wait_timeout())
            self._wake.clear()
            self._rebuild_if_requested()
            while not streams.active and self.jobs.run_one():
                pass  # inactive: an ask handed over before the deactivation refuses itself
            while streams.active and not stop.is_set():
                # Looked at before every round, not only when the worker idles: on a machine
                # too slow for real time a round is always due, and a parameter change
                # would otherwise wait for ever.
                self._rebuild_if_requested()
                try:
                    if streams.group is not None:
                        for camera in streams.cameras:
                            self._close_due_periods(camera)
                        ran = self._batch_is_gathered() and self._run_batched_rounds()
                        ran = self.jobs.run_one() or ran
                    else:
                        ran = self._run_rounds_one_by_one(stop)
                    ran = ran or self.watcher.run_one()
                except Exception as error:  # noqa: BLE001 - the worker must survive
                    if not self._node.context.ok():
                        return  # SIGINT/SIGTERM shut ROS down under a round: just stop
                    self._node.get_logger().error(f"narration worker: {error!r}")
                    ran = False
                if not ran:
                    break

    def _run_rounds_one_by_one(self, stop: threading.Event) -> bool:
        """Each camera in turn: close its due periods, run its round. True if any round ran."""
        ran = False
        for camera in self._streams.cameras:
            if stop.is_set() or not self._streams.active:
                break
            try:
                self._close_due_periods(camera)
                ran = self._run_round(camera) or ran
            except Exception as error:  # noqa: BLE001 - one camera must not stop the others
                if not self._node.context.ok():
                    raise
                self._node.get_logger().error(f"narration worker: {error!r}")
            # An ask handed over during that round runs before the next one.
            ran = self.jobs.run_one() or ran
        return ran

    def _rebuild_if_requested(self) -> None:
        reason = self._take_rebuild_request()
        if not reason:
            return
        try:
            self._streams.rebuild(reason)  # sets or clears Streams.error
        except StreamsDown as error:
            self._node.get_logger().error(str(error))
        except StreamRebuildFailed as error:
            self._node.get_logger().error(f"{error}; the previous settings are restored")
            self._on_rebuild_failed(error)
        except Exception as error:  # noqa: BLE001 - the worker must survive
            self._node.get_logger().error(f"narration worker: stream rebuild: {error!r}")

    def _close_due_periods(self, camera: CameraStream) -> None:
        """Close the camera's periods whose end passed ``period_close_slack`` ago."""
        session = camera.session
        camera_now = camera.camera_time(self._node.get_clock().now().nanoseconds * 1e-9)
        if session is None or camera_now is None:
            return
        session.sampler.close_until(camera_now - self._values["period_close_slack"])

    def _run_round(self, camera: CameraStream) -> bool:
        """One engine round on the camera's newest completed second; True if one ran."""
        streams = self._streams
        activation = streams.activation
        with streams.model_lock:
            # Timed from here: waiting for an ask is not the model's time for this round.
            started = time.perf_counter()
            session = camera.session
            if session is None or not streams.still_active(activation):
                return False
            second, skipped = session.sampler.pop_ready(latest_only=True)
            camera.stats.record_skipped(skipped)
            if second is None:
                return False
            held = self._take_question(camera, session)
            try:
                result = session.run_round(second, question=held.question if held else "")
                self._settle(held, session, result)
            except Exception as error:  # noqa: BLE001 - one bad round must not end narration
                self._settle(held, session, error)
                self._round_failed(camera, error, activation)
                return False
        return self._publish_all([(camera, result)], time.perf_counter() - started, activation)

    def _take_question(self, camera: CameraStream, session: StreamingSession
                       ) -> HeldQuestion | None:
        """The question held for the camera's next round, if that round can take it (model
        lock held). One it cannot take is settled here: refused when too long, answered
        between rounds while an earlier question still fills the vision window."""
        held = self.held_questions.take(camera.spec.name)
        if held is None:
            return None
        try:
            held.question_tokens = len(session.check_question(held.question))
            if session.can_hold_question():
                return held
            held.future.set_result(session.ask(held.question))
        except Exception as error:  # noqa: BLE001 - goes back to the asker
            held.future.set_exception(error)
        return None

    @staticmethod
    def _settle(held: HeldQuestion | None, session: StreamingSession,
                outcome: RoundResult | BaseException) -> None:
        """Give a held question's asker the round's answer, or its error. A round that
        answered nothing before its narration (a model that did not learn the format) leaves
        the question in the stream, and the asker gets an answer between rounds."""
        if held is None:
            return
        if isinstance(outcome, BaseException):
            held.future.set_exception(outcome)
            return
        try:
            if outcome.answer:
                held.future.set_result(Answer(outcome.answer, held.question_tokens,
                                              outcome.answer_tokens,
                                              outcome.timings_ms["total"] / 1e3))
            else:
                held.future.set_result(session.ask(held.question))
        except Exception as error:  # noqa: BLE001 - goes back to the asker
            held.future.set_exception(error)

    def _wait_timeout(self) -> float:
        """Seconds to sleep until the next look: shorter while a batch is being gathered."""
        if self._gather_started is None:
            return WORKER_WAKE_SECONDS
        left = self._gather_started + self._values["batch_gather_seconds"] - time.monotonic()
        return min(WORKER_WAKE_SECONDS, max(0.001, left))

    def _batch_is_gathered(self) -> bool:
        """Whether the batched round should run now: some camera has a completed second and
        every other live camera has one too, or ``batch_gather_seconds`` passed since the
        first was seen."""
        cameras = [camera for camera in self._streams.cameras if camera.session is not None]
        waiting = [camera for camera in cameras if not camera.session.sampler.pending]
        if len(waiting) == len(cameras):
            self._gather_started = None
            return False
        now = time.monotonic()
        if self._gather_started is None:
            self._gather_started = now
        node_now = self._node.get_clock().now().nanoseconds * 1e-9
        live_waiting = [camera for camera in waiting
                        if camera.is_live(node_now, camera.session.config.period)]
        if live_waiting and now - self._gather_started < self._values["batch_gather_seconds"]:
            return False
        self._gather_started = None
        return True

    def _run_batched_rounds(self) -> bool:
        """The rounds of every camera with a completed second, decoded as one batch."""
        streams = self._streams
        activation = streams.activation
        with streams.model_lock:
            started = time.perf_counter()
            group = streams.group
            if group is None or not streams.still_active(activation):
                return False
            seconds: list[SecondOfFrames | None] = []
            for camera in streams.cameras:
                second, skipped = camera.session.sampler.pop_ready(latest_only=True)
                camera.stats.record_skipped(skipped)
                seconds.append(second)
            due = [(camera, second) for camera, second in zip(streams.cameras, seconds,
                                                              strict=True) if second is not None]
            if not due:
                return False
            held = {camera.spec.name: self._take_question(camera, camera.session)
                    for camera, _ in due}
            questions = [held[camera.spec.name].question if held.get(camera.spec.name) else ""
                         for camera in streams.cameras]
            try:
                results = group.run_rounds(seconds, questions)
                outcome = [(camera, result) for camera, result in zip(streams.cameras, results,
                                                                      strict=True)
                           if result is not None]
                for camera, result in outcome:
                    self._settle(held[camera.spec.name], camera.session, result)
            except GenerationInterrupted as error:  # stopping: no camera runs again
                outcome = []
                for camera, _ in due:
                    self._settle(held[camera.spec.name], camera.session, error)
                    self._round_failed(camera, error, activation)
            except Exception as error:  # noqa: BLE001 - retried camera by camera below
                # run_rounds rolled back every round that did not close: run those alone, so
                # that only the camera whose round is bad loses its second. Rounds that closed
                # (RoundsPartlyClosed) stand and are published.
                closed = error.results if isinstance(error, RoundsPartlyClosed) else []
                outcome = [(camera, result)
                           for camera, result in zip(streams.cameras, closed, strict=False)
                           if result is not None]
                for camera, result in outcome:
                    self._settle(held[camera.spec.name], camera.session, result)
                retried = [(camera, second) for camera, second in due
                           if all(camera is not done for done, _ in outcome)]
                self._node.get_logger().warning(
                    f"batched round of {len(due)} cameras failed ({type(error).__name__}: "
                    f"{error}); running {len(retried)} of them one by one"
                )
                for camera, second in retried:
                    question = held[camera.spec.name]
                    try:
                        result = camera.session.run_round(
                            second, question=question.question if question else "")
                        outcome.append((camera, result))
                        self._settle(question, camera.session, result)
                    except Exception as alone:  # noqa: BLE001 - as in _run_round
                        self._settle(question, camera.session, alone)
                        self._round_failed(camera, alone, activation)
        return self._publish_all(outcome, time.perf_counter() - started, activation)

    def _publish_all(self, outcome: list[tuple[CameraStream, RoundResult]], step: float,
                     activation: int) -> bool:
        """Publish the rounds' results, unless the node was deactivated since they started:
        then they are discarded (not published, not counted). True if any was published."""
        with self._streams.publish_lock:
            if not self._streams.still_active(activation):
                return False
            for camera, result in outcome:
                self._publish(camera, result, step)
        return bool(outcome)

    def _round_failed(self, camera: CameraStream, error: Exception, activation: int) -> None:
        if isinstance(error, GenerationInterrupted) and not self._streams.still_active(
                activation):
            return  # stopped by a deactivation or shutdown: not an error, nothing counted
        # The engine rolls a failed round back, so the stream stays usable; that second is
        # lost and counted.
        reason = f"{type(error).__name__}: {error}"
        self._node.get_logger().error(
            f"camera {camera.spec.name}: round failed, second skipped: {reason}"
        )
        camera.stats.record_round_error(reason)

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
        self.watcher.note_round(camera, result)
