"""Chunks of the stream rendered for full-attention SFT, exactly as the streaming cache holds them.

StreamingVLM trains on short overlapping windows (24 s, 12 s overlap) with video and text
interleaved every second and full attention inside the window; all narration before the window
becomes the ``previous text`` turn, cut to its first ``text_sink_tokens`` and last
``text_window_tokens`` tokens. Here a window is rendered with the engine's own ``RoundLayout``
(``render_stream``), its previous text cut with the engine's own ``cut_previous_text``, and its
frames patchified with the engine's own ``VisionInput``: the tokens, their 3-D positions and the
vision inputs are those a ``StreamingSession`` puts into its cache for the same seconds
(``prompt_format.py`` shows the stream)::

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n
    <|im_start|>previous text\\n{words of every second before the chunk, cut}<|im_end|>\\n
    <|im_start|>user\\nTime=12.0-13.0s[ {question}]<|vision_start|>...<|vision_end|><|im_end|>\\n
    <|im_start|>assistant\\n[{answer}\\n] the words ...<|im_end|>\\n
    ...

The ``previous text`` holds what the cache moves there when a second leaves it: the second's
assistant text without its end marker (its words, each with its leading space; the answer and
its newline first when the second answered a question; nothing for a silent second), after the
configured initial previous text, cut by ``cut_previous_text``. A chunk that starts the stream
has the initial previous text alone, uncut, as the cache holds it before its first eviction.

The instruction: StreamingVLM trained without one (its training data had none) and infers with
one after the first second's video. ``ChunkConfig.instruction`` is what the first round of a
chunk that starts the stream carries there; its default is none, as the reference trained. Set
it to the node's instruction to train the stream's first second exactly as inference shows it.
Later chunks never have it: the instruction leaves the cache with the stream's first second.

The loss (``labels``) is on what the model produces at inference and nothing else: for every
second, the tokens after the assistant header through the ``<|im_end|>`` that ends the turn, i.e.
every ``assistant`` token (answer, words, `` ...`` marker) and the ``<|im_end|>`` that opens the
``close`` span; never the ``\\n`` after it, the sink, the previous text, the time text, the
question, the video, the instruction or the turn framing. A silent second is labelled
`` ...<|im_end|>``.

A second's assistant text is ``PromptFormat.narration_ids``: ``[answer\\n] words ...``, each
word with its leading space, `` ...`` alone when silent, tokenized as plain text (a
``<|im_end|>`` typed into a bag's text stays characters). The budget is the engine's: at most
``max_new_tokens`` new tokens, the model's own ``<|im_end|>`` counted, so a text of at most
``max_new_tokens - 1`` tokens followed by ``<|im_end|>`` is what inference lets the model
produce. A longer text keeps as many whole words as fit with the marker in ``max_new_tokens - 1``
tokens (the answer, when there is one, is kept first); only when not even one word (or the
answer alone) fits is the text cut mid-word, token-wise, before the marker.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from svlm_ros.engine.cache_policy import CachePolicyConfig, cut_previous_text
from svlm_ros.engine.prompt_format import DEFAULT_SYSTEM_PROMPT, PromptFormat
from svlm_ros.engine.round_layout import (
    ASSISTANT,
    CLOSE,
    RenderedTokens,
    RoundContent,
    RoundLayout,
    VideoGrid,
)
from svlm_ros.engine.vision_input import VisionInput

#: Label value that the loss ignores (the usual PyTorch / transformers convention).
IGNORE = -100


@dataclass(frozen=True)
class ChunkConfig:
    """How the stream is cut and rendered for training (defaults: StreamingVLM and the engine).

    Attributes:
        chunk_seconds: Seconds (rounds) per chunk.
        overlap_seconds: Seconds shared by consecutive chunks of an episode.
        max_new_tokens: The engine's per-second generation budget (``StreamConfig``'s, the
            model's ``<|im_end|>`` counted): a second's assistant text is cut to
            ``max_new_tokens - 1`` tokens.
        text_sink_tokens, text_window_tokens: The previous-text cut, as the cache policy's.
        system_prompt: The system turn, as the engine's (default: Qwen's, as StreamingVLM's).
        instruction: What the first round of a chunk that starts the stream carries after its
            video ('' for none, the default: StreamingVLM trained without an instruction,
            although its inference gives one; set the node's to train the stream's first
            second as inference shows it).
        previous_text: The text the ``previous text`` turn starts with, as the engine's
            ``StreamConfig.previous_text`` ('' for none).
    """

    chunk_seconds: int = 24
    overlap_seconds: int = 12
    max_new_tokens: int = 20
    text_sink_tokens: int = 512
    text_window_tokens: int = 512
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    instruction: str = ""
    previous_text: str = ""

    def __post_init__(self):
        if self.chunk_seconds < 1:
            raise ValueError(f"chunk_seconds must be >= 1, got {self.chunk_seconds}")
        if not 0 <= self.overlap_seconds < self.chunk_seconds:
            raise ValueError(
                f"overlap_seconds must be in [0, chunk_seconds), got {self.overlap_seconds} "
                f"with chunk_seconds {self.chunk_seconds}"
            )
        if self.max_new_tokens < 2:
            raise ValueError("max_new_tokens must be >= 2 (the end marker and <|im_end|>)")

    @property
    def cache_policy(self) -> CachePolicyConfig:
        return CachePolicyConfig(text_sink_tokens=self.text_sink_tokens,
                                 text_window_tokens=self.text_window_tokens)


@dataclass(frozen=True)
class Chunk:
    """Dataset rows ``rows`` (consecutive seconds of one episode) that train together."""

    episode: int
    rows: range
    first_row: int  # the episode's first row: everything from there to rows.start is history

    @property
    def starts_stream(self) -> bool:
        return self.rows.start == self.first_row


def window_starts(seconds: int, chunk_seconds: int, overlap_seconds: int) -> list[int]:
    """Start offsets of the windows over ``seconds`` rounds.

    Windows advance by ``chunk_seconds - overlap_seconds``; the last one is shorter when the
    rounds run out, and a window is only added while it brings rounds the previous one did
    not have. Every round is in at least one window.
    """
    if seconds <= 0:
        return []
    stride = chunk_seconds - overlap_seconds
    starts = [0]
    # The window starting at s adds rounds past the previous window's end (s + overlap).
    while starts[-1] + chunk_seconds < seconds:
        starts.append(starts[-1] + stride)
    return starts


def plan_chunks(episodes: Sequence[range], config: ChunkConfig) -> list[Chunk]:
    """The chunks of every episode, in order."""
    chunks = []
    for episode, rows in enumerate(episodes):
        for start in window_starts(len(rows), config.chunk_seconds, config.overlap_seconds):
            stop = min(start + config.chunk_seconds, len(rows))
            chunks.append(Chunk(episode, range(rows.start + start, rows.start + stop),
                                rows.start))
    return chunks


def narration_ids(prompt_format: PromptFormat, words: str, max_new_tokens: int,
                  answer: str = "") -> list[int]:
    """The assistant ids of one second, ``[answer\\n] words ...``, within the engine's budget.

    At most ``max_new_tokens - 1`` tokens, so that the ``<|im_end|>`` after them is within the
    ``max_new_tokens`` the engine lets the model generate. A longer text keeps the answer, as
    many whole words as fit and the end marker; when not even that fits, the text is cut
    token-wise before the marker.

    Raises:
        ValueError: the end marker alone does not fit the budget.
    """
    budget = max_new_tokens - 1
    ids = prompt_format.narration_ids(words, answer)
    if len(ids) <= budget:
        return ids
    marker = prompt_format.end_marker_ids()
    if len(marker) > budget:
        raise ValueError(f"max_new_tokens={max_new_tokens} leaves no room for the end marker "
                         f"({len(marker)} tokens) and <|im_end|>")
    split = words.split()
    kept: list[int] | None = None
    for count in range(len(split)):  # narration ids only grow with the words kept
        fewer = prompt_format.narration_ids(" ".join(split[:count]), answer)
        if len(fewer) > budget:
            break
        kept = fewer
    if kept is not None and len(kept) > len(marker):  # not the words lost to silence
        return kept
    # Not one word (or not the answer alone) fits: cut the text mid-word.
    assert ids[-len(marker):] == marker, "narration ids must end with the end marker"
    return ids[: budget - len(marker)] + marker


def moved_ids(prompt_format: PromptFormat, assistant_ids: Sequence[int]) -> list[int]:
    """What the cache moves to the previous text when a second leaves it: its assistant ids
    without the end marker's tokens (the engine's rule; nothing when the second was silent)."""
    keep = max(0, len(assistant_ids) - len(prompt_format.end_marker_ids()))
    return list(assistant_ids[:keep])


def loss_labels(rendered: RenderedTokens, end_of_turn_id: int) -> torch.Tensor:
    """``(n,)`` labels: the token id where the model is trained to produce it, else ``IGNORE``.

    Trained: every ``assistant`` token and the ``<|im_end|>`` opening every ``close`` span
    (never the ``\\n`` after it).
    """
    ids = torch.tensor(rendered.ids, dtype=torch.long)
    trained = rendered.mask([ASSISTANT])
    for span in rendered.spans:
        if span.label == CLOSE:
            assert rendered.ids[span.start] == end_of_turn_id, "close must open with <|im_end|>"
            trained[span.start] = True
    return torch.where(trained, ids, torch.full_like(ids, IGNORE))


@dataclass
class RoundInput:
    """One second to render.

    Attributes:
        start, end: Its period (stream time, s).
        frames: Its frames (RGB uint8).
        text: Its words ('' when silent).
        question: A question asked in this second ('' for none): it follows the time text.
        answer: The question's answer, which comes first in the second's assistant text.
    """

    start: float
    end: float
    frames: Sequence[np.ndarray]
    text: str
    question: str = ""
    answer: str = ""

    def __post_init__(self):
        self.question = self.question.strip()
        if bool(self.question) != bool(self.answer.strip()):
            raise ValueError("a question needs its answer and an answer its question "
                             f"(question {self.question!r}, answer {self.answer!r})")


#: An earlier second of the stream, for the previous text: its words, or ``(words, answer)``.
HistoryItem = str | tuple[str, str]


@dataclass
class ChunkSample:
    """One training sequence.

    Attributes:
        input_ids: ``(n,)`` token ids.
        position_ids: ``(3, n)`` M-RoPE positions.
        labels: ``(n,)`` target ids, ``IGNORE`` where no loss is taken.
        pixel_values_videos: Patchified frames of every round, in order.
        video_grid_thw: ``(rounds, 3)`` grid of each round's video block.
        rendered: The labelled rendering (spans), for inspection and tests.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor
    pixel_values_videos: torch.Tensor
    video_grid_thw: torch.Tensor
    rendered: RenderedTokens

    @property
    def tokens(self) -> int:
        return int(self.input_ids.numel())

    @property
    def trained_tokens(self) -> int:
        return int((self.labels != IGNORE).sum())


class ChunkRenderer:
    """Renders dataset chunks for one model's tokenizer, processor and config.

    Args:
        processor: The checkpoint's processor (tokenizer and video processor).
        model_config: The model config (``spatial_merge_size``, ``tokens_per_second``).
        config: Chunking settings.
        max_pixels, min_pixels, fps: The dataset's frame settings (its manifest's).
    """

    def __init__(self, processor, model_config, config: ChunkConfig, *, max_pixels: int,
                 min_pixels: int, fps: float):
        self.config = config
        self.format = PromptFormat(processor.tokenizer, config.system_prompt, config.instruction,
                                   config.previous_text)
        self.layout = RoundLayout.for_model_config(self.format, model_config)
        self.vision = VisionInput(processor, max_pixels=max_pixels, min_pixels=min_pixels, fps=fps)
        self.end_of_turn_id = self.format.end_of_turn_id
        # A long episode's history is tokenized again for every chunk: remember each text's ids.
        self._assistant_ids = lru_cache(maxsize=1 << 16)(self._compute_assistant_ids)

    def _compute_assistant_ids(self, text: str, answer: str) -> tuple[int, ...]:
        return tuple(narration_ids(self.format, text, self.config.max_new_tokens, answer))

    def assistant_ids(self, text: str, answer: str = "") -> list[int]:
        """A second's assistant ids as trained (``narration_ids`` within the budget)."""
        return list(self._assistant_ids(text, answer))

    def previous_text_ids(self, history: Sequence[HistoryItem]) -> list[int]:
        """The ``previous text`` after the seconds ``history``: the initial previous text and
        every earlier second's words (``moved_ids``), cut by the engine's own cache-policy cut.

        Args:
            history: Every earlier second of the stream, in order: its words, or
                ``(words, answer)`` for a second that answered a question.
        """
        ids = list(self.format.initial_previous_text_ids())
        for item in history:
            words, answer = (item, "") if isinstance(item, str) else item
            ids.extend(moved_ids(self.format, self.assistant_ids(words, answer)))
        return cut_previous_text(ids, self.config.cache_policy)

    def render(self, rounds: Sequence[RoundInput], history: Sequence[HistoryItem],
               *, starts_stream: bool) -> ChunkSample:
        """Render consecutive seconds after ``history`` (the seconds before them).

        Args:
            rounds: The chunk's seconds, in order.
            history: Every earlier second of the stream, in order: its words, or
                ``(words, answer)`` (see ``previous_text_ids``).
            starts_stream: The first round is the stream's first (it follows the head
                directly and carries the instruction, as the first round at inference does).
        """
        if not rounds:
            raise ValueError("a chunk needs at least one round")
        if starts_stream and history:
            raise ValueError("a chunk that starts the stream has no previous text")
        contents, pixels, grids = [], [], []
        for index, item in enumerate(rounds):
            block = self.vision.prepare(list(item.frames))
            grid = VideoGrid(*(int(n) for n in block.grid_thw[0]), block.second_per_grid)
            contents.append(RoundContent(item.start, item.end, grid,
                                         self.assistant_ids(item.text, item.answer),
                                         first=starts_stream and index == 0,
                                         question=item.question))
            pixels.append(block.pixel_values)
            grids.append(block.grid_thw)
        # Before its first eviction the cache holds the initial previous text whole.
        previous = None if starts_stream else self.previous_text_ids(history)
        rendered = self.layout.render_stream(contents, previous)
        return ChunkSample(
            input_ids=torch.tensor(rendered.ids, dtype=torch.long),
            position_ids=rendered.positions.clone(),
            labels=loss_labels(rendered, self.end_of_turn_id),
            pixel_values_videos=torch.cat(pixels),
            video_grid_thw=torch.cat(grids),
            rendered=rendered,
        )

    def render_chunk(self, dataset, chunk: Chunk) -> ChunkSample:
        """Render ``chunk`` of a ``SecondsDataset`` (its rows' words, and their questions and
        answers where a row has one)."""
        rounds = []
        for row in chunk.rows:
            second = dataset[row]
            rounds.append(RoundInput(second.start, second.end, list(second.frames), second.text,
                                     second.question, second.answer))
        history = dataset.history(range(chunk.first_row, chunk.rows.start))
        return self.render(rounds, history, starts_stream=chunk.starts_stream)
