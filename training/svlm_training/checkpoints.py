"""Training checkpoints: trainable weights, optimizer, schedule, progress and the config.

A checkpoint directory ``OUT/checkpoint-<step>`` holds::

    trainable.safetensors   the trained weights only (LoRA adapters, or the full model)
    optimizer.pt            AdamW state
    scheduler.pt            learning-rate schedule state
    trainer_state.json      step, total steps, global batch, world size
    train_config.json       the TrainConfig of the run

An FSDP run (``--sharding fsdp``) writes ``sharded/`` instead of the first two: a
``torch.distributed.checkpoint`` (DCP) directory in which every rank writes its own shards of the
trainable weights and of AdamW's state, with a ``.metadata`` file that says where each slice of
each tensor lies. DCP reshards on loading, so a checkpoint of 2 ranks resumes on 1 or on 8, and
``svlm-export`` reads it into a plain model in one process. Every rank must see ``OUT`` (on
several nodes: shared storage).

It is written under a temporary name and renamed when complete (``trainer_state.json`` is the
last file in, and a directory without it is never listed), so ``--resume`` never picks up a
half-written one.
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
SHARDED = "sharded"


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


def save_sharded_checkpoint(out: str | Path, step: int, model, optimizer, scheduler,
                            config: TrainConfig, state: dict, *, is_main: bool) -> Path:
    """Write ``OUT/checkpoint-<step>`` of an FSDP run; collective (every rank calls it).

    The temporary directory has no process id in its name, since every rank writes into it.
    """
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

    out = Path(out)
    final = out / f"{PREFIX}{step}"
    tmp = out / f".{PREFIX}{step}.incomplete"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    model_state, optimizer_state = get_state_dict(
        model, optimizer, options=StateDictOptions(ignore_frozen_params=True))
    dcp.save({"model": model_state, "optimizer": optimizer_state},
             checkpoint_id=str(tmp / SHARDED))
    if is_main:
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        config.save(tmp)
        (tmp / STATE).write_text(json.dumps({"step": step, "sharding": "fsdp", **state},
                                            indent=2) + "\n", encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    dist.barrier()
    return final


def is_sharded_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` holds a DCP checkpoint (an FSDP run's) rather than safetensors."""
    return (Path(path) / SHARDED / ".metadata").is_file()


def checkpoint_state(path: str | Path) -> dict:
    """A checkpoint's ``trainer_state.json``."""
    return json.loads((Path(path) / STATE).read_text(encoding="utf-8"))


def _load_sharded(path: Path, model, optimizer=None) -> None:
    """DCP into ``model`` (sharded or plain) and, when given, ``optimizer``; any world size."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_state_dict,
        set_model_state_dict,
        set_state_dict,
    )

    options = StateDictOptions(ignore_frozen_params=True)
    if optimizer is None:
        state = {"model": get_model_state_dict(model, options=options)}
    else:
        model_state, optimizer_state = get_state_dict(model, optimizer, options=options)
        state = {"model": model_state, "optimizer": optimizer_state}
    try:
        dcp.load(state, checkpoint_id=str(path / SHARDED))
    except (CheckpointException, RuntimeError, KeyError) as error:
        raise ValueError(f"{path} does not match the model's trainable weights (another "
                         f"method or model?): {error}") from error
    # Not strict: the frozen weights are not in the checkpoint (they stay the base's); a
    # trainable one missing from it has already failed in dcp.load.
    options = StateDictOptions(ignore_frozen_params=True, strict=False)
    if optimizer is None:
        set_model_state_dict(model, state["model"], options=options)
    else:
        set_state_dict(model, optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"], options=options)


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
    """Restore weights, optimizer and schedule from ``path``; returns its trainer state.

    A sharded (DCP) checkpoint is collective: every rank of the run calls this.
    """
    from safetensors.torch import load_file

    path = Path(path)
    if is_sharded_checkpoint(path):
        _load_sharded(path, model, optimizer)
    else:
        load_trainable_state(model, load_file(str(path / WEIGHTS)))
        # Through the CPU: every rank would otherwise load the states onto the GPU they were
        # saved from (rank 0's); load_state_dict moves them to each parameter's device.
        optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location="cpu",
                                             weights_only=True))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", map_location="cpu",
                                         weights_only=True))
    return json.loads((path / STATE).read_text(encoding="utf-8"))


def load_weights(path: str | Path, model) -> None:
    """Only the trained weights (what the export needs), from either kind of checkpoint."""
    from safetensors.torch import load_file

    if is_sharded_checkpoint(path):
        _load_sharded(Path(path), model)
    else:
        load_trainable_state(model, load_file(str(Path(path) / WEIGHTS)))


def prune_checkpoints(out: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints."""
    if keep < 1:
        return
    for path in list_checkpoints(out)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
