"""What shapes a stream and what it gives back: ``StreamConfig``, ``RoundResult``, ``Answer``.

Plain dataclasses and the session's exceptions, shared by ``StreamingSession``, ``CameraGroup``,
the node and the benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from svlm_ros.engine.cache_policy import CachePolicyConfig
from svlm_ros.engine.decoding import SamplingConfig
from svlm_ros.engine.prompt_format import DEFAULT_INSTRUCTION, DEFAULT_SYSTEM_PROMPT
from svlm_ros.engine.static_decode import DECODE_PATHS
from svlm_ros.engine.static_prefill import PREFILL_PATHS
from svlm_ros.engine.vision_input import PATCH_FACTOR

#: The cache capacity is a multiple of this many tokens (see ``_compute_bound``).
CAPACITY_ALIGNMENT = 16


class GenerationInterrupted(RuntimeError):
    """``interrupt()`` was called while a round or an answer was being generated."""


class QuestionTooLong(ValueError):
    """The question does not fit the tokens reserved for questions."""


@dataclass(frozen=True)
class StreamConfig:
    """Everything that shapes a stream. Defaults follow StreamingVLM.

    Attributes:
        fps: Frames per second of stream time given to the model.
        period: Seconds of stream per round (one narration per period).
        max_pixels: Pixel budget per frame (602,112 = 768 tokens per temporal patch).
        min_pixels: Smallest frame area; smaller frames are upscaled.
        max_new_tokens: Most tokens generated per round.
        system_prompt: The system turn (part of the attention sink).
        instruction: Task instruction after the first second's video ('' for none); it leaves
            the cache with that second, as in StreamingVLM's inference.
        previous_text: Text the ``previous text`` turn starts with (a scene description or
            task context; '' for none); it counts toward the text windows.
        cache: Sink and window sizes.
        sampling: Token choice for narration; its ``top_k``/``top_p`` left at None follow the
            checkpoint's ``generation_config.json`` (``SamplingConfig.resolved``).
        max_question_tokens: Longest question ``ask`` accepts (tokens, framing included).
        max_answer_tokens: Most tokens an answer may have.
        max_pending_seconds: Completed seconds queued before the oldest is dropped.
        decode_path: How tokens are decoded (``static_decode.py``): ``eager`` (the model's
            forward over the live cache, host-side token choice), ``static`` (one fixed-shape
            step over the whole preallocated cache, token choice on the device), ``graphed``
            (that step as one CUDA graph per session; CUDA only), ``compiled`` (the step
            through ``torch.compile``: inductor, with CUDA graphs on CUDA) or ``auto``
            (``graphed`` on CUDA, ``eager`` on the CPU).
        preprocess_on_device: Upload frames as uint8 and resize, normalize and patchify them on
            the model's device (``vision_input.py``); None: on CUDA yes, on the CPU no (OpenCV).
        compile_vision: Run the vision encoder through ``torch.compile`` (one compile per frame
            size). Off by default: on an H100 the team measured the compiled 7B encoder slower
            than the eager one with one-call window attention (189 ms against 110 ms a round);
            ``svlm-bench --compile-vision`` measures it on your GPU.
        prefill_path: How a round's prompt goes through the language model
            (``static_prefill.py``): ``eager`` (the model's forward over the live cache),
            ``static`` (the prompt padded to a bucket, one fixed-shape pass over the whole
            preallocated cache) or ``compiled`` (that pass through ``torch.compile``: one
            compile per bucket, no recompiling as the cache fills). Questions and turn closes
            always run eagerly (a few tokens).
    """

    fps: float = 2.0
    period: float = 1.0
    max_pixels: int = 602112
    min_pixels: int = 78400
    max_new_tokens: int = 20
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    instruction: str = DEFAULT_INSTRUCTION
    previous_text: str = ""
    cache: CachePolicyConfig = field(default_factory=CachePolicyConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    max_question_tokens: int = 256
    max_answer_tokens: int = 64
    max_pending_seconds: int = 4
    decode_path: str = "auto"
    preprocess_on_device: bool | None = None
    compile_vision: bool = False
    prefill_path: str = "eager"

    def __post_init__(self):
        if self.decode_path not in DECODE_PATHS:
            raise ValueError(f"decode_path must be one of {DECODE_PATHS}, got {self.decode_path!r}")
        if self.prefill_path not in PREFILL_PATHS:
            raise ValueError(
                f"prefill_path must be one of {PREFILL_PATHS}, got {self.prefill_path!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.max_question_tokens < 1 or self.max_answer_tokens < 1:
            raise ValueError("max_question_tokens and max_answer_tokens must be >= 1")
        if self.min_pixels < PATCH_FACTOR**2 or self.max_pixels < self.min_pixels:
            raise ValueError(
                f"need {PATCH_FACTOR**2} <= min_pixels <= max_pixels, "
                f"got {self.min_pixels}, {self.max_pixels}"
            )


@dataclass
class RoundResult:
    """What one round produced.

    Attributes:
        start, end: Stream time (s) of the narrated period.
        end_stamp: Camera-clock stamp (s) of the end of the period.
        text: The narration with the end marker removed ('' when silent).
        silent: Nothing new this period.
        generated_tokens: Tokens generated (the marker and the model's own ``<|im_end|>``
            included).
        cache_tokens: Tokens held after the round.
        evicted_tokens: Tokens evicted before the round.
        frames_received: Distinct frames sampled in the period.
        vision_tokens: Video tokens of the round.
        timings_ms: ``preprocess``, ``evict``, ``vision`` (the vision encoder), ``prefill``
            (the language model over the new prompt), ``decode`` (tokens and turn close),
            ``total`` milliseconds. On CUDA they are launch times unless the session's
            ``sync_timings`` is set (the benchmark sets it).
        answer: The answer to the question asked in this second ('' when none).
        answer_tokens: Generated tokens of that answer (before its newline; 0 when none).
    """

    start: float
    end: float
    end_stamp: float
    text: str
    silent: bool
    generated_tokens: int
    cache_tokens: int
    evicted_tokens: int
    frames_received: int
    vision_tokens: int
    timings_ms: dict[str, float]
    answer: str = ""
    answer_tokens: int = 0


@dataclass
class Answer:
    """An answer from ``ask``; the stream's cache is unchanged by it."""

    text: str
    question_tokens: int
    answer_tokens: int
    latency: float
