"""Export a trained model as a plain checkpoint directory the engine and the node load.

The result is what ``from_pretrained`` reads: ``config.json``, the weights (LoRA adapters merged
into the base weights, so no peft is needed at inference), the tokenizer, the processor configs
and the chat template. ``load_model(DIR)`` loads it, and so does the node with
``model_path:=DIR``.

``svlm-train`` exports ``OUT/model`` at the end; ``svlm-export CHECKPOINT --out DIR`` does the
same for any saved checkpoint (e.g. an earlier step).

Beside the weights goes ``svlm_settings.json`` (``svlm_ros.engine.model_settings``): the
settings the model was trained with, which the node takes as its defaults. The frame rate,
period and pixel budget come from the dataset's manifest (the checkpoint keeps a copy of them
in its trainer state; ``--data`` names the dataset when neither is at hand), the token budget,
text windows and prompts from the run's ``TrainConfig``, the format is the engine's (the
chunks were rendered with its ``RoundLayout``), and the vision window is the engine's default
cut to the chunk length (the model never attended over more video than a chunk holds). An
empty instruction (StreamingVLM trained without one) leaves the node's built-in one, which is
the instruction StreamingVLM's inference gives.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from svlm_ros.engine.cache_policy import CachePolicyConfig
from svlm_ros.engine.model_loading import load_model
from svlm_ros.engine.model_settings import ENGINE_FORMAT, ModelSettings, write_settings
from svlm_training.adaptation import prepare_trainable
from svlm_training.checkpoints import STATE, load_weights
from svlm_training.dataset_format import MANIFEST
from svlm_training.train_config import TrainConfig

#: The dataset manifest's keys that shape what the model saw (kept in checkpoints too).
STREAM_KEYS = ("fps", "period", "max_pixels", "min_pixels")


def trained_settings(config: TrainConfig, stream: Mapping[str, Any]) -> ModelSettings:
    """The settings a run trained with, for ``svlm_settings.json``.

    Args:
        config: The run's training config.
        stream: The dataset's ``fps``, ``period``, ``max_pixels`` and ``min_pixels`` (its
            manifest, or the copy in a checkpoint's trainer state).
    """
    missing = [key for key in STREAM_KEYS if key not in stream]
    if missing:
        raise ValueError(f"the dataset settings lack {', '.join(missing)}")
    return ModelSettings(
        format=ENGINE_FORMAT,
        fps=float(stream["fps"]),
        period=float(stream["period"]),
        max_pixels=int(stream["max_pixels"]),
        min_pixels=int(stream["min_pixels"]),
        max_new_tokens=config.max_new_tokens,
        text_sink_tokens=config.text_sink_tokens,
        text_window_tokens=config.text_window_tokens,
        vision_window_seconds=min(CachePolicyConfig().vision_window_seconds,
                                  config.chunk_seconds),
        system_prompt=config.system_prompt,
        instruction=config.instruction,
        previous_text=getattr(config, "previous_text", ""),
    )


def stream_settings(checkpoint: str | Path, config: TrainConfig,
                    data: str | Path | None = None) -> dict[str, Any]:
    """The dataset's stream settings for a checkpoint: from ``data``'s manifest when given,
    else the checkpoint's trainer state, else the manifest of the run's dataset.

    Raises:
        ValueError: none of them is there.
    """
    if data is None:
        state_file = Path(checkpoint) / STATE
        if state_file.is_file():
            state = json.loads(state_file.read_text(encoding="utf-8"))
            if isinstance(state.get("stream"), dict):
                return state["stream"]
    manifest = Path(data if data is not None else config.data) / MANIFEST
    if not manifest.is_file():
        raise ValueError(
            f"cannot tell the frame rate and pixels {checkpoint} was trained with: its trainer "
            f"state does not keep them and {manifest} does not exist; pass --data with the "
            "dataset the run trained on"
        )
    values = json.loads(manifest.read_text(encoding="utf-8"))
    return {key: values[key] for key in STREAM_KEYS if key in values}


def save_merged(model, processor, out: str | Path, *, overwrite: bool = True,
                settings: ModelSettings | None = None) -> Path:
    """Merge LoRA adapters (if any) into ``model`` and save it with ``processor`` to ``out``,
    with ``settings`` as ``svlm_settings.json`` when given.

    Written under a temporary name and renamed at the end. The in-memory model is changed (its
    adapters are merged away), so call this last.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    tmp = out.parent / f".{out.name}.incomplete-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        if settings is not None:
            write_settings(tmp, settings)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def export_checkpoint(checkpoint: str | Path, out: str | Path, *, overwrite: bool = False,
                      device: str = "cpu", data: str | Path | None = None) -> Path:
    """Rebuild the run's model from its base, load the checkpoint's weights, merge and save it
    with the settings it was trained with (``data``: the dataset, see ``stream_settings``)."""
    config = TrainConfig.load(checkpoint)
    settings = trained_settings(config, stream_settings(checkpoint, config, data))
    dtype = "float32" if config.dtype == "auto" and device == "cpu" else config.dtype
    loaded = load_model(config.model, device=device, dtype=dtype)
    model = prepare_trainable(loaded.model, config)
    load_weights(checkpoint, model)
    return save_merged(model, loaded.processor, out, overwrite=overwrite, settings=settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="svlm-export",
        description="Turn an svlm-train checkpoint into a model directory for the engine/node.",
    )
    parser.add_argument("checkpoint", help="an OUT/checkpoint-<step> directory of svlm-train")
    parser.add_argument("--out", required=True, help="model directory to write")
    parser.add_argument("--device", default="cpu", help="where to merge (default cpu)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--data", default=None,
                        help="the dataset the run trained on, for the fps and pixels written "
                             "to svlm_settings.json (default: the checkpoint's own record, "
                             "else the run's --data)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``svlm-export``."""
    args = build_parser().parse_args(argv)
    try:
        path = export_checkpoint(args.checkpoint, args.out, overwrite=args.overwrite,
                                 device=args.device, data=args.data)
    except (ValueError, FileExistsError) as error:
        print(f"svlm-export: error: {error}", file=sys.stderr)
        return 1
    print(f"model written to {path} with the settings it was trained with (svlm_settings.json); "
          f"run the node with model_path:={path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
