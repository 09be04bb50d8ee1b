"""Two processes under torchrun (gloo, CPU) train exactly like one with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from bag_factory import BagSpec, write_bag
from ddp_worker import main as run_worker
from safetensors.torch import load_file
from training_helpers import TEXTS, train_args

HERE = Path(__file__).resolve().parent
TRAINING = HERE.parents[1] / "training"
STEPS = 3
#: Two processes sum their token losses in another order than one: float32 round-off only.
LOSS_TOLERANCE = 1e-5  # relative
WEIGHT_TOLERANCE = 1e-5  # relative (absolute 1e-6)


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "loss.jsonl").read_text().splitlines()]


@pytest.mark.slow  # two extra Python processes that each import torch: about 40 s here
def test_torchrun_two_processes_equal_one_process_with_the_same_global_batch(
        tmp_path, tiny_model_path):
    from svlm_training.bag2dataset import main as bag2dataset

    bag = write_bag(tmp_path / "bag", BagSpec(seconds=14, texts=TEXTS))
    data = tmp_path / "dataset"
    assert bag2dataset([str(bag), "--image-topic", "/camera/image", "--text-topic",
                        "/commentary", "--out", str(data), "--quiet", "--max-pixels", "6272",
                        "--min-pixels", "3136"]) == 0
    common = ["--max-steps", str(STEPS), "--lr", "5e-3", "--no-export"]

    # One process, two chunks per step.
    single = tmp_path / "single"
    run_worker([str(tmp_path / "single_weights"),
                *train_args(data, tiny_model_path, single, "--grad-accum", "2", *common)])

    # Two processes, one chunk each per step: the same global batch of two.
    double = tmp_path / "double"
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(TRAINING), str(HERE),
                                          os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(HERE / "ddp_worker.py"), str(tmp_path / "ddp_weights"),
               *train_args(data, tiny_model_path, double, "--grad-accum", "1", *common)]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]

    one, two = records(single), records(double)
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3]
    for a, b in zip(one, two, strict=True):
        assert a["chunks"] == b["chunks"] == 2
        assert a["tokens"] == b["tokens"] and a["trained_tokens"] == b["trained_tokens"]
        assert b["loss"] == pytest.approx(a["loss"], rel=LOSS_TOLERANCE)
    assert one[-1]["loss"] != one[0]["loss"]  # it did train
    worst = max(abs(b["loss"] - a["loss"]) / a["loss"] for a, b in zip(one, two, strict=True))
    print(f"largest relative loss difference, 1 vs 2 processes: {worst:.1e}")

    rank0 = load_file(tmp_path / "ddp_weights" / "rank0.safetensors")
    rank1 = load_file(tmp_path / "ddp_weights" / "rank1.safetensors")
    alone = load_file(tmp_path / "single_weights" / "rank0.safetensors")
    assert rank0.keys() == rank1.keys() == alone.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name  # DDP keeps the ranks bit-identical
        torch.testing.assert_close(rank0[name], alone[name], rtol=WEIGHT_TOLERANCE, atol=1e-6)
    gap = max(float((rank0[n] - alone[n]).abs().max()) for n in rank0)
    print(f"largest weight difference, 1 vs 2 processes: {gap:.1e}")
    # Only rank 0 writes the run's files.
    assert sorted(p.name for p in double.iterdir()) == [
        "checkpoint-3", "loss.csv", "loss.jsonl", "loss.png", "summary.json"]
