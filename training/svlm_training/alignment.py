"""Align a bag's frames and text to the stream's seconds, exactly as the engine groups frames.

Frames go through the engine's own ``FrameSampler`` (``fps`` frames per ``period`` of stamp
time, the first stamp being stream time 0), offered as the node offers them (``offer``: a frame
the sampler will not keep is never decoded), so a dataset second holds the very frames the
narrator would have seen for that second when replaying the bag. As at inference:

  * a second without any frame (a camera stall) is no round: it is not in the dataset, and
    text that falls into it is dropped and counted;
  * a second with fewer frames than ``fps * period`` repeats its last frame;
  * the last second of a bag is closed at the end (``flush``), as the node closes a period once
    its end has passed on the camera clock.

Text is assigned to the second its time falls in (``floor((time - origin) / period)``); several
texts in one second are joined with a space, in time order; a second with no text is silent.
Text before the first frame or after the last complete second is dropped and counted.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from svlm_ros.engine.frame_sampler import FrameSampler
from svlm_ros.engine.prompt_format import clean_narration


class StampsOutOfOrder(ValueError):
    """A frame stamp earlier than the one before it."""

    def __init__(self, index: int, stamp: float, previous: float):
        super().__init__(
            f"frame {index} has stamp {stamp:.6f} s, earlier than the frame before it "
            f"({previous:.6f} s, {previous - stamp:.6f} s back)"
        )
        self.index = index
        self.stamp = stamp
        self.previous = previous


@dataclass(frozen=True)
class TextEvent:
    """A piece of text at a time on the same clock as the frame stamps (s).

    ``plain``: the text is a word of a label file, not a narration; it has no end-of-second
    marker to strip, so a word that ends in "..." keeps it.
    """

    time: float
    text: str
    plain: bool = False


@dataclass
class AlignedSecond:
    """One second of the stream as the dataset stores it.

    Attributes:
        index: Period number since the stream began (the sampler's index; gaps skip numbers).
        start, end: Stream time (s) of the period.
        frames: ``fps * period`` RGB frames as sampled (not yet resized).
        received: Distinct frames sampled in the period.
        text: The words said in this second ('' when silent).
    """

    index: int
    start: float
    end: float
    frames: list[np.ndarray]
    received: int
    text: str = ""


@dataclass
class AlignmentStats:
    """Counts of what alignment dropped, for the manifest."""

    text_events: int = 0
    text_before_stream: int = 0
    text_after_stream: int = 0
    text_in_gaps: int = 0
    gap_seconds: int = 0
    frames_offered: int = 0
    frames_sampled: int = 0


@dataclass
class SecondAligner:
    """Feeds frames through ``FrameSampler`` and hands out completed, text-labelled seconds.

    Args:
        texts: Every text event of the stream (any order; sorted here).
        fps, period: As the engine's ``StreamConfig``.
        relative_texts: The texts' times are stream times (0 = the first frame's stamp, as a
            label file counts them) instead of stamps on the frames' clock; the origin is only
            known once the first frame came.
    """

    texts: Iterable[TextEvent]
    fps: float = 2.0
    period: float = 1.0
    stats: AlignmentStats = field(default_factory=AlignmentStats)
    relative_texts: bool = False

    def __post_init__(self):
        self.sampler = FrameSampler(self.fps, self.period, max_pending=1 << 30)
        self._events = sorted(self.texts, key=lambda event: event.time)
        self.stats.text_events = len(self._events)
        self._by_index: dict[int, list[str]] | None = None
        self._seen: set[int] = set()
        self._last_stamp: float | None = None
        self._frames = 0

    @property
    def origin(self) -> float | None:
        """The stamp of the first frame (stream time 0), once a frame came."""
        return self.sampler.origin

    def offer(self, stamp: float, decode: Callable[[], np.ndarray]) -> list[AlignedSecond]:
        """Offer one frame, decoded by ``decode()`` only if the sampler keeps it; returns the
        seconds it completed (usually none or one).

        Raises:
            StampsOutOfOrder: the stamp is earlier than the previous frame's.
            svlm_ros.engine.frame_sampler.FrameRejected: not an RGB uint8 frame.
            Whatever ``decode`` raises (e.g. ``ImageRejected``); the stream is unaffected and a
            later frame may take the slot, as in the node.
        """
        if self._last_stamp is not None and stamp < self._last_stamp:
            raise StampsOutOfOrder(self._frames, stamp, self._last_stamp)
        self._last_stamp = stamp
        self._frames += 1
        self.stats.frames_offered += 1
        if self.sampler.offer(stamp, decode):
            self.stats.frames_sampled += 1
        if self._by_index is None and self.sampler.origin is not None:
            self._by_index = self._index_texts(self.sampler.origin)
        return list(self._drain())

    def add(self, stamp: float, image: np.ndarray) -> list[AlignedSecond]:
        """``offer`` of an already decoded frame."""
        return self.offer(stamp, lambda: image)

    def flush(self) -> list[AlignedSecond]:
        """Close the open second at the end of the stream and return it (if it has frames)."""
        if self._last_stamp is None or self.sampler.origin is None:
            return []
        self.sampler.close_until(self._last_stamp + self.period)
        return list(self._drain())

    def finish(self) -> AlignmentStats:
        """Close the stream: count the text no dataset second took, and the gaps."""
        if self._by_index is None:  # no frame at all
            self.stats.text_before_stream = len(self._events)
            return self.stats
        last = max(self._seen) if self._seen else -1
        for index, texts in self._by_index.items():
            if index in self._seen:
                continue
            if index < 0:
                self.stats.text_before_stream += len(texts)
            elif index > last:
                self.stats.text_after_stream += len(texts)
            else:
                self.stats.text_in_gaps += len(texts)
        self.stats.gap_seconds = self.sampler.gap_seconds
        return self.stats

    def _index_texts(self, origin: float) -> dict[int, list[str]]:
        by_index: dict[int, list[str]] = defaultdict(list)
        base = 0.0 if self.relative_texts else origin
        for event in self._events:
            index = math.floor((event.time - base) / self.period + 1e-9)
            by_index[index].append(event.text.strip() if event.plain
                                   else clean_narration(event.text))
        return by_index

    def _drain(self) -> Iterator[AlignedSecond]:
        while True:
            second, _ = self.sampler.pop_ready()
            if second is None:
                return
            self._seen.add(second.index)
            pieces = self._by_index.get(second.index, [])
            yield AlignedSecond(
                index=second.index,
                start=second.start,
                end=second.end,
                frames=second.frames,
                received=second.received,
                text=" ".join(piece for piece in pieces if piece),
            )
