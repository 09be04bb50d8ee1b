"""The streaming engine: torch + transformers, never rclpy.

One camera's stream is a ``StreamingSession`` over one bounded KV cache. The pieces, one
concept per module:

- ``model_loading``: ``load_model`` through ``from_pretrained``; device, dtype, kernel checks.
- ``frame_sampler``: camera frames -> ``fps`` frames per period of stamp time.
- ``vision_input``: resize and patchify one period's frames as one video block.
- ``prompt_format``: the token ids of every piece of the StreamingVLM turn format.
- ``round_layout``: a round (or a stretch of rounds) rendered to ids, 3-D positions and
  labelled spans, without a model; the session and the SFT chunker both use it.
- ``cache_policy``: which tokens stay, in which order, at which position.
- ``kv_cache`` and ``rotary_shift``: the preallocated cache, compacted in place.
- ``decoding``: token choice (host reference); ``device_sampling``: the same on the device.
- ``attention``: attention kernels per phase (decode, prefill, vision window attention).
- ``static_decode``: the fixed-shape decode step (static, compiled, CUDA graph).
- ``camera_group``: several cameras' sessions decoded as one batch.
- ``model_shapes``: random-weight models with real shapes (``svlm-bench --model-shape``);
  ``bf16_drift``: rounding drift of long bfloat16 streams against recomputation.
- ``tiny_model`` (``svlm-make-tiny``) and ``benchmark`` (``svlm-bench``).
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
