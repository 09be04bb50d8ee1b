"""Shared pieces of the training tests: a small run's arguments and a model's loss on a dataset."""

from __future__ import annotations

from pathlib import Path

import torch
from svlm_training.chunking import ChunkConfig, ChunkRenderer, plan_chunks
from svlm_training.dataset_format import SecondsDataset
from svlm_training.trainer import chunk_loss

from svlm_ros.engine.model_loading import load_model

#: Frame settings that keep the tiny-model tests small: the 64x48 synthetic camera becomes
#: 56x56 frames, 4 video tokens per second.
SMALL_FRAMES = ["--max-pixels", "6272", "--min-pixels", "3136"]
#: A chunking small enough for the tiny model on two CPU cores.
SMALL_CHUNKS = ["--chunk-seconds", "4", "--overlap-seconds", "2"]
TEXTS = {i: ["the card is red", "now it is green", "a blue card", "yellow now"][(i // 3) % 4]
         for i in range(0, 14, 2)}


def train_args(data: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return ["--data", str(data), "--model", str(model), "--out", str(out), "--quiet",
            *SMALL_CHUNKS, "--warmup-ratio", "0", *extra]


@torch.no_grad()
def mean_loss(model_dir: Path, data_dir: Path, chunk_seconds: int = 4,
              overlap_seconds: int = 2) -> float:
    """Mean loss per trained token of ``model_dir`` over every chunk of ``data_dir``."""
    loaded = load_model(model_dir)
    data = SecondsDataset(data_dir)
    config = ChunkConfig(chunk_seconds=chunk_seconds, overlap_seconds=overlap_seconds)
    renderer = ChunkRenderer(loaded.processor, loaded.model.config, config,
                             max_pixels=data.manifest["max_pixels"],
                             min_pixels=data.manifest["min_pixels"], fps=data.fps)
    total = count = 0.0
    for chunk in plan_chunks(data.episodes(), config):
        loss, n = chunk_loss(loaded.model, renderer.render_chunk(data, chunk), loaded.device,
                             loaded.dtype)
        total += float(loss)
        count += n
    return total / count


def leftovers(directory: Path) -> list[str]:
    """Hidden temporary folders a failed build or export might have left behind."""
    return sorted(p.name for p in directory.iterdir() if ".incomplete" in p.name)
