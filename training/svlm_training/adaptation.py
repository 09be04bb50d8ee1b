"""Which weights train: LoRA adapters on the language model, or every weight (vision frozen).

Used by the training loop and by the export (which must rebuild the very same wrapping to load
a checkpoint's adapter weights before merging them).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch

from svlm_training.train_config import TrainConfig


def lora_target_pattern(targets: Sequence[str]) -> str:
    """A regular expression matching only the *language model's* linear layers named ``targets``.

    Qwen2.5-VL's vision blocks have ``gate_proj``/``up_proj``/``down_proj`` too; plain names
    would put adapters into the frozen vision tower as well.
    """
    if not targets:
        raise ValueError("lora_targets is empty")
    names = "|".join(re.escape(name) for name in targets)
    return rf".*\.language_model\.layers\.\d+\..*\b({names})$"


def vision_tower(model) -> torch.nn.Module:
    """The vision encoder (and merger) of a Qwen2.5-VL model, however it is wrapped."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    visual = getattr(getattr(base, "model", base), "visual", None)
    if visual is None:
        raise ValueError(f"{type(base).__name__} has no vision tower (model.visual)")
    return visual


def prepare_trainable(model, config: TrainConfig):
    """Mark what trains and return the model to train (a ``PeftModel`` for LoRA).

    Args:
        model: A freshly loaded model (all weights frozen by ``load_model``).
        config: ``method``, the LoRA shape and ``train_vision``.
    """
    model.requires_grad_(False)
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=lora_target_pattern(config.lora_targets),
            bias="none",
        )
        # LoRA's A matrices are random: seed them so every rank and a resumed run agree.
        torch.manual_seed(config.seed)
        model = get_peft_model(model, lora)
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError(f"no layer matched lora_targets {config.lora_targets}")
        return model
    model.requires_grad_(True)
    if not config.train_vision:
        vision_tower(model).requires_grad_(False)
    return model


def trainable_state(model) -> dict[str, torch.Tensor]:
    """The trainable parameters by name (what a checkpoint stores)."""
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    """Copy a checkpoint's trainable parameters into ``model`` (prepared the same way).

    Raises:
        ValueError: the names differ (the checkpoint was made with another method or shape).
    """
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if set(params) != set(state):
        missing = sorted(set(params) - set(state))[:3]
        extra = sorted(set(state) - set(params))[:3]
        raise ValueError(
            "checkpoint does not match the model's trainable weights "
            f"(missing e.g. {missing}, unexpected e.g. {extra}): another method or LoRA shape?"
        )
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(state[name].to(param.device, param.dtype))


def count_parameters(model) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    total = trainable = 0
    for param in model.parameters():
        total += param.numel()
        trainable += param.numel() if param.requires_grad else 0
    return trainable, total
