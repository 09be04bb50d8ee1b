"""The round layout: a stretch of stream rendered to token ids, 3-D positions and labelled spans.

This is the one place that decides what the model sees, token by token, and where each token
sits in Qwen2.5-VL's multimodal rotary space (M-RoPE: temporal, height, width). It needs no
model, only the prompt format and two numbers of the model config, so the streaming session
(one round at a time, into its cache) and the SFT chunker (a whole chunk at once, for full
attention) render the very same tokens at the very same positions.

A stream in the cache reads (the format is ``prompt_format.py``'s)::

    [sink][previous text][previous-text close][round][round]...   (an asked question and its
                                                                  answer, only while asked)

where the sink is the system turn and the ``previous text`` turn's opening, and one round is::

    time:              <|im_start|>user\\n Time=12.0-13.0s
    question:          " {question}"                       (only a round asked a question)
    video:             <|vision_start|> <|video_pad|> x N <|vision_end|>
    instruction:       the task instruction                (only the stream's first round)
    assistant_header:  <|im_end|>\\n<|im_start|>assistant\\n
    assistant:         [answer\\n] the words and the " ..." end marker
    close:             <|im_end|>\\n

Positions: text tokens take one position each, the same on all three axes, counting on from
one past the largest position before them. A video block of ``t x h x w`` merged patches
takes ``(t_index, h_index, w_index)`` offsets from the position that follows the text before
it, with ``t_index = floor(frame_group * second_per_grid * tokens_per_second)``; the text after
it continues one past the block's largest coordinate. These are exactly the positions
transformers' ``get_rope_index`` computes for the same sequence (tested), and, because the
cache policy keeps positions gap-free, exactly what a streaming cache holds after evictions.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import torch

from svlm_ros.engine.prompt_format import PromptFormat

SINK = "sink"
PREVIOUS_TEXT = "previous_text"
PREVIOUS_TEXT_CLOSE = "previous_text_close"
TIME = "time"
INSTRUCTION = "instruction"
VIDEO = "video"
ASSISTANT_HEADER = "assistant_header"
ASSISTANT = "assistant"
CLOSE = "close"
QUESTION = "question"

#: Span labels whose tokens the model is trained to produce (the SFT loss mask).
GENERATED_LABELS = frozenset({ASSISTANT})


@dataclass(frozen=True)
class Span:
    """Tokens ``[start, end)`` of a rendering, all of one kind (``label``)."""

    label: str
    start: int
    end: int

    @property
    def length(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class VideoGrid:
    """The shape of one round's video block, as the vision encoder reports it.

    Attributes:
        t, h, w: Patches along time (frame pairs), height and width, before spatial merging.
        second_per_grid: Seconds of stream per temporal patch.
    """

    t: int
    h: int
    w: int
    second_per_grid: float

    def merged(self, merge: int) -> tuple[int, int, int]:
        if self.h % merge or self.w % merge:
            raise ValueError(f"video grid {self.h}x{self.w} is not a multiple of merge {merge}")
        return self.t, self.h // merge, self.w // merge


@dataclass(frozen=True)
class RoundContent:
    """What one round of the stream holds, for rendering.

    Attributes:
        start, end: Stream time (s) of the period; they make the time text.
        grid: The video block's shape.
        assistant_ids: The narration as the model produced (or must learn to produce) it:
            [answer and newline,] words and end marker, without the turn close.
        first: The stream's first round, which carries the instruction after its video.
        question: A question asked in this second ('' for none): it follows the time text.
    """

    start: float
    end: float
    grid: VideoGrid
    assistant_ids: Sequence[int] = ()
    first: bool = False
    question: str = ""


@dataclass
class RenderedTokens:
    """Token ids, their ``(3, n)`` positions and labelled spans covering every token once."""

    ids: list[int] = field(default_factory=list)
    positions: torch.Tensor = field(default_factory=lambda: torch.zeros(3, 0, dtype=torch.long))
    spans: list[Span] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def next_position(self) -> int:
        """One past the largest position held (where following text starts)."""
        return int(self.positions.max()) + 1 if self.ids else 0

    def labels(self) -> list[str]:
        """The label of every token, in order."""
        out: list[str] = []
        for span in self.spans:
            out.extend([span.label] * span.length)
        return out

    def mask(self, labels: Iterable[str]) -> torch.Tensor:
        """A bool ``(n,)`` mask, True on tokens whose span label is in ``labels``."""
        wanted = set(labels)
        mask = torch.zeros(len(self.ids), dtype=torch.bool)
        for span in self.spans:
            if span.label in wanted:
                mask[span.start : span.end] = True
        return mask

    def extend(self, other: RenderedTokens) -> RenderedTokens:
        """Append ``other`` (already positioned) in place and return self."""
        offset = len(self.ids)
        self.ids.extend(other.ids)
        self.positions = torch.cat([self.positions, other.positions], dim=1)
        self.spans.extend(Span(s.label, s.start + offset, s.end + offset) for s in other.spans)
        return self


class _Builder:
    """Accumulates labelled pieces at consecutive positions."""

    def __init__(self, position: int):
        self.rendered = RenderedTokens()
        self.position = position

    def text(self, label: str, ids: Sequence[int]) -> None:
        if not ids:
            return
        n = len(ids)
        positions = torch.arange(self.position, self.position + n).expand(3, -1)
        self._add(label, list(ids), positions)
        self.position += n

    def block(self, label: str, ids: Sequence[int], positions: torch.Tensor) -> None:
        self._add(label, list(ids), positions)
        self.position = int(positions.max()) + 1

    def _add(self, label: str, ids: list[int], positions: torch.Tensor) -> None:
        start = len(self.rendered.ids)
        self.rendered.ids.extend(ids)
        self.rendered.positions = torch.cat([self.rendered.positions, positions], dim=1)
        spans = self.rendered.spans
        if spans and spans[-1].label == label and spans[-1].end == start:
            spans[-1] = Span(label, spans[-1].start, start + len(ids))
        else:
            spans.append(Span(label, start, start + len(ids)))


class RoundLayout:
    """Renders sink, previous text, rounds and questions for one tokenizer and model config.

    Args:
        prompt_format: The turn format (token ids of every text piece).
        spatial_merge_size: Patches merged per side into one video token (2 for Qwen2.5-VL).
        tokens_per_second: Temporal rotary steps per second of video (the vision config's
            ``tokens_per_second``, 2 for Qwen2.5-VL).
    """

    def __init__(self, prompt_format: PromptFormat, *, spatial_merge_size: int,
                 tokens_per_second: float):
        if spatial_merge_size < 1 or tokens_per_second <= 0:
            raise ValueError("spatial_merge_size must be >= 1 and tokens_per_second > 0")
        self.format = prompt_format
        self.merge = spatial_merge_size
        self.tokens_per_second = tokens_per_second
        fmt = prompt_format
        self._user_open = fmt.user_open_ids()
        self._vision_start = fmt.token_id("<|vision_start|>")
        self._vision_end = fmt.token_id("<|vision_end|>")
        self._assistant_header = fmt.assistant_header_ids()
        self._instruction = fmt.instruction_ids()
        self.sink_ids = fmt.sink_ids()
        self.initial_previous_text_ids = fmt.initial_previous_text_ids()
        self.previous_text_close_ids = fmt.previous_text_close_ids()
        self.close_ids = fmt.close_ids()

    @classmethod
    def for_model_config(cls, prompt_format: PromptFormat, model_config) -> RoundLayout:
        """The layout for a Qwen2.5-VL config (``model.config`` or ``AutoConfig``)."""
        vision = model_config.vision_config
        return cls(
            prompt_format,
            spatial_merge_size=int(vision.spatial_merge_size),
            tokens_per_second=float(getattr(vision, "tokens_per_second", 2)),
        )

    # ----- pieces ---------------------------------------------------------------------------
    def video_tokens(self, grid: VideoGrid) -> int:
        t, h, w = grid.merged(self.merge)
        return t * h * w

    def framing_tokens(self) -> int:
        """Tokens of a later round's prompt besides time text and video pads."""
        return len(self._user_open) + 2 + len(self._assistant_header)

    def head_tokens(self) -> int:
        """Tokens that come with the stream's first round besides its prompt: the sink, the
        initial previous text, the previous-text close and the instruction."""
        return (len(self.sink_ids) + len(self.initial_previous_text_ids)
                + len(self.previous_text_close_ids) + len(self._instruction))

    def video_positions(self, grid: VideoGrid, position: int) -> torch.Tensor:
        """``(3, t*h*w)`` positions of a video block whose first token sits at ``position``."""
        t, h, w = grid.merged(self.merge)
        steps = [math.floor(i * grid.second_per_grid * self.tokens_per_second) for i in range(t)]
        t_index = torch.tensor(steps, dtype=torch.long).view(-1, 1, 1).expand(t, h, w)
        h_index = torch.arange(h).view(1, -1, 1).expand(t, h, w)
        w_index = torch.arange(w).view(1, 1, -1).expand(t, h, w)
        return torch.stack([t_index.flatten(), h_index.flatten(), w_index.flatten()]) + position

    def render_head(self, previous_text_ids: Sequence[int] | None = None) -> RenderedTokens:
        """The stream's head at positions 0, 1, ...: the sink, the ``previous text`` (already
        cut to the text windows; default: the initial previous text) and its close."""
        if previous_text_ids is None:
            previous_text_ids = self.initial_previous_text_ids
        builder = _Builder(0)
        builder.text(SINK, self.sink_ids)
        builder.text(PREVIOUS_TEXT, previous_text_ids)
        builder.text(PREVIOUS_TEXT_CLOSE, self.previous_text_close_ids)
        return builder.rendered

    def render_prompt(self, start: float, end: float, grid: VideoGrid, position: int, *,
                      first: bool, question: str = "") -> RenderedTokens:
        """A round's user turn up to the assistant header, at ``position``.

        ``first`` adds the instruction after the video; ``question`` follows the time text.
        """
        builder = _Builder(position)
        builder.text(TIME, self._user_open + self.format.encode_time(start, end))
        if question:
            builder.text(QUESTION, self.format.question_ids(question))
        builder.text(VIDEO, [self._vision_start])
        video_ids = [self.format.video_pad_id] * self.video_tokens(grid)
        builder.block(VIDEO, video_ids, self.video_positions(grid, builder.position))
        builder.text(VIDEO, [self._vision_end])
        if first:
            builder.text(INSTRUCTION, self._instruction)
        builder.text(ASSISTANT_HEADER, self._assistant_header)
        return builder.rendered

    def render_assistant(self, ids: Sequence[int], position: int) -> RenderedTokens:
        """Assistant words (and end marker) followed by the turn close, at ``position``."""
        builder = _Builder(position)
        builder.text(ASSISTANT, ids)
        builder.text(CLOSE, self.close_ids)
        return builder.rendered

    def render_generated(self, token: int, position: int) -> RenderedTokens:
        """One decoded assistant token at ``position`` (the per-token step of generation)."""
        return RenderedTokens([token], torch.full((3, 1), position, dtype=torch.long),
                              [Span(ASSISTANT, 0, 1)])

    def render_question(self, question: str, start: float, end: float,
                        position: int) -> RenderedTokens:
        """A question asked between seconds (``ask``): a user turn of the time text of the
        period ``start``-``end`` and the question, without video, up to the assistant header.
        """
        builder = _Builder(position)
        builder.text(QUESTION, self._user_open + self.format.encode_time(start, end)
                     + self.format.question_ids(question))
        builder.text(ASSISTANT_HEADER, self._assistant_header)
        return builder.rendered

    # ----- whole stretches ----------------------------------------------------------------
    def render_round(self, content: RoundContent, position: int) -> RenderedTokens:
        """One complete round (prompt, assistant words, close) at ``position``."""
        rendered = self.render_prompt(content.start, content.end, content.grid, position,
                                      first=content.first, question=content.question)
        return rendered.extend(self.render_assistant(content.assistant_ids,
                                                     rendered.next_position))

    def render_stream(self, rounds: Sequence[RoundContent],
                      previous_text_ids: Sequence[int] | None = None) -> RenderedTokens:
        """The head and whole rounds, as a bounded cache holds them.

        ``previous_text_ids`` must already be cut to the text windows
        (``cache_policy.cut_previous_text``; default: the initial previous text); only the
        stream's first round may have ``first``.
        """
        rendered = self.render_head(previous_text_ids)
        for index, content in enumerate(rounds):
            if content.first and index:
                raise ValueError("only a round directly after the head can be the first round")
            rendered.extend(self.render_round(content, rendered.next_position))
        return rendered
