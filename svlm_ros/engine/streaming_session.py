"""A streaming narration session: frames in, one narration per second out, questions answered.

``StreamingSession`` ties the pieces together for one camera: the frame sampler, the prompt
format, the bounded cache and its policy, and token choice. It is plain Python + torch and never
imports ROS; the narrator node drives one session per camera from a worker thread.

Not thread-safe for model work: ``run_round``, ``ask`` and ``reset`` must be serialized by the
caller (the node holds one lock per session). ``add_frame`` may be called from any thread.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from svlm_ros.engine.attention import sdpa_kernels
from svlm_ros.engine.cache_policy import CachePolicyConfig, EvictionPlan, StreamingCachePolicy
from svlm_ros.engine.decoding import SamplingConfig, TokenChooser
from svlm_ros.engine.device_sampling import DeviceTokenChooser
from svlm_ros.engine.frame_sampler import MAX_STREAM_SECONDS, FrameSampler, SecondOfFrames
from svlm_ros.engine.kv_cache import BoundedKVCache
from svlm_ros.engine.model_loading import LoadedModel
from svlm_ros.engine.prompt_format import (
    DEFAULT_INSTRUCTION,
    DEFAULT_SYSTEM_PROMPT,
    END_MARKER,
    PromptFormat,
    clean_narration,
    time_text,
)
from svlm_ros.engine.rotary_shift import rotary_inverse_frequencies
from svlm_ros.engine.round_layout import RenderedTokens, RoundLayout, VideoGrid
from svlm_ros.engine.static_decode import (
    DECODE_PATHS,
    GraphedDecoder,
    StaticDecoder,
    resolve_decode_path,
)
from svlm_ros.engine.static_prefill import (
    PREFILL_PATHS,
    StaticPrefiller,
    padded_length,
    resolve_prefill_path,
)
from svlm_ros.engine.vision_input import PATCH_FACTOR, VideoBlock, VisionInput, fit_frame_size

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
        system_prompt: System turn, part of the attention sink.
        instruction: Task instruction of the first user turn, part of the attention sink.
        cache: Sink and window sizes.
        sampling: Token choice for narration.
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
        generated_tokens: Tokens generated (the marker included).
        cache_tokens: Tokens held after the round.
        evicted_tokens: Tokens evicted before the round.
        frames_received: Distinct frames sampled in the period.
        vision_tokens: Video tokens of the round.
        timings_ms: ``preprocess``, ``evict``, ``vision`` (the vision encoder), ``prefill``
            (the language model over the new prompt), ``decode`` (tokens and turn close),
            ``total`` milliseconds. On CUDA they are launch times unless the session's
            ``sync_timings`` is set (the benchmark sets it).
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


@dataclass
class _OpenRound:
    """A round between its prefill and its turn close (``run_round``'s and ``CameraGroup``'s
    shared steps)."""

    second: SecondOfFrames
    video: VideoBlock
    plan: EvictionPlan
    length_before: int
    logits: torch.Tensor | None
    t0: float
    t1: float
    t2: float
    t3: float = 0.0
    t_vision: float = 0.0


@dataclass
class Answer:
    """An answer from ``ask``; the stream's cache is unchanged by it."""

    text: str
    question_tokens: int
    answer_tokens: int
    latency: float


class StreamingSession:
    """One camera's live narration over one bounded, reused KV cache.

    Args:
        loaded: The model (see ``load_model``).
        config: Stream settings.
        record_logits: Keep the logits of every generated token of the last round in
            ``last_round_logits`` (for exactness tests).
        cache_factory: Builds the session's cache instead of ``_make_cache`` (given the
            session, its bound computed); ``CameraGroup`` uses it to place several sessions'
            caches in one storage.
    """

    def __init__(self, loaded: LoadedModel, config: StreamConfig | None = None, *,
                 record_logits: bool = False, cache_factory=None):
        self.loaded = loaded
        self.config = config or StreamConfig()
        self.model = loaded.model
        self.device = loaded.device
        cfg = self.config
        self.format = PromptFormat(loaded.tokenizer, cfg.system_prompt, cfg.instruction)
        self.layout = RoundLayout.for_model_config(self.format, self.model.config)
        on_device = (cfg.preprocess_on_device if cfg.preprocess_on_device is not None
                     else self.device.type == "cuda")
        self.vision = VisionInput(
            loaded.processor, max_pixels=cfg.max_pixels, min_pixels=cfg.min_pixels, fps=cfg.fps,
            device=self.device if on_device else None,
        )
        self.sampler = FrameSampler(cfg.fps, cfg.period, cfg.max_pending_seconds)
        if self.sampler.frames_per_round % self.vision.temporal_patch:
            raise ValueError(
                f"fps * period = {self.sampler.frames_per_round} frames per round must be a "
                f"multiple of the temporal patch size {self.vision.temporal_patch}"
            )
        self.inverse_frequencies = rotary_inverse_frequencies(self.model)
        self._sink_ids = self.layout.sink_ids
        self._close_ids = self.layout.close_ids
        self.bound = self._compute_bound()
        self.cache = cache_factory(self) if cache_factory else self._make_cache()
        self.record_logits = record_logits
        self.last_round_logits: list[torch.Tensor] = []
        self._interrupt = threading.Event()
        #: Wait for the device at each timing point (exact per-part times; slightly slower).
        self.sync_timings = False
        self._vision_done: float | None = None
        # The vision encoder this session calls: the model's own, or a compiled wrapper of it
        # (the compiled code is shared by every session of the process).
        self._visual = self.model.model.visual
        if cfg.compile_vision:
            self._visual = torch.compile(self.model.model.visual, dynamic=False)
        attn_implementation = self.model.config.get_text_config()._attn_implementation
        self.decode_path = resolve_decode_path(cfg.decode_path, self.device, attn_implementation)
        self.prefill_path = resolve_prefill_path(cfg.prefill_path, attn_implementation)
        self.prefiller = (
            None if self.prefill_path == "eager"
            else StaticPrefiller(self.model, self.cache, compiled=self.prefill_path == "compiled"))
        banned = self.format.never_generated_ids()
        # Answers are greedy: a question should get the same answer from the same memory.
        answer_sampling = SamplingConfig(temperature=0.0,
                                         repetition_penalty=cfg.sampling.repetition_penalty)
        if self.decode_path == "eager":
            self.chooser = TokenChooser(cfg.sampling, self.device, banned)
            self.answer_chooser = TokenChooser(answer_sampling, self.device, banned)
            self.static_decoder = None
        else:
            vocab = self.model.lm_head.out_features
            self.chooser = DeviceTokenChooser(cfg.sampling, self.device, vocab, banned)
            self.answer_chooser = DeviceTokenChooser(answer_sampling, self.device, vocab, banned)
            self.static_decoder = (
                GraphedDecoder(self.model, self.cache) if self.decode_path == "graphed"
                else StaticDecoder(self.model, self.cache,
                                   compiled=self.decode_path == "compiled"))
        self.reset()

    # ----- sizes ---------------------------------------------------------------------------
    def _round_tokens(self, vision_tokens_per_patch: int, last_end_time: float) -> int:
        """Largest round: framing, longest time text up to ``last_end_time``, video, words."""
        frames = self.sampler.frames_per_round
        vision_tokens = (frames // self.vision.temporal_patch) * vision_tokens_per_patch
        longest_time = len(self.format.encode(time_text(last_end_time - self.config.period,
                                                         last_end_time)))
        prompt = self.layout.framing_tokens() + longest_time + vision_tokens
        return prompt + self.config.max_new_tokens + len(self._close_ids)

    def _compute_bound(self) -> int:
        """The cache's capacity: the policy's bound for the worst round plus a question,
        rounded up to a multiple of ``CAPACITY_ALIGNMENT`` (the fixed-shape decode and prefill
        attend over the whole capacity, and CUDA's memory-efficient attention wants the key
        length of a mask aligned; unaligned, every layer pads the mask again)."""
        policy = StreamingCachePolicy(self.config.cache)
        ask_room = (
            self.config.max_question_tokens + self.config.max_answer_tokens + len(self._close_ids)
        )
        most_vision = self.config.max_pixels // (PATCH_FACTOR * PATCH_FACTOR)
        round_tokens = self._round_tokens(most_vision, MAX_STREAM_SECONDS)
        bound = policy.bound(len(self._sink_ids), round_tokens, ask_room)
        return padded_length(bound, CAPACITY_ALIGNMENT)

    def stream_bound(self, frame_height: int, frame_width: int, stream_seconds: float) -> int:
        """Most tokens held while narrating frames of one size for up to ``stream_seconds``.

        It is reached when the text windows are full and every round in the vision window
        generated ``max_new_tokens``; ``bound`` adds room for a question and the worst frame
        shape and stream length on top of it.
        """
        height, width = fit_frame_size(
            frame_height, frame_width, self.config.max_pixels, self.config.min_pixels
        )
        vision_tokens = (height // PATCH_FACTOR) * (width // PATCH_FACTOR)
        # The longest time stamp of the stream has the most digits: that of its last second.
        last_end = max(self.config.period, stream_seconds)
        round_tokens = self._round_tokens(vision_tokens, last_end)
        return StreamingCachePolicy(self.config.cache).bound(len(self._sink_ids), round_tokens)

    @property
    def pristine_keys(self) -> bool:
        """Whether the cache keeps pristine keys (half precision: bounded rotation rounding,
        see ``kv_cache.py``)."""
        return self.loaded.dtype in (torch.bfloat16, torch.float16)

    def cache_bytes(self) -> int:
        """Memory the preallocated cache takes: bound x layers x (keys + values [+ pristine
        keys in half precision])."""
        text = self.model.config.get_text_config()
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        buffers = 3 if self.pristine_keys else 2
        per_token = text.num_hidden_layers * buffers * text.num_key_value_heads * head_dim
        return self.bound * per_token * torch.finfo(self.loaded.dtype).bits // 8

    def _free_memory(self) -> int:
        """Bytes free now where the cache goes: device memory on CUDA, available RAM on the CPU
        (not the total: the weights, other sessions and other processes hold the rest)."""
        if self.device.type == "cuda":
            free, _total = torch.cuda.mem_get_info(self.device)
            return int(free)
        import psutil

        return int(psutil.virtual_memory().available)

    def _make_cache(self) -> BoundedKVCache:
        """The one cache of this session, checked against free memory and allocated now."""
        needed = self.cache_bytes()
        free = self._free_memory()
        if needed > free:
            raise ValueError(
                f"the KV cache for these settings needs {needed / 2**30:.2f} GiB "
                f"({self.bound} tokens), more than the {free / 2**30:.2f} GiB free on "
                f"{self.device}; lower vision_window_seconds, max_pixels, fps * period or the "
                "text windows, or run fewer sessions on this device"
            )
        text = self.model.config.get_text_config()
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        cache = BoundedKVCache(text.num_hidden_layers, self.bound)
        cache.allocate(text.num_key_value_heads, head_dim, self.loaded.dtype, self.device,
                       pristine_keys=self.pristine_keys)
        return cache

    @property
    def cache_tokens(self) -> int:
        """Tokens currently held in the KV cache."""
        return self.cache.length

    # ----- stream control ------------------------------------------------------------------
    def reset(self) -> None:
        """Start over: empty cache, stream time back to 0, sampling reseeded."""
        self.sampler.reset()
        self.rounds_run = 0
        self._clear_memory(self.sampler.epoch)

    def _clear_memory(self, epoch: int) -> None:
        """Empty the cache and the policy; the next round starts with the sink again."""
        self.cache.reset()
        self.policy = StreamingCachePolicy(self.config.cache)
        self.chooser.reseed()
        self.last_round_logits = []
        self.last_eviction: EvictionPlan | None = None
        self._memory_epoch = epoch

    def add_frame(self, image: np.ndarray, stamp: float) -> bool:
        """Offer a camera frame (RGB uint8 ``(H, W, 3)``) with its stamp in seconds.

        Returns True when the frame was sampled. Raises ``FrameRejected`` for bad input; the
        stream is unaffected by a rejected frame.
        """
        return self.sampler.add(image, stamp)

    def interrupt(self) -> None:
        """Make a round or answer in progress stop at its next token (from any thread).

        The interrupted call raises ``GenerationInterrupted`` and leaves the stream as it was
        before it (the usual rollback). Used to bound shutdown time while an answer decodes.
        The interrupt is sticky: every later ``run_round`` or ``ask`` raises at once too (an
        ask that was waiting for the model while the node stopped must not decode a whole
        answer), until ``resume()``.
        """
        self._interrupt.set()

    def resume(self) -> None:
        """Re-arm after ``interrupt()``: rounds and asks run again."""
        self._interrupt.clear()

    @property
    def interrupted(self) -> bool:
        """``interrupt()`` was called and ``resume()`` not since."""
        return self._interrupt.is_set()

    def _raise_if_interrupted(self) -> None:
        if self._interrupt.is_set():
            raise GenerationInterrupted("the session was interrupted; resume() re-arms it")

    def run_pending(self, latest_only: bool = False) -> tuple[RoundResult | None, int]:
        """Run one round on the next completed period, if any.

        Args:
            latest_only: Skip to the newest completed period (to stay current when slower than
                real time); the skipped count is returned.

        Returns:
            ``(result or None, skipped periods)``.
        """
        second, skipped = self.sampler.pop_ready(latest_only)
        if second is None:
            return None, skipped
        return self.run_round(second), skipped

    # ----- the model -----------------------------------------------------------------------
    def _forward(self, ids: list[int], positions: torch.Tensor, video: VideoBlock | None = None):
        """Append ``ids`` at ``positions`` ``(3, n)`` to the cache; return the last logits."""
        input_ids = torch.tensor([ids], dtype=torch.long, device=self.device)
        kwargs = {"input_ids": input_ids}
        if video is not None:
            kwargs = {"inputs_embeds": self._embed_with_video(input_ids, video)}
        with sdpa_kernels(self.device):
            # The sink round (an empty cache) runs eagerly: its prompt, sink included, would
            # be a bucket of its own, compiled for one use.
            if (video is not None and self.prefiller is not None and self.policy.length > 0
                    and self.prefiller.fits(len(ids))):
                logits = self.prefiller.prefill(kwargs["inputs_embeds"], positions)
            else:
                logits = self.model(
                    position_ids=positions[:, None, :].to(self.device),
                    cache=self.cache,
                    use_cache=True,
                    logits_to_keep=1,
                    **kwargs,
                ).logits[0, -1]
        # Bookkeeping from the host-side list: no copy back from the device.
        self.policy.append(torch.tensor(ids, dtype=torch.long), positions)
        return logits

    def _embed_with_video(self, input_ids: torch.Tensor, video: VideoBlock) -> torch.Tensor:
        """Token embeddings with the video features in the video pads' places.

        What the model's forward does with ``pixel_values_videos``, done here so that the
        vision encoder's time is measured apart from the language prefill
        (``timings_ms["vision"]``).
        """
        embeds = self.model.model.language_model.embed_tokens(input_ids)
        with sdpa_kernels(self.device):
            # What get_video_features does for one video, through this session's encoder.
            features = self._visual(
                video.pixel_values.to(self.device, self.loaded.dtype),
                grid_thw=video.grid_thw.to(self.device),
            ).pooler_output
        features = features.to(embeds.dtype)
        is_video = (input_ids == self.format.video_pad_id)[..., None].expand_as(embeds)
        embeds = embeds.masked_scatter(is_video, features)
        self._vision_done = self._clock()
        return embeds

    def _clock(self) -> float:
        """``perf_counter``, after the device finished its queued work when ``sync_timings``
        (kernels run asynchronously: without a sync a part's time is only its launch time)."""
        if self.sync_timings and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def _generate(self, logits: torch.Tensor, budget: int, chooser: TokenChooser,
                  stop_on_marker: bool, forced: list[int] | None = None,
                  ) -> tuple[list[int], list[int], list[torch.Tensor]]:
        """Decode up to ``budget`` tokens (or feed ``forced`` ones: teacher forcing).

        Returns:
            ``(generated, unfed, recorded logits)``: ``unfed`` is the tail of ``generated``
            (the last token, or nothing when the model ended its turn) not yet in the cache.
        """
        if self.static_decoder is not None:
            return self._generate_on_device(logits, budget, chooser, stop_on_marker, forced)
        generated: list[int] = []
        recorded = [logits.detach().float().cpu()] if self.record_logits else []
        eos = self.format.end_of_turn_id
        context = self.policy.token_ids
        while True:
            if self._interrupt.is_set():
                raise GenerationInterrupted("generation interrupted")
            if forced is not None:
                token = forced[len(generated)]
            else:
                token = chooser.choose(
                    logits, torch.cat([context, torch.tensor(generated, dtype=torch.long)])
                )
            if token == eos:
                return generated, [], recorded
            generated.append(token)
            if len(generated) >= budget or (forced is not None and len(generated) == len(forced)):
                return generated, [token], recorded
            if forced is None and stop_on_marker and self._ends_with_marker(generated):
                return generated, [token], recorded
            logits = self._forward_rendered(
                self.layout.render_generated(token, self.policy.next_position)
            )
            if self.record_logits:
                recorded.append(logits.detach().float().cpu())

    def _generate_on_device(self, logits: torch.Tensor, budget: int,
                            chooser: DeviceTokenChooser, stop_on_marker: bool,
                            forced: list[int] | None = None,
                            ) -> tuple[list[int], list[int], list[torch.Tensor]]:
        """``_generate`` with fixed-shape decode steps and token choice on the device.

        The same stop rules and bookkeeping; the one wait for the device per token is reading
        the chosen id, which the stop rules (end of turn, end marker) and the host-side policy
        need anyway.
        """
        generated: list[int] = []
        recorded = [logits.detach().float().cpu()] if self.record_logits else []
        eos = self.format.end_of_turn_id
        chooser.start(self.policy.token_ids)
        while True:
            if self._interrupt.is_set():
                raise GenerationInterrupted("generation interrupted")
            if forced is not None:
                token_id = forced[len(generated)]
                token = torch.full((1,), token_id, dtype=torch.long, device=self.device)
                chooser.mark_seen(token)
            else:
                token = chooser.choose(logits)
                token_id = int(token)  # the one host sync per token
            if token_id == eos:
                return generated, [], recorded
            generated.append(token_id)
            if len(generated) >= budget or (forced is not None and len(generated) == len(forced)):
                return generated, [token_id], recorded
            if forced is None and stop_on_marker and self._ends_with_marker(generated):
                return generated, [token_id], recorded
            rendered = self.layout.render_generated(token_id, self.policy.next_position)
            position = torch.full((1,), int(rendered.positions[0, 0]), dtype=torch.long,
                                  device=self.device)
            with sdpa_kernels(self.device):
                logits = self.static_decoder.step(token, position)
            self.policy.append(torch.tensor(rendered.ids, dtype=torch.long), rendered.positions)
            if self.record_logits:
                recorded.append(logits.detach().float().cpu())

    def _ends_with_marker(self, generated: list[int]) -> bool:
        return self.format.tokenizer.decode(generated[-3:]).endswith(END_MARKER.strip())

    def _apply_eviction(self, plan: EvictionPlan) -> None:
        """Squeeze evicted tokens out of the cache and rotate the moved keys."""
        if plan.evicted_tokens:
            self.cache.compact(plan.kept_index, plan.shift, self.inverse_frequencies)

    def _prefill(self, prompt: RenderedTokens, video: VideoBlock) -> torch.Tensor:
        """Feed a new round's prompt (only the new second goes through the vision encoder)."""
        return self._forward(prompt.ids, prompt.positions, video)

    def _forward_rendered(self, rendered: RenderedTokens) -> torch.Tensor:
        return self._forward(rendered.ids, rendered.positions)

    @torch.inference_mode()
    def run_round(self, second: SecondOfFrames, forced_ids: list[int] | None = None
                  ) -> RoundResult:
        """Narrate one period: evict, prefill its time text and video, generate, close the turn.

        Args:
            second: The period's frames (from the sampler).
            forced_ids: Teacher forcing: feed these assistant tokens (words and end marker,
                at most ``max_new_tokens``) instead of choosing them; used to check that the
                stream holds exactly what ``RoundLayout`` renders.
        """
        state = self._open_round(second, forced_ids)
        try:
            generated, unfed, recorded = self._generate(
                state.logits, self.config.max_new_tokens, self.chooser, stop_on_marker=True,
                forced=forced_ids,
            )
        except BaseException:
            self._rollback_round(state)
            raise
        return self._close_round(state, generated, unfed, recorded)

    def _open_round(self, second: SecondOfFrames, forced_ids: list[int] | None) -> _OpenRound:
        """A round up to its first logits: prepare the frames, evict, prefill the prompt."""
        if forced_ids is not None and not 0 < len(forced_ids) <= self.config.max_new_tokens:
            raise ValueError(
                f"forced_ids must hold 1 to max_new_tokens={self.config.max_new_tokens} tokens"
            )
        self._raise_if_interrupted()
        t0 = self._clock()
        if second.epoch != self._memory_epoch:
            # The camera clock went back and the sampler restarted the stream: what the cache
            # holds belongs to the old timeline.
            self._clear_memory(second.epoch)
        video = self.vision.prepare(second.frames)
        first = self.policy.length == 0
        grid = VideoGrid(*(int(n) for n in video.grid_thw[0]), video.second_per_grid)
        t1 = self._clock()
        try:
            plan = self.policy.plan_eviction(self.policy.rounds_to_evict(1))
            self.last_eviction = plan
            self._apply_eviction(plan)
        except BaseException:
            # Compaction rewrites layer after layer; one failing midway (e.g. out of memory)
            # would leave layers disagreeing with each other and with the policy. Start the
            # memory over rather than narrate from a corrupted cache.
            self._clear_memory(self._memory_epoch)
            raise
        t2 = self._clock()
        if first:
            # The sink and the first round go through the model in one forward pass.
            self.policy.mark_sink(len(self._sink_ids))
            prompt = self.layout.render_sink()
            prompt.extend(self.layout.render_prompt(second.start, second.end, grid,
                                                    prompt.next_position, first=True))
        else:
            prompt = self.layout.render_prompt(second.start, second.end, grid,
                                               self.policy.next_position, first=False)
        self.policy.begin_round(second.start, len(prompt) - (len(self._sink_ids) if first else 0))
        state = _OpenRound(second=second, video=video, plan=plan,
                           length_before=self.policy.length, logits=None, t0=t0, t1=t1, t2=t2)
        try:
            self._vision_done = None
            state.logits = self._prefill(prompt, video)
        except BaseException:
            self._rollback_round(state)
            raise
        state.t3 = self._clock()
        state.t_vision = self._vision_done or t2
        return state

    def _rollback_round(self, state: _OpenRound) -> None:
        """A failed round (e.g. out of memory) leaves no trace: the stream stays usable."""
        self.cache.truncate(state.length_before)
        self.policy.abandon_round(state.length_before)

    def _close_round(self, state: _OpenRound, generated: list[int], unfed: list[int],
                     recorded: list[torch.Tensor]) -> RoundResult:
        """Feed the last token with the turn close and account for the round."""
        try:
            # The last chosen token (if any) goes in with the turn close, in one pass.
            self._forward_rendered(self.layout.render_assistant(
                unfed, self.policy.next_position))
        except BaseException:
            self._rollback_round(state)
            raise
        self.policy.end_round(len(generated), len(self._close_ids))
        t4 = self._clock()
        self.last_round_logits = recorded
        self.rounds_run += 1
        text = clean_narration(self.format.tokenizer.decode(generated, skip_special_tokens=True))
        second, video = state.second, state.video
        return RoundResult(
            start=second.start,
            end=second.end,
            end_stamp=second.end_stamp,
            text=text,
            silent=not text,
            generated_tokens=len(generated),
            cache_tokens=self.cache.length,
            evicted_tokens=state.plan.evicted_tokens,
            frames_received=second.received,
            vision_tokens=video.tokens,
            timings_ms={
                "preprocess": (state.t1 - state.t0) * 1e3,
                "evict": (state.t2 - state.t1) * 1e3,
                "vision": (state.t_vision - state.t2) * 1e3,
                "prefill": (state.t3 - state.t_vision) * 1e3,
                "decode": (t4 - state.t3) * 1e3,
                "total": (t4 - state.t0) * 1e3,
            },
        )

    @torch.inference_mode()
    def ask(self, question: str, max_new_tokens: int | None = None) -> Answer:
        """Answer a question from what the stream has seen, leaving the stream untouched.

        The question and answer are appended to the cache and then cut off again: the cache
        contents, positions and policy state afterwards are identical to before.

        Raises:
            ValueError: empty question, or nothing seen yet.
            QuestionTooLong: the question exceeds ``max_question_tokens``.
        """
        if not question or not question.strip():
            raise ValueError("question is empty")
        if self.policy.length == 0:
            raise ValueError("no frames have been narrated yet; nothing to answer from")
        ids = self.format.question_ids(question.strip())  # length check before rendering
        if len(ids) > self.config.max_question_tokens:
            raise QuestionTooLong(
                f"question is {len(ids)} tokens, more than max_question_tokens="
                f"{self.config.max_question_tokens}"
            )
        budget = min(max_new_tokens or self.config.max_answer_tokens,
                     self.config.max_answer_tokens)
        self._raise_if_interrupted()
        t0 = time.perf_counter()
        length = self.cache.length
        record, self.record_logits = self.record_logits, False
        try:
            logits = self._forward_rendered(
                self.layout.render_question(question.strip(), self.policy.next_position)
            )
            generated, _, _ = self._generate(
                logits, budget, self.answer_chooser, stop_on_marker=False
            )
        finally:
            self.cache.truncate(length)
            self.policy.truncate(length)
            self.record_logits = record
        text = self.format.tokenizer.decode(generated, skip_special_tokens=True).strip()
        return Answer(text, len(ids), len(generated), time.perf_counter() - t0)
