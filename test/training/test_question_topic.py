"""Questions recorded in a bag become the questions of dataset seconds, and training renders
them as the engine asks them: the simulated world's bags, ``--question-topic``, the chunker."""

from __future__ import annotations

import json

import pytest
import torch
from svlm_training.bag2dataset import main as bag2dataset
from svlm_training.chunking import Chunk, ChunkConfig, ChunkRenderer
from svlm_training.dataset_format import SecondsDataset

from svlm_ros.engine.model_loading import load_model
from svlm_ros.sim.bag_writer import BagSettings, write_world_bag
from svlm_ros.sim.questions import training_questions
from svlm_ros.sim.world import World, WorldConfig

SMALL = ["--max-pixels", "6272", "--min-pixels", "3136", "--fps", "2", "--quiet"]


@pytest.fixture(scope="module")
def loaded(tiny_model_path):
    return load_model(tiny_model_path)


def world_bag(tmp_path, share=0.3, seconds=60):
    world = World(WorldConfig(seed=9, width=64, height=48))
    settings = BagSettings(seconds=seconds, camera_hz=2.0, storage="mcap", image_format="raw",
                           question_share=share)
    return world, write_world_bag(tmp_path / "bag", world, settings), settings


def build(tmp_path, bag, *extra):
    out = tmp_path / "dataset"
    code = bag2dataset([str(bag), "--image-topic", "/camera/image_raw", "--text-topic",
                        "/svlm/ground_truth", "--out", str(out), *SMALL, *extra])
    return code, out


def test_each_question_lands_in_the_second_after_the_one_it_follows(tmp_path):
    world, bag, settings = world_bag(tmp_path)
    code, out = build(tmp_path, bag, "--question-topic", "/svlm/question")
    assert code == 0
    data = SecondsDataset(out)
    asked = {q.second + 1: q for q in training_questions(world, 60, share=0.3, min_age=10)
             if q.second + 1 < 60}
    assert len(asked) >= 3
    rows = {data[i].second: data[i] for i in range(len(data))}
    for second, row in rows.items():
        if second in asked:
            assert (row.question, row.answer) == (asked[second].question, asked[second].answer)
        else:
            assert row.question == row.answer == ""
    (source,) = json.loads((out / "manifest.json").read_text())["sources"]
    assert source["questions"] == source["questions_placed"] == len(asked)
    # The previous text keeps an answered second's answer with its words.
    second = min(asked)
    history = data.history(range(second + 1))
    assert history[second] == (rows[second].text, asked[second].answer)
    assert all(isinstance(item, str) for item in history[:second])


def test_without_the_flag_or_the_topic_there_are_no_questions(tmp_path):
    _, bag, _ = world_bag(tmp_path)
    code, out = build(tmp_path, bag)
    assert code == 0
    data = SecondsDataset(out)
    assert not any(data[i].question for i in range(len(data)))


def test_a_missing_question_topic_or_a_question_with_labels_is_refused(tmp_path, capsys):
    _, bag, _ = world_bag(tmp_path, share=0.0)
    code, out = build(tmp_path, bag, "--question-topic", "/svlm/question")
    assert code != 0 and not out.exists()
    assert "/svlm/question" in capsys.readouterr().err
    labels = tmp_path / "labels.vtt"
    labels.write_text("WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nhello\n")
    with pytest.raises(SystemExit) as refused:
        bag2dataset([str(bag), "--image-topic", "/camera/image_raw", "--labels", str(labels),
                     "--question-topic", "/svlm/question", "--out", str(tmp_path / "x"), *SMALL])
    assert refused.value.code == 2
    assert "--question-topic reads questions from bags" in capsys.readouterr().err


def test_a_malformed_question_message_names_the_bag_and_message(tmp_path, capsys):
    from rosbags.rosbag2 import Writer
    from rosbags.typesys import Stores, get_typestore

    _, good, _ = world_bag(tmp_path, share=0.0, seconds=4)
    typestore = get_typestore(Stores.ROS2_KILTED)
    String = typestore.types["std_msgs/msg/String"]
    bad = tmp_path / "bad"
    from rosbags.rosbag2 import Reader

    with Reader(good) as reader, Writer(bad, version=9) as writer:
        connections = {c.topic: writer.add_connection(c.topic, c.msgtype, typestore=typestore)
                       for c in reader.connections}
        asking = writer.add_connection("/svlm/question", "std_msgs/msg/String",
                                       typestore=typestore)
        for connection, stamp, data in reader.messages():
            writer.write(connections[connection.topic], stamp, data)
        writer.write(asking, int(1_750_000_001.25e9), typestore.serialize_cdr(
            String(data="what colour?"), "std_msgs/msg/String"))
    code, out = build(tmp_path, bad, "--question-topic", "/svlm/question")
    assert code != 0 and not out.exists()
    error = capsys.readouterr().err
    assert "question message 0" in error and '{"question": ..., "answer": ...}' in error


def test_training_renders_a_recorded_question_before_the_video_and_trains_its_answer(
        tmp_path, loaded):
    world, bag, _ = world_bag(tmp_path)
    code, out = build(tmp_path, bag, "--question-topic", "/svlm/question")
    assert code == 0
    data = SecondsDataset(out)
    row = next(i for i in range(len(data)) if data[i].question)
    renderer = ChunkRenderer(loaded.processor, loaded.model.config,
                             ChunkConfig(chunk_seconds=2, overlap_seconds=0, max_new_tokens=16),
                             max_pixels=6272, min_pixels=3136, fps=2.0)
    chunk = Chunk(episode=0, rows=range(row, row + 1), first_row=0)
    sample = renderer.render_chunk(data, chunk)
    text = loaded.processor.tokenizer.decode(sample.input_ids)
    second = data[row]
    assert f"Time={second.start:.1f}-{second.end:.1f}s {second.question}<|vision_start|>" in text
    trained = loaded.processor.tokenizer.decode(sample.labels[sample.labels >= 0])
    assert trained.startswith(f"{second.answer}\n")
    # The answer is remembered with its words in the previous text of a later chunk.
    later = renderer.render_chunk(data, Chunk(episode=0, rows=range(row + 1, row + 2),
                                              first_row=0))
    assert f" {second.answer}" in loaded.processor.tokenizer.decode(later.input_ids)
    assert torch.equal(sample.input_ids, renderer.render_chunk(data, chunk).input_ids)


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_a_question_share_outside_zero_to_one_is_refused(share):
    with pytest.raises(ValueError, match="question_share"):
        BagSettings(question_share=share)


def test_svlm_sim_bag_records_questions_when_asked(tmp_path, capsys):
    from rosbags.rosbag2 import Reader

    from svlm_ros.sim.cli import main as svlm_sim

    assert svlm_sim(["bag", str(tmp_path / "q"), "--seconds", "80", "--size", "64x48",
                     "--rate", "2", "--question-share", "0.2"]) == 0
    assert svlm_sim(["bag", str(tmp_path / "none"), "--seconds", "80", "--size", "64x48",
                     "--rate", "2"]) == 0
    with Reader(tmp_path / "q") as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
    assert counts["/svlm/question"] >= 3
    with Reader(tmp_path / "none") as reader:
        assert "/svlm/question" not in {c.topic for c in reader.connections}
