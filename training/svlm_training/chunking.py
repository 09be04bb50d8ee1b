"""Chunks of the stream rendered for full-attention SFT, exactly as the streaming cache holds them.

StreamingVLM trains on short overlapping windows (24 s, 12 s overlap) with video and text
interleaved every second and full attention inside the window; all narration before the window
becomes the ``previous text`` block, cut to its first ``text_sink_tokens`` and last
``text_window_tokens`` tokens. Here a window is rendered with the engine's own ``RoundLayout``
(``render_stream``), its previous text cut with the engine's own ``cut_previous_text``, and its
frames patchified with the engine's own ``VisionInput``: the tokens, their 3-D positions and the
vision inputs are those a ``StreamingSession`` puts into its cache for the same seconds.

The loss (``labels``) is on what the model produces at inference and nothing else: the words
and `` ...`` marker of every second (span ``assistant``) and the ``<|im_end|>`` that ends each
assistant turn (the first token of span ``close``). Never on the sink, the previous text, the
time text, the video or the turn framing.

A second's assistant text is its words followed by the end marker (`` ...``), or ``\\n ...``
when silent, tokenized as plain text (a ``<|im_end|>`` typed into a bag's text stays
characters). It is cut to ``max_new_tokens`` tokens as the engine's generation budget cuts it,
keeping the marker: words are shortened so that words plus marker fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from svlm_ros.engine.cache_policy import CachePolicyConfig, cut_previous_text
from svlm_ros.engine.prompt_format import (
    DEFAULT_INSTRUCTION,
    DEFAULT_SYSTEM_PROMPT,
    END_MARKER,
    PromptFormat,
)
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
#: Assistant text of a second in which nothing new happened.
SILENT_TEXT = "\n" + END_MARKER


@dataclass(frozen=True)
class ChunkConfig:
    """How the stream is cut and rendered for training (defaults: StreamingVLM and the node).

    Attributes:
        chunk_seconds: Seconds (rounds) per chunk.
        overlap_seconds: Seconds shared by consecutive chunks of an episode.
        max_new_tokens: The engine's per-second generation budget; longer text is cut.
        text_sink_tokens, text_window_tokens: The previous-text cut, as the cache policy's.
        system_prompt, instruction: The sink, as the node's.
    """

    chunk_seconds: int = 24
    overlap_seconds: int = 12
    max_new_tokens: int = 20
    text_sink_tokens: int = 512
    text_window_tokens: int = 512
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    instruction: str = DEFAULT_INSTRUCTION

    def __post_init__(self):
        if self.chunk_seconds < 1:
            raise ValueError(f"chunk_seconds must be >= 1, got {self.chunk_seconds}")
        if not 0 <= self.overlap_seconds < self.chunk_seconds:
            raise ValueError(
                f"overlap_seconds must be in [0, chunk_seconds), got {self.overlap_seconds} "
                f"with chunk_seconds {self.chunk_seconds}"
            )
        if self.max_new_tokens < 2:
            raise ValueError("max_new_tokens must be >= 2 (a word and the end marker)")

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


def narration_ids(prompt_format: PromptFormat, text: str, max_new_tokens: int) -> list[int]:
    """The assistant ids of one second: words and end marker, at most ``max_new_tokens``."""
    if not text.strip():
        return prompt_format.encode_plain(SILENT_TEXT)[:max_new_tokens]
    ids = prompt_format.encode_plain(text.strip() + END_MARKER)
    if len(ids) <= max_new_tokens:
        return ids
    marker = prompt_format.encode_plain(END_MARKER)
    words = prompt_format.encode_plain(text.strip())
    return words[: max_new_tokens - len(marker)] + marker


def loss_labels(rendered: RenderedTokens, end_of_turn_id: int) -> torch.Tensor:
    """``(n,)`` labels: the token id where the model is trained to produce it, else ``IGNORE``.

    Trained: every ``assistant`` token and the ``<|im_end|>`` opening every ``close`` span.
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
    """One second to render: its period, frames (RGB uint8) and words ('' when silent)."""

    start: float
    end: float
    frames: Sequence[np.ndarray]
    text: str


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
        self.format = PromptFormat(processor.tokenizer, config.system_prompt, config.instruction)
        self.layout = RoundLayout.for_model_config(self.format, model_config)
        self.vision = VisionInput(processor, max_pixels=max_pixels, min_pixels=min_pixels, fps=fps)
        self.end_of_turn_id = self.format.end_of_turn_id

    def assistant_ids(self, text: str) -> list[int]:
        return narration_ids(self.format, text, self.config.max_new_tokens)

    def previous_text_ids(self, texts: Sequence[str]) -> list[int]:
        """All assistant text before a chunk, cut by the engine's own cache-policy cut."""
        ids: list[int] = []
        for text in texts:
            ids.extend(self.assistant_ids(text))
        return cut_previous_text(ids, self.config.cache_policy)

    def render(self, rounds: Sequence[RoundInput], previous_texts: Sequence[str],
               *, starts_stream: bool) -> ChunkSample:
        """Render consecutive seconds after ``previous_texts`` (the narration before them).

        Args:
            rounds: The chunk's seconds, in order.
            previous_texts: Words of every earlier second of the stream, in order.
            starts_stream: The first round is the stream's first (it follows the sink
                directly, as the first round at inference does).
        """
        if not rounds:
            raise ValueError("a chunk needs at least one round")
        if starts_stream and previous_texts:
            raise ValueError("a chunk that starts the stream has no previous text")
        contents, pixels, grids = [], [], []
        for index, item in enumerate(rounds):
            block = self.vision.prepare(list(item.frames))
            grid = VideoGrid(*(int(n) for n in block.grid_thw[0]), block.second_per_grid)
            contents.append(RoundContent(item.start, item.end, grid,
                                         self.assistant_ids(item.text),
                                         first=starts_stream and index == 0))
            pixels.append(block.pixel_values)
            grids.append(block.grid_thw)
        rendered = self.layout.render_stream(contents, self.previous_text_ids(previous_texts))
        return ChunkSample(
            input_ids=torch.tensor(rendered.ids, dtype=torch.long),
            position_ids=rendered.positions.clone(),
            labels=loss_labels(rendered, self.end_of_turn_id),
            pixel_values_videos=torch.cat(pixels),
            video_grid_thw=torch.cat(grids),
            rendered=rendered,
        )

    def render_chunk(self, dataset, chunk: Chunk) -> ChunkSample:
        """Render ``chunk`` of a ``SecondsDataset``."""
        rounds = []
        for row in chunk.rows:
            second = dataset[row]
            rounds.append(RoundInput(second.start, second.end, list(second.frames), second.text))
        history = dataset.texts(range(chunk.first_row, chunk.rows.start))
        return self.render(rounds, history, starts_stream=chunk.starts_stream)
