"""The StreamingVLM cache policy: what stays in the one KV cache, in which order, at which position.

Pure bookkeeping (token counts, ids and 3-D positions); no model and no key tensors. The session
asks the policy for an ``EvictionPlan`` and hands it to ``BoundedKVCache.compact``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch

SINK = "sink"
PREVIOUS_TEXT = "previous_text"
ROUND = "round"


@dataclass(frozen=True)
class CachePolicyConfig:
    """Sizes of the bounded cache (defaults are StreamingVLM's).

    Attributes:
        text_sink_tokens: First tokens of the ``previous text`` block that are never dropped.
        text_window_tokens: Most recent tokens of the ``previous text`` block that are kept.
        vision_window_seconds: Rounds (seconds) kept whole, newest included.
        attention_sink: Keep the sink (the system turn and the ``previous text`` turn's
            opening) for the whole stream.
            False evicts it with the first eviction: only for the "sliding window without
            sinks" ablation.
        contiguous_positions: Re-position retained tokens gap-free after every eviction.
            False keeps each token's original position, so positions grow with the stream:
            only for the "native positions" ablation.
    """

    text_sink_tokens: int = 512
    text_window_tokens: int = 512
    vision_window_seconds: int = 16
    attention_sink: bool = True
    contiguous_positions: bool = True

    def __post_init__(self):
        if self.text_sink_tokens < 0 or self.text_window_tokens < 0:
            raise ValueError("text_sink_tokens and text_window_tokens must be >= 0")
        if self.vision_window_seconds < 1:
            raise ValueError(
                f"vision_window_seconds must be >= 1 (the newest second is always kept), "
                f"got {self.vision_window_seconds}"
            )


T = TypeVar("T")


def cut_previous_text(items: Sequence[T], config: CachePolicyConfig) -> list[T]:
    """The ``previous text`` the cache keeps of everything that ever entered it, in order.

    Keeps the first ``text_sink_tokens`` and the last ``text_window_tokens`` items and drops
    the middle. The cache policy applies it to cache indices at every eviction; the SFT
    chunker applies it to the token ids of all assistant text before a chunk. Cutting the
    whole history at once equals cutting it eviction by eviction, because the first items are
    never dropped and the newest always kept.
    """
    limit = config.text_sink_tokens + config.text_window_tokens
    if len(items) <= limit:
        return list(items)
    tail_start = len(items) - config.text_window_tokens
    return list(items[: config.text_sink_tokens]) + list(items[tail_start:])


@dataclass
class RoundSpan:
    """One second of stream in the cache: ``prompt`` (user turn and assistant header),
    ``text`` (the assistant's generated tokens) and ``close`` (end-of-turn framing).

    ``moved_tokens``: how many of the text's first tokens move to the previous text when the
    round leaves the window (the words: StreamingVLM drops the end marker's tokens).
    """

    stream_second: float
    prompt_tokens: int
    text_tokens: int = 0
    close_tokens: int = 0
    moved_tokens: int = 0
    question_tokens: int = 0

    @property
    def length(self) -> int:
        return self.prompt_tokens + self.text_tokens + self.close_tokens


@dataclass
class EvictionPlan:
    """What ``BoundedKVCache.compact`` must do.

    Attributes:
        kept_index: Old cache indices of the retained tokens, in their new order.
        shift: New minus old position for each retained token (equal on all three axes).
        evicted_tokens: How many tokens leave the cache.
    """

    kept_index: torch.Tensor
    shift: torch.Tensor
    evicted_tokens: int


@dataclass
class StreamingCachePolicy:
    """Layout and eviction rules of the bounded streaming cache.

    Cache order: ``[sink][previous text][previous-text close][round][round]...[round]``
    followed, only while a round or an answer is being generated, by that round's or answer's
    tokens.

    Invariants (each is tested):
      * tokens held never exceed ``bound`` (the caller sizes the cache with it);
      * the sink (system turn + ``previous text`` opening) is never moved or rewritten, so its
        cached keys and values stay bit-exact for the whole stream;
      * at most ``vision_window_seconds`` rounds are held and the newest round is always whole;
      * ``previous text`` holds at most ``text_sink_tokens + text_window_tokens`` tokens: the
        first ``text_sink_tokens`` that ever entered it and the most recent ``text_window_tokens``;
      * when a round leaves the window, its words (``moved_tokens``) move (as existing KV
        entries, never recomputed) to the end of ``previous text``, before the
        previous-text close; the rest of the round (its prompt, instruction or question
        included, its end marker and close) is evicted;
      * positions are contiguous: each text token is one past the previous block, and a vision
        block keeps its internal (t, h, w) layout at a gap-free offset, exactly the positions
        transformers' ``get_rope_index`` gives the retained sequence computed from scratch.

    The per-token ``token_ids`` (``-1`` never appears; video tokens hold the video pad id) and
    ``positions`` (``(3, tokens)``) mirror the cache order and are kept here.
    """

    config: CachePolicyConfig
    sink_tokens: int = 0
    previous_text_tokens: int = 0
    previous_close_tokens: int = 0
    rounds: list[RoundSpan] = field(default_factory=list)
    token_ids: torch.Tensor = field(default_factory=lambda: torch.zeros(0, dtype=torch.long))
    positions: torch.Tensor = field(default_factory=lambda: torch.zeros(3, 0, dtype=torch.long))
    #: Total previous-text tokens ever dropped from the middle (for status and tests).
    dropped_text_tokens: int = 0
    evicted_rounds: int = 0

    # ----- sizes ---------------------------------------------------------------------------
    @property
    def length(self) -> int:
        """Tokens currently held."""
        return int(self.token_ids.numel())

    @property
    def next_position(self) -> int:
        """The position the next appended token takes (one past the last text token)."""
        if self.length == 0:
            return 0
        return int(self.positions[:, -1].max()) + 1

    def bound(self, sink_tokens: int, max_round_tokens: int, extra_tokens: int = 0) -> int:
        """Hard upper bound on tokens held, from the config and the largest possible round.

        Args:
            sink_tokens: Length of the sink.
            max_round_tokens: Largest possible round (prompt + generated text + close).
            extra_tokens: Room for a transient extension (an ``ask``) on top of the rounds.
        """
        cfg = self.config
        return (
            sink_tokens
            + cfg.text_sink_tokens
            + cfg.text_window_tokens
            + cfg.vision_window_seconds * max_round_tokens
            + extra_tokens
        )

    # ----- appending -----------------------------------------------------------------------
    def append(self, token_ids: torch.Tensor, positions: torch.Tensor) -> None:
        """Record tokens just written to the cache (ids ``(n,)``, positions ``(3, n)``)."""
        self.token_ids = torch.cat([self.token_ids, token_ids.detach().cpu().long()])
        self.positions = torch.cat([self.positions, positions.detach().cpu().long()], dim=1)

    def truncate(self, length: int) -> None:
        """Forget appended tokens past ``length`` (undo of an ``ask``)."""
        self.token_ids = self.token_ids[:length]
        self.positions = self.positions[:, :length]

    def mark_head(self, sink_tokens: int, previous_text_tokens: int,
                  previous_close_tokens: int) -> None:
        """The stream's first tokens: the sink, the initial previous text and the
        previous-text close (set once, before the first round)."""
        if self.rounds or self.length:
            raise RuntimeError("the head can only be marked before any round")
        self.sink_tokens = sink_tokens
        self.previous_text_tokens = previous_text_tokens
        self.previous_close_tokens = previous_close_tokens

    def begin_round(self, stream_second: float, prompt_tokens: int,
                    question_tokens: int = 0) -> None:
        """A round opens with ``prompt_tokens`` (of which ``question_tokens`` are a question)."""
        self.rounds.append(RoundSpan(stream_second, prompt_tokens,
                                     question_tokens=question_tokens))

    def abandon_round(self, length: int) -> None:
        """Forget a round that failed midway, and any of its tokens past ``length``."""
        self.rounds.pop()
        self.truncate(length)
        if not self.rounds and length == 0:
            # The first round carried the head: start over cleanly.
            self.sink_tokens = self.previous_text_tokens = self.previous_close_tokens = 0

    def end_round(self, text_tokens: int, close_tokens: int, moved_tokens: int) -> None:
        """The open round generated ``text_tokens`` and was closed with ``close_tokens``; its
        first ``moved_tokens`` text tokens move to the previous text at its eviction."""
        if not 0 <= moved_tokens <= text_tokens:
            raise ValueError(f"moved_tokens {moved_tokens} not in [0, {text_tokens}]")
        current = self.rounds[-1]
        current.text_tokens = text_tokens
        current.close_tokens = close_tokens
        current.moved_tokens = moved_tokens
        expected = (self.sink_tokens + self.previous_text_tokens + self.previous_close_tokens
                    + sum(r.length for r in self.rounds))
        assert expected == self.length, (expected, self.length)

    # ----- eviction ------------------------------------------------------------------------
    def rounds_to_evict(self, incoming_rounds: int = 1) -> int:
        """Rounds that must leave so that ``incoming_rounds`` more fit in the vision window."""
        return max(0, len(self.rounds) + incoming_rounds - self.config.vision_window_seconds)

    def plan_eviction(self, rounds: int) -> EvictionPlan:
        """Evict the ``rounds`` oldest rounds and return how the cache must be compacted.

        The policy's own ids and positions are updated to the post-eviction state.
        """
        if rounds <= 0 or not self.rounds:
            kept = torch.arange(self.length)
            return EvictionPlan(kept, torch.zeros_like(kept), 0)
        rounds = min(rounds, len(self.rounds))
        sink_end = self.sink_tokens
        kept_sink = sink_end if self.config.attention_sink else 0
        text_end = sink_end + self.previous_text_tokens
        previous_text = list(range(sink_end, text_end))
        close_end = text_end + self.previous_close_tokens
        cursor = close_end
        for span in self.rounds[:rounds]:
            text_start = cursor + span.prompt_tokens
            previous_text.extend(range(text_start, text_start + span.moved_tokens))
            cursor += span.length
        before = len(previous_text)
        previous_text = cut_previous_text(previous_text, self.config)
        self.dropped_text_tokens += before - len(previous_text)
        remaining_rounds_start = cursor
        kept = torch.cat(
            [
                torch.arange(kept_sink),
                torch.tensor(previous_text, dtype=torch.long),
                torch.arange(text_end, close_end),
                torch.arange(remaining_rounds_start, self.length),
            ]
        )
        if self.config.contiguous_positions:
            new_positions = self._contiguous_positions(
                kept, kept_sink, len(previous_text), self.rounds[rounds:]
            )
        else:
            new_positions = self.positions[:, kept]
        shift = new_positions[0] - self.positions[0, kept]
        evicted = self.length - kept.numel()
        self.token_ids = self.token_ids[kept]
        self.positions = new_positions
        self.previous_text_tokens = len(previous_text)
        self.sink_tokens = kept_sink
        del self.rounds[:rounds]
        self.evicted_rounds += rounds
        return EvictionPlan(kept, shift, evicted)

    def _contiguous_positions(
        self,
        kept: torch.Tensor,
        sink_tokens: int,
        previous_text_tokens: int,
        remaining_rounds: list[RoundSpan],
    ) -> torch.Tensor:
        """Gap-free positions for the retained tokens, in their new order.

        The sink keeps its positions. Previous-text tokens are plain text: one position each.
        So is the previous-text close after it. Each remaining round is moved rigidly (its
        vision block keeps its t/h/w layout) so that it starts one past the end of what precedes
        it, as a fresh computation would place it.
        """
        old = self.positions[:, kept]
        new = old.clone()
        cursor = int(old[:, :sink_tokens].max()) + 1 if sink_tokens else 0
        text_tokens = previous_text_tokens + self.previous_close_tokens
        text_slice = slice(sink_tokens, sink_tokens + text_tokens)
        new[:, text_slice] = torch.arange(cursor, cursor + text_tokens).expand(3, -1)
        cursor += text_tokens
        start = sink_tokens + text_tokens
        for span in remaining_rounds:
            block = slice(start, start + span.length)
            # Rounds begin with a text token, whose three coordinates are equal.
            new[:, block] = old[:, block] + (cursor - int(old[0, start]))
            cursor = int(new[:, block][:, -1].max()) + 1
            start += span.length
        return new
