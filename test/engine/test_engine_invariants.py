"""Invariants of a streaming session over a real tiny model, and its answers to bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from engine_helpers import SyntheticCamera, small_config, stream

from svlm_ros.engine.decoding import SamplingConfig
from svlm_ros.engine.frame_sampler import MAX_STREAM_SECONDS, FrameRejected
from svlm_ros.engine.model_loading import load_model
from svlm_ros.engine.round_layout import RoundContent, VideoGrid
from svlm_ros.engine.streaming_session import (
    GenerationInterrupted,
    QuestionTooLong,
    StreamingSession,
)


def snapshot(session: StreamingSession):
    """Everything the stream depends on: live keys/values of every layer and the policy."""
    length = session.cache.length
    layers = [(layer.keys[:, :, :length].clone(), layer.values[:, :, :length].clone())
              for layer in session.cache.layers]
    policy = session.policy
    return (layers, policy.token_ids.clone(), policy.positions.clone(),
            [(r.stream_second, r.length) for r in policy.rounds], policy.previous_text_tokens)


def assert_same_snapshot(before, after):
    assert len(before[0]) == len(after[0])
    for (k0, v0), (k1, v1) in zip(before[0], after[0], strict=True):
        assert torch.equal(k0, k1) and torch.equal(v0, v1)
    assert torch.equal(before[1], after[1]) and torch.equal(before[2], after[2])
    assert before[3:] == after[3:]


@pytest.mark.parametrize(
    "rounds", [150, pytest.param(1000, marks=pytest.mark.slow)], ids=["150", "1000"]
)
def test_many_rounds_bound_sink_window_and_positions(two_layer, rounds):
    config = small_config(window=4, text_sink=8, text_window=12, max_pixels=56 * 56,
                          max_new_tokens=3)
    session = StreamingSession(two_layer, config)
    camera = SyntheticCamera(seed=5, size=(60, 80), rate=4.0)
    sink_snapshot = []

    def check(second, result):
        policy = session.policy
        assert session.cache.length == policy.length == result.cache_tokens
        assert result.cache_tokens <= session.bound
        assert len(policy.rounds) <= 4
        assert policy.rounds[-1].stream_second == second.start  # the newest round is held
        # Gap-free: each text token one past the previous block; blocks never overlap.
        ends = policy.positions.max(dim=0).values
        starts = policy.positions.min(dim=0).values
        assert bool((starts[1:] <= ends[:-1] + 1).all())
        assert bool((starts[1:] >= starts[:-1]).all())
        if not sink_snapshot:
            sink = policy.sink_tokens
            sink_snapshot.extend((layer.keys[:, :, :sink].clone(), layer.values[:, :, :sink]
                                  .clone()) for layer in session.cache.layers)

    results = stream(session, camera, rounds + 0.5, on_round=check)
    assert len(results) == rounds
    assert session.policy.evicted_rounds == rounds - 4
    assert session.policy.dropped_text_tokens > 0
    sink = session.policy.sink_tokens
    for layer, (keys, values) in zip(session.cache.layers, sink_snapshot, strict=True):
        assert torch.equal(layer.keys[:, :, :sink], keys)  # bit-exact after every round
        assert torch.equal(layer.values[:, :, :sink], values)
    # Flat: the same number of tokens is held once the windows are full.
    steady = [r.cache_tokens for r in results[-100:]]
    assert max(steady) - min(steady) <= 4 * 3  # only generated-text lengths vary


def test_ask_leaves_the_stream_bit_identical(two_layer):
    sampled = SamplingConfig(temperature=0.9, repetition_penalty=1.05, seed=3)
    with_ask = StreamingSession(two_layer, small_config(window=2, sampling=sampled))
    without = StreamingSession(two_layer, small_config(window=2, sampling=sampled))
    stream(with_ask, SyntheticCamera(seed=2), 4.5)
    stream(without, SyntheticCamera(seed=2), 4.5)
    before = snapshot(with_ask)
    answer = with_ask.ask("What is on the table?")
    assert 0 < answer.answer_tokens <= with_ask.config.max_answer_tokens
    assert answer.question_tokens == len(with_ask.format.question_ids("What is on the table?"))
    assert_same_snapshot(before, snapshot(with_ask))
    assert with_ask.cache_tokens == before[1].numel()
    # The narration afterwards is exactly what it would have been without the question.
    after_ask = stream(with_ask, SyntheticCamera(seed=2, start_stamp=1004.5), 3.0)
    reference = stream(without, SyntheticCamera(seed=2, start_stamp=1004.5), 3.0)
    assert [r.text for r in after_ask] == [r.text for r in reference]
    assert_same_snapshot(snapshot(with_ask), snapshot(without))


def test_same_seed_reproduces_and_greedy_is_deterministic(two_layer):
    def narrate(config):
        session = StreamingSession(two_layer, config)
        return [r.text for r in stream(session, SyntheticCamera(seed=4), 4.5)]

    sampled = small_config(sampling=SamplingConfig(temperature=1.0, top_p=0.9, seed=1))
    assert narrate(sampled) == narrate(sampled)
    other_seed = small_config(sampling=SamplingConfig(temperature=1.0, top_p=0.9, seed=2))
    assert narrate(sampled) != narrate(other_seed)
    assert narrate(small_config()) == narrate(small_config())


def test_reset_starts_over(two_layer):
    session = StreamingSession(two_layer, small_config())
    stream(session, SyntheticCamera(seed=1), 3.5)
    session.reset()
    assert session.cache_tokens == 0 and session.policy.length == 0
    results = stream(session, SyntheticCamera(seed=1, start_stamp=50.0), 1.5)
    assert results[0].start == 0.0


@pytest.mark.parametrize(
    "image,reason",
    [
        (np.zeros((0, 0, 3), np.uint8), "empty"),
        (np.zeros((48, 64, 3), np.float32), "dtype"),
        (np.zeros((48, 64), np.uint8), "shape"),
        (np.zeros((48, 64, 4), np.uint8), "shape"),
        ([[0, 0, 0]], "numpy array"),
    ],
)
def test_bad_frames_are_rejected_without_touching_the_stream(two_layer, image, reason):
    session = StreamingSession(two_layer, small_config())
    camera = SyntheticCamera(seed=9)
    stream(session, camera, 2.5)
    before = snapshot(session)
    with pytest.raises(FrameRejected, match=reason):
        session.add_frame(image, camera.stamp)
    assert_same_snapshot(before, snapshot(session))
    assert len(stream(session, camera, 1.0)) == 1  # the stream goes on


def test_stamps_going_backwards_are_rejected_and_stream_continues(two_layer):
    session = StreamingSession(two_layer, small_config())
    camera = SyntheticCamera(seed=9)
    stream(session, camera, 2.5)
    frame = np.zeros((48, 64, 3), np.uint8)
    with pytest.raises(FrameRejected, match="backwards"):
        session.add_frame(frame, camera.stamp - 1.0)
    with pytest.raises(FrameRejected, match="finite"):
        session.add_frame(frame, float("nan"))
    results = stream(session, camera, 1.0)
    assert [r.start for r in results] == [2.0]


def test_gap_of_minutes_resumes_at_true_stream_time(two_layer):
    session = StreamingSession(two_layer, small_config(window=3))
    camera = SyntheticCamera(seed=8)
    stream(session, camera, 3.5)
    camera.stamp += 300.0  # a five-minute stall
    results = stream(session, camera, 2.0)
    assert [r.start for r in results] == [3.0, 303.0, 304.0]
    assert session.sampler.gap_seconds == 299  # seconds 4 to 302 saw no frame
    assert session.cache_tokens <= session.bound
    text = session.format.tokenizer.decode(session.policy.token_ids)
    assert "Time=304.0-305.0s" in text


def test_question_errors_leave_the_cache_untouched(two_layer):
    session = StreamingSession(two_layer, small_config(max_question_tokens=32))
    with pytest.raises(ValueError, match="nothing to answer"):
        session.ask("anything?")
    stream(session, SyntheticCamera(seed=3), 2.5)
    before = snapshot(session)
    with pytest.raises(QuestionTooLong, match="max_question_tokens=32"):
        session.ask("why " * 100)
    with pytest.raises(ValueError, match="empty"):
        session.ask("   ")
    assert_same_snapshot(before, snapshot(session))
    assert session.ask("what now?").question_tokens <= 32


def test_bound_matches_config_and_capacity(two_layer):
    session = StreamingSession(two_layer, small_config(window=3, text_sink=8, text_window=12))
    assert session.cache.capacity == session.bound
    results = stream(session, SyntheticCamera(seed=12, size=(96, 128)), 30.5)
    limit = session.stream_bound(96, 128, 31)
    assert limit < session.bound
    assert max(r.cache_tokens for r in results) <= limit


@pytest.mark.parametrize("overrides", [
    dict(max_question_tokens=8, max_answer_tokens=4),
    dict(max_question_tokens=256, max_answer_tokens=64),
    dict(max_question_tokens=8, max_answer_tokens=4, previous_text="red plays blue " * 12),
])
def test_capacity_holds_the_worst_stream_with_a_question_held_and_one_asked(two_layer,
                                                                           overrides):
    """The capacity is a hard bound: the fullest cache the format allows, rendered token for
    token, still has room for a question asked in a turn of its own, its answer included."""
    config = small_config(window=3, text_sink=8, text_window=12, **overrides)
    session = StreamingSession(two_layer, config)
    layout, fmt = session.layout, session.format
    last, period = float(MAX_STREAM_SECONDS), config.period
    side = int(config.max_pixels ** 0.5) // 28 * 28 // 14  # the largest frame's patches
    grid = VideoGrid(1, side, side, 1.0)
    assert layout.video_tokens(grid) == config.max_pixels // 28 ** 2
    full_text = [5] * config.max_new_tokens
    question = config.max_question_tokens  # tokens of the longest question
    # The ask's own turn at the latest time text: everything but its question, then the
    # question and the whole answer.
    asked = len(layout.render_question("q", last, last + period, 0)) - len(
        fmt.question_ids("q")) + question + config.max_answer_tokens
    window = config.cache.vision_window_seconds

    def rounds(first: bool) -> int:
        """The window's rounds, all at the latest time text, the largest video and the most
        words; one holds the longest question."""
        total = 0
        for index in range(window):
            content = RoundContent(last - period, last, grid, full_text,
                                   first=first and index == 0)
            total += len(layout.render_round(content, 0))
        return total + question

    text_windows = config.cache.text_sink_tokens + config.cache.text_window_tokens
    # Windows full (the instruction left with the first second) ...
    evicted = len(layout.render_head([5] * text_windows)) + rounds(first=False) + asked
    # ... or nothing evicted yet: the initial previous text uncut, the instruction held.
    early = len(layout.render_head()) + rounds(first=True) + asked
    assert max(evicted, early) <= session.bound


def test_a_failed_round_leaves_no_trace(two_layer, monkeypatch):
    session = StreamingSession(two_layer, small_config(window=2))
    camera = SyntheticCamera(seed=6)
    stream(session, camera, 3.5)
    before = snapshot(session)

    def out_of_memory(*args, **kwargs):
        raise RuntimeError("simulated out of memory during decoding")

    with monkeypatch.context() as patch:
        patch.setattr(session, "decode", out_of_memory)
        with pytest.raises(RuntimeError, match="simulated"):
            stream(session, camera, 1.0)
    after = snapshot(session)
    # The eviction that preceded the failed decode stands; nothing of the failed round does.
    assert [r[0] for r in after[3]] == [r[0] for r in before[3]][1:]
    assert after[1].numel() == session.cache_tokens
    # The stream goes on (second 3 was lost with the failure).
    assert [r.start for r in stream(session, camera, 3.0)] == [4.0, 5.0]


def test_a_failed_eviction_clears_the_memory_instead_of_corrupting_it(two_layer, monkeypatch):
    session = StreamingSession(two_layer, small_config(window=2))
    camera = SyntheticCamera(seed=6)
    stream(session, camera, 3.5)

    def fails(*args, **kwargs):
        raise RuntimeError("simulated out of memory during compaction")

    # The second layer fails after the first one was compacted.
    with monkeypatch.context() as patch:
        patch.setattr(session.cache.layers[1], "compact", fails)
        with pytest.raises(RuntimeError, match="compaction"):
            stream(session, camera, 1.0)
    assert session.cache_tokens == 0 and session.policy.length == 0
    results = stream(session, camera, 2.0)
    assert results and results[0].cache_tokens == session.policy.length
    assert session.policy.sink_tokens == len(session.format.sink_ids())


def test_clock_going_back_restarts_the_stream_memory(two_layer):
    session = StreamingSession(two_layer, small_config(window=2))
    stream(session, SyntheticCamera(seed=6, start_stamp=900.0), 4.5)
    held = session.cache_tokens
    results = []
    for image, stamp in SyntheticCamera(seed=7, start_stamp=10.0).frames(3.0):
        try:
            session.add_frame(image, stamp)
        except FrameRejected:
            continue
        result, _ = session.run_pending()
        if result is not None:
            results.append(result)
    assert session.sampler.restarts == 1
    assert [r.start for r in results] == [0.0, 1.0]  # a new timeline
    assert results[0].cache_tokens < held  # the old one's memory is gone
    text = session.format.tokenizer.decode(session.policy.token_ids)
    assert "Time=0.0-1.0s" in text and "Time=3.0-4.0s" not in text


def test_interrupt_stops_an_answer_and_leaves_the_stream_intact(two_layer, monkeypatch):
    session = StreamingSession(two_layer, small_config(max_answer_tokens=50))
    stream(session, SyntheticCamera(seed=2), 2.5)
    before = snapshot(session)
    real_choose, chosen = session.answer_chooser.choose, []

    def choose_then_interrupt(logits, context):
        chosen.append(1)
        if len(chosen) == 3:
            session.interrupt()  # as the node does from its shutdown path
        return real_choose(logits, context)

    monkeypatch.setattr(session.answer_chooser, "choose", choose_then_interrupt)
    with pytest.raises(GenerationInterrupted):
        session.ask("what is there?")
    assert len(chosen) == 3  # stopped at the next token, not after 50
    assert_same_snapshot(before, snapshot(session))
    # Sticky: a call that comes later (an ask that waited for the model while the node was
    # stopping) is refused at once, with nothing fed to the model.
    with pytest.raises(GenerationInterrupted):
        session.ask("still there?")
    assert len(chosen) == 3
    assert_same_snapshot(before, snapshot(session))
    session.resume()
    # Re-armed: the next call decodes past the third token.
    assert session.ask("and now?").answer_tokens > 3


def test_settings_whose_cache_cannot_fit_are_refused(two_layer):
    with pytest.raises(ValueError, match="GiB"):
        StreamingSession(two_layer, small_config(window=10**9))


def test_model_loading_refuses_with_reasons(tmp_path, two_layer):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="'llama'"):
        load_model(tmp_path)
    with pytest.raises(ValueError, match="not a checkpoint"):
        load_model(tmp_path / "missing")
    path = two_layer.path
    with pytest.raises(ValueError, match="dtype"):
        load_model(path, dtype="float8")
    with pytest.raises(ValueError, match="device"):
        load_model(path, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            load_model(path, device="cuda")
        with pytest.raises(ValueError, match="flash"):
            load_model(path, attn_implementation="flash_attention_2")
