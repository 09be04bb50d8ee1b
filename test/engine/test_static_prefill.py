"""The fixed-shape prefill (``static_prefill.py``) equals the eager prefill, on the CPU.

``static`` is the padded, capacity-masked prompt pass uncompiled; ``compiled`` the same pass
through inductor. Both must give the eager path's texts, answers, logits and cache contents
through evictions, questions and frame-size changes, and pass the exactness tests.
"""

from __future__ import annotations

import pytest
import test_engine_exactness as exactness
import torch
from engine_helpers import (
    SyntheticCamera,
    forced_stream_logits,
    small_config,
    stream,
)
from test_engine_invariants import snapshot
from test_gpu_path import GREEDY, SAMPLED, exactness_with

from svlm_ros.engine.decoding import SamplingConfig
from svlm_ros.engine.static_prefill import (
    PREFILL_BUCKET,
    padded_length,
    resolve_prefill_path,
)
from svlm_ros.engine.streaming_session import StreamConfig, StreamingSession


def _narrate(loaded, prefill_path: str, decode_path: str = "eager",
             sampling: SamplingConfig = SAMPLED, seconds: float = 7.5, prepare=None):
    """A stream with evictions, a frame-size change and a question in the middle;
    ``prepare(session)`` runs before the first frame."""
    session = StreamingSession(
        loaded, small_config(window=2, prefill_path=prefill_path, decode_path=decode_path,
                             sampling=sampling), record_logits=True)
    if prepare is not None:
        prepare(session)
    camera = SyntheticCamera(seed=2)
    texts = [r.text for r in stream(session, camera, seconds / 2)]
    answer = session.ask("What is on the table?").text
    camera.size = (120, 90)
    texts += [r.text for r in stream(session, camera, seconds / 2)]
    return session, texts, session.last_round_logits, answer


def _assert_same_stream(fixed, eager, tolerance: float = 1e-4):
    session, texts, logits, answer = fixed
    eager_session, eager_texts, eager_logits, eager_answer = eager
    assert texts == eager_texts
    assert answer == eager_answer
    assert len(logits) == len(eager_logits) > 1
    for a, b in zip(logits, eager_logits, strict=True):
        assert (a - b).abs().max().item() < tolerance
    # The same tokens at the same positions, and the same keys and values up to summation
    # order: the padding stayed past the live tokens and the length counts real tokens only.
    layers, *policy = snapshot(session)
    eager_layers, *eager_policy = snapshot(eager_session)
    assert torch.equal(policy[0], eager_policy[0]) and torch.equal(policy[1], eager_policy[1])
    assert policy[2:] == eager_policy[2:]
    for (k0, v0), (k1, v1) in zip(layers, eager_layers, strict=True):
        assert torch.allclose(k0, k1, atol=1e-5) and torch.allclose(v0, v1, atol=1e-5)


@pytest.mark.parametrize("decode_path", ["eager", "static"])
@pytest.mark.parametrize("sampling", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_static_prefill_equals_eager(two_layer, decode_path, sampling):
    eager = _narrate(two_layer, "eager", decode_path, sampling)
    fixed = _narrate(two_layer, "static", decode_path, sampling)
    session = fixed[0]
    assert session.prefill_path == "static" and eager[0].prefiller is None
    assert session.policy.evicted_rounds > 0
    # Every round but the sink round went through the fixed-shape pass (none fell back).
    assert session.prefiller.prefills == session.rounds_run - 1 >= 5
    assert session.prefiller.fallbacks == 0
    _assert_same_stream(fixed, eager)


@pytest.mark.slow  # inductor compiles a graph per bucket: about 15 s on a 2-core machine
def test_compiled_prefill_equals_eager(two_layer):
    eager = _narrate(two_layer, "eager")
    compiled = _narrate(two_layer, "compiled")
    assert compiled[0].prefiller.compiled
    assert compiled[0].prefiller.prefills == compiled[0].rounds_run - 1
    _assert_same_stream(compiled, eager)


def test_padding_that_does_not_fit_falls_back_to_eager(two_layer):
    """A padded prompt past the capacity runs eagerly: same stream, the fallback counted."""
    def no_padded_prompt_fits(session):
        session.prefiller.bucket = session.cache.capacity + 1

    eager = _narrate(two_layer, "eager")
    fixed = _narrate(two_layer, "static", prepare=no_padded_prompt_fits)
    session = fixed[0]
    assert session.prefiller.prefills == 0
    assert session.prefiller.fallbacks == session.rounds_run - 1 >= 5
    _assert_same_stream(fixed, eager)


@pytest.fixture
def static_prefill_exactness(monkeypatch):
    """Make the exactness tests build their sessions with the fixed-shape prefill."""
    built = exactness_with(monkeypatch, prefill_path="static")
    yield built
    assert built and all(s.prefiller is not None for s in built)
    assert sum(s.prefiller.prefills for s in built) > 0


@pytest.mark.parametrize("window,text_sink,text_window,sizes", [
    (1, 0, 0, [(96, 128)]),
    (3, 6, 10, [(96, 128), (64, 64), (200, 300)]),
])
def test_exactness_after_evictions_with_static_prefill(one_layer, static_prefill_exactness,
                                                       window, text_sink, text_window, sizes):
    exactness.test_after_evictions_one_layer_equals_fresh_forward_on_retained(
        one_layer, window, text_sink, text_window, sizes)


def test_exactness_no_eviction_with_static_prefill(two_layer, static_prefill_exactness):
    exactness.test_no_eviction_streaming_equals_full_forward(two_layer)


def test_bf16_static_prefill_within_eager_bf16_error(two_layer):
    """In bfloat16 the fixed-shape prefill is as far from float32 as the eager bf16 path is
    (RMS within 10 %), and within 0.25 of the eager bf16 logits (scale ~6)."""
    from svlm_ros.engine.model_loading import load_model

    bf16 = load_model(two_layer.path, dtype="bfloat16", attn_implementation="sdpa")
    float32 = forced_stream_logits(two_layer, "eager")
    eager = forced_stream_logits(bf16, "eager")
    fixed = forced_stream_logits(bf16, "static", prefill_path="static")
    rms_eager = (eager - float32).pow(2).mean().sqrt().item()
    rms_fixed = (fixed - float32).pow(2).mean().sqrt().item()
    assert rms_fixed <= 1.1 * rms_eager, (rms_fixed, rms_eager)
    assert (fixed - eager).abs().max().item() < 0.25


def test_prefill_path_resolution():
    assert resolve_prefill_path("eager", "flash_attention_2") == "eager"
    assert resolve_prefill_path("compiled", "sdpa") == "compiled"
    assert resolve_prefill_path("static", "eager") == "static"
    with pytest.raises(ValueError, match="cannot take"):
        resolve_prefill_path("static", "flash_attention_2")
    with pytest.raises(ValueError, match="prefill_path must be one of"):
        resolve_prefill_path("fast", "sdpa")
    with pytest.raises(ValueError, match="prefill_path must be one of"):
        StreamConfig(prefill_path="fast")


def test_padded_length():
    assert padded_length(1) == PREFILL_BUCKET
    assert padded_length(PREFILL_BUCKET) == PREFILL_BUCKET
    assert padded_length(PREFILL_BUCKET + 1) == 2 * PREFILL_BUCKET
    assert padded_length(740, 64) == 768
