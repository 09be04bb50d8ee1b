"""How many tokens a stream's one cache must hold, and what that costs in memory.

The capacity is fixed when a session starts (the cache is preallocated once and never grows):
the cache policy's bound for the largest possible round, plus the stream's head, plus room for
a question. ``CacheSizing`` computes it from the stream settings and the model config alone.
"""

from __future__ import annotations

import torch

from svlm_ros.engine.cache_policy import StreamingCachePolicy
from svlm_ros.engine.frame_sampler import MAX_STREAM_SECONDS
from svlm_ros.engine.kv_cache import BoundedKVCache
from svlm_ros.engine.prompt_format import time_text
from svlm_ros.engine.round_layout import RoundLayout
from svlm_ros.engine.static_prefill import padded_length
from svlm_ros.engine.stream_config import CAPACITY_ALIGNMENT, StreamConfig
from svlm_ros.engine.vision_input import PATCH_FACTOR, fit_frame_size


def free_memory(device: torch.device) -> int:
    """Bytes free now on ``device``: device memory on CUDA, available RAM on the CPU (not the
    total: the weights, other sessions and other processes hold the rest)."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


class CacheSizing:
    """Token bounds and bytes of one stream's cache.

    Args:
        config: The stream settings.
        layout: The stream's round layout (framing lengths).
        frames_per_round: Frames sampled per period.
        temporal_patch: Frames per temporal patch of the vision encoder.
        model_config: The model config (its text config sizes the cache).
        dtype, device: Where and how the cache is kept.
    """

    def __init__(self, config: StreamConfig, layout: RoundLayout, frames_per_round: int,
                 temporal_patch: int, model_config, dtype: torch.dtype, device: torch.device):
        self.config = config
        self.layout = layout
        self.frames_per_round = frames_per_round
        self.temporal_patch = temporal_patch
        self.text = model_config.get_text_config()
        self.dtype = dtype
        self.device = device

    @property
    def head_dim(self) -> int:
        text = self.text
        return getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads

    def round_tokens(self, vision_tokens_per_patch: int, last_end_time: float) -> int:
        """Largest later round: framing, longest time text up to ``last_end_time``, video,
        words and close."""
        vision_tokens = (self.frames_per_round // self.temporal_patch) * vision_tokens_per_patch
        period = self.config.period
        longest_time = len(self.layout.format.encode(time_text(last_end_time - period,
                                                               last_end_time)))
        prompt = self.layout.framing_tokens() + longest_time + vision_tokens
        return prompt + self.config.max_new_tokens + len(self.layout.close_ids)

    def capacity(self) -> int:
        """The cache's capacity: the policy's bound for the worst round plus question room,
        rounded up to a multiple of ``CAPACITY_ALIGNMENT`` (the fixed-shape decode and prefill
        attend over the whole capacity, and CUDA's memory-efficient attention wants the key
        length of a mask aligned; unaligned, every layer pads the mask again)."""
        cfg = self.config
        # An asked question and its answer, and one question held in the window (a question
        # asked in a second stays in the stream with it). ``max_question_tokens`` counts the
        # question alone: the asked one comes in a user turn of its own, whose framing and
        # time text (the latest: the period after the stream's last second) are added.
        fmt = self.layout.format
        ask_framing = (len(fmt.user_open_ids())
                       + len(fmt.encode_time(MAX_STREAM_SECONDS, MAX_STREAM_SECONDS + cfg.period))
                       + len(fmt.assistant_header_ids()))
        ask_room = (2 * cfg.max_question_tokens + cfg.max_answer_tokens + ask_framing
                    + len(self.layout.close_ids))
        most_vision = cfg.max_pixels // (PATCH_FACTOR * PATCH_FACTOR)
        round_tokens = self.round_tokens(most_vision, MAX_STREAM_SECONDS)
        bound = StreamingCachePolicy(cfg.cache).bound(self.layout.head_tokens(), round_tokens,
                                                      ask_room)
        return padded_length(bound, CAPACITY_ALIGNMENT)

    def stream_bound(self, frame_height: int, frame_width: int, stream_seconds: float) -> int:
        """Most tokens held while narrating frames of one size for up to ``stream_seconds``.

        It is reached when the text windows are full and every round in the vision window
        generated ``max_new_tokens``; ``capacity`` adds room for a question and the worst frame
        shape and stream length on top of it.
        """
        cfg = self.config
        height, width = fit_frame_size(frame_height, frame_width, cfg.max_pixels,
                                       cfg.min_pixels)
        vision_tokens = (height // PATCH_FACTOR) * (width // PATCH_FACTOR)
        # The longest time stamp of the stream has the most digits: that of its last second.
        last_end = max(cfg.period, stream_seconds)
        return StreamingCachePolicy(cfg.cache).bound(self.layout.head_tokens(),
                                                     self.round_tokens(vision_tokens, last_end))

    @property
    def pristine_keys(self) -> bool:
        """Half precision keeps pristine keys (bounded rotation rounding, ``kv_cache.py``)."""
        return self.dtype in (torch.bfloat16, torch.float16)

    def cache_bytes(self, tokens: int) -> int:
        """Memory a cache of ``tokens`` takes: layers x (keys + values [+ pristine keys])."""
        text = self.text
        buffers = 3 if self.pristine_keys else 2
        per_token = text.num_hidden_layers * buffers * text.num_key_value_heads * self.head_dim
        return tokens * per_token * torch.finfo(self.dtype).bits // 8

    def allocate(self, tokens: int) -> BoundedKVCache:
        """A preallocated cache of ``tokens`` on the device."""
        cache = BoundedKVCache(self.text.num_hidden_layers, tokens)
        cache.allocate(self.text.num_key_value_heads, self.head_dim, self.dtype, self.device,
                       pristine_keys=self.pristine_keys)
        return cache
