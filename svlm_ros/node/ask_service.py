"""The ``ask`` service: answers a question from a camera's stream memory, publishes ``answer``.

The service has its own mutually exclusive callback group: one ask at a time, and asks
never occupy more than one executor thread. The answer itself is decoded on the narration
worker's thread, like every round (CUDA-graph trees are per thread: an ask decoded here would
record a second tree and memory pool). With ``ask_mode: inline`` (the checkpoint's format) the
question is held for the camera's next round (``hold``), which answers it before narrating its
second; when no round takes it within ``ask_round_wait`` seconds it is withdrawn and answered
between rounds. With ``ask_mode: between`` the service hands the answer over at once
(``submit``); the worker runs it after the round in progress.
Every request gets a response: refusals come back as ``success=false`` with the reason, also
for an ask waiting when the node deactivates or stops (refused at once, not answered later).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from svlm_ros.engine.streaming_session import Answer, GenerationInterrupted
from svlm_ros.msg import Answer as AnswerMessage
from svlm_ros.node.held_questions import HeldQuestions
from svlm_ros.node.streams import CameraStream, Streams
from svlm_ros.node.worker_jobs import JobRefused
from svlm_ros.srv import Ask

# A question longer than this many characters per allowed token is refused without being
# tokenized (no tokenizer packs that many characters into a token), so a huge request cannot
# hold the model lock while it is tokenized.
MAX_QUESTION_CHARS_PER_TOKEN = 32
# Why an ask of an activation that ended is refused.
DEACTIVATED = "the narrator was deactivated; activate it to ask"


class AskRefused(Exception):
    """An ask that cannot be answered; the message goes back to the caller."""


@dataclass(frozen=True)
class AskCounts:
    """Asks answered and refused so far, and the newest refusal's reason."""

    answered: int
    failed: int
    last_error: str


class AskService:
    """Serves ``ask`` (``svlm_ros/srv/Ask``) and publishes every answer on ``answer``.

    Args:
        node: The lifecycle node that owns the service and the publisher.
        streams: The cameras and the shared model.
        values: The node's parameter values (``default_camera``, ``max_question_tokens``).
        lifecycle_state: Returns the node's lifecycle state label (for refusals).
        submit: Hands a job to the narration worker's thread; returns its future
            (``NarrationWorker.jobs.submit``).
        held: The questions held for the cameras' next rounds
            (``NarrationWorker.held_questions``).
        wake: Makes the narration worker look for due rounds now.
    """

    def __init__(
        self,
        node: LifecycleNode,
        streams: Streams,
        values: Mapping[str, Any],
        lifecycle_state: Callable[[], str],
        submit: Callable[[Callable[[], Answer]], Future],
        held: HeldQuestions,
        wake: Callable[[], None],
    ) -> None:
        self._node = node
        self._lifecycle_state = lifecycle_state
        self._submit = submit
        self._held = held
        self._wake = wake
        self._streams = streams
        self._values = values
        self._lock = threading.Lock()
        self._answered = 0
        self._failed = 0
        self._last_error = ""
        self._publisher = node.create_lifecycle_publisher(AnswerMessage, "answer", 10)
        # Deep request queue: concurrent asks wait here (served one at a time) instead of being
        # dropped by a keep-last history of 10.
        service_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=100,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.VOLATILE,
        )
        self.service = node.create_service(
            Ask,
            "ask",
            self._on_ask,
            qos_profile=service_qos,
            callback_group=MutuallyExclusiveCallbackGroup(),
        )

    def counts(self) -> AskCounts:
        """The counters now (for the status)."""
        with self._lock:
            return AskCounts(self._answered, self._failed, self._last_error)

    def _camera(self, name: str) -> CameraStream:
        cameras = self._streams.cameras
        name = name or self._values["default_camera"] or cameras[0].spec.name
        camera = self._streams.camera(name)
        if camera is None:
            names = ", ".join(camera.spec.name for camera in cameras)
            raise AskRefused(f"unknown camera {name!r}; cameras: {names}")
        return camera

    def _on_ask(self, request: Ask.Request, response: Ask.Response) -> Ask.Response:
        started = time.monotonic()
        question = request.question
        streams = self._streams
        # The activation this ask belongs to: a deactivation after this refuses it.
        activation = streams.activation
        try:
            camera = self._camera(request.camera)
            if not question.strip():
                raise AskRefused("question is empty")
            state = self._lifecycle_state()
            if streams.loaded is None:
                detail = f": {streams.error}" if streams.error else ""
                raise AskRefused(f"model not loaded (state {state}){detail}")
            if not streams.active:
                raise AskRefused(f"narrator is not active (state {state}); activate it to ask")
            if streams.down:
                raise AskRefused(streams.error)
            budget = self._values["max_question_tokens"]
            if len(question) > budget * MAX_QUESTION_CHARS_PER_TOKEN:
                raise AskRefused(
                    f"question is {len(question)} characters, far more than "
                    f"max_question_tokens={budget} tokens"
                )
            if self._values["ask_mode"] == "inline":
                answer = self._answer_in_round(camera, question, activation)
            else:
                answer = self._answer_between(camera, question, activation)
            with streams.publish_lock:
                if not streams.still_active(activation):
                    raise AskRefused(DEACTIVATED)
                published = self._publish(camera, question, answer, started)
        except AskRefused as refusal:
            return self._refuse(response, str(refusal), started)
        except Exception as error:  # noqa: BLE001 - an ask must always get a response
            self._node.get_logger().error(f"ask failed: {type(error).__name__}: {error}")
            return self._refuse(response, f"internal error: {error}", started)
        response.success = True
        response.answer = answer.text
        response.message = ""
        response.latency = published.latency
        with self._lock:
            self._answered += 1
        return response

    def _answer_in_round(self, camera: CameraStream, question: str, activation: int
                         ) -> Answer:
        """Hold the question for the camera's next round and wait for its answer; answer
        between rounds when no round takes it within ``ask_round_wait`` seconds."""
        session = camera.session
        if session is not None and not session.can_hold_question():
            # An earlier question is still in the vision window: no round would take this one
            # (read without the model lock: at worst a round answers it between rounds).
            return self._answer_between(camera, question, activation)
        name = camera.spec.name
        future = self._held.hold(name, question)
        if not self._streams.still_active(activation) and self._held.withdraw(name, future):
            # Deactivated between the checks and hold(): its refuse_all came too early to
            # see this question, which must not go into a later activation's stream.
            raise AskRefused(DEACTIVATED)
        self._wake()
        try:
            try:
                return future.result(timeout=self._values["ask_round_wait"])
            except FutureTimeout:
                if self._held.withdraw(name, future):
                    return self._answer_between(camera, question, activation)
                return future.result()  # a round took it: its answer is coming
        except (JobRefused, ValueError, GenerationInterrupted) as error:
            raise self._refusal(camera, error, activation) from error

    def _answer_between(self, camera: CameraStream, question: str, activation: int
                        ) -> Answer:
        """Hand the answer to the narration worker and wait for it."""
        try:
            return self._submit(lambda: self._answer(camera, question, activation)).result()
        except JobRefused as refusal:  # deactivated or stopping before it started
            raise AskRefused(str(refusal)) from refusal

    def _answer(self, camera: CameraStream, question: str, activation: int) -> Answer:
        """Decode the answer between rounds (on the narration worker's thread)."""
        streams = self._streams
        with streams.model_lock:
            if not streams.still_active(activation):
                raise AskRefused(DEACTIVATED)
            session = camera.session
            if session is None:
                raise AskRefused(streams.error if streams.down else "model not loaded")
            try:
                return session.ask(question)
            except (ValueError, GenerationInterrupted) as error:
                raise self._refusal(camera, error, activation) from error

    def _refusal(self, camera: CameraStream, error: Exception, activation: int) -> AskRefused:
        """What the asker is told about an answer that failed with ``error``."""
        if isinstance(error, JobRefused):  # deactivated or stopping before it started
            return AskRefused(str(error))
        if isinstance(error, GenerationInterrupted):
            if not self._streams.still_active(activation):
                return AskRefused(DEACTIVATED)
            return AskRefused("the narrator is stopping; ask again later")
        # Empty, too long, nothing narrated yet.
        return AskRefused(f"camera {camera.spec.name}: {error}")

    def _publish(self, camera: CameraStream, question: str, answer: Answer,
                 started: float) -> AnswerMessage:
        published = AnswerMessage()
        published.header.stamp = self._node.get_clock().now().to_msg()
        published.header.frame_id = camera.frame_id
        published.camera = camera.spec.name
        published.question = question
        published.answer = answer.text
        published.stream_time = float(camera.stats.stream_time)
        published.latency = float(time.monotonic() - started)
        self._publisher.publish(published)
        return published

    def _refuse(self, response: Ask.Response, reason: str, started: float) -> Ask.Response:
        response.success = False
        response.answer = ""
        response.message = reason
        response.latency = float(time.monotonic() - started)
        with self._lock:
            self._failed += 1
            self._last_error = reason
        return response
