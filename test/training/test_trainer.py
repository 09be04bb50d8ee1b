"""svlm-train on the tiny model: bag -> dataset -> steps -> loss goes down -> export narrates."""

from __future__ import annotations

import json
import math
import re
import shutil

import pytest
import torch
from bag_factory import BagSpec, write_bag
from safetensors.torch import load_file
from svlm_training.adaptation import lora_target_pattern, prepare_trainable
from svlm_training.chunking import ChunkConfig
from svlm_training.train_config import TrainConfig
from svlm_training.trainer import ChunkOrder, cosine_schedule, main
from training_helpers import TEXTS, mean_loss, train_args

from svlm_ros.engine.model_loading import load_model
from svlm_ros.engine.model_settings import ENGINE_FORMAT, ModelSettings, read_settings
from svlm_ros.engine.streaming_session import StreamConfig, StreamingSession

STEPS = 12


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from svlm_training.bag2dataset import main as bag2dataset

    root = tmp_path_factory.mktemp("train_data")
    bag = write_bag(root / "bag", BagSpec(seconds=14, texts=TEXTS))
    out = root / "dataset"
    assert bag2dataset([str(bag), "--image-topic", "/camera/image", "--text-topic",
                        "/commentary", "--out", str(out), "--quiet", "--max-pixels", "6272",
                        "--min-pixels", "3136"]) == 0
    return bag, out


@pytest.fixture(scope="module")
def lora_run(dataset, tiny_model_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora_run") / "run"
    code = main(train_args(dataset[1], tiny_model_path, out, "--max-steps", str(STEPS),
                           "--lr", "5e-3", "--save-every", "4"))
    assert code == 0
    return out


def test_loss_goes_down_and_the_export_narrates_in_the_engine(lora_run, dataset,
                                                              tiny_model_path, capsys):
    records = [json.loads(line) for line in (lora_run / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(1, STEPS + 1))
    assert all(math.isfinite(r["loss"]) and r["trained_tokens"] > 0 for r in records)
    csv_rows = (lora_run / "loss.csv").read_text().splitlines()
    assert csv_rows[0].startswith("step,epoch,loss,lr") and len(csv_rows) == STEPS + 1
    assert (lora_run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The same chunks scored by the base model and by the exported (merged) one.
    before = mean_loss(tiny_model_path, dataset[1])
    after = mean_loss(lora_run / "model", dataset[1])
    print(f"mean loss per trained token over every chunk: base {before:.3f}, trained {after:.3f}")
    assert after < 0.8 * before, (before, after)

    export = lora_run / "model"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "processor_config.json",
                 "chat_template.jinja"):
        assert (export / name).is_file(), name
    assert not any("lora" in key for key in load_file(export / "model.safetensors"))
    # The settings it was trained with, for the node: the dataset's frames, the run's chunking.
    assert read_settings(export) == ModelSettings(
        format=ENGINE_FORMAT, fps=2.0, period=1.0, max_pixels=6272, min_pixels=3136,
        max_new_tokens=20, text_sink_tokens=512, text_window_tokens=512,
        vision_window_seconds=4,  # the engine's 16 s, cut to the 4 s chunks it trained on
        system_prompt=ChunkConfig.system_prompt, instruction=ChunkConfig.instruction,
        previous_text="",
    )  # fmt: skip
    loaded = load_model(export)
    session = StreamingSession(loaded, StreamConfig(max_pixels=6272, min_pixels=3136))
    from bag_factory import frame_for

    results = []
    for tick in range(8):
        session.add_frame(frame_for(tick / 2), 100.0 + tick / 2)
        result, _ = session.run_pending()
        if result is not None:
            results.append(result)
    assert len(results) == 3
    assert all(r.generated_tokens >= 1 and isinstance(r.text, str) for r in results)


def test_every_checkpoint_carries_its_config(lora_run, dataset, tiny_model_path):
    checkpoints = sorted(p.name for p in lora_run.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-12", "checkpoint-8"]  # keep_checkpoints=2
    config = TrainConfig.load(lora_run / "checkpoint-8")
    assert config.model == str(tiny_model_path) and config.data == str(dataset[1])
    assert config.method == "lora" and config.chunk_seconds == 4 and config.lr == 5e-3
    state = json.loads((lora_run / "checkpoint-8" / "trainer_state.json").read_text())
    # ``stream``: what the model saw, from the dataset (the export writes it beside the model).
    assert state == {"step": 8, "total_steps": STEPS, "global_batch": 1, "world_size": 1,
                     "stream": {"fps": 2.0, "period": 1.0, "max_pixels": 6272,
                                "min_pixels": 3136}}
    weights = load_file(lora_run / "checkpoint-8" / "trainable.safetensors")
    assert weights and all("lora_" in name for name in weights)
    assert not any("visual" in name for name in weights)


def test_resume_continues_exactly(lora_run, tmp_path):
    """Resuming from step 8 redoes steps 9-12 with the same losses and the same weights."""
    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    original = [json.loads(line) for line in (run / "loss.jsonl").read_text().splitlines()]
    final = load_file(run / "checkpoint-12" / "trainable.safetensors")
    assert main(["--out", str(run), "--resume", str(run / "checkpoint-8"), "--quiet"]) == 0
    resumed = [json.loads(line) for line in (run / "loss.jsonl").read_text().splitlines()]
    assert [r["step"] for r in resumed] == list(range(1, STEPS + 1))
    for a, b in zip(original, resumed, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5, abs=1e-6)
        assert a["lr"] == pytest.approx(b["lr"])
    again = load_file(run / "checkpoint-12" / "trainable.safetensors")
    for name, tensor in final.items():
        torch.testing.assert_close(again[name], tensor, rtol=1e-5, atol=1e-6)


def test_a_fresh_run_refuses_an_earlier_runs_directory(lora_run, dataset, tiny_model_path,
                                                       capsys):
    assert main(train_args(dataset[1], tiny_model_path, lora_run, "--max-steps", "1")) == 1
    assert "checkpoints of an earlier run" in capsys.readouterr().err


def test_resume_without_a_checkpoint_is_an_error(tmp_path, capsys):
    assert main(["--data", "x", "--model", "y", "--out", str(tmp_path), "--resume"]) == 1
    assert "no checkpoint in" in capsys.readouterr().err


def test_a_missing_dataset_is_an_error(tmp_path, tiny_model_path, capsys):
    assert main(train_args(tmp_path / "nothing", tiny_model_path, tmp_path / "run")) == 1
    assert "is not a dataset" in capsys.readouterr().err


def test_cosine_schedule_warms_up_then_decays():
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([parameter], lr=1.0)
    schedule = cosine_schedule(optimizer, total_steps=100, warmup_ratio=0.1, min_lr_ratio=0.1)
    rates = []
    for _ in range(100):
        rates.append(schedule.get_last_lr()[0])
        optimizer.step()
        schedule.step()
    assert rates[0] == pytest.approx(0.1) and rates[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(rates[9:], rates[10:], strict=False))
    assert rates[55] == pytest.approx(0.1 + 0.9 * 0.5, abs=0.01)
    assert rates[-1] == pytest.approx(0.1, abs=0.01)


def test_chunk_order_is_a_seeded_permutation_per_epoch():
    order = ChunkOrder(chunks=10, global_batch=4, seed=3)
    first_epoch = order.step(0) + order.step(1) + order.step(2)[:2]
    assert sorted(first_epoch) == list(range(10))
    assert order.step(2)[2:] == ChunkOrder(10, 4, 4).step(0)[:2]  # epoch 1 = seed + 1
    assert order.step(1) == ChunkOrder(10, 4, 3).step(1)
    assert order.epoch_of(4) == pytest.approx(2.0)


def test_train_config_is_validated_and_round_trips(tmp_path):
    config = TrainConfig(data="d", model="m", out="o", lora_targets=["q_proj"], max_steps=5)
    config.save(tmp_path)
    assert TrainConfig.load(tmp_path) == config
    with pytest.raises(ValueError, match="train_vision needs method 'full'"):
        TrainConfig(data="d", model="m", out="o", train_vision=True)
    with pytest.raises(ValueError, match="overlap_seconds"):
        TrainConfig(data="d", model="m", out="o", chunk_seconds=4, overlap_seconds=5)
    with pytest.raises(ValueError, match="not an svlm-train checkpoint"):
        TrainConfig.load(tmp_path / "nothing")


def test_lora_adapts_the_language_model_only(tiny_model_path):
    loaded = load_model(tiny_model_path)
    config = TrainConfig(data="d", model="m", out="o")
    model = prepare_trainable(loaded.model, config)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n and ".language_model.layers." in n for n in names)
    kinds = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in names}
    assert kinds == set(config.lora_targets)
    assert not any("visual" in n for n in names)
    # The vision blocks have an up_proj too; the pattern must not reach them.
    pattern = re.compile(lora_target_pattern(["up_proj"]))
    assert pattern.fullmatch("base_model.model.model.language_model.layers.3.mlp.up_proj")
    assert not pattern.fullmatch("base_model.model.model.visual.blocks.0.mlp.up_proj")
    assert not pattern.fullmatch("base_model.model.model.language_model.layers.3.mlp.gate_proj")


def test_full_fine_tuning_freezes_the_vision_tower_by_default(tiny_model_path):
    loaded = load_model(tiny_model_path)
    model = prepare_trainable(loaded.model, TrainConfig(data="d", model="m", out="o",
                                                        method="full"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not any(".visual." in n for n in trainable)
    assert any("lm_head" in n for n in trainable)
    loaded = load_model(tiny_model_path)
    model = prepare_trainable(loaded.model, TrainConfig(data="d", model="m", out="o",
                                                        method="full", train_vision=True))
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.slow
def test_full_fine_tuning_in_bfloat16(dataset, tiny_model_path, tmp_path):
    out = tmp_path / "full"
    assert main(train_args(dataset[1], tiny_model_path, out, "--method", "full", "--dtype",
                           "bfloat16", "--max-steps", "3", "--grad-accum", "2",
                           "--no-gradient-checkpointing")) == 0
    records = [json.loads(line) for line in (out / "loss.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(math.isfinite(r["loss"]) for r in records)
    assert records[0]["chunks"] == 2
    base = load_file(tiny_model_path / "model.safetensors")
    tuned = load_file(out / "model" / "model.safetensors")
    # Checkpoint names are the original layout's: visual.* and model.layers.*.
    visual = [k for k in base if k.startswith("visual.")]
    language = [k for k in base if k.startswith("model.layers.")]
    assert visual and language
    assert all(torch.equal(base[k].to(torch.bfloat16), tuned[k]) for k in visual)
    assert any(not torch.equal(base[k].to(torch.bfloat16), tuned[k]) for k in language)
    assert load_model(out / "model", dtype="bfloat16").dtype == torch.bfloat16


def test_svlm_export_of_an_earlier_checkpoint(lora_run, tmp_path, capsys):
    from svlm_training.export import main as export

    out = tmp_path / "step8"
    assert export([str(lora_run / "checkpoint-8"), "--out", str(out)]) == 0
    assert f"model_path:={out}" in capsys.readouterr().out
    step8 = load_file(out / "model.safetensors")
    final = load_file(lora_run / "model" / "model.safetensors")
    changed = [k for k in final if not torch.equal(final[k], step8[k])]
    assert changed
    assert all(k.startswith(("model.layers.", "model.language_model.")) for k in changed)
    assert load_model(out).model.config.model_type == "qwen2_5_vl"
    assert read_settings(out) == read_settings(lora_run / "model")
    assert export([str(lora_run / "checkpoint-8"), "--out", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err


def test_svlm_export_takes_the_frames_from_the_dataset_when_the_checkpoint_lacks_them(
        lora_run, dataset, tmp_path, capsys):
    from svlm_training.export import main as export

    # A checkpoint written before checkpoints kept the dataset's frame settings.
    old = tmp_path / "checkpoint-8"
    shutil.copytree(lora_run / "checkpoint-8", old)
    state = json.loads((old / "trainer_state.json").read_text())
    del state["stream"]
    (old / "trainer_state.json").write_text(json.dumps(state))
    config = json.loads((old / "train_config.json").read_text())
    config["data"] = str(tmp_path / "gone")
    (old / "train_config.json").write_text(json.dumps(config))
    out = tmp_path / "model"
    assert export([str(old), "--out", str(out)]) == 1
    error = capsys.readouterr().err
    assert "cannot tell the frame rate and pixels" in error and "--data" in error, error
    assert not out.exists()
    # --data names the dataset: its manifest has them.
    assert export([str(old), "--out", str(out), "--data", str(dataset[1])]) == 0
    assert read_settings(out) == read_settings(lora_run / "model")
