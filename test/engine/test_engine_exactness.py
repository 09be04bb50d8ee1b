"""The bounded streaming cache equals recomputation (fp32, CPU, tiny real Qwen2.5-VL models).

1. Before any eviction, with a deep (2-layer) model: every generated token's logits equal one
   full forward pass over the same token sequence.
2. After many evictions, with a ONE-layer model (cached keys/values depend only on their own
   token and position): the logits equal a fresh forward pass through the unmodified model over
   exactly the retained sequence, with the positions transformers assigns to it; and the
   engine's 3-D positions are exactly those positions.
"""

from __future__ import annotations

import pytest
import torch
from engine_helpers import (
    SyntheticCamera,
    full_forward_logits,
    small_config,
    stream,
)

from svlm_ros.engine.streaming_session import StreamingSession

TOLERANCE = 1e-4


def _round_logit_rows(session: StreamingSession) -> list[int]:
    """Sequence indices whose logits the last round recorded (prefill end, then each token)."""
    last = session.policy.rounds[-1]
    offset = session.policy.length - last.length
    first = offset + last.prompt_tokens - 1
    return [first + i for i in range(len(session.last_round_logits))]


def test_no_eviction_streaming_equals_full_forward(two_layer):
    session = StreamingSession(two_layer, small_config(window=16), record_logits=True)
    camera = SyntheticCamera(seed=1)
    blocks, recorded = [], []

    def keep(second, result):
        blocks.append(session.vision.prepare(second.frames))
        recorded.append((_round_logit_rows(session), list(session.last_round_logits)))

    results = stream(session, camera, 4.2, on_round=keep)
    assert len(results) == 4 and all(r.evicted_tokens == 0 for r in results)
    logits, positions = full_forward_logits(session, session.policy.token_ids, blocks)
    assert torch.equal(positions, session.policy.positions)
    compared = 0
    for rows, round_logits in recorded:
        for row, streamed in zip(rows, round_logits, strict=True):
            assert (logits[row] - streamed).abs().max().item() < TOLERANCE
            compared += 1
    assert compared >= 4 * 2


@pytest.mark.parametrize(
    "window,text_sink,text_window,sizes",
    [
        (1, 0, 0, [(96, 128)]),
        (2, 4, 6, [(96, 128), (140, 70)]),
        (3, 6, 10, [(96, 128), (64, 64), (200, 300)]),
        (5, 16, 8, [(120, 90), (96, 128)]),
    ],
)
def test_after_evictions_one_layer_equals_fresh_forward_on_retained(
    one_layer, window, text_sink, text_window, sizes
):
    session = StreamingSession(
        one_layer, small_config(window=window, text_sink=text_sink, text_window=text_window),
        record_logits=True,
    )
    camera = SyntheticCamera(seed=window)
    blocks_by_start = {}

    def keep(second, result):
        blocks_by_start[second.start] = session.vision.prepare(second.frames)

    # Frame size changes mid-stream, several times.
    for size in sizes:
        camera.size = size
        stream(session, camera, 3 * window + 2, on_round=keep)
    assert session.policy.evicted_rounds >= 2 * window
    assert session.policy.dropped_text_tokens > 0 or text_sink + text_window > 40
    retained = [blocks_by_start[r.stream_second] for r in session.policy.rounds]
    logits, positions = full_forward_logits(session, session.policy.token_ids, retained)
    assert torch.equal(positions, session.policy.positions), "positions are not contiguous"
    for row, streamed in zip(_round_logit_rows(session), session.last_round_logits, strict=True):
        assert (logits[row] - streamed).abs().max().item() < TOLERANCE


def test_after_ask_one_layer_still_equals_fresh_forward(one_layer):
    session = StreamingSession(one_layer, small_config(window=2), record_logits=True)
    camera = SyntheticCamera(seed=7)
    blocks_by_start = {}

    def keep(second, result):
        blocks_by_start[second.start] = session.vision.prepare(second.frames)

    stream(session, camera, 5.5, on_round=keep)
    session.ask("What is on the table?")
    stream(session, camera, 3.0, on_round=keep)
    session.ask("And now?")
    stream(session, camera, 1.0, on_round=keep)
    retained = [blocks_by_start[r.stream_second] for r in session.policy.rounds]
    logits, positions = full_forward_logits(session, session.policy.token_ids, retained)
    assert torch.equal(positions, session.policy.positions)
    for row, streamed in zip(_round_logit_rows(session), session.last_round_logits, strict=True):
        assert (logits[row] - streamed).abs().max().item() < TOLERANCE
