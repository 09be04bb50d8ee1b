"""Watch questions, node side in plain Python (no rclpy): their parameters and checks, when
they are due, and the hysteresis that turns answers into events.

* ``WATCH_PARAMETERS``: the rows of ``parameters.PARAMETERS`` for the watch questions
  (name, default, description, range); ``watch_problems(values)`` is their part of
  ``parameters.problems``.
* ``WatchSchedule``: after a camera's round, every watch question of that camera is due
  again once ``watch_period`` seconds of stream time passed since its last evaluation; due
  evaluations wait in one queue (a question is never queued twice), so a slow evaluation
  cannot pile up work.
* ``AnswerTracker``: the published answer of one question on one camera. The first
  evaluation publishes the initial answer; later, an answer different from the published one
  is published only when it came ``watch_confirmations`` evaluations in a row (one other
  answer in between starts the count over), so a p(yes) that wavers around one half does not
  make an event per evaluation.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from typing import Any

# A question longer than this many characters per allowed token is refused outright (as ask
# refuses one); the exact token count is checked at the first evaluation.
MAX_QUESTION_CHARS_PER_TOKEN = 32
MAX_WATCH_QUESTIONS = 64

#: ``(name, default, description, options)`` of the watch parameters (``parameters._spec``).
WATCH_PARAMETERS: tuple[tuple[str, Any, str, dict[str, Any]], ...] = (
    ("watch_questions", [], "Yes/no questions (e.g. 'Is a person in front of the robot?') "
     "scored on every camera every watch_period seconds of stream time from the stream's "
     "memory, which they leave untouched (one forward pass each, no decoding); each question's "
     "first answer and its changes are published on events (svlm_ros/WatchEvent). At most "
     f"{MAX_WATCH_QUESTIONS}, distinct, each within max_question_tokens.", {}),
    ("watch_period", 2.0, "Seconds of stream time between two evaluations of the watch "
     "questions on a camera (evaluated after a round, between rounds; a value under period "
     "means after every round).", {"minimum": 0.1, "maximum": 3600.0}),
    ("watch_confirmations", 2, "Evaluations in a row a watch question's new answer must give "
     "before it is published (hysteresis against flicker); 1 publishes every change.",
     {"minimum": 1, "maximum": 100}),
)


def watch_problems(values: Mapping[str, Any]) -> list[str]:
    """Why the watch questions in ``values`` cannot run (empty or repeated questions, too
    many, far too long); empty when they can."""
    questions = values["watch_questions"]
    found = []
    if len(questions) > MAX_WATCH_QUESTIONS:
        found.append(f"watch_questions holds {len(questions)} questions, more than "
                     f"{MAX_WATCH_QUESTIONS}")
    stripped = [question.strip() for question in questions]
    if any(not question for question in stripped):
        found.append("watch_questions must not hold an empty question")
    repeated = sorted({q for q in stripped if q and stripped.count(q) > 1})
    if repeated:
        found.append(f"watch_questions holds {repeated[0]!r} more than once")
    limit = values["max_question_tokens"] * MAX_QUESTION_CHARS_PER_TOKEN
    for question in stripped:
        if len(question) > limit:
            found.append(f"watch question of {len(question)} characters, far more than "
                         f"max_question_tokens={values['max_question_tokens']} tokens")
    return found


class AnswerTracker:
    """The published answer of one watch question on one camera (see the module notes)."""

    def __init__(self) -> None:
        self.published: bool | None = None
        self.evaluations = 0
        self._streak = 0

    def update(self, answer: bool, confirmations: int) -> bool:
        """Count one evaluation's answer; True when ``published`` changed (or was first set)
        and an event is due."""
        self.evaluations += 1
        if self.published is None:
            self.published = answer
            return True
        if answer == self.published:
            self._streak = 0
            return False
        self._streak += 1
        if self._streak < confirmations:
            return False
        self.published = answer
        self._streak = 0
        return True


class WatchSchedule:
    """Which (camera, question) evaluations are due, in the order they fell due."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._queue: deque[tuple[str, str]] = deque()

    def note_round(self, camera: str, stream_time: float, watch_period: float,
                   questions: list[str]) -> None:
        """A round of ``camera`` ended at ``stream_time``: queue its questions when due.

        A stream time before the last evaluation's means the stream started over (new
        settings, the camera clock went back): its questions are due at once.
        """
        last = self._last.get(camera)
        if (last is not None and last <= stream_time
                and stream_time - last < watch_period - 1e-6):
            return
        self._last[camera] = stream_time
        for question in questions:
            item = (camera, question.strip())
            if item not in self._queue:
                self._queue.append(item)

    def pop(self) -> tuple[str, str] | None:
        """The oldest due (camera, question), or None."""
        return self._queue.popleft() if self._queue else None

    def __len__(self) -> int:
        return len(self._queue)
