"""Score narration of the simulated world against its ground truth, second by second.

A second counts as right when
  * the world was quiet and the narration is silent, or
  * an event happened and the narration names the same event words (kind, colour, shape and
    direction, read by ``parse_event``); other words around them do not matter.

Two partial credits show what a narrator gets right before it gets whole sentences right:
``events_spoken`` (it said something in an event second) and ``colour_right`` (it named the
colour of the shape that the event was about).

Two reference points come with every score: *always silent* (the share of quiet seconds: what
a narrator that never speaks gets) and *chance* (a narrator that is silent as often as the world
is quiet and otherwise names a random event).

Events that need memory (a shape that is back, one that is still after six seconds at rest:
``Event.needs_memory``) are also counted on their own (``memory_seconds``, ``memory_right``).
Questions about the past and their scoring are in ``svlm_ros.sim.questions``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from svlm_ros.sim.world import COLOURS, DIRECTIONS, KINDS, SHAPES, World, parse_event


def second_is_right(world: World, second: int, text: str) -> bool:
    """Whether the narration ``text`` of stream second ``second`` matches the ground truth."""
    event = world.event_at(second)
    if event is None:
        return not text.strip()
    return parse_event(text) == event.words


@dataclass
class SliceScore:
    """Accuracy over ``[start, end)`` stream seconds."""

    start: int
    end: int
    seconds: int
    right: int
    event_seconds: int
    events_right: int
    quiet_seconds: int
    quiet_right: int
    events_spoken: int = 0
    colour_right: int = 0
    memory_seconds: int = 0
    memory_right: int = 0

    @property
    def accuracy(self) -> float:
        return self.right / self.seconds if self.seconds else float("nan")

    @property
    def always_silent(self) -> float:
        return self.quiet_seconds / self.seconds if self.seconds else float("nan")


def score_narration(world: World, narration: Iterable[tuple[int, str]],
                    slice_seconds: int = 600) -> list[SliceScore]:
    """Per-slice accuracy of ``(second, text)`` pairs (stream seconds from 0).

    Seconds without narration (skipped, or beyond the transcript) are not counted.
    """
    if slice_seconds < 1:
        raise ValueError(f"slice_seconds must be >= 1, got {slice_seconds}")
    slices: dict[int, SliceScore] = {}
    for second, text in narration:
        index = int(second) // slice_seconds
        score = slices.setdefault(index, SliceScore(index * slice_seconds,
                                                    (index + 1) * slice_seconds,
                                                    0, 0, 0, 0, 0, 0))
        right = second_is_right(world, int(second), text)
        score.seconds += 1
        score.right += right
        if world.event_at(int(second)) is None:
            score.quiet_seconds += 1
            score.quiet_right += right
        else:
            score.event_seconds += 1
            score.events_right += right
            score.events_spoken += bool(text.strip())
            event = world.event_at(int(second))
            score.colour_right += named_colour(text) == event.colour
            if event.needs_memory:
                score.memory_seconds += 1
                score.memory_right += right
    return [slices[index] for index in sorted(slices)]


def accuracy_by_kind(world: World, narration: Iterable[tuple[int, str]]) -> dict[str, float]:
    """Share of the seconds of each kind of event (``KINDS``) narrated right, for the kinds the
    narration covers. ``enters`` beside ``returns`` shows whether a narrator tells a returning
    shape from a new one or merely says "is back" more often."""
    seconds: dict[str, list[bool]] = {}
    for second, text in narration:
        event = world.event_at(int(second))
        if event is not None:
            seconds.setdefault(event.kind, []).append(second_is_right(world, int(second), text))
    return {kind: sum(right) / len(right) for kind in KINDS if (right := seconds.get(kind))}


def named_colour(text: str) -> str | None:
    """The one colour a narration names, or None (none, or several)."""
    words = set(text.lower().replace(".", " ").replace(",", " ").split())
    named = [colour for colour in COLOURS if colour in words]
    return named[0] if len(named) == 1 else None


def total(scores: list[SliceScore]) -> SliceScore:
    """All slices together."""
    fields = ("seconds", "right", "event_seconds", "events_right", "quiet_seconds",
              "quiet_right", "events_spoken", "colour_right", "memory_seconds", "memory_right")
    sums = {name: sum(getattr(s, name) for s in scores) for name in fields}
    return SliceScore(scores[0].start if scores else 0, scores[-1].end if scores else 0, **sums)


def chance_accuracy(quiet_share: float) -> float:
    """Accuracy of a guesser that is silent with the world's quiet share, otherwise names one of
    the world's possible events uniformly at random."""
    # Every kind but ``still`` names one of four directions.
    per_shape = (len(KINDS) - 1) * len(DIRECTIONS) + 1
    possible_events = per_shape * len(COLOURS) * len(SHAPES)
    return quiet_share**2 + (1 - quiet_share) ** 2 / possible_events
