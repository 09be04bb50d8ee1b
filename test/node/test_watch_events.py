"""Watch questions, node side without a ROS graph: hysteresis, when questions are due, and
the checks of the watch parameters."""

from __future__ import annotations

import pytest

from svlm_ros.node.parameters import SPECS, defaults, problems
from svlm_ros.node.watch_events import (
    MAX_WATCH_QUESTIONS,
    AnswerTracker,
    WatchSchedule,
    watch_problems,
)


def published_after(answers, confirmations):
    """Each evaluation's (published answer, whether an event was due)."""
    tracker = AnswerTracker()
    return [(tracker.update(answer, confirmations), tracker.published) for answer in answers]


def test_first_evaluation_publishes_the_initial_answer():
    assert published_after([False], 3) == [(True, False)]
    assert published_after([True], 1) == [(True, True)]


def test_a_new_answer_is_published_after_confirmations_in_a_row():
    y, n = True, False
    events = published_after([n, y, y, y, y, n, y, n, n, n], 3)
    assert [event for event, _ in events] == [
        True, False, False, True, False, False, False, False, False, True]
    assert [state for _, state in events] == [n, n, n, y, y, y, y, y, y, n]


def test_flicker_never_publishes_and_one_confirmation_publishes_every_change():
    flicker = [True, False] * 10
    assert sum(event for event, _ in published_after(flicker, 2)) == 1  # the initial answer
    assert sum(event for event, _ in published_after(flicker, 1)) == len(flicker)


def test_tracker_counts_evaluations_and_takes_a_changed_confirmation_count():
    tracker = AnswerTracker()
    tracker.update(False, 5)
    assert not tracker.update(True, 5)
    assert tracker.update(True, 2)  # watch_confirmations lowered while running
    assert tracker.evaluations == 3 and tracker.published is True


def test_schedule_queues_each_question_every_watch_period_of_stream_time():
    schedule = WatchSchedule()
    questions = ["a?", " b? "]
    schedule.note_round("front", 1.0, 2.0, questions)
    assert [schedule.pop(), schedule.pop(), schedule.pop()] == [
        ("front", "a?"), ("front", "b?"), None]
    schedule.note_round("front", 2.0, 2.0, questions)  # 1 s after: not due
    assert len(schedule) == 0
    schedule.note_round("front", 3.0, 2.0, questions)
    schedule.note_round("rear", 0.5, 2.0, questions)
    assert len(schedule) == 4
    schedule.note_round("front", 5.0, 2.0, questions)  # still queued: not twice
    assert len(schedule) == 4
    assert schedule.pop() == ("front", "a?")


def test_schedule_starts_over_with_a_restarted_stream():
    schedule = WatchSchedule()
    schedule.note_round("front", 30.0, 10.0, ["a?"])
    schedule.pop()
    schedule.note_round("front", 1.0, 10.0, ["a?"])  # new stream: stream time back to 1 s
    assert schedule.pop() == ("front", "a?")
    schedule.note_round("front", 2.0, 10.0, ["a?"])
    assert schedule.pop() is None


def test_watch_parameters_are_declared_live_with_their_ranges():
    assert SPECS["watch_questions"].default == [] and SPECS["watch_questions"].type_name == (
        "string[]")
    assert (SPECS["watch_period"].minimum, SPECS["watch_period"].maximum) == (0.1, 3600.0)
    assert SPECS["watch_confirmations"].type_name == "int"
    for name in ("watch_questions", "watch_period", "watch_confirmations"):
        assert not SPECS[name].read_only and not SPECS[name].restarts_stream, name


@pytest.mark.parametrize(("questions", "reason"), [
    (["Is a door open?", "  "], "empty question"),
    (["Is a door open?", " Is a door open? "], "more than once"),
    ([f"q{i}?" for i in range(MAX_WATCH_QUESTIONS + 1)], "more than 64"),
    (["x" * (256 * 32 + 1)], "far more than max_question_tokens"),
])
def test_bad_watch_questions_are_refused_with_a_reason(questions, reason):
    values = defaults()
    values["watch_questions"] = questions
    found = problems(values)
    assert any(reason in problem for problem in found), found
    assert watch_problems(values) == found


def test_good_watch_settings_pass():
    values = defaults()
    values.update(watch_questions=["Is a person in front of the robot?", "Is the door open?"],
                  watch_period=0.5, watch_confirmations=1)
    assert problems(values) == []
    values["watch_period"] = 0.05
    assert problems(values) == ["watch_period must be in [0.1, 3600.0], got 0.05"]


def test_watch_event_fields_in_order():
    from svlm_ros.msg import WatchEvent

    assert WatchEvent.get_fields_and_field_types() == {
        "header": "std_msgs/Header",
        "camera": "string",
        "question": "string",
        "answer": "boolean",
        "probability": "float",
        "stream_time": "double",
        "latency": "float",
        "evaluation_time": "float",
        "initial": "boolean",
    }
