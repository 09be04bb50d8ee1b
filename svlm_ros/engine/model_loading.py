"""Load a Qwen2.5-VL family checkpoint (e.g. StreamingVLM) for streaming inference.

The CPU test path and the H100 path are the same code: only ``device``, ``dtype`` and the
attention kernel differ. Everything goes through the normal ``from_pretrained`` route, so a
real checkpoint directory and the tiny one from ``svlm-make-tiny`` load identically.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

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
    """``auto`` picks FlashAttention-2 when it is importable, on CUDA, in half precision."""
    if attn_implementation not in ATTENTION_CHOICES:
        raise ValueError(
            f"attn_implementation must be one of {ATTENTION_CHOICES}, got {attn_implementation!r}"
        )
    flash_available = importlib.util.find_spec("flash_attn") is not None
    half = dtype in (torch.bfloat16, torch.float16)
    if attn_implementation == "auto":
        use_flash = flash_available and device.type == "cuda" and half
        return "flash_attention_2" if use_flash else "sdpa"
    if attn_implementation == "flash_attention_2":
        if not flash_available:
            raise ValueError("attn_implementation 'flash_attention_2' needs the flash-attn package")
        if device.type != "cuda" or not half:
            raise ValueError("flash_attention_2 runs only on CUDA in bfloat16 or float16")
    return attn_implementation


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
    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(
        path, dtype=torch_dtype, attn_implementation=attention
    )
    model.to(torch_device).eval()
    model.requires_grad_(False)
    return LoadedModel(
        model=model,
        processor=processor,
        device=torch_device,
        dtype=torch_dtype,
        attn_implementation=attention,
        path=str(path),
    )
