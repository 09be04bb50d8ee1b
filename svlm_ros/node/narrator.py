"""The narrator node: camera topics in, one narration per second per camera and answers out.

A thin ROS edge over the streaming engine (``svlm_ros.engine.streaming_session``): messages become
engine calls, engine results become messages. Parameters are declared and checked in
``narrator_params``, counters kept in ``stream_stats``.

Names (all relative; the node's default namespace is ``/svlm``, so with no remapping):
``/svlm/narrator``; publishes ``narration`` (``svlm_ros/Narration``), ``narration_text``
(``std_msgs/String``, silent seconds left out), ``answer`` (``svlm_ros/Answer``), ``status``
(``svlm_ros/NarratorStatus``) and ``/diagnostics``; serves ``ask`` (``svlm_ros/srv/Ask``);
subscribes to each entry of ``camera_topics``.

Lifecycle: configure loads the model and subscribes, activate starts narrating, deactivate
pauses (frames are then ignored, asks refused), cleanup unloads the model and frees GPU memory.
With ``autostart`` (the default) the node configures and activates itself.

Threads and the one model:
  * image callbacks run on the executor, one mutually exclusive callback group per camera (a
    camera's frames stay in order); a callback converts the image, offers it to the camera's
    frame sampler and returns -- it never runs the model;
  * one worker thread runs the narration rounds, woken when a frame was sampled; each round
    takes the newest completed second of a camera and skips older ones, so it never falls
    behind by more than a round;
  * the ask service has its own mutually exclusive callback group: one ask at a time, and
    asks never occupy more than one executor thread;
  * rounds, asks and stream rebuilds take one first-come-first-served lock (``FairLock``).
    So an ask waits at most for the round in progress, and narration is delayed by at most one
    answer (``max_answer_tokens`` decoding steps) between two rounds.
"""

from __future__ import annotations

import gc
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import rclpy
from builtin_interfaces.msg import Time
from rcl_interfaces.msg import SetParametersResult
from rclpy._rclpy_pybind11 import RCLError
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.exceptions import ParameterException, ParameterUninitializedException
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.lifecycle import LifecycleNode, LifecycleState, TransitionCallbackReturn
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String

from svlm_ros.engine.model_loading import LoadedModel, load_model
from svlm_ros.engine.streaming_session import (
    GenerationInterrupted,
    RoundResult,
    StreamConfig,
    StreamingSession,
)
from svlm_ros.engine.vision_input import fit_frame_size
from svlm_ros.image_conversion import compressed_image_to_rgb, image_message_to_rgb
from svlm_ros.msg import Answer as AnswerMessage
from svlm_ros.msg import CameraStatus, Narration, NarratorStatus
from svlm_ros.node import parameters as narrator_params
from svlm_ros.node.fair_lock import FairLock
from svlm_ros.node.parameters import CameraSpec
from svlm_ros.node.stream_stats import CameraSnapshot, CameraStats
from svlm_ros.srv import Ask

try:  # /diagnostics is optional: diagnostic_msgs is not part of every minimal install
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
except ImportError:  # pragma: no cover - present in this project's environments
    DiagnosticArray = None

try:
    import psutil
except ImportError:  # pragma: no cover - psutil is a declared dependency
    psutil = None

NODE_NAME = "narrator"
DEFAULT_NAMESPACE = "/svlm"
# The worker wakes at least this often (seconds) to notice shutdown and state changes.
WORKER_WAKE_SECONDS = 0.2
# A question longer than this many characters per allowed token is refused without being
# tokenized (no tokenizer packs that many characters into a token), so a huge request cannot
# hold the model lock while it is tokenized.
MAX_QUESTION_CHARS_PER_TOKEN = 32


class AskRefused(Exception):
    """An ask that cannot be answered; the message goes back to the caller."""


def stamp_to_seconds(stamp: Time) -> float:
    """``builtin_interfaces/Time`` to float seconds."""
    return stamp.sec + stamp.nanosec * 1e-9


def seconds_to_stamp(seconds: float) -> Time:
    """Float seconds (>= 0) to ``builtin_interfaces/Time``, rounded to the nanosecond."""
    nanoseconds = max(0, round(seconds * 1e9))
    return Time(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)


class CameraStream:
    """One camera: its configuration, counters, stream session and subscription."""

    def __init__(self, spec: CameraSpec) -> None:
        self.spec = spec
        self.stats = CameraStats()
        self.session: StreamingSession | None = None
        self.subscription = None
        self.frame_id = ""
        # Frame size last checked against the vision input's limits (aspect ratio).
        self.checked_size: tuple[int, int] | None = None
        self.callback_group = MutuallyExclusiveCallbackGroup()


class NarratorNode(LifecycleNode):
    """Narrates every camera of ``camera_topics`` once per ``period`` and answers ``ask``.

    Raises:
        ValueError: the parameters (from files, the command line or launch) cannot run; the
            message lists every reason.
        rclpy.exceptions.ParameterException: a value has the wrong type or is out of range.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("namespace", DEFAULT_NAMESPACE)
        super().__init__(NODE_NAME, **kwargs)
        self._values = self._declare_parameters()
        found = narrator_params.problems(self._values)
        if found:
            raise ValueError("; ".join(found))
        self._cameras = [CameraStream(spec) for spec in narrator_params.camera_specs(self._values)]
        self._loaded: LoadedModel | None = None
        self._temporal_patch = narrator_params.DEFAULT_TEMPORAL_PATCH
        self._model_lock = FairLock()
        self._active = False
        self._error = ""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None
        self._closed = False
        self._counter_lock = threading.Lock()
        self._asks_answered = 0
        self._asks_failed = 0
        self._last_ask_error = ""
        self._previous_snapshots: dict[str, CameraSnapshot] = {}

        self._narration_publisher = self.create_lifecycle_publisher(Narration, "narration", 10)
        self._text_publisher = self.create_lifecycle_publisher(String, "narration_text", 10)
        self._answer_publisher = self.create_lifecycle_publisher(AnswerMessage, "answer", 10)
        self._status_publisher = self.create_publisher(NarratorStatus, "status", 10)
        self._diagnostics_publisher = (
            self.create_publisher(DiagnosticArray, "/diagnostics", 10)
            if DiagnosticArray is not None
            else None
        )
        # Deep request queue: concurrent asks wait here (served one at a time) instead of being
        # dropped by a keep-last history of 10.
        service_qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=100,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.VOLATILE,
        )
        self._ask_service = self.create_service(
            Ask,
            "ask",
            self._on_ask,
            qos_profile=service_qos,
            callback_group=MutuallyExclusiveCallbackGroup(),
        )
        self._status_timer = self.create_timer(
            self._values["status_period"],
            self._publish_status,
            callback_group=MutuallyExclusiveCallbackGroup(),
        )
        self.add_on_set_parameters_callback(self._check_parameters)
        self.add_post_set_parameters_callback(self._apply_parameters)
        names = ", ".join(f"{c.spec.name} <- {c.spec.subscription_topic}" for c in self._cameras)
        self.get_logger().info(f"cameras: {names}; serving {self.resolve_service_name('ask')}")

    # ----- parameters --------------------------------------------------------------------
    def _declare_parameters(self) -> dict[str, Any]:
        for spec in narrator_params.PARAMETERS:
            if spec.default == []:
                self._declare_empty_string_array(spec)
            else:
                self.declare_parameter(spec.name, spec.default, spec.descriptor())
        values = {spec.name: self.get_parameter(spec.name).value
                  for spec in narrator_params.PARAMETERS}
        for name, value in values.items():
            if isinstance(value, tuple):
                values[name] = list(value)
        return values

    def _declare_empty_string_array(self, spec: narrator_params.ParameterSpec) -> None:
        """Declare a string array whose default is ``[]``.

        rclpy takes a parameter's type from its default, and ``[]`` has none; a YAML ``[]``
        arrives without a type too. So declare it by type, writable; give it ``[]`` when no
        override set a value; then make it read-only if it is.
        """
        descriptor = spec.descriptor()
        descriptor.read_only = False
        self.declare_parameter(spec.name, Parameter.Type.STRING_ARRAY, descriptor)
        try:
            self.get_parameter(spec.name)
        except ParameterUninitializedException:
            empty = Parameter(spec.name, Parameter.Type.STRING_ARRAY, [])
            result = self.set_parameters([empty])[0]
            if not result.successful:
                raise ValueError(f"{spec.name}: {result.reason}") from None
        if spec.read_only:
            self.set_descriptor(spec.name, spec.descriptor())

    def _check_parameters(self, parameters: list[Parameter]) -> SetParametersResult:
        """On-set callback: refuse a change that breaks any rule, with every reason."""
        candidate = dict(self._values)
        for parameter in parameters:
            if parameter.name not in candidate:
                continue  # use_sim_time and the like are rclpy's
            if parameter.type_ == Parameter.Type.NOT_SET:
                return SetParametersResult(
                    successful=False, reason=f"{parameter.name} cannot be undeclared"
                )
            value = parameter.value
            candidate[parameter.name] = list(value) if isinstance(value, tuple) else value
        found = narrator_params.problems(candidate, temporal_patch=self._temporal_patch)
        if found:
            return SetParametersResult(successful=False, reason="; ".join(found))
        return SetParametersResult(successful=True)

    def _apply_parameters(self, parameters: list[Parameter]) -> None:
        """Post-set callback: remember the values; rebuild the streams when they changed."""
        changed = []
        for parameter in parameters:
            if parameter.name in self._values:
                value = parameter.value
                self._values[parameter.name] = list(value) if isinstance(value, tuple) else value
                changed.append(parameter.name)
        restarting = sorted(set(changed) & narrator_params.STREAM_PARAMETERS)
        if restarting and self._loaded is not None:
            self._rebuild_streams(f"parameters changed: {', '.join(restarting)}")

    # ----- lifecycle ---------------------------------------------------------------------
    @property
    def autostart(self) -> bool:
        return bool(self._values["autostart"])

    @property
    def executor_threads(self) -> int:
        """Threads the executor needs: one per camera, asks, status, parameters/lifecycle."""
        return len(self._cameras) + 3

    def lifecycle_state(self) -> str:
        """``unconfigured``, ``inactive``, ``active``, ``finalized`` (or a transition state)."""
        return self._state_machine.current_state[1]

    def start(self) -> bool:
        """Configure and activate (what ``autostart`` does); True when active."""
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            return False
        return self.trigger_activate() == TransitionCallbackReturn.SUCCESS

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._error = ""
        values = self._values
        try:
            if not values["model_path"]:
                raise ValueError("model_path is empty; set it to a checkpoint directory")
            device = narrator_params.model_device(values["device"])
            if values["torch_threads"] > 0:
                import torch

                torch.set_num_threads(values["torch_threads"])
            self.get_logger().info(f"loading {values['model_path']} on {device}")
            loaded = load_model(
                values["model_path"],
                device=device,
                dtype=values["dtype"],
                attn_implementation=values["attn_implementation"],
            )
            config = narrator_params.stream_config(values)
            sessions = [StreamingSession(loaded, config) for _ in self._cameras]
        except Exception as error:  # noqa: BLE001 - any load failure is a refused configure
            self._error = f"configure failed: {error}"
            self.get_logger().error(self._error)
            return TransitionCallbackReturn.FAILURE
        self._loaded = loaded
        self._temporal_patch = sessions[0].vision.temporal_patch
        for camera, session in zip(self._cameras, sessions, strict=True):
            camera.session = session
            camera.subscription = self._subscribe(camera)
        self._stop.clear()
        self._worker = threading.Thread(target=self._work, name="narration", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"model {loaded.name} on {loaded.device} ({loaded.dtype}, "
            f"{loaded.attn_implementation}); cache bound {sessions[0].bound} tokens per camera"
        )
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = True
        self._wake.set()
        self.get_logger().info("active: narrating")
        return super().on_activate(state)

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self.get_logger().info("inactive: narration paused")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._unload()
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self._unload()
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._active = False
        self._unload()
        return TransitionCallbackReturn.SUCCESS

    def _subscribe(self, camera: CameraStream):
        reliability = (
            ReliabilityPolicy.RELIABLE
            if self._values["qos_reliability"] == "reliable"
            else ReliabilityPolicy.BEST_EFFORT
        )
        qos = QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=self._values["qos_depth"],
            reliability=reliability,
            durability=DurabilityPolicy.VOLATILE,
        )
        compressed = camera.spec.transport == "compressed"
        callback: Callable[[Any], None] = (
            (lambda message: self._on_compressed_image(camera, message))
            if compressed
            else (lambda message: self._on_raw_image(camera, message))
        )
        return self.create_subscription(
            CompressedImage if compressed else Image,
            camera.spec.subscription_topic,
            callback,
            qos,
            callback_group=camera.callback_group,
        )

    def _stop_worker(self) -> None:
        self._stop.set()
        self._wake.set()
        # A round or an answer in progress stops at its next token, so stopping takes at
        # most one decoding step instead of up to max_answer_tokens of them.
        for camera in self._cameras:
            session = camera.session
            if session is not None:
                session.interrupt()
        worker, self._worker = self._worker, None
        if worker is not None and worker is not threading.current_thread():
            worker.join(timeout=10.0)

    def _unload(self) -> None:
        """Stop the worker, unsubscribe, drop the sessions and the model, free GPU memory."""
        self._stop_worker()
        for camera in self._cameras:
            if camera.subscription is not None:
                self.destroy_subscription(camera.subscription)
                camera.subscription = None
        with self._model_lock:
            cuda = self._loaded is not None and self._loaded.device.type == "cuda"
            for camera in self._cameras:
                if camera.session is not None:
                    sampler = camera.session.sampler
                    camera.stats.record_stream_restart(
                        sampler.dropped_unconsumed, sampler.gap_seconds
                    )
                camera.session = None
            self._loaded = None
        gc.collect()
        if cuda:
            import torch

            torch.cuda.empty_cache()
        self.get_logger().info("model unloaded")

    def close(self) -> None:
        """Stop the worker and destroy the node (process exit path); safe to call again."""
        self._active = False
        self._stop_worker()
        if not self._closed:
            self._closed = True
            self.destroy_node()

    # ----- images ------------------------------------------------------------------------
    def _on_raw_image(self, camera: CameraStream, message: Image) -> None:
        self._offer_frame(
            camera,
            message,
            lambda: image_message_to_rgb(message, max_pixels=self._values["max_input_pixels"]),
        )

    def _on_compressed_image(self, camera: CameraStream, message: CompressedImage) -> None:
        self._offer_frame(
            camera,
            message,
            lambda: compressed_image_to_rgb(
                format=message.format,
                data=message.data,
                max_pixels=self._values["max_input_pixels"],
            ),
        )

    def _offer_frame(self, camera: CameraStream, message, convert: Callable[[], Any]) -> None:
        """Convert a frame and hand it to the camera's sampler; cheap, never runs the model."""
        camera.stats.record_received()
        session = camera.session
        if not self._active or session is None:
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
            self.get_logger().warning(
                f"camera {camera.spec.name}: frame rejected: {error}", throttle_duration_sec=5.0
            )
            return
        camera.frame_id = message.header.frame_id
        camera.stats.record_accepted(sampled)
        if sampled:
            self._wake.set()

    # ----- narration ---------------------------------------------------------------------
    def _work(self) -> None:
        """Worker thread: run rounds while any camera has a completed second."""
        while not self._stop.is_set():
            self._wake.wait(timeout=WORKER_WAKE_SECONDS)
            self._wake.clear()
            while self._active and not self._stop.is_set():
                ran = False
                for camera in self._cameras:
                    if self._stop.is_set() or not self._active:
                        break
                    try:
                        ran = self._run_round(camera) or ran
                    except Exception as error:  # noqa: BLE001 - the worker must survive
                        if not self.context.ok():
                            return  # SIGINT/SIGTERM shut ROS down under a round: just stop
                        self.get_logger().error(f"narration worker: {error!r}")
                if not ran:
                    break

    def _run_round(self, camera: CameraStream) -> bool:
        """One engine round on the camera's newest completed second; True if one ran."""
        started = time.perf_counter()
        with self._model_lock:
            session = camera.session
            if session is None:
                return False
            try:
                result, skipped = session.run_pending(latest_only=True)
            except Exception as error:  # noqa: BLE001 - one bad round must not end narration
                # The engine rolls a failed round back, so the stream stays usable; that
                # second is lost and counted.
                reason = f"{type(error).__name__}: {error}"
                self.get_logger().error(
                    f"camera {camera.spec.name}: round failed, second skipped: {reason}"
                )
                camera.stats.record_round_error(reason)
                return False
        camera.stats.record_skipped(skipped)
        if result is None:
            return False
        self._publish_narration(camera, result, time.perf_counter() - started)
        return True

    def _publish_narration(self, camera: CameraStream, result: RoundResult, step: float) -> None:
        latency = self.get_clock().now().nanoseconds * 1e-9 - result.end_stamp
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

    def _replace_session(self, camera: CameraStream, config: StreamConfig) -> None:
        """Give the camera a fresh stream (empty memory). Caller holds the model lock."""
        old = camera.session
        if self._loaded is None:
            return
        try:
            camera.session = StreamingSession(self._loaded, config)
        except ValueError as error:
            self.get_logger().error(f"camera {camera.spec.name}: cannot rebuild stream: {error}")
            return
        camera.checked_size = None
        if old is not None:
            camera.stats.record_stream_restart(
                old.sampler.dropped_unconsumed, old.sampler.gap_seconds
            )

    def _rebuild_streams(self, reason: str) -> None:
        config = narrator_params.stream_config(self._values)
        with self._model_lock:
            for camera in self._cameras:
                self._replace_session(camera, config)
        self.get_logger().info(f"streams restarted ({reason})")

    # ----- ask ---------------------------------------------------------------------------
    def _ask_camera(self, name: str) -> CameraStream:
        name = name or self._values["default_camera"] or self._cameras[0].spec.name
        for camera in self._cameras:
            if camera.spec.name == name:
                return camera
        names = ", ".join(camera.spec.name for camera in self._cameras)
        raise AskRefused(f"unknown camera {name!r}; cameras: {names}")

    def _on_ask(self, request: Ask.Request, response: Ask.Response) -> Ask.Response:
        started = time.monotonic()
        question = request.question
        try:
            camera = self._ask_camera(request.camera)
            if not question.strip():
                raise AskRefused("question is empty")
            state = self.lifecycle_state()
            if self._loaded is None:
                detail = f": {self._error}" if self._error else ""
                raise AskRefused(f"model not loaded (state {state}){detail}")
            if not self._active:
                raise AskRefused(f"narrator is not active (state {state}); activate it to ask")
            budget = self._values["max_question_tokens"]
            if len(question) > budget * MAX_QUESTION_CHARS_PER_TOKEN:
                raise AskRefused(
                    f"question is {len(question)} characters, far more than "
                    f"max_question_tokens={budget} tokens"
                )
            with self._model_lock:
                session = camera.session
                if session is None:
                    raise AskRefused("model not loaded")
                try:
                    answer = session.ask(question)
                except ValueError as error:  # empty, too long, nothing narrated yet
                    raise AskRefused(f"camera {camera.spec.name}: {error}") from error
                except GenerationInterrupted as error:
                    raise AskRefused("the narrator is stopping; ask again later") from error
        except AskRefused as refusal:
            return self._refuse(response, str(refusal), started)
        except Exception as error:  # noqa: BLE001 - an ask must always get a response
            self.get_logger().error(f"ask failed: {type(error).__name__}: {error}")
            return self._refuse(response, f"internal error: {error}", started)
        response.success = True
        response.answer = answer.text
        response.message = ""
        response.latency = float(time.monotonic() - started)
        with self._counter_lock:
            self._asks_answered += 1
        published = AnswerMessage()
        published.header.stamp = self.get_clock().now().to_msg()
        published.header.frame_id = camera.frame_id
        published.camera = camera.spec.name
        published.question = question
        published.answer = answer.text
        published.stream_time = float(camera.stats.stream_time)
        published.latency = response.latency
        self._answer_publisher.publish(published)
        return response

    def _refuse(self, response: Ask.Response, reason: str, started: float) -> Ask.Response:
        response.success = False
        response.answer = ""
        response.message = reason
        response.latency = float(time.monotonic() - started)
        with self._counter_lock:
            self._asks_failed += 1
            self._last_ask_error = reason
        return response

    # ----- status ------------------------------------------------------------------------
    def _snapshot(self, camera: CameraStream) -> CameraSnapshot:
        session = camera.session
        if session is None:
            return camera.stats.snapshot(
                pending=0, overflowed=0, gap=0, period=self._values["period"]
            )
        sampler = session.sampler
        return camera.stats.snapshot(
            pending=sampler.pending,
            overflowed=sampler.dropped_unconsumed,
            gap=sampler.gap_seconds,
            period=session.config.period,
        )

    def _publish_status(self) -> None:
        now = self.get_clock().now().to_msg()
        status = NarratorStatus()
        status.header.stamp = now
        status.state = self.lifecycle_state()
        status.error = self._error
        loaded = self._loaded
        if loaded is not None:
            status.model = loaded.path
            status.device = str(loaded.device)
            status.dtype = str(loaded.dtype).removeprefix("torch.")
            status.attn_implementation = loaded.attn_implementation
            if loaded.device.type == "cuda":
                import torch

                status.device_memory_allocated = int(torch.cuda.memory_allocated(loaded.device))
                status.device_memory_reserved = int(torch.cuda.memory_reserved(loaded.device))
        if psutil is not None:
            status.process_memory = int(psutil.Process().memory_info().rss)
        with self._counter_lock:
            status.asks_answered = self._asks_answered
            status.asks_failed = self._asks_failed
            status.last_ask_error = self._last_ask_error
        snapshots = []
        for camera in self._cameras:
            snapshot = self._snapshot(camera)
            snapshots.append(snapshot)
            status.cameras.append(self._camera_status(camera, snapshot))
        self._status_publisher.publish(status)
        if self._diagnostics_publisher is not None:
            self._diagnostics_publisher.publish(self._diagnostics(status, snapshots))
        self._previous_snapshots = {
            camera.spec.name: snapshot
            for camera, snapshot in zip(self._cameras, snapshots, strict=True)
        }

    def _camera_status(self, camera: CameraStream, snapshot: CameraSnapshot) -> CameraStatus:
        message = CameraStatus()
        message.name = camera.spec.name
        message.topic = self.resolve_topic_name(camera.spec.subscription_topic)
        message.transport = camera.spec.transport
        message.frame_id = camera.frame_id
        for field in (
            "frames_received", "frames_sampled", "frames_dropped", "frames_rejected",
            "last_rejection", "seconds_narrated", "seconds_silent", "seconds_skipped",
            "seconds_overflowed", "seconds_gap", "seconds_pending", "round_errors",
            "last_round_error", "stream_restarts", "cache_tokens",
        ):  # fmt: skip
            setattr(message, field, getattr(snapshot, field))
        message.stream_time = float(snapshot.stream_time)
        session = camera.session
        message.cache_bound = int(session.bound) if session is not None else 0
        for field in (
            "step_latency_median", "step_latency_p99", "publish_latency_median",
            "publish_latency_p99", "real_time_factor",
        ):  # fmt: skip
            setattr(message, field, float(getattr(snapshot, field)))
        return message

    def _diagnostics(self, status: NarratorStatus, snapshots: list[CameraSnapshot]):
        array = DiagnosticArray()
        array.header.stamp = status.header.stamp
        prefix = self.get_fully_qualified_name()
        node = DiagnosticStatus(name=f"{prefix}: node", hardware_id=status.device)
        if status.error:
            node.level, node.message = DiagnosticStatus.ERROR, status.error
        elif status.state != "active":
            node.level, node.message = DiagnosticStatus.WARN, f"{status.state}: not narrating"
        else:
            node.level, node.message = DiagnosticStatus.OK, "narrating"
        node.values = [
            KeyValue(key=key, value=str(value))
            for key, value in (
                ("state", status.state), ("model", status.model), ("device", status.device),
                ("dtype", status.dtype), ("attn_implementation", status.attn_implementation),
                ("device_memory_allocated", status.device_memory_allocated),
                ("device_memory_reserved", status.device_memory_reserved),
                ("process_memory", status.process_memory),
                ("asks_answered", status.asks_answered), ("asks_failed", status.asks_failed),
                ("last_ask_error", status.last_ask_error),
            )
        ]  # fmt: skip
        array.status.append(node)
        for camera, snapshot in zip(self._cameras, snapshots, strict=True):
            array.status.append(self._camera_diagnostic(prefix, camera, snapshot, status.state))
        return array

    def _camera_diagnostic(
        self, prefix: str, camera: CameraStream, snapshot: CameraSnapshot, state: str
    ):
        previous = self._previous_snapshots.get(camera.spec.name)
        diagnostic = DiagnosticStatus(
            name=f"{prefix}: camera {camera.spec.name}",
            hardware_id=self.resolve_topic_name(camera.spec.subscription_topic),
        )
        level, message = DiagnosticStatus.OK, "narrating"
        if state != "active":
            level, message = DiagnosticStatus.WARN, state
        elif previous is not None:
            if snapshot.round_errors > previous.round_errors:
                level, message = DiagnosticStatus.ERROR, snapshot.last_round_error
            elif snapshot.frames_rejected > previous.frames_rejected:
                level, message = DiagnosticStatus.WARN, f"rejected: {snapshot.last_rejection}"
            elif snapshot.frames_received == previous.frames_received:
                level, message = DiagnosticStatus.WARN, "no frames"
            elif snapshot.seconds_skipped > previous.seconds_skipped:
                level, message = DiagnosticStatus.WARN, "model behind real time: skipping"
        diagnostic.level, diagnostic.message = level, message
        diagnostic.values = [
            KeyValue(key=key, value=_format_value(value))
            for key, value in vars(snapshot).items()
        ]
        return diagnostic


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def main(args: list[str] | None = None) -> int:
    """Run the node until SIGINT, SIGTERM or shutdown; returns the process exit status."""
    rclpy.init(args=args)
    node: NarratorNode | None = None
    executor: MultiThreadedExecutor | None = None
    try:
        try:
            node = NarratorNode()
        except (ValueError, ParameterException) as error:
            hint = ""
            if "expecting type 'DOUBLE'" in str(error):
                hint = " (write decimal parameters with a point, e.g. 2.0 rather than 2)"
            rclpy.logging.get_logger(NODE_NAME).fatal(f"invalid parameters: {error}{hint}")
            return 1
        executor = MultiThreadedExecutor(num_threads=node.executor_threads)
        executor.add_node(node)
        if node.autostart:
            node.start()
        try:
            executor.spin()
        except RCLError:
            # A signal shuts the context down between two iterations of spin; the next wait
            # set then fails with "context is not valid" instead of ExternalShutdownException.
            # That is a normal shutdown; with the context still valid it is a real error.
            if rclpy.ok():
                raise
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # rclpy's signal handler both shuts the context down (ending spin) and passes the
        # signal on to Python, so a KeyboardInterrupt may still arrive in here; every step is
        # idempotent, so finish them again rather than leaving with a traceback.
        for _ in range(3):
            try:
                if node is not None:
                    node.close()
                if executor is not None:
                    executor.shutdown(timeout_sec=1.0)
                rclpy.try_shutdown()
                break
            except KeyboardInterrupt:
                continue
    return 0
