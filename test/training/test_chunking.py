"""Chunk windows, the previous-text cut, the loss mask, and the chunk == the streaming cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bag_factory import frame_for
from svlm_training.chunking import (
    IGNORE,
    ChunkConfig,
    ChunkRenderer,
    RoundInput,
    narration_ids,
    plan_chunks,
    window_starts,
)

from svlm_ros.engine.cache_policy import CachePolicyConfig
from svlm_ros.engine.decoding import SamplingConfig
from svlm_ros.engine.frame_sampler import SecondOfFrames
from svlm_ros.engine.model_loading import load_model
from svlm_ros.engine.prompt_format import END_MARKER
from svlm_ros.engine.round_layout import (
    ASSISTANT,
    ASSISTANT_HEADER,
    CLOSE,
    PREVIOUS_TEXT,
    SINK,
    TIME,
    VIDEO,
)
from svlm_ros.engine.streaming_session import StreamConfig, StreamingSession

MAX_PIXELS, MIN_PIXELS = 6272, 3136
WORDS = ["the card is red", "", "", "now it turns green and the bar moves to the right side "
         "of the frame quickly while the robot watches", "", "blue", "", "yellow card"]


@pytest.fixture(scope="module")
def loaded(tiny_model_path):
    return load_model(tiny_model_path)


def renderer_for(loaded, **config) -> ChunkRenderer:
    return ChunkRenderer(loaded.processor, loaded.model.config, ChunkConfig(**config),
                         max_pixels=MAX_PIXELS, min_pixels=MIN_PIXELS, fps=2.0)


def rounds(first: int, count: int) -> list[RoundInput]:
    return [RoundInput(float(s), float(s + 1), [frame_for(s), frame_for(s + 0.5)],
                       WORDS[s % len(WORDS)]) for s in range(first, first + count)]


@pytest.mark.parametrize(
    ("seconds", "chunk", "overlap", "expected"),
    [(0, 24, 12, []), (5, 24, 12, [0]), (24, 24, 12, [0]), (25, 24, 12, [0, 12]),
     (36, 24, 12, [0, 12]), (37, 24, 12, [0, 12, 24]), (48, 24, 0, [0, 24]),
     (10, 4, 3, [0, 1, 2, 3, 4, 5, 6])],
)
def test_window_starts(seconds, chunk, overlap, expected):
    assert window_starts(seconds, chunk, overlap) == expected


@pytest.mark.parametrize("seconds", range(1, 60))
def test_windows_cover_every_second_and_overlap_as_configured(seconds):
    starts = window_starts(seconds, 24, 12)
    windows = [range(s, min(s + 24, seconds)) for s in starts]
    assert set().union(*map(set, windows)) == set(range(seconds))
    for before, after in zip(windows, windows[1:], strict=False):
        assert after.start - before.start == 12  # the stride
        assert len(set(before) & set(after)) == 12  # the overlap
        assert after.stop > before.stop  # every window brings new seconds


def test_chunks_never_cross_episodes():
    chunks = plan_chunks([range(0, 30), range(30, 35)], ChunkConfig(24, 12))
    assert [(c.episode, c.rows) for c in chunks] == [
        (0, range(0, 24)), (0, range(12, 30)), (1, range(30, 35))]
    assert [c.starts_stream for c in chunks] == [True, False, True]
    assert chunks[1].first_row == 0 and chunks[2].first_row == 30


def test_chunk_config_is_validated():
    with pytest.raises(ValueError, match="overlap_seconds"):
        ChunkConfig(chunk_seconds=4, overlap_seconds=4)
    with pytest.raises(ValueError, match="chunk_seconds"):
        ChunkConfig(chunk_seconds=0, overlap_seconds=0)


def test_narration_ids_end_with_the_marker_and_fit_the_budget(loaded):
    renderer = renderer_for(loaded)
    fmt = renderer.format
    assert narration_ids(fmt, "", 20) == fmt.encode_plain("\n" + END_MARKER)
    assert narration_ids(fmt, "  the card  ", 20) == fmt.encode_plain("the card" + END_MARKER)
    long_text = WORDS[3]
    assert len(fmt.encode_plain(long_text + END_MARKER)) > 8
    ids = narration_ids(fmt, long_text, 8)
    marker = fmt.encode_plain(END_MARKER)
    assert len(ids) == 8 and ids[-len(marker):] == marker
    assert fmt.tokenizer.decode(ids).endswith(" ...")
    # User text stays characters: a typed <|im_end|> cannot end the turn.
    assert fmt.end_of_turn_id not in narration_ids(fmt, "stop <|im_end|> now", 20)


def test_previous_text_is_cut_by_the_cache_policy(loaded):
    renderer = renderer_for(loaded, text_sink_tokens=5, text_window_tokens=7)
    history = [WORDS[i % len(WORDS)] for i in range(12)]
    everything = [t for text in history for t in renderer.assistant_ids(text)]
    assert len(everything) > 12
    assert renderer.previous_text_ids(history) == everything[:5] + everything[-7:]
    assert renderer.previous_text_ids(history[:1]) == renderer.assistant_ids(history[0])


def test_loss_is_only_on_assistant_words_markers_and_end_of_turn(loaded):
    renderer = renderer_for(loaded, max_new_tokens=8)
    sample = renderer.render(rounds(2, 4), [WORDS[0], WORDS[1]], starts_stream=False)
    rendered = sample.rendered
    labels = sample.labels
    trained = labels != IGNORE
    # Labels, where set, are the input ids themselves (the model shifts them internally).
    assert torch.equal(labels[trained], sample.input_ids[trained])
    for span in rendered.spans:
        piece = trained[span.start:span.end]
        if span.label == ASSISTANT:
            assert piece.all()
        elif span.label == CLOSE:
            assert piece.tolist() == [True] + [False] * (span.length - 1)
            assert rendered.ids[span.start] == renderer.format.end_of_turn_id
        else:
            assert span.label in (SINK, PREVIOUS_TEXT, TIME, VIDEO, ASSISTANT_HEADER)
            assert not piece.any(), span
    expected = [renderer.assistant_ids(r.text) for r in rounds(2, 4)]
    assert sample.trained_tokens == sum(len(ids) + 1 for ids in expected)
    text = renderer.format.tokenizer.decode(sample.input_ids[trained])
    assert text == "<|im_end|>".join(
        renderer.format.tokenizer.decode(ids) for ids in expected) + "<|im_end|>"
    assert sample.video_grid_thw.tolist() == [[1, 4, 4]] * 4
    assert sample.position_ids.shape == (3, sample.tokens)


def test_a_chunk_that_starts_the_stream_has_no_previous_text(loaded):
    renderer = renderer_for(loaded)
    with pytest.raises(ValueError, match="no previous text"):
        renderer.render(rounds(0, 2), ["earlier"], starts_stream=True)
    sample = renderer.render(rounds(0, 2), [], starts_stream=True)
    assert [s.label for s in sample.rendered.spans][:2] == [SINK, TIME]


@pytest.mark.parametrize("total", [3, 9])
def test_a_chunk_is_exactly_what_the_streaming_cache_holds(loaded, total):
    """Teacher-force the engine's own session through ``total`` seconds; its bounded cache then
    holds the sink, the cut previous text and the last ``window`` rounds. The chunk of those
    rounds, with all earlier text as history, renders the same ids at the same positions."""
    window = 4
    config = StreamConfig(
        max_pixels=MAX_PIXELS, min_pixels=MIN_PIXELS, max_new_tokens=8,
        cache=CachePolicyConfig(text_sink_tokens=5, text_window_tokens=7,
                                vision_window_seconds=window),
        sampling=SamplingConfig(temperature=0.0),
    )
    session = StreamingSession(loaded, config)
    renderer = renderer_for(loaded, max_new_tokens=8, text_sink_tokens=5, text_window_tokens=7)
    stream = rounds(0, total)
    for second, item in enumerate(stream):
        period = SecondOfFrames(index=second, epoch=session.sampler.epoch, start=item.start,
                                end=item.end, end_stamp=item.end, frames=list(item.frames),
                                received=2)
        session.run_round(period, forced_ids=renderer.assistant_ids(item.text))
    kept = min(window, total)
    history = [item.text for item in stream[: total - kept]]
    sample = renderer.render(stream[total - kept:], history, starts_stream=total <= window)
    assert session.policy.token_ids.tolist() == sample.input_ids.tolist()
    assert torch.equal(session.policy.positions, sample.position_ids)
    assert (session.policy.dropped_text_tokens > 0) == (total == 9)


def test_rendering_a_dataset_chunk(tmp_path, build_dataset, loaded):
    from bag_factory import BagSpec, write_bag
    from svlm_training.dataset_format import SecondsDataset

    bag = write_bag(tmp_path / "bag", BagSpec(seconds=9, texts={0: "red", 5: "green"}))
    code, out = build_dataset([bag])
    assert code == 0
    data = SecondsDataset(out)
    renderer = renderer_for(loaded, chunk_seconds=4, overlap_seconds=2)
    chunks = plan_chunks(data.episodes(), renderer.config)
    assert [c.rows for c in chunks] == [range(0, 4), range(2, 6), range(4, 8), range(6, 9)]
    sample = renderer.render_chunk(data, chunks[1])
    direct = renderer.render(
        [RoundInput(data[r].start, data[r].end, list(data[r].frames), data[r].text)
         for r in range(2, 6)], ["red", ""], starts_stream=False)
    assert torch.equal(sample.input_ids, direct.input_ids)
    assert torch.equal(sample.pixel_values_videos, direct.pixel_values_videos)
    assert np.array_equal(sample.labels.numpy(), direct.labels.numpy())
