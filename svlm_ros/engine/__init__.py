"""The streaming engine: torch + transformers, never rclpy.

One camera's stream is a ``StreamingSession`` over one bounded KV cache. The pieces, one
concept per module:

- ``model_loading``: ``load_model`` through ``from_pretrained``; device, dtype, kernel checks.
- ``frame_sampler``: camera frames -> ``fps`` frames per period of stamp time.
- ``vision_input``: resize and patchify one period's frames as one video block.
- ``prompt_format``: the token ids of every piece of the published checkpoint's turn format;
  ``stop_rule``: when a turn ends; ``turn_decoding``: the decode loop of one turn.
- ``round_layout``: a round (or a stretch of rounds) rendered to ids, 3-D positions and
  labelled spans, without a model; the session and the SFT chunker both use it.
- ``cache_policy``: which tokens stay, in which order, at which position; ``cache_sizing`` and
  ``memory_estimate``: the cache's capacity and what a session needs in memory.
- ``stream_config``: ``StreamConfig``, ``RoundResult``, ``Answer``; ``asking`` (``ask``) and
  ``watching`` (yes/no watch questions) answer from the cache and leave it as it was.
- ``model_settings``: ``svlm_settings.json``, the settings a model was trained with.
- ``kv_cache`` and ``rotary_shift``: the preallocated cache, compacted in place.
- ``decoding``: token choice (host reference); ``device_sampling``: the same on the device.
- ``attention``: attention kernels per phase (decode, prefill, vision window attention).
- ``static_decode``: the fixed-shape decode step (static, compiled, CUDA graph).
- ``camera_group``: several cameras' sessions decoded as one batch.
- ``model_shapes``: random-weight models with real shapes (``svlm-bench --model-shape``);
  ``bf16_drift``: rounding drift of long bfloat16 streams against recomputation.
- ``tiny_model`` (``svlm-make-tiny``; ``qwen_vocabulary``: the real Qwen2.5-VL tokenizer from
  Qwen's published ranks) and ``benchmark`` (``svlm-bench``).
"""

from svlm_ros.engine.cache_policy import CachePolicyConfig, StreamingCachePolicy
from svlm_ros.engine.camera_group import CameraGroup
from svlm_ros.engine.decoding import SamplingConfig
from svlm_ros.engine.frame_sampler import FrameRejected
from svlm_ros.engine.model_loading import LoadedModel, load_model
from svlm_ros.engine.prompt_format import PromptFormat
from svlm_ros.engine.round_layout import RenderedTokens, RoundLayout
from svlm_ros.engine.streaming_session import (
    Answer,
    GenerationInterrupted,
    QuestionTooLong,
    RoundResult,
    StreamConfig,
    StreamingSession,
)

__all__ = [
    "Answer",
    "CachePolicyConfig",
    "CameraGroup",
    "FrameRejected",
    "GenerationInterrupted",
    "LoadedModel",
    "PromptFormat",
    "QuestionTooLong",
    "RenderedTokens",
    "RoundLayout",
    "RoundResult",
    "SamplingConfig",
    "StreamConfig",
    "StreamingCachePolicy",
    "StreamingSession",
    "load_model",
]
