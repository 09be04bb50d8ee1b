"""svlm-bag2dataset --labels: real bags labelled by WebVTT, SRT and JSONL files, with offsets
and absolute stamps; bad files and bad combinations of options are refused by name."""

from __future__ import annotations

import json

import pytest
from bag_factory import START, BagSpec, write_bag
from svlm_training.bag2dataset import main
from svlm_training.dataset_format import SecondsDataset
from training_helpers import SMALL_FRAMES, leftovers


def build(tmp_path, sources, *extra, out="dataset"):
    out = tmp_path / out
    argv = [str(s) for s in [*sources, "--out", out, "--quiet", *SMALL_FRAMES, *extra]]
    return main(argv), out


def texts(out) -> list[str]:
    data = SecondsDataset(out)
    return [data[i].text for i in range(len(data))]


@pytest.fixture
def bag(tmp_path):
    # The bag's own text topic says something else: only the label file must count.
    return write_bag(tmp_path / "bag", BagSpec(seconds=6, texts={0: "topic words"}))


def test_vtt_labels_count_from_the_first_frame(tmp_path, bag, capsys):
    labels = tmp_path / "bag.vtt"
    labels.write_text("WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nthe card is red\n\n"
                      "00:00:03.000 --> 00:00:05.000\nnow it is green\n")
    code, out = build(tmp_path, [bag], "--image-topic", "/camera/image", "--labels", labels)
    assert code == 0, capsys.readouterr().err
    assert texts(out) == ["", "the card is red", "", "now it", "is green", ""]
    (source,) = json.loads((out / "manifest.json").read_text())["sources"]
    assert source["labels"] == str(labels) and source["labels_clock"] == "stream"
    assert source["text_topic"] is None and source["labels_cues"] == 2
    assert source["stamps"] == "header"  # Image has headers; the label file follows the frames
    assert f"text from labels {labels} (stream times)" in capsys.readouterr().out


def test_srt_labels_with_an_offset(tmp_path, bag):
    labels = tmp_path / "bag.srt"
    labels.write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n\n"
                      "2\n00:00:02,200 --> 00:00:02,900\nworld\n")
    code, out = build(tmp_path, [bag], "--image-topic", "/camera/image", "--labels", labels,
                      "--labels-offset", "2")
    assert code == 0
    assert texts(out) == ["", "", "hello", "", "world", ""]
    assert json.loads((out / "manifest.json").read_text())["sources"][0]["labels_offset"] == 2


def test_jsonl_labels_in_absolute_stamps_of_the_bags_clock(tmp_path, bag):
    labels = tmp_path / "bag.jsonl"
    rows = [{"start": START + 2.1, "end": START + 2.6, "text": "stamped"},
            {"start": START + 4.0, "end": START + 5.0, "text": "", "silent": True}]
    labels.write_text("".join(json.dumps(row) + "\n" for row in rows))
    code, out = build(tmp_path, [bag], "--image-topic", "/camera/image", "--labels", labels)
    assert code == 0
    assert texts(out) == ["", "", "stamped", "", "", ""]
    assert json.loads((out / "manifest.json").read_text())["sources"][0]["labels_clock"] == \
        "absolute"


def test_one_label_file_per_bag_and_one_offset_per_file(tmp_path, bag):
    second = write_bag(tmp_path / "second", BagSpec(seconds=4, storage="mcap"))
    first_labels, second_labels = tmp_path / "a.vtt", tmp_path / "b.vtt"
    first_labels.write_text("WEBVTT\n\n00:00.000 --> 00:01.000\nfirst bag\n")
    second_labels.write_text("WEBVTT\n\n00:00.000 --> 00:01.000\nsecond bag\n")
    code, out = build(tmp_path, [bag, second], "--image-topic", "/camera/image",
                      "--labels", first_labels, "--labels", second_labels,
                      "--labels-offset", "0", "--labels-offset", "1")
    assert code == 0
    data = SecondsDataset(out)
    assert [data.texts(rows) for rows in data.episodes()] == [
        ["first bag", "", "", "", "", ""], ["", "second bag", "", ""]]


def test_a_bad_label_file_stops_the_build_naming_file_and_line(tmp_path, bag, capsys):
    labels = tmp_path / "bad.vtt"
    labels.write_text("WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nfine\n\n"
                      "00:00:03.000 --> 00:00:0x.000\nbroken\n")
    code, out = build(tmp_path, [bag], "--image-topic", "/camera/image", "--labels", labels)
    assert code == 1
    assert f"{labels}:6: expected a timing line" in capsys.readouterr().err
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--image-topic", "/camera/image"], "need --text-topic (bags only) or --labels"),
        (["--image-topic", "/camera/image", "--text-topic", "/commentary", "--labels", "x.vtt"],
         "either --text-topic or --labels"),
        (["--labels", "x.vtt"], "bags need --image-topic"),
        (["--image-topic", "/camera/image", "--labels", "x.vtt", "--labels", "y.vtt"],
         "one label file per bag or video"),
        (["--image-topic", "/camera/image", "--text-topic", "/commentary",
          "--labels-offset", "1"], "--labels-offset needs --labels"),
    ],
)
def test_bad_combinations_are_refused(tmp_path, bag, capsys, extra, message):
    with pytest.raises(SystemExit) as stop:
        build(tmp_path, [bag], *extra)
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_nothing_to_read_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        build(tmp_path, [])
    assert "at least one bag or video, or --public-jsonl" in capsys.readouterr().err


def test_a_video_file_with_srt_labels_and_an_offset(tmp_path, capsys):
    from test_narrate import write_mp4

    video = write_mp4(tmp_path / "clip.mp4", seconds=4)
    labels = tmp_path / "clip.srt"
    labels.write_text("1\n00:00:00,000 --> 00:00:01,000\nstart\n\n"
                      "2\n00:00:01,000 --> 00:00:03,000\nthen more\n")
    code, out = build(tmp_path, [video], "--labels", labels, "--labels-offset", "0.5")
    assert code == 0, capsys.readouterr().err
    # [0.5, 1.5] ends in second 1; "then" ends at 2.5, "more" at 3.5.
    assert texts(out) == ["", "start", "then", "more"]
    (source,) = json.loads((out / "manifest.json").read_text())["sources"]
    assert source["video"] == str(video) and source["duration"] == pytest.approx(4.0)
    assert f"{video}: 4.0 s of video, labels {labels}" in capsys.readouterr().out


def test_a_video_refuses_absolute_stamps_and_text_topics(tmp_path, capsys):
    from test_narrate import write_mp4

    video = write_mp4(tmp_path / "clip.mp4", seconds=2)
    labels = tmp_path / "clip.jsonl"
    labels.write_text(json.dumps({"start": START, "end": START + 1, "text": "x"}) + "\n")
    code, _ = build(tmp_path, [video], "--labels", labels)
    assert code == 1
    assert "absolute stamps (>= 1e9 s) label a bag's clock" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build(tmp_path, [video], "--text-topic", "/commentary")
    assert "a video file has no topics" in capsys.readouterr().err
