"""Video files as dataset episodes: a video with a label file, or a clip of public data.

The frames' stamps are their times in the video file (``video_reading``), so the stream's
origin is the first frame read: 0 for a whole file, about ``video_start`` for a public clip.
Label files count from that origin (``label_timing``); a public clip's text is in the video's
own time, the same clock as the stamps.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

from svlm_training.alignment import SecondAligner, StampsOutOfOrder
from svlm_training.dataset_format import DatasetWriter
from svlm_training.episode_writing import EpisodeCounts, FrameOffer, write_episode
from svlm_training.label_files import LabelFileError, read_cues
from svlm_training.label_timing import cue_events, cue_word_events
from svlm_training.public_data import PublicClip
from svlm_training.video_reading import VideoError, VideoSource


def _offers(video: VideoSource):
    for frame in video.frames():
        yield FrameOffer(frame.time, frame.rgb)


def _episode(video: VideoSource, aligner: SecondAligner, writer: DatasetWriter, episode: int,
             args, desc: str) -> EpisodeCounts:
    try:
        counts = write_episode(_offers(video), aligner, writer, episode, args,
                               total=video.frame_count, desc=desc)
    except StampsOutOfOrder as error:  # the reader keeps times increasing; a guard only
        raise VideoError(f"{video.path}: frame times out of order: {error}") from error
    if counts.seconds == 0:
        reasons = "; ".join(f"{n} x {r}" for r, n in counts.rejected.most_common()) or "none"
        raise VideoError(f"{video.path}: no second of usable frames "
                         f"({counts.alignment.frames_offered} frames; rejected: {reasons})")
    return counts


def _entry(counts: EpisodeCounts, started: float, **fields) -> dict:
    return {
        **fields,
        "seconds": counts.seconds,
        "silent_seconds": counts.silent,
        "words": counts.words,
        "frames_rejected": dict(counts.rejected),
        "alignment": asdict(counts.alignment),
        "build_seconds": time.perf_counter() - started,
    }


def convert_video(path: Path, labels: Path, offset: float, episode: int, writer: DatasetWriter,
                  args) -> dict:
    """A video file labelled by a WebVTT/SRT/JSONL file -> one episode; its manifest entry.

    Raises:
        VideoError: the video cannot be read or gives no usable second.
        LabelFileError: the label file is bad, or uses absolute stamps (a video has no such
            clock).
    """
    started = time.perf_counter()
    labelled = cue_events(read_cues(labels), str(labels), offset)
    if labelled.absolute:
        raise LabelFileError(labels, None, "absolute stamps (>= 1e9 s) label a bag's clock; a "
                                           "video file's times start at 0")
    with VideoSource(path) as video:
        aligner = SecondAligner(labelled.events, fps=args.fps, period=args.period,
                                relative_texts=True)
        counts = _episode(video, aligner, writer, episode, args, path.name)
        duration = video.duration
    return _entry(counts, started, video=str(path), duration=duration, labels=str(labels),
                  labels_offset=offset, labels_clock="stream", labels_cues=labelled.cues)


def convert_public_clip(clip: PublicClip, episode: int, writer: DatasetWriter, args) -> dict:
    """One sample of the reference's training JSONL -> one episode; its manifest entry.

    Raises:
        VideoError: the video cannot be read or the clip gives no usable second.
    """
    started = time.perf_counter()
    events = [event for cue in clip.cues for event in cue_word_events(cue)]
    with VideoSource(clip.video, clip.start, clip.end) as video:
        aligner = SecondAligner(events, fps=args.fps, period=args.period)
        try:
            counts = _episode(video, aligner, writer, episode, args, clip.video.name)
        except VideoError as error:
            raise VideoError(f"{clip.source}: {error}") from error
    end = clip.end if clip.end is not None else clip.start + counts.seconds * args.period
    return _entry(counts, started, video=str(clip.video), public=clip.source,
                  video_start=clip.start, video_end=clip.end, duration=end - clip.start)
