"""A procedural camera world with per-second ground truth: the project's stand-in for real data.

Coloured shapes enter the view, move, turn and leave over a background; some seconds are
quiet. Two kinds of event can only be narrated from memory: a shape that *comes back* (it left
``return_after`` to ``return_seconds`` seconds before: the narration's previous text holds the
leaving, long after its frames left the vision window) and a shape that *is still*, said once
when it has not moved for ``still_seconds`` (the vision window must reach back to its last
move; the text cannot tell, as silent seconds leave no words). Everything is a pure function of
the seed: the event timeline is drawn once, second by second, and ``render(t)`` draws the scene
at any time ``t`` (any camera rate, any order), so a 30 Hz camera, a 2 Hz bag and a replay all
see the same world.

Rules that keep the ground truth unambiguous:
  * at most one event per second, and it happens within that second: an object enters (from
    a side, fully in view by the end of the second; it comes back when a shape of the same
    colour and shape left ``return_after`` to ``return_seconds`` seconds before: it ``is back``),
    leaves (fully
    out by the end), or moves one step in a direction (``turns`` when the direction differs
    from its previous move); a shape resting for ``still_seconds`` by the end of a second is
    that second's event (``is still``), once per rest, outside pauses;
  * between events objects stand still, so a quiet second shows nothing new;
  * the shapes in view never share both colour and shape, so "the red square" names one.

The ground-truth sentence of an event second reads e.g. ``a red square enters from the left``,
``the blue circle moves up``, ``the green triangle turns and moves left``, ``the yellow square
leaves to the right``, ``the red circle is back from the top``, ``the blue square is still``;
a quiet second has none. ``parse_event`` reads those words back (for
scoring narration).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

import cv2
import numpy as np

SHAPES = ("square", "circle", "triangle")
COLOURS = {  # name -> RGB
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 200, 30),
}
DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
#: Kinds of event; the last two need memory (``MEMORY_KINDS``).
KINDS = ("enters", "moves", "turns", "leaves", "returns", "still")
MEMORY_KINDS = ("returns", "still")
OPPOSITE = {"left": "right", "right": "left", "up": "down", "down": "up"}
#: World seeds from here on are held out: no training stream may use them, so evaluation and
#: the demo (seed 424242) replay worlds no narrator has seen.
FIRST_HELD_OUT_SEED = 100_000
BACKGROUNDS = ("plain", "gradient", "stripes", "checker")


@dataclass(frozen=True)
class WorldConfig:
    """Shape of the world.

    Attributes:
        seed: Everything (timeline, background) follows from it.
        width, height: Frame size in pixels.
        max_objects: Most shapes in view at once.
        quiet_share: Probability that a second has no event.
        step_fraction: How far a ``moves`` event carries a shape, as a share of the frame width.
        pause_every, pause_seconds: The last ``pause_seconds`` of every ``pause_every`` seconds
            are a pause: nothing happens. What happened before a pause has left the vision
            window by its end and lives only in the narration's previous text (memory
            questions are asked there). ``pause_seconds`` 0 turns pauses off.
        return_after, return_seconds: An entering shape ``is back`` when the same colour
            and shape left ``return_after`` to ``return_seconds`` seconds before (``return_after``
            is past the narrator's 8 s vision window, so only the text remembers the leaving;
            ``return_seconds`` 0: never).
        return_share: Probability that an entry brings back a shape that left in that span,
            when one did (otherwise any free colour and shape enters).
        still_seconds: A shape resting this many seconds by the end of a second is that
            second's event, ``is still`` (0: never).
    """

    seed: int = 0
    width: int = 224
    height: int = 168
    max_objects: int = 3
    quiet_share: float = 0.4
    step_fraction: float = 0.22
    pause_every: int = 300
    pause_seconds: int = 75
    return_after: int = 10
    return_seconds: int = 40
    return_share: float = 0.5
    still_seconds: int = 6

    def __post_init__(self):
        if self.width < 32 or self.height < 32:
            raise ValueError(f"frame must be at least 32x32, got {self.width}x{self.height}")
        if not 1 <= self.max_objects <= len(SHAPES) * len(COLOURS):
            raise ValueError(f"max_objects must be in [1, {len(SHAPES) * len(COLOURS)}]")
        if not 0.0 <= self.quiet_share < 1.0:
            raise ValueError("quiet_share must be in [0, 1)")
        if self.pause_seconds < 0 or (self.pause_seconds and
                                      self.pause_every <= self.pause_seconds):
            raise ValueError("need 0 <= pause_seconds < pause_every")
        if self.return_seconds < 0 or not 0.0 <= self.return_share <= 1.0:
            raise ValueError("need return_seconds >= 0 and return_share in [0, 1]")
        if self.return_seconds and not 1 <= self.return_after <= self.return_seconds:
            raise ValueError("need 1 <= return_after <= return_seconds")
        if self.still_seconds < 0:
            raise ValueError(f"still_seconds must be >= 0, got {self.still_seconds}")


@dataclass(frozen=True)
class Event:
    """What happens in one second. ``kind`` is one of ``KINDS``; ``direction`` is the side
    entered from / left to, or the direction moved ('' for ``still``); ``number`` the
    seconds a ``still`` shape has rested."""

    second: int
    kind: str
    colour: str
    shape: str
    direction: str
    number: int = 0

    @property
    def sentence(self) -> str:
        name = f"{self.colour} {self.shape}"
        if self.kind == "enters":
            return f"a {name} enters from the {self.direction}"
        if self.kind == "leaves":
            return f"the {name} leaves to the {self.direction}"
        if self.kind == "turns":
            return f"the {name} turns and moves {self.direction}"
        if self.kind == "returns":
            return f"the {name} is back from the {self.direction}"
        if self.kind == "still":
            return f"the {name} is still"
        return f"the {name} moves {self.direction}"

    @property
    def needs_memory(self) -> bool:
        """Whether narrating it takes more than the second's own frames."""
        return self.kind in MEMORY_KINDS

    @property
    def words(self) -> tuple[str, str, str, str]:
        """The event words a narration must match: kind, colour, shape, direction (``top`` and
        ``bottom`` read as ``up`` and ``down``, as ``parse_event`` reads them)."""
        direction = {"top": "up", "bottom": "down"}.get(self.direction, self.direction)
        return self.kind, self.colour, self.shape, direction


_EVENT_PATTERN = re.compile(
    r"\b(?P<colour>" + "|".join(COLOURS) + r")\s+(?P<shape>" + "|".join(SHAPES) + r")\s+"
    r"(?:(?:(?P<enters>enters\s+from)|(?P<leaves>leaves\s+to)|(?P<turns>turns\s+and\s+moves)"
    r"|(?P<returns>is\s+back\s+from)|(?P<moves>moves))"
    r"\s+(?:the\s+)?(?P<direction>left|right|up|down|top|bottom)\b"
    r"|(?P<still>is\s+still)\b)"
)


def parse_event(text: str) -> tuple[str, str, str, str] | None:
    """The event words (kind, colour, shape, direction) of a sentence, or None if it names no
    event. Tolerant of case, articles and extra words around the event."""
    match = _EVENT_PATTERN.search(text.lower())
    return None if match is None else _event_words(match)


def parse_events(text: str) -> list[tuple[str, str, str, str]]:
    """The event words of every event a text names, in order (a narration's previous text)."""
    return [_event_words(match) for match in _EVENT_PATTERN.finditer(text.lower())]


def _event_words(match: re.Match) -> tuple[str, str, str, str]:
    kind = next(k for k in KINDS if match.group(k))
    direction = match["direction"] or ""
    direction = {"top": "up", "bottom": "down"}.get(direction, direction)
    return kind, match["colour"], match["shape"], direction


@dataclass
class _Track:
    """One shape's life: where it is at each second boundary while in the world."""

    colour: str
    shape: str
    # (second, x, y): the position at the START of that second; between two entries the shape
    # moves linearly. Coordinates are the shape's centre in pixels, possibly outside the frame.
    keys: list[tuple[int, float, float]] = field(default_factory=list)
    last_direction: str | None = None
    gone: bool = False
    # The first second it rests in (after its latest motion), or when it left (gone).
    rest_from: int = 0

    def position(self, t: float) -> tuple[float, float] | None:
        if not self.keys or t < self.keys[0][0]:
            return None
        for (s0, x0, y0), (s1, x1, y1) in zip(self.keys, self.keys[1:], strict=False):
            if s0 <= t < s1:
                a = (t - s0) / (s1 - s0)
                return x0 + a * (x1 - x0), y0 + a * (y1 - y0)
        if self.gone:
            return None
        return self.keys[-1][1], self.keys[-1][2]


class World:
    """The deterministic world of one seed. Extend the timeline lazily as time is asked for.

    Args:
        config: World settings (the seed among them).
    """

    def __init__(self, config: WorldConfig | None = None):
        self.config = config or WorldConfig()
        cfg = self.config
        self._rng = np.random.default_rng(cfg.seed)
        self.size = max(12, min(cfg.width, cfg.height) // 6)  # half-extent of a shape
        self._tracks: list[_Track] = []
        self._events: dict[int, Event] = {}
        self._seconds = 0  # timeline drawn for [0, _seconds)
        self._background = self._make_background()

    # ----- timeline -------------------------------------------------------------------------
    def event_at(self, second: int) -> Event | None:
        """The event of stream second ``second`` (``[second, second + 1)``), if any."""
        if second < 0:
            return None
        self._extend(second + 1)
        return self._events.get(second)

    def sentence_at(self, second: int) -> str:
        """Ground truth of a second: its event's sentence, or '' when quiet."""
        event = self.event_at(second)
        return event.sentence if event else ""

    def events(self, seconds: int) -> list[Event]:
        """Every event of the first ``seconds`` seconds, in order."""
        self._extend(seconds)
        return [self._events[s] for s in sorted(self._events) if s < seconds]

    def in_pause(self, second: int) -> bool:
        """Whether stream second ``second`` lies in a pause (see ``WorldConfig``)."""
        cfg = self.config
        return cfg.pause_seconds > 0 and (second % cfg.pause_every
                                          >= cfg.pause_every - cfg.pause_seconds)

    def _visible(self) -> list[_Track]:
        return [track for track in self._tracks if not track.gone and track.keys]

    def _extend(self, seconds: int) -> None:
        while self._seconds < seconds:
            self._draw_second(self._seconds)
            self._seconds += 1

    def _draw_second(self, second: int) -> None:
        cfg, rng = self.config, self._rng
        visible = self._visible()
        # The draw happens in pauses too, so that pauses do not shift the rest of the timeline.
        quiet = rng.random() < cfg.quiet_share or self.in_pause(second)
        choices = []
        if len(visible) < cfg.max_objects:
            choices.append("enter")
        if visible:
            choices += ["move", "move", "leave"]
        action = choices[int(rng.integers(len(choices)))] if choices else None
        pick = float(rng.random())  # which shape, drawn whatever happens (same reason)
        if cfg.still_seconds and not self.in_pause(second):
            # A rest reaching still_seconds by this second's end is the second's event.
            due = [t for t in visible if t.rest_from + cfg.still_seconds - 1 == second]
            if due:
                track = due[int(pick * len(due))]
                self._events[second] = Event(second, "still", track.colour, track.shape, "",
                                             cfg.still_seconds)
                return
        if quiet or action is None:
            return
        if action == "enter":
            self._enter(second, visible)
        elif action == "move":
            self._move(second, visible[int(pick * len(visible))])
        else:
            self._leave(second, visible[int(pick * len(visible))])

    def _recently_left(self, second: int) -> dict[tuple[str, str], _Track]:
        """Colour and shape -> a shape that left ``return_after`` to ``return_seconds`` seconds
        before ``second`` (and has not come back since)."""
        cfg = self.config
        if not cfg.return_seconds:
            return {}
        visible = {(t.colour, t.shape) for t in self._visible()}
        # rest_from of a gone shape is the second after its leaving.
        return {(t.colour, t.shape): t for t in self._tracks
                if t.gone and (t.colour, t.shape) not in visible
                and cfg.return_after <= second - t.rest_from + 1 <= cfg.return_seconds}

    def _enter(self, second: int, visible: list[_Track]) -> None:
        cfg, rng, size = self.config, self._rng, self.size
        taken = {(t.colour, t.shape) for t in visible}
        free = [(c, s) for c in COLOURS for s in SHAPES if (c, s) not in taken]
        recent = [key for key in self._recently_left(second) if key not in taken]
        bring_back = rng.random() < cfg.return_share
        pool = recent if recent and bring_back else free
        colour, shape = pool[int(rng.integers(len(pool)))]
        side = ("left", "right", "top", "bottom")[int(rng.integers(4))]
        # Rest points keep a margin so that later steps and exits have room.
        rest_x = float(rng.uniform(2 * size, cfg.width - 2 * size))
        rest_y = float(rng.uniform(2 * size, cfg.height - 2 * size))
        start = {
            "left": (-size - 1.0, rest_y),
            "right": (cfg.width + size + 1.0, rest_y),
            "top": (rest_x, -size - 1.0),
            "bottom": (rest_x, cfg.height + size + 1.0),
        }[side]
        track = _Track(colour, shape, keys=[(second, *start), (second + 1, rest_x, rest_y)],
                       rest_from=second + 1)
        # Whether it comes back follows from the history alone, not from how it was picked.
        kind = "returns" if (colour, shape) in self._recently_left(second) else "enters"
        self._tracks.append(track)
        self._events[second] = Event(second, kind, colour, shape, side)

    def _move(self, second: int, track: _Track) -> None:
        cfg, rng, size = self.config, self._rng, self.size
        _, x, y = track.keys[-1]
        step = cfg.step_fraction * cfg.width
        room = {
            "left": x - step >= size, "right": x + step <= cfg.width - size,
            "up": y - step >= size, "down": y + step <= cfg.height - size,
        }
        options = [d for d, ok in room.items() if ok]
        if not options:
            return  # boxed in (a tiny frame): a quiet second
        direction = options[int(rng.integers(len(options)))]
        dx, dy = DIRECTIONS[direction]
        track.keys.append((second, x, y))
        track.keys.append((second + 1, x + dx * step, y + dy * step))
        turned = track.last_direction is not None and track.last_direction != direction
        track.last_direction = direction
        track.rest_from = second + 1
        kind = "turns" if turned else "moves"
        self._events[second] = Event(second, kind, track.colour, track.shape, direction)

    def _leave(self, second: int, track: _Track) -> None:
        cfg, size = self.config, self.size
        _, x, y = track.keys[-1]
        # Out through the nearest side: the shortest, most natural exit.
        distances = {"left": x, "right": cfg.width - x, "top": y, "bottom": cfg.height - y}
        side = min(distances, key=distances.get)
        end = {
            "left": (-size - 1.0, y), "right": (cfg.width + size + 1.0, y),
            "top": (x, -size - 1.0), "bottom": (x, cfg.height + size + 1.0),
        }[side]
        track.keys.append((second, x, y))
        track.keys.append((second + 1, *end))
        track.gone = True
        track.rest_from = second + 1  # out of view from the next second on
        self._events[second] = Event(second, "leaves", track.colour, track.shape, side)

    # ----- pictures -------------------------------------------------------------------------
    def _make_background(self) -> np.ndarray:
        cfg = self.config
        rng = np.random.default_rng(cfg.seed + 7919)  # its own stream: the timeline is unchanged
        style = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
        self.background_style = style
        # Muted colours, so that the shapes' saturated colours always stand out.
        base = rng.integers(90, 170, 3).astype(np.float32)
        other = np.clip(base + rng.integers(-50, 50, 3), 60, 200).astype(np.float32)
        ys, xs = np.mgrid[0 : cfg.height, 0 : cfg.width]
        if style == "plain":
            weight = np.zeros((cfg.height, cfg.width), np.float32)
        elif style == "gradient":
            weight = (xs / max(1, cfg.width - 1)).astype(np.float32)
        elif style == "stripes":
            weight = ((xs // 16) % 2).astype(np.float32)
        else:
            weight = (((xs // 20) + (ys // 20)) % 2).astype(np.float32)
        picture = base * (1 - weight[..., None]) + other * weight[..., None]
        return picture.astype(np.uint8)

    def render(self, t: float) -> np.ndarray:
        """The camera picture at stream time ``t`` seconds: RGB uint8 ``(height, width, 3)``."""
        if not math.isfinite(t) or t < 0:
            raise ValueError(f"time must be finite and >= 0, got {t}")
        self._extend(int(t) + 1)
        picture = self._background.copy()
        for track in self._tracks:
            where = track.position(t)
            if where is not None:
                self._draw(picture, track, where)
        return picture

    def _draw(self, picture: np.ndarray, track: _Track, where: tuple[float, float]) -> None:
        colour = COLOURS[track.colour]
        x, y, s = int(round(where[0])), int(round(where[1])), self.size
        if track.shape == "square":
            cv2.rectangle(picture, (x - s, y - s), (x + s, y + s), colour, thickness=-1)
        elif track.shape == "circle":
            cv2.circle(picture, (x, y), s, colour, thickness=-1, lineType=cv2.LINE_AA)
        else:
            points = np.array([(x, y - s), (x - s, y + s), (x + s, y + s)], np.int32)
            cv2.fillPoly(picture, [points], colour, lineType=cv2.LINE_AA)
