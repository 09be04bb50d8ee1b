"""One stream's frames and text -> dataset rows: the loop every kind of source shares.

A bag, a video file with a label file and a clip of public data all become an episode the same
way: their frames, with stamps, are offered to a ``SecondAligner`` that already holds the text;
every completed second is resized to the pixel budget and appended to the ``DatasetWriter``.
What differs between the sources (where frames and stamps come from, how text is read) stays
in ``bag2dataset`` and ``video_sources``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import cv2
import numpy as np
from tqdm import tqdm

from svlm_ros.engine.frame_sampler import FrameRejected
from svlm_ros.engine.vision_input import fit_frame_size
from svlm_ros.image_conversion import ImageRejected
from svlm_training.alignment import AlignmentStats, SecondAligner
from svlm_training.dataset_format import DatasetWriter
from svlm_training.question_events import QuestionTimeline
from svlm_training.video_reading import VideoError

#: Exceptions that reject one frame (the stream goes on without it, as in the node).
FRAME_REJECTIONS = (ImageRejected, FrameRejected, VideoError)


@dataclass(frozen=True)
class FrameOffer:
    """A frame as a source offers it: its stamp, and how to decode it if the sampler keeps it."""

    stamp: float
    decode: Callable[[], np.ndarray]


@dataclass
class EpisodeCounts:
    """What one episode put into the dataset, for the manifest."""

    seconds: int = 0
    silent: int = 0
    words: int = 0
    rejected: Counter = field(default_factory=Counter)
    alignment: AlignmentStats | None = None


def resize_frame(frame: np.ndarray, max_pixels: int, min_pixels: int) -> np.ndarray:
    """Resize to the size the engine's ``VisionInput`` would (same fit, same interpolation).

    Stored frames are then already at their model size, and ``VisionInput.prepare`` leaves them
    as they are at training time.
    """
    height, width = fit_frame_size(*frame.shape[:2], max_pixels, min_pixels)
    if (height, width) == frame.shape[:2]:
        return frame
    return cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)


def rejection_reason(error: Exception) -> str:
    """A countable reason: the message without its per-frame numbers."""
    text = str(error)
    return text.split(";")[0].split(",")[0][:120]


def write_episode(offers: Iterable[FrameOffer], aligner: SecondAligner, writer: DatasetWriter,
                  episode: int, args, *, total: int | None, desc: str,
                  questions: QuestionTimeline | None = None) -> EpisodeCounts:
    """Offer every frame to ``aligner`` and write the seconds it completes as ``episode``.

    ``questions`` (times on the frames' clock) gives each second the question asked in it.

    ``args`` gives ``max_pixels``, ``min_pixels`` and ``quiet``. Frames rejected while decoding
    are counted per reason and skipped; a later frame may take their slot.

    Raises:
        svlm_training.alignment.StampsOutOfOrder: a stamp earlier than the one before it (the
            caller names the source).
    """
    counts = EpisodeCounts()

    def write(completed) -> None:
        for second in completed:
            frames = [resize_frame(f, args.max_pixels, args.min_pixels) for f in second.frames]
            question = answer = ""
            if questions is not None:
                origin = aligner.origin  # stream time 0 on the frames' clock
                question, answer = questions.asked_in(origin + second.start, origin + second.end)
            writer.add(episode=episode, second=second.index, start=second.start, end=second.end,
                       text=second.text, received=second.received, frames=frames,
                       question=question, answer=answer)
            counts.seconds += 1
            counts.silent += not second.text
            counts.words += len(second.text.split())

    progress = tqdm(total=total or None, unit="frame", desc=desc, disable=args.quiet,
                    leave=False)
    with progress:
        for offer in offers:
            progress.update()
            try:
                # Decoded only if the sampler keeps it, as the node does.
                write(aligner.offer(offer.stamp, offer.decode))
            except FRAME_REJECTIONS as error:
                counts.rejected[rejection_reason(error)] += 1
                continue
            progress.set_postfix(seconds=counts.seconds, refresh=False)
        write(aligner.flush())
    counts.alignment = aligner.finish()
    return counts
