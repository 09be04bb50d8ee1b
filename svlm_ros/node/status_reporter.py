"""Status and diagnostics: ``status`` (``svlm_ros/NarratorStatus``) and ``/diagnostics``.

Published every ``status_period`` seconds in every lifecycle state (plain publishers, not
lifecycle ones: a node that cannot configure must still say why). The timer has its own
callback group, so status goes out while rounds, asks and frames are being handled.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.node import Node

from svlm_ros.msg import CameraStatus, NarratorStatus
from svlm_ros.node.ask_service import AskService
from svlm_ros.node.stream_stats import CameraSnapshot
from svlm_ros.node.streams import CameraStream, Streams
from svlm_ros.node.transport_monitor import ArrivalFigures, explain

try:  # /diagnostics is optional: diagnostic_msgs is not part of every minimal install
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
except ImportError:  # pragma: no cover - present in this project's environments
    DiagnosticArray = None

try:
    import psutil
except ImportError:  # pragma: no cover - psutil is a declared dependency
    psutil = None

# CameraSnapshot fields copied as they are into CameraStatus.
_COUNTER_FIELDS = (
    "frames_received", "frames_sampled", "frames_dropped", "frames_rejected",
    "last_rejection", "seconds_narrated", "seconds_silent", "seconds_skipped",
    "seconds_overflowed", "seconds_gap", "seconds_pending", "round_errors",
    "last_round_error", "stream_restarts", "cache_tokens",
)  # fmt: skip
_LATENCY_FIELDS = (
    "step_latency_median", "step_latency_p99", "publish_latency_median",
    "publish_latency_p99", "real_time_factor",
)  # fmt: skip


class StatusReporter:
    """Publishes the node's health on a timer.

    Args:
        node: The node that owns the publishers and the timer.
        streams: The cameras and the shared model.
        asks: The ask service (its counters).
        values: The node's parameter values (``status_period``, ``period``).
        lifecycle_state: Returns the node's lifecycle state label.
    """

    def __init__(
        self,
        node: Node,
        streams: Streams,
        asks: AskService,
        values: Mapping[str, Any],
        lifecycle_state: Callable[[], str],
    ) -> None:
        self._node = node
        self._streams = streams
        self._asks = asks
        self._values = values
        self._lifecycle_state = lifecycle_state
        self._previous_snapshots: dict[str, CameraSnapshot] = {}
        self._status_publisher = node.create_publisher(NarratorStatus, "status", 10)
        self._diagnostics_publisher = (
            node.create_publisher(DiagnosticArray, "/diagnostics", 10)
            if DiagnosticArray is not None
            else None
        )
        self._timer = node.create_timer(
            values["status_period"], self.publish, callback_group=MutuallyExclusiveCallbackGroup()
        )

    def publish(self) -> None:
        """Publish one status message and one diagnostic array."""
        streams = self._streams
        status = NarratorStatus()
        status.header.stamp = self._node.get_clock().now().to_msg()
        status.state = self._lifecycle_state()
        status.error = streams.error
        loaded = streams.loaded
        if loaded is not None:
            status.model = loaded.path
            status.device = str(loaded.device)
            status.dtype = str(loaded.dtype).removeprefix("torch.")
            status.attn_implementation = loaded.attn_implementation
            status.torch_threads = int(streams.torch_threads)
            status.decode_path, status.prefill_path = streams.run_paths()
            if loaded.device.type == "cuda":
                import torch

                status.device_memory_allocated = int(torch.cuda.memory_allocated(loaded.device))
                status.device_memory_reserved = int(torch.cuda.memory_reserved(loaded.device))
        if psutil is not None:
            status.process_memory = int(psutil.Process().memory_info().rss)
        counts = self._asks.counts()
        status.asks_answered = counts.answered
        status.asks_failed = counts.failed
        status.last_ask_error = counts.last_error
        snapshots, transports = [], []
        for camera in streams.cameras:
            snapshot = camera.snapshot(self._values["period"])
            figures = camera.arrivals.figures()
            warning = explain(
                figures,
                transport=camera.spec.transport,
                # auto already subscribes reliable where the camera offers it: no hint then.
                reliability=self._values["qos_reliability"],
            )
            # Nearly every frame lost leaves too few for an estimate: judged from the
            # publishers matched and the frames that came.
            starved = camera.starvation.check(
                self._node.count_publishers(camera.spec.subscription_topic),
                snapshot.frames_received, time.monotonic(), transport=camera.spec.transport)
            warning = warning or starved
            snapshots.append(snapshot)
            transports.append((figures, warning))
            status.cameras.append(self._camera_status(camera, snapshot, figures, warning))
        self._status_publisher.publish(status)
        if self._diagnostics_publisher is not None:
            self._diagnostics_publisher.publish(self._diagnostics(status, snapshots, transports))
        self._previous_snapshots = {
            camera.spec.name: snapshot
            for camera, snapshot in zip(streams.cameras, snapshots, strict=True)
        }

    def _camera_status(
        self, camera: CameraStream, snapshot: CameraSnapshot, figures: ArrivalFigures,
        warning: str,
    ) -> CameraStatus:
        message = CameraStatus()
        message.name = camera.spec.name
        message.topic = self._node.resolve_topic_name(camera.spec.subscription_topic)
        message.transport = camera.spec.transport
        message.frame_id = camera.frame_id
        for field in _COUNTER_FIELDS:
            setattr(message, field, getattr(snapshot, field))
        message.stream_time = float(snapshot.stream_time)
        session = camera.session
        message.cache_bound = int(session.bound) if session is not None else 0
        for field in _LATENCY_FIELDS:
            setattr(message, field, float(getattr(snapshot, field)))
        message.frames_late = int(session.sampler.late_frames) if session is not None else 0
        message.frame_rate_stamps = float(figures.stamp_rate)
        message.frame_rate_received = float(figures.received_rate)
        message.frames_lost_fraction = float(figures.lost_fraction)
        message.transport_warning = warning
        return message

    def _diagnostics(self, status: NarratorStatus, snapshots: list[CameraSnapshot], transports):
        array = DiagnosticArray()
        array.header.stamp = status.header.stamp
        prefix = self._node.get_fully_qualified_name()
        node = DiagnosticStatus(name=f"{prefix}: node", hardware_id=status.device)
        if status.error:
            node.level, node.message = DiagnosticStatus.ERROR, status.error
        elif status.state != "active":
            node.level, node.message = DiagnosticStatus.WARN, f"{status.state}: not narrating"
        else:
            node.level, node.message = DiagnosticStatus.OK, "narrating"
        streams = self._streams
        sampling = streams.sampling
        settings = streams.model_settings
        if not status.error and status.state == "active" and streams.model_settings_warning:
            node.level = DiagnosticStatus.WARN
            node.message = "narrating, but the model was trained on another framing: retrain it"
        node.values = [
            KeyValue(key=key, value=str(value))
            for key, value in (
                ("state", status.state), ("model", status.model), ("device", status.device),
                ("dtype", status.dtype), ("attn_implementation", status.attn_implementation),
                ("decode_path", status.decode_path), ("prefill_path", status.prefill_path),
                ("device_memory_allocated", status.device_memory_allocated),
                ("device_memory_reserved", status.device_memory_reserved),
                ("process_memory", status.process_memory),
                ("torch_threads", status.torch_threads),
                ("asks_answered", status.asks_answered), ("asks_failed", status.asks_failed),
                ("last_ask_error", status.last_ask_error),
                # The narration sampling in use ('' while no stream exists): top_k and top_p
                # as resolved from the checkpoint's generation_config.json where left at -1.
                ("temperature", _sampling_value(sampling, "temperature")),
                ("top_k", _sampling_value(sampling, "top_k")),
                ("top_p", _sampling_value(sampling, "top_p")),
                ("repetition_penalty", _sampling_value(sampling, "repetition_penalty")),
                # The model's svlm_settings.json ('' when it has none) and its format.
                ("model_settings", streams.model_settings_source),
                ("model_format", settings.format if settings is not None else ""),
                ("model_settings_warning", streams.model_settings_warning),
            )
        ]  # fmt: skip
        array.status.append(node)
        for camera, snapshot, transport in zip(
            self._streams.cameras, snapshots, transports, strict=True
        ):
            array.status.append(
                self._camera_diagnostic(prefix, camera, snapshot, transport, status.state)
            )
        return array

    def _camera_diagnostic(
        self, prefix: str, camera: CameraStream, snapshot: CameraSnapshot,
        transport: tuple[ArrivalFigures, str], state: str,
    ):
        figures, warning = transport
        previous = self._previous_snapshots.get(camera.spec.name)
        diagnostic = DiagnosticStatus(
            name=f"{prefix}: camera {camera.spec.name}",
            hardware_id=self._node.resolve_topic_name(camera.spec.subscription_topic),
        )
        level, message = DiagnosticStatus.OK, "narrating"
        if state != "active":
            level, message = DiagnosticStatus.WARN, state
        elif self._streams.down:
            level, message = DiagnosticStatus.ERROR, "no stream: narration stopped (see node)"
        elif previous is not None:
            if snapshot.round_errors > previous.round_errors:
                level, message = DiagnosticStatus.ERROR, snapshot.last_round_error
            elif snapshot.frames_rejected > previous.frames_rejected:
                level, message = DiagnosticStatus.WARN, f"rejected: {snapshot.last_rejection}"
            elif snapshot.frames_received == previous.frames_received:
                # A publisher whose frames are lost on the way says more than "no frames".
                level, message = DiagnosticStatus.WARN, warning or "no frames"
            elif warning:
                level, message = DiagnosticStatus.WARN, warning
            elif snapshot.seconds_skipped > previous.seconds_skipped:
                level, message = DiagnosticStatus.WARN, "model behind real time: skipping"
        diagnostic.level, diagnostic.message = level, message
        values = {
            **vars(snapshot),
            "frame_rate_stamps": figures.stamp_rate,
            "frame_rate_received": figures.received_rate,
            "frames_lost_fraction": figures.lost_fraction,
        }
        if camera.qos_choice is not None:
            choice = camera.qos_choice
            values["qos"] = f"{choice.reliability}/{choice.durability}"
            values["qos_reason"] = choice.reason
        diagnostic.values = [
            KeyValue(key=key, value=_format_value(value)) for key, value in values.items()
        ]
        return diagnostic


def _sampling_value(sampling: Any, name: str) -> str:
    return "" if sampling is None else _format_value(getattr(sampling, name))


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.6g}"
    return str(value)
