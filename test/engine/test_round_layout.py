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
    CLOSE,
    PREVIOUS_TEXT,
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
    words = layout.format.encode_plain("a red square enters" + END_MARKER)
    rounds = [RoundContent(0.0, 1.0, VideoGrid(1, 4, 4, 1.0), words, first=True),
              RoundContent(1.0, 2.0, VideoGrid(1, 4, 4, 1.0), words)]
    rendered = layout.render_stream(rounds)
    labels = rendered.labels()
    assert len(labels) == len(rendered.ids) == rendered.positions.shape[1]
    covered = sorted(i for span in rendered.spans for i in range(span.start, span.end))
    assert covered == list(range(len(rendered.ids)))
    assert labels[: len(layout.sink_ids)] == [SINK] * len(layout.sink_ids)
    assistant = rendered.mask([ASSISTANT])
    assert [rendered.ids[i] for i in assistant.nonzero().flatten().tolist()] == words + words
    assert labels.count(CLOSE) == 2 * len(layout.close_ids)
    assert labels.count(VIDEO) == 2 * (16 // 4 + 2)  # pads plus vision start and end
    # The first round follows the sink directly; the second opens its own user turn.
    time_spans = [s for s in rendered.spans if s.label == TIME]
    assert time_spans[1].length - time_spans[0].length == len(layout.format.encode(
        "<|im_start|>user\n"))


def test_first_round_only_directly_after_the_sink(loaded):
    layout = layout_for(loaded)
    grid = VideoGrid(1, 4, 4, 1.0)
    with pytest.raises(ValueError, match="first round"):
        layout.render_stream([RoundContent(0.0, 1.0, grid, first=True)], previous_text_ids=[5])
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


@pytest.mark.parametrize("window,text_sink,text_window", [(3, 6, 10), (2, 0, 7), (4, 30, 30)])
def test_teacher_forced_stream_equals_layout_token_for_token(
    loaded, window, text_sink, text_window
):
    config = small_config(window=window, text_sink=text_sink, text_window=text_window)
    session = StreamingSession(loaded, config)
    layout = session.layout
    rng = np.random.default_rng(window)
    camera = SyntheticCamera(seed=window)
    history: list[RoundContent] = []
    checked_evictions = 0
    for image, stamp in camera.frames(14.0):
        if camera.stamp > 1006.0:  # mid-stream the camera changes size: rounds differ in shape
            camera.size = (140, 84)
        session.add_frame(image, stamp)
        second, _ = session.sampler.pop_ready()
        if second is None:
            continue
        words = forced_words(layout, rng, config.max_new_tokens)
        result = session.run_round(second, forced_ids=words)
        assert result.generated_tokens == len(words)
        grid = session.vision.prepare(second.frames).grid_thw[0].tolist()
        history.append(RoundContent(second.start, second.end,
                                    VideoGrid(*grid, session.vision.temporal_patch / config.fps),
                                    words, first=not history))
        held = len(session.policy.rounds)
        evicted = history[: len(history) - held]
        previous = cut_previous_text(
            [token for content in evicted for token in content.assistant_ids], config.cache
        )
        rendered = layout.render_stream(history[len(history) - held:], previous)
        assert rendered.ids == session.policy.token_ids.tolist(), f"round {len(history)}"
        assert torch.equal(rendered.positions, session.policy.positions), f"round {len(history)}"
        assert session.cache.length == len(rendered.ids)
        assert sum(s.length for s in rendered.spans if s.label == PREVIOUS_TEXT) == len(previous)
        checked_evictions += bool(evicted)
    assert len(history) >= 12
    assert checked_evictions >= len(history) - window  # evictions happened and were checked
    assert session.policy.dropped_text_tokens > 0 or text_sink + text_window >= 30
