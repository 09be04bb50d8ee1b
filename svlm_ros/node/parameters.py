"""Every parameter of the narrator node: declared, checked and turned into engine config here.

``PARAMETERS`` is the one list of parameters (name, default, description, range, whether a change
needs a node restart or restarts the streams). The node declares exactly these, README.md and
``config/narrator.yaml`` document exactly these (a test compares them).

Plain Python: nothing here imports rclpy; ``ParameterSpec.descriptor()`` imports the
``rcl_interfaces`` message package only when called. The checks work on a ``{name: value}``
mapping, so the node's on-set callback and the unit tests run the very same code:

* ``problems(values)`` lists every reason a parameter set is unusable (ranges, choices, list
  lengths, camera names, and the cross-parameter rules of ``StreamConfig``);
* ``stream_config(values)`` builds the engine's ``StreamConfig``;
* ``camera_specs.camera_specs(values)`` turns the three camera lists into one ``CameraSpec``
  per camera;
* ``model_defaults.model_defaults(settings, values, given)`` merges a model's
  ``svlm_settings.json`` into the values.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from typing import Any

from svlm_ros.engine.cache_policy import CachePolicyConfig
from svlm_ros.engine.decoding import SamplingConfig
from svlm_ros.engine.model_loading import ATTENTION_CHOICES, DTYPE_CHOICES
from svlm_ros.engine.model_settings import SETTINGS_FILE, ModelSettings
from svlm_ros.engine.prompt_format import DEFAULT_INSTRUCTION, DEFAULT_SYSTEM_PROMPT
from svlm_ros.engine.static_decode import DECODE_PATHS, FIXED_SHAPE_KERNELS
from svlm_ros.engine.static_prefill import PREFILL_PATHS
from svlm_ros.engine.streaming_session import StreamConfig
from svlm_ros.engine.vision_input import PATCH_FACTOR
from svlm_ros.node.camera_specs import TRANSPORT_CHOICES, camera_specs
from svlm_ros.node.held_questions import ASK_PARAMETERS
from svlm_ros.node.watch_events import WATCH_PARAMETERS, watch_problems

RELIABILITY_CHOICES = ("auto", "best_effort", "reliable")
BATCH_CAMERAS_CHOICES = ("auto", "on", "off")
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
# Temporal patch size of Qwen2.5-VL's vision encoder; the node re-checks against the loaded
# checkpoint's own value when it configures.
DEFAULT_TEMPORAL_PATCH = 2


@dataclass(frozen=True)
class ParameterSpec:
    """One node parameter.

    Attributes:
        name: Parameter name.
        default: Declared default; its Python type fixes the ROS parameter type (``list`` of
            ``str`` means a string array).
        description: One line for the descriptor, README and the YAML file.
        read_only: Fixed for the life of the node (model or subscriptions depend on it).
        restarts_stream: Changing it at run time rebuilds every camera's stream (the model
            stays loaded, the streams' memory starts empty).
        minimum: Smallest allowed number (inclusive unless ``exclusive_minimum``), or None.
        maximum: Largest allowed number (inclusive), or None.
        choices: Allowed strings (for a string array: allowed items), or empty.
        from_model: A value outside the range that means "take it from the checkpoint" (e.g.
            ``top_k`` -1), or None. The descriptor then carries no range (ROS ranges are one
            interval); the node's own check enforces it.
        exclusive_minimum: ``minimum`` itself is not allowed (``top_p`` is in (0, 1]).
    """

    name: str
    default: Any
    description: str
    read_only: bool = False
    restarts_stream: bool = False
    minimum: float | int | None = None
    maximum: float | int | None = None
    choices: tuple[str, ...] = ()
    from_model: float | int | None = None
    exclusive_minimum: bool = False

    @property
    def type_name(self) -> str:
        """``bool``, ``int``, ``double``, ``string`` or ``string[]`` (ROS parameter types)."""
        if isinstance(self.default, bool):
            return "bool"
        if isinstance(self.default, int):
            return "int"
        if isinstance(self.default, float):
            return "double"
        if isinstance(self.default, list):
            return "string[]"
        return "string"

    @property
    def range_text(self) -> str:
        """The allowed values in words, e.g. ``[0.1, 60.0]`` or ``raw | compressed``."""
        if self.choices:
            return " | ".join(self.choices)
        if self.minimum is not None and self.maximum is not None:
            interval = f"{'(' if self.exclusive_minimum else '['}{self.minimum}, {self.maximum}]"
            if self.from_model is not None:
                return f"{self.from_model} or {interval}"
            return interval
        return ""

    def descriptor(self):
        """The ``rcl_interfaces/ParameterDescriptor`` the node declares this parameter with."""
        from rcl_interfaces.msg import (
            FloatingPointRange,
            IntegerRange,
            ParameterDescriptor,
            ParameterType,
        )

        types = {
            "bool": ParameterType.PARAMETER_BOOL,
            "int": ParameterType.PARAMETER_INTEGER,
            "double": ParameterType.PARAMETER_DOUBLE,
            "string": ParameterType.PARAMETER_STRING,
            "string[]": ParameterType.PARAMETER_STRING_ARRAY,
        }
        descriptor = ParameterDescriptor(
            name=self.name,
            type=types[self.type_name],
            description=self.description,
            read_only=self.read_only,
        )
        notes = []
        if self.choices:
            notes.append(f"one of: {', '.join(self.choices)}")
        if self.restarts_stream:
            notes.append("a change restarts every camera's stream (memory starts empty)")
        if self.read_only:
            notes.append("read-only: set it at start-up")
        if self.from_model is not None:
            notes.append(f"{self.range_text}; {self.from_model}: from the checkpoint")
        descriptor.additional_constraints = "; ".join(notes)
        if self.minimum is not None and self.maximum is not None and self.from_model is None:
            if self.type_name == "int":
                descriptor.integer_range = [
                    IntegerRange(from_value=int(self.minimum), to_value=int(self.maximum), step=1)
                ]
            elif self.type_name == "double":
                descriptor.floating_point_range = [
                    FloatingPointRange(
                        from_value=float(self.minimum), to_value=float(self.maximum), step=0.0
                    )
                ]
        return descriptor


#: Appended to the description of the parameters a model's ``svlm_settings.json`` sets.
MODEL_SETTING_NOTE = f"Default: the model's {SETTINGS_FILE} when it has one."


def _spec(name: str, default: Any, description: str, *, model_setting: bool = False,
          **options: Any) -> ParameterSpec:
    if model_setting:
        description = f"{description} {MODEL_SETTING_NOTE}"
    return ParameterSpec(name, default, description, **options)


PARAMETERS: tuple[ParameterSpec, ...] = (
    # --- the model (a change needs a new process) ---------------------------------------------
    _spec("model_path", "", "Checkpoint directory (from_pretrained layout) loaded on configure; "
          f"its {SETTINGS_FILE}, when it has one (svlm-export writes it), gives the defaults of "
          "the settings the model was trained with (fps, pixels, windows, prompts); empty: "
          "configure fails and asks answer 'model not loaded'.", read_only=True),
    _spec("device", "auto", "Torch device: auto (cuda when available, else cpu), cpu, cuda or "
          "cuda:N.", read_only=True),
    _spec("dtype", "auto", "Model dtype; auto is bfloat16 on CUDA and float32 on the CPU.",
          read_only=True, choices=DTYPE_CHOICES),
    _spec("attn_implementation", "auto", "Attention kernel of the language model; auto is "
          "sdpa (flash/efficient kernels on CUDA); the vision tower uses flash-attn when "
          "installed.", read_only=True,
          choices=ATTENTION_CHOICES),
    _spec("torch_threads", 0, "CPU threads torch may use for one operation; 0 is automatic: "
          "on the CPU the cores less two for the ROS threads (at least 1), on a GPU 1 (2 with "
          "8 or more cores). More threads than free cores make OpenMP threads wait for each "
          "other (10x slower rounds on a shared 2-core machine).", read_only=True,
          minimum=0, maximum=256),
    _spec("decode_path", "auto", "How narration tokens are decoded: auto (graphed on CUDA, "
          "eager on the CPU), eager (the model's forward over the live cache), static (one "
          "fixed-shape step over the preallocated cache, token choice on the device), graphed "
          "(that step as a CUDA graph; CUDA only) or compiled (torch.compile).", read_only=True,
          choices=DECODE_PATHS),
    _spec("prefill_path", "eager", "How a round's prompt goes through the language model: "
          "eager (the model's forward over the live cache), static (the prompt padded to a "
          "64-token bucket, one fixed-shape pass over the preallocated cache) or compiled (that "
          "pass through torch.compile: one compile per bucket, at the first rounds). Eager by "
          "default: whether compiling pays on a GPU is unmeasured; measure it with svlm-bench "
          "--prefill-path compiled.", read_only=True, choices=PREFILL_PATHS),
    _spec("compile_vision", False, "Run the vision encoder through torch.compile (one compile "
          "per frame size, at the first round). Off by default: on an H100 the compiled 7B "
          "encoder measured slower than the eager one; measure yours with svlm-bench "
          "--compile-vision.", read_only=True),
    _spec("batch_cameras", "auto", "Decode the cameras whose seconds are due together as one "
          "batch (on a GPU four cameras cost about twice one): auto (on with 2 or more cameras "
          "on CUDA with sdpa or eager attention), on, or off (one camera after another). "
          "Batched rounds use the fixed-shape step whatever decode_path says.", read_only=True,
          choices=BATCH_CAMERAS_CHOICES),
    _spec("batch_gather_seconds", 0.1, "With batched cameras: how long a completed second "
          "may wait for the seconds of the other live cameras (a frame in the last period), so "
          "that they decode in one batch instead of one after another.", read_only=True,
          minimum=0.0, maximum=1.0),
    _spec("autostart", True, "Configure and activate at start-up (no lifecycle manager needed).",
          read_only=True),
    # --- cameras (subscriptions are made once) --------------------------------------------------
    _spec("camera_topics", ["camera/image_raw"], "Image topics, one stream per camera. Relative "
          "names resolve in the node's namespace. For compressed transport give the base topic; "
          "'/compressed' is appended (image_transport's convention).", read_only=True),
    _spec("camera_names", [], "Camera names (used in messages and by ask), one per topic; empty: "
          "derived from the topics ('/front/image_raw' is 'front').", read_only=True),
    _spec("image_transports", ["raw"], "Per camera: raw (sensor_msgs/Image) or compressed "
          "(sensor_msgs/CompressedImage, jpeg/png); one value applies to all cameras.",
          read_only=True, choices=TRANSPORT_CHOICES),
    _spec("qos_reliability", "auto", "Reliability of the image subscriptions: auto takes "
          "what each topic's publishers offer (reliable when all are, else best_effort; "
          "re-checked every 2 s, shown in /diagnostics); best_effort or reliable to force it.",
          read_only=True, choices=RELIABILITY_CHOICES),
    _spec("qos_depth", 5, "History depth of the image subscriptions (keep-last).",
          read_only=True, minimum=1, maximum=1000),
    _spec("max_input_pixels", 4096 * 4096, "Largest incoming image (width*height) accepted; "
          "larger images are rejected before any decoding.", minimum=1, maximum=1 << 30),
    _spec("default_camera", "", "Camera that ask uses when a request names none; empty: the "
          "first camera."),
    _spec("period_close_slack", 0.25, "Seconds after a period's end (camera clock, extrapolated "
          "on the node clock from the newest frame) after which it is narrated without waiting "
          "for a frame of the next period; later frames of a closed period are dropped.",
          minimum=0.0, maximum=10.0),
    _spec("status_period", 1.0, "Seconds between status messages on status and /diagnostics.",
          read_only=True, minimum=0.1, maximum=60.0),
    # --- the stream (a change rebuilds the streams; the model stays loaded) ---------------------
    _spec("fps", 2.0, "Frames per second of stream time given to the model; fps*period must be "
          "a whole multiple of the temporal patch size (2).", restarts_stream=True,
          minimum=0.1, maximum=60.0, model_setting=True),
    _spec("period", 1.0, "Seconds of stream per narration (one engine round per period).",
          restarts_stream=True, minimum=0.1, maximum=60.0, model_setting=True),
    _spec("max_pixels", 602112, "Pixel budget per frame for the vision encoder (602112 = 768 "
          "tokens per two frames); frames are resized to fit.", restarts_stream=True,
          minimum=PATCH_FACTOR * PATCH_FACTOR, maximum=16777216, model_setting=True),
    _spec("min_pixels", 78400, "Smallest frame area given to the vision encoder; smaller frames "
          "are upscaled. Must be <= max_pixels.", restarts_stream=True,
          minimum=PATCH_FACTOR * PATCH_FACTOR, maximum=16777216, model_setting=True),
    _spec("max_new_tokens", 20, "Most tokens generated per narration.", restarts_stream=True,
          minimum=1, maximum=1024, model_setting=True),
    _spec("text_sink_tokens", 512, "First tokens of the previous-text block that are never "
          "evicted.", restarts_stream=True, minimum=0, maximum=65536, model_setting=True),
    _spec("text_window_tokens", 512, "Most recent tokens of the previous-text block that are "
          "kept.", restarts_stream=True, minimum=0, maximum=65536, model_setting=True),
    _spec("vision_window_seconds", 16, "Seconds of video (whole rounds) kept in the cache.",
          restarts_stream=True, minimum=1, maximum=3600, model_setting=True),
    _spec("system_prompt", "", "System turn (part of the attention sink); empty: the built-in "
          f"one, StreamingVLM's '{DEFAULT_SYSTEM_PROMPT}'.", restarts_stream=True,
          model_setting=True),
    _spec("instruction", DEFAULT_INSTRUCTION, "Task instruction after the first second's video "
          "(it leaves the cache with that second); the default is the reference CLI's; empty: "
          "none, as StreamingVLM's training chunks (a model trained without one says so in its "
          "svlm_settings.json).", restarts_stream=True, model_setting=True),
    _spec("previous_text", "", "Text the previous-text turn starts with (a scene description or "
          "task context; it counts toward the text windows); empty: none.",
          restarts_stream=True, model_setting=True),
    _spec("temperature", 0.9, "Sampling temperature of narration; 0 is greedy.",
          restarts_stream=True, minimum=0.0, maximum=5.0),
    _spec("top_k", -1, "Top-k sampling of narration: the k likeliest tokens; 0 is off; -1: the "
          "checkpoint's generation_config.json top_k (transformers' 50 where it sets none), as "
          "generate takes it.", restarts_stream=True, minimum=0, maximum=1000000, from_model=-1),
    _spec("top_p", -1.0, "Nucleus sampling mass of narration (1 keeps every token); -1: the "
          "checkpoint's generation_config.json top_p (1.0 where it sets none), as generate "
          "takes it.", restarts_stream=True, minimum=0.0, maximum=1.0, from_model=-1.0,
          exclusive_minimum=True),
    _spec("repetition_penalty", 1.05, "Repetition penalty of narration and answers (1 is off).",
          restarts_stream=True, minimum=0.01, maximum=10.0),
    _spec("seed", 0, "Random seed of narration sampling (per stream).", restarts_stream=True,
          minimum=0, maximum=2**31 - 1),
    _spec("max_question_tokens", 256, "Longest question ask accepts, in tokens (chat framing "
          "included).", restarts_stream=True, minimum=1, maximum=8192),
    _spec("max_answer_tokens", 64, "Most tokens of an answer (answers are greedy); bounds how "
          "long one ask holds the model.", restarts_stream=True, minimum=1, maximum=4096),
    _spec("max_pending_seconds", 4, "Completed seconds queued per camera before the oldest is "
          "dropped; the worker always narrates the newest and skips the rest.",
          restarts_stream=True, minimum=1, maximum=600),
    # --- asks and watch questions (may be set while running; rows in their modules) ---------
    *(_spec(name, default, text, **options) for name, default, text, options in ASK_PARAMETERS),
    *(_spec(name, default, text, **options) for name, default, text, options in WATCH_PARAMETERS),
)

SPECS: dict[str, ParameterSpec] = {spec.name: spec for spec in PARAMETERS}
STREAM_PARAMETERS = frozenset(spec.name for spec in PARAMETERS if spec.restarts_stream)
#: The parameters whose defaults a model's ``svlm_settings.json`` gives (its keys but format).
MODEL_SETTING_PARAMETERS = tuple(
    f.name for f in dataclass_fields(ModelSettings) if f.name != "format")


def defaults() -> dict[str, Any]:
    """``{name: declared default}`` for every parameter (lists copied)."""
    return {spec.name: list(spec.default) if isinstance(spec.default, list) else spec.default
            for spec in PARAMETERS}


def value_problem(spec: ParameterSpec, value: Any) -> str | None:
    """Why ``value`` is not allowed for ``spec`` (type, range, choices), or None."""
    expected = spec.type_name
    if expected == "bool":
        ok_type = isinstance(value, bool)
    elif expected == "int":
        ok_type = isinstance(value, int) and not isinstance(value, bool)
    elif expected == "double":
        ok_type = isinstance(value, float) and math.isfinite(value)
    elif expected == "string[]":
        ok_type = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
    else:
        ok_type = isinstance(value, str)
    if not ok_type:
        return f"{spec.name} must be a finite {expected}, got {value!r}"
    if spec.minimum is not None and spec.maximum is not None and expected in ("int", "double"):
        if spec.from_model is not None and value == spec.from_model:
            return None
        low_ok = spec.minimum < value if spec.exclusive_minimum else spec.minimum <= value
        if not (low_ok and value <= spec.maximum):
            if spec.from_model is not None:
                return (f"{spec.name} must be {spec.from_model} (from the checkpoint) or in "
                        f"{spec.range_text.split(' or ', 1)[1]}, got {value!r}")
            return f"{spec.name} must be in {spec.range_text}, got {value!r}"
    if spec.choices:
        items = value if expected == "string[]" else [value]
        bad = [item for item in items if item not in spec.choices]
        if bad:
            return f"{spec.name} must be one of {', '.join(spec.choices)}; got {bad[0]!r}"
    return None


def model_device(value: str) -> str:
    """Resolve ``auto`` to ``cuda`` when torch sees a GPU, else ``cpu``; other values pass."""
    if value != "auto":
        return value
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def batch_cameras(value: str, device_type: str, cameras: int, attn_implementation: str) -> bool:
    """Whether the node decodes its cameras as one batch (``batch_cameras``'s ``auto`` resolved).

    ``auto`` batches where it pays and works: several cameras, a GPU (on the CPU a batched step
    costs about as much as the steps one by one) and an attention kernel that takes the
    fixed-shape step's mask (not flash_attention_2).
    """
    if value == "on":
        return True
    if value == "off":
        return False
    return cameras > 1 and device_type == "cuda" and attn_implementation in FIXED_SHAPE_KERNELS


def automatic_torch_threads(cores: int, device_type: str) -> int:
    """Torch threads for ``torch_threads: 0``.

    On the CPU torch gets the cores less two, which the ROS threads (image callbacks, the
    executor, DDS) need; at least one. With the model on a GPU the CPU threads only launch
    kernels and prepare frames: one, or two on a machine with 8 or more cores.

    Args:
        cores: CPU cores this process may run on.
        device_type: ``cpu`` or ``cuda``.
    """
    if device_type != "cpu":
        return 2 if cores >= 8 else 1
    return max(1, cores - 2)


def stream_config(values: Mapping[str, Any]) -> StreamConfig:
    """The engine's ``StreamConfig`` from parameter values.

    Raises:
        ValueError: the values break one of the config's own rules (e.g. min_pixels >
            max_pixels, top_p not in (0, 1]).
    """
    return StreamConfig(
        fps=float(values["fps"]),
        period=float(values["period"]),
        max_pixels=int(values["max_pixels"]),
        min_pixels=int(values["min_pixels"]),
        max_new_tokens=int(values["max_new_tokens"]),
        system_prompt=values["system_prompt"] or DEFAULT_SYSTEM_PROMPT,
        instruction=values["instruction"],
        previous_text=values["previous_text"],
        cache=CachePolicyConfig(
            text_sink_tokens=int(values["text_sink_tokens"]),
            text_window_tokens=int(values["text_window_tokens"]),
            vision_window_seconds=int(values["vision_window_seconds"]),
        ),
        sampling=SamplingConfig(
            temperature=float(values["temperature"]),
            top_k=None if values["top_k"] == SPECS["top_k"].from_model else int(values["top_k"]),
            top_p=(None if values["top_p"] == SPECS["top_p"].from_model
                   else float(values["top_p"])),
            repetition_penalty=float(values["repetition_penalty"]),
            seed=int(values["seed"]),
        ),
        max_question_tokens=int(values["max_question_tokens"]),
        max_answer_tokens=int(values["max_answer_tokens"]),
        max_pending_seconds=int(values["max_pending_seconds"]),
        decode_path=values["decode_path"],
        compile_vision=bool(values["compile_vision"]),
        prefill_path=values["prefill_path"],
    )


def frames_per_round_problem(fps: float, period: float, temporal_patch: int) -> str | None:
    """Why ``fps`` and ``period`` cannot make video blocks, or None."""
    frames = fps * period
    if abs(frames - round(frames)) > 1e-6 or round(frames) < 1:
        return (
            f"fps * period = {fps:g} * {period:g} = {frames:g} frames per round; it must be a "
            "whole number"
        )
    if round(frames) % temporal_patch:
        return (
            f"fps * period = {round(frames)} frames per round must be a multiple of the model's "
            f"temporal patch size {temporal_patch} (e.g. fps=2.0 with period=1.0)"
        )
    return None


def problems(
    values: Mapping[str, Any], *, temporal_patch: int = DEFAULT_TEMPORAL_PATCH
) -> list[str]:
    """Every reason the parameter set ``values`` cannot run; empty when it can.

    Args:
        values: ``{name: value}`` for every parameter in ``PARAMETERS``.
        temporal_patch: The model's temporal patch size (frames per video grid step).
    """
    found: list[str] = []
    missing = [spec.name for spec in PARAMETERS if spec.name not in values]
    if missing:
        return [f"missing parameters: {', '.join(missing)}"]
    for spec in PARAMETERS:
        problem = value_problem(spec, values[spec.name])
        if problem:
            found.append(problem)
    if found:
        return found  # cross checks would only repeat these in other words
    if not DEVICE_PATTERN.match(values["device"]):
        found.append(f"device must be auto, cpu, cuda or cuda:N; got {values['device']!r}")
    if values["decode_path"] == "graphed" and values["device"] == "cpu":
        found.append("decode_path 'graphed' captures CUDA graphs and needs a CUDA device; use "
                     "'static' or 'compiled' on the CPU")
    if values["attn_implementation"] == "flash_attention_2":
        for name, eager_only in (("decode_path", ("eager", "auto")), ("prefill_path", ("eager",))):
            if values[name] not in eager_only:
                found.append(f"{name} {values[name]!r} attends over the preallocated cache with a "
                             "mask, which flash_attention_2 cannot take; use attn_implementation "
                             f"sdpa or {name} eager")
    try:
        cameras = camera_specs(values)
    except ValueError as error:
        found.append(str(error))
    else:
        default = values["default_camera"]
        names = [camera.name for camera in cameras]
        if default and default not in names:
            found.append(f"default_camera {default!r} is not a camera; cameras: {', '.join(names)}")
    found.extend(watch_problems(values))
    problem = frames_per_round_problem(values["fps"], values["period"], temporal_patch)
    if problem:
        found.append(problem)
    try:
        stream_config(values)
    except ValueError as error:
        found.append(str(error))
    return found


def parameter_table() -> str:
    """The Markdown table of every parameter (README's table is this text)."""
    lines = [
        "| Parameter | Type | Default | Range | Changes | Description |",
        "|---|---|---|---|---|---|",
    ]
    for spec in PARAMETERS:
        default = spec.default
        if isinstance(default, str):
            default_text = f'`"{default}"`'
        elif isinstance(default, bool):
            default_text = f"`{str(default).lower()}`"
        elif isinstance(default, list):
            default_text = "`[" + ", ".join(f'"{item}"' for item in default) + "]`"
        else:
            default_text = f"`{default}`"
        changes = "restart" if spec.read_only else ("restarts streams" if spec.restarts_stream
                                                     else "live")
        range_text = spec.range_text.replace("|", "\\|")
        lines.append(
            f"| `{spec.name}` | {spec.type_name} | {default_text} | {range_text} | {changes} "
            f"| {spec.description} |"
        )
    return "\n".join(lines)
