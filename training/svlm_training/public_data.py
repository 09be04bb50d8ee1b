"""The StreamingVLM reference's training JSONL (LiveCC style), read into clips with timed text.

Each line of such a file (``Inf-Stream-Train``, ``Live-WhisperX-526K``) is one training sample:
a conversation of a user message and an assistant message::

    [{"role": "user", "content": [
        {"type": "video", "video": "clips/abc.mp4", "video_start": 12.0, "video_end": 70.0},
        {"type": "text", "text": "..."}]},
     {"role": "assistant", "content": [
        {"type": "text_stream", "text_stream": [[12.3, 12.6, "The"], [12.6, 13.1, "ball"]]}]}]

The video element names the file and the span of it that is the clip; ``text_stream`` lists
``[start, end, text]`` in seconds of the video's own time, one word each (ASR) or longer spans.
As in the reference, a piece of text belongs to the second in which it ends; here that is
``label_timing``'s rule, the one label files follow, with each entry taken as one cue. What
this reader leaves out: the user's query text (this narrator's instruction comes from the model's
settings), ``qa_stream`` questions, and a ``previous`` text of the first turn (the dataset has
no column for it). A line that is a JSON list of numbers (a seek index some copies end with) is
skipped.

A relative video path is looked for under ``video_root`` (``--video-root``), else beside the
JSONL file, else under ``$DATASET_PATH`` (where the reference's own loader looks).

Errors name the file and the line.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from svlm_training.label_files import Cue, LabelFileError, json_lines


@dataclass(frozen=True)
class PublicClip:
    """One sample of a public JSONL file.

    Attributes:
        source: ``file:line`` it came from.
        video: The video file (resolved).
        start, end: The clip's span of the video (s); ``end`` None for the video's end.
        cues: The timed text, in the video's time.
    """

    source: str
    video: Path
    start: float
    end: float | None
    cues: list[Cue]


def _time(value: Any, what: str, path: Path, number: int) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise LabelFileError(path, number, f"{what} must be a number of seconds, got {value!r}")
    return float(value)


def _video_element(conversation: Any, path: Path, number: int) -> dict:
    if not isinstance(conversation, list) or not conversation:
        raise LabelFileError(path, number, "expected a conversation: a JSON list of messages "
                                           "(user, then assistant)")
    for message in conversation:
        if isinstance(message, dict) and message.get("role") == "user":
            for element in message.get("content") or []:
                if isinstance(element, dict) and element.get("type") == "video":
                    return element
    raise LabelFileError(path, number, "no user message with a {\"type\": \"video\"} element")


def _text_stream(conversation: list, path: Path, number: int) -> list:
    for message in conversation:
        if isinstance(message, dict) and message.get("role") == "assistant":
            for element in message.get("content") or []:
                if isinstance(element, dict) and "text_stream" in element:
                    return element["text_stream"]
    raise LabelFileError(path, number, "no assistant message with a 'text_stream' (a list of "
                                       "[start, end, text])")


def resolve_video(name: str, path: Path, number: int, video_root: str | Path | None) -> Path:
    """The video file a line names (see the module's search order).

    Raises:
        LabelFileError: it is in none of the places.
    """
    video = Path(name)
    if video.is_absolute():
        candidates = [video]
    else:
        roots = [Path(video_root)] if video_root else []
        roots.append(path.parent)
        if os.environ.get("DATASET_PATH"):
            roots.append(Path(os.environ["DATASET_PATH"]))
        candidates = [root / video for root in roots]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise LabelFileError(path, number, f"video {name!r} not found (looked at "
                                       f"{', '.join(str(c) for c in candidates)}); give its "
                                       "folder with --video-root")


def parse_line(conversation: Any, path: Path, number: int,
               video_root: str | Path | None = None) -> PublicClip:
    """One parsed line as a clip.

    Raises:
        LabelFileError: a field is missing or malformed, or the video is not found.
    """
    element = _video_element(conversation, path, number)
    name = element.get("video")
    if not isinstance(name, str) or not name:
        raise LabelFileError(path, number, f"the video element's 'video' must be a file path, "
                                           f"got {name!r}")
    start = _time(element.get("video_start", 0.0), "'video_start'", path, number)
    end = element.get("video_end")
    end = None if end is None else _time(end, "'video_end'", path, number)
    if end is not None and end <= start:
        raise LabelFileError(path, number, f"'video_end' ({end}) is not after 'video_start' "
                                           f"({start})")
    stream = _text_stream(conversation, path, number)
    if not isinstance(stream, list):
        raise LabelFileError(path, number, "'text_stream' must be a list of [start, end, text]")
    cues = []
    for position, entry in enumerate(stream):
        if not (isinstance(entry, (list, tuple)) and len(entry) >= 3
                and isinstance(entry[2], str)):
            raise LabelFileError(path, number, f"text_stream entry {position} must be [start, "
                                               f"end, text], got {entry!r:.80}")
        word_start = _time(entry[0], f"text_stream entry {position}'s start", path, number)
        word_end = _time(entry[1], f"text_stream entry {position}'s end", path, number)
        if word_end < word_start:
            raise LabelFileError(path, number, f"text_stream entry {position} ends ({word_end}) "
                                               f"before it starts ({word_start})")
        cues.append(Cue(word_start, word_end, " ".join(entry[2].split()), number))
    video = resolve_video(name, path, number, video_root)
    return PublicClip(f"{path}:{number}", video, start, end, cues)


def read_public_jsonl(path: str | Path, video_root: str | Path | None = None) -> list[PublicClip]:
    """Every clip of a reference-style training JSONL file, in file order.

    Raises:
        LabelFileError: the file cannot be read, a line is not valid JSON or not a sample of
            this format (the message names the line), or it holds no sample.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError:
        raise LabelFileError(path, None, "no such file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise LabelFileError(path, None, f"cannot be read as UTF-8 text: {error}") from error
    clips = []
    for number, item in json_lines(path, lines):
        if isinstance(item, list) and item and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) for x in item):
            continue  # a seek index (byte offsets of the lines), not a sample
        clips.append(parse_line(item, path, number, video_root))
    if not clips:
        raise LabelFileError(path, None, "no sample in this file")
    return clips
