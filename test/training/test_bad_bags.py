"""Every bad bag gets an error that names its problem, and leaves nothing that looks complete."""

from __future__ import annotations

import json
import sqlite3

import pytest
from bag_factory import BagSpec, write_bag
from svlm_training.bag_reading import BagError, BagSource
from training_helpers import leftovers


def assert_failed(code, out, tmp_path, capsys, *needles):
    err = capsys.readouterr().err
    assert code == 1, err
    for needle in needles:
        assert needle in err, err
    assert not out.exists()
    assert leftovers(out.parent) == []
    return err


def test_missing_topic_lists_the_topics_the_bag_has(tmp_path, build_dataset, capsys):
    bag = write_bag(tmp_path / "bag", BagSpec(seconds=3))
    from svlm_training.bag2dataset import main

    out = tmp_path / "dataset"
    code = main([str(bag), "--image-topic", "/camera/nope", "--text-topic", "/commentary",
                 "--out", str(out), "--quiet"])
    assert_failed(code, out, tmp_path, capsys, "no image topic '/camera/nope'",
                  "/camera/image  [sensor_msgs/msg/Image]", "/commentary  [std_msgs/msg/String]",
                  "/rosout_like")


def test_topic_of_the_wrong_type(tmp_path, capsys):
    bag = write_bag(tmp_path / "bag", BagSpec(seconds=3))
    from svlm_training.bag2dataset import main

    out = tmp_path / "dataset"
    code = main([str(bag), "--image-topic", "/commentary", "--text-topic", "/commentary",
                 "--out", str(out), "--quiet"])
    assert_failed(code, out, tmp_path, capsys, "is std_msgs/msg/String; expected one of")


@pytest.mark.parametrize("texts", [{}, {1: "   ", 2: ""}])
def test_no_text_at_all(tmp_path, build_dataset, capsys, texts):
    bag = write_bag(tmp_path / "bag", BagSpec(seconds=3, texts=texts))
    code, out = build_dataset([bag])
    assert_failed(code, out, tmp_path, capsys, "no text at all on '/commentary'")


def test_a_bad_second_bag_leaves_nothing_of_the_first(tmp_path, build_dataset, capsys):
    good = write_bag(tmp_path / "good", BagSpec(seconds=4))
    bad = write_bag(tmp_path / "bad", BagSpec(seconds=4, texts={}))
    code, out = build_dataset([good, bad])
    assert_failed(code, out, tmp_path, capsys, str(bad))


def test_corrupt_sqlite_file(tmp_path, build_dataset, capsys):
    bag = write_bag(tmp_path / "bag", BagSpec(seconds=3))
    (db,) = bag.glob("*.db3")
    db.write_bytes(b"this is not an sqlite database" * 100)
    code, out = build_dataset([bag])
    assert_failed(code, out, tmp_path, capsys, str(bag), "cannot open the bag",
                  "file is not a database")


def test_sqlite_file_with_broken_rows(tmp_path, build_dataset, capsys):
    """Message rows whose bytes were cut short: the reader opens, the message cannot decode."""
    bag = write_bag(tmp_path / "bag", BagSpec(seconds=3))
    (db,) = bag.glob("*.db3")
    with sqlite3.connect(db) as connection:
        connection.execute("UPDATE messages SET data = substr(data, 1, 10)")
    code, out = build_dataset([bag])
    assert_failed(code, out, tmp_path, capsys, "cannot be decoded", "corrupt data?")


def test_truncated_mcap_file(tmp_path, build_dataset, capsys):
    bag = write_bag(tmp_path / "bag", BagSpec(seconds=4, storage="mcap"))
    (mcap,) = bag.glob("*.mcap")
    data = mcap.read_bytes()
    mcap.write_bytes(data[: len(data) // 2])  # a recorder killed mid-write
    code, out = build_dataset([bag])
    assert_failed(code, out, tmp_path, capsys, str(bag), "cannot open the bag", "mcap recover")


def test_not_a_bag(tmp_path, build_dataset, capsys):
    text_file = tmp_path / "notes.txt"
    text_file.write_text("hello")
    code, out = build_dataset([text_file])
    assert_failed(code, out, tmp_path, capsys, "not a rosbag2 bag")
    code, out = build_dataset([tmp_path / "missing"])
    assert_failed(code, out, tmp_path, capsys, "no such bag")


def test_stamps_out_of_order(tmp_path, build_dataset, capsys):
    stamps = [i / 4 for i in range(16)]
    stamps[6], stamps[7] = stamps[7], stamps[6]  # a camera driver that reorders two frames
    bag = write_bag(tmp_path / "bag", BagSpec(seconds=4, text_type="narration",
                                              frame_stamps=stamps))
    code, out = build_dataset([bag])
    assert_failed(code, out, tmp_path, capsys, "stamps out of order on '/camera/image'",
                  "frame 7 has stamp", "try --stamps receive")
    # The receive times are in order: the way out the message names works.
    code, out = build_dataset([bag], "--stamps", "receive")
    assert code == 0


def test_unsupported_encodings_are_skipped_and_counted(tmp_path, build_dataset, capsys):
    # Frames 2 and 8 start a half-second slot (4 Hz camera, 2 fps): the sampler wants them.
    bag = write_bag(tmp_path / "bag", BagSpec(seconds=4, encodings={2: "bayer_rggb8",
                                                                    8: "32FC1"}))
    code, out = build_dataset([bag])
    assert code == 0
    summary = capsys.readouterr().out
    assert "2 frames rejected" in summary and "unsupported encoding 'bayer_rggb8'" in summary
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["frames_rejected"] == 2
    reasons = manifest["sources"][0]["frames_rejected"]
    assert sorted(reasons.values()) == [1, 1]
    assert manifest["seconds"] == 4  # the next frames fill those slots


def test_a_bag_with_no_usable_frame_is_refused(tmp_path, build_dataset, capsys):
    bag = write_bag(tmp_path / "bag", BagSpec(seconds=3, encoding="bayer_rggb8"))
    code, out = build_dataset([bag])
    assert_failed(code, out, tmp_path, capsys, "no second of usable frames",
                  "12 x unsupported encoding 'bayer_rggb8'")


def test_existing_output_is_kept_unless_overwrite(tmp_path, build_dataset, capsys):
    bag = write_bag(tmp_path / "bag", BagSpec(seconds=3))
    code, out = build_dataset([bag])
    assert code == 0
    before = (out / "manifest.json").read_text()
    code, _ = build_dataset([bag])
    assert code == 1 and "--overwrite" in capsys.readouterr().err
    assert (out / "manifest.json").read_text() == before
    code, _ = build_dataset([bag], "--overwrite")
    assert code == 0 and leftovers(tmp_path) == []


def test_bag_source_reports_storage_and_topics(tmp_path):
    bag = write_bag(tmp_path / "bag", BagSpec(seconds=3, storage="mcap", split_at=1.5))
    with BagSource(bag) as source:
        assert source.storage == "mcap" and source.files == 2
        assert source.topics()["/camera/image"] == "sensor_msgs/msg/Image"
        assert source.message_count("/camera/image") == 12
        assert sum(1 for _ in source.messages("/camera/image")) == 12
    with pytest.raises(RuntimeError, match="context manager"):
        _ = source.reader
    with pytest.raises(BagError, match="no such bag"):
        BagSource(tmp_path / "nothing")


def test_narration_of_several_cameras_needs_a_choice(tmp_path, build_dataset, capsys):
    spec = BagSpec(seconds=4, text_type="narration", texts={1: "front words"},
                   other_camera="rear")
    bag = write_bag(tmp_path / "bag", spec)
    code, out = build_dataset([bag])
    assert_failed(code, out, tmp_path, capsys, "narration of several cameras (front, rear)",
                  "--camera")
    code, out = build_dataset([bag], "--camera", "side")
    assert_failed(code, out, tmp_path, capsys, "no narration of camera 'side'")
    code, out = build_dataset([bag], "--camera", "front")
    assert code == 0
    from svlm_training.dataset_format import SecondsDataset

    assert SecondsDataset(out).texts(range(3)) == ["", "front words", ""]
