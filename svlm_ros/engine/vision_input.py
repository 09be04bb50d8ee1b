"""Frames to the model's video input: resize to a pixel budget, then patchify.

Frames are resized here (OpenCV, area interpolation) to a size the vision encoder accepts:
both sides multiples of 28 (14-pixel patches merged 2 x 2), aspect ratio kept, and the area
within ``[min_pixels, max_pixels]`` per frame, as StreamingVLM does (max 602,112 = 768 * 28 * 28).
The processor then only normalizes and patchifies (``do_resize=False``).

On a GPU the same steps run on the device (``device=`` on ``VisionInput``): the frames are
uploaded as uint8 (a quarter of the bytes of float32), resized there by ``resize_on_device``
(OpenCV's INTER_AREA weights as two matrix products, rounded to uint8 like OpenCV) and handed
to the same processor with ``device=``, which normalizes and patchifies on the device. Against
the OpenCV path a resized pixel differs by at most one grey level (tested), i.e. at most
``1 / (255 * std)`` (about 0.015) in the normalized values the model sees.
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


def _axis_weights(source: int, target: int, shrink_both: bool, device) -> torch.Tensor:
    """``(target, source)`` resampling weights along one axis, float64, as OpenCV's INTER_AREA.

    When neither axis grows, each output pixel is the area-weighted mean of the source pixels it
    covers (fractional at the borders). When either axis grows, OpenCV switches both axes to a
    linear scheme whose ramp spans only the border between two source pixels
    (``fx = (dx + 1) - (sx + 1) / scale``, kept when positive); the same here.
    """
    if source == target:
        return torch.eye(source, dtype=torch.float64, device=device)
    out = torch.arange(target, dtype=torch.float64, device=device)
    src = torch.arange(source, dtype=torch.float64, device=device)
    scale = source / target
    if shrink_both:
        start, end = out * scale, (out + 1) * scale
        overlap = (torch.minimum(end[:, None], src[None, :] + 1)
                   - torch.maximum(start[:, None], src[None, :])).clamp(min=0)
        return overlap / scale
    left = torch.floor(out * scale)
    fraction = (out + 1) - (left + 1) / scale
    fraction = torch.where(fraction <= 0, torch.zeros_like(fraction),
                           fraction - torch.floor(fraction))
    last = left >= source - 1
    fraction = torch.where(last, torch.zeros_like(fraction), fraction)
    left = left.clamp(max=source - 1).long()
    weights = torch.zeros(target, source, dtype=torch.float64, device=device)
    rows = torch.arange(target, device=device)
    weights[rows, left] = 1 - fraction
    weights[rows, (left + 1).clamp(max=source - 1)] += fraction
    return weights


def resize_on_device(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize ``(T, H, W, 3)`` uint8 frames (on any device) to ``(T, height, width, 3)`` uint8.

    Two matrix products with ``_axis_weights`` (float32 on the frames' device), then rounded
    and clamped to uint8 as OpenCV does.
    """
    _, source_h, source_w, _ = frames.shape
    if (source_h, source_w) == (height, width):
        return frames
    device = frames.device
    shrink_both = source_h >= height and source_w >= width
    rows = _axis_weights(source_h, height, shrink_both, device).float()
    cols = _axis_weights(source_w, width, shrink_both, device).float()
    pixels = frames.float()
    pixels = torch.einsum("oh,thwc->towc", rows, pixels)
    pixels = torch.einsum("pw,towc->topc", cols, pixels)
    return pixels.round_().clamp_(0, 255).to(torch.uint8)


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

    def __init__(self, processor, *, max_pixels: int, min_pixels: int, fps: float,
                 device: torch.device | None = None):
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
        #: Where resizing, normalizing and patchifying run; None: OpenCV and the CPU.
        self.device = device

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
        if self.device is not None:
            return self._prepare_on_device(frames, height, width)
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
        return self._block(out, height, width)

    def _prepare_on_device(self, frames: list[np.ndarray], height: int, width: int
                           ) -> VideoBlock:
        """``prepare`` with the uint8 frames uploaded first and everything else on the device."""
        pieces = []
        start = 0
        while start < len(frames):  # frames of one shape go up and through resize together
            shape = frames[start].shape
            end = start
            while end < len(frames) and frames[end].shape == shape:
                end += 1
            host = torch.from_numpy(np.ascontiguousarray(np.stack(frames[start:end])))
            if self.device.type == "cuda":
                host = host.pin_memory()
            uploaded = host.to(self.device, non_blocking=True)
            pieces.append(resize_on_device(uploaded, height, width))
            start = end
        video = torch.cat(pieces).permute(0, 3, 1, 2)  # (T, 3, H, W), the processor's layout
        out = self.video_processor(
            videos=[video],
            do_resize=False,
            do_sample_frames=False,
            input_data_format="channels_first",
            cap_pixels_per_frame=False,
            device=str(self.device),
            return_tensors="pt",
        )
        return self._block(out, height, width)

    def _block(self, out, height: int, width: int) -> VideoBlock:
        grid = out["video_grid_thw"].cpu()
        tokens = int(grid.prod()) // (self.merge * self.merge)
        return VideoBlock(
            pixel_values=out["pixel_values_videos"],
            grid_thw=grid,
            second_per_grid=self.temporal_patch / self.fps,
            tokens=tokens,
            size=(height, width),
        )
