"""The narrator's cameras and the one model they share (plain Python + the engine, no rclpy).

``Streams`` is the state every part of the node works on: the loaded model, one
``StreamingSession`` per camera (``CameraStream``; with ``batch_cameras`` the sessions of one
``CameraGroup``, whose rounds decode as one batch), the first-come-first-served lock that
serializes all model work (rounds, asks, stream rebuilds), and whether the node is active
(``set_active``: each activation and deactivation is numbered, so a result of an earlier
activation is never published).
The ROS parts (camera intake, narration worker, ask service, status) each get this object
and touch nothing else of each other.
"""

from __future__ import annotations

import gc
import os
import threading
from collections import deque
from collections.abc import Mapping
from typing import Any

from svlm_ros.engine.camera_group import CameraGroup
from svlm_ros.engine.decoding import SamplingConfig
from svlm_ros.engine.model_loading import LoadedModel, load_model
from svlm_ros.engine.model_settings import ModelSettings
from svlm_ros.engine.streaming_session import StreamConfig, StreamingSession
from svlm_ros.node import parameters as narrator_params
from svlm_ros.node.camera_specs import CameraSpec, camera_specs
from svlm_ros.node.fair_lock import FairLock
from svlm_ros.node.model_defaults import describe_sampling
from svlm_ros.node.stream_stats import CameraSnapshot, CameraStats
from svlm_ros.node.transport_monitor import ArrivalMonitor, StarvationWatch

# Frames whose arrival maps the node clock to the camera clock, and how many it takes.
CLOCK_OFFSET_FRAMES = 9
CLOCK_OFFSET_MIN_FRAMES = 3


class StreamRebuildFailed(RuntimeError):
    """New stream settings could not be built; the previous ones were restored."""


class StreamsDown(RuntimeError):
    """Neither the new nor the previous stream settings could be built: no camera has a
    stream until a later rebuild succeeds (``Streams.down``; ``Streams.error`` says why)."""


# What the streams-down error adds: what stopped and what brings narration back.
STREAMS_DOWN_HINT = ("narration stopped: no camera has a stream until a stream parameter "
                     "changes or the node is deactivated and activated again")


class CameraStream:
    """One camera: its configuration, counters, stream session and clock mapping.

    Args:
        spec: The camera as configured (name, topic, transport).
    """

    def __init__(self, spec: CameraSpec) -> None:
        self.spec = spec
        self.stats = CameraStats()
        self.session: StreamingSession | None = None
        self.frame_id = ""
        # Frame size last checked against the vision input's limits (aspect ratio).
        self.checked_size: tuple[int, int] | None = None
        self.arrivals = ArrivalMonitor()
        self.starvation = StarvationWatch()
        #: The image subscription's QoS and why (``qos_matching.QosChoice``; set by the intake).
        self.qos_choice = None
        # Arrival (node clock) minus stamp of the newest frames of the stream: their median
        # is the offset between the clocks plus the usual transport delay.
        self._clock_lock = threading.Lock()
        self._clock_offsets: deque[float] = deque(maxlen=CLOCK_OFFSET_FRAMES)
        self._newest_stamp: float | None = None
        self._newest_arrival: float | None = None

    def note_frame(self, stamp: float, arrival: float) -> None:
        """A frame stamped ``stamp`` entered the stream at ``arrival`` (node clock, s)."""
        with self._clock_lock:
            if self._newest_stamp is not None and stamp < self._newest_stamp:
                self._clock_offsets.clear()  # the camera clock went back: a new timeline
            self._newest_stamp = stamp
            self._newest_arrival = arrival
            self._clock_offsets.append(arrival - stamp)

    def is_live(self, node_now: float, within: float) -> bool:
        """Whether a frame entered the stream in the last ``within`` seconds (node clock)."""
        with self._clock_lock:
            return self._newest_arrival is not None and node_now - self._newest_arrival <= within

    def forget_frames(self) -> None:
        """Forget the clock mapping (a new stream)."""
        with self._clock_lock:
            self._clock_offsets.clear()
            self._newest_stamp = None
            self._newest_arrival = None

    def camera_time(self, node_now: float) -> float | None:
        """The camera clock now, from the node clock; None before enough frames came.

        Taken from the median offset of the newest frames, not from one frame: a callback
        that ran late (a busy executor, or simulated time that moved on before the frame was
        handled) or early (a frame handled before the clock message that preceded it) would
        hold a period open, or close it before its frames came.
        """
        with self._clock_lock:
            if len(self._clock_offsets) < CLOCK_OFFSET_MIN_FRAMES:
                return None
            ordered = sorted(self._clock_offsets)
            return node_now - ordered[len(ordered) // 2]

    def snapshot(self, default_period: float) -> CameraSnapshot:
        """The camera's counters now, with the current stream's sampler counts."""
        session = self.session
        if session is None:
            return self.stats.snapshot(pending=0, overflowed=0, gap=0, period=default_period)
        sampler = session.sampler
        return self.stats.snapshot(
            pending=sampler.pending,
            overflowed=sampler.dropped_unconsumed,
            gap=sampler.gap_seconds,
            period=session.config.period,
        )


class Streams:
    """The loaded model and every camera's stream, shared by the node's threads.

    Args:
        values: The node's parameter values (``{name: value}``); read, never written here.
        logger: Anything with ``info``/``error`` methods (the node's logger).
    """

    def __init__(self, values: Mapping[str, Any], logger: Any) -> None:
        self.values = values
        self.logger = logger
        self.cameras = [CameraStream(spec) for spec in camera_specs(values)]
        self.loaded: LoadedModel | None = None
        self.temporal_patch = narrator_params.DEFAULT_TEMPORAL_PATCH
        # Rounds, asks and stream rebuilds take this lock, in arrival order.
        self.model_lock = FairLock()
        self.active = False
        # Numbers activations and deactivations (set_active); held while a result is
        # published, so none of an earlier activation goes out after a deactivation.
        self.activation = 0
        self.publish_lock = threading.Lock()
        self.error = ""
        # No camera has a stream: a rebuild and its rollback both failed (see StreamsDown).
        self.down = False
        # The config the sessions run with (None while unloaded), and torch's thread count.
        self.config: StreamConfig | None = None
        # The stream parameter values that config was made from (to restore them).
        self.config_values: dict[str, Any] = {}
        self.torch_threads = 0
        # The cameras' sessions as one batch-decoding group (None: cameras run one by one).
        self.group: CameraGroup | None = None
        self.batched = False
        # The model's svlm_settings.json as the node read it at configure (None: it has none),
        # the file, and the warning when it was trained on another framing ('' when none).
        self.model_settings: ModelSettings | None = None
        self.model_settings_source = ""
        self.model_settings_warning = ""

    @property
    def sampling(self) -> SamplingConfig | None:
        """The narration sampling in use (the sessions', ``top_k``/``top_p`` resolved from the
        checkpoint's generation config); None while no session exists."""
        session = self.cameras[0].session if self.cameras else None
        return session.sampling if session is not None else None

    def set_active(self, active: bool) -> None:
        """Start or stop narrating (lifecycle activate, deactivate, shutdown).

        Deactivating interrupts the round or answer in progress (it stops at its next token,
        rolled back) and waits for a result being published; every result of the activation
        that ends is then discarded (``still_active``). Activating re-arms the sessions.
        """
        if not active:
            self.interrupt()
        with self.publish_lock:
            self.active = active
            self.activation += 1
        if active:
            self.resume()

    def still_active(self, activation: int) -> bool:
        """Whether the node is active in the activation numbered ``activation``: a result
        started in it may be published (hold ``publish_lock`` while publishing)."""
        return self.active and self.activation == activation

    def camera(self, name: str) -> CameraStream | None:
        """The camera called ``name``, or None."""
        return next((camera for camera in self.cameras if camera.spec.name == name), None)

    def load(self) -> None:
        """Load the model and give every camera a fresh stream.

        Raises:
            Exception: whatever loading raised (empty or wrong ``model_path``, settings whose
                cache cannot fit, ...); nothing is kept then.
        """
        values = self.values
        if not values["model_path"]:
            raise ValueError("model_path is empty; set it to a checkpoint directory")
        device = narrator_params.model_device(values["device"])
        threads = values["torch_threads"] or narrator_params.automatic_torch_threads(
            len(os.sched_getaffinity(0)), device.split(":")[0]
        )
        import torch

        torch.set_num_threads(threads)
        self.torch_threads = threads
        self.logger.info(f"loading {values['model_path']} on {device}, {threads} torch threads")
        loaded = load_model(
            values["model_path"],
            device=device,
            dtype=values["dtype"],
            attn_implementation=values["attn_implementation"],
        )
        config = narrator_params.stream_config(values)
        self.batched = narrator_params.batch_cameras(
            values["batch_cameras"], loaded.device.type, len(self.cameras),
            loaded.attn_implementation,
        )
        sessions = self._new_sessions(loaded, config)
        self.loaded = loaded
        self.config = config
        self.config_values = self._stream_values()
        self.temporal_patch = sessions[0].vision.temporal_patch
        for camera, session in zip(self.cameras, sessions, strict=True):
            camera.session = session
        self.down = False
        self.logger.info(
            f"model {loaded.name} on {loaded.device} ({loaded.dtype}, "
            f"{loaded.attn_implementation}); cache bound {sessions[0].bound} tokens per camera"
            + (f"; the {len(self.cameras)} cameras decode as one batch" if self.batched else "")
        )
        self.logger.info(
            "narration sampling: "
            + describe_sampling(sessions[0].sampling, values))

    def run_paths(self) -> tuple[str, str]:
        """``(decode path, prefill path)`` of the cameras' sessions (``batched`` decode for a
        camera group); empty strings while no session exists."""
        session = self.cameras[0].session
        if session is None:
            return "", ""
        return ("batched" if self.group is not None else session.decode_path,
                session.prefill_path)

    def _new_sessions(self, loaded: LoadedModel, config: StreamConfig
                      ) -> list[StreamingSession]:
        """One fresh session per camera: a ``CameraGroup``'s when batched (sets ``group``)."""
        if self.batched:
            self.group = CameraGroup(loaded, config, cameras=len(self.cameras))
            return self.group.sessions
        self.group = None
        return [StreamingSession(loaded, config) for _ in self.cameras]

    def interrupt(self) -> None:
        """Make a round or answer in progress stop at its next token (from any thread)."""
        for camera in self.cameras:
            session = camera.session
            if session is not None:
                session.interrupt()

    def resume(self) -> None:
        """Re-arm every session after ``interrupt()`` (the node is activated again)."""
        for camera in self.cameras:
            session = camera.session
            if session is not None:
                session.resume()

    def _free_sessions(self) -> list[tuple[int, float] | None]:
        """Drop every camera's session and the group, then collect: their caches, group
        storage and graph pools are freed before anything new is allocated. Only what a
        stream restart records is kept: per camera, its sampler's ``(dropped_unconsumed,
        gap_seconds)`` (None: it had no session), for ``_record_restarts``. Model lock held."""
        counts = [_drop_session(camera) for camera in self.cameras]
        self.group = None
        self._collect()
        return counts

    def _record_restarts(self, counts: list[tuple[int, float] | None]) -> None:
        for camera, count in zip(self.cameras, counts, strict=True):
            if count is not None:
                camera.stats.record_stream_restart(*count)

    def _collect(self) -> None:
        gc.collect()
        if self.loaded is not None and self.loaded.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()

    def _allocate(self, config: StreamConfig) -> None:
        """Give every camera a fresh session (all or none). Model lock held, none held now."""
        sessions = self._new_sessions(self.loaded, config)
        for camera, session in zip(self.cameras, sessions, strict=True):
            camera.session = session

    def _try_allocate(self, config: StreamConfig) -> Exception | None:
        """``_allocate``; the error (its traceback dropped, so the frames of a half-built set
        of sessions are freed with it) or None."""
        try:
            self._allocate(config)
        except Exception as error:  # noqa: BLE001 - reported by the caller
            failure = error.with_traceback(None)
        else:
            return None
        self.group = None
        self._collect()
        return failure

    def rebuild(self, reason: str) -> None:
        """Restart every camera's stream with the current parameter values.

        The old sessions are freed before the new ones are allocated, so a change needs the
        memory of one set of streams, not two (and the streams' memory is lost either way).

        Raises:
            StreamRebuildFailed: the new settings cannot run (e.g. their cache does not fit
                in memory); the streams were rebuilt with the previous settings instead.
            StreamsDown: the previous settings could not be built again either (or there
                were none: the streams were down already): no camera has a stream, ``down``
                is set and ``error`` says why, until a later rebuild succeeds.
        """
        config = narrator_params.stream_config(self.values)
        with self.model_lock:
            if self.loaded is None:
                return
            previous = None if self.down else self.config
            counts = self._free_sessions()
            try:
                failure = self._try_allocate(config)
                if failure is not None:
                    self._failed(reason, failure, previous)
                self.config = config
                self.config_values = self._stream_values()
                self.down = False
                self.error = ""
            finally:  # counted once the streams are what they will be
                self._record_restarts(counts)
            sampling = describe_sampling(self.sampling, self.values)
        self.logger.info(f"streams restarted ({reason}); narration sampling: {sampling}")

    def _failed(self, reason: str, failure: Exception, previous: StreamConfig | None) -> None:
        """Roll back to ``previous`` after the new settings failed; always raises."""
        message = f"cannot restart the streams with the new settings ({reason}): {failure}"
        if previous is not None:
            second = self._try_allocate(previous)  # these ran a moment ago
            if second is None:
                self.error = message
                raise StreamRebuildFailed(message) from failure
            message += f"; nor with the previous settings: {second}"
            failure = second
        self.down = True
        self.config = None
        self.error = f"{message}; {STREAMS_DOWN_HINT}"
        raise StreamsDown(self.error) from failure

    def _stream_values(self) -> dict[str, Any]:
        return {name: self.values[name] for name in narrator_params.STREAM_PARAMETERS}

    def unload(self) -> None:
        """Drop the sessions and the model and free GPU memory (the worker must be stopped)."""
        with self.model_lock:
            self._record_restarts(self._free_sessions())
            cuda = self.loaded is not None and self.loaded.device.type == "cuda"
            self.loaded = None
            self.config = None
            self.down = False
        gc.collect()
        if cuda:
            import torch

            torch.cuda.empty_cache()
        self.logger.info("model unloaded")


def _drop_session(camera: CameraStream) -> tuple[int, float] | None:
    """Take the camera's session away; its sampler's ``(dropped_unconsumed, gap_seconds)``,
    or None when it had none (in a function of its own: no local name keeps the session
    alive after it)."""
    session, camera.session = camera.session, None
    camera.checked_size = None
    camera.forget_frames()
    if session is None:
        return None
    return session.sampler.dropped_unconsumed, session.sampler.gap_seconds
