"""Training checkpoints: trainable weights, optimizer, schedule, progress and the config.

A checkpoint directory ``OUT/checkpoint-<step>`` holds::

    trainable.safetensors   the trained weights only (LoRA adapters, or the full model)
    optimizer.pt            AdamW state
    scheduler.pt            learning-rate schedule state
    trainer_state.json      step, total steps, global batch, world size
    train_config.json       the TrainConfig of the run

It is written under a temporary name and renamed when complete, so ``--resume`` never picks up
a half-written one.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import torch

from svlm_training.adaptation import load_trainable_state, trainable_state
from svlm_training.train_config import TrainConfig

PREFIX = "checkpoint-"
WEIGHTS = "trainable.safetensors"
STATE = "trainer_state.json"


def save_checkpoint(out: str | Path, step: int, model, optimizer, scheduler,
                    config: TrainConfig, state: dict) -> Path:
    """Write ``OUT/checkpoint-<step>`` atomically and return its path."""
    from safetensors.torch import save_file

    out = Path(out)
    final = out / f"{PREFIX}{step}"
    tmp = out / f".{PREFIX}{step}.incomplete-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {name: t.contiguous().cpu() for name, t in trainable_state(model).items()}
    save_file(weights, str(tmp / WEIGHTS))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    (tmp / STATE).write_text(json.dumps({"step": step, **state}, indent=2) + "\n",
                             encoding="utf-8")
    config.save(tmp)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    return final


def list_checkpoints(out: str | Path) -> list[Path]:
    """Complete checkpoints of a run directory, oldest first."""
    out = Path(out)
    if not out.is_dir():
        return []
    found = []
    for path in out.iterdir():
        match = re.fullmatch(rf"{PREFIX}(\d+)", path.name)
        if match and path.is_dir() and (path / STATE).is_file():
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def resolve_resume(out: str | Path, resume: str) -> Path:
    """The checkpoint ``--resume`` names: ``latest`` (the newest in ``out``) or a path.

    Raises:
        ValueError: there is none.
    """
    if resume == "latest":
        checkpoints = list_checkpoints(out)
        if not checkpoints:
            raise ValueError(f"--resume: no checkpoint in {out}")
        return checkpoints[-1]
    path = Path(resume)
    if not (path / STATE).is_file():
        raise ValueError(f"--resume: {path} is not a checkpoint (no {STATE})")
    return path


def load_checkpoint(path: str | Path, model, optimizer, scheduler) -> dict:
    """Restore weights, optimizer and schedule from ``path``; returns its trainer state."""
    from safetensors.torch import load_file

    path = Path(path)
    load_trainable_state(model, load_file(str(path / WEIGHTS)))
    # Through the CPU: every rank would otherwise load the states onto the GPU they were saved
    # from (rank 0's); load_state_dict moves them to each parameter's device.
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu",
                                         weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu",
                                         weights_only=True))
    return json.loads((path / STATE).read_text(encoding="utf-8"))


def load_weights(path: str | Path, model) -> None:
    """Only the trained weights (what the export needs)."""
    from safetensors.torch import load_file

    load_trainable_state(model, load_file(str(Path(path) / WEIGHTS)))


def prune_checkpoints(out: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints."""
    if keep < 1:
        return
    for path in list_checkpoints(out)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
