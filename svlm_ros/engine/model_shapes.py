"""Random-weight models with real shapes, built directly on the device (no download).

Speed does not depend on the weights' values, so a model with Qwen2.5-VL-7B's exact dimensions
and random weights measures what the real checkpoint would, on any machine with a GPU and no
network. The tokenizer, processor and chat template come from the tiny checkpoint
(``svlm-make-tiny``): their token ids are all below the vocabulary size, and the special tokens
(video pad, vision start/end, turn markers) are mapped into the config so the prompt format and
M-RoPE positions are those of the real model family.
"""

from __future__ import annotations

from pathlib import Path

import torch

from svlm_ros.engine.attention import WINDOWED_SDPA, use_vision_attention
from svlm_ros.engine.model_loading import LoadedModel, resolve_device, resolve_dtype

#: Qwen2.5-VL-7B-Instruct's dimensions (the StreamingVLM checkpoint's).
QWEN25_VL_7B = {
    "text": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                 num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                 max_position_embeddings=128000,
                 rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                  "mrope_section": [16, 24, 24]}),
    "vision": dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                   out_hidden_size=3584, patch_size=14, spatial_merge_size=2,
                   temporal_patch_size=2, tokens_per_second=2, window_size=112,
                   fullatt_block_indexes=[7, 15, 23, 31]),
}

MODEL_SHAPES = ("tiny", "qwen2.5-vl-7b")


def shaped_config(shape: str, tiny_checkpoint: str | Path):
    """The config of ``shape``, with the tiny tokenizer's special token ids."""
    from transformers import AutoConfig, Qwen2_5_VLConfig

    if shape not in MODEL_SHAPES:
        raise ValueError(f"model shape must be one of {MODEL_SHAPES}, got {shape!r}")
    tiny = AutoConfig.from_pretrained(tiny_checkpoint)
    if shape == "tiny":
        return tiny
    text_tiny = tiny.get_text_config()
    text = dict(QWEN25_VL_7B["text"], bos_token_id=text_tiny.bos_token_id,
                eos_token_id=text_tiny.eos_token_id, pad_token_id=text_tiny.pad_token_id)
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(QWEN25_VL_7B["vision"]),
        image_token_id=tiny.image_token_id,
        video_token_id=tiny.video_token_id,
        vision_start_token_id=tiny.vision_start_token_id,
        vision_end_token_id=tiny.vision_end_token_id,
        tie_word_embeddings=False,
    )


def build_shaped_model(shape: str, tiny_checkpoint: str | Path, *, device: str = "cpu",
                       dtype: str = "auto", seed: int = 0) -> LoadedModel:
    """A ``LoadedModel`` of ``shape`` with random weights, created on ``device`` directly.

    Args:
        shape: ``tiny`` or ``qwen2.5-vl-7b``.
        tiny_checkpoint: A ``svlm-make-tiny`` directory (tokenizer, processor, template).
        device, dtype: As for ``load_model``.
        seed: Seed of the random weights.
    """
    from transformers import AutoProcessor, Qwen2_5_VLForConditionalGeneration

    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    config = shaped_config(shape, tiny_checkpoint)
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    if torch_device.type == "cuda":
        torch.cuda.manual_seed(seed)
    # Parameters are created on the device in the target dtype: 8B parameters never pass
    # through host RAM.
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch_dtype)
    try:
        with torch.device(torch_device):
            model = Qwen2_5_VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(default_dtype)
    model.eval().requires_grad_(False)
    use_vision_attention(model, WINDOWED_SDPA)
    processor = AutoProcessor.from_pretrained(tiny_checkpoint)
    return LoadedModel(model=model, processor=processor, device=torch_device, dtype=torch_dtype,
                       attn_implementation="sdpa", path=f"random-{shape}",
                       vision_attn_implementation=WINDOWED_SDPA)
