"""``svlm-bench --model-shape``: the per-part GPU report, run on the CPU with the tiny shape.

Figures are not checked (a unit test never times anything); what is checked is that every
figure the GPU measurement needs is printed and written: each part's p50 and p99, ms and
seconds of video per second, latency, for 1 and 4 cameras, at minute 1 and at hour 2.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from svlm_ros.engine.benchmark import PARTS, main
from svlm_ros.engine.model_shapes import build_shaped_model, shaped_config
from svlm_ros.engine.tiny_model import make_tiny_checkpoint


def test_parts_report_prints_every_figure(tmp_path, capsys):
    out = tmp_path / "parts.json"
    code = main(["--model-shape", "tiny", "--cameras", "1,4", "--warmup-seconds", "3",
                 "--measure-seconds", "2", "--frame-size", "160x120", "--vision-window-seconds",
                 "2", "--max-new-tokens", "4", "--threads", "1", "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    for name in PARTS:
        assert f"{name} p50/p99" in printed
    assert "ms/video s p50/p99" in printed and "video s/s" in printed
    assert "latency p50/p99" in printed
    report = json.loads(out.read_text())
    rows = {(row["cameras"], row["phase"]): row for row in report["rows"]}
    assert set(rows) == {(1, "minute1"), (1, "hour2"), (4, "minute1"), (4, "hour2")}
    for (cameras, phase), row in rows.items():
        assert row["rounds_measured"] == 2 * cameras
        for name in PARTS:
            for quantile in ("p50", "p99"):
                assert math.isfinite(row["parts_ms"][name][quantile]), (cameras, phase, name)
        assert row["video_seconds_per_second"] > 0
        assert row["ms_per_video_second"]["p99"] >= row["ms_per_video_second"]["p50"] > 0
        printed_row = [line for line in printed.splitlines()
                       if line.split()[:2] == [str(cameras), phase]]
        assert len(printed_row) == 1
    # Hour 2 really narrates hour-2 time stamps; minute 1 around the first minute.
    assert rows[(1, "hour2")]["stream_time_measured"][0] >= 7200
    assert 60 <= rows[(1, "minute1")]["stream_time_measured"][0] < 120


def test_parts_mode_refuses_bad_camera_counts(capsys):
    assert main(["--model-shape", "tiny", "--cameras", "0"]) == 2
    assert "--cameras" in capsys.readouterr().err


def test_7b_shape_is_the_real_one(tmp_path):
    tiny = make_tiny_checkpoint(tmp_path / "tiny")
    config = shaped_config("qwen2.5-vl-7b", tiny)
    with torch.device("meta"):
        from transformers import Qwen2_5_VLForConditionalGeneration

        model = Qwen2_5_VLForConditionalGeneration(config)
    parameters = sum(p.numel() for p in model.parameters())
    assert 8.28e9 < parameters < 8.30e9  # Qwen2.5-VL-7B: 8.29B
    text = config.get_text_config()
    assert (text.hidden_size, text.num_hidden_layers, text.num_key_value_heads) == (3584, 28, 4)
    assert config.video_token_id == model.config.video_token_id
    with pytest.raises(ValueError, match="model shape"):
        shaped_config("qwen3-vl", tiny)


def test_shaped_model_is_built_on_the_device_in_the_dtype(tmp_path):
    tiny = make_tiny_checkpoint(tmp_path / "tiny")
    loaded = build_shaped_model("tiny", tiny, device="cpu", dtype="bfloat16")
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in loaded.model.parameters()} == {"cpu"}


def test_parts_report_with_batched_cameras(tmp_path, capsys):
    out = tmp_path / "batched.json"
    assert main(["--model-shape", "tiny", "--cameras", "2", "--batched", "--phases", "hour2",
                 "--warmup-seconds", "3", "--measure-seconds", "2", "--frame-size", "160x120",
                 "--vision-window-seconds", "2", "--max-new-tokens", "4", "--threads", "1",
                 "--json", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert row["decode_path"] == "batched" and row["rounds_measured"] == 4
    assert math.isfinite(row["latency_ms"]["p99"])
    assert "2 hour2" in " ".join(capsys.readouterr().out.split())


def test_parts_report_with_the_fixed_shape_prefill(tmp_path, capsys):
    out = tmp_path / "prefill.json"
    assert main(["--model-shape", "tiny", "--cameras", "1", "--prefill-path", "static",
                 "--phases", "minute1", "--warmup-seconds", "2", "--measure-seconds", "2",
                 "--frame-size", "160x120", "--max-new-tokens", "4", "--threads", "1",
                 "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["prefill_path"] == "static" and report["rows"][0]["rounds_measured"] == 2
    assert report["rows"][0]["parts_ms"]["prefill"]["p50"] > 0
    assert "prefill static" in capsys.readouterr().out
