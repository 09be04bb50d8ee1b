"""Helpers for the streaming-engine tests: tiny checkpoints, synthetic streams, references."""

from __future__ import annotations

import numpy as np
import torch

from svlm_ros.engine.cache_policy import CachePolicyConfig
from svlm_ros.engine.decoding import SamplingConfig
from svlm_ros.engine.model_loading import load_model
from svlm_ros.engine.streaming_session import StreamConfig, StreamingSession
from svlm_ros.engine.tiny_model import make_tiny_checkpoint

# Small frames keep the tests fast: 112x112 -> 4x4 merged tokens per temporal patch.
SMALL_PIXELS = 112 * 112


def make_loaded(tmp_dir, layers: int, seed: int = 0):
    path = make_tiny_checkpoint(tmp_dir / f"tiny_{layers}layer_seed{seed}", seed=seed,
                                num_layers=layers)
    return load_model(path, device="cpu", dtype="float32", attn_implementation="sdpa")


def small_config(window: int = 3, text_sink: int = 6, text_window: int = 10, **overrides):
    """Greedy decoding, tiny frames and tiny windows, so evictions come fast."""
    values = dict(
        max_pixels=SMALL_PIXELS,
        min_pixels=28 * 28,
        max_new_tokens=6,
        cache=CachePolicyConfig(
            text_sink_tokens=text_sink, text_window_tokens=text_window,
            vision_window_seconds=window,
        ),
        sampling=SamplingConfig(temperature=0.0, repetition_penalty=1.0),
    )
    values.update(overrides)
    return StreamConfig(**values)


class SyntheticCamera:
    """A 30 Hz camera of random frames whose size can change mid-stream."""

    def __init__(self, seed: int = 0, size: tuple[int, int] = (96, 128), rate: float = 30.0,
                 start_stamp: float = 1000.0):
        self.rng = np.random.default_rng(seed)
        self.size = size
        self.rate = rate
        self.stamp = start_stamp

    def frames(self, seconds: float):
        for _ in range(int(round(seconds * self.rate))):
            height, width = self.size
            yield self.rng.integers(0, 256, (height, width, 3), dtype=np.uint8), self.stamp
            self.stamp += 1.0 / self.rate


def stream(session: StreamingSession, camera: SyntheticCamera, seconds: float, on_round=None):
    """Feed ``seconds`` of camera into the session, running every completed round."""
    results = []
    for image, stamp in camera.frames(seconds):
        session.add_frame(image, stamp)
        while True:
            second, _ = session.sampler.pop_ready()
            if second is None:
                break
            result = session.run_round(second)
            results.append(result)
            if on_round is not None:
                on_round(second, result)
    return results


def full_forward_logits(session: StreamingSession, token_ids: torch.Tensor, blocks: list):
    """One forward pass of the unmodified model over ``token_ids`` with the video ``blocks``
    (in order), positions assigned by transformers itself. Returns (logits, positions)."""
    model = session.model
    input_ids = token_ids[None, :].long()
    token_types = (input_ids == session.format.video_pad_id).int() * 2
    pixel_values = torch.cat([b.pixel_values for b in blocks]).to(session.loaded.dtype)
    grid = torch.cat([b.grid_thw for b in blocks])
    seconds = torch.tensor([b.second_per_grid for b in blocks])
    positions, _ = model.model.get_rope_index(
        input_ids, mm_token_type_ids=token_types, video_grid_thw=grid,
        second_per_grid_ts=seconds,
    )
    with torch.inference_mode():
        out = model(
            input_ids=input_ids, pixel_values_videos=pixel_values, video_grid_thw=grid,
            second_per_grid_ts=seconds, mm_token_type_ids=token_types, use_cache=False,
        )
    return out.logits[0].float(), positions[:, 0, :]


def forced_stream_logits(loaded, decode_path: str, prefill_path: str = "eager") -> torch.Tensor:
    """Every recorded logit row of a teacher-forced stream with evictions (same tokens for
    every path, so paths that differ only in rounding can be compared row by row)."""
    session = StreamingSession(loaded, small_config(window=2, decode_path=decode_path,
                                                    prefill_path=prefill_path, max_new_tokens=6),
                               record_logits=True)
    words = torch.Generator().manual_seed(0)
    rows = []
    for image, stamp in SyntheticCamera(seed=1).frames(8.0):
        session.add_frame(image, stamp)
        second, _ = session.sampler.pop_ready()
        if second is not None:
            forced = torch.randint(20, 200, (6,), generator=words).tolist()
            session.run_round(second, forced_ids=forced)
            rows += session.last_round_logits
    assert session.policy.evicted_rounds >= 4
    return torch.stack(rows)
