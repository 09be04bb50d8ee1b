"""How much memory one rank of ``svlm-train`` needs, worked out before any weight is loaded.

``svlm-train --dry-run`` prints this estimate and exits; every real run checks it against the
budget (the device's free memory, or ``--memory-budget-gb``) before the first step and refuses,
with the figures and the options that would fit, a run that cannot fit, instead of running out
of memory after a whole forward and backward pass.

The arithmetic, per rank (``P`` all parameters, ``T`` the trainable ones, ``N`` ranks, ``w`` the
bytes of the compute dtype: 2 for bf16, 4 for fp32):

Replicated (single process, or DDP):
    weights      ``P * w`` (LoRA adds its adapters in fp32, ``4`` B each: peft keeps them fp32)
    gradients    ``T * p`` where ``p`` is the trained weights' bytes (``w`` full, 4 LoRA)
    optimizer    AdamW's two moments in the weights' dtype: ``2 * T * p``
    buckets      DDP's flat copy of every gradient for the all-reduce: ``T * p`` (``N > 1``)
FSDP2 (``fully_shard`` per decoder layer, vision block and the embedding/output matrices):
    weights      fp32 master weights sharded: ``4 * P / N``, plus the unit being computed and
                 the one prefetched, all-gathered in the compute dtype: ``2 * U * w`` (``U`` the
                 largest unit), plus the small unsharded rest of the model (norms, merger)
    gradients    fp32, sharded: ``4 * T / N``, plus one unit's unsharded fp32 gradient
                 waiting for its reduce-scatter: ``4 * U``
    optimizer    fp32 moments, sharded: ``8 * T / N``
Activations (one chunk of ``S`` tokens per micro-step, hidden size ``h``, MLP width ``I``,
``L`` decoder layers):
    per decoder layer autograd keeps about ``S * (8 h + 4 I) * w`` bytes (norm inputs and
    outputs, q/k/v, attention output, the MLP's gate, up, activation and product; a fused
    attention kernel keeps no ``S x S`` matrix). With activation checkpointing only each layer's
    input (``S * h * w``) is kept and one layer at a time is recomputed in the backward pass:
    ``L * S * h * w + S * (8 h + 4 I) * w``; without, ``L * S * (8 h + 4 I) * w``. The logits are
    computed only where a label is (``logits_to_keep``): trained tokens * vocabulary * (``w`` +
    fp32 copy + its gradient). The frozen vision tower keeps nothing for the backward pass but
    needs a transient working set of about ``3 * patches * vision MLP width * w``.
Other:
    AdamW's foreach temporaries (one copy of the local trainable weights), plus on a GPU 2 GiB
    (CUDA context, allocator slack) and 10 % of everything else: a rule of thumb, not a
    measurement.

``S`` is an upper bound from the chunking and the dataset's pixel budget: every second holds
``fps * period / temporal_patch * max_pixels / (patch * merge)**2`` video tokens, its text
budget and about 20 tokens of turn framing; the chunk adds the previous-text sink and window.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

GIB = 1024**3
MIB = 1024**2
#: Turn framing per second (time text, user/assistant headers, vision markers, end tokens).
FRAMING_TOKENS_PER_SECOND = 20
#: System turn and previous-text header of a chunk.
HEAD_TOKENS = 40
#: What the "other" row adds besides the optimizer's temporaries.
FIXED_SLACK = 2 * GIB
SLACK_SHARE = 0.10


@dataclass(frozen=True)
class ModelShape:
    """The parameter counts and sizes the estimate needs, read from a model's config.

    Attributes:
        total: All parameters.
        vision: Parameters of the vision tower (frozen unless ``--train-vision``).
        lora: Parameters LoRA adds for the run's rank and targets.
        largest_unit: Parameters of the largest FSDP unit (decoder layer, vision block,
            embedding or output matrix).
        rest: Parameters outside every unit (norms, the vision merger's root parts).
        hidden, intermediate, layers, vocab: The language model's sizes.
        vision_intermediate: The vision MLP's width.
        video_tokens_per_second: Language-model tokens per second of video at the run's pixels.
    """

    total: int
    vision: int
    lora: int
    largest_unit: int
    rest: int
    hidden: int
    intermediate: int
    layers: int
    vocab: int
    vision_intermediate: int
    video_tokens_per_second: int


@dataclass(frozen=True)
class Setup:
    """What the run chooses: method, sharding, ranks, dtype, checkpointing, chunk size."""

    method: str
    sharding: str
    world_size: int
    compute_bytes: int
    checkpointing: bool
    tokens: int
    trained_tokens: int
    train_vision: bool = False
    gpu: bool = True


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per rank by what holds them (see the module docstring for the arithmetic)."""

    setup: Setup
    weights: int
    gradients: int
    optimizer: int
    buckets: int
    activations: int
    other: int

    @property
    def total(self) -> int:
        return (self.weights + self.gradients + self.optimizer + self.buckets
                + self.activations + self.other)

    def rows(self) -> list[tuple[str, int]]:
        return [("weights", self.weights), ("gradients", self.gradients),
                ("optimizer state", self.optimizer), ("DDP buckets", self.buckets),
                ("activations", self.activations), ("temporaries and slack", self.other),
                ("total per rank", self.total)]


def trainable_parameters(shape: ModelShape, setup: Setup) -> int:
    if setup.method == "lora":
        return shape.lora
    return shape.total if setup.train_vision else shape.total - shape.vision


def estimate(shape: ModelShape, setup: Setup) -> MemoryPlan:
    """Per-rank bytes of a run with ``setup`` on a model of ``shape``."""
    if setup.world_size < 1:
        raise ValueError(f"world size must be >= 1, got {setup.world_size}")
    w, n = setup.compute_bytes, setup.world_size
    trained = trainable_parameters(shape, setup)
    if setup.sharding == "fsdp":
        weights = 4 * shape.total // n + 2 * shape.largest_unit * w + shape.rest * w
        gradients = 4 * trained // n + 4 * shape.largest_unit
        optimizer = 8 * trained // n
        buckets = 0
        local_trained_bytes = 4 * trained // n
    else:
        trained_bytes = 4 if setup.method == "lora" else w
        weights = shape.total * w + (shape.lora * 4 if setup.method == "lora" else 0)
        gradients = trained * trained_bytes
        optimizer = 2 * trained * trained_bytes
        buckets = trained * trained_bytes if n > 1 else 0
        local_trained_bytes = trained * trained_bytes
    s, h, i = setup.tokens, shape.hidden, shape.intermediate
    per_layer = s * (8 * h + 4 * i) * w
    if setup.checkpointing:
        layers = shape.layers * s * h * w + per_layer
    else:
        layers = shape.layers * per_layer
    logits = setup.trained_tokens * shape.vocab * (w + 8)
    # Patches before the 2x2 merge: four per language-model video token.
    vision = 3 * 4 * setup.tokens * shape.vision_intermediate * w
    activations = layers + logits + vision
    subtotal = weights + gradients + optimizer + buckets + activations
    other = local_trained_bytes + int(SLACK_SHARE * subtotal)
    if setup.gpu:
        other += FIXED_SLACK
    return MemoryPlan(setup, weights, gradients, optimizer, buckets, activations, other)


def chunk_tokens(shape: ModelShape, chunk_seconds: int, max_new_tokens: int,
                 text_sink_tokens: int, text_window_tokens: int) -> tuple[int, int]:
    """``(tokens, trained tokens)`` of the longest chunk, an upper bound (module docstring)."""
    per_second = shape.video_tokens_per_second + max_new_tokens + FRAMING_TOKENS_PER_SECOND
    tokens = chunk_seconds * per_second + text_sink_tokens + text_window_tokens + HEAD_TOKENS
    return tokens, chunk_seconds * max_new_tokens


def model_shape(model_dir: str | Path, *, fps: float, period: float, max_pixels: int,
                lora_rank: int, lora_targets) -> ModelShape:
    """Count a checkpoint's parameters from its ``config.json`` alone (a model on the meta
    device: no weights are read, so a 7B is counted in a second on any machine).

    Raises:
        ValueError: ``model_dir`` has no readable config.
    """
    import re

    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    from svlm_training.adaptation import lora_target_pattern

    try:
        config = AutoConfig.from_pretrained(model_dir)
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read the model config of {model_dir}: {error}") from error
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    vision_module = model.model.visual
    vision = sum(p.numel() for p in vision_module.parameters())
    unit_names = set(model._no_split_modules)
    units = [m for m in model.modules() if type(m).__name__ in unit_names]
    units += [model.get_input_embeddings(), model.get_output_embeddings()]
    unit_sizes = [sum(p.numel() for p in unit.parameters()) for unit in units]
    pattern = re.compile(lora_target_pattern(lora_targets))
    lora = sum(lora_rank * (module.in_features + module.out_features)
               for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and pattern.fullmatch(name))
    text, vision_config = config.text_config, config.vision_config
    merge = vision_config.spatial_merge_size
    frames_per_second = fps * period
    temporal_groups = max(1, round(frames_per_second / vision_config.temporal_patch_size))
    video_tokens = temporal_groups * max_pixels // (vision_config.patch_size * merge) ** 2
    return ModelShape(
        total=total, vision=vision, lora=lora, largest_unit=max(unit_sizes),
        rest=max(0, total - sum(unit_sizes)), hidden=text.hidden_size,
        intermediate=text.intermediate_size, layers=text.num_hidden_layers,
        vocab=text.vocab_size, vision_intermediate=vision_config.intermediate_size,
        video_tokens_per_second=int(video_tokens),
    )


def size(value: int) -> str:
    """Bytes in GiB, or in MiB below one GiB (the tiny test models)."""
    return f"{value / GIB:.1f} GiB" if value >= GIB else f"{value / MIB:.1f} MiB"


def count(parameters: int) -> str:
    return f"{parameters / 1e9:.2f} B" if parameters >= 10**8 else f"{parameters:,}"


def column_name(setup: Setup) -> str:
    if setup.world_size == 1 and setup.sharding != "fsdp":
        return f"{setup.method}, 1 process"
    return f"{setup.method}, {setup.world_size} x {setup.sharding}"


def describe(setup: Setup) -> str:
    """The setup in the words of the command line."""
    checkpointing = "" if setup.checkpointing else " --no-gradient-checkpointing"
    ranks = "1 process" if setup.world_size == 1 else f"{setup.world_size} ranks"
    return f"--method {setup.method} --sharding {setup.sharding}{checkpointing} on {ranks}"


def format_table(plans: list[MemoryPlan], shape: ModelShape) -> str:
    """The estimate as a Markdown table: one column per plan, GiB per rank."""
    unit, scale = ("GiB", GIB) if max(p.total for p in plans) >= GIB else ("MiB", MIB)
    header = [f"per rank ({unit})"] + [column_name(plan.setup) for plan in plans]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, (name, _) in enumerate(plans[0].rows()):
        cells = [f"{plan.rows()[index][1] / scale:.1f}" for plan in plans]
        if name == "total per rank":
            name, cells = f"**{name}**", [f"**{c}**" for c in cells]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    first = plans[0].setup
    trained = trainable_parameters(shape, first)
    dtype = {2: "bf16", 4: "fp32"}[first.compute_bytes]
    lines.append("")
    lines.append(
        f"{first.method}: {count(trained)} of {count(shape.total)} parameters "
        f"train; {dtype} compute; chunk <= {first.tokens:,} tokens ({first.trained_tokens} "
        f"trained); activation checkpointing {'on' if first.checkpointing else 'off'}")
    return "\n".join(lines)


def fitting_options(shape: ModelShape, setup: Setup, budget: int) -> list[str]:
    """Other setups that fit ``budget`` bytes per rank, in the words of the command line."""
    candidates: list[Setup] = []
    if not setup.checkpointing:
        candidates.append(replace(setup, checkpointing=True))
    if setup.method == "full":
        for ranks in (1, 2, 4, 8, 16, 32, 64):
            if ranks >= setup.world_size:
                candidates.append(replace(setup, sharding="fsdp", world_size=ranks,
                                          checkpointing=True))
    candidates.append(replace(setup, method="lora", sharding="ddp", checkpointing=True,
                              train_vision=False))
    found, seen, sharded_found = [], set(), False
    for candidate in candidates:
        if candidate == setup or candidate in seen:
            continue
        seen.add(candidate)
        is_sharded = candidate.method == "full" and candidate.sharding == "fsdp"
        if is_sharded and sharded_found:
            continue  # the fewest ranks that fit is the useful answer; more ranks fit as well
        plan = estimate(shape, candidate)
        if plan.total <= budget:
            found.append(f"{describe(candidate)} ({size(plan.total)} per rank)")
            sharded_found = sharded_found or is_sharded
    return found


class MemoryPlanError(ValueError):
    """A run that cannot fit its memory budget (the message has the figures and options)."""


def check_fits(plan: MemoryPlan, shape: ModelShape, budget: int, budget_source: str) -> None:
    """Refuse a run whose estimate exceeds ``budget`` bytes per rank.

    Raises:
        MemoryPlanError: with the table, the budget and the setups that would fit.
    """
    if plan.total <= budget:
        return
    options = fitting_options(shape, plan.setup, budget)
    advice = ("options that fit: " + "; ".join(options)) if options else (
        "nothing tried fits (more ranks with --sharding fsdp, --method lora, shorter "
        "--chunk-seconds or a smaller --max-pixels in the dataset)")
    raise MemoryPlanError(
        f"this run needs about {size(plan.total)} per rank ({describe(plan.setup)}) "
        f"but the budget is {size(budget)} ({budget_source}):\n"
        f"{format_table([plan], shape)}\n{advice}; --no-memory-check runs it anyway")
