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
  the tower uses ``flash_attention_2`` (its varlen kernel does the same natively). The call builds
  its gather and scatter indices on the device: a tower forward never waits for the GPU
  (with the tower's inputs precomputed per frame size, ``vision_tower.py``);
* the fixed-shape decode step's single query token per row attends to the cache's key/value
  heads as they are, compiled or not: ``single_query_gqa_sdpa`` (transformers copies the
  whole cache per query head under ``torch.compile``).

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
        max_length_q: Longest window (a Python int: from ``TowerInputs`` once per frame size,
            or from transformers once per tower forward); without it the longest window is
            read back from the device.

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
    # Unequal windows: gather them into a padded batch and back with index tensors built on
    # the device from the boundaries alone. No step reads a device value on the host (no
    # boolean-mask indexing, nonzero or .item()): shapes come from ``tokens`` and
    # ``max_length_q``, so the pass neither waits for the GPU nor breaks a compiled graph.
    bounds = cu_seq_lens_q.long()
    starts = bounds[:-1]
    lengths = bounds[1:] - starts
    offsets = torch.arange(longest, device=query.device)
    valid = offsets[None, :] < lengths[:, None]  # (windows, longest)
    index = (starts[:, None] + offsets[None, :]).clamp(max=tokens - 1)

    def gather(x):  # (1, heads, tokens, d) -> (windows, heads, longest, d)
        return x[0][:, index].transpose(0, 1)

    out = F.scaled_dot_product_attention(
        gather(query), gather(key), gather(value), attn_mask=valid[:, None, None, :],
        scale=scaling,
    )
    # Back to sequence order: token t is row ``window * longest + (t - start)`` of the padded
    # batch, its window found by a search over the boundaries (a fixed-size result).
    token = torch.arange(tokens, device=query.device)
    window = torch.searchsorted(bounds[1:].contiguous(), token, right=True)
    rows = window * longest + (token - starts[window])
    out = out.transpose(1, 2).reshape(windows * longest, query.shape[1], query.shape[-1])
    return out.index_select(0, rows)[None], None


#: Keyword the fixed-shape steps (``static_decode.fixed_shape_hidden``) pass through the
#: language model to its attention function: one query token per row attends to the cached
#: key/value heads as they are (``single_query_gqa_sdpa``).
SINGLE_QUERY_GQA = "svlm_single_query_gqa"


def single_query_gqa_sdpa(stock, module, query, key, value, attention_mask, dropout=0.0,
                          scaling=None, is_causal=None, **kwargs):
    """transformers' SDPA attention, except for a single query token per row asked for by
    ``SINGLE_QUERY_GQA``: its query heads are grouped by key/value head instead of the keys and
    values being repeated per query head.

    transformers does that grouping (``pack_gqa``) itself only outside ``torch.compile``; under
    compile (the ``compiled`` decode path) it takes ``repeat_kv``, which copies every layer's
    whole cache, keys and values, once per query group and token. Here the query
    ``(B, heads, 1, d)`` becomes ``(B, kv_heads, groups, d)``: each key/value head is attended
    by its ``groups`` query heads as ``groups`` query rows, the capacity mask ``(B, 1, 1, cap)``
    broadcasts over them, and no key or value is copied, compiled or not. The arithmetic per
    query head is that of the repeated form.
    """
    groups = getattr(module, "num_key_value_groups", 1)
    if (kwargs.pop(SINGLE_QUERY_GQA, False) and groups > 1 and query.shape[2] == 1
            and (attention_mask is None or attention_mask.shape[1] == 1)
            and kwargs.get("position_bias") is None):
        batch, heads, _, dim = query.shape
        grouped = query.reshape(batch, heads // groups, groups, dim)
        out = F.scaled_dot_product_attention(grouped, key, value, attn_mask=attention_mask,
                                             dropout_p=dropout, scale=scaling)
        out = out.reshape(batch, heads, 1, value.shape[-1]).transpose(1, 2).contiguous()
        return out, None
    kwargs.pop(SINGLE_QUERY_GQA, None)
    return stock(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                 is_causal=is_causal, **kwargs)


def register_single_query_gqa() -> None:
    """Route transformers' ``sdpa`` attention through ``single_query_gqa_sdpa`` (idempotent).

    Calls without ``SINGLE_QUERY_GQA`` (everything but the fixed-shape steps) run transformers'
    own function unchanged.
    """
    from transformers import AttentionInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    current = ALL_ATTENTION_FUNCTIONS["sdpa"]
    if getattr(current, "svlm_stock", None) is not None:
        return

    def sdpa(*args, **kwargs):
        return single_query_gqa_sdpa(current, *args, **kwargs)

    sdpa.svlm_stock = current
    AttentionInterface.register("sdpa", sdpa)


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
