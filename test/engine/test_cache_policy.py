"""Pure bookkeeping of the cache policy (no model): content and order of what is kept."""

from __future__ import annotations

import pytest
import torch

from svlm_ros.engine.cache_policy import CachePolicyConfig, StreamingCachePolicy

SINK = 5
PROMPT_TEXT = 3  # text tokens before and after each round's video block
GRID = (2, 3)  # merged (h, w) of each round's video block


def _text(policy, ids):
    start = policy.next_position
    positions = torch.arange(start, start + len(ids)).expand(3, -1)
    policy.append(torch.tensor(ids), positions)


def _video(policy, pad_id=-7):
    """A video block laid out as transformers does: t, h, w offsets from the block start,
    so the block spans max(h, w) positions and the next text token follows it."""
    start = policy.next_position
    h, w = GRID
    hh, ww = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    positions = torch.stack([torch.zeros(h * w, dtype=torch.long), hh.flatten(), ww.flatten()])
    policy.append(torch.full((h * w,), pad_id), positions + start)


def run_round(policy, round_index, text_ids):
    """Add one round: prompt text, video, prompt text, generated text, 2 close tokens."""
    plan = policy.plan_eviction(policy.rounds_to_evict(1))
    prompt_tokens = 2 * PROMPT_TEXT + GRID[0] * GRID[1]
    policy.begin_round(float(round_index), prompt_tokens)
    _text(policy, [1000 + round_index] * PROMPT_TEXT)
    _video(policy)
    _text(policy, [2000 + round_index] * PROMPT_TEXT)
    _text(policy, text_ids)
    _text(policy, [-1, -2])
    policy.end_round(len(text_ids), 2)
    return plan


def make_policy(**config):
    policy = StreamingCachePolicy(CachePolicyConfig(**config))
    policy.mark_sink(SINK)
    _text(policy, list(range(-100, -100 + SINK)))
    return policy


def check_positions_contiguous(policy):
    """Every token either continues the previous one by +1 (text) or belongs to a block."""
    positions = policy.positions
    ids = policy.token_ids
    cursor = 0
    for index in range(policy.length):
        if ids[index] == -7:  # video: inside [cursor, cursor + max(h, w))
            assert cursor <= int(positions[:, index].min())
            assert int(positions[:, index].max()) < cursor + max(GRID)
            if index + 1 < policy.length and ids[index + 1] != -7:
                cursor += max(GRID)
        else:
            assert positions[:, index].tolist() == [cursor] * 3, (index, positions[:, index])
            cursor += 1


@pytest.mark.parametrize("window,text_sink,text_window", [(1, 0, 0), (2, 3, 4), (4, 10, 7)])
def test_previous_text_keeps_first_and_last_tokens_in_order(window, text_sink, text_window):
    policy = make_policy(vision_window_seconds=window, text_sink_tokens=text_sink,
                         text_window_tokens=text_window)
    moved = []
    for index in range(30):
        words = [10_000 + 10 * index + k for k in range(1 + index % 4)]
        run_round(policy, index, words)
        if index >= window:  # the round that just left the window gave its words
            left = index - window
            moved.extend(10_000 + 10 * left + k for k in range(1 + left % 4))
        if len(moved) <= text_sink + text_window:
            expected_text = moved
        else:
            expected_text = moved[:text_sink] + moved[len(moved) - text_window :]
        text = policy.token_ids[SINK : SINK + policy.previous_text_tokens].tolist()
        assert text == expected_text
        assert len(policy.rounds) <= window
        assert policy.rounds[-1].stream_second == float(index)
        check_positions_contiguous(policy)


def test_sink_never_moves_and_bound_holds():
    policy = make_policy(vision_window_seconds=3, text_sink_tokens=4, text_window_tokens=6)
    round_tokens = 2 * PROMPT_TEXT + GRID[0] * GRID[1] + 4 + 2
    bound = policy.bound(SINK, round_tokens)
    sink = (policy.token_ids[:SINK].clone(), policy.positions[:, :SINK].clone())
    for index in range(200):
        plan = run_round(policy, index, [7] * 4)
        assert policy.length <= bound
        # The sink is never part of what compaction moves.
        if plan.evicted_tokens:
            assert torch.equal(plan.kept_index[:SINK], torch.arange(SINK))
            assert not plan.shift[:SINK].any()
    assert policy.length == bound  # every round generated its maximum: the bound is reached
    assert torch.equal(policy.token_ids[:SINK], sink[0])
    assert torch.equal(policy.positions[:, :SINK], sink[1])


def test_config_is_validated():
    with pytest.raises(ValueError, match="vision_window_seconds"):
        CachePolicyConfig(vision_window_seconds=0)
    with pytest.raises(ValueError, match="text_sink_tokens"):
        CachePolicyConfig(text_sink_tokens=-1)


def test_ablation_without_attention_sink_evicts_the_sink_once():
    policy = make_policy(vision_window_seconds=2, text_sink_tokens=0, text_window_tokens=6,
                         attention_sink=False)
    for index in range(2):
        run_round(policy, index, [10 + index] * 3)
    assert policy.token_ids[:SINK].tolist() == list(range(-100, -100 + SINK))
    plan = run_round(policy, 2, [12] * 3)
    assert plan.evicted_tokens > 0 and policy.sink_tokens == 0
    assert not bool((policy.token_ids < -7).any()), "sink tokens survived the eviction"
    assert policy.token_ids[:3].tolist() == [10] * 3  # previous text now leads the cache
    for index in range(3, 8):
        run_round(policy, index, [10 + index] * 3)
    assert policy.previous_text_tokens == 6
    check_positions_contiguous(policy)


def test_ablation_with_native_positions_keeps_positions_growing():
    native = make_policy(vision_window_seconds=2, text_sink_tokens=2, text_window_tokens=2,
                         contiguous_positions=False)
    contiguous = make_policy(vision_window_seconds=2, text_sink_tokens=2, text_window_tokens=2)
    for index in range(12):
        native_plan = run_round(native, index, [10 + index] * 3)
        contiguous_plan = run_round(contiguous, index, [10 + index] * 3)
        assert torch.equal(native_plan.kept_index, contiguous_plan.kept_index)
        assert not bool(native_plan.shift.any())  # nothing is ever moved
    assert torch.equal(native.token_ids, contiguous.token_ids)  # the same tokens are kept
    check_positions_contiguous(contiguous)
    # Natively, the newest token sits where it would with nothing evicted: far beyond.
    assert native.next_position > contiguous.next_position + 8 * (2 * PROMPT_TEXT + 3 + 2)
    assert not torch.equal(native.positions, contiguous.positions)
