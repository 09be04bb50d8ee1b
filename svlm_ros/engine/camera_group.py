"""Several cameras on one device: their rounds' decode steps run as one batch.

The node runs cameras one after another; on a GPU a decode step is bound by reading the weights,
so four streams' steps cost about twice one (an H100 measured 21.4 ms for a batch of 4 against
10.5 ms for one), and decoding cameras due together in one batch saves most of the decode time
of every camera but one. ``CameraGroup`` holds one session per camera whose caches are views
into ONE storage per layer, ``(cameras, kv_heads, capacity, head_dim)``: each session compacts,
prefills, answers questions and rolls back in its own view exactly as alone, and the
fixed-shape decode step (``static_decode.decode_step``) reads and writes all of them at once,
row ``b`` at its own slot. ``run_rounds`` opens the due cameras' rounds one by one (frames,
eviction, prefill), decodes them together until each has finished, then closes each round.

A camera without a round this time, or whose round has finished, still occupies its row: it is
fed a dummy token at its next free slot (past its live tokens, overwritten by its next real
write) and its length does not advance, so the batch keeps one shape and, on CUDA, one graph.
Each session keeps its own token chooser and random generator, so a camera narrates exactly
what it would alone (tested, on the CPU, against the sessions run one by one).
"""

from __future__ import annotations

import torch

from svlm_ros.engine.attention import sdpa_kernels
from svlm_ros.engine.frame_sampler import SecondOfFrames
from svlm_ros.engine.kv_cache import CacheOverflowError
from svlm_ros.engine.memory_estimate import refuse_unless_fits, session_memory
from svlm_ros.engine.model_loading import LoadedModel
from svlm_ros.engine.static_decode import _CudaGraph, decode_step, uses_float_mask
from svlm_ros.engine.stream_config import RoundResult, StreamConfig
from svlm_ros.engine.streaming_session import StreamingSession
from svlm_ros.engine.turn_decoding import DecodedTurn


class RoundsPartlyClosed(RuntimeError):
    """A camera's round failed while closing after others had closed (those stand).

    Attributes:
        results: Per camera, the round that closed, or None (failed, rolled back or not due).
    """

    def __init__(self, results: list[RoundResult | None], error: BaseException) -> None:
        super().__init__(f"{type(error).__name__}: {error}")
        self.results = results


class CameraGroup:
    """``cameras`` streaming sessions sharing one cache storage and a batched decode.

    Args:
        loaded: The model (one copy serves every camera).
        config: Stream settings, the same for every camera; its ``decode_path`` is ignored:
            the group decodes with its batched fixed-shape step (a CUDA graph on CUDA).
        cameras: Number of sessions.
        record_logits: As for ``StreamingSession``.
        graph_factory: Capture/replay of the batched step on CUDA (tests pass a stand-in).

    Raises:
        ValueError: ``cameras < 1``, or the caches of all cameras do not fit the free memory.
    """

    def __init__(self, loaded: LoadedModel, config: StreamConfig | None = None, *,
                 cameras: int, record_logits: bool = False, graph_factory=None):
        if cameras < 1:
            raise ValueError(f"cameras must be >= 1, got {cameras}")
        self.cameras = cameras
        self.storage: tuple[list, list, list | None] | None = None
        config = config or StreamConfig()
        # The sessions' own decode path is only used by ask(): keep it the fixed-shape one.
        import dataclasses

        path = "static" if loaded.device.type != "cuda" else "graphed"
        config = dataclasses.replace(config, decode_path=path)
        self.sessions = [
            StreamingSession(loaded, config, record_logits=record_logits,
                             cache_factory=lambda session, index=index: self._cache(session,
                                                                                     index))
            for index in range(cameras)
        ]
        self.device = loaded.device
        self.model = loaded.model
        use_graph = graph_factory is not None or self.device.type == "cuda"
        self._graph_factory = (graph_factory or _CudaGraph) if use_graph else None
        self._graph = None

    def _cache(self, session: StreamingSession, index: int):
        """Session ``index``'s cache: views into the group storage (allocated with the first)."""
        from svlm_ros.engine.kv_cache import BoundedKVCache

        text = session.model.config.get_text_config()
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
        if self.storage is None:
            refuse_unless_fits(
                session_memory(session, cameras=self.cameras, grouped=True),
                session.free_memory(), session.device,
                f"the KV caches of {self.cameras} cameras together with one round's working "
                "memory", f"KV caches ({self.cameras} x {session.bound} tokens)",
                "use fewer cameras or smaller windows")
            shape = (self.cameras, text.num_key_value_heads, session.bound, head_dim)

            def buffers():
                return [torch.zeros(shape, dtype=session.loaded.dtype, device=session.device)
                        for _ in range(text.num_hidden_layers)]

            self.storage = (buffers(), buffers(), buffers() if session.pristine_keys else None)
        keys, values, pristine = self.storage
        cache = BoundedKVCache(text.num_hidden_layers, session.bound)
        row = slice(index, index + 1)
        cache.attach([k[row] for k in keys], [v[row] for v in values],
                     None if pristine is None else [p[row] for p in pristine])
        return cache

    # ----- the batched step ------------------------------------------------------------------
    def _step(self, tokens: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor):
        """``(cameras,)`` tokens at ``positions`` into ``slots``: ``(cameras, vocab)`` logits."""
        keys, values, pristine = self.storage
        float_mask = uses_float_mask(self.model)
        language_model, lm_head = self.model.model.language_model, self.model.lm_head
        if self._graph_factory is None:
            return decode_step(language_model, lm_head, tokens, positions, slots, keys, values,
                               pristine, float_mask)
        if self._graph is None:
            self._inputs = (tokens.clone(), positions.clone(), slots.clone())

            def run():
                return decode_step(language_model, lm_head, *self._inputs, keys, values,
                                   pristine, float_mask)

            graph = self._graph_factory(self.device)
            self._logits = graph.capture(run)
            self._graph = graph
        for static, value in zip(self._inputs, (tokens, positions, slots), strict=True):
            static.copy_(value)
        self._graph.replay()
        return self._logits.clone()

    def _step_inputs(self, positions: list[int], slots: list[int]):
        """The step's positions and slots on the device, without waiting for it.

        Both go up in ONE copy from page-locked host memory, queued behind the work already
        queued (``non_blocking``): a copy from ordinary (pageable) memory would make the host
        wait for the device, twice per step. The caching host allocator keeps the page-locked
        block until the copy has run, so it may be dropped at once.
        """
        host = torch.tensor([positions, slots], dtype=torch.long,
                            pin_memory=self.device.type == "cuda")
        on_device = host.to(self.device, non_blocking=True)
        return on_device[0], on_device[1]

    @staticmethod
    def _read_chosen(chosen: dict[int, torch.Tensor]) -> list[int]:
        """The chosen ids on the host: the loop's one wait for the device per step."""
        return torch.cat(list(chosen.values())).tolist() if chosen else []

    # ----- rounds ----------------------------------------------------------------------------
    @torch.inference_mode()
    def run_rounds(self, seconds: list[SecondOfFrames | None],
                   questions: list[str] | None = None) -> list[RoundResult | None]:
        """Run the rounds of the cameras whose ``seconds[i]`` is given, decoding them together;
        ``questions[i]`` (optional, '' for none) is asked in camera ``i``'s round as
        ``StreamingSession.run_round`` takes one.

        Returns one ``RoundResult`` (or None where no second was given) per camera. If any due
        camera is interrupted the call raises ``GenerationInterrupted`` before touching any
        camera; a failure (or an interrupt) later rolls back every opened round as
        ``run_round`` does (their evictions stand, as in ``run_round``).
        """
        questions = questions or [""] * self.cameras
        if len(seconds) != self.cameras or len(questions) != self.cameras:
            raise ValueError(f"need one second and question per camera ({self.cameras}), got "
                             f"{len(seconds)} and {len(questions)}")
        due = [index for index, second in enumerate(seconds) if second is not None]
        for index in due:  # before any camera evicts: an interrupted group changes nothing
            self.sessions[index].check_interrupted()
        opened = {}
        try:
            for index in due:
                opened[index] = self.sessions[index].open_round(seconds[index],
                                                                question=questions[index])
            turns = self._decode_together(opened)
        except BaseException:
            for index, state in opened.items():
                self.sessions[index].rollback_round(state)
            raise
        results: list[RoundResult | None] = [None] * self.cameras
        items = list(opened.items())
        for position, (index, state) in enumerate(items):
            try:  # a failed close rolls its own round back
                results[index] = self.sessions[index].close_round(state, turns[index])
            except BaseException as error:
                for later, later_state in items[position + 1:]:
                    self.sessions[later].rollback_round(later_state)
                if any(result is not None for result in results):
                    raise RoundsPartlyClosed(results, error) from error
                raise
        return results

    def _decode_together(self, opened: dict) -> dict[int, DecodedTurn]:
        """``turn_decoding.decode_turn`` for several sessions at once, each by its own
        ``stop_rule``; one host sync per step."""
        sessions = self.sessions
        logits = {index: state.logits for index, state in opened.items()}
        turns = {index: DecodedTurn(logits=[state.logits.detach().float().cpu()]
                                    if sessions[index].record_logits else [])
                 for index, state in opened.items()}
        done: set[int] = set()
        for index in opened:
            sessions[index].chooser.start(sessions[index].policy.token_ids)
        dummy = torch.zeros(1, dtype=torch.long, device=self.device)
        while True:
            active = [index for index in opened if index not in done]
            for index in active:
                sessions[index].check_interrupted()
            chosen = {index: sessions[index].chooser.choose(logits[index]) for index in active}
            ids = self._read_chosen(chosen)
            feeding = {}
            for index, token_id in zip(chosen, ids, strict=True):
                turn = turns[index]
                decision = sessions[index].stop_rule.decide(len(turn.text_ids), token_id)
                if turn.take(token_id, decision):
                    done.add(index)
                else:
                    feeding[index] = token_id
            if not feeding:
                return turns
            tokens, positions, slots = [], [], []
            for index, session in enumerate(sessions):
                if session.cache.length >= session.cache.capacity:
                    raise CacheOverflowError(
                        f"camera {index}: cache capacity {session.cache.capacity} exceeded")
                if index in feeding:
                    tokens.append(chosen[index])
                    position = session.policy.next_position
                else:  # not decoding: a dummy write past its live tokens, length unchanged
                    tokens.append(dummy)
                    position = 0
                positions.append(position)
                slots.append(session.cache.length)
            step_positions, step_slots = self._step_inputs(positions, slots)
            with sdpa_kernels(self.device):
                batch_logits = self._step(torch.cat(tokens), step_positions, step_slots)
            for index, token_id in feeding.items():
                session = sessions[index]
                rendered = session.layout.render_generated(token_id, positions[index])
                session.cache.advance(1)
                session.policy.append(torch.tensor(rendered.ids, dtype=torch.long),
                                      rendered.positions)
                logits[index] = batch_logits[index]
                if session.record_logits:
                    turns[index].logits.append(batch_logits[index].detach().float().cpu())
