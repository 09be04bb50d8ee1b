"""The settings a model was trained with, written next to its weights as ``svlm_settings.json``.

A narrator sees what it was trained on only when it runs with the same stream settings: the
frame rate and pixel budget of its dataset, the token budget and text windows of its chunks,
its system prompt, instruction and previous text, and the conversation format its chunks were
rendered in. ``svlm-export`` (and ``svlm-train``'s export, and ``svlm-make-sim-narrator``)
write them beside the weights::

    {
      "format": "streamingvlm-v1",
      "fps": 2.0, "period": 1.0, "max_pixels": 602112, "min_pixels": 78400,
      "max_new_tokens": 20, "text_sink_tokens": 512, "text_window_tokens": 512,
      "vision_window_seconds": 16,
      "system_prompt": "You are a helpful assistant.", "instruction": "Commentate on this match",
      "previous_text": ""
    }

and the node takes them as the defaults of the parameters of the same names. ``format`` names
the conversation format: ``streamingvlm-v1`` is the one this engine renders (the published
StreamingVLM checkpoint's, ``prompt_format.py``); ``svlm-v0`` is this project's earlier one
(its own system turn, the instruction kept in the sink), which a model trained on it must be
retrained to leave. Every key is required and no other key is allowed, so a typing mistake in
a hand-written file is an error, not a setting silently left out.

Plain Python: no torch, no rclpy.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from svlm_ros.engine.vision_input import PATCH_FACTOR

SETTINGS_FILE = "svlm_settings.json"
#: The conversation format this engine renders (``prompt_format.py``).
ENGINE_FORMAT = "streamingvlm-v1"
#: Formats this project has trained models in, with what they were.
KNOWN_FORMATS = {
    ENGINE_FORMAT: "the published StreamingVLM checkpoint's: Qwen's system turn, a previous-text "
                   "turn of its own, the instruction after the first second's video",
    "svlm-v0": "this project's first format: its own system turn and the instruction kept in "
               "the never-evicted sink",
}


class ModelSettingsError(ValueError):
    """A settings file that cannot be read or breaks a rule; the message names file and key."""


@dataclass(frozen=True)
class ModelSettings:
    """What a model was trained with (the fields of ``svlm_settings.json``).

    Attributes:
        format: The conversation format the training chunks were rendered in.
        fps, period: Frames per second and seconds per round of the training data.
        max_pixels, min_pixels: The pixel budget the training frames were resized to.
        max_new_tokens: The per-second token budget of the chunks.
        text_sink_tokens, text_window_tokens: The previous-text cut of the chunks.
        vision_window_seconds: Seconds of video the narrator should keep in its cache.
        system_prompt, instruction, previous_text: The prompts, as the node's parameters of
            the same names take them: an empty system prompt is the built-in one (Qwen's), an
            empty instruction or previous text is none.
    """

    format: str
    fps: float
    period: float
    max_pixels: int
    min_pixels: int
    max_new_tokens: int
    text_sink_tokens: int
    text_window_tokens: int
    vision_window_seconds: int
    system_prompt: str
    instruction: str
    previous_text: str

    def __post_init__(self):
        problem = _first_problem(asdict(self))
        if problem:
            raise ModelSettingsError(problem)

    def parameters(self) -> dict[str, Any]:
        """``{node parameter name: value}``: every field but ``format``."""
        return {name: value for name, value in asdict(self).items() if name != "format"}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Any, source: str = SETTINGS_FILE) -> ModelSettings:
        """Settings from a parsed file; ``source`` names the file in errors.

        Raises:
            ModelSettingsError: not an object, a key missing or unknown, a value of the wrong
                type or out of range.
        """
        if not isinstance(data, dict):
            raise ModelSettingsError(f"{source}: expected a JSON object, got {type(data).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ModelSettingsError(
                f"{source}: unknown key {unknown[0]!r} (the keys are {', '.join(names)})")
        missing = [name for name in names if name not in data]
        if missing:
            raise ModelSettingsError(f"{source}: key {missing[0]!r} is missing")
        values = {}
        for name in names:
            value, problem = _typed(name, data[name])
            if problem:
                raise ModelSettingsError(f"{source}: key {name!r} {problem}")
            values[name] = value
        problem = _first_problem(values)
        if problem:
            raise ModelSettingsError(f"{source}: {problem}")
        return cls(**values)


_FLOATS = ("fps", "period")
_INTS = ("max_pixels", "min_pixels", "max_new_tokens", "text_sink_tokens",
         "text_window_tokens", "vision_window_seconds")
_STRINGS = ("format", "system_prompt", "instruction", "previous_text")


def _typed(name: str, value: Any) -> tuple[Any, str | None]:
    """``(value in its field's type, None)`` or ``(None, what is wrong)``."""
    if name in _FLOATS:
        if isinstance(value, bool) or not isinstance(value, (int, float)) \
                or not math.isfinite(value):
            return None, f"must be a finite number, got {value!r}"
        return float(value), None
    if name in _INTS:
        if isinstance(value, bool) or not isinstance(value, int):
            return None, f"must be a whole number, got {value!r}"
        return value, None
    if not isinstance(value, str):
        return None, f"must be a string, got {value!r}"
    return value, None


def _first_problem(values: dict[str, Any]) -> str | None:
    """The first rule ``values`` (typed) break, naming the key; or None."""
    for name in _FLOATS:
        if values[name] <= 0:
            return f"key {name!r} must be > 0, got {values[name]!r}"
    for name in ("max_new_tokens", "vision_window_seconds"):
        if values[name] < 1:
            return f"key {name!r} must be >= 1, got {values[name]!r}"
    for name in ("text_sink_tokens", "text_window_tokens"):
        if values[name] < 0:
            return f"key {name!r} must be >= 0, got {values[name]!r}"
    if values["min_pixels"] < PATCH_FACTOR**2:
        return f"key 'min_pixels' must be >= {PATCH_FACTOR**2}, got {values['min_pixels']!r}"
    if values["max_pixels"] < values["min_pixels"]:
        return (f"key 'max_pixels' ({values['max_pixels']}) must be >= min_pixels "
                f"({values['min_pixels']})")
    if not values["format"]:
        return f"key 'format' is empty; the engine's format is {ENGINE_FORMAT!r}"
    return None


def settings_path(model_dir: str | os.PathLike) -> Path:
    """Where a model directory's settings file is."""
    return Path(model_dir) / SETTINGS_FILE


def read_settings(model_dir: str | os.PathLike) -> ModelSettings | None:
    """The settings in ``model_dir``'s ``svlm_settings.json``; None when there is no such file.

    Raises:
        ModelSettingsError: the file cannot be read, is not JSON, or breaks a rule; the message
            names the file and the key.
    """
    path = settings_path(model_dir)
    if not path.exists():
        return None
    return read_settings_file(path)


def read_settings_file(path: str | os.PathLike) -> ModelSettings:
    """The settings of one ``svlm_settings.json`` file (see ``read_settings``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ModelSettingsError(f"{path}: cannot be read: {error}") from error
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise ModelSettingsError(f"{path}: not valid JSON: {error}") from error
    return ModelSettings.from_json(data, source=str(path))


def write_settings(model_dir: str | os.PathLike, settings: ModelSettings) -> Path:
    """Write ``settings`` as ``model_dir/svlm_settings.json`` (whole or not at all)."""
    path = settings_path(model_dir)
    tmp = path.with_name(f".{path.name}.incomplete-{os.getpid()}")
    tmp.write_text(json.dumps(settings.to_json(), indent=2, ensure_ascii=False) + "\n",
                   encoding="utf-8")
    tmp.replace(path)
    return path


def format_warning(settings: ModelSettings, source: str = SETTINGS_FILE) -> str | None:
    """What to tell the user when ``settings``' format is not the one the engine renders."""
    if settings.format == ENGINE_FORMAT:
        return None
    known = KNOWN_FORMATS.get(settings.format)
    what = f" ({known})" if known else " (a format this engine does not know)"
    return (
        f"the model was trained on another conversation framing: {source} says format "
        f"{settings.format!r}{what}, but this engine renders {ENGINE_FORMAT!r} "
        f"({KNOWN_FORMATS[ENGINE_FORMAT]}); its narration will not be what it learned until "
        "it is retrained (svlm-train, then svlm-export)"
    )
