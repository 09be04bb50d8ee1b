"""Full fine-tuning with FSDP2 under torchrun (gloo, CPU): two processes train like one with the
same global batch, and a sharded checkpoint resumes on another number of ranks (2 -> 1, 1 -> 2).

The reference is one plain process (no FSDP) with ``--grad-accum 2``. FSDP shards the fp32
weights, all-gathers them for every unit and averages gradients with a reduce-scatter: the sums
run in another order than one process's, so results agree to float32 round-off, not bits.
"""

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
from svlm_training.export import export_checkpoint
from svlm_training.trainer import main as svlm_train
from training_helpers import TEXTS, train_args

from svlm_ros.engine.model_loading import load_model

HERE = Path(__file__).resolve().parent
TRAINING = HERE.parents[1] / "training"
STEPS = 3
#: float32 round-off over 3 steps (measured here: 3e-8 relative at worst).
LOSS_TOLERANCE = 1e-5  # relative
#: Weights are O(1) and agree to ~1e-7, except the k_proj biases: their gradient is zero in exact
#: arithmetic (softmax ignores a shift shared by every key), so AdamW steps on round-off alone
#: and they differ by up to ~4e-6 (measured). 1e-5 absolute covers that and nothing more.
WEIGHT_RTOL, WEIGHT_ATOL = 1e-5, 1e-5
COMMON = ["--method", "full", "--max-steps", str(STEPS), "--lr", "5e-3"]


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "loss.jsonl").read_text().splitlines()]


def torchrun(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(TRAINING), str(HERE),
                                          os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", *args]
    result = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def assert_same_losses(run: list[dict], reference: list[dict]) -> None:
    assert [r["step"] for r in run] == [r["step"] for r in reference]
    for a, b in zip(reference, run, strict=True):
        assert a["tokens"] == b["tokens"] and a["trained_tokens"] == b["trained_tokens"]
        assert b["loss"] == pytest.approx(a["loss"], rel=LOSS_TOLERANCE), (a["step"], a, b)


def assert_model_has(model_dir: Path, weights: dict) -> None:
    """The exported model's parameters equal the reference's trained weights."""
    params = dict(load_model(model_dir).model.named_parameters())
    for name, value in weights.items():
        assert name in params, name
        assert params[name].detach().allclose(value, rtol=WEIGHT_RTOL, atol=WEIGHT_ATOL), name


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from svlm_training.bag2dataset import main as bag2dataset

    root = tmp_path_factory.mktemp("fsdp_data")
    bag = write_bag(root / "bag", BagSpec(seconds=14, texts=TEXTS))
    data = root / "dataset"
    assert bag2dataset([str(bag), "--image-topic", "/camera/image", "--text-topic",
                        "/commentary", "--out", str(data), "--quiet", "--max-pixels", "6272",
                        "--min-pixels", "3136"]) == 0
    return data


@pytest.fixture(scope="module")
def reference(dataset, tiny_model_path, tmp_path_factory):
    """One plain process, full fine-tuning, two chunks per step: losses and final weights."""
    root = tmp_path_factory.mktemp("fsdp_reference")
    run_worker([str(root / "weights"),
                *train_args(dataset, tiny_model_path, root / "run", "--sharding", "ddp",
                            "--grad-accum", "2", "--no-export", *COMMON)])
    log = records(root / "run")
    assert log[-1]["loss"] < log[0]["loss"]  # it trains
    return log, load_file(root / "weights" / "rank0.safetensors")


@pytest.mark.slow  # two torchrun processes and a resumed run: about 30 s here
def test_fsdp_on_two_processes_equals_one_and_resumes_on_one(tmp_path, dataset, reference,
                                                             tiny_model_path, capsys):
    reference_log, reference_weights = reference
    run = tmp_path / "run"
    # --method full under torchrun with two processes: FSDP2 without asking (--sharding auto).
    torchrun(tmp_path, str(HERE / "ddp_worker.py"), str(tmp_path / "weights"),
             *train_args(dataset, tiny_model_path, run, "--grad-accum", "1",
                         "--save-every", "2", *COMMON))
    two = records(run)
    assert_same_losses(two, reference_log)
    assert json.loads((run / "summary.json").read_text())["sharding"] == "fsdp"
    worst = max(abs(b["loss"] - a["loss"]) / a["loss"]
                for a, b in zip(reference_log, two, strict=True))
    print(f"largest relative loss difference, FSDP on 2 processes vs 1 process: {worst:.1e}")

    # The gathered weights (rank 0 only: the other rank gets none) equal the reference's.
    assert sorted(p.name for p in (tmp_path / "weights").iterdir()) == ["rank0.safetensors"]
    gathered = load_file(tmp_path / "weights" / "rank0.safetensors")
    assert gathered.keys() == reference_weights.keys()
    for name, value in gathered.items():
        torch.testing.assert_close(value, reference_weights[name], rtol=WEIGHT_RTOL,
                                   atol=WEIGHT_ATOL, msg=name)
    gap = max(float((gathered[n] - reference_weights[n]).abs().max()) for n in gathered)
    print(f"largest weight difference, FSDP on 2 processes vs 1 process: {gap:.1e}")

    # A sharded checkpoint: one shard file per rank and DCP's metadata, no replicated files.
    checkpoint = run / "checkpoint-2"
    shards = sorted(p.name for p in (checkpoint / "sharded").iterdir())
    assert shards == [".metadata", "__0_0.distcp", "__1_0.distcp"]
    assert not (checkpoint / "trainable.safetensors").exists()
    assert not list(run.glob(".*incomplete*"))
    # The export gathered a plain Hugging Face checkpoint on rank 0.
    assert_model_has(run / "model", reference_weights)

    # 2 -> 1: step 3 again, on one process (still FSDP, over a group of one).
    capsys.readouterr()
    assert svlm_train(["--out", str(run), "--resume", str(checkpoint), "--quiet"]) == 0
    assert "--grad-accum 2 keeps the global batch of 2" in capsys.readouterr().err
    assert_same_losses(records(run), reference_log)
    assert json.loads((run / "summary.json").read_text())["world_size"] == 1
    assert_model_has(run / "model", reference_weights)


@pytest.mark.slow  # one torchrun with two processes: about 20 s here
def test_a_one_rank_fsdp_checkpoint_resumes_on_two_ranks(tmp_path, dataset, reference,
                                                         tiny_model_path):
    reference_log, reference_weights = reference
    run = tmp_path / "run"
    # One process with --sharding fsdp: the same training as the plain process.
    assert svlm_train(train_args(dataset, tiny_model_path, run, "--sharding", "fsdp",
                                 "--grad-accum", "2", "--save-every", "2", "--no-export",
                                 *COMMON)) == 0
    assert_same_losses(records(run), reference_log)
    assert sorted(p.name for p in (run / "checkpoint-2" / "sharded").iterdir()) == [
        ".metadata", "__0_0.distcp"]

    # 1 -> 2: step 3 again on two processes, from the one-rank checkpoint.
    torchrun(tmp_path, "-m", "svlm_training.trainer", "--out", str(run), "--resume",
             str(run / "checkpoint-2"), "--quiet")
    assert_same_losses(records(run), reference_log)
    assert json.loads((run / "summary.json").read_text())["world_size"] == 2

    # svlm-export reads the two-rank checkpoint into a plain model in this one process.
    model = export_checkpoint(run / "checkpoint-3", tmp_path / "model")
    assert_model_has(model, reference_weights)
