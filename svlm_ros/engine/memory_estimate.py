"""Device memory a stream needs besides the weights: its cache and one round's working memory.

A session (or a ``CameraGroup``) is refused at build when this does not fit the memory free on
its device. Counting only the KV cache let settings pass that ran out of memory in the first
round; the estimate adds, from the model config and the stream settings alone:

* **preprocess**: one round's frames at ``max_pixels`` and the float32 copies the processor
  makes while normalizing and patchifying them (on the GPU when frames are prepared there);
* **evict**: a compaction gathers a layer's kept keys and values and rotates the keys in
  float32 (``kv_cache.py``);
* **vision**: the tower over one round's frames at ``max_pixels``: pixel values, hidden states,
  one block's attention (the windowed kernel gathers windows padded to the longest) or MLP,
  the merger, and the attention weights where the tower runs ``eager`` attention;
* **prefill**: the longest prompt (the stream's first: head and round; padded to the bucket on
  the fixed-shape path) through one decoder layer: embeddings and hidden states, the mask over
  the cache, and the larger of the layer's attention and MLP. A prompt of several tokens with
  a mask attends through transformers' ``repeat_kv``: the keys and values of the whole cache
  copied per query head (``2 x heads x capacity x head_dim``); ``eager`` attention also holds
  its weights (``heads x prompt x capacity``, in float32 and the model's dtype);
* **decode**: one step (``cameras`` rows in a group): the mask over the capacity, the logits,
  the token choice's float32 copies and sort of the vocabulary; ``eager`` attention repeats
  the cache and holds weights as above (the fixed-shape paths group query heads instead,
  ``attention.single_query_gqa_sdpa``);

and keeps on top, as long as the session lives:

* **graph pools** (CUDA): a captured decode step keeps its intermediates in a private pool,
  one per ``graphed`` session or ``compiled`` process, one for a group's batched step and one
  per camera whose ``ask`` captured its own step; each about one decode step's working memory;
* **kernel workspaces** (CUDA): cuBLAS keeps a workspace (32 MiB on Hopper) per stream that
  runs matrix products: the default stream's, and for each captured graph those of its warm-up
  and capture streams.

The phases run one after another and their blocks are freed in between, so the working memory
is the largest phase, not their sum. Assumptions (each makes the figure a bound only up to it):
the allocator reuses freed blocks (no fragmentation); SDPA on
CUDA runs FLASH or EFFICIENT (no attention weights; the MATH fallback would hold them); the
windowed vision attention pads at most to twice the patches; the frames at the camera's own
resolution (``resize_on_device`` works on them in float32) and the weights are not counted.
Every phase is counted at its worst (the longest prompt, a full cache, a frame of
``max_pixels``), so the figure is a bound, not the typical use. On the CPU the same shapes are
counted; the tests compare each phase with the peak of live tensors measured on a small model
(``test_memory_estimate.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

#: CUDA: cuBLAS' workspace per stream that runs matrix products (torch's default on Hopper:
#: 32 MiB; 4 MiB on earlier GPUs, so this is an upper allowance there).
CUBLAS_WORKSPACE = 32 * 2**20


@dataclass(frozen=True)
class StreamWorkload:
    """What one stream puts through the model at its worst.

    Attributes:
        capacity: Cache slots per stream.
        prompt_tokens: Longest prompt prefilled in one pass (tokens, padding included).
        vision_patches: Patches through the vision tower per round (before merging).
        temporal_patches: Temporal patches per round (frames / temporal patch size).
        frames: Frames per round.
        max_pixels: Pixels per frame at most.
        decode_path: The resolved decode path (``eager``, ``static``, ``compiled``,
            ``graphed``).
        cameras: Streams whose caches are counted.
        grouped: The cameras decode as one batch (``CameraGroup``).
        pristine_keys: The cache keeps pristine keys (half precision).
        preprocess_here: Frames are prepared in this device's memory (the CPU's, or the GPU's
            with ``preprocess_on_device``).
    """

    capacity: int
    prompt_tokens: int
    vision_patches: int
    temporal_patches: int
    frames: int
    max_pixels: int
    decode_path: str
    cameras: int = 1
    grouped: bool = False
    pristine_keys: bool = False
    preprocess_here: bool = True


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per part. ``phases`` maps each phase to its parts at that phase's peak."""

    kv_cache: int
    phases: dict[str, dict[str, int]]
    graph_pools: dict[str, int] = field(default_factory=dict)
    workspace: int = 0

    def phase_total(self, name: str) -> int:
        return sum(self.phases[name].values())

    @property
    def largest_phase(self) -> str:
        return max(self.phases, key=self.phase_total)

    @property
    def working(self) -> int:
        """Working memory of a round: its largest phase."""
        return self.phase_total(self.largest_phase)

    @property
    def total(self) -> int:
        return self.kv_cache + self.working + sum(self.graph_pools.values()) + self.workspace

    def describe(self, cache_what: str) -> str:
        """The figures broken down, largest parts first."""
        phase = self.largest_phase
        parts = sorted(self.phases[phase].items(), key=lambda item: -item[1])
        shown = ", ".join(f"{name} {size_text(size)}" for name, size in parts if size)
        lines = [f"{cache_what} {size_text(self.kv_cache)}",
                 f"one round's working memory {size_text(self.working)} (its largest phase, "
                 f"{phase}: {shown})"]
        others = ", ".join(f"{name} {size_text(self.phase_total(name))}"
                           for name in self.phases if name != phase and self.phases[name])
        if others:
            lines[-1] += f" (the other phases: {others})"
        if self.graph_pools:
            lines.append("graph pools " + ", ".join(
                f"{name} {size_text(size)}" for name, size in self.graph_pools.items()))
        if self.workspace:
            lines.append(f"kernel workspaces {size_text(self.workspace)}")
        return "; ".join(lines)


def size_text(size: int) -> str:
    """``size`` bytes in GiB (2 decimals) from a tenth of a GiB, else in MiB (1 decimal)."""
    if size >= 2**30 / 10:
        return f"{size / 2**30:.2f} GiB"
    return f"{size / 2**20:.1f} MiB"


def _dtype_bytes(dtype: torch.dtype) -> int:
    return torch.finfo(dtype).bits // 8


def _text_dims(text) -> tuple[int, int, int, int, int, int]:
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    return (text.hidden_size, text.intermediate_size, text.num_attention_heads,
            text.num_key_value_heads, head_dim, text.vocab_size)


def _larger(first: dict[str, int], second: dict[str, int]) -> dict[str, int]:
    return first if sum(first.values()) >= sum(second.values()) else second


def evict_memory(text, capacity: int, dtype: torch.dtype, pristine_keys: bool) -> dict[str, int]:
    """One layer's compaction of a full cache: gathered rows and the float32 rotation."""
    _, _, _, kv_heads, head_dim, _ = _text_dims(text)
    b = _dtype_bytes(dtype)
    rows = capacity * kv_heads * head_dim
    return {
        "gathered keys and values": rows * b * (3 if pristine_keys else 2),
        "key rotation (float32)": rows * 4 * 4 + 3 * capacity * head_dim * 4,
    }


def preprocess_memory(frames: int, max_pixels: int) -> dict[str, int]:
    """One round's frames fitted to ``max_pixels``: uint8, the float32 copies normalizing and
    patchifying makes, and the pixel values (the frames at the camera's own resolution are not
    counted: it is not known when a session is built)."""
    pixels = frames * max_pixels * 3
    return {"frames (uint8)": pixels, "normalized copies (float32)": 4 * pixels * 4}


def vision_memory(vision, patches: int, temporal_patches: int,
                  dtype: torch.dtype) -> dict[str, int]:
    """The vision tower over ``patches`` (one round), at its peak."""
    b = _dtype_bytes(dtype)
    width, inner = vision.hidden_size, vision.intermediate_size
    head_dim = width // vision.num_heads
    pixel_width = (getattr(vision, "in_channels", 3) * vision.temporal_patch_size
                   * vision.patch_size ** 2)
    merged = patches // vision.spatial_merge_size ** 2
    padded = 2 * patches  # windows gathered, padded to the longest (bound: twice the patches)
    common = {
        "pixel values": patches * pixel_width * (4 + (b if b != 4 else 0)),
        "hidden states": 3 * patches * width * b + patches * width * (4 + b),
        "rotary tables": 4 * patches * head_dim * 4,
    }
    # qkv stays alive (v is a view of it) through the rotation of q and k in float32, then
    # through the windows gathered (q, k, v and the output, padded).
    attention = {"attention (qkv, rotation or windows padded)":
                 3 * patches * width * b + max(5 * patches * width * 4,
                                               2 * patches * width * b + 4 * padded * width * b)}
    if vision._attn_implementation == "eager":
        frame = patches // max(1, temporal_patches)
        attention["attention weights (eager)"] = (temporal_patches * vision.num_heads * frame
                                                  * frame * (b + 4))
    mlp = {"MLP": 3 * patches * inner * b}
    merger = {"merger": 3 * patches * width * b + 2 * merged * vision.out_hidden_size * b}
    return {**common, **_larger(_larger(attention, mlp), merger)}


def prefill_memory(text, prompt: int, capacity: int, merged_vision: int,
                   dtype: torch.dtype) -> dict[str, int]:
    """A prompt of ``prompt`` tokens over a cache of ``capacity`` through one decoder layer."""
    hidden, inner, heads, kv_heads, head_dim, vocab = _text_dims(text)
    b = _dtype_bytes(dtype)
    eager = text._attn_implementation == "eager"
    common = {
        "embeddings and video features": 3 * prompt * hidden * b + merged_vision * hidden * b,
        "hidden states": 2 * prompt * hidden * b + prompt * hidden * (4 + b),
        "rotary tables": 6 * prompt * head_dim * 4 + 2 * prompt * head_dim * b,
        "mask over the capacity": prompt * capacity * (b if eager else 1),
        "logits": vocab * (b + 4),
    }
    attention = {
        "q, k, v and output": (4 * prompt * heads * head_dim + 6 * prompt * kv_heads * head_dim
                               + 2 * prompt * hidden) * b,
        "repeat_kv over the capacity": 2 * heads * capacity * head_dim * b,
    }
    if eager:
        attention["attention weights (eager)"] = heads * prompt * capacity * (b + 4)
    mlp = {"MLP": 3 * prompt * inner * b + prompt * hidden * b}
    return {**common, **_larger(attention, mlp)}


def decode_memory(text, rows: int, capacity: int, dtype: torch.dtype) -> dict[str, int]:
    """One decode step of ``rows`` tokens (cameras) over caches of ``capacity``."""
    hidden, inner, heads, _, head_dim, vocab = _text_dims(text)
    b = _dtype_bytes(dtype)
    eager = text._attn_implementation == "eager"
    parts = {
        "hidden states": rows * (10 * hidden + 3 * inner) * b,
        "mask over the capacity": rows * capacity * (b if eager else 1),
        "logits": rows * vocab * (b + 4),
        "token choice": vocab * (4 * 4 + 8),
    }
    if eager:  # transformers' eager attention always repeats the keys and values
        parts["repeat_kv over the capacity"] = 2 * rows * heads * capacity * head_dim * b
        parts["attention weights (eager)"] = rows * heads * capacity * (b + 4)
    return parts


def estimate_memory(model_config, workload: StreamWorkload, dtype: torch.dtype,
                    device_type: str) -> MemoryEstimate:
    """What ``workload`` needs on a ``device_type`` device with ``model_config``'s model.

    A pure function of the config (its text and vision dimensions and attention
    implementations), the workload and the dtype.
    """
    text = model_config.get_text_config()
    vision = model_config.vision_config
    _, _, _, kv_heads, head_dim, _ = _text_dims(text)
    b = _dtype_bytes(dtype)
    w = workload
    buffers = 3 if w.pristine_keys else 2
    kv_cache = (w.cameras * w.capacity * text.num_hidden_layers * buffers * kv_heads * head_dim
                * b)
    merged = w.vision_patches // vision.spatial_merge_size ** 2
    rows = w.cameras if w.grouped else 1
    phases = {
        "preprocess": (preprocess_memory(w.frames, w.max_pixels) if w.preprocess_here
                       else {}),
        "evict": evict_memory(text, w.capacity, dtype, w.pristine_keys),
        "vision": vision_memory(vision, w.vision_patches, w.temporal_patches, dtype),
        "prefill": prefill_memory(text, w.prompt_tokens, w.capacity, merged, dtype),
        "decode": decode_memory(text, rows, w.capacity, dtype),
    }
    pools: dict[str, int] = {}
    cuda = device_type == "cuda"
    if cuda:
        one_step = sum(decode_memory(text, 1, w.capacity, dtype).values())
        if w.grouped:
            pools["batched decode step"] = sum(phases["decode"].values())
            pools[f"ask steps of {w.cameras} cameras"] = w.cameras * one_step
        elif w.decode_path in ("graphed", "compiled"):
            pools[f"{w.decode_path} decode step"] = w.cameras * one_step
    # The default stream's workspace, and per captured graph those of the stream it is warmed
    # up on and of the stream it is captured on.
    workspace = CUBLAS_WORKSPACE * (1 + 2 * len(pools)) if cuda else 0
    return MemoryEstimate(kv_cache=kv_cache, phases=phases, graph_pools=pools,
                          workspace=workspace)


def session_workload(session, *, cameras: int = 1, grouped: bool = False) -> StreamWorkload:
    """The workload of a ``StreamingSession`` (built up to its cache sizing) or of a group of
    ``cameras`` such sessions."""
    from svlm_ros.engine.frame_sampler import MAX_STREAM_SECONDS
    from svlm_ros.engine.static_decode import resolve_decode_path
    from svlm_ros.engine.static_prefill import padded_length
    from svlm_ros.engine.vision_input import PATCH_FACTOR

    sizing, cfg = session.sizing, session.config
    vision = session.model.config.vision_config
    per_frame = cfg.max_pixels // (PATCH_FACTOR * PATCH_FACTOR)
    temporal = sizing.frames_per_round // sizing.temporal_patch
    merge = vision.spatial_merge_size ** 2
    prompt = sizing.layout.head_tokens() + sizing.round_tokens(per_frame, MAX_STREAM_SECONDS)
    if cfg.prefill_path != "eager":
        prompt = padded_length(prompt)
    attention = session.model.config.get_text_config()._attn_implementation
    return StreamWorkload(
        capacity=session.bound,
        prompt_tokens=prompt,
        vision_patches=temporal * per_frame * merge,
        temporal_patches=temporal,
        frames=sizing.frames_per_round,
        max_pixels=cfg.max_pixels,
        decode_path=resolve_decode_path(cfg.decode_path, session.device, attention),
        cameras=cameras,
        grouped=grouped,
        pristine_keys=sizing.pristine_keys,
        preprocess_here=session.device.type == "cpu" or session.vision.device is not None,
    )


def session_memory(session, *, cameras: int = 1, grouped: bool = False) -> MemoryEstimate:
    """``estimate_memory`` for a session (or a group of ``cameras`` of them)."""
    workload = session_workload(session, cameras=cameras, grouped=grouped)
    return estimate_memory(session.model.config, workload, session.loaded.dtype,
                           session.device.type)


def refuse_unless_fits(estimate: MemoryEstimate, free: int, device, what: str,
                       cache_what: str, advice: str) -> None:
    """Raise ``ValueError`` with the figures broken down when ``estimate`` exceeds ``free``."""
    if estimate.total > free:
        raise ValueError(
            f"{what} needs {size_text(estimate.total)}, more than the {size_text(free)} free "
            f"on {device} ({estimate.describe(cache_what)}); {advice}"
        )
