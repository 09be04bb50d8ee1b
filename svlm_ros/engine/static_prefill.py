"""A fixed-shape prefill of a round's prompt over the preallocated bounded cache.

The eager prefill runs the model over the live slice of the cache: its key length is the number
of tokens held, which changes every round, and its query length changes with the time text. A
compiled prefill would then recompile, or need dynamic shapes, at almost every round. The decode
solved the same problem with a capacity-masked step (``static_decode.py``); the prefill does it
the same way with ``P`` tokens at once:

* the prompt is padded to a multiple of ``PREFILL_BUCKET`` tokens (a round's prompt only varies
  by a few time-text tokens, so a stream meets one or two buckets per frame size);
* every token attends over the whole capacity with a mask that admits the slots up to its own;
* the tokens are written at slots ``length .. length + P - 1``; the padding lands past the live
  tokens, where nothing reads it (later writes overwrite it); the cache's length advances by
  the real tokens only;
* the start slot and the index of the last real token are device tensors, so the shapes depend
  only on ``P`` and the capacity: one compilation per bucket for the whole stream.

The first round of a stream (the sink and the first second, into an empty cache) runs eagerly:
its prompt is a bucket no later round meets. Compiled graphs are keyed by bucket, capacity and
dtype; past torch's recompile limit (8 per function) dynamo runs the pass uncompiled, which
still gives the same result.

Paths (``StreamConfig.prefill_path``):

* ``eager`` (default): the model's forward over the live cache;
* ``static``: the fixed-shape prefill uncompiled (tests, and the reference for ``compiled``);
* ``compiled``: the fixed-shape prefill through ``torch.compile`` (inductor, no CUDA graphs: a
  prefill of hundreds of tokens is bound by its matrix multiplications, not by kernel launches,
  and a graph would pin another pool of activations per bucket). Whether it pays on a GPU is
  for ``svlm-bench --prefill-path compiled`` to show: it is not measured yet.

A prompt whose padded length does not fit the capacity (only possible when the room kept for
a question is smaller than a bucket) falls back to the eager forward, which gives the same
result.
"""

from __future__ import annotations

import torch

from svlm_ros.engine.static_decode import FIXED_SHAPE_KERNELS, fixed_shape_hidden, uses_float_mask

#: Prefill paths a session may use.
PREFILL_PATHS = ("eager", "static", "compiled")

#: Prompts are padded to a multiple of this many tokens (one compiled shape per multiple).
PREFILL_BUCKET = 64


def resolve_prefill_path(prefill_path: str, attn_implementation: str) -> str:
    """Check ``prefill_path`` against the attention kernel; return it.

    Raises:
        ValueError: unknown path, or a fixed-shape path with a kernel that cannot take the
            capacity mask (flash_attention_2).
    """
    if prefill_path not in PREFILL_PATHS:
        raise ValueError(f"prefill_path must be one of {PREFILL_PATHS}, got {prefill_path!r}")
    if prefill_path != "eager" and attn_implementation not in FIXED_SHAPE_KERNELS:
        raise ValueError(
            f"prefill_path {prefill_path!r} attends over the whole preallocated cache with a "
            f"mask, which attn_implementation {attn_implementation!r} cannot take; load the "
            "model with 'sdpa' (the default) or use prefill_path 'eager'"
        )
    return prefill_path


def padded_length(tokens: int, bucket: int = PREFILL_BUCKET) -> int:
    """``tokens`` rounded up to a multiple of ``bucket``."""
    return -(-tokens // bucket) * bucket


def prefill_step(language_model, lm_head, embeds: torch.Tensor, positions: torch.Tensor,
                 start: torch.Tensor, last: torch.Tensor, keys: list[torch.Tensor],
                 values: list[torch.Tensor], pristine: list[torch.Tensor] | None,
                 float_mask: bool) -> torch.Tensor:
    """A padded prompt of ``P`` tokens into one cache at slots ``start .. start + P - 1``.

    Args:
        language_model, lm_head: ``model.model.language_model`` and ``model.lm_head``.
        embeds: ``(1, P, hidden)`` input embeddings (video features in place, padding zero).
        positions: ``(3, 1, P)`` long M-RoPE positions.
        start: ``(1,)`` long, the first slot written (the tokens held before the prompt).
        last: ``(1,)`` long, the index in the prompt of its last real token.
        keys, values, pristine, float_mask: As for ``static_decode.fixed_shape_hidden``.

    Returns:
        ``(vocab,)`` logits after the last real token.
    """
    tokens = embeds.shape[1]
    slots = (start + torch.arange(tokens, device=start.device))[None, :]
    hidden = fixed_shape_hidden(language_model, positions, slots, keys, values, pristine,
                                float_mask, inputs_embeds=embeds)
    return lm_head(hidden.index_select(1, last))[0, 0]


_COMPILED: dict[str, object] = {}


def compiled_prefill_step(device: torch.device):
    """``prefill_step`` compiled once per process and device type (one graph per bucket and
    cache capacity: shapes are static)."""
    if device.type not in _COMPILED:
        _COMPILED[device.type] = torch.compile(prefill_step, dynamic=False)
    return _COMPILED[device.type]


class StaticPrefiller:
    """Runs fixed-shape prefills for one session's cache.

    Args:
        model: The Qwen2.5-VL model.
        cache: The session's ``BoundedKVCache`` (preallocated).
        compiled: Use ``compiled_prefill_step`` (else the same step uncompiled).
        bucket: Pad prompts to a multiple of this many tokens.
    """

    def __init__(self, model, cache, *, compiled: bool, bucket: int = PREFILL_BUCKET):
        if bucket < 1:
            raise ValueError(f"bucket must be >= 1, got {bucket}")
        self.model = model
        self.cache = cache
        self.compiled = compiled
        self.bucket = bucket
        self.float_mask = uses_float_mask(model)
        #: Prompts prefilled with the fixed shape, and those that did not fit the capacity once
        #: padded (run eagerly instead).
        self.prefills = 0
        self.fallbacks = 0

    def fits(self, tokens: int) -> bool:
        """Whether a prompt of ``tokens`` fits the cache once padded; counts a fallback if not."""
        if self.cache.length + padded_length(tokens, self.bucket) <= self.cache.capacity:
            return True
        self.fallbacks += 1
        return False

    def prefill(self, embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Append a prompt (``embeds`` ``(1, n, hidden)`` at ``positions`` ``(3, n)``) to the
        cache; return the ``(vocab,)`` logits after it. Call ``fits`` first."""
        tokens = embeds.shape[1]
        padding = padded_length(tokens, self.bucket) - tokens
        device = embeds.device
        positions = positions.to(device)
        if padding:
            embeds = torch.cat([embeds, embeds.new_zeros(1, padding, embeds.shape[2])], dim=1)
            # Any position will do for the padding: nothing real ever attends to it.
            positions = torch.cat([positions, positions[:, -1:].expand(3, padding)], dim=1)
        keys, values = self.cache.buffers()
        start = torch.full((1,), self.cache.length, dtype=torch.long, device=device)
        last = torch.full((1,), tokens - 1, dtype=torch.long, device=device)
        step = compiled_prefill_step(device) if self.compiled else prefill_step
        logits = step(self.model.model.language_model, self.model.lm_head, embeds,
                      positions[:, None, :], start, last, keys, values,
                      self.cache.pristine_buffers(), self.float_mask)
        self.cache.advance(tokens)
        self.prefills += 1
        return logits
