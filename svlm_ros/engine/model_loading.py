"""Load a Qwen2.5-VL family checkpoint (e.g. StreamingVLM) for streaming inference.

The CPU test path and the H100 path are the same code: only ``device``, ``dtype`` and the
attention kernel differ. Everything goes through the normal ``from_pretrained`` route, so a
real checkpoint directory and the tiny one from ``svlm-make-tiny`` load identically.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from svlm_ros.engine.attention import WINDOWED_SDPA, flash_attn_available, use_vision_attention

#: ``config.model_type`` values whose position scheme and cache layout this engine implements.
SUPPORTED_MODEL_TYPES = ("qwen2_5_vl",)
DTYPE_CHOICES = ("auto", "float32", "bfloat16", "float16")
ATTENTION_CHOICES = ("auto", "flash_attention_2", "sdpa", "eager")


@dataclass
class LoadedModel:
    """A model with everything a streaming session needs next to it."""

    model: Any  # Qwen2_5_VLForConditionalGeneration
    processor: Any  # Qwen2_5_VLProcessor (tokenizer, video processor, chat template)
    device: torch.device
    dtype: torch.dtype
    attn_implementation: str
    path: str
    vision_attn_implementation: str = ""

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    def name(self) -> str:
        return Path(self.path).name or self.path


def resolve_device(device: str) -> torch.device:
    """Turn ``cpu`` / ``cuda`` / ``cuda:N`` into a ``torch.device``, refusing what is absent."""
    try:
        resolved = torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}") from error
    if resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} requested but CUDA is not available here")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r} requested but only {torch.cuda.device_count()} GPU(s) exist"
            )
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is bfloat16 on CUDA (what StreamingVLM was trained in) and float32 on the CPU."""
    if dtype not in DTYPE_CHOICES:
        raise ValueError(f"dtype must be one of {DTYPE_CHOICES}, got {dtype!r}")
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def resolve_attention(attn_implementation: str, device: torch.device, dtype: torch.dtype) -> str:
    """The language model's kernel: ``auto`` is ``sdpa``.

    Not FlashAttention-2 even where flash-attn is installed: the fixed-shape (CUDA-graph)
    decode attends over the whole preallocated cache with a mask, which flash-attn cannot take,
    and the prefill gets FlashAttention-2 anyway through SDPA's FLASH backend. An explicit
    ``flash_attention_2`` is honoured (the decode then runs eager).
    """
    if attn_implementation not in ATTENTION_CHOICES:
        raise ValueError(
            f"attn_implementation must be one of {ATTENTION_CHOICES}, got {attn_implementation!r}"
        )
    half = dtype in (torch.bfloat16, torch.float16)
    if attn_implementation == "auto":
        return "sdpa"
    if attn_implementation == "flash_attention_2":
        if not flash_attn_available():
            raise ValueError(
                "attn_implementation 'flash_attention_2' needs the flash-attn package "
                "(no binary wheel on PyPI: see the README's GPU section)"
            )
        if device.type != "cuda" or not half:
            raise ValueError("flash_attention_2 runs only on CUDA in bfloat16 or float16")
    return attn_implementation


def resolve_vision_attention(text_attention: str, device: torch.device, dtype: torch.dtype
                             ) -> str:
    """The vision tower's kernel: its window attention as one varlen call per layer.

    FlashAttention-2 (varlen) where flash-attn is installed and usable, else ``WINDOWED_SDPA``
    (the windows as one padded SDPA batch); ``eager`` stays eager (the slow reference).
    """
    if text_attention == "eager":
        return "eager"
    usable_flash = (flash_attn_available() and device.type == "cuda"
                    and dtype in (torch.bfloat16, torch.float16))
    return "flash_attention_2" if usable_flash else WINDOWED_SDPA


def read_model_type(path: str | Path) -> str:
    """Read ``model_type`` from a checkpoint's ``config.json`` with a clear error if absent."""
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise ValueError(f"no config.json in {str(path)!r}: not a checkpoint directory")
    return json.loads(config_file.read_text()).get("model_type", "<missing>")


def load_model(
    path: str | Path,
    *,
    device: str = "cpu",
    dtype: str = "auto",
    attn_implementation: str = "auto",
) -> LoadedModel:
    """Load model, tokenizer, video processor and chat template from a local directory.

    Args:
        path: Checkpoint directory (a StreamingVLM / Qwen2.5-VL one, or ``svlm-make-tiny``'s).
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        dtype: ``auto``, ``float32``, ``bfloat16`` or ``float16``.
        attn_implementation: ``auto``, ``flash_attention_2``, ``sdpa`` or ``eager``.

    Returns:
        A ``LoadedModel`` in eval mode on the requested device.

    Raises:
        ValueError: the directory is not a checkpoint, the model type is not supported, or a
            device / dtype / kernel choice is impossible here.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model_type = read_model_type(path)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"svlm_ros supports model types {SUPPORTED_MODEL_TYPES}, got {model_type!r} "
            f"from {str(path)!r}"
        )
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    attention = resolve_attention(attn_implementation, torch_device, torch_dtype)
    vision_attention = resolve_vision_attention(attention, torch_device, torch_dtype)
    processor = AutoProcessor.from_pretrained(path)
    # device_map: the weights go from the files straight to the device (not through a full
    # copy in host RAM first).
    model = AutoModelForImageTextToText.from_pretrained(
        path, dtype=torch_dtype, attn_implementation=attention, device_map=torch_device
    )
    model.to(torch_device).eval()  # a no-op when device_map placed everything
    model.requires_grad_(False)
    use_vision_attention(model, vision_attention)
    return LoadedModel(
        model=model,
        processor=processor,
        device=torch_device,
        dtype=torch_dtype,
        attn_implementation=attention,
        path=str(path),
        vision_attn_implementation=vision_attention,
    )
