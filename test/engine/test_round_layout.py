"""The round layout renders exactly what the streaming cache holds, token for token.

Training renders its chunks with ``RoundLayout``; inference feeds the model through the
session. These tests tie the two: positions equal transformers' own ``get_rope_index``, and a
stream run through the session with the assistant's words forced holds, after every round
and through evictions, the very ids and positions the layout renders for the same seconds.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from engine_helpers import SyntheticCamera, make_loaded, small_config

from svlm_ros.engine.cache_policy import cut_previous_text
from svlm_ros.engine.prompt_format import END_MARKER
from svlm_ros.engine.round_layout import (
    ASSISTANT,
    ASSISTANT_HEADER,
    CLOSE,
    INSTRUCTION,
    PREVIOUS_TEXT,
    PREVIOUS_TEXT_CLOSE,
    QUESTION,
    SINK,
    TIME,
    VIDEO,
    RoundContent,
    RoundLayout,
    VideoGrid,
)
from svlm_ros.engine.streaming_session import StreamingSession


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    return make_loaded(tmp_path_factory.mktemp("layout"), layers=1)


def layout_for(loaded, config=None) -> RoundLayout:
    session = StreamingSession(loaded, config or small_config())
    return session.layout


def test_positions_equal_transformers_rope_index(loaded):
    layout = layout_for(loaded)
    grids = [VideoGrid(1, 4, 4, 1.0), VideoGrid(1, 6, 4, 1.0), VideoGrid(2, 8, 8, 1.0),
             VideoGrid(1, 2, 10, 1.0)]
    rounds = [
        RoundContent(float(i), float(i + 1), grid, layout.format.encode_plain(f"word {i}"),
                     first=(i == 0))
        for i, grid in enumerate(grids)
    ]
    rendered = layout.render_stream(rounds)
    input_ids = torch.tensor([rendered.ids])
    token_types = (input_ids == layout.format.video_pad_id).int() * 2
    expected, _ = loaded.model.model.get_rope_index(
        input_ids,
        mm_token_type_ids=token_types,
        video_grid_thw=torch.tensor([[g.t, g.h, g.w] for g in grids]),
        second_per_grid_ts=torch.tensor([g.second_per_grid for g in grids]),
    )
    assert torch.equal(rendered.positions, expected[:, 0, :])
    # A temporal step shows up in the positions: the t=2 block's second frame pair is later.
    video = rendered.mask([VIDEO]) & (input_ids[0] == layout.format.video_pad_id)
    assert len(set(rendered.positions[0, video].tolist())) > len(grids)


def test_spans_cover_every_token_once_and_mask_selects_them(loaded):
    layout = layout_for(loaded)
    fmt = layout.format
    words = fmt.encode_plain(" a red square enters" + END_MARKER)
    rounds = [RoundContent(0.0, 1.0, VideoGrid(1, 4, 4, 1.0), words, first=True),
              RoundContent(1.0, 2.0, VideoGrid(1, 4, 4, 1.0), words, question="what now?")]
    rendered = layout.render_stream(rounds)
    labels = rendered.labels()
    assert len(labels) == len(rendered.ids) == rendered.positions.shape[1]
    covered = sorted(i for span in rendered.spans for i in range(span.start, span.end))
    assert covered == list(range(len(rendered.ids)))
    # The head: the sink, no initial previous text (the default), the previous-text close.
    head = len(layout.sink_ids) + len(layout.previous_text_close_ids)
    assert labels[:head] == ([SINK] * len(layout.sink_ids)
                             + [PREVIOUS_TEXT_CLOSE] * len(layout.previous_text_close_ids))
    assistant = rendered.mask([ASSISTANT])
    assert [rendered.ids[i] for i in assistant.nonzero().flatten().tolist()] == words + words
    assert labels.count(CLOSE) == 2 * len(layout.close_ids)
    assert labels.count(ASSISTANT_HEADER) == 2 * len(fmt.assistant_header_ids())
    assert labels.count(VIDEO) == 2 * (16 // 4 + 2)  # pads plus vision start and end
    # Every round opens its own user turn with the time text.
    time_spans = [s for s in rendered.spans if s.label == TIME]
    assert len(time_spans) == 2
    for span, (start, end) in zip(time_spans, [(0.0, 1.0), (1.0, 2.0)], strict=True):
        assert rendered.ids[span.start : span.end] == (fmt.user_open_ids()
                                                      + fmt.encode_time(start, end))
    # The instruction follows the first round's video, and only the first round's.
    instruction = [s for s in rendered.spans if s.label == INSTRUCTION]
    assert len(instruction) == 1 and rendered.ids[instruction[0].start : instruction[0].end] \
        == fmt.instruction_ids()
    assert labels[instruction[0].start - 1] == VIDEO
    assert labels[instruction[0].end] == ASSISTANT_HEADER
    # The question follows the second round's time text, before its video.
    question = [s for s in rendered.spans if s.label == QUESTION]
    assert len(question) == 1 and question[0].start == time_spans[1].end
    assert rendered.ids[question[0].start : question[0].end] == fmt.question_ids("what now?")
    assert labels[question[0].end] == VIDEO
    # Token for token, the published checkpoint's stream (prompt_format.py's docstring).
    pads = "<|video_pad|>" * 4
    assert fmt.tokenizer.decode(rendered.ids) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>previous text\n<|im_end|>\n"
        f"<|im_start|>user\nTime=0.0-1.0s<|vision_start|>{pads}<|vision_end|>"
        "Commentate on this match<|im_end|>\n"
        "<|im_start|>assistant\n a red square enters ...<|im_end|>\n"
        f"<|im_start|>user\nTime=1.0-2.0s what now?<|vision_start|>{pads}<|vision_end|>"
        "<|im_end|>\n"
        "<|im_start|>assistant\n a red square enters ...<|im_end|>\n"
    )


def test_the_head_holds_the_previous_text_before_its_close(loaded):
    layout = layout_for(loaded, small_config(previous_text="red plays blue"))
    initial = layout.format.encode_plain("red plays blue")
    assert layout.initial_previous_text_ids == initial
    head = layout.render_head()
    sink = len(layout.sink_ids)
    assert head.ids == layout.sink_ids + initial + layout.previous_text_close_ids
    assert head.labels() == ([SINK] * sink + [PREVIOUS_TEXT] * len(initial)
                             + [PREVIOUS_TEXT_CLOSE] * len(layout.previous_text_close_ids))
    assert head.positions.tolist() == [list(range(len(head.ids)))] * 3
    # Given previous text (already cut) replaces the initial one.
    assert layout.render_head([7, 8]).ids == layout.sink_ids + [7, 8] + \
        layout.previous_text_close_ids
    assert layout.head_tokens() == (len(head.ids) + len(layout.format.instruction_ids()))


def test_first_round_only_directly_after_the_head(loaded):
    layout = layout_for(loaded)
    grid = VideoGrid(1, 4, 4, 1.0)
    with pytest.raises(ValueError, match="first round"):
        layout.render_stream([RoundContent(0.0, 1.0, grid),
                              RoundContent(1.0, 2.0, grid, first=True)])
    # The head may hold previous text (StreamConfig.previous_text): the first round follows it.
    rendered = layout.render_stream([RoundContent(0.0, 1.0, grid, first=True)],
                                    previous_text_ids=[5])
    assert rendered.ids[len(layout.sink_ids)] == 5
    assert rendered.labels().count(INSTRUCTION) == len(layout.format.instruction_ids())
    # A later round carries no instruction.
    later = layout.render_stream([RoundContent(1.0, 2.0, grid)], previous_text_ids=[5])
    assert INSTRUCTION not in later.labels()
    with pytest.raises(ValueError, match="merge"):
        layout.video_tokens(VideoGrid(1, 3, 4, 1.0))


def forced_words(layout: RoundLayout, rng: np.random.Generator, budget: int) -> list[int]:
    """A second's narration as the model would write it: words then the end marker,
    sometimes only the marker (a silent second), at most ``budget`` tokens."""
    vocabulary = ["red", "square", "enters", "from", "the", "left", "a", "blue", "circle",
                  "stops", "moves"]
    count = int(rng.integers(0, 6))
    words = " ".join(rng.choice(vocabulary, count)) if count else ""
    ids = layout.format.encode_plain((" " + words if words else "") + END_MARKER)
    return ids[:budget]


def moved_words(layout: RoundLayout, assistant_ids: list[int]) -> list[int]:
    """What StreamingVLM moves to the previous text when a second leaves the window: its text
    without as many last tokens as the end marker has (positionally, marker or not)."""
    return list(assistant_ids[: max(0, len(assistant_ids) - len(layout.format.end_marker_ids()))])


@pytest.mark.parametrize("window,text_sink,text_window,previous_text", [
    (3, 6, 10, ""), (2, 0, 7, ""), (4, 30, 30, ""), (2, 4, 8, "red plays blue in the final")])
def test_teacher_forced_stream_equals_layout_token_for_token(
    loaded, window, text_sink, text_window, previous_text
):
    config = small_config(window=window, text_sink=text_sink, text_window=text_window,
                          previous_text=previous_text)
    session = StreamingSession(loaded, config)
    layout = session.layout
    initial = layout.format.encode_plain(previous_text) if previous_text else []
    assert layout.initial_previous_text_ids == initial
    rng = np.random.default_rng(window)
    camera = SyntheticCamera(seed=window)
    history: list[RoundContent] = []
    checked_evictions = questions = 0
    for image, stamp in camera.frames(14.0):
        if camera.stamp > 1006.0:  # mid-stream the camera changes size: rounds differ in shape
            camera.size = (140, 84)
        session.add_frame(image, stamp)
        second, _ = session.sampler.pop_ready()
        if second is None:
            continue
        words = forced_words(layout, rng, config.max_new_tokens)
        # Now and then a question in the second (one at a time in the window, as allowed).
        question = "what moves?" if len(history) % (window + 1) == 1 else ""
        result = session.run_round(second, forced_ids=words, question=question)
        questions += bool(question)
        assert result.generated_tokens == len(words)
        grid = session.vision.prepare(second.frames).grid_thw[0].tolist()
        history.append(RoundContent(second.start, second.end,
                                    VideoGrid(*grid, session.vision.temporal_patch / config.fps),
                                    words, first=not history, question=question))
        held = len(session.policy.rounds)
        evicted = history[: len(history) - held]
        previous = (initial if not evicted else cut_previous_text(
            initial + [token for content in evicted
                       for token in moved_words(layout, content.assistant_ids)], config.cache))
        rendered = layout.render_stream(history[len(history) - held:], previous)
        assert rendered.ids == session.policy.token_ids.tolist(), f"round {len(history)}"
        assert torch.equal(rendered.positions, session.policy.positions), f"round {len(history)}"
        assert session.cache.length == len(rendered.ids)
        assert sum(s.length for s in rendered.spans if s.label == PREVIOUS_TEXT) == len(previous)
        # The instruction is held exactly while the first second is.
        assert (INSTRUCTION in rendered.labels()) == (not evicted)
        checked_evictions += bool(evicted)
    assert len(history) >= 12 and questions >= 3
    assert checked_evictions >= len(history) - window  # evictions happened and were checked
    assert session.policy.dropped_text_tokens > 0 or text_sink + text_window >= 30
    # Both end-of-text cases occurred: words that ended with the marker and words cut by the
    # budget (whose last word, not a marker, stays behind).
    marker = layout.format.end_marker_ids()
    assert any(c.assistant_ids[-len(marker):] == marker for c in history)
    assert any(c.assistant_ids[-len(marker):] != marker for c in history)
