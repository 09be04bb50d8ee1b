"""The memory estimate applied to a ``TrainConfig``: ``svlm-train --dry-run`` and the check
every run makes before it loads the model.

The arithmetic is in ``memory_plan``; this module only gathers its inputs (the model's
``config.json``, the dataset's frame settings, the world size, the dtype) and the budget (the
GPU's free memory, or ``--memory-budget-gb``).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from svlm_ros.engine.stream_config import StreamConfig
from svlm_training.dataset_format import MANIFEST
from svlm_training.fsdp import resolve_sharding
from svlm_training.memory_plan import (
    GIB,
    MemoryPlan,
    ModelShape,
    Setup,
    check_fits,
    chunk_tokens,
    estimate,
    fitting_options,
    format_table,
    model_shape,
    size,
)
from svlm_training.train_config import TrainConfig


def frame_settings(config: TrainConfig) -> tuple[dict, str]:
    """The dataset's fps, period and pixel budget, or the node's defaults without a dataset."""
    manifest = Path(config.data) / MANIFEST if config.data else None
    if manifest is not None and manifest.is_file():
        values = json.loads(manifest.read_text(encoding="utf-8"))
        return values, f"frames as in {config.data}"
    defaults = StreamConfig()
    return ({"fps": defaults.fps, "period": defaults.period, "max_pixels": defaults.max_pixels},
            "no dataset: the node's default frames (2 fps, 602,112 pixels)")


def compute_bytes(config: TrainConfig, device_type: str) -> int:
    """Bytes per element of the compute dtype (``auto``: bf16 on CUDA, fp32 elsewhere)."""
    if config.dtype == "auto":
        return 2 if device_type == "cuda" else 4
    return 2 if config.dtype == "bfloat16" else 4


def shape_of(config: TrainConfig) -> tuple[ModelShape, str]:
    frames, source = frame_settings(config)
    shape = model_shape(config.model, fps=float(frames["fps"]), period=float(frames["period"]),
                        max_pixels=int(frames["max_pixels"]), lora_rank=config.lora_rank,
                        lora_targets=config.lora_targets)
    return shape, source


def setup_of(config: TrainConfig, shape: ModelShape, world_size: int, sharding: str,
             device_type: str) -> Setup:
    tokens, trained = chunk_tokens(shape, config.chunk_seconds, config.max_new_tokens,
                                   config.text_sink_tokens, config.text_window_tokens)
    return Setup(method=config.method, sharding=sharding, world_size=world_size,
                 compute_bytes=compute_bytes(config, device_type),
                 checkpointing=config.gradient_checkpointing, tokens=tokens,
                 trained_tokens=trained, train_vision=config.train_vision,
                 gpu=device_type == "cuda")


def budget_of(config: TrainConfig, device: torch.device) -> tuple[int, str] | None:
    """``(bytes, where it came from)`` per rank, or None (the CPU without a given budget)."""
    if config.memory_budget_gb is not None:
        return int(config.memory_budget_gb * GIB), "--memory-budget-gb"
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free memory of {torch.cuda.get_device_name(device)}"
    return None


def check_run(config: TrainConfig, world_size: int, sharding: str,
              device: torch.device) -> MemoryPlan | None:
    """The check before a run loads its model: refuse what cannot fit the budget.

    Returns:
        The plan, or None when there is nothing to check against (or the check is off).

    Raises:
        MemoryPlanError: the estimate exceeds the budget.
    """
    if not config.memory_check:
        return None
    budget = budget_of(config, device)
    if budget is None:
        return None
    shape, _ = shape_of(config)
    plan = estimate(shape, setup_of(config, shape, world_size, sharding, device.type))
    check_fits(plan, shape, *budget)
    return plan


def dry_run(config: TrainConfig, world_sizes: list[int], device: torch.device) -> str:
    """The report of ``svlm-train --dry-run``: the table for each world size, the budget and
    whether each fits, and the options that fit where one does not.

    The plan is for a GPU (bf16 with ``--dtype auto``) unless ``--device cpu``: a run is
    usually planned on another machine than the one it will use.
    """
    shape, frames = shape_of(config)
    planned = "cpu" if config.device == "cpu" else "cuda"
    plans = []
    for world_size in world_sizes:
        sharding = resolve_sharding(config.sharding, config.method, world_size)
        plans.append(estimate(shape, setup_of(config, shape, world_size, sharding, planned)))
    target = "the CPU" if planned == "cpu" else "GPUs"
    lines = [f"svlm-train --dry-run: memory per rank on {target} for {config.model} ({frames})",
             "", format_table(plans, shape), ""]
    budget = budget_of(config, device)
    if budget is None:
        lines.append("no budget to check against (no GPU here: give --memory-budget-gb)")
        return "\n".join(lines)
    limit, source = budget
    lines.append(f"budget: {size(limit)} per rank ({source})")
    for plan in plans:
        verdict = "fits" if plan.total <= limit else "does NOT fit"
        lines.append(f"  {plan.setup.world_size} rank(s): {size(plan.total)}, {verdict}")
        if plan.total > limit:
            options = fitting_options(shape, plan.setup, limit)
            found = "; ".join(options) or "none of the alternatives tried"
            lines.append(f"    options that fit: {found}")
    return "\n".join(lines)


def parse_world_sizes(text: str | None, default: int) -> list[int]:
    """``--world-size 1,8,16`` as a list (the default: this job's world size)."""
    if text is None:
        return [default]
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"--world-size wants rank counts like 1,8,16, got {text!r}") from None
    if not sizes or any(size < 1 for size in sizes):
        raise ValueError(f"--world-size wants rank counts >= 1, got {text!r}")
    return sizes
