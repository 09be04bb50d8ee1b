"""Attention kernels per phase: decode, prefill and the vision encoder.

Measured on an H100 (see the README's GPU section): letting SDPA choose freely picks cuDNN
attention, which builds an execution plan per key length; a streaming decode meets a new key
length at almost every token, so the default doubled the decode time. Hence, on CUDA:

* the language model's prefill and decode run SDPA limited to FLASH and EFFICIENT, with MATH as
  a last resort (FLASH alone fails on the multi-token closing forward, which needs an explicit
  mask; EFFICIENT alone failed on prefill): ``sdpa_kernels``;
* the vision encoder's window attention runs as ONE attention call per layer instead of one
  call per window (1,264 small calls per 7B tower forward): ``windowed_sdpa_attention``,
  registered with transformers under ``WINDOWED_SDPA``. With the flash-attn package installed,
  the tower uses ``flash_attention_2`` (its varlen kernel does the same natively).

The language model keeps SDPA even when flash-attn is installed: the fixed-shape decode step
(``static_decode.py``) attends over the whole preallocated cache with a mask, which
FlashAttention-2's kernel cannot take, and torch's own SDPA FLASH backend is FlashAttention-2.
On the CPU nothing is restricted (no plan caches there) and the same functions run.
"""

from __future__ import annotations

import contextlib
import importlib.util

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

#: transformers routes the vision window attention through its packed ("varlen") branch for any
#: implementation whose name contains "flash"; this name gets that branch without flash-attn.
WINDOWED_SDPA = "svlm_flash_varlen_sdpa"

#: SDPA backends allowed on CUDA, in priority order; never cuDNN (a plan per key length).
CUDA_SDPA_BACKENDS = (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)


def flash_attn_available() -> bool:
    """Whether the flash-attn package (FlashAttention-2) is importable."""
    return importlib.util.find_spec("flash_attn") is not None


def sdpa_kernels(device: torch.device) -> contextlib.AbstractContextManager:
    """Context that limits SDPA to flash/efficient/math on CUDA; does nothing on the CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return sdpa_kernel(list(CUDA_SDPA_BACKENDS), set_priority=True)


def windowed_sdpa_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    scaling: float | None = None,
    dropout: float = 0.0,
    cu_seq_lens_q: torch.Tensor | None = None,
    max_length_q: int | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Attention inside each packed sequence (window) of ``query``, in one SDPA call.

    The windows (boundaries ``cu_seq_lens_q``) are gathered into a padded batch
    ``(windows, heads, longest, head_dim)`` with a key-padding mask, so the work is that of the
    windows themselves (not of a block-diagonal mask over the whole sequence) and it is one
    kernel launch. Every window has at least one real key, so no row is fully masked.

    Args:
        module: The calling attention module (unused; the interface passes it).
        query, key, value: ``(1, heads, tokens, head_dim)``.
        cu_seq_lens_q: ``(windows + 1,)`` cumulative window boundaries (same for the keys).
        max_length_q: Longest window (a Python int, computed once per tower forward).

    Returns:
        ``((1, tokens, heads, head_dim), None)``, the layout transformers' attention functions
        return.
    """
    if cu_seq_lens_q is None:  # not a packed call: plain attention over everything
        out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask,
                                             scale=scaling)
        return out.transpose(1, 2).contiguous(), None
    tokens = query.shape[2]
    windows = cu_seq_lens_q.numel() - 1
    if max_length_q is None:
        max_length_q = int((cu_seq_lens_q[1:] - cu_seq_lens_q[:-1]).max())
    longest = int(max_length_q)
    if windows * longest == tokens:
        # Equal windows (e.g. a full-attention layer over one frame pair): a reshape, no mask,
        # so the fastest kernel (FLASH) is allowed.
        def split(x):
            return x[0].reshape(x.shape[1], windows, longest, x.shape[-1]).transpose(0, 1)

        out = F.scaled_dot_product_attention(split(query), split(key), split(value),
                                             scale=scaling)
        out = out.transpose(1, 2).reshape(1, tokens, query.shape[1], query.shape[-1])
        return out, None
    starts = cu_seq_lens_q[:-1].long()
    lengths = cu_seq_lens_q[1:].long() - starts
    offsets = torch.arange(longest, device=query.device)
    valid = offsets[None, :] < lengths[:, None]  # (windows, longest)
    index = (starts[:, None] + offsets[None, :]).clamp(max=tokens - 1)

    def gather(x):  # (1, heads, tokens, d) -> (windows, heads, longest, d)
        return x[0][:, index].transpose(0, 1)

    out = F.scaled_dot_product_attention(
        gather(query), gather(key), gather(value), attn_mask=valid[:, None, None, :],
        scale=scaling,
    )
    # Back to sequence order: the valid slots, window after window, are the tokens in order.
    out = out.transpose(1, 2)[valid]  # (tokens, heads, d)
    return out[None], None


def register_windowed_sdpa() -> str:
    """Register ``windowed_sdpa_attention`` with transformers (idempotent); return its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(WINDOWED_SDPA, windowed_sdpa_attention)
    return WINDOWED_SDPA


def use_vision_attention(model, implementation: str) -> None:
    """Make the vision tower of a loaded Qwen2.5-VL use ``implementation`` (text unchanged)."""
    if implementation == WINDOWED_SDPA:
        register_windowed_sdpa()
    vision_config = model.model.visual.config
    vision_config._attn_implementation = implementation
    model.config.vision_config._attn_implementation = implementation
