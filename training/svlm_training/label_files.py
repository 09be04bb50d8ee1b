"""Subtitle-like label files: WebVTT, SRT and JSONL, read into cues and written from them.

A cue is a piece of text with the span of time it belongs to: ``Cue(start, end, text)`` in
seconds. Three formats are read (the format comes from the file name, ``.vtt``, ``.srt``,
``.jsonl``/``.json``, else from the first line: ``WEBVTT`` opens a WebVTT file):

* **WebVTT** (what ``svlm-narrate`` and the StreamingVLM reference inference write): the
  ``WEBVTT`` line, then blocks apart by blank lines; a cue is an optional identifier line, a
  timing line ``[HH:]MM:SS.mmm --> [HH:]MM:SS.mmm [settings]`` and its text lines. ``NOTE``,
  ``STYLE`` and ``REGION`` blocks are skipped; markup (``<v Name>``, ``<i>``, ``<c.x>``, inline
  timestamps) is removed and ``&amp;`` style escapes are decoded.
* **SRT**: blocks of a number line, a timing line ``HH:MM:SS,mmm --> HH:MM:SS,mmm`` and text
  lines; ``<i>``/``<b>``/``<font>`` markup is removed.
* **JSONL**: one JSON object per line with ``start`` and ``end`` (seconds, numbers) and
  ``text`` (a string, '' for a silent span); other keys are ignored, so ``svlm-narrate``'s own
  JSONL (which adds ``silent``, ``latency``...) is read as it is. Blank lines are skipped.

Every problem raises ``LabelFileError`` naming the file and the line (1-based) it is on. The
text of a cue spanning several lines is joined with spaces.

Writing (``write_vtt``, ``write_jsonl``) is the other half of the same concept: what
``svlm-narrate`` writes here is what ``svlm-bag2dataset --labels`` reads back, second for
second.
"""

from __future__ import annotations

import html
import json
import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

FORMATS = ("vtt", "srt", "jsonl")
_SUFFIXES = {".vtt": "vtt", ".webvtt": "vtt", ".srt": "srt", ".jsonl": "jsonl", ".json": "jsonl",
             ".ndjson": "jsonl"}
# [HH:]MM:SS.mmm (WebVTT; hours optional, milliseconds required) or HH:MM:SS,mmm (SRT). Both
# separators are accepted in both formats: hand-edited files mix them up, and the value is
# unambiguous either way.
_TIME = r"(?:(\d+):)?([0-5]?\d):([0-5]\d)[.,](\d{1,3})"
_TIMING = re.compile(rf"^\s*{_TIME}\s*-->\s*{_TIME}(?:\s+.*)?$")
_TAG = re.compile(r"<[^>]*>")


class LabelFileError(ValueError):
    """A label file that cannot be used; the message names the file and the line."""

    def __init__(self, path: str | Path, line: int | None, problem: str):
        where = f"{path}:{line}" if line is not None else str(path)
        super().__init__(f"{where}: {problem}")
        self.path = str(path)
        self.line = line


@dataclass(frozen=True)
class Cue:
    """Text said over ``[start, end]`` seconds; ``line`` is where the cue is in its file."""

    start: float
    end: float
    text: str
    line: int = 0


def label_format(path: str | Path, first_line: str = "") -> str:
    """``vtt``, ``srt`` or ``jsonl`` for a file name (and its first line when the suffix does
    not tell).

    Raises:
        LabelFileError: neither the suffix nor the first line names a format.
    """
    kind = _SUFFIXES.get(Path(path).suffix.lower())
    if kind:
        return kind
    stripped = first_line.lstrip("\ufeff").strip()
    if stripped.startswith("WEBVTT"):
        return "vtt"
    if stripped.startswith("{"):
        return "jsonl"
    if stripped.isdigit():
        return "srt"
    raise LabelFileError(path, None, "unknown label format; name the file .vtt, .srt or .jsonl")


def read_cues(path: str | Path) -> list[Cue]:
    """Every cue of a WebVTT, SRT or JSONL file, in file order.

    Raises:
        LabelFileError: the file cannot be read, or a line breaks its format (the message
            names the line), or it holds no cue at all.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise LabelFileError(path, None, "no such label file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise LabelFileError(path, None, f"cannot be read as UTF-8 text: {error}") from error
    lines = text.splitlines()
    kind = label_format(path, lines[0] if lines else "")
    parse = {"vtt": _parse_vtt, "srt": _parse_srt, "jsonl": _parse_jsonl}[kind]
    cues = parse(path, lines)
    if not cues:
        raise LabelFileError(path, None, f"no cue in this {kind} file")
    return cues


def _seconds(match: re.Match, first_group: int) -> float:
    hours, minutes, seconds, fraction = match.group(*range(first_group, first_group + 4))
    return (int(hours or 0) * 3600 + int(minutes) * 60 + int(seconds)
            + int(fraction.ljust(3, "0")) / 1000)


def _timing(path: Path, number: int, line: str) -> tuple[float, float]:
    match = _TIMING.match(line)
    if match is None:
        raise LabelFileError(path, number, f"expected a timing line like '00:00:01.000 --> "
                                           f"00:00:02.000', got {line.strip()[:80]!r}")
    start, end = _seconds(match, 1), _seconds(match, 5)
    if end < start:
        raise LabelFileError(path, number, f"the cue ends ({end:.3f} s) before it starts "
                                           f"({start:.3f} s)")
    return start, end


def _clean(lines: list[str]) -> str:
    """Cue text lines as one line of plain text: markup removed, escapes decoded."""
    text = " ".join(_TAG.sub("", line).strip() for line in lines)
    return " ".join(html.unescape(text).replace("\u00a0", " ").split())


def _blocks(lines: list[str], first: int = 0) -> Iterable[tuple[int, list[str]]]:
    """``(1-based number of the block's first line, its lines)`` for each block of lines
    apart by blank lines, from line index ``first`` on."""
    block: list[str] = []
    start = 0
    for index in range(first, len(lines)):
        line = lines[index]
        if line.strip():
            if not block:
                start = index + 1
            block.append(line)
        elif block:
            yield start, block
            block = []
    if block:
        yield start, block


def _parse_vtt(path: Path, lines: list[str]) -> list[Cue]:
    if not lines or not re.match(r"^WEBVTT(?:[ \t].*)?$", lines[0].lstrip("\ufeff")):
        raise LabelFileError(path, 1, "a WebVTT file must begin with the line 'WEBVTT'")
    cues = []
    header = True  # the header block runs to the first blank line
    for number, block in _blocks(lines, 0):
        if header:
            header = False
            continue
        head = block[0].strip()
        if head.startswith(("NOTE", "STYLE", "REGION")) and "-->" not in head:
            continue
        if "-->" in head:
            timing_at = 0
        elif len(block) > 1 and "-->" in block[1]:
            timing_at = 1  # an identifier line first
        else:
            raise LabelFileError(path, number, f"expected a cue (an optional identifier, then "
                                               f"a timing line), got {head[:80]!r}")
        start, end = _timing(path, number + timing_at, block[timing_at])
        cues.append(Cue(start, end, _clean(block[timing_at + 1:]), number + timing_at))
    return cues


def _parse_srt(path: Path, lines: list[str]) -> list[Cue]:
    cues = []
    for number, block in _blocks(lines):
        head = block[0].strip()
        if head.isdigit():
            if len(block) < 2:
                raise LabelFileError(path, number, f"cue {head} has no timing line")
            timing_at = 1
        elif "-->" in head:
            timing_at = 0  # a missing counter is harmless; the timing says everything
        else:
            raise LabelFileError(path, number, f"expected a cue number or a timing line, got "
                                               f"{head[:80]!r}")
        start, end = _timing(path, number + timing_at, block[timing_at])
        cues.append(Cue(start, end, _clean(block[timing_at + 1:]), number + timing_at))
    return cues


def _number(path: Path, number: int, item: dict, key: str) -> float:
    value = item.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LabelFileError(path, number, f"{key!r} must be a number of seconds, got {value!r}")
    return float(value)


def json_lines(path: Path, lines: list[str]) -> Iterator[tuple[int, Any]]:
    """``(line number, parsed value)`` for every non-blank line of a JSON-lines file.

    Raises:
        LabelFileError: a line is not valid JSON (the error names it).
    """
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as error:
            raise LabelFileError(path, number, f"not valid JSON: {error.msg} (column "
                                               f"{error.colno})") from None


def _parse_jsonl(path: Path, lines: list[str]) -> list[Cue]:
    cues = []
    for number, item in json_lines(path, lines):
        if not isinstance(item, dict):
            raise LabelFileError(path, number, "expected an object like {\"start\": 0.0, "
                                               "\"end\": 1.0, \"text\": \"...\"}")
        missing = [key for key in ("start", "end", "text") if key not in item]
        if missing:
            raise LabelFileError(path, number, f"key {missing[0]!r} is missing (each line needs "
                                               "start, end and text)")
        start, end = _number(path, number, item, "start"), _number(path, number, item, "end")
        if end < start:
            raise LabelFileError(path, number, f"'end' ({end}) is before 'start' ({start})")
        if not isinstance(item["text"], str):
            raise LabelFileError(path, number, f"'text' must be a string, got {item['text']!r}")
        cues.append(Cue(start, end, " ".join(item["text"].split()), number))
    return cues


def vtt_time(seconds: float) -> str:
    """``HH:MM:SS.mmm`` for a non-negative number of seconds (rounded to the millisecond)."""
    millis = int(round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    return f"{hours:02d}:{minutes:02d}:{millis // 1000:02d}.{millis % 1000:03d}"


def write_vtt(stream: TextIO, cues: Iterable[Cue]) -> None:
    """Write ``cues`` as a WebVTT file; cues without text are left out (a silent span)."""
    stream.write("WEBVTT\n")
    for cue in cues:
        text = " ".join(cue.text.split())
        if not text:
            continue
        # "-->" in the text would read back as a timing line; WebVTT escapes & and <.
        text = html.escape(text, quote=False).replace("-->", "--&gt;")
        stream.write(f"\n{vtt_time(cue.start)} --> {vtt_time(cue.end)}\n{text}\n")


def write_jsonl(stream: TextIO, rows: Iterable[dict]) -> None:
    """Write one JSON object per line; each needs ``start``, ``end`` and ``text``."""
    for row in rows:
        stream.write(json.dumps(row, ensure_ascii=False) + "\n")
