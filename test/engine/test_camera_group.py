"""Several cameras decoded as one batch equal the same cameras run one by one (CPU)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from engine_helpers import SyntheticCamera, small_config
from test_gpu_path import ReplayOnCpu

from svlm_ros.engine.camera_group import CameraGroup, RoundsPartlyClosed
from svlm_ros.engine.decoding import SamplingConfig
from svlm_ros.engine.streaming_session import GenerationInterrupted, StreamingSession

SAMPLED = SamplingConfig(temperature=0.9, top_p=0.9, repetition_penalty=1.05, seed=3)
DUE = [(0, 1, 2)] * 3 + [(0, 2)] + [(0, 1, 2)] * 2 + [(1,)] + [(0, 1, 2)] * 2
# (step, camera) whose round is asked a question in the checkpoint's inline format.
ASKED = {(3, 2): "What moved?", (5, 0): "Which colour?"}


def _prime(cameras):
    """Half a second of frames first, so that each next second of frames completes a period."""
    for camera, session in cameras:
        for image, stamp in camera.frames(0.5):
            session.add_frame(image, stamp)
    return cameras


def _seconds(cameras):
    """The next completed second of each camera."""
    out = []
    for camera, session in cameras:
        second = None
        for image, stamp in camera.frames(1.0):
            session.add_frame(image, stamp)
            ready, _ = session.sampler.pop_ready()
            second = second or ready
        out.append(second)
    return out


def _alone(loaded, config):
    sessions = [StreamingSession(loaded, config, record_logits=True) for _ in range(3)]
    cameras = _prime([(SyntheticCamera(seed=10 + i), s) for i, s in enumerate(sessions)])
    texts, logits = [[] for _ in range(3)], [[] for _ in range(3)]
    for step, due in enumerate(DUE):
        seconds = _seconds(cameras)
        for index in due:
            result = sessions[index].run_round(seconds[index],
                                               question=ASKED.get((step, index), ""))
            texts[index].append((result.answer, result.text))
            logits[index].append(sessions[index].last_round_logits)
        if step == 4:
            texts[1].append(sessions[1].ask("What is on the table?").text)
    return sessions, texts, logits


def _grouped(loaded, config, graph_factory=None):
    group = CameraGroup(loaded, config, cameras=3, record_logits=True,
                        graph_factory=graph_factory)
    cameras = _prime([(SyntheticCamera(seed=10 + i), s) for i, s in enumerate(group.sessions)])
    texts, logits = [[] for _ in range(3)], [[] for _ in range(3)]
    for step, due in enumerate(DUE):
        seconds = _seconds(cameras)
        results = group.run_rounds([s if i in due else None for i, s in enumerate(seconds)],
                                   [ASKED.get((step, index), "") for index in range(3)])
        for index in range(3):
            assert (results[index] is not None) == (index in due)
            if results[index] is not None:
                texts[index].append((results[index].answer, results[index].text))
                logits[index].append(group.sessions[index].last_round_logits)
        if step == 4:
            texts[1].append(group.sessions[1].ask("What is on the table?").text)
    return group, texts, logits


@pytest.mark.parametrize("graph", [False, True], ids=["batched", "batched-graph-plumbing"])
def test_cameras_decoded_together_equal_cameras_alone(two_layer, graph):
    config = small_config(window=2, sampling=SAMPLED, decode_path="static")
    alone, alone_texts, alone_logits = _alone(two_layer, config)
    ReplayOnCpu.captures = 0
    group, texts, logits = _grouped(two_layer, config, ReplayOnCpu if graph else None)
    assert ReplayOnCpu.captures == (1 if graph else 0)
    assert group.sessions[0].policy.evicted_rounds > 0
    assert texts == alone_texts
    for mine, theirs in zip(logits, alone_logits, strict=True):
        for round_mine, round_theirs in zip(mine, theirs, strict=True):
            for a, b in zip(round_mine, round_theirs, strict=True):
                assert (a - b).abs().max().item() < 1e-4
    for grouped, single in zip(group.sessions, alone, strict=True):
        assert torch.equal(grouped.policy.token_ids, single.policy.token_ids)
        for g, s in zip(grouped.cache.layers, single.cache.layers, strict=True):
            assert torch.allclose(g.keys, s.keys, atol=1e-5)
    # The sessions' caches are views into one storage.
    storage = group.storage[0][0]
    assert group.sessions[2].cache.layers[0]._key_buffer.data_ptr() == storage[2:3].data_ptr()


@pytest.mark.parametrize("prefill_path",
                         ["static", pytest.param("compiled", marks=pytest.mark.slow)])
def test_group_with_fixed_shape_prefill_equals_cameras_alone(two_layer, prefill_path):
    """Each camera's prefill padded in its own row of the shared storage: no row sees or
    overwrites another's tokens (compiled: inductor writing into views of that storage)."""
    config = small_config(window=2, sampling=SAMPLED, decode_path="static")
    _, alone_texts, alone_logits = _alone(two_layer, config)
    group, texts, logits = _grouped(two_layer,
                                    dataclasses.replace(config, prefill_path=prefill_path))
    rounds = [sum(index in due for due in DUE) for index in range(3)]
    assert [s.prefiller.prefills for s in group.sessions] == [n - 1 for n in rounds]  # no sink
    assert texts == alone_texts
    for mine, theirs in zip(logits, alone_logits, strict=True):
        for round_mine, round_theirs in zip(mine, theirs, strict=True):
            for a, b in zip(round_mine, round_theirs, strict=True):
                assert (a - b).abs().max().item() < 1e-4


def test_interrupted_group_round_leaves_every_camera_as_before(two_layer):
    group = CameraGroup(two_layer, small_config(window=2, max_new_tokens=8), cameras=2)
    cameras = _prime([(SyntheticCamera(seed=20 + i), s) for i, s in enumerate(group.sessions)])
    for _ in range(3):
        group.run_rounds(_seconds(cameras))
    before = [(s.policy.token_ids.clone(), s.cache.length) for s in group.sessions]
    group.sessions[1].interrupt()
    with pytest.raises(GenerationInterrupted):
        group.run_rounds(_seconds(cameras))
    after = [(s.policy.token_ids, s.cache.length) for s in group.sessions]
    for (ids0, len0), (ids1, len1) in zip(before, after, strict=True):
        assert torch.equal(ids0, ids1) and len0 == len1
    group.sessions[1].resume()
    assert all(r is not None for r in group.run_rounds(_seconds(cameras)))


def test_group_refuses_caches_that_do_not_fit(two_layer, monkeypatch):
    monkeypatch.setattr(StreamingSession, "free_memory", lambda self: 1000)
    with pytest.raises(ValueError, match="KV caches of 3 cameras"):
        CameraGroup(two_layer, small_config(), cameras=3)


def test_a_question_in_a_round_holds_the_room_until_it_leaves_the_window(two_layer):
    session = StreamingSession(two_layer, small_config(window=2))
    camera = SyntheticCamera(seed=4)
    _prime([(camera, session)])
    assert session.can_hold_question()
    session.run_round(_seconds([(camera, session)])[0], question="What moved?")
    assert any(span.question_tokens for span in session.policy.rounds)
    # One question in the vision window at a time: the next round may not take one.
    assert not session.can_hold_question()
    with pytest.raises(ValueError, match="still in the vision window"):
        session.run_round(_seconds([(camera, session)])[0], question="And now?")
    # The refused round changed nothing; plain rounds go on until the question is evicted.
    rounds = 0
    while not session.can_hold_question():
        session.run_round(_seconds([(camera, session)])[0])
        rounds += 1
    # The question's second and one more fill the 2-second window; the next round evicts it.
    assert rounds == 1
    session.run_round(_seconds([(camera, session)])[0], question="And now?")


def test_a_failed_close_keeps_the_rounds_that_closed_and_rolls_back_the_rest(two_layer,
                                                                             monkeypatch):
    group = CameraGroup(two_layer, small_config(window=2), cameras=3)
    cameras = _prime([(SyntheticCamera(seed=20 + i), s) for i, s in enumerate(group.sessions)])
    group.run_rounds(_seconds(cameras))
    before = [session.cache.length for session in group.sessions]

    def broken(*args, **kwargs):
        raise RuntimeError("camera 1 cannot close")

    monkeypatch.setattr(group.sessions[1], "close_round", broken)
    with pytest.raises(RoundsPartlyClosed) as raised:
        group.run_rounds(_seconds(cameras))
    results = raised.value.results
    assert results[0] is not None and results[1] is None and results[2] is None
    assert group.sessions[0].cache.length != before[0]  # camera 0's round stands
    assert group.sessions[2].cache.length == before[2]  # camera 2's was rolled back
    assert "camera 1 cannot close" in str(raised.value)
