"""Questions about the simulated world's past, with their answers: to train on and to score.

Each question is about the latest shape that left (overall, or to one side), asked when that
leaving is at least ``min_age`` seconds old: past the narrator's vision window, its answer
lives only in the words of the previous text. The answer is one word (a colour or a shape);
an answer is right when it names that word and no other of its kind.

* ``What colour was the last shape that left?``
* ``What shape was the last one that left?``
* ``What colour was the shape that left to the right?`` (the latest to leave on that side)

The evaluation asks them near the end of every pause (the leaving is then nearly a minute
old or more);
training asks them at random seconds (``training_questions``), so the narrator learns to
answer from its cache.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from svlm_ros.sim.world import COLOURS, SHAPES, Event, World

SIDES = ("left", "right", "top", "bottom")


@dataclass(frozen=True)
class MemoryQuestion:
    """A question asked after stream second ``second`` was narrated, whose one-word answer
    left the view ``age`` seconds before."""

    second: int
    question: str
    answer: str
    age: int


def questions_at(world: World, second: int, *, min_age: int) -> list[MemoryQuestion]:
    """Every question that can be asked after ``second``, about leavings at least ``min_age``
    seconds old (none is asked about a leaving newer than that, so that the question never
    refers to something still in the vision window)."""
    leaves = [e for e in world.events(second + 1) if e.kind == "leaves"]
    if not leaves:
        return []
    questions = []

    def ask(text: str, answer: str, event: Event) -> None:
        age = second - event.second
        if age >= min_age:
            questions.append(MemoryQuestion(second, text, answer, age))

    last = leaves[-1]
    ask("What colour was the last shape that left?", last.colour, last)
    ask("What shape was the last one that left?", last.shape, last)
    for side in SIDES:
        on_side = [e for e in leaves if e.direction == side]
        if on_side:
            ask(f"What colour was the shape that left to the {side}?", on_side[-1].colour,
                on_side[-1])
    return questions


#: ``pause_end_questions`` asks the shape question this many seconds before a pause ends and
#: the colour question at its end: a question is held in the stream's vision window (16 s by
#: default) and the next one waits until it has left, so the two are asked that far apart.
SHAPE_QUESTION_LEAD = 20


def pause_end_questions(world: World, seconds: int, *, min_age: int = 50
                        ) -> list[MemoryQuestion]:
    """The last-left shape question ``SHAPE_QUESTION_LEAD`` seconds before the end of every
    pause of the first ``seconds`` seconds and the last-left colour question at its end, about
    a leaving at least ``min_age`` seconds old (long out of the vision window: the answer is
    only in the previous text)."""
    questions = []
    for end in range(seconds):
        if not (world.in_pause(end) and not world.in_pause(end + 1)):
            continue
        for asked, about in ((end - SHAPE_QUESTION_LEAD, "What shape"),
                             (end, "What colour")):
            if world.in_pause(asked):
                questions += [q for q in questions_at(world, asked, min_age=min_age)
                              if q.question.startswith(about) and "last" in q.question]
    return questions


def training_questions(world: World, seconds: int, *, share: float = 0.05, min_age: int = 10,
                       seed: int = 0) -> list[MemoryQuestion]:
    """About ``share`` of the first ``seconds`` seconds get one question (chosen at random,
    ``seed``), and the end of every pause one more."""
    pick = random.Random(f"questions-{world.config.seed}-{seed}")
    questions = []
    for second in range(seconds):
        pause_end = world.in_pause(second) and not world.in_pause(second + 1)
        if pick.random() >= share and not pause_end:
            continue
        candidates = questions_at(world, second, min_age=min_age)
        if candidates:
            questions.append(candidates[pick.randrange(len(candidates))])
    return questions


def _kind(question: MemoryQuestion) -> tuple[str, ...]:
    """The words an answer to ``question`` chooses from: the colours or the shapes."""
    return tuple(COLOURS) if question.answer in COLOURS else SHAPES


def answer_is_right(question: MemoryQuestion, answer: str) -> bool:
    """The answer names the right word and no other of its kind (colour or shape)."""
    kind = _kind(question)
    words = set(answer.lower().replace(".", " ").replace(",", " ").replace("?", " ").split())
    return {word for word in kind if word in words} == {question.answer}


def constant_answer_right(questions: list[MemoryQuestion]) -> int:
    """Questions a narrator that always gives the same answer per kind (colour, shape) gets
    right at best: the reference a learned answer must beat (a tiny narrator that always says
    "circle" gets every circle right)."""
    right = 0
    for kind in {_kind(q) for q in questions}:
        answers = [q.answer for q in questions if _kind(q) == kind]
        right += max(answers.count(word) for word in kind)
    return right


def chance_answers_right(questions: list[MemoryQuestion]) -> float:
    """Expected questions right when each answer is a random word of its kind."""
    return sum(1 / len(_kind(q)) for q in questions)
