"""The narrator's parameter table, its checks and the config it builds (no ROS graph needed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from rcl_interfaces.msg import ParameterType

from svlm_ros.engine.model_settings import ModelSettings
from svlm_ros.engine.prompt_format import DEFAULT_INSTRUCTION, DEFAULT_SYSTEM_PROMPT
from svlm_ros.node import parameters as narrator_params
from svlm_ros.node.camera_specs import camera_specs, derive_camera_name, subscription_topic
from svlm_ros.node.model_defaults import describe_sampling
from svlm_ros.node.parameters import (
    PARAMETERS,
    SPECS,
    batch_cameras,
    defaults,
    parameter_table,
    problems,
    stream_config,
)

SOURCE = Path(__file__).resolve().parents[2]


def with_values(**changes):
    values = defaults()
    values.update(changes)
    return values


def test_defaults_are_valid_and_every_default_fits_its_own_rules():
    assert problems(defaults()) == []
    assert len(SPECS) == len(PARAMETERS)
    for spec in PARAMETERS:
        assert narrator_params.value_problem(spec, spec.default) is None, spec.name
        assert spec.description.endswith("."), spec.name


def test_descriptors_carry_type_range_and_read_only():
    model_path = SPECS["model_path"].descriptor()
    assert model_path.read_only and model_path.type == ParameterType.PARAMETER_STRING
    fps = SPECS["fps"].descriptor()
    assert not fps.read_only and fps.type == ParameterType.PARAMETER_DOUBLE
    assert (fps.floating_point_range[0].from_value, fps.floating_point_range[0].to_value) == (
        0.1,
        60.0,
    )
    depth = SPECS["qos_depth"].descriptor()
    assert depth.integer_range[0].from_value == 1 and depth.integer_range[0].step == 1
    topics = SPECS["camera_topics"].descriptor()
    assert topics.type == ParameterType.PARAMETER_STRING_ARRAY and topics.read_only
    assert "restarts" in SPECS["temperature"].descriptor().additional_constraints
    assert "one of" in SPECS["dtype"].descriptor().additional_constraints
    # What needs the model or the subscriptions rebuilt cannot change at run time.
    for name in ("model_path", "device", "dtype", "attn_implementation", "camera_topics",
                 "camera_names", "image_transports", "qos_reliability", "qos_depth"):
        assert SPECS[name].read_only, name


@pytest.mark.parametrize(
    ("topic", "name"),
    [
        ("/front/image_raw", "front"),
        ("camera/image_raw", "camera"),
        ("/robot/left/image_rect_color", "robot_left"),
        ("/rear/image_raw/compressed", "rear"),
        ("image", "image"),
        ("/cam0", "cam0"),
    ],
)
def test_camera_names_derived_from_topics(topic, name):
    assert derive_camera_name(topic) == name


def test_compressed_transport_subscribes_to_the_compressed_subtopic():
    assert subscription_topic("camera/image_raw", "compressed") == "camera/image_raw/compressed"
    assert subscription_topic("a/compressed", "compressed") == "a/compressed"
    assert subscription_topic("camera/image_raw", "raw") == "camera/image_raw"


def test_camera_specs_one_per_topic():
    cameras = camera_specs(
        with_values(
            camera_topics=["/front/image_raw", "/rear/image_raw"],
            image_transports=["raw", "compressed"],
        )
    )
    assert [(c.name, c.transport, c.subscription_topic) for c in cameras] == [
        ("front", "raw", "/front/image_raw"),
        ("rear", "compressed", "/rear/image_raw/compressed"),
    ]
    # One transport for all, names given.
    cameras = camera_specs(
        with_values(camera_topics=["a", "b"], camera_names=["left", "right"],
                    image_transports=["compressed"])
    )
    assert [(c.name, c.transport) for c in cameras] == [
        ("left", "compressed"), ("right", "compressed")
    ]


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"camera_topics": []}, "camera_topics is empty"),
        ({"camera_topics": ["a", "a"]}, "lists a topic twice"),
        ({"camera_topics": ["a", "b"], "camera_names": ["x"]}, "one name per topic"),
        ({"camera_topics": ["a", "b", "c"], "image_transports": ["raw", "raw"]},
         "one per topic or a single value"),
        ({"camera_topics": ["/left/image_raw", "/left/image_raw/compressed"]}, "set camera_names"),
        ({"camera_names": ["has space"]}, "must be non-empty letters"),
        ({"image_transports": ["theora"]}, "image_transports must be one of"),
        ({"fps": 3.0}, "multiple of the model's temporal patch size 2"),
        ({"fps": 2.5}, "whole number"),
        ({"fps": 1.0, "period": 1.0}, "multiple of the model's temporal patch size 2"),
        ({"min_pixels": 700_000}, "min_pixels <= max_pixels"),
        ({"top_p": 0.0}, "top_p must be -1.0 (from the checkpoint) or in (0.0, 1.0], got 0.0"),
        ({"top_p": -0.5}, "top_p must be -1.0 (from the checkpoint) or in (0.0, 1.0]"),
        ({"top_p": 1.5}, "top_p must be -1.0 (from the checkpoint) or in (0.0, 1.0]"),
        ({"top_p": -1}, "top_p must be a finite double"),
        ({"top_k": -2}, "top_k must be -1 (from the checkpoint) or in [0, 1000000], got -2"),
        ({"top_k": 2.0}, "top_k must be a finite int"),
        ({"previous_text": 3}, "previous_text must be a finite string"),
        ({"temperature": -0.1}, "temperature must be in"),
        ({"max_new_tokens": 0}, "max_new_tokens must be in"),
        ({"fps": 2}, "fps must be a finite double"),
        ({"fps": float("nan")}, "fps must be a finite double"),
        ({"default_camera": "left"}, "default_camera 'left' is not a camera"),
        ({"device": "tpu"}, "device must be auto, cpu, cuda or cuda:N"),
        ({"dtype": "int8"}, "dtype must be one of"),
        ({"qos_reliability": "sometimes"}, "qos_reliability must be one of"),
    ],
)
def test_bad_parameter_sets_are_refused_with_a_reason(changes, reason):
    found = problems(with_values(**changes))
    assert any(reason in problem for problem in found), found


def test_fps_and_period_that_make_whole_video_blocks_are_accepted():
    assert problems(with_values(fps=1.0, period=2.0)) == []
    assert problems(with_values(fps=4.0, period=0.5)) == []
    # A model with another temporal patch size changes the rule.
    assert problems(with_values(fps=3.0), temporal_patch=1) == []


def test_missing_parameters_are_named():
    values = defaults()
    del values["fps"]
    assert problems(values) == ["missing parameters: fps"]


def test_stream_config_from_parameters():
    config = stream_config(
        with_values(fps=1.0, period=2.0, max_new_tokens=7, text_sink_tokens=3,
                    text_window_tokens=5, vision_window_seconds=9, temperature=0.0, top_p=0.5,
                    repetition_penalty=1.2, seed=11, max_question_tokens=40,
                    max_answer_tokens=6, max_pending_seconds=2)
    )  # fmt: skip
    assert (config.fps, config.period, config.max_new_tokens) == (1.0, 2.0, 7)
    assert (config.cache.text_sink_tokens, config.cache.text_window_tokens,
            config.cache.vision_window_seconds) == (3, 5, 9)  # fmt: skip
    assert (config.sampling.temperature, config.sampling.top_p,
            config.sampling.repetition_penalty, config.sampling.seed) == (0.0, 0.5, 1.2, 11)
    assert (config.max_question_tokens, config.max_answer_tokens,
            config.max_pending_seconds) == (40, 6, 2)  # fmt: skip
    # Empty prompts mean the built-in ones.
    assert config.system_prompt == DEFAULT_SYSTEM_PROMPT
    assert config.instruction == DEFAULT_INSTRUCTION
    assert config.previous_text == ""
    custom = stream_config(with_values(system_prompt="S.", instruction="I.",
                                       previous_text="A kitchen."))
    assert (custom.system_prompt, custom.instruction, custom.previous_text) == (
        "S.", "I.", "A kitchen.")


def test_top_k_and_top_p_left_at_minus_one_come_from_the_checkpoint():
    # -1 (the defaults) leaves them to the checkpoint's generation_config.json ...
    sampling = stream_config(defaults()).sampling
    assert (sampling.top_k, sampling.top_p) == (None, None)
    assert problems(with_values(top_k=0, top_p=1.0)) == []
    # ... any other value is used as it is (top_k 0: off).
    sampling = stream_config(with_values(top_k=0, top_p=0.8)).sampling
    assert (sampling.top_k, sampling.top_p) == (0, 0.8)
    assert stream_config(with_values(top_k=7)).sampling.top_k == 7
    # Resolved as generate would: the checkpoint's values, else transformers' 50 and 1.0.
    checkpoint = type("GenerationConfig", (), {"top_k": 20, "top_p": 0.8})()
    assert stream_config(defaults()).sampling.resolved(checkpoint).top_k == 20
    assert stream_config(defaults()).sampling.resolved(None).top_k == 50
    assert stream_config(with_values(top_k=5)).sampling.resolved(checkpoint).top_k == 5


def test_sampling_descriptors_say_what_minus_one_means():
    top_k = SPECS["top_k"].descriptor()
    # A ROS range is one interval, which -1 lies outside: the node's own check enforces it.
    assert top_k.type == ParameterType.PARAMETER_INTEGER and not top_k.integer_range
    assert "-1 or [0, 1000000]; -1: from the checkpoint" in top_k.additional_constraints
    top_p = SPECS["top_p"].descriptor()
    assert not top_p.floating_point_range
    assert "-1.0 or (0.0, 1.0]" in top_p.additional_constraints


def test_the_model_setting_parameters_are_the_settings_file_keys():
    fields = set(ModelSettings.__dataclass_fields__) - {"format"}
    assert set(narrator_params.MODEL_SETTING_PARAMETERS) == fields
    for name in narrator_params.MODEL_SETTING_PARAMETERS:
        assert SPECS[name].restarts_stream and not SPECS[name].read_only, name
        assert narrator_params.MODEL_SETTING_NOTE in SPECS[name].description, name
    assert "svlm_settings.json" in SPECS["model_path"].description


def test_the_sampling_in_use_is_described_with_where_it_came_from():
    from svlm_ros.engine.decoding import SamplingConfig

    sampling = SamplingConfig().resolved(None)
    assert describe_sampling(sampling, defaults()) == (
        "temperature 0.9, top_k 50 (from the checkpoint), top_p 1 (from the checkpoint), "
        "repetition_penalty 1.05")
    chosen = SamplingConfig(top_k=5, top_p=0.5).resolved(None)
    assert describe_sampling(chosen, with_values(top_k=5, top_p=0.5)) == (
        "temperature 0.9, top_k 5, top_p 0.5, repetition_penalty 1.05")
    assert describe_sampling(SamplingConfig(temperature=0.0)) == (
        "greedy (temperature 0), repetition_penalty 1.05")


def test_model_device_auto_resolves_to_what_torch_sees():
    import torch

    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert narrator_params.model_device("auto") == expected
    assert narrator_params.model_device("cpu") == "cpu"


def test_shipped_yaml_lists_every_parameter_with_its_default():
    text = (SOURCE / "config" / "narrator.yaml").read_text()
    values = yaml.safe_load(text)["/**"]["ros__parameters"]
    assert values.pop("use_sim_time") is False
    # The ones a model's svlm_settings.json gives are commented out: a params file that set
    # them would outrank the model's own settings.
    model_settings = set(narrator_params.MODEL_SETTING_PARAMETERS)
    assert values == {k: v for k, v in defaults().items() if k not in model_settings}
    commented = yaml.safe_load("\n".join(
        line.strip().removeprefix("# ") for line in text.splitlines()
        if any(line.strip().startswith(f"# {name}: ") for name in model_settings)))
    assert commented == {k: v for k, v in defaults().items() if k in model_settings}


def test_readme_table_is_the_parameter_table():
    readme = (SOURCE / "README.md").read_text()
    assert parameter_table() in readme, (
        "README's parameter table is out of date; paste narrator_params.parameter_table()"
    )


def test_automatic_torch_threads_leave_the_ros_threads_room():
    # CPU: the cores less two, at least one; GPU: one, two on a machine with 8 or more cores.
    assert [narrator_params.automatic_torch_threads(cores, "cpu") for cores in (1, 2, 3, 4, 16)
            ] == [1, 1, 1, 2, 14]  # fmt: skip
    assert [narrator_params.automatic_torch_threads(cores, "cuda") for cores in (2, 7, 8, 64)
            ] == [1, 1, 2, 2]  # fmt: skip


@pytest.mark.parametrize(
    ("value", "device", "cameras", "attention", "expected"),
    [
        ("auto", "cuda", 2, "sdpa", True),
        ("auto", "cuda", 1, "sdpa", False),  # nothing to batch
        ("auto", "cpu", 4, "sdpa", False),  # a batched step costs about the steps one by one
        ("auto", "cuda", 4, "flash_attention_2", False),  # cannot take the capacity mask
        ("on", "cpu", 1, "sdpa", True),
        ("off", "cuda", 4, "sdpa", False),
    ],
)
def test_batch_cameras_auto_batches_several_cameras_on_a_gpu(value, device, cameras, attention,
                                                             expected):
    assert batch_cameras(value, device, cameras, attention) is expected


def test_decode_path_and_compile_vision_reach_the_stream_config():
    assert stream_config(with_values(decode_path="static")).decode_path == "static"
    assert stream_config(with_values(compile_vision=True)).compile_vision is True
    assert "decode_path" in problems(with_values(decode_path="fast"))[0]
    assert "CUDA" in problems(with_values(decode_path="graphed", device="cpu"))[0]


def test_prefill_path_reaches_the_stream_config_and_flash_attention_is_refused():
    assert stream_config(with_values(prefill_path="compiled")).prefill_path == "compiled"
    assert "prefill_path" in problems(with_values(prefill_path="fast"))[0]
    flash = problems(with_values(prefill_path="static", attn_implementation="flash_attention_2"))
    assert len(flash) == 1 and "prefill_path 'static'" in flash[0]
    flash = problems(with_values(decode_path="graphed", attn_implementation="flash_attention_2",
                                 device="cuda"))
    assert len(flash) == 1 and "decode_path 'graphed'" in flash[0]
    # auto decodes eagerly with flash_attention_2: nothing to refuse.
    assert problems(with_values(attn_implementation="flash_attention_2", device="cuda")) == []
