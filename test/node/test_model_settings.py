"""A model's ``svlm_settings.json``: written and read back, refused with the file and key named
when broken, and merged into the node's parameters (an explicit value wins, with a warning).

No ROS graph needed: ``model_settings`` and ``parameters`` are plain Python.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from svlm_ros.engine.model_settings import (
    ENGINE_FORMAT,
    SETTINGS_FILE,
    ModelSettings,
    ModelSettingsError,
    format_warning,
    read_settings,
    read_settings_file,
    write_settings,
)
from svlm_ros.engine.prompt_format import DEFAULT_INSTRUCTION, DEFAULT_SYSTEM_PROMPT
from svlm_ros.node.model_defaults import model_defaults
from svlm_ros.node.parameters import (
    MODEL_SETTING_PARAMETERS,
    defaults,
    problems,
    stream_config,
)

SOURCE = Path(__file__).resolve().parents[2]

SETTINGS = ModelSettings(
    format=ENGINE_FORMAT, fps=4.0, period=0.5, max_pixels=37632, min_pixels=784,
    max_new_tokens=12, text_sink_tokens=64, text_window_tokens=128, vision_window_seconds=8,
    system_prompt="You watch a kitchen.", instruction="Say what the cook does.",
    previous_text="A kitchen with a stove.",
)  # fmt: skip


def write_raw(directory: Path, data) -> Path:
    path = directory / SETTINGS_FILE
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_settings_round_trip_through_the_file(tmp_path):
    path = write_settings(tmp_path, SETTINGS)
    assert path == tmp_path / SETTINGS_FILE
    assert read_settings(tmp_path) == SETTINGS
    data = json.loads(path.read_text())
    assert list(data) == ["format", "fps", "period", "max_pixels", "min_pixels",
                          "max_new_tokens", "text_sink_tokens", "text_window_tokens",
                          "vision_window_seconds", "system_prompt", "instruction",
                          "previous_text"]  # fmt: skip
    assert data["format"] == "streamingvlm-v1"
    assert [p.name for p in tmp_path.iterdir()] == [SETTINGS_FILE]  # no temporary left
    # Whole numbers for fps and period are read as the floats they are.
    write_raw(tmp_path, {**data, "fps": 4, "period": 1})
    assert (read_settings(tmp_path).fps, read_settings(tmp_path).period) == (4.0, 1.0)


def test_a_model_without_the_file_has_no_settings(tmp_path):
    assert read_settings(tmp_path) is None


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"fps": "2"}, "key 'fps' must be a finite number, got '2'"),
        ({"fps": 0}, "key 'fps' must be > 0"),
        ({"max_pixels": 602112.5}, "key 'max_pixels' must be a whole number"),
        ({"max_new_tokens": True}, "key 'max_new_tokens' must be a whole number"),
        ({"max_new_tokens": 0}, "key 'max_new_tokens' must be >= 1"),
        ({"text_window_tokens": -1}, "key 'text_window_tokens' must be >= 0"),
        ({"min_pixels": 100}, "key 'min_pixels' must be >= 784"),
        ({"min_pixels": 40000}, "key 'max_pixels' (37632) must be >= min_pixels (40000)"),
        ({"system_prompt": None}, "key 'system_prompt' must be a string"),
        ({"format": ""}, "key 'format' is empty"),
        ({"max_pixel": 1}, "unknown key 'max_pixel'"),
        ({"instruction": ...}, "key 'instruction' is missing"),
    ],
)
def test_a_broken_file_is_refused_naming_the_file_and_the_key(tmp_path, change, message):
    data = {**SETTINGS.to_json(), **change}
    data = {key: value for key, value in data.items() if value is not ...}
    path = write_raw(tmp_path, data)
    with pytest.raises(ModelSettingsError) as caught:
        read_settings(tmp_path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [("{not json", "not valid JSON"), ("[1, 2]", "expected a JSON object, got list")],
)
def test_a_file_that_is_no_settings_object_is_refused(tmp_path, text, message):
    path = write_raw(tmp_path, text)
    with pytest.raises(ModelSettingsError, match=message) as caught:
        read_settings_file(path)
    assert str(path) in str(caught.value)


def test_settings_are_checked_when_made_in_code_too():
    with pytest.raises(ModelSettingsError, match="'vision_window_seconds' must be >= 1"):
        replace(SETTINGS, vision_window_seconds=0)


def test_another_format_than_the_engine_renders_is_warned_about():
    assert format_warning(SETTINGS) is None
    old = replace(SETTINGS, format="svlm-v0")
    warning = format_warning(old, "/models/sim/svlm_settings.json")
    assert "trained on another conversation framing" in warning
    assert "/models/sim/svlm_settings.json says format 'svlm-v0'" in warning
    assert "renders 'streamingvlm-v1'" in warning and "retrained" in warning
    assert "does not know" in format_warning(replace(SETTINGS, format="someone-else-v3"))


def test_the_committed_sim_narrator_says_what_it_was_trained_with():
    """Its recipe's narrator settings, in the published checkpoint's format and framing (it was
    retrained in it: no format warning), with the prompts training used."""
    folder = SOURCE / "config" / "sim_narrator"
    settings = read_settings(folder)
    recipe = json.loads((folder / "svlm_recipe.json").read_text())
    assert {k: v for k, v in settings.parameters().items()
            if k in recipe["narrator_settings"]} == recipe["narrator_settings"]
    assert settings.format == "streamingvlm-v1" and format_warning(settings) is None
    assert settings.system_prompt == "You are a helpful assistant."
    assert settings.instruction == ""  # trained without one, as StreamingVLM was
    assert settings.previous_text == ""


# ----- the merge rule: the file gives defaults, an explicit parameter wins ------------------


def test_parameters_nobody_gave_take_the_files_values():
    values = defaults()
    merged = model_defaults(SETTINGS, values, given=set(), source="m/svlm_settings.json")
    assert merged.warnings == []
    assert merged.changes == SETTINGS.parameters()
    values.update(merged.changes)
    assert problems(values) == []
    config = stream_config(values)
    assert (config.fps, config.period, config.max_pixels, config.max_new_tokens) == (
        4.0, 0.5, 37632, 12)
    assert (config.cache.text_sink_tokens, config.cache.text_window_tokens,
            config.cache.vision_window_seconds) == (64, 128, 8)  # fmt: skip
    assert (config.system_prompt, config.instruction, config.previous_text) == (
        SETTINGS.system_prompt, SETTINGS.instruction, SETTINGS.previous_text)
    # Merging again changes nothing.
    assert model_defaults(SETTINGS, values, given=set()).changes == {}


def test_a_given_parameter_wins_with_a_warning_when_it_differs():
    values = {**defaults(), "max_new_tokens": 30, "fps": 4.0, "vision_window_seconds": 16}
    merged = model_defaults(SETTINGS, values, given={"max_new_tokens", "fps",
                                                     "vision_window_seconds"},
                            source="/m/svlm_settings.json")
    assert "max_new_tokens" not in merged.changes and "fps" not in merged.changes
    assert "vision_window_seconds" not in merged.changes
    assert merged.changes["period"] == 0.5  # not given: the file's
    # One warning per given value that differs (fps equals the file's: none for it), naming
    # the parameter, the given value and the file's.
    assert merged.warnings == [
        "max_new_tokens: the given 30 is used, not the 12 the model was trained with "
        "(/m/svlm_settings.json)",
        "vision_window_seconds: the given 16 is used, not the 8 the model was trained with "
        "(/m/svlm_settings.json)",
    ]


def test_an_empty_system_prompt_is_the_built_in_one_an_empty_instruction_is_none():
    reference = replace(SETTINGS, system_prompt=DEFAULT_SYSTEM_PROMPT,
                        instruction=DEFAULT_INSTRUCTION)
    values = {**defaults(), "system_prompt": ""}
    merged = model_defaults(reference, values, given={"system_prompt", "instruction"})
    assert merged.warnings == []  # '' means the built-in system turn, which the file names
    # No instruction (a model trained on the reference's chunks, which had none) is not the
    # reference CLI's: a given '' differs from a file naming it, and a file's '' is kept.
    merged = model_defaults(reference, {**defaults(), "instruction": ""}, given={"instruction"})
    assert [w.split(":")[0] for w in merged.warnings] == ["instruction"]
    merged = model_defaults(replace(SETTINGS, instruction=""), defaults(), given=set())
    assert merged.changes["instruction"] == ""
    assert stream_config({**defaults(), **merged.changes}).instruction == ""
    merged = model_defaults(SETTINGS, values, given={"system_prompt"})
    assert len(merged.warnings) == 1 and merged.warnings[0].startswith(
        "system_prompt: the given '' is used, not the 'You watch a kitchen.'")
    assert merged.changes["instruction"] == SETTINGS.instruction


def test_the_format_warning_comes_first():
    old = replace(SETTINGS, format="svlm-v0")
    merged = model_defaults(old, {**defaults(), "fps": 2.0}, given={"fps"}, source="f.json")
    assert len(merged.warnings) == 2
    assert "trained on another conversation framing" in merged.warnings[0]
    assert merged.warnings[1].startswith("fps: the given 2.0 is used, not the 4.0")


def test_without_a_file_parameters_nobody_gave_go_back_to_the_built_in_defaults():
    values = {**defaults(), **SETTINGS.parameters()}
    merged = model_defaults(None, values, given={"fps"})
    assert merged.warnings == []
    expected = {name: defaults()[name] for name in MODEL_SETTING_PARAMETERS if name != "fps"}
    assert merged.changes == expected
    assert model_defaults(None, defaults(), given=set()) == type(merged)({}, [])
