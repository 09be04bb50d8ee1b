"""Moving cached keys to new rotary positions without recomputing them.

Design choice (the engine issue asks for it to be argued): transformers caches keys *after*
the rotary embedding. To give retained tokens gap-free positions after an eviction we rotate
the cached keys once more, by the position shift (new minus old position). Rotations compose,
so the result equals keys rotated at the new position from the start. The alternative, caching
keys before rotation and rotating the whole cache at every forward pass, would mean patching the
attention module of every model (the reference code pins transformers internals to do so) and
rotating ~14k cached keys per layer for every generated token. Rotating by the shift rewrites
the cache from the first token that moved (the sink, and the text sink once full, are never
touched) once per eviction, i.e. once per second instead of once per token, and works with any
attention kernel (sdpa, eager, flash-attn) through the model's unmodified forward.

The cost of the choice is rounding: each re-rotation in bfloat16 rounds the key once more.
The rotation itself is computed in float32 and a token is moved at most about
``vision_window_seconds`` times while in the vision window, plus once per second while in the
text window, so the error stays at a few bfloat16 ulps; in float32 the result matches a fresh
recomputation to ~1e-6 (see the exactness tests).

Qwen2.5-VL's M-RoPE rotates three sections of each head with the temporal, height and width
position respectively. Eviction shifts whole blocks, so all three coordinates of a token move by
the same amount; a shift ``d`` is then the plain 1-D rotation by ``d`` on every frequency, which is
what ``rotate_keys_by_shift`` applies.
"""

from __future__ import annotations

import torch


def rotary_inverse_frequencies(model) -> torch.Tensor:
    """The language model's rotary inverse frequencies (``head_dim // 2`` values, float32)."""
    rotary = model.model.language_model.rotary_emb
    if getattr(rotary, "rope_type", "default") != "default":
        raise ValueError(
            "contiguous positions need plain M-RoPE; "
            f"this model uses rope_type {rotary.rope_type!r}"
        )
    return rotary.inv_freq.detach().float()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotate_keys_by_shift(
    keys: torch.Tensor, shift: torch.Tensor, inverse_frequencies: torch.Tensor
) -> torch.Tensor:
    """Rotate already-rotated keys by a per-token position shift.

    Args:
        keys: ``(batch, kv_heads, tokens, head_dim)`` keys as cached by transformers.
        shift: ``(tokens,)`` integer shift (new position minus old position) per token.
        inverse_frequencies: ``(head_dim // 2,)`` rotary inverse frequencies.

    Returns:
        Keys of the same shape and dtype, rotated in float32 and cast back once.
    """
    assert keys.shape[-2] == shift.shape[0], (keys.shape, shift.shape)
    angles = shift.to(device=keys.device, dtype=torch.float32)[:, None] * inverse_frequencies.to(
        keys.device
    )[None, :]
    angles = torch.cat((angles, angles), dim=-1)
    keys32 = keys.float()
    rotated = keys32 * angles.cos() + _rotate_half(keys32) * angles.sin()
    return rotated.to(keys.dtype)
