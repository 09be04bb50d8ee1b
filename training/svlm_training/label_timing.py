"""When a label file's words are said: cues (``label_files``) -> text events for ``alignment``.

The rule for the clock, per file:

* **Stream time** (the usual case, and what ``svlm-narrate`` writes): time 0 is the first
  camera frame of the bag or video, the stream's origin (``SecondAligner.origin``), as a video
  player counts a subtitle's time from the start of the video.
* **Absolute stamps**: when every cue of the file starts at or after ``ABSOLUTE_FROM`` seconds
  (1e9 s: September 2001 as a Unix time, 31 years as a media time, so no subtitle of a
  recording gets there), the times are stamps on the bag's own clock, the one the frames are
  taken on (``--stamps``: header stamps by default). A file that mixes the two is refused at the
  first cue that disagrees with the first one.

``--labels-offset SECONDS`` is added to every time of the file (a positive offset makes the
labels later), whichever the clock.

Within a cue, the words are taken as said at an even pace from its start to its end, and each
word belongs to the second in which it ends: the rule of the reference's word-timed training
text (a word is part of the first round whose end reaches its end). A cue inside one second
therefore stays whole in that second, a cue ending exactly on a second's boundary belongs to
the second before it (``svlm-narrate``'s ``[s, s + 1]`` cues read back as second ``s``), and a
long subtitle is spread over the seconds it is shown in rather than said all at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from svlm_training.alignment import TextEvent
from svlm_training.label_files import Cue, LabelFileError

#: Cue times from here on are absolute stamps (s), not stream times.
ABSOLUTE_FROM = 1e9
#: A word ending this long (s) after a second's start still belongs to the second before: it
#: puts an end exactly on a boundary before it, whatever the rounding of a large stamp (float64
#: resolves 0.24 us at 1.7e9 s).
BOUNDARY = 1e-4


@dataclass(frozen=True)
class LabelEvents:
    """A label file's text as events.

    Attributes:
        events: One event per word (or one per empty cue, a silent span).
        absolute: The times are stamps on the bag's clock; else stream times (0 = first frame),
            to be given to ``SecondAligner(relative_texts=True)``.
        cues: How many cues the file had.
    """

    events: list[TextEvent]
    absolute: bool
    cues: int


def file_clock(cues: Sequence[Cue], path: str) -> bool:
    """True when ``cues`` are absolute stamps, False for stream times (see the module's rule).

    Raises:
        LabelFileError: some cues are absolute and others are not (names the first that
            disagrees with the file's first cue).
    """
    absolute = cues[0].start >= ABSOLUTE_FROM
    for cue in cues:
        if (cue.start >= ABSOLUTE_FROM) != absolute:
            first = "absolute stamps" if absolute else "stream times (0 = the first frame)"
            raise LabelFileError(
                path, cue.line,
                f"this cue starts at {cue.start:.3f} s but the file's first cue is in {first}; "
                f"a file's times are all stream times or all absolute stamps (>= "
                f"{ABSOLUTE_FROM:.0e} s)")
    return absolute


def cue_events(cues: Sequence[Cue], path: str, offset: float = 0.0) -> LabelEvents:
    """Text events of ``cues`` (their words spread over each cue), shifted by ``offset`` s.

    Words that land before the first frame (a negative offset) are kept: alignment counts
    them as text before the stream, and the build summary shows the count.

    Raises:
        LabelFileError: the file mixes stream times and absolute stamps.
    """
    absolute = file_clock(cues, path)
    events = [event for cue in cues for event in cue_word_events(cue, offset)]
    return LabelEvents(events, absolute, len(cues))


def cue_word_events(cue: Cue, offset: float = 0.0) -> list[TextEvent]:
    """One event per word of ``cue``, at the time the word ends when the cue's words are said
    at an even pace over it (shifted by ``offset`` s); one empty event for an empty cue."""
    start, end = cue.start + offset, cue.end + offset
    words = cue.text.split()
    if not words:
        return [TextEvent(start, "", plain=True)]
    step = (end - start) / len(words)
    events = []
    for index, word in enumerate(words):
        word_start = start + index * step
        word_end = start + (index + 1) * step
        events.append(TextEvent(max(word_start, word_end - BOUNDARY), word, plain=True))
    return events
