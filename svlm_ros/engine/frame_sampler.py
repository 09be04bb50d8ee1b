"""Turn a camera stream at any rate into whole seconds of ``fps`` frames each.

Thread-safe: a camera callback calls ``add`` (cheap: validation and, for a sampled frame, one
reference kept) or ``offer`` (the same, decoding only a frame that will be kept) while the
worker thread calls ``close_until`` and ``pop_ready``. Time is the frames' own stamps (the
camera clock or simulated time), never the wall clock, so replayed bags and simulation narrate
their own time.

A period is complete when a frame of a later period arrives, or when the consumer says that
its end has passed (``close_until``: the node maps its clock to the camera clock from the
newest frames, so the last second before a stall, or at the end of a stream, is narrated on
time). A frame whose period was already closed that way arrives too late to be seen: it is
dropped and counted (``late_frames``).

Documented recoveries:
  * a stamp earlier than the newest accepted one is rejected (``FrameRejected``); the stream
    goes on with the next frame that moves forward. But ``CLOCK_JUMP_FRAMES`` backward frames
    in a row (their stamps moving forward among themselves) mean the clock itself went back
    (a driver restart, a looping bag, a simulation reset): the stream restarts from that
    frame, and ``epoch`` counts up so the session clears its memory before the next round;
  * a stamp ``MAX_STREAM_SECONDS`` or more after the stream began is rejected as a bad clock;
  * a stall (no frames for seconds or minutes) produces no rounds; when frames return, the
    next round carries the true stream time, and the missing seconds are counted as ``gaps``;
  * a second that got fewer than ``frames_per_round`` frames (a slow camera) repeats its last
    frame; a second with none is not narrated;
  * completed seconds that nobody consumes are dropped oldest first beyond ``max_pending``
    and counted, so the queue never grows.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

#: Longest supported stream (115 days); the cache bound reserves time-text room for it.
MAX_STREAM_SECONDS = 10_000_000
#: Backward-stamped frames in a row that are taken as the camera clock restarting.
CLOCK_JUMP_FRAMES = 15


class FrameRejected(ValueError):
    """A frame that cannot enter the stream; the message says why."""


@dataclass
class SecondOfFrames:
    """The sampled frames of one period of stream time.

    Attributes:
        index: Period number since the stream began (0 for the first).
        epoch: Which stream (the sampler's ``epoch``) the period belongs to.
        start: Stream time (s) at the start of the period.
        end: Stream time (s) at its end.
        end_stamp: Camera-clock stamp (s) of the end of the period.
        frames: ``frames_per_round`` RGB uint8 frames (the last repeated if too few came).
        received: How many distinct frames were sampled.
    """

    index: int
    epoch: int
    start: float
    end: float
    end_stamp: float
    frames: list[np.ndarray] = field(default_factory=list)
    received: int = 0


def validate_frame(image: np.ndarray) -> None:
    """Raise ``FrameRejected`` unless ``image`` is a non-empty ``(H, W, 3)`` uint8 array."""
    if not isinstance(image, np.ndarray):
        raise FrameRejected(f"frame must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise FrameRejected(f"frame dtype must be uint8 RGB, got {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise FrameRejected(f"frame shape must be (height, width, 3), got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise FrameRejected(f"frame is empty: shape {image.shape}")


class FrameSampler:
    """Samples ``fps`` frames per second of stream time and groups them by period.

    Args:
        fps: Frames kept per second of stream time.
        period: Seconds of stream per round.
        max_pending: Completed periods kept for the consumer; older ones are dropped.
    """

    def __init__(self, fps: float = 2.0, period: float = 1.0, max_pending: int = 4):
        if fps <= 0 or period <= 0:
            raise ValueError(f"fps and period must be > 0, got fps={fps}, period={period}")
        frames = fps * period
        if abs(frames - round(frames)) > 1e-6 or round(frames) < 1:
            raise ValueError(f"fps * period must be a whole number of frames, got {frames}")
        self.fps = fps
        self.period = period
        self.frames_per_round = int(round(frames))
        self.max_pending = max_pending
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget the stream and the counters: the next frame starts stream time at 0."""
        with self._lock:
            self.epoch = 0
            self.restarts = 0
            self.gap_seconds = 0
            self.dropped_unconsumed = 0
            self.sampled_frames = 0
            self.late_frames = 0
            self._start_stream()

    def _start_stream(self) -> None:
        self.origin: float | None = None
        self.last_stamp: float | None = None
        self._current: SecondOfFrames | None = None
        self._slots: list[np.ndarray | None] = []
        self._ready: deque[SecondOfFrames] = deque()
        self._backward_run = 0
        self._backward_last: float | None = None
        # Periods before this index are closed (queued) or counted as gaps.
        self._accounted = 0

    def add(self, image: np.ndarray, stamp: float) -> bool:
        """Offer one frame. Returns True if it was sampled into the stream.

        Raises:
            FrameRejected: bad array, non-finite stamp, or a stamp earlier than the last one.
        """
        validate_frame(image)
        if not math.isfinite(stamp):
            raise FrameRejected(f"frame stamp is not finite: {stamp}")
        with self._lock:
            if self.last_stamp is not None and stamp < self.last_stamp:
                self._reject_or_restart(stamp)
            else:
                self._backward_run, self._backward_last = 0, None
            if self.origin is not None and stamp - self.origin >= MAX_STREAM_SECONDS:
                raise FrameRejected(
                    f"stamp {stamp:.3f} is {stamp - self.origin:.0f} s after the stream began, "
                    f"beyond the supported {MAX_STREAM_SECONDS} s: a bad clock?"
                )
            if self.origin is None:
                self.origin = stamp
            self.last_stamp = stamp
            index = self._index(stamp)
            if index < self._accounted:
                self.late_frames += 1  # its period was closed on the clock already
                return False
            if self._current is None or index > self._current.index:
                self._close_current()
                self._account_until(index)
                self._open(index)
            slot = self._slot(stamp)
            if self._slots[slot] is not None:
                return False
            self._slots[slot] = image
            self.sampled_frames += 1
            return True

    def _index(self, stamp: float) -> int:
        return int(math.floor((stamp - self.origin) / self.period + 1e-9))

    def wants(self, stamp: float) -> bool:
        """Whether ``add`` at ``stamp`` could keep the frame (or must look at it to reject it).

        False means the frame is certainly not kept: its slot is already filled or its period
        is already closed. A cheap check, so a caller can skip decoding such frames.
        """
        if not math.isfinite(stamp):
            return True  # add() rejects it with the reason
        with self._lock:
            if self.origin is None or self.last_stamp is None or stamp < self.last_stamp:
                return True
            if stamp - self.origin >= MAX_STREAM_SECONDS:
                return True
            index = self._index(stamp)
            if index < self._accounted:
                return False
            current = self._current
            if current is None or index != current.index:
                return True
            return self._slots[self._slot(stamp)] is None

    def offer(self, stamp: float, decode: Callable[[], np.ndarray]) -> bool:
        """``add(decode(), stamp)``, but ``decode`` runs only when the frame may be kept.

        A frame that is not needed still moves the stream's clock on (like ``add``), so the
        stamp order checks see every frame.

        Raises:
            FrameRejected: as ``add``; and whatever ``decode`` raises.
        """
        if self.wants(stamp):
            return self.add(decode(), stamp)
        with self._lock:
            if self.last_stamp is not None and stamp >= self.last_stamp:
                self.last_stamp = stamp
                self._backward_run, self._backward_last = 0, None
                if self._index(stamp) < self._accounted:
                    self.late_frames += 1
        return False

    def close_until(self, stamp: float) -> bool:
        """Close the open period if it ended at or before ``stamp`` (on the camera clock).

        Frames of the closed period that arrive afterwards are dropped (``late_frames``).
        Only the open period is closed: seconds without frames after it are counted as gaps
        when frames return, as always, so an estimate of ``stamp`` that runs ahead can cost
        at most the rest of one period, never a stretch of the stream.

        Returns:
            True when a period with frames became ready.
        """
        if not math.isfinite(stamp):
            raise ValueError(f"stamp must be finite, got {stamp}")
        with self._lock:
            if self.origin is None or stamp - self.origin >= MAX_STREAM_SECONDS:
                return False
            current = self._current
            if current is None or self._index(stamp) <= current.index:
                return False
            return self._close_current()

    def _slot(self, stamp: float) -> int:
        slot = int((stamp - self.origin - self._current.start) * self.fps + 1e-9)
        return min(max(slot, 0), self.frames_per_round - 1)

    def _account_until(self, index: int) -> None:
        """Periods from ``_accounted`` up to ``index`` had no frames: count them as gaps."""
        self.gap_seconds += max(0, index - self._accounted)
        self._accounted = max(self._accounted, index)

    def _reject_or_restart(self, stamp: float) -> None:
        """A backward stamp: reject it, unless enough in a row show the clock went back."""
        in_order = self._backward_last is not None and stamp >= self._backward_last
        self._backward_run = self._backward_run + 1 if in_order else 1
        self._backward_last = stamp
        if self._backward_run < CLOCK_JUMP_FRAMES:
            raise FrameRejected(
                f"stamp went backwards by {self.last_stamp - stamp:.3f} s "
                f"({stamp:.3f} < {self.last_stamp:.3f}); {CLOCK_JUMP_FRAMES} such frames in a "
                "row restart the stream"
            )
        self._start_stream()
        self.epoch += 1
        self.restarts += 1

    def _open(self, index: int) -> None:
        start = index * self.period
        self._current = SecondOfFrames(
            index=index,
            epoch=self.epoch,
            start=start,
            end=start + self.period,
            end_stamp=self.origin + start + self.period,
        )
        self._slots = [None] * self.frames_per_round

    def _close_current(self) -> bool:
        """Queue the open period (if it has frames); True if one was queued."""
        current = self._current
        if current is None:
            return False
        self._current = None
        self._accounted = current.index + 1
        taken = [frame for frame in self._slots if frame is not None]
        if not taken:
            return False
        current.received = len(taken)
        # Fill empty slots with the nearest earlier frame (or the first one) so the video block
        # always has frames_per_round frames, a multiple of the temporal patch size.
        frames, last = [], taken[0]
        for frame in self._slots:
            last = frame if frame is not None else last
            frames.append(last)
        current.frames = frames
        self._ready.append(current)
        while len(self._ready) > self.max_pending:
            self._ready.popleft()
            self.dropped_unconsumed += 1
        return True

    def pop_ready(self, latest_only: bool = False) -> tuple[SecondOfFrames | None, int]:
        """Take the oldest completed period (or the newest, skipping the rest).

        Returns:
            ``(period or None, skipped)`` where ``skipped`` counts completed periods discarded
            to stay current (only with ``latest_only``).
        """
        with self._lock:
            if not self._ready:
                return None, 0
            if latest_only:
                skipped = len(self._ready) - 1
                newest = self._ready.pop()
                self._ready.clear()
                return newest, skipped
            return self._ready.popleft(), 0

    @property
    def pending(self) -> int:
        """Completed periods waiting for the consumer."""
        with self._lock:
            return len(self._ready)
