"""A preallocated key/value cache that is compacted in place, never grown.

``BoundedKVCache`` is a transformers ``Cache`` whose per-layer tensors are allocated once with a
fixed capacity (the policy's bound) and reused for the whole stream: new tokens are written
after the live region and evicted tokens are squeezed out by ``compact``. Memory therefore stays
flat for hours, and overflowing the bound is an error instead of a silent reallocation. Which
tokens stay and where they move is decided by ``StreamingCachePolicy``; this file only moves
tensors.

Rounding drift in half precision: every compaction rotates the moved keys by their position
shift, and in bfloat16 each rotation rounds the key again. A ``previous text`` token is moved at
every eviction for as long as it sits in the vision and text windows (more than a hundred times
with few words per round), and the error grows with the count: measured with
``bf16_drift.py`` it exceeded the model's own bfloat16-vs-float32 difference. With
``pristine_keys`` the cache therefore keeps each key as first written (rotated at its original
position) and the total shift of each token since then, and a compaction rotates the pristine
key by the total shift: every stored key is rounded once, however often it moved. It costs one
more key buffer (half the cache again); the session turns it on for bfloat16 / float16 only
(float32 rotation error is ~1e-6, see the exactness tests).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer

from svlm_ros.engine.rotary_shift import rotate_keys_by_shift


class CacheOverflowError(RuntimeError):
    """Raised when a write would exceed the preallocated capacity (a policy bug, never silent)."""


class PreallocatedLayer(DynamicLayer):
    """One decoder layer's keys and values in fixed-capacity buffers.

    It behaves like transformers' ``DynamicLayer`` towards the model (returns the live keys and
    values, full causal attention over them) but writes into preallocated storage.
    """

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0
        self._key_buffer: torch.Tensor | None = None
        self._value_buffer: torch.Tensor | None = None
        #: Keys as first written (only with ``pristine_keys``): the source of every rotation.
        self._pristine_key_buffer: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, _, head_dim = key_states.shape
        self.allocate(batch, heads, head_dim, key_states.dtype, key_states.device)

    def allocate(self, batch: int, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device, pristine_keys: bool = False) -> None:
        """Allocate the fixed-capacity buffers now (instead of at the first write)."""
        self.device = torch.device(device)
        shape = (batch, kv_heads, self.capacity, head_dim)
        self._key_buffer = torch.zeros(shape, dtype=dtype, device=device)
        self._value_buffer = torch.zeros(shape, dtype=dtype, device=device)
        if pristine_keys:
            self._pristine_key_buffer = torch.zeros(shape, dtype=dtype, device=device)
        self.is_initialized = True
        self._refresh_views()

    def attach(self, keys: torch.Tensor, values: torch.Tensor,
               pristine_keys: torch.Tensor | None) -> None:
        """Use given ``(1, kv_heads, capacity, head_dim)`` buffers (views into a storage shared
        by several sessions, so their decode can run as one batch)."""
        if keys.shape[2] != self.capacity or values.shape != keys.shape:
            raise ValueError(f"buffers of shape {tuple(keys.shape)} do not match capacity "
                             f"{self.capacity}")
        self.device = keys.device
        self._key_buffer, self._value_buffer = keys, values
        self._pristine_key_buffer = pristine_keys
        self.is_initialized = True
        self._refresh_views()

    def advance(self, tokens: int) -> None:
        """Count ``tokens`` written into the buffers directly (by the fixed-shape decode step)."""
        if self.length + tokens > self.capacity:
            raise CacheOverflowError(
                f"cache capacity {self.capacity} exceeded: {self.length} held + {tokens} new"
            )
        self.length += tokens
        self._refresh_views()

    def _refresh_views(self) -> None:
        self.keys = self._key_buffer[:, :, : self.length]
        self.values = self._value_buffer[:, :, : self.length]

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        new = key_states.shape[-2]
        if self.length + new > self.capacity:
            raise CacheOverflowError(
                f"cache capacity {self.capacity} exceeded: {self.length} held + {new} new"
            )
        self._key_buffer[:, :, self.length : self.length + new] = key_states
        self._value_buffer[:, :, self.length : self.length + new] = value_states
        if self._pristine_key_buffer is not None:
            self._pristine_key_buffer[:, :, self.length : self.length + new] = key_states
        self.length += new
        self._refresh_views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.capacity

    def truncate(self, length: int) -> None:
        """Forget everything after ``length`` tokens (the stored prefix is untouched)."""
        self.length = length
        if self.is_initialized:
            self._refresh_views()

    def reset(self) -> None:
        self.length = 0
        if self.is_initialized:
            self._refresh_views()

    def compact(
        self,
        first_changed: int,
        source_index: torch.Tensor,
        shift: torch.Tensor | None,
        inverse_frequencies: torch.Tensor,
        total_shift: torch.Tensor | None = None,
    ) -> None:
        """Rewrite the region from ``first_changed`` on; tokens before it are not touched.

        ``shift`` is None when no retained token changes position (nothing to rotate). With
        pristine keys, ``total_shift`` (position now minus position when written, per retained
        token; None when all zero) rotates the pristine keys instead.
        """
        if not self.is_initialized:
            return
        kept = source_index.numel()
        values = self._value_buffer[:, :, source_index]
        end = first_changed + kept
        if self._pristine_key_buffer is not None:
            pristine = self._pristine_key_buffer[:, :, source_index]
            self._pristine_key_buffer[:, :, first_changed:end] = pristine
            keys = pristine
            if total_shift is not None:
                keys = rotate_keys_by_shift(pristine, total_shift, inverse_frequencies)
        else:
            keys = self._key_buffer[:, :, source_index]
            if shift is not None:
                keys = rotate_keys_by_shift(keys, shift, inverse_frequencies)
        self._key_buffer[:, :, first_changed:end] = keys
        self._value_buffer[:, :, first_changed:end] = values
        self.length = end
        self._refresh_views()


class BoundedKVCache(Cache):
    """The one reused cache of a streaming session: ``num_layers`` preallocated layers.

    Args:
        num_layers: Decoder layers of the language model.
        capacity: Hard bound on tokens held per layer (the policy's ``bound``).
    """

    def __init__(self, num_layers: int, capacity: int):
        super().__init__(layers=[PreallocatedLayer(capacity) for _ in range(num_layers)])
        self.capacity = capacity
        self.total_shift: torch.Tensor | None = None

    @property
    def length(self) -> int:
        """Tokens currently held (the same in every layer)."""
        return self.layers[0].length

    def allocate(self, kv_heads: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device, *, pristine_keys: bool = False) -> None:
        """Allocate every layer's buffers now, so that a cache that does not fit fails at
        session build and not at the first round.

        Args:
            pristine_keys: Also keep every key as first written and rotate it once by its total
                shift at each compaction (bounded rounding in half precision; see above).
        """
        for layer in self.layers:
            layer.allocate(1, kv_heads, head_dim, dtype, device, pristine_keys)
        # Position shift since written, per slot, on the host (the policy's shifts live there).
        # Slots past the live length always hold 0: new tokens start unshifted.
        self.total_shift = torch.zeros(self.capacity, dtype=torch.long) if pristine_keys else None

    def attach(self, keys: list[torch.Tensor], values: list[torch.Tensor],
               pristine_keys: list[torch.Tensor] | None) -> None:
        """Use given per-layer buffers instead of allocating (see ``PreallocatedLayer.attach``)."""
        for index, layer in enumerate(self.layers):
            layer.attach(keys[index], values[index],
                         None if pristine_keys is None else pristine_keys[index])
        self.total_shift = (torch.zeros(self.capacity, dtype=torch.long)
                            if pristine_keys is not None else None)

    def buffers(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Every layer's full-capacity key and value buffers (for the fixed-shape decode)."""
        if not self.layers[0].is_initialized:
            raise RuntimeError("the cache buffers are not allocated yet")
        return ([layer._key_buffer for layer in self.layers],
                [layer._value_buffer for layer in self.layers])

    def pristine_buffers(self) -> list[torch.Tensor] | None:
        """Every layer's pristine key buffer, or None without ``pristine_keys``."""
        if self.layers[0]._pristine_key_buffer is None:
            return None
        return [layer._pristine_key_buffer for layer in self.layers]

    def advance(self, tokens: int) -> None:
        """Count ``tokens`` written into every layer's buffers by ``buffers()``' user."""
        for layer in self.layers:
            layer.advance(tokens)

    def truncate(self, length: int) -> None:
        """Drop every token after the first ``length`` (used to undo an ``ask``)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of {self.length} tokens to {length}")
        for layer in self.layers:
            layer.truncate(length)
        if self.total_shift is not None:
            self.total_shift[length:] = 0

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()
        if self.total_shift is not None:
            self.total_shift.zero_()

    def compact(
        self, kept_index: torch.Tensor, shift: torch.Tensor, inverse_frequencies: torch.Tensor
    ) -> None:
        """Keep the tokens at ``kept_index`` (in that order) and rotate them by ``shift``.

        Args:
            kept_index: ``(kept,)`` old indices of the retained tokens, in their new order.
            shift: ``(kept,)`` position shift (new minus old) per retained token.
            inverse_frequencies: The model's rotary inverse frequencies.
        """
        # Leading tokens that stay in place with an unchanged position (the sink, and often
        # the text sink) are not read or written: this is what keeps them bit-exact forever.
        device = self.layers[0].device if self.layers[0].is_initialized else kept_index.device
        arange = torch.arange(kept_index.numel(), device=kept_index.device)
        moved = (kept_index != arange) | (shift != 0)
        first_changed = int(moved.nonzero()[0]) if bool(moved.any()) else kept_index.numel()
        tail_index = kept_index[first_changed:].to(device)
        # Decided on the host (the policy's tensors live there): no device sync per layer.
        tail_shift = shift[first_changed:]
        tail_total = None
        if self.total_shift is not None:
            total = self.total_shift[kept_index.cpu()] + shift.cpu()
            self.total_shift.zero_()
            self.total_shift[: total.numel()] = total
            tail_total = total[first_changed:]
            tail_total = tail_total.to(device) if bool(tail_total.any()) else None
        tail_shift = tail_shift.to(device) if bool(tail_shift.any()) else None
        for layer in self.layers:
            layer.compact(first_changed, tail_index, tail_shift, inverse_frequencies, tail_total)
