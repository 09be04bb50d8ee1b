"""Read the frames of a video file (mp4, mkv, webm...) with their times, without ROS.

Decoding is OpenCV's ``cv2.VideoCapture`` (its FFmpeg backend). Why OpenCV and not PyAV or
torchvision's video reader: ``opencv-python-headless`` is already a requirement of the engine
(setup.py ``install_requires`` and scripts/requirements.txt), its wheels bundle FFmpeg, so a
fresh ``bash scripts/setup.sh`` or ``pip install .`` reads mp4/H.264 with nothing more to
install; PyAV is not installed by either, and torchvision removed its video reader.

A frame's time is its presentation time in the file (``CAP_PROP_POS_MSEC`` after the frame is
read), in seconds from the start of the file; where the backend reports no usable time (zero or
going back after the first frame), the frame number over the nominal frame rate is used
instead. A frame is converted to RGB only when asked (``VideoFrame.rgb``), so frames the frame
sampler does not keep cost only their decoding.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

#: File name endings taken for video files (anything else given where a bag or a video may go
#: is taken for a bag).
VIDEO_SUFFIXES = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg",
                            ".ts", ".flv", ".wmv", ".ogv"})


class VideoError(ValueError):
    """A video file that cannot be read; the message names the file."""


def is_video(path: str | Path) -> bool:
    """Whether ``path`` names a video file (by its ending)."""
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclass
class VideoFrame:
    """One decoded frame: ``index`` in the file, ``time`` (s from the file's start)."""

    index: int
    time: float
    _capture: cv2.VideoCapture

    def rgb(self) -> np.ndarray:
        """The frame as RGB uint8 ``(H, W, 3)``; only valid until the next frame is read.

        Raises:
            VideoError: the frame cannot be converted (a corrupt frame).
        """
        ok, bgr = self._capture.retrieve()
        if not ok or bgr is None:
            raise VideoError(f"frame {self.index} at {self.time:.3f} s cannot be decoded")
        if bgr.ndim == 2:
            return cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


class VideoSource:
    """A video file opened for reading; use as a context manager.

    Args:
        path: The video file.
        start, end: Read only frames with ``start <= time < end`` (s); None for the file's
            start or end.

    Raises:
        VideoError: no such file, or OpenCV cannot open it (not a video, or a codec its FFmpeg
            lacks).
    """

    def __init__(self, path: str | Path, start: float | None = None, end: float | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise VideoError(f"{self.path}: no such video file")
        self.start = start
        self.end = end
        self._capture: cv2.VideoCapture | None = None

    def __enter__(self) -> VideoSource:
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            capture.release()
            raise VideoError(f"{self.path}: cannot open the video (not a video file, or a codec "
                             "OpenCV's FFmpeg cannot decode)")
        self._capture = capture
        return self

    def __exit__(self, *exc_info) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None

    @property
    def capture(self) -> cv2.VideoCapture:
        if self._capture is None:
            raise RuntimeError("VideoSource is not open; use it as a context manager")
        return self._capture

    @property
    def fps(self) -> float:
        """The nominal frame rate the file declares (0 when it declares none)."""
        value = float(self.capture.get(cv2.CAP_PROP_FPS) or 0.0)
        return value if math.isfinite(value) and value > 0 else 0.0

    @property
    def frame_count(self) -> int:
        """Frames the file declares (an estimate for some containers; 0 when unknown)."""
        value = float(self.capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0.0)
        return int(value) if math.isfinite(value) and value > 0 else 0

    @property
    def duration(self) -> float:
        """Declared length in seconds (0 when unknown)."""
        return self.frame_count / self.fps if self.fps else 0.0

    def frames(self) -> Iterator[VideoFrame]:
        """The frames in file order, with their times; convert one with ``frame.rgb()``."""
        capture = self.capture
        if self.start:
            # Seek close before the wanted start (FFmpeg seeks to a key frame at or before it),
            # then skip to it frame by frame: exact whatever the key frame spacing.
            capture.set(cv2.CAP_PROP_POS_MSEC, max(0.0, self.start - 2.0) * 1000)
        nominal = self.fps or 30.0
        previous: float | None = None
        index = int(capture.get(cv2.CAP_PROP_POS_FRAMES) or 0)
        while capture.grab():
            time = float(capture.get(cv2.CAP_PROP_POS_MSEC)) / 1000
            if not math.isfinite(time) or (previous is not None and time <= previous):
                time = index / nominal if previous is None else previous + 1 / nominal
            previous = time
            frame = VideoFrame(index, time, capture)
            index += 1
            if self.start is not None and time < self.start:
                continue
            if self.end is not None and time >= self.end:
                return
            yield frame
