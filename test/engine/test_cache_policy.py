"""Pure bookkeeping of the cache policy (no model): content and order of what is kept."""

from __future__ import annotations

import pytest
import torch

from svlm_ros.engine.cache_policy import CachePolicyConfig, StreamingCachePolicy

SINK = 5
PREVIOUS_CLOSE = [-5, -6]  # ends the ``previous text`` turn; moved words go before it
MARKER = [999]  # the end-of-second marker: generated, evicted, never moved
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


def run_round(policy, round_index, words):
    """Add one round: prompt text, video, prompt text, the words and the end marker, 2 close
    tokens; the words (not the marker) move to the previous text at eviction."""
    plan = policy.plan_eviction(policy.rounds_to_evict(1))
    prompt_tokens = 2 * PROMPT_TEXT + GRID[0] * GRID[1]
    policy.begin_round(float(round_index), prompt_tokens)
    _text(policy, [1000 + round_index] * PROMPT_TEXT)
    _video(policy)
    _text(policy, [2000 + round_index] * PROMPT_TEXT)
    _text(policy, list(words) + MARKER)
    _text(policy, [-1, -2])
    policy.end_round(len(words) + len(MARKER), 2, len(words))
    return plan


def make_policy(initial_text=(), **config):
    """A policy holding the head: the sink, ``initial_text`` as previous text, its close."""
    policy = StreamingCachePolicy(CachePolicyConfig(**config))
    policy.mark_head(SINK, len(initial_text), len(PREVIOUS_CLOSE))
    _text(policy, list(range(-100, -100 + SINK)) + list(initial_text) + PREVIOUS_CLOSE)
    return policy


def previous_text(policy) -> list[int]:
    return policy.token_ids[SINK : SINK + policy.previous_text_tokens].tolist()


def check_head(policy, sink=SINK):
    """The previous-text close follows the previous text and precedes the first round."""
    close_start = sink + policy.previous_text_tokens
    assert policy.token_ids[close_start : close_start + len(PREVIOUS_CLOSE)].tolist() == \
        PREVIOUS_CLOSE
    if policy.rounds:
        assert int(policy.token_ids[close_start + len(PREVIOUS_CLOSE)]) >= 1000  # round start


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


@pytest.mark.parametrize("window,text_sink,text_window,initial", [
    (1, 0, 0, 0), (2, 3, 4, 0), (4, 10, 7, 0), (2, 3, 4, 2), (3, 4, 6, 9), (2, 3, 4, 9)])
def test_previous_text_keeps_first_and_last_tokens_in_order(window, text_sink, text_window,
                                                            initial):
    initial_text = [500 + k for k in range(initial)]
    policy = make_policy(initial_text, vision_window_seconds=window, text_sink_tokens=text_sink,
                         text_window_tokens=text_window)
    moved = list(initial_text)  # the initial previous text counts toward the text windows
    for index in range(30):
        # Silent seconds (no words, the marker alone) every fifth round.
        words = [10_000 + 10 * index + k for k in range(0 if index % 5 == 4 else 1 + index % 4)]
        run_round(policy, index, words)
        if index >= window:  # the round that just left the window gave its words
            left = index - window
            moved.extend(10_000 + 10 * left + k
                          for k in range(0 if left % 5 == 4 else 1 + left % 4))
        if index < window:
            # Nothing evicted yet: the initial previous text is held as it was, uncut.
            expected_text = list(initial_text)
        elif len(moved) <= text_sink + text_window:
            expected_text = moved
        else:
            expected_text = moved[:text_sink] + moved[len(moved) - text_window :]
        assert previous_text(policy) == expected_text
        assert MARKER[0] not in previous_text(policy)  # only words move
        check_head(policy)
        assert len(policy.rounds) <= window
        assert policy.rounds[-1].stream_second == float(index)
        check_positions_contiguous(policy)


def test_only_the_words_of_a_round_may_move():
    policy = make_policy()
    policy.begin_round(0.0, 2)
    _text(policy, [1, 2, 7, 8])
    with pytest.raises(ValueError, match="moved_tokens"):
        policy.end_round(2, 0, 3)
    with pytest.raises(ValueError, match="moved_tokens"):
        policy.end_round(2, 0, -1)


def test_sink_never_moves_and_bound_holds():
    policy = make_policy(vision_window_seconds=3, text_sink_tokens=4, text_window_tokens=6)
    round_tokens = 2 * PROMPT_TEXT + GRID[0] * GRID[1] + 4 + len(MARKER) + 2
    bound = policy.bound(SINK + len(PREVIOUS_CLOSE), round_tokens)
    sink = (policy.token_ids[:SINK].clone(), policy.positions[:, :SINK].clone())
    for index in range(200):
        plan = run_round(policy, index, [7] * 4)
        assert policy.length <= bound
        # The sink is never part of what compaction moves.
        if plan.evicted_tokens:
            assert torch.equal(plan.kept_index[:SINK], torch.arange(SINK))
            assert not plan.shift[:SINK].any()
        check_head(policy)
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
    # The previous text (the evicted round's words, not its marker) now leads the cache,
    # closed as before.
    assert policy.token_ids[:5].tolist() == [10] * 3 + PREVIOUS_CLOSE
    for index in range(3, 8):
        run_round(policy, index, [10 + index] * 3)
    assert policy.previous_text_tokens == 6
    check_head(policy, sink=0)
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
    evicted_per_round = 2 * PROMPT_TEXT + max(GRID) + len(MARKER) + 2
    assert native.next_position > contiguous.next_position + 8 * evicted_per_round
    assert not torch.equal(native.positions, contiguous.positions)
