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
from dataclasses import dataclass

import numpy as np
import torch

from svlm_ros.engine.asking import answer_from_cache
from svlm_ros.engine.attention import sdpa_kernels
from svlm_ros.engine.cache_policy import EvictionPlan, StreamingCachePolicy
from svlm_ros.engine.cache_sizing import CacheSizing, free_memory
from svlm_ros.engine.decoding import SamplingConfig, TokenChooser
from svlm_ros.engine.device_sampling import DeviceTokenChooser
from svlm_ros.engine.frame_sampler import FrameSampler, SecondOfFrames
from svlm_ros.engine.kv_cache import BoundedKVCache
from svlm_ros.engine.memory_estimate import refuse_unless_fits, session_memory
from svlm_ros.engine.model_loading import LoadedModel
from svlm_ros.engine.prompt_format import (
    PromptFormat,
    answer_length,
    clean_narration,
    split_answer,
)
from svlm_ros.engine.rotary_shift import rotary_inverse_frequencies
from svlm_ros.engine.round_layout import RenderedTokens, RoundLayout, VideoGrid
from svlm_ros.engine.static_decode import GraphedDecoder, StaticDecoder, resolve_decode_path
from svlm_ros.engine.static_prefill import StaticPrefiller, resolve_prefill_path
from svlm_ros.engine.stop_rule import StopRule, end_ids_from, newline_token_ids
from svlm_ros.engine.stream_config import (
    Answer,
    GenerationInterrupted,
    QuestionTooLong,
    RoundResult,
    StreamConfig,
)
from svlm_ros.engine.turn_decoding import DecodedTurn, decode_turn
from svlm_ros.engine.vision_input import VideoBlock, VisionInput
from svlm_ros.engine.vision_tower import TowerInputs

__all__ = ["Answer", "GenerationInterrupted", "QuestionTooLong", "RoundResult", "StreamConfig",
           "StreamingSession", "OpenRound"]


@dataclass
class OpenRound:
    """A round between its prefill and its turn close (``run_round``'s and ``CameraGroup``'s
    shared steps: ``open_round``, a decode, ``close_round`` or ``rollback_round``)."""

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
    question: str = ""


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
        self.format = PromptFormat(loaded.tokenizer, cfg.system_prompt, cfg.instruction,
                                   cfg.previous_text)
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
        self._close_ids = self.layout.close_ids
        generation_config = getattr(self.model, "generation_config", None)
        #: The narration sampling in use: the configured one, completed from the checkpoint's
        #: generation config as ``generate`` completes it.
        self.sampling = cfg.sampling.resolved(generation_config)
        never = self.format.never_generated_ids()
        end_ids = end_ids_from(generation_config, self.format.end_of_turn_id, never)
        #: When a narrated second's turn ends, and when an answer's does.
        self.stop_rule = StopRule(cfg.max_new_tokens, self.format.end_of_turn_id, end_ids)
        self.answer_stop_rule = StopRule(cfg.max_answer_tokens, self.format.end_of_turn_id,
                                         end_ids, newline_token_ids(loaded.tokenizer))
        # StreamingVLM moves an evicted second's text to the previous text without its last
        # tokens, which are the end marker's when the model ended the second with it.
        self._marker_tokens = len(self.format.end_marker_ids())
        self.sizing = CacheSizing(cfg, self.layout, self.sampler.frames_per_round,
                                  self.vision.temporal_patch, self.model.config, loaded.dtype,
                                  self.device)
        self.bound = self.sizing.capacity()
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
        # The tower's index tensors per frame size, on the device: no host read per forward.
        self._tower_inputs = TowerInputs(self.model.config.vision_config, self.device)
        if cfg.compile_vision:
            self._visual = torch.compile(self.model.model.visual, dynamic=False)
        attn_implementation = self.model.config.get_text_config()._attn_implementation
        self.decode_path = resolve_decode_path(cfg.decode_path, self.device, attn_implementation)
        self.prefill_path = resolve_prefill_path(cfg.prefill_path, attn_implementation)
        self.prefiller = (
            None if self.prefill_path == "eager"
            else StaticPrefiller(self.model, self.cache, compiled=self.prefill_path == "compiled"))
        # <|endoftext|> ends a turn where the checkpoint lists it; elsewhere it is never text.
        end_of_text = self.format.end_of_text_id()
        banned = never + ([end_of_text] if end_of_text is not None
                          and end_of_text not in end_ids else [])
        # Answers are greedy: a question should get the same answer from the same memory.
        answer_sampling = SamplingConfig(temperature=0.0,
                                         repetition_penalty=cfg.sampling.repetition_penalty)
        if self.decode_path == "eager":
            self.chooser = TokenChooser(self.sampling, self.device, banned)
            self.answer_chooser = TokenChooser(answer_sampling, self.device, banned)
            self.static_decoder = None
        else:
            vocab = self.model.lm_head.out_features
            self.chooser = DeviceTokenChooser(self.sampling, self.device, vocab, banned)
            self.answer_chooser = DeviceTokenChooser(answer_sampling, self.device, vocab, banned)
            self.static_decoder = (
                GraphedDecoder(self.model, self.cache) if self.decode_path == "graphed"
                else StaticDecoder(self.model, self.cache,
                                   compiled=self.decode_path == "compiled"))
        self.reset()

    # ----- sizes (cache_sizing.py) -------------------------------------------------------
    def stream_bound(self, frame_height: int, frame_width: int, stream_seconds: float) -> int:
        """Most tokens held while narrating frames of one size for up to ``stream_seconds``
        (``CacheSizing.stream_bound``)."""
        return self.sizing.stream_bound(frame_height, frame_width, stream_seconds)

    @property
    def pristine_keys(self) -> bool:
        """Whether the cache keeps pristine keys (half precision: bounded rotation rounding,
        see ``kv_cache.py``)."""
        return self.sizing.pristine_keys

    def cache_bytes(self) -> int:
        """Memory the preallocated cache takes (``CacheSizing.cache_bytes``)."""
        return self.sizing.cache_bytes(self.bound)

    def free_memory(self) -> int:
        """Bytes free now where the cache goes (``cache_sizing.free_memory``)."""
        return free_memory(self.device)

    def _make_cache(self) -> BoundedKVCache:
        """The one cache of this session, allocated now once it and one round's working memory
        fit the free memory (``memory_estimate.py``)."""
        refuse_unless_fits(
            session_memory(self), self.free_memory(), self.device,
            "the KV cache for these settings together with one round's working memory",
            f"KV cache ({self.bound} tokens)",
            "lower vision_window_seconds, max_pixels, fps * period or the text windows, or run "
            "fewer sessions on this device")
        return self.sizing.allocate(self.bound)

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

    def check_interrupted(self) -> None:
        """Raise ``GenerationInterrupted`` if ``interrupt()`` was called (and not resumed)."""
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
                **self._tower_inputs(video.grid_thw),
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

    def _apply_eviction(self, plan: EvictionPlan) -> None:
        """Squeeze evicted tokens out of the cache and rotate the moved keys."""
        if plan.evicted_tokens:
            self.cache.compact(plan.kept_index, plan.shift, self.inverse_frequencies)

    def _prefill(self, prompt: RenderedTokens, video: VideoBlock) -> torch.Tensor:
        """Feed a new round's prompt (only the new second goes through the vision encoder)."""
        return self._forward(prompt.ids, prompt.positions, video)

    def feed(self, rendered: RenderedTokens) -> torch.Tensor:
        """Append rendered text tokens to the cache; return the last logits."""
        return self._forward(rendered.ids, rendered.positions)

    def decode(self, logits: torch.Tensor, forced: list[int] | None = None) -> DecodedTurn:
        """Decode the open round's narration (``turn_decoding.decode_turn``)."""
        return decode_turn(self, logits, self.stop_rule, self.chooser, forced)

    @torch.inference_mode()
    def run_round(self, second: SecondOfFrames, forced_ids: list[int] | None = None, *,
                  question: str = "") -> RoundResult:
        """Narrate one period: evict, prefill its time text and video, generate, close the turn.

        Args:
            second: The period's frames (from the sampler).
            forced_ids: Teacher forcing: feed these assistant tokens (words and end marker,
                at most ``max_new_tokens``) instead of choosing them; used to check that the
                stream holds exactly what ``RoundLayout`` renders.
            question: A question asked in this second, as StreamingVLM was trained to take
                one: after the time text, before the video; it stays in the stream, and the
                answer comes first in the second's text (``RoundResult.answer``).
        """
        state = self.open_round(second, forced_ids, question=question)
        try:
            turn = self.decode(state.logits, forced_ids)
        except BaseException:
            self.rollback_round(state)
            raise
        return self.close_round(state, turn)

    def open_round(self, second: SecondOfFrames, forced_ids: list[int] | None = None, *,
                   question: str = "") -> OpenRound:
        """A round up to its first logits: prepare the frames, evict, prefill the prompt."""
        if forced_ids is not None and not 0 < len(forced_ids) <= self.config.max_new_tokens:
            raise ValueError(
                f"forced_ids must hold 1 to max_new_tokens={self.config.max_new_tokens} tokens"
            )
        question = question.strip()
        question_tokens = len(self.check_question(question)) if question else 0
        if question and not self.can_hold_question():
            raise ValueError("a question asked in an earlier second is still in the vision "
                             "window; ask() answers without holding the question")
        self.check_interrupted()
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
        layout, head_tokens = self.layout, 0
        if first:
            # The head (sink, previous text, its close) and the first round go through the
            # model in one forward pass.
            self.policy.mark_head(len(layout.sink_ids), len(layout.initial_previous_text_ids),
                                  len(layout.previous_text_close_ids))
            prompt = layout.render_head()
            head_tokens = len(prompt)
        else:
            prompt = RenderedTokens()
        position = prompt.next_position if first else self.policy.next_position
        prompt.extend(layout.render_prompt(second.start, second.end, grid, position,
                                           first=first, question=question))
        self.policy.begin_round(second.start, len(prompt) - head_tokens, question_tokens)
        state = OpenRound(second=second, video=video, plan=plan,
                          length_before=self.policy.length, logits=None, t0=t0, t1=t1, t2=t2,
                          question=question)
        try:
            self._vision_done = None
            state.logits = self._prefill(prompt, video)
        except BaseException:
            self.rollback_round(state)
            raise
        state.t3 = self._clock()
        state.t_vision = self._vision_done or t2
        return state

    def rollback_round(self, state: OpenRound) -> None:
        """A failed round (e.g. out of memory) leaves no trace: the stream stays usable."""
        self.cache.truncate(state.length_before)
        self.policy.abandon_round(state.length_before)

    def close_round(self, state: OpenRound, turn: DecodedTurn) -> RoundResult:
        """Feed the last token with the turn close and account for the round."""
        try:
            # The last chosen token (if any) goes in with the turn close, in one pass.
            self.feed(self.layout.render_assistant(turn.unfed, self.policy.next_position))
        except BaseException:
            self.rollback_round(state)
            raise
        text_ids = turn.text_ids
        self.policy.end_round(len(text_ids), len(self._close_ids),
                              max(0, len(text_ids) - self._marker_tokens))
        t4 = self._clock()
        self.last_round_logits = turn.logits
        self.rounds_run += 1
        decoded = self.format.tokenizer.decode(text_ids, skip_special_tokens=True)
        answer, answer_tokens = "", 0
        if state.question:
            answer, text = split_answer(decoded)
            answer_tokens = answer_length(self.format.tokenizer, text_ids)
        else:
            text = clean_narration(decoded)
        second, video = state.second, state.video
        return RoundResult(
            start=second.start,
            end=second.end,
            end_stamp=second.end_stamp,
            text=text,
            silent=not text,
            generated_tokens=turn.chosen_tokens,
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
            answer=answer,
            answer_tokens=answer_tokens,
        )

    def can_hold_question(self) -> bool:
        """Whether the next round may take a question (``run_round(question=...)``): the
        cache has room for one question held in the vision window (besides an ask), so not
        while an earlier second's question is still in it."""
        return not any(span.question_tokens
                       for span in self.policy.rounds[self.policy.rounds_to_evict(1):])

    def check_question(self, question: str) -> list[int]:
        """The question's ids, refused when longer than ``max_question_tokens``."""
        ids = self.format.question_ids(question)
        if len(ids) > self.config.max_question_tokens:
            raise QuestionTooLong(
                f"question is {len(ids)} tokens, more than max_question_tokens="
                f"{self.config.max_question_tokens}"
            )
        return ids

    @torch.inference_mode()
    def ask(self, question: str, max_new_tokens: int | None = None) -> Answer:
        """Answer a question from what the stream has seen, leaving the stream untouched
        (``asking.answer_from_cache``).

        Raises:
            ValueError: empty question, or nothing seen yet.
            QuestionTooLong: the question exceeds ``max_question_tokens``.
        """
        return answer_from_cache(self, question, max_new_tokens)
