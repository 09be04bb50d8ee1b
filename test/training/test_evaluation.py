"""svlm-eval: a bag replayed through the engine's StreamingSession, transcript and scores."""

from __future__ import annotations

import json
import math

import pytest
from bag_factory import BagSpec, write_bag
from svlm_training.dataset_format import SecondsDataset
from svlm_training.evaluation import main
from svlm_training.scoring import corpus_chrf, score_transcript, second_chrf, silence_agreement
from training_helpers import SMALL_FRAMES, leftovers

TEXTS = {0: "the card is red", 3: "now it is green", 6: "a blue card", 7: "blue"}


def test_second_scores():
    assert second_chrf("the red card", "the red card") == pytest.approx(100.0)
    assert second_chrf("", "") == 100.0
    assert second_chrf("", "something") == 0.0 and second_chrf("something", "") == 0.0
    assert 0 < second_chrf("the red cards", "a red card") < 100


def test_transcript_scores():
    hypotheses = ["red card", "", "green", "talking", ""]
    references = ["red card", "", "green", "", "blue"]
    assert silence_agreement(hypotheses, references) == pytest.approx(3 / 5)
    chrf, signature = corpus_chrf(hypotheses, references)
    # Only the three seconds with reference words count; one of them was missed.
    assert 0 < chrf < 100 and signature.startswith("nrefs:1")
    assert math.isnan(corpus_chrf(["a"], [""])[0])
    scores = score_transcript(hypotheses, references)
    assert scores["reference_spoken_seconds"] == 3 and scores["model_spoken_seconds"] == 3
    perfect = score_transcript(references, references)
    assert perfect["chrf"] == pytest.approx(100.0) and perfect["silence_agreement"] == 1.0


@pytest.mark.parametrize("text_type", ["string", "narration"])
def test_eval_replays_the_bag_in_stream_time(tmp_path, tiny_model_path, build_dataset, capsys,
                                             text_type):
    bag = write_bag(tmp_path / "bag", BagSpec(seconds=10, texts=TEXTS, text_type=text_type,
                                              storage="mcap", image="compressed"))
    out = tmp_path / "eval"
    code = main(["--bag", str(bag), "--model", str(tiny_model_path), "--image-topic",
                 "/camera/image", "--text-topic", "/commentary", "--out", str(out), "--quiet",
                 "--max-new-tokens", "6", *SMALL_FRAMES])
    assert code == 0, capsys.readouterr().err
    summary = capsys.readouterr().out
    assert "10 seconds narrated" in summary and "chrF" in summary

    rows = [json.loads(line) for line in (out / "transcript.jsonl").read_text().splitlines()]
    # Every second, the last one too (closed at the end of the bag, as the node closes it).
    assert [r["second"] for r in rows] == [float(s) for s in range(10)]
    # References are aligned exactly as the training dataset aligns text.
    code, data_dir = build_dataset([bag])
    assert code == 0
    assert [r["reference"] for r in rows] == SecondsDataset(data_dir).texts(range(10))
    for row in rows:
        assert row["latency"] > 0 and 1 <= row["generated_tokens"] <= 6
        assert row["silent"] == (row["text"] == "")
        assert row["chrf"] == pytest.approx(second_chrf(row["text"], row["reference"]))
    scores = json.loads((out / "scores.json").read_text())
    assert scores["seconds"] == 10
    assert scores["silence_agreement"] == pytest.approx(
        silence_agreement([r["text"] for r in rows], [r["reference"] for r in rows]))
    assert scores["settings"]["max_new_tokens"] == 6
    assert (out / "eval.png").read_bytes()[:4] == b"\x89PNG"
    assert leftovers(tmp_path) == []


def test_eval_without_reference_text(tmp_path, tiny_model_path, capsys):
    bag = write_bag(tmp_path / "bag", BagSpec(seconds=5, texts=TEXTS))
    out = tmp_path / "eval"
    code = main(["--bag", str(bag), "--model", str(tiny_model_path), "--image-topic",
                 "/camera/image", "--out", str(out), "--quiet", "--max-new-tokens", "4",
                 "--max-seconds", "2", *SMALL_FRAMES])
    assert code == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (out / "transcript.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and "reference" not in rows[0]
    scores = json.loads((out / "scores.json").read_text())
    assert "chrf" not in scores and scores["stamps"] == "header"


def test_eval_errors_name_the_problem(tmp_path, tiny_model_path, capsys):
    bag = write_bag(tmp_path / "bag", BagSpec(seconds=3))
    out = tmp_path / "eval"
    base = ["--bag", str(bag), "--model", str(tiny_model_path), "--out", str(out), "--quiet"]
    assert main([*base, "--image-topic", "/nope"]) == 1
    err = capsys.readouterr().err
    assert "no image topic '/nope'" in err and "/camera/image" in err
    out.mkdir()
    assert main([*base, "--image-topic", "/camera/image"]) == 1
    assert "--overwrite" in capsys.readouterr().err


def test_eval_asks_questions_and_runs_the_cache_ablations(tmp_path, tiny_model_path, capsys):
    bag = write_bag(tmp_path / "bag", BagSpec(seconds=8, texts=TEXTS))
    questions = tmp_path / "questions.jsonl"
    questions.write_text('{"second": 2, "question": "what colour is the card?"}\n'
                         '{"second": 5, "question": "and now?"}\n')
    base = ["--bag", str(bag), "--model", str(tiny_model_path), "--image-topic",
            "/camera/image", "--quiet", "--max-new-tokens", "3", "--vision-window-seconds", "2",
            "--text-sink-tokens", "2", "--text-window-tokens", "4", *SMALL_FRAMES]
    transcripts = {}
    for name, flags in {"bounded": [], "sliding": ["--no-attention-sink"],
                        "native": ["--native-positions"]}.items():
        out = tmp_path / name
        code = main([*base, "--out", str(out), "--questions", str(questions), *flags])
        assert code == 0, capsys.readouterr().err
        answers = [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()]
        assert [(a["second"], a["question"]) for a in answers] == [
            (2.0, "what colour is the card?"), (5.0, "and now?")]
        # Inline (the default): each question went into the next second's round, whose
        # transcript row says so.
        assert [a["round"] for a in answers] == [3.0, 6.0]
        settings = json.loads((out / "scores.json").read_text())["settings"]["cache"]
        assert settings["attention_sink"] == (name != "sliding")
        assert settings["contiguous_positions"] == (name != "native")
        rows = [json.loads(x) for x in (out / "transcript.jsonl").read_text().splitlines()]
        transcripts[name] = rows
    # Between rounds: answered at once from the cache, no round holds a question.
    out = tmp_path / "between"
    assert main([*base, "--out", str(out), "--questions", str(questions),
                 "--question-mode", "between"]) == 0
    answers = [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()]
    assert [(a["second"], "round" in a) for a in answers] == [(2.0, False), (5.0, False)]
    # Without the sink the cache holds fewer tokens once the first round has been evicted.
    assert (transcripts["sliding"][-1]["cache_tokens"]
            < transcripts["bounded"][-1]["cache_tokens"])
    # A budget stops the replay early and says so; with no time at all nothing is narrated.
    out = tmp_path / "budget"
    assert main([*base, "--out", str(out), "--budget-seconds", "1e-9"]) == 1
    assert "no complete second" in capsys.readouterr().err and not out.exists()
    assert json.loads((tmp_path / "bounded" / "scores.json").read_text())["stopped_early"] is False
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{\"question\": \"no second\"}\n")
    assert main([*base, "--out", str(tmp_path / "x"), "--questions", str(bad)]) == 1
    assert "bad.jsonl:1" in capsys.readouterr().err


def test_eval_takes_the_models_settings_unless_given(tmp_path, tiny_model_path, capsys):
    # As the node: a model trained without an instruction and with other windows is
    # evaluated with them (svlm-eval used the node's built-in defaults whatever the model said).
    import shutil

    from svlm_ros.engine.model_settings import ModelSettings, write_settings

    model = tmp_path / "model"
    shutil.copytree(tiny_model_path, model)
    write_settings(model, ModelSettings(
        format="streamingvlm-v1", fps=2.0, period=1.0, max_pixels=6272, min_pixels=3136,
        max_new_tokens=3, text_sink_tokens=16, text_window_tokens=32, vision_window_seconds=4,
        system_prompt="", instruction="", previous_text="A lab bench."))
    bag = write_bag(tmp_path / "bag", BagSpec(seconds=3, texts=TEXTS))
    out = tmp_path / "eval"
    code = main(["--bag", str(bag), "--model", str(model), "--image-topic", "/camera/image",
                 "--out", str(out), "--quiet", "--max-seconds", "1", "--text-window-tokens", "64"])
    assert code == 0, capsys.readouterr().err
    settings = json.loads((out / "scores.json").read_text())["settings"]
    assert settings["instruction"] == "" and settings["previous_text"] == "A lab bench."
    assert settings["system_prompt"] == "You are a helpful assistant."
    assert settings["max_new_tokens"] == 3 and settings["max_pixels"] == 6272
    assert settings["cache"]["vision_window_seconds"] == 4
    assert settings["cache"]["text_window_tokens"] == 64  # given: wins over the file's 32
