"""A model's ``svlm_settings.json`` as the node's defaults, and the sampling described.

``model_defaults(settings, values, given)`` merges the settings a model was trained with into the
parameter values: the parameters it names (``MODEL_SETTING_PARAMETERS``) take the file's values
unless they were given explicitly, and a given value that differs from the file's is kept with a
warning. Plain Python (no rclpy); the node applies the result in one parameter set.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from svlm_ros.engine.decoding import SamplingConfig
from svlm_ros.engine.model_settings import SETTINGS_FILE, ModelSettings, format_warning
from svlm_ros.engine.prompt_format import DEFAULT_SYSTEM_PROMPT
from svlm_ros.node.parameters import MODEL_SETTING_PARAMETERS, SPECS


def effective_value(name: str, value: Any) -> Any:
    """What the stream gets from parameter ``name`` set to ``value``: an empty system prompt is
    the built-in one (an empty instruction is none), numbers compare as the parameter's type."""
    if name == "system_prompt":
        return value or DEFAULT_SYSTEM_PROMPT
    if SPECS[name].type_name == "double":
        return float(value)
    return value


@dataclass(frozen=True)
class ModelDefaults:
    """What a model's ``svlm_settings.json`` does to the node's parameters.

    Attributes:
        changes: ``{name: value}`` of the parameters nobody gave that take a new value: the
            file's, or the built-in default when the model has no settings file.
        warnings: One line per given parameter whose value differs from the file's (the
            given one is used), after the format warning when the model was trained on
            another framing than the engine renders.
    """

    changes: dict[str, Any]
    warnings: list[str]


def model_defaults(settings: ModelSettings | None, values: Mapping[str, Any],
                   given: Collection[str], source: str = SETTINGS_FILE) -> ModelDefaults:
    """Merge a model's settings into parameter values: a parameter given explicitly (a params
    file, the command line, a launch file, or set at run time) wins; every other one takes the
    file's value.

    Args:
        settings: The model's settings (``read_settings``), or None when it has none: the
            parameters nobody gave then go back to their built-in defaults.
        values: The parameters' current values.
        given: Names of the parameters given explicitly.
        source: The settings file, for the messages.
    """
    changes: dict[str, Any] = {}
    warnings: list[str] = []
    if settings is not None:
        warning = format_warning(settings, source)
        if warning:
            warnings.append(warning)
    from_file = settings.parameters() if settings is not None else {}
    for name in MODEL_SETTING_PARAMETERS:
        spec = SPECS[name]
        if name in from_file:
            target = from_file[name]
            target = float(target) if spec.type_name == "double" else target
        else:
            target = spec.default
        if name in given:
            if name in from_file and effective_value(name, values[name]) != effective_value(
                    name, target):
                warnings.append(
                    f"{name}: the given {values[name]!r} is used, not the {target!r} the model "
                    f"was trained with ({source})")
        elif values[name] != target or type(values[name]) is not type(target):
            changes[name] = target
    return ModelDefaults(changes, warnings)


def describe_sampling(sampling: SamplingConfig, values: Mapping[str, Any] | None = None) -> str:
    """The narration sampling in words, e.g. ``temperature 0.9, top_k 50 (from the checkpoint),
    top_p 1, repetition_penalty 1.05``; with ``values`` (the parameters), the settings left at
    -1 are marked as the checkpoint's."""
    if sampling.greedy:
        return f"greedy (temperature 0), repetition_penalty {sampling.repetition_penalty:g}"

    def origin(name: str) -> str:
        if values is not None and values.get(name) == SPECS[name].from_model:
            return " (from the checkpoint)"
        return ""

    return (f"temperature {sampling.temperature:g}, top_k {sampling.top_k}{origin('top_k')}, "
            f"top_p {sampling.top_p:g}{origin('top_p')}, repetition_penalty "
            f"{sampling.repetition_penalty:g}")
