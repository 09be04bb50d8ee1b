"""Watch questions on the narration worker's thread: evaluate, track, publish ``events``.

The narration worker tells the watcher of every round it published (``note_round``) and,
when no round is due, lets it run one due evaluation (``run_one``): one question on one
camera, under the model lock, through ``engine.watching.yes_probability`` (the stream's memory
is left untouched). Model work so stays on the worker's thread, and a round that falls due
waits for at most one evaluation. An answer's first value and its changes (hysteresis:
``watch_events.AnswerTracker``) are published as ``svlm_ros/WatchEvent`` on ``events``
(``/svlm/events`` in the default namespace).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rclpy.lifecycle import LifecycleNode

from svlm_ros.engine.stream_config import GenerationInterrupted, RoundResult
from svlm_ros.engine.watching import WatchAnswer, yes_probability
from svlm_ros.msg import WatchEvent
from svlm_ros.node.stamps import seconds_to_stamp
from svlm_ros.node.streams import CameraStream, Streams
from svlm_ros.node.watch_events import AnswerTracker, WatchSchedule


@dataclass(frozen=True)
class WatchCounts:
    """Evaluations run, events published and failed evaluations so far; the total time of
    the evaluations; the newest failure."""

    evaluations: int
    events: int
    failed: int
    seconds: float
    last_error: str


class Watcher:
    """Evaluates ``watch_questions`` and publishes their answers' changes on ``events``.

    Args:
        node: The lifecycle node that owns the publisher, clock and logger.
        streams: The cameras and the shared model.
        values: The node's parameter values (``watch_questions``, ``watch_period``,
            ``watch_confirmations``), read at each use: changes apply live.
    """

    def __init__(self, node: LifecycleNode, streams: Streams, values: Mapping[str, Any]) -> None:
        self._node = node
        self._streams = streams
        self._values = values
        self._publisher = node.create_lifecycle_publisher(WatchEvent, "events", 10)
        self._schedule = WatchSchedule()
        self._trackers: dict[tuple[str, str], AnswerTracker] = {}
        # Per camera: (stream time, camera stamp) at the end of its newest published round.
        self._newest: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()
        self._counts = WatchCounts(0, 0, 0, 0.0, "")
        self._reported: set[str] = set()

    def counts(self) -> WatchCounts:
        """The counters now (from any thread)."""
        with self._lock:
            return self._counts

    def _count(self, **added: Any) -> None:
        with self._lock:
            counts = self._counts
            self._counts = WatchCounts(
                counts.evaluations + added.get("evaluations", 0),
                counts.events + added.get("events", 0),
                counts.failed + added.get("failed", 0),
                counts.seconds + added.get("seconds", 0.0),
                added.get("last_error", counts.last_error))

    def note_round(self, camera: CameraStream, result: RoundResult) -> None:
        """A round of ``camera`` was published: queue its questions when they are due."""
        questions = [question.strip() for question in self._values["watch_questions"]]
        self._trackers = {key: tracker for key, tracker in self._trackers.items()
                          if key[1] in questions}
        if not questions:
            return
        name = camera.spec.name
        self._newest[name] = (float(result.end), float(result.end_stamp))
        self._schedule.note_round(name, float(result.end), self._values["watch_period"],
                                  questions)

    def run_one(self) -> bool:
        """Run the oldest due evaluation, publish its event if any; False when none ran."""
        questions = [question.strip() for question in self._values["watch_questions"]]
        while (item := self._schedule.pop()) is not None:
            name, question = item
            camera = self._streams.camera(name)
            if question in questions and camera is not None:
                break
        else:
            return False
        activation = self._streams.activation
        with self._streams.model_lock:
            session = camera.session
            if (session is None or not session.policy.rounds
                    or not self._streams.still_active(activation)):
                return False  # stopped, or a new stream that has narrated nothing yet
            stream_time = session.policy.rounds[-1].stream_second + session.config.period
            try:
                answer = yes_probability(session, question)
            except GenerationInterrupted:
                return False
            except Exception as error:  # noqa: BLE001 - a bad question must not stop narration
                self._failed(name, question, error)
                return True
        self._count(evaluations=1, seconds=answer.seconds)
        # An evaluation that ran across a deactivation neither counts nor is published.
        with self._streams.publish_lock:
            if not self._streams.still_active(activation):
                return True
            tracker = self._trackers.setdefault((name, question), AnswerTracker())
            initial = tracker.published is None
            if tracker.update(answer.answer, self._values["watch_confirmations"]):
                self._publish(camera, question, answer, stream_time, initial)
        return True

    def _failed(self, camera: str, question: str, error: Exception) -> None:
        reason = f"camera {camera}: watch question {question!r}: {type(error).__name__}: {error}"
        self._count(failed=1, last_error=reason)
        if reason not in self._reported:  # once per question and cause, not every period
            self._reported.add(reason)
            self._node.get_logger().error(reason)

    def _publish(self, camera: CameraStream, question: str, answer: WatchAnswer,
                 stream_time: float, initial: bool) -> None:
        # The camera clock now (mapped from the node clock by the newest frames), so that the
        # latency is right whatever the offset between the clocks.
        node_now = self._node.get_clock().now().nanoseconds * 1e-9
        now = camera.camera_time(node_now)
        now = node_now if now is None else now
        newest_time, newest_stamp = self._newest.get(camera.spec.name, (None, None))
        stamp = newest_stamp if newest_time is not None and abs(
            newest_time - stream_time) < 1e-6 else now
        message = WatchEvent()
        message.header.stamp = seconds_to_stamp(stamp)
        message.header.frame_id = camera.frame_id
        message.camera = camera.spec.name
        message.question = question
        message.answer = answer.answer
        message.probability = float(answer.probability)
        message.stream_time = float(stream_time)
        message.latency = float(now - stamp)
        message.evaluation_time = float(answer.seconds)
        message.initial = initial
        self._publisher.publish(message)
        self._count(events=1)
