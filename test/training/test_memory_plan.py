"""The memory estimate: its arithmetic, its parameter counts against the real model, the refusal
of a run that cannot fit (before anything is written), and ``svlm-train --dry-run``."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from svlm_training.adaptation import count_parameters, prepare_trainable
from svlm_training.fsdp import resolve_sharding
from svlm_training.memory_plan import (
    GIB,
    MemoryPlanError,
    ModelShape,
    Setup,
    check_fits,
    estimate,
    model_shape,
)
from svlm_training.train_config import DEFAULT_LORA_TARGETS, TrainConfig
from svlm_training.trainer import main
from training_helpers import train_args

from svlm_ros.engine.model_loading import load_model

#: Qwen2.5-VL-7B's counts (as ``model_shape`` finds them from its config.json).
SEVEN_B = ModelShape(total=8_292_166_656, vision=676_550_144, lora=40_370_176,
                     largest_unit=544_997_376, rest=46_083_328, hidden=3584, intermediate=18944,
                     layers=28, vocab=152064, vision_intermediate=3420,
                     video_tokens_per_second=768)
FULL_BF16 = Setup(method="full", sharding="ddp", world_size=8, compute_bytes=2,
                  checkpointing=True, tokens=20_456, trained_tokens=480)


def test_replicated_full_fine_tuning_of_the_7b_is_the_issues_arithmetic():
    plan = estimate(SEVEN_B, FULL_BF16)
    trainable = SEVEN_B.total - SEVEN_B.vision  # vision frozen: 7.6 B
    assert plan.weights == 2 * SEVEN_B.total  # bf16: 16.6 GB
    assert plan.gradients == 2 * trainable  # 15.2 GB
    assert plan.optimizer == 4 * trainable  # two bf16 moments: 30.5 GB
    assert plan.buckets == 2 * trainable  # DDP's flat gradient copy
    assert (plan.weights + plan.gradients + plan.optimizer + plan.buckets) / 1e9 == (
        pytest.approx(77.5, abs=0.1))
    assert estimate(SEVEN_B, replace(FULL_BF16, world_size=1)).buckets == 0
    with pytest.raises(MemoryPlanError, match="options that fit: --method full --sharding fsdp"):
        check_fits(plan, SEVEN_B, 80 * GIB, "an 80 GiB card")


def test_fsdp_divides_the_states_by_the_ranks_and_checkpointing_saves_activations():
    eight = estimate(SEVEN_B, replace(FULL_BF16, sharding="fsdp"))
    sixteen = estimate(SEVEN_B, replace(FULL_BF16, sharding="fsdp", world_size=16))
    trainable = SEVEN_B.total - SEVEN_B.vision
    # fp32 master weights, fp32 gradients and two fp32 moments, each split 8 or 16 ways.
    assert eight.optimizer == 8 * trainable // 8 and sixteen.optimizer == 8 * trainable // 16
    in_flight = 2 * SEVEN_B.largest_unit * 2 + SEVEN_B.rest * 2
    assert eight.weights - in_flight == 4 * SEVEN_B.total // 8
    assert eight.gradients - 4 * SEVEN_B.largest_unit == 4 * trainable // 8
    assert eight.buckets == 0 and eight.total < 80 * GIB < estimate(SEVEN_B, FULL_BF16).total
    assert sixteen.total < eight.total
    assert eight.activations == sixteen.activations  # one chunk per rank either way
    without = estimate(SEVEN_B, replace(FULL_BF16, checkpointing=False))
    assert without.activations > 5 * estimate(SEVEN_B, FULL_BF16).activations


def test_the_counts_are_the_real_models(tiny_model_path):
    shape = model_shape(tiny_model_path, fps=2, period=1, max_pixels=6272, lora_rank=16,
                        lora_targets=DEFAULT_LORA_TARGETS)
    loaded = load_model(tiny_model_path)
    _, total = count_parameters(loaded.model)
    assert shape.total == total
    assert shape.vision == sum(p.numel() for p in loaded.model.model.visual.parameters())
    config = TrainConfig(data="", model=str(tiny_model_path), out="")
    lora_trainable, _ = count_parameters(prepare_trainable(loaded.model, config))
    assert shape.lora == lora_trainable
    assert shape.video_tokens_per_second == 8  # 56x56 frames, 2 per temporal patch: 2x2 tokens


def test_sharding_choices():
    assert resolve_sharding("auto", "full", 2) == "fsdp"
    assert resolve_sharding("auto", "full", 1) == "ddp"
    assert resolve_sharding("auto", "lora", 8) == "ddp"
    assert resolve_sharding("fsdp", "full", 1) == "fsdp"
    with pytest.raises(ValueError, match="LoRA trains under DDP"):
        resolve_sharding("fsdp", "lora", 2)
    with pytest.raises(ValueError, match="sharding 'fsdp' is for method 'full'"):
        TrainConfig(data="", model="", out="", sharding="fsdp")
    with pytest.raises(ValueError, match="memory_budget_gb must be > 0"):
        TrainConfig(data="", model="", out="", memory_budget_gb=0)


def estimate_gib(argv: list[str], world_size: int, sharding: str) -> float:
    """The estimate in GiB of ``svlm-train argv`` on ``world_size`` CPU processes."""
    from svlm_training.memory_preflight import setup_of, shape_of
    from svlm_training.train_config import build_parser, config_from_args

    config = config_from_args(build_parser().parse_args(argv))
    shape, _ = shape_of(config)
    return estimate(shape, setup_of(config, shape, world_size, sharding, "cpu")).total / GIB


def test_a_run_that_cannot_fit_is_refused_before_anything_is_written(tmp_path, tiny_model_path,
                                                                     capsys):
    out = tmp_path / "run"
    # No dataset there: the check comes first (and assumes the node's default frames).
    argv = train_args(tmp_path / "no-dataset", tiny_model_path, out, "--method", "full")
    full = estimate_gib(argv, 1, "ddp")
    lora = estimate_gib([*argv, "--method", "lora"], 1, "ddp")
    assert lora < full
    budget = (lora + full) / 2  # fits LoRA, not full fine-tuning
    code = main([*argv, "--memory-budget-gb", f"{budget:.9f}"])
    error = capsys.readouterr().err
    assert code == 1
    assert "this run needs about" in error and "--memory-budget-gb" in error
    assert "| optimizer state |" in error and "**total per rank**" in error
    assert "options that fit: " in error
    assert "--method lora --sharding ddp on 1 process (" in error.split("options that fit: ")[1]
    assert "--no-memory-check" in error
    assert not out.exists()  # refused before the run directory was made


def test_dry_run_prints_the_table_and_trains_nothing(tmp_path, tiny_model_path, capsys):
    out = tmp_path / "run"
    argv = ["--dry-run", "--model", str(tiny_model_path), "--method", "full", "--out", str(out),
            "--chunk-seconds", "4", "--overlap-seconds", "2", "--device", "cpu"]
    one, two = estimate_gib(argv, 1, "ddp"), estimate_gib(argv, 2, "fsdp")
    assert two < one
    code = main([*argv, "--world-size", "1,2", "--memory-budget-gb", f"{(one + two) / 2:.9f}"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "| per rank (MiB) | full, 1 process | full, 2 x fsdp |" in printed
    for row in ("weights", "gradients", "optimizer state", "DDP buckets", "activations"):
        assert f"| {row} |" in printed
    assert "  1 rank(s):" in printed and "MiB, does NOT fit" in printed
    assert "  2 rank(s):" in printed and "MiB, fits" in printed
    assert not out.exists()


def test_dry_run_plans_for_gpus_unless_told_cpu(tiny_model_path, capsys):
    assert main(["--dry-run", "--model", str(tiny_model_path), "--method", "lora"]) == 0
    printed = capsys.readouterr().out
    assert "memory per rank on GPUs" in printed and "bf16 compute" in printed
    if not torch.cuda.is_available():
        assert "no budget to check against (no GPU here" in printed


def test_dry_run_needs_a_model_and_sane_world_sizes(tmp_path, tiny_model_path, capsys):
    with pytest.raises(SystemExit):
        main(["--dry-run"])
    assert main(["--dry-run", "--model", str(tiny_model_path), "--world-size", "0"]) == 1
    assert "--world-size wants rank counts >= 1" in capsys.readouterr().err
    assert main(["--dry-run", "--model", str(tmp_path / "missing")]) == 1
    assert "cannot read the model config" in capsys.readouterr().err
