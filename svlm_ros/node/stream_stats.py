"""Per-camera counters and latency statistics of the narrator node (plain Python, thread-safe).

The image callback, the worker thread and the status timer of the node touch the same
``CameraStats`` from different threads; every method takes the object's lock, and
``snapshot()`` returns an immutable copy for the status message.

Counter meanings (README's status table says the same):

* frames: ``received`` = every message that arrived; of those ``rejected`` could not enter the
  stream (bad image, stamp going backwards), ``sampled`` entered it, and ``dropped`` =
  received - rejected - sampled were valid but not needed (the model takes ``fps`` frames per
  second of stream; a 30 Hz camera at fps 2 drops 28 of every 30) or arrived while the node
  was inactive;
* seconds: ``narrated`` rounds ran (``silent`` of them said nothing new); ``skipped`` completed
  seconds were passed over by the worker to stay current; ``overflowed`` were dropped from a
  full queue before the worker came; ``gap`` seconds had no frames at all (camera stalls);
* latency: ``step`` = model time of one round, ``publish`` = end of the narrated second (camera
  clock) to publication (node clock); median and p99 over the last ``window`` rounds.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass


def percentile(values: Iterable[float], fraction: float) -> float:
    """Nearest-rank percentile (``fraction`` in [0, 1]) of ``values``; NaN when empty."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def median(values: Iterable[float]) -> float:
    """Median (mean of the middle two for an even count); NaN when empty."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2.0


class LatencyWindow:
    """The last ``size`` samples of a latency, with median and p99.

    Args:
        size: Samples kept (older ones fall out).
    """

    def __init__(self, size: int = 200) -> None:
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        self._samples: deque[float] = deque(maxlen=size)

    def add(self, value: float) -> None:
        """Add one sample (seconds)."""
        self._samples.append(float(value))

    def __len__(self) -> int:
        return len(self._samples)

    def median(self) -> float:
        """Median of the window; NaN when empty."""
        return median(self._samples)

    def p99(self) -> float:
        """99th percentile (nearest rank) of the window; NaN when empty."""
        return percentile(self._samples, 0.99)


@dataclass(frozen=True)
class CameraSnapshot:
    """One camera's counters at one moment (see the module docstring for each meaning)."""

    frames_received: int
    frames_sampled: int
    frames_rejected: int
    frames_dropped: int
    last_rejection: str
    seconds_narrated: int
    seconds_silent: int
    seconds_skipped: int
    seconds_overflowed: int
    seconds_gap: int
    seconds_pending: int
    round_errors: int
    last_round_error: str
    stream_restarts: int
    stream_time: float
    cache_tokens: int
    step_latency_median: float
    step_latency_p99: float
    publish_latency_median: float
    publish_latency_p99: float
    real_time_factor: float


class CameraStats:
    """Counters of one camera stream, shared by the callback, worker and status threads.

    Args:
        window: Rounds kept for the latency statistics.
    """

    def __init__(self, window: int = 200) -> None:
        self._lock = threading.Lock()
        self._step = LatencyWindow(window)
        self._publish = LatencyWindow(window)
        self.frames_received = 0
        self.frames_sampled = 0
        self.frames_rejected = 0
        self.last_rejection = ""
        self.seconds_narrated = 0
        self.seconds_silent = 0
        self.seconds_skipped = 0
        self.round_errors = 0
        self.last_round_error = ""
        self.stream_restarts = 0
        self.stream_time = 0.0
        self.cache_tokens = 0
        # Counters of streams that were replaced (their sampler's counts would be lost).
        self._overflowed_before = 0
        self._gap_before = 0

    def record_received(self) -> None:
        """A message arrived (counted before it is looked at)."""
        with self._lock:
            self.frames_received += 1

    def record_accepted(self, sampled: bool) -> None:
        """A valid frame entered the sampler; ``sampled`` says whether it was kept."""
        if sampled:
            with self._lock:
                self.frames_sampled += 1

    def record_rejection(self, reason: str) -> None:
        """A message could not enter the stream, for ``reason``."""
        with self._lock:
            self.frames_rejected += 1
            self.last_rejection = reason

    def record_round(
        self,
        *,
        silent: bool,
        step_seconds: float,
        publish_latency: float,
        stream_time: float,
        cache_tokens: int,
    ) -> None:
        """One narration was produced and published."""
        with self._lock:
            self.seconds_narrated += 1
            self.seconds_silent += int(silent)
            self._step.add(step_seconds)
            self._publish.add(publish_latency)
            self.stream_time = stream_time
            self.cache_tokens = cache_tokens

    def record_skipped(self, seconds: int) -> None:
        """The worker skipped ``seconds`` completed seconds to narrate the newest."""
        if seconds:
            with self._lock:
                self.seconds_skipped += seconds

    def record_round_error(self, reason: str) -> None:
        """A round failed; its second is lost (the engine rolls the round back)."""
        with self._lock:
            self.round_errors += 1
            self.last_round_error = reason

    def record_stream_restart(self, overflowed: int, gap: int) -> None:
        """The camera's stream was replaced; keep the old stream's sampler counts."""
        with self._lock:
            self.stream_restarts += 1
            self._overflowed_before += overflowed
            self._gap_before += gap
            self.stream_time = 0.0
            self.cache_tokens = 0

    def snapshot(self, *, pending: int, overflowed: int, gap: int, period: float) -> CameraSnapshot:
        """The counters now.

        Args:
            pending: Completed seconds waiting in the current stream's queue.
            overflowed: Seconds the current stream's queue dropped unconsumed.
            gap: Seconds without frames in the current stream.
            period: Seconds of stream per round (for the real-time factor).
        """
        with self._lock:
            step_median = self._step.median()
            return CameraSnapshot(
                frames_received=self.frames_received,
                frames_sampled=self.frames_sampled,
                frames_rejected=self.frames_rejected,
                frames_dropped=max(
                    0, self.frames_received - self.frames_rejected - self.frames_sampled
                ),
                last_rejection=self.last_rejection,
                seconds_narrated=self.seconds_narrated,
                seconds_silent=self.seconds_silent,
                seconds_skipped=self.seconds_skipped,
                seconds_overflowed=self._overflowed_before + overflowed,
                seconds_gap=self._gap_before + gap,
                seconds_pending=pending,
                round_errors=self.round_errors,
                last_round_error=self.last_round_error,
                stream_restarts=self.stream_restarts,
                stream_time=self.stream_time,
                cache_tokens=self.cache_tokens,
                step_latency_median=step_median,
                step_latency_p99=self._step.p99(),
                publish_latency_median=self._publish.median(),
                publish_latency_p99=self._publish.p99(),
                real_time_factor=step_median / period if period > 0 else math.nan,
            )
