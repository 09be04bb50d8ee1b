"""Export a trained model as a plain checkpoint directory the engine and the node load.

The result is what ``from_pretrained`` reads: ``config.json``, the weights (LoRA adapters merged
into the base weights, so no peft is needed at inference), the tokenizer, the processor configs
and the chat template. ``load_model(DIR)`` loads it, and so does the node with
``model_path:=DIR``.

``svlm-train`` exports ``OUT/model`` at the end; ``svlm-export CHECKPOINT --out DIR`` does the
same for any saved checkpoint (e.g. an earlier step).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from svlm_ros.engine.model_loading import load_model
from svlm_training.adaptation import prepare_trainable
from svlm_training.checkpoints import load_weights
from svlm_training.train_config import TrainConfig


def save_merged(model, processor, out: str | Path, *, overwrite: bool = True) -> Path:
    """Merge LoRA adapters (if any) into ``model`` and save it with ``processor`` to ``out``.

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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def export_checkpoint(checkpoint: str | Path, out: str | Path, *, overwrite: bool = False,
                      device: str = "cpu") -> Path:
    """Rebuild the run's model from its base, load the checkpoint's weights, merge and save."""
    config = TrainConfig.load(checkpoint)
    dtype = "float32" if config.dtype == "auto" and device == "cpu" else config.dtype
    loaded = load_model(config.model, device=device, dtype=dtype)
    model = prepare_trainable(loaded.model, config)
    load_weights(checkpoint, model)
    return save_merged(model, loaded.processor, out, overwrite=overwrite)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="svlm-export",
        description="Turn an svlm-train checkpoint into a model directory for the engine/node.",
    )
    parser.add_argument("checkpoint", help="an OUT/checkpoint-<step> directory of svlm-train")
    parser.add_argument("--out", required=True, help="model directory to write")
    parser.add_argument("--device", default="cpu", help="where to merge (default cpu)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``svlm-export``."""
    args = build_parser().parse_args(argv)
    try:
        path = export_checkpoint(args.checkpoint, args.out, overwrite=args.overwrite,
                                 device=args.device)
    except (ValueError, FileExistsError) as error:
        print(f"svlm-export: error: {error}", file=sys.stderr)
        return 1
    print(f"model written to {path}; run the node with model_path:={path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
