"""Watch questions in the engine: p(yes) scored from the cache, the stream left untouched.

With the tiny random model the answer is noise: these tests check the mechanics (nothing of
the stream changes, the same memory gives the same p(yes), refusals), not the semantics.
"""

from __future__ import annotations

import math

import pytest
import torch
from engine_helpers import SyntheticCamera, small_config, stream
from test_engine_invariants import assert_same_snapshot, snapshot

from svlm_ros.engine.decoding import SamplingConfig
from svlm_ros.engine.streaming_session import QuestionTooLong, StreamingSession
from svlm_ros.engine.watching import answer_token_ids, yes_probability

QUESTION = "Is a person in front of the robot?"


@pytest.mark.parametrize("decode_path", ["eager", "static"])
def test_watch_leaves_the_stream_bit_identical_and_is_deterministic(two_layer, decode_path):
    sampled = SamplingConfig(temperature=0.9, repetition_penalty=1.05, seed=3)
    config = small_config(window=2, sampling=sampled, decode_path=decode_path)
    watched = StreamingSession(two_layer, config)
    reference = StreamingSession(two_layer, config)
    stream(watched, SyntheticCamera(seed=2), 4.5)
    stream(reference, SyntheticCamera(seed=2), 4.5)
    before = snapshot(watched)
    first = yes_probability(watched, QUESTION)
    assert_same_snapshot(before, snapshot(watched))
    second = yes_probability(watched, QUESTION)
    assert second.probability == first.probability
    assert second.answer_mass == first.answer_mass
    assert 0.0 <= first.probability <= 1.0 and 0.0 < first.answer_mass <= 1.0
    assert first.answer == (first.probability >= 0.5)
    assert first.question_tokens == len(watched.format.question_ids(QUESTION))
    assert first.seconds > 0
    assert_same_snapshot(before, snapshot(watched))
    # Narration afterwards is what it would have been without the questions; an evaluation
    # between every round changes nothing either.
    def watch(_second, _result):
        yes_probability(watched, QUESTION)
        yes_probability(watched, "Is it dark?")

    after = stream(watched, SyntheticCamera(seed=2, start_stamp=1004.5), 3.0, on_round=watch)
    expected = stream(reference, SyntheticCamera(seed=2, start_stamp=1004.5), 3.0)
    assert [r.text for r in after] == [r.text for r in expected]
    assert_same_snapshot(snapshot(watched), snapshot(reference))


def test_probability_is_the_yes_share_of_the_first_answer_token(two_layer):
    session = StreamingSession(two_layer, small_config(window=2))
    stream(session, SyntheticCamera(seed=6), 2.5)
    result = yes_probability(session, QUESTION)
    # The same turn fed by hand (and cut off again) gives the logits it was read from.
    length = session.cache.length
    start = session.policy.rounds[-1].stream_second + session.config.period
    with torch.inference_mode():
        logits = session.feed(session.layout.render_question(
            QUESTION, start, start + session.config.period, session.policy.next_position))
    session.cache.truncate(length)
    session.policy.truncate(length)
    probabilities = torch.softmax(logits.float(), dim=-1)
    yes_ids, no_ids = answer_token_ids(session.format.tokenizer)
    yes, no = float(probabilities[yes_ids].sum()), float(probabilities[no_ids].sum())
    assert math.isclose(result.probability, yes / (yes + no), rel_tol=1e-6)
    assert math.isclose(result.answer_mass, yes + no, rel_tol=1e-6)


def test_answer_tokens_leave_out_a_token_that_begins_both_words(two_layer):
    tokenizer = two_layer.tokenizer
    yes_ids, no_ids = answer_token_ids(tokenizer)
    assert yes_ids and no_ids and not set(yes_ids) & set(no_ids)
    assert tokenizer.encode("Yes", add_special_tokens=False)[0] in yes_ids
    assert tokenizer.encode("No", add_special_tokens=False)[0] in no_ids
    # The tiny vocabulary spells " Yes" as a space and "Yes": the space begins " No" too.
    space = tokenizer.encode(" ", add_special_tokens=False)[0]
    assert space not in yes_ids and space not in no_ids

    class Blind:
        def encode(self, text, add_special_tokens=False):
            return [7]

    with pytest.raises(ValueError, match="cannot tell"):
        answer_token_ids(Blind())


def test_refusals_leave_the_stream_as_it_was(two_layer):
    session = StreamingSession(two_layer, small_config(window=2, max_question_tokens=24))
    with pytest.raises(ValueError, match="nothing to answer from"):
        yes_probability(session, QUESTION)
    stream(session, SyntheticCamera(seed=1), 2.5)
    before = snapshot(session)
    with pytest.raises(ValueError, match="empty"):
        yes_probability(session, "  ")
    with pytest.raises(QuestionTooLong):
        yes_probability(session, "is it " * 40)
    assert_same_snapshot(before, snapshot(session))
    session.interrupt()
    with pytest.raises(Exception, match="interrupted"):
        yes_probability(session, QUESTION)
    assert_same_snapshot(before, snapshot(session))
