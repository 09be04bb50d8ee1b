"""A short video of a run with the narration (and the ground truth) under each frame.

People would rather watch a narrator than read its log: ``CaptionedVideo`` collects frames with
their captions and writes an animated GIF (Pillow) and, where OpenCV's writer is available, an
MP4. Plain numpy/OpenCV/Pillow: no ROS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

CAPTION_ROWS = 2
ROW_HEIGHT = 18
FONT = cv2.FONT_HERSHEY_SIMPLEX


@dataclass
class CaptionedFrame:
    picture: np.ndarray  # RGB uint8
    narration: str
    truth: str | None


def _fit(text: str, width: int, scale: float) -> str:
    """Shorten ``text`` with an ellipsis until it fits ``width`` pixels."""
    while text and cv2.getTextSize(text, FONT, scale, 1)[0][0] > width:
        text = text[:-4] + "..." if len(text) > 4 else ""
    return text


def caption(picture: np.ndarray, narration: str, truth: str | None, width: int = 448
            ) -> np.ndarray:
    """The frame scaled to ``width`` with a black strip below: the narration (green) and, when
    given, the ground truth (grey)."""
    height = int(round(picture.shape[0] * width / picture.shape[1]))
    scaled = cv2.resize(picture, (width, height), interpolation=cv2.INTER_NEAREST)
    strip = np.zeros((CAPTION_ROWS * ROW_HEIGHT + 6, width, 3), np.uint8)
    scale = 0.45
    said = " ".join("".join(c if c.isprintable() else " " for c in narration).split()) or "..."
    cv2.putText(strip, _fit(f"narrator: {said}", width - 8, scale), (4, ROW_HEIGHT),
                FONT, scale, (120, 255, 120), 1, cv2.LINE_AA)
    if truth is not None:
        cv2.putText(strip, _fit(f"truth:    {truth.strip() or '...'}", width - 8, scale),
                    (4, 2 * ROW_HEIGHT), FONT, scale, (190, 190, 190), 1, cv2.LINE_AA)
    return np.concatenate([scaled, strip], axis=0)


class CaptionedVideo:
    """Frames with captions, written as GIF (and MP4) at ``fps`` frames per second."""

    def __init__(self, fps: float = 2.0, width: int = 448, max_frames: int = 1200):
        if fps <= 0:
            raise ValueError(f"fps must be > 0, got {fps}")
        self.fps = fps
        self.width = width
        self.max_frames = max_frames
        self.frames: list[CaptionedFrame] = []

    def add(self, picture: np.ndarray, narration: str, truth: str | None = None) -> None:
        """Add one frame; beyond ``max_frames`` the oldest is dropped (a bounded memory)."""
        self.frames.append(CaptionedFrame(picture, narration, truth))
        if len(self.frames) > self.max_frames:
            del self.frames[0]

    def rendered(self) -> list[np.ndarray]:
        return [caption(f.picture, f.narration, f.truth, self.width) for f in self.frames]

    def write_gif(self, path: str | Path) -> Path:
        """Write an animated GIF that loops; returns its path."""
        from PIL import Image

        if not self.frames:
            raise ValueError("no frames to write")
        path = Path(path)
        images = [Image.fromarray(frame) for frame in self.rendered()]
        partial = path.with_name(path.name + ".partial")
        images[0].save(partial, format="GIF", save_all=True, append_images=images[1:],
                       duration=int(round(1000 / self.fps)), loop=0)
        partial.replace(path)
        return path

    def write_mp4(self, path: str | Path) -> Path | None:
        """Write an MP4 (mp4v) if this OpenCV build can; returns its path or None."""
        if not self.frames:
            raise ValueError("no frames to write")
        path = Path(path)
        frames = self.rendered()
        height, width = frames[0].shape[:2]
        partial = path.with_name(path.name + ".partial.mp4")
        writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"mp4v"), self.fps,
                                 (width, height))
        if not writer.isOpened():
            return None
        try:
            for frame in frames:
                writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        finally:
            writer.release()
        partial.replace(path)
        return path
