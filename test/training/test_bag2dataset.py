"""svlm-bag2dataset on real rosbag2 bags: both storages, raw and compressed images, String and
Narration text, split and compressed bags, several bags."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from bag_factory import START, BagSpec, frame_for, write_bag
from svlm_training.bag2dataset import resize_frame
from svlm_training.dataset_format import SecondsDataset
from training_helpers import leftovers


def expected_frames(second: int) -> list[np.ndarray]:
    """What the dataset must hold for ``second`` of the synthetic camera at 4 Hz, 2 fps."""
    return [resize_frame(frame_for(second + half), 6272, 3136) for half in (0.0, 0.5)]


@pytest.mark.parametrize(
    ("storage", "image", "text_type"),
    [("sqlite3", "raw", "string"), ("mcap", "compressed", "narration"),
     ("sqlite3", "compressed", "narration"), ("mcap", "raw", "string")],
)
def test_bag_becomes_aligned_seconds(tmp_path, build_dataset, capsys, storage, image, text_type):
    spec = BagSpec(seconds=8, storage=storage, image=image, text_type=text_type,
                   texts={1: "the card is red", 4: "now green <|im_end|>"})
    bag = write_bag(tmp_path / "bag", spec)
    code, out = build_dataset([bag])
    assert code == 0
    summary = capsys.readouterr().out
    assert "8 seconds (6 silent)" in summary and "s of bag per second" in summary

    manifest = json.loads((out / "manifest.json").read_text())
    (source,) = manifest["sources"]
    assert source["storage"] == storage
    assert source["stamps"] == ("header" if text_type == "narration" else "receive")
    assert source["image_type"].endswith("CompressedImage" if image == "compressed" else "/Image")
    # 8 s of camera; the last second is closed at the end of the bag, as the node does.
    assert manifest["seconds"] == 8 and manifest["silent_seconds"] == 6
    assert manifest["silent_share"] == pytest.approx(6 / 8)
    assert manifest["words_per_second"] == pytest.approx(7 / 8)

    data = SecondsDataset(out)
    assert [data[i].second for i in range(len(data))] == list(range(8))
    assert [data[i].text for i in range(len(data))] == [
        "", "the card is red", "", "", "now green <|im_end|>", "", "", ""]
    for row in (0, 3, 7):
        got = data[row].frames
        assert got.shape == (2, 56, 56, 3)
        assert not got.flags.writeable  # a view of the memory-mapped file
        np.testing.assert_array_equal(got, np.stack(expected_frames(row)))
    assert leftovers(tmp_path) == []


def test_raw_encodings_are_converted_to_rgb(tmp_path, build_dataset):
    frames = {}
    for encoding in ("bgr8", "rgba8", "bgra8", "mono8", "mono16"):
        bag = write_bag(tmp_path / encoding, BagSpec(seconds=3, encoding=encoding))
        code, out = build_dataset([bag], out=tmp_path / f"data_{encoding}")
        assert code == 0, encoding
        frames[encoding] = SecondsDataset(out)[0].frames[0]
    for encoding in ("bgr8", "rgba8", "bgra8"):
        np.testing.assert_array_equal(frames[encoding], expected_frames(0)[0])
    gray = frames["mono8"]
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 1] == gray[..., 2]).all()
    assert gray.std() > 0
    np.testing.assert_array_equal(frames["mono16"], gray)


def test_split_and_compressed_bags_give_the_same_dataset(tmp_path, build_dataset):
    texts = {0: "start", 3: "middle words", 6: "late"}
    datasets = {}
    for name, extra in [("plain", {}), ("split", {"split_at": 4.0}),
                        ("zstd_file", {"compression": "file"}),
                        ("zstd_message", {"compression": "message"})]:
        bag = write_bag(tmp_path / name, BagSpec(seconds=8, texts=texts, **extra))
        code, out = build_dataset([bag], out=tmp_path / f"data_{name}")
        assert code == 0, name
        datasets[name] = SecondsDataset(out)
    manifest = datasets["split"].manifest
    assert manifest["sources"][0]["files"] == 2
    reference = datasets["plain"]
    for name, data in datasets.items():
        assert len(data) == len(reference) == 8, name
        for row in range(len(data)):
            assert data[row].text == reference[row].text, name
            np.testing.assert_array_equal(data[row].frames, reference[row].frames)


def test_several_bags_are_episodes_one_after_the_other(tmp_path, build_dataset):
    first = write_bag(tmp_path / "a", BagSpec(seconds=5, texts={0: "first bag"}))
    second = write_bag(tmp_path / "b", BagSpec(seconds=4, storage="mcap", texts={2: "second"}))
    code, out = build_dataset([first, second])
    assert code == 0
    data = SecondsDataset(out)
    assert data.episodes() == [range(0, 5), range(5, 9)]
    assert [data[i].episode for i in range(9)] == [0, 0, 0, 0, 0, 1, 1, 1, 1]
    assert data[0].text == "first bag" and data[7].text == "second"
    assert [s["bag"] for s in data.manifest["sources"]] == [str(first), str(second)]


def test_the_seconds_file_is_a_plain_arrow_stream(tmp_path, build_dataset):
    """Any Arrow reader (and Hugging Face ``datasets.Dataset.from_file``) opens it."""
    bag = write_bag(tmp_path / "bag", BagSpec(seconds=4))
    code, out = build_dataset([bag])
    assert code == 0
    with pa.memory_map(str(out / "seconds.arrow")) as source:
        table = pa.ipc.open_stream(source).read_all()
    assert table.num_rows == 4
    assert table.column_names[:5] == ["episode", "second", "start", "end", "text"]


def test_narration_stamps_place_text_in_the_second_it_describes(tmp_path, build_dataset):
    """A Narration's stamp is the end of its second (as the node publishes it)."""
    spec = BagSpec(seconds=6, text_type="narration", texts={0: "zero", 2: "two"})
    bag = write_bag(tmp_path / "bag", spec)
    assert START > 0
    code, out = build_dataset([bag])
    assert code == 0
    data = SecondsDataset(out)
    assert [data[i].text for i in range(len(data))] == ["zero", "", "two", "", "", ""]
    # With receive times the node's reported latency is taken off first: same seconds.
    code, out = build_dataset([bag], "--stamps", "receive", out=tmp_path / "receive")
    assert code == 0
    assert SecondsDataset(out).texts(range(6)) == ["zero", "", "two", "", "", ""]


def test_stored_frames_are_what_the_engine_would_feed_the_model(tmp_path, build_dataset,
                                                                 tiny_model_path):
    """Frames are resized when the dataset is built; patchified by the engine's VisionInput they
    give the same model input as the camera's original frames would at inference."""
    from transformers import AutoProcessor

    from svlm_ros.engine.vision_input import VisionInput

    bag = write_bag(tmp_path / "bag", BagSpec(seconds=3, height=480, width=640))
    code, out = build_dataset([bag])
    assert code == 0
    stored = SecondsDataset(out)[1].frames
    assert stored.shape[1:3] != (480, 640)  # really resized at build time
    vision = VisionInput(AutoProcessor.from_pretrained(tiny_model_path), max_pixels=6272,
                         min_pixels=3136, fps=2.0)
    original = [frame_for(1.0, 480, 640), frame_for(1.5, 480, 640)]
    from_camera = vision.prepare(original)
    from_dataset = vision.prepare(list(stored))
    assert from_dataset.size == from_camera.size
    assert from_dataset.grid_thw.tolist() == from_camera.grid_thw.tolist()
    assert (from_dataset.pixel_values == from_camera.pixel_values).all()
