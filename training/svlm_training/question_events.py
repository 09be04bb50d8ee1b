"""Questions recorded in a bag (``--question-topic``), placed in the seconds they were asked.

A question topic carries ``std_msgs/String`` messages whose data is a JSON object
``{"question": "...", "answer": "..."}``: what someone asked the robot at that moment and the
answer it should have given from what it had seen (the simulated world records its memory
questions this way). Each becomes the question of the dataset second whose period holds its
time, so that training renders it as StreamingVLM's data does: after that second's time text,
the answer first in the second's assistant text. A second keeps the first question asked in it.
"""

from __future__ import annotations

import bisect
import json
from dataclasses import dataclass

from svlm_training.bag_reading import BagError, BagSource


@dataclass(frozen=True)
class QuestionEvent:
    """A question and its answer, at a time on the frames' clock (s)."""

    time: float
    question: str
    answer: str


def read_question_events(bag: BagSource, topic: str) -> list[QuestionEvent]:
    """Every question of ``topic`` (receive times), in bag order.

    Raises:
        BagError: the topic is missing or not ``std_msgs/String``, or a message is not a JSON
            object with a non-empty ``question`` and ``answer``.
    """
    bag.check_topic(topic, ("std_msgs/msg/String",), "question")
    events = []
    for item in bag.messages(topic):
        try:
            value = json.loads(item.message.data)
            question, answer = str(value["question"]).strip(), str(value["answer"]).strip()
        except (ValueError, TypeError, KeyError) as error:
            raise BagError(f"{bag.path}: question message {item.index} on {topic!r} is not "
                           f'{{"question": ..., "answer": ...}} JSON: {error}') from error
        if not question or not answer:
            raise BagError(f"{bag.path}: question message {item.index} on {topic!r} has an "
                           "empty question or answer")
        events.append(QuestionEvent(item.receive_time, question, answer))
    return events


class QuestionTimeline:
    """Looks up the question asked within a period, each question used once."""

    def __init__(self, events: list[QuestionEvent]):
        self._events = sorted(events, key=lambda event: event.time)
        self._times = [event.time for event in self._events]
        self.placed = 0

    def __len__(self) -> int:
        return len(self._events)

    def asked_in(self, start: float, end: float) -> tuple[str, str]:
        """``(question, answer)`` of the first question with ``start <= time < end``, or
        ``("", "")``."""
        index = bisect.bisect_left(self._times, start)
        if index < len(self._events) and self._events[index].time < end:
            self.placed += 1
            event = self._events[index]
            return event.question, event.answer
        return "", ""
