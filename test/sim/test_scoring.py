"""Scoring narration of the simulated world: right, wrong, silent, and the reference points."""

from __future__ import annotations

import itertools

import pytest

from svlm_ros.sim.questions import (
    SHAPE_QUESTION_LEAD,
    MemoryQuestion,
    answer_is_right,
    chance_answers_right,
    constant_answer_right,
    pause_end_questions,
    questions_at,
    training_questions,
)
from svlm_ros.sim.scoring import (
    accuracy_by_kind,
    chance_accuracy,
    score_narration,
    second_is_right,
    total,
)
from svlm_ros.sim.world import World, WorldConfig


@pytest.fixture(scope="module")
def world():
    return World(WorldConfig(seed=21))


def test_a_perfect_narrator_scores_one_and_a_silent_one_the_quiet_share(world):
    seconds = 1800
    truth = [(s, world.sentence_at(s)) for s in range(seconds)]
    perfect = score_narration(world, truth)
    assert [s.accuracy for s in perfect] == [1.0, 1.0, 1.0]
    silent = score_narration(world, [(s, "") for s in range(seconds)])
    for piece in silent:
        assert piece.accuracy == pytest.approx(piece.always_silent)
        assert piece.events_right == 0 and piece.quiet_right == piece.quiet_seconds
        assert piece.events_spoken == piece.colour_right == 0
    for piece in perfect:
        assert piece.events_spoken == piece.colour_right == piece.event_seconds
    overall = total(silent)
    assert overall.seconds == seconds
    assert 0.0 < chance_accuracy(overall.always_silent) < overall.always_silent


def test_event_words_must_all_match_but_wording_around_them_may_differ(world):
    event = next(e for e in world.events(100) if e.kind == "moves")
    colour, shape, direction = event.colour, event.shape, event.direction
    assert second_is_right(world, event.second, f"Now the {colour} {shape} moves {direction} ...")
    other = "left" if direction != "left" else "right"
    assert not second_is_right(world, event.second, f"the {colour} {shape} moves {other}")
    assert not second_is_right(world, event.second, "")
    quiet = next(s for s in range(100) if world.event_at(s) is None)
    assert second_is_right(world, quiet, "  ")
    assert not second_is_right(world, quiet, f"the {colour} {shape} moves {direction}")


def test_memory_questions_point_minutes_back_and_answers_are_checked(world):
    questions = pause_end_questions(world, 7200, min_age=60)
    assert len(questions) >= 20  # two near the end of most pauses (every 5 minutes)
    for question in questions:
        assert world.in_pause(question.second)
        leaves = [e for e in world.events(question.second + 1) if e.kind == "leaves"]
        wanted = leaves[-1].colour if "colour" in question.question else leaves[-1].shape
        assert wanted == question.answer
        assert question.second - leaves[-1].second == question.age >= 60
        assert answer_is_right(question, f"It was {question.answer}.")
        assert not answer_is_right(question, "I do not know")
        other = "circle" if question.answer != "circle" else "square"
        if "colour" in question.question:
            other = "red" if question.answer != "red" else "blue"
        assert not answer_is_right(question, f"{question.answer} or {other}")
    # Asked inline, a question stays in the vision window (16 s): the next comes later.
    seconds = [q.second for q in questions]
    assert all(b - a >= SHAPE_QUESTION_LEAD > 16 for a, b in itertools.pairwise(seconds))


def test_side_questions_name_the_latest_shape_to_leave_that_way(world):
    asked = questions_at(world, 1000, min_age=0)
    sides = [q for q in asked if "left to the" in q.question]
    assert len(sides) == 4
    for question in sides:
        side = question.question.removesuffix("?").split()[-1]
        latest = [e for e in world.events(1001) if e.kind == "leaves" and e.direction == side][-1]
        assert (question.answer, question.age) == (latest.colour, 1000 - latest.second)
    assert all(q.age >= 30 for q in questions_at(world, 1000, min_age=30))


def test_training_questions_are_about_the_past_and_repeatable():
    world = World(WorldConfig(seed=4))
    questions = training_questions(world, 600, share=0.05, min_age=10)
    assert 10 <= len(questions) <= 60
    assert all(q.age >= 10 for q in questions)
    assert questions == training_questions(World(WorldConfig(seed=4)), 600, share=0.05,
                                           min_age=10)
    assert questions != training_questions(World(WorldConfig(seed=4)), 600, seed=1)


def test_memory_events_are_scored_on_their_own(world):
    truth = [(s, world.sentence_at(s)) for s in range(900)]
    perfect = total(score_narration(world, truth))
    memory = [e for e in world.events(900) if e.needs_memory]
    assert perfect.memory_seconds == perfect.memory_right == len(memory) > 0
    # Narrating a shape that comes back as one that enters gets those seconds wrong.
    forgetful = [(s, t.replace("is back", "enters")) for s, t in truth]
    score = total(score_narration(world, forgetful))
    returns = sum(e.kind == "returns" for e in memory)
    assert score.memory_right == len(memory) - returns and returns > 0


def test_saying_is_back_to_every_entry_shows_in_the_kinds_apart(world):
    truth = [(s, world.sentence_at(s)) for s in range(900)]
    assert set(accuracy_by_kind(world, truth).values()) == {1.0}
    # "is back" for every new shape too: every returning one right, no entering one.
    eager = [(s, t.replace(" enters from", " is back from").replace("a ", "the ", 1)
              if " enters from" in t else t) for s, t in truth]
    kinds = accuracy_by_kind(world, eager)
    assert kinds["returns"] == kinds["moves"] == 1.0 and kinds["enters"] == 0.0
    assert total(score_narration(world, eager)).memory_right == total(
        score_narration(world, truth)).memory_right


def test_partial_credit_for_speaking_and_for_the_colour(world):
    events = [e for e in world.events(200)]
    guesses = [(e.second, f"the {e.colour} blob does something") for e in events]
    score = total(score_narration(world, guesses))
    assert score.events_right == 0
    assert score.events_spoken == score.colour_right == len(events)
    other = {e.second: ("red" if e.colour != "red" else "blue") for e in events}
    wrong = total(score_narration(world, [(s, f"a {c} square") for s, c in other.items()]))
    assert wrong.events_spoken == len(events) and wrong.colour_right == 0


def test_question_references_count_a_constant_guess_and_random_words():
    asked = [MemoryQuestion(1, "What colour was the last shape that left?", colour, 60)
             for colour in ("red", "red", "blue")] + [
        MemoryQuestion(2, "What shape was the last one that left?", "circle", 60)]
    # Always "red" gets two colours, always "circle" the one shape.
    assert constant_answer_right(asked) == 3
    assert chance_answers_right(asked) == pytest.approx(3 / 4 + 1 / 3)
