"""Frames to the model's video input: resize to a pixel budget, then patchify.

Frames are resized here (OpenCV, area interpolation) to a size the vision encoder accepts:
both sides multiples of 28 (14-pixel patches merged 2 x 2), aspect ratio kept, and the area
within ``[min_pixels, max_pixels]`` per frame, as StreamingVLM does (max 602,112 = 768 * 28 * 28).
The processor then only normalizes and patchifies (``do_resize=False``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch

PATCH_FACTOR = 28


def fit_frame_size(
    height: int, width: int, max_pixels: int, min_pixels: int, factor: int = PATCH_FACTOR
) -> tuple[int, int]:
    """Target ``(height, width)``: multiples of ``factor``, aspect ratio about kept.

    The area never exceeds ``max_pixels`` (the cache bound counts on it); it reaches
    ``min_pixels`` where the grid of ``factor`` multiples allows (not always when the two
    limits are close together).
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"frame size must be positive, got {height}x{width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"frame aspect ratio above 200 is not supported: {width}x{height}")
    new_h = max(factor, round(height / factor) * factor)
    new_w = max(factor, round(width / factor) * factor)
    if new_h * new_w > max_pixels:
        scale = math.sqrt(height * width / max_pixels)
        new_h = max(factor, math.floor(height / scale / factor) * factor)
        new_w = max(factor, math.floor(width / scale / factor) * factor)
    elif new_h * new_w < min_pixels:
        scale = math.sqrt(min_pixels / (height * width))
        new_h = math.ceil(height * scale / factor) * factor
        new_w = math.ceil(width * scale / factor) * factor
    # Very thin frames: a side clamped up to one patch can push the area over the budget;
    # shorten the long side until it fits (one patch by one patch always does).
    if new_h * new_w > max_pixels:
        if new_h >= new_w:
            new_h = max(factor, (max_pixels // new_w) // factor * factor)
        else:
            new_w = max(factor, (max_pixels // new_h) // factor * factor)
    return new_h, new_w


@dataclass
class VideoBlock:
    """One round's frames as model input.

    Attributes:
        pixel_values: ``pixel_values_videos`` for the model.
        grid_thw: ``(1, 3)`` video grid (temporal, height, width patches).
        second_per_grid: Seconds of stream per temporal grid step.
        tokens: Video placeholder tokens the block takes in the sequence.
        size: ``(height, width)`` the frames were resized to.
    """

    pixel_values: torch.Tensor
    grid_thw: torch.Tensor
    second_per_grid: float
    tokens: int
    size: tuple[int, int]


class VisionInput:
    """Prepares video blocks with a checkpoint's own video processor."""

    def __init__(self, processor, *, max_pixels: int, min_pixels: int, fps: float):
        if max_pixels < PATCH_FACTOR * PATCH_FACTOR:
            raise ValueError(f"max_pixels must be >= {PATCH_FACTOR**2}, got {max_pixels}")
        if min_pixels > max_pixels:
            raise ValueError(f"min_pixels {min_pixels} > max_pixels {max_pixels}")
        self.video_processor = processor.video_processor
        self.merge = int(self.video_processor.merge_size)
        self.temporal_patch = int(self.video_processor.temporal_patch_size)
        self.max_pixels = max_pixels
        self.min_pixels = min_pixels
        self.fps = fps

    def prepare(self, frames: list[np.ndarray]) -> VideoBlock:
        """Resize every frame to the first frame's target size and patchify them as one video."""
        if not frames:
            raise ValueError("a video block needs at least one frame")
        if len(frames) % self.temporal_patch:
            raise ValueError(
                f"{len(frames)} frames is not a multiple of the temporal patch "
                f"size {self.temporal_patch}"
            )
        height, width = fit_frame_size(*frames[0].shape[:2], self.max_pixels, self.min_pixels)
        resized = [
            frame
            if frame.shape[:2] == (height, width)
            else cv2.resize(frame, (width, height), interpolation=cv2.INTER_AREA)
            for frame in frames
        ]
        video = np.ascontiguousarray(np.stack(resized))  # (T, H, W, 3)
        out = self.video_processor(
            videos=[video],
            do_resize=False,
            do_sample_frames=False,
            input_data_format="channels_last",
            cap_pixels_per_frame=False,  # frames were already fitted to max_pixels above
            return_tensors="pt",
        )
        grid = out["video_grid_thw"]
        tokens = int(grid.prod()) // (self.merge * self.merge)
        return VideoBlock(
            pixel_values=out["pixel_values_videos"],
            grid_thw=grid,
            second_per_grid=self.temporal_patch / self.fps,
            tokens=tokens,
            size=(height, width),
        )
