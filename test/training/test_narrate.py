"""svlm-narrate on a real bag and a real mp4 with the tiny model: WebVTT and JSONL per second,
read back by svlm-bag2dataset --labels into the very seconds narrated; the model's
svlm_settings.json shapes the stream; a failure midway leaves no output behind."""

from __future__ import annotations

import json
import shutil

import cv2
import pytest
from bag_factory import BagSpec, frame_for, write_bag
from svlm_training.bag2dataset import main as bag2dataset
from svlm_training.dataset_format import SecondsDataset
from svlm_training.label_files import read_cues
from svlm_training.narrate import main as narrate
from training_helpers import SMALL_FRAMES

from svlm_ros.engine.model_settings import ENGINE_FORMAT, ModelSettings, write_settings

FAST = ["--torch-threads", "1", "--quiet"]


def write_mp4(path, seconds: int, fps: float = 4.0):
    """A real mp4 (MPEG-4 part 2, which OpenCV's bundled FFmpeg writes) of the synthetic camera."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (64, 48))
    assert writer.isOpened()
    for index in range(int(seconds * fps)):
        writer.write(cv2.cvtColor(frame_for(index / fps), cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def check_round_trip(tmp_path, source, out, *bag_args):
    """The VTT read back by --labels gives a dataset whose seconds say what was narrated."""
    narrated = rows(out.with_suffix(".jsonl"))
    assert [(r["start"], r["end"]) for r in narrated] == [(float(s), s + 1.0)
                                                          for s in range(len(narrated))]
    assert all(isinstance(r["latency"], float) and r["silent"] == (not r["text"])
               for r in narrated)
    cues = read_cues(out.with_suffix(".vtt"))
    assert [(c.start, c.end) for c in cues] == [(r["start"], r["end"]) for r in narrated
                                                if " ".join(r["text"].split())]
    data_dir = tmp_path / "data"
    code = bag2dataset([str(source), *bag_args, "--labels", str(out.with_suffix(".vtt")),
                        "--out", str(data_dir), "--quiet", *SMALL_FRAMES])
    assert code == 0
    data = SecondsDataset(data_dir)
    assert [data[i].second for i in range(len(data))] == list(range(len(narrated)))
    assert data.texts(range(len(data))) == [" ".join(r["text"].split()) for r in narrated]


def test_narrate_a_bag_and_read_the_vtt_back_as_labels(tmp_path, tiny_model_path, capsys):
    bag = write_bag(tmp_path / "bag", BagSpec(seconds=5))
    out = tmp_path / "labels" / "bag"
    code = narrate([str(bag), "--model", str(tiny_model_path), "--out", str(out) + ".vtt",
                    *FAST])
    assert code == 0, capsys.readouterr().err
    assert "5 seconds narrated" in capsys.readouterr().out
    assert sorted(p.name for p in out.parent.iterdir()) == ["bag.jsonl", "bag.vtt"]
    check_round_trip(tmp_path, bag, out, "--image-topic", "/camera/image")


def test_narrate_an_mp4_and_read_the_vtt_back_as_labels(tmp_path, tiny_model_path, capsys):
    video = write_mp4(tmp_path / "walk.mp4", seconds=4)
    out = tmp_path / "walk"
    assert narrate([str(video), "--model", str(tiny_model_path), "--out", str(out), *FAST]) == 0
    assert "4 seconds narrated" in capsys.readouterr().out
    check_round_trip(tmp_path, video, out)


def test_the_models_settings_shape_the_stream(tmp_path, tiny_model_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model_path, model)
    write_settings(model, ModelSettings(
        format=ENGINE_FORMAT, fps=1.0, period=2.0, max_pixels=6272, min_pixels=3136,
        max_new_tokens=3, text_sink_tokens=64, text_window_tokens=64, vision_window_seconds=4,
        system_prompt="", instruction="", previous_text=""))
    bag = write_bag(tmp_path / "bag", BagSpec(seconds=6))
    out = tmp_path / "out"
    assert narrate([str(bag), "--model", str(model), "--out", str(out), *FAST]) == 0
    narrated = rows(out.with_suffix(".jsonl"))
    # period 2 s from the settings file: three rounds of two seconds each.
    assert [(r["start"], r["end"]) for r in narrated] == [(0.0, 2.0), (2.0, 4.0), (4.0, 6.0)]
    assert "fps 1, period 2 s" in out.with_suffix(".vtt").read_text()
    # A node parameter file given explicitly wins over the settings file, as in the node.
    params = tmp_path / "params.yaml"
    params.write_text("/**:\n  ros__parameters:\n    period: 1.0\n    fps: 2.0\n")
    assert narrate([str(bag), "--model", str(model), "--out", str(out), "--params", str(params),
                    "--overwrite", *FAST]) == 0
    assert len(rows(out.with_suffix(".jsonl"))) == 6


def test_a_failure_midway_leaves_no_output(tmp_path, tiny_model_path, monkeypatch, capsys):
    from svlm_ros.engine.streaming_session import StreamingSession

    bag = write_bag(tmp_path / "bag", BagSpec(seconds=5))
    run_pending = StreamingSession.run_pending
    calls = []

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) > 3:
            raise ValueError("the model broke down")
        return run_pending(self, *args, **kwargs)

    monkeypatch.setattr(StreamingSession, "run_pending", failing)
    code = narrate([str(bag), "--model", str(tiny_model_path), "--out",
                    str(tmp_path / "out" / "bag"), *FAST])
    assert code == 1
    assert "the model broke down" in capsys.readouterr().err
    assert list((tmp_path / "out").iterdir()) == []


def test_refusals_name_the_problem(tmp_path, tiny_model_path, capsys):
    bag = write_bag(tmp_path / "bag", BagSpec(seconds=2, extra_topics={
        "/other/image": "sensor_msgs/msg/Image"}))
    out = tmp_path / "out"
    assert narrate([str(bag), "--model", str(tiny_model_path), "--out", str(out), *FAST]) == 1
    assert "2 image topics (/camera/image, /other/image); choose one with --image-topic" in \
        capsys.readouterr().err
    (tmp_path / "out.vtt").write_text("WEBVTT\n")
    assert narrate([str(bag), "--model", str(tiny_model_path), "--out", str(out),
                    "--image-topic", "/camera/image", *FAST]) == 1
    assert "out.vtt exists; pass --overwrite" in capsys.readouterr().err
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    assert narrate([str(broken), "--model", str(tiny_model_path), "--out", str(out),
                    "--overwrite", *FAST]) == 1
    assert f"{broken}: cannot open the video" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--help"])
def test_help(flag, capsys):
    with pytest.raises(SystemExit) as stop:
        narrate([flag])
    assert stop.value.code == 0 and "usage: svlm-narrate" in capsys.readouterr().out


def test_every_flag_is_in_the_training_readme():
    from pathlib import Path

    from svlm_training.narrate import build_parser

    text = (Path(__file__).resolve().parents[2] / "training" / "README.md").read_text()
    assert "### `svlm-narrate BAG_OR_VIDEO" in text
    flags = [option for action in build_parser()._actions for option in action.option_strings
             if option.startswith("--") and option != "--help"]
    missing = [flag for flag in flags if f"`{flag}`" not in text and f"`{flag}" not in text]
    assert not missing, f"undocumented in training/README.md: {missing}"
