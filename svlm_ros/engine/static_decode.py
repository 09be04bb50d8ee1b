"""A fixed-shape decode step over the preallocated bounded cache, for compilation / CUDA graphs.

The eager path (``StreamingSession._forward``) hands the model the live slice of the cache, so
every token has a new key length: new shapes, a new cuDNN plan, and no CUDA graph possible. The
cache, however, is preallocated with a hard bound, so one decode step can have ONE shape for
the whole stream: attend over the full capacity with a mask that admits the first
``length + 1`` slots, write the new key/value at slot ``length``, and take the slot and the
rotary position as device tensors. Such a step can be captured once and replayed per token:

* ``graphed`` (CUDA): the step's kernels captured in one ``torch.cuda.CUDAGraph`` per session
  (its own cache buffers, token, position and slot tensors at fixed addresses): no compile
  time, one launch per token instead of hundreds (the host overhead was ~25 of the 33 ms per
  token measured on an H100), and several sessions (cameras) each replay their own graph;
* ``compiled``: the step through ``torch.compile`` (CUDA: ``mode="reduce-overhead"``, i.e.
  inductor kernels in CUDA graphs, ~45 s of compile; CPU: inductor without graphs). One
  compiled function serves every session, but CUDA graph trees re-record when another
  session's cache buffers come in, so prefer ``graphed`` with several cameras;
* ``static``: the same step uncompiled (tests, and the CPU reference for the two above).

The step goes through the model's own modules (embedding, decoder layers with their attention
function, norm, LM head): only the cache object and the mask differ from the eager path.
Masked slots contribute exactly zero attention weight, so the result equals the eager path up
to summation order (float32: ~1e-7 on the tiny model; tested). The step's one query token per
row reads the cache's key/value heads as they are (its query heads grouped by key/value head,
``attention.single_query_gqa_sdpa``), on every path: transformers would copy the whole cache per
query head (``repeat_kv``) under ``torch.compile``.

Compaction, rollback (``truncate``), ``ask`` and ``interrupt`` need nothing special: they
rewrite or re-cut the same buffers the step reads, and the step only ever depends on the
buffers' contents and on the slot index it is given.
"""

from __future__ import annotations

import torch

from svlm_ros.engine.attention import SINGLE_QUERY_GQA, register_single_query_gqa
from svlm_ros.engine.kv_cache import CacheOverflowError

#: Decode paths a session may use. ``auto``: ``graphed`` on CUDA, ``eager`` on the CPU.
DECODE_PATHS = ("auto", "eager", "static", "compiled", "graphed")

#: Attention kernels that take the capacity mask of a fixed-shape step (flash-attn does not).
FIXED_SHAPE_KERNELS = ("sdpa", "eager")


def uses_float_mask(model) -> bool:
    """Whether the model's attention takes an additive float mask (the ``eager`` kernel)
    rather than a boolean one (SDPA)."""
    return model.config.get_text_config()._attn_implementation == "eager"


def resolve_decode_path(decode_path: str, device: torch.device, attn_implementation: str) -> str:
    """The decode path to use: ``eager``, ``static``, ``compiled`` or ``graphed``.

    Raises:
        ValueError: unknown path, ``graphed`` off CUDA, or a fixed-shape path with an attention
            kernel that cannot take the capacity mask (flash_attention_2).
    """
    if decode_path not in DECODE_PATHS:
        raise ValueError(f"decode_path must be one of {DECODE_PATHS}, got {decode_path!r}")
    fixed_shape_ok = attn_implementation in FIXED_SHAPE_KERNELS
    if decode_path == "auto":
        return "graphed" if device.type == "cuda" and fixed_shape_ok else "eager"
    if decode_path == "graphed" and device.type != "cuda":
        raise ValueError("decode_path 'graphed' captures CUDA graphs and needs a CUDA device; "
                         "use 'static' or 'compiled' on the CPU")
    if decode_path != "eager" and not fixed_shape_ok:
        raise ValueError(
            f"decode_path {decode_path!r} attends over the whole preallocated cache with a mask, "
            f"which attn_implementation {attn_implementation!r} cannot take; load the model "
            "with 'sdpa' (the default) or use decode_path 'eager'"
        )
    return decode_path


class SlotWriteCache:
    """What the decoder layers see during a fixed-shape step: write given slots, read everything.

    Duck-types the one ``Cache`` method the attention modules call (``update``). ``slots`` is
    ``(B, P)``: token ``p`` of batch row ``b`` goes to slot ``slots[b, p]`` of row ``b``'s cache.
    """

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor],
                 pristine: list[torch.Tensor] | None, slots: torch.Tensor):
        self.keys = keys
        self.values = values
        self.pristine = pristine
        self.slots = slots

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        # In place on the preallocated buffers (the graph's inputs keep their addresses). The
        # index pair (rows, slots) selects (B, P, kv_heads, head_dim): the states' token axis
        # moved in front of the heads.
        rows = torch.arange(keys.shape[0], device=keys.device)[:, None]
        new_keys = key_states.transpose(1, 2).to(keys.dtype)
        keys[rows, :, self.slots] = new_keys
        values[rows, :, self.slots] = value_states.transpose(1, 2).to(values.dtype)
        if self.pristine is not None:  # the cache's unrotated-since-written copy
            self.pristine[layer_idx][rows, :, self.slots] = new_keys
        return keys, values


def fixed_shape_hidden(language_model, positions: torch.Tensor, slots: torch.Tensor,
                       keys: list[torch.Tensor], values: list[torch.Tensor],
                       pristine: list[torch.Tensor] | None, float_mask: bool, *,
                       input_ids: torch.Tensor | None = None,
                       inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """``P`` tokens per cache (a batch of ``B`` caches) through the language model, attending
    over each cache's whole capacity: the shapes depend only on ``B``, ``P`` and the capacity.

    Args:
        language_model: ``model.model.language_model``.
        positions: ``(3, B, P)`` long, the tokens' M-RoPE positions.
        slots: ``(B, P)`` long, the cache slots they are written to; token ``p`` of row ``b``
            sees that row's slots ``0..slots[b, p]`` (its cached past and itself).
        keys, values: Per layer ``(B, kv_heads, capacity, head_dim)`` preallocated buffers.
        pristine: The caches' pristine key buffers (half precision), or None.
        float_mask: Give the attention an additive float mask (the ``eager`` kernel) instead of
            a boolean one (SDPA).
        input_ids, inputs_embeds: ``(B, P)`` ids or ``(B, P, hidden)`` embeddings (one of them).

    Returns:
        ``(B, P, hidden)`` final hidden states.
    """
    capacity = keys[0].shape[2]
    visible = torch.arange(capacity, device=slots.device)[None, None, :] <= slots[:, :, None]
    mask = visible[:, None]  # (B, 1, P, capacity): one mask for every head
    if float_mask:
        dtype = keys[0].dtype
        mask = torch.zeros(mask.shape, dtype=dtype, device=slots.device).masked_fill(
            ~mask, torch.finfo(dtype).min)
    return language_model(
        input_ids=input_ids,
        inputs_embeds=inputs_embeds,
        position_ids=positions,
        attention_mask={"full_attention": mask},
        cache=SlotWriteCache(keys, values, pristine, slots),
        use_cache=True,
        # One token per row (a decode step): grouped-query attention without copying the
        # cache per query head, compiled or not (``attention.single_query_gqa_sdpa``).
        **{SINGLE_QUERY_GQA: True},
    ).last_hidden_state


def decode_step(language_model, lm_head, token: torch.Tensor, position: torch.Tensor,
                slot: torch.Tensor, keys: list[torch.Tensor], values: list[torch.Tensor],
                pristine: list[torch.Tensor] | None, float_mask: bool) -> torch.Tensor:
    """One token per cache (a batch of ``B`` caches) through the language model over the whole
    capacity.

    Args:
        language_model: ``model.model.language_model``.
        lm_head: ``model.lm_head``.
        token: ``(B,)`` long, the tokens to feed.
        position: ``(B,)`` long, their rotary positions (all three M-RoPE axes: text tokens).
        slot: ``(B,)`` long, the cache slots they are written to (= tokens held before them).
        keys, values: Per layer ``(B, kv_heads, capacity, head_dim)`` preallocated buffers.
        pristine: The caches' pristine key buffers (half precision), or None.
        float_mask: Give the attention an additive float mask (the ``eager`` kernel) instead of
            a boolean one (SDPA).

    Returns:
        ``(B, vocab)`` logits of the next tokens.
    """
    batch = token.shape[0]
    hidden = fixed_shape_hidden(
        language_model, position.view(1, batch, 1).expand(3, batch, 1), slot.view(batch, 1),
        keys, values, pristine, float_mask, input_ids=token.view(batch, 1))
    return lm_head(hidden[:, -1])


_COMPILED: dict[str, object] = {}


def compiled_decode_step(device: torch.device):
    """``decode_step`` compiled once per process and device type.

    CUDA: ``mode="reduce-overhead"`` (CUDA graphs: one launch per token instead of hundreds).
    CPU: inductor's default mode (no graphs exist there). Shapes are static per cache capacity;
    a session with another capacity recompiles once.
    """
    key = device.type
    register_single_query_gqa()
    if key not in _COMPILED:
        mode = "reduce-overhead" if device.type == "cuda" else None
        _COMPILED[key] = torch.compile(decode_step, mode=mode, dynamic=False, fullgraph=False)
    return _COMPILED[key]


class StaticDecoder:
    """Runs fixed-shape decode steps for one session's cache.

    Args:
        model: The Qwen2.5-VL model.
        cache: The session's ``BoundedKVCache`` (its buffers must be initialised: after the
            first prefill).
        compiled: Use ``compiled_decode_step`` (else the same step uncompiled).
    """

    def __init__(self, model, cache, *, compiled: bool):
        self.model = model
        self.cache = cache
        self.compiled = compiled
        self.float_mask = uses_float_mask(model)
        self._buffers: tuple | None = None
        register_single_query_gqa()

    def _cache_buffers(self):
        keys, values = self.cache.buffers()
        if self._buffers is None or self._buffers[0][0] is not keys[0]:
            pristine = self.cache.pristine_buffers()
            if self.compiled and keys[0].device.type == "cuda":
                # CUDA graphs may mutate only inputs whose address never changes.
                for tensor in (*keys, *values, *(pristine or ())):
                    torch._dynamo.mark_static_address(tensor)
            self._buffers = (keys, values, pristine)
        return self._buffers

    def step(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """Feed ``token`` at rotary ``position`` (both ``(1,)`` device tensors) into the next
        free slot; the cache's host-side length advances by one. Returns ``(vocab,)`` logits.
        """
        if self.cache.length >= self.cache.capacity:
            # Checked before the write: on a GPU an out-of-range slot fails asynchronously.
            raise CacheOverflowError(
                f"cache capacity {self.cache.capacity} exceeded: {self.cache.length} held + 1 new"
            )
        keys, values, pristine = self._cache_buffers()
        slot = torch.full((1,), self.cache.length, dtype=torch.long, device=token.device)
        fn = compiled_decode_step(token.device) if self.compiled else decode_step
        logits = fn(self.model.model.language_model, self.model.lm_head, token, position,
                    slot, keys, values, pristine, self.float_mask)[0]
        self.cache.advance(1)
        # A CUDA-graph output is overwritten by the next replay: keep our own copy.
        return logits.clone() if self.compiled else logits


class _CudaGraph:
    """``torch.cuda.CUDAGraph`` capture and replay (the seam the CPU tests replace)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.graph = None

    def capture(self, function):
        """Warm ``function`` up on a side stream, capture it, return its static outputs."""
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):  # kernels pick their algorithms outside the capture
                function()
        torch.cuda.current_stream(self.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            return function()

    def replay(self) -> None:
        self.graph.replay()


class GraphedDecoder(StaticDecoder):
    """``StaticDecoder`` whose step is one CUDA graph per session, captured at the first token.

    The token, position and slot live in tensors of fixed address that each step overwrites on
    the device (no host sync); the cache buffers are allocated at session build and never move,
    so the captured graph stays valid through compaction, rollback and ``ask``. The warm-up
    before capture writes the slot about to be written anyway (past the live tokens).
    """

    def __init__(self, model, cache, graph_factory=_CudaGraph):
        super().__init__(model, cache, compiled=False)
        self._graph_factory = graph_factory
        self._graph = None
        self._logits: torch.Tensor | None = None

    def step(self, token: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        if self.cache.length >= self.cache.capacity:
            raise CacheOverflowError(
                f"cache capacity {self.cache.capacity} exceeded: {self.cache.length} held + 1 new"
            )
        if self._graph is None:
            keys, values, pristine = self._cache_buffers()
            self._token = token.clone()
            self._position = position.clone()
            self._slot = torch.full((1,), self.cache.length, dtype=torch.long,
                                    device=token.device)
            language_model, lm_head = self.model.model.language_model, self.model.lm_head

            def run():
                return decode_step(language_model, lm_head, self._token, self._position,
                                   self._slot, keys, values, pristine, self.float_mask)

            graph = self._graph_factory(token.device)
            self._logits = graph.capture(run)[0]
            self._graph = graph
        self._token.copy_(token)
        self._position.copy_(position)
        self._slot.fill_(self.cache.length)
        self._graph.replay()
        self.cache.advance(1)
        # The graph's output is overwritten by the next replay: hand out a copy.
        return self._logits.clone()
