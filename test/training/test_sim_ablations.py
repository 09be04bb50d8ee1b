"""``svlm-sim-ablations``' scoring and table on transcripts of known quality (the replays
themselves are ``svlm-eval``'s, tested there): memory events and questions are counted apart."""

from __future__ import annotations

import json
from pathlib import Path

from svlm_training import sim_ablations
from transformers import AutoProcessor

from svlm_ros.sim.questions import pause_end_questions
from svlm_ros.sim.world import World, WorldConfig

SECONDS = 1200
MODEL = Path(__file__).resolve().parents[2] / "config" / "sim_narrator"


def write_run(folder, world, say, answer, wall_seconds=90.0, text_tokens=(128, 256)):
    folder.mkdir(parents=True)
    rows = [{"second": s, "text": say(s), "latency": 0.01, "cache_tokens": 100}
            for s in range(SECONDS)]
    (folder / "transcript.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    questions = pause_end_questions(world, SECONDS)
    (folder / "answers.jsonl").write_text("".join(
        json.dumps({"second": q.second, "question": q.question, "answer": answer(q)}) + "\n"
        for q in questions))
    cache = {"text_sink_tokens": text_tokens[0], "text_window_tokens": text_tokens[1],
             "vision_window_seconds": 8}
    (folder / "scores.json").write_text(json.dumps({
        "stopped_early": False, "wall_seconds": wall_seconds,
        "settings": {"max_new_tokens": 16, "cache": cache}}))
    return questions


def test_memory_events_and_questions_are_scored_apart_and_tabled(tmp_path):
    world = World(WorldConfig(seed=31))
    truth = world.sentence_at
    questions = write_run(tmp_path / "bounded", world, truth, lambda q: q.answer)
    # A narrator without memory: a shape that is back merely enters, a still one is not seen.
    forgetful = lambda s: (truth(s).replace("is back", "enters")  # noqa: E731
                           if "is still" not in truth(s) else "")
    write_run(tmp_path / "text0", world, forgetful, lambda q: "I do not know", wall_seconds=30.0,
              text_tokens=(0, 0))
    tokenizer = AutoProcessor.from_pretrained(MODEL).tokenizer
    good = sim_ablations.summarize("bounded", tmp_path / "bounded", world, questions, tokenizer)
    bad = sim_ablations.summarize("text0", tmp_path / "text0", world, questions, tokenizer)
    assert good["accuracy"] == good["memory_accuracy"] == 1.0
    assert set(good["kind_accuracy"].values()) == {1.0} and len(good["kind_accuracy"]) == 6
    # The forgetful narrator gets every new shape right and no returning or still one.
    assert bad["kind_accuracy"]["enters"] == 1.0
    assert bad["kind_accuracy"]["returns"] == bad["kind_accuracy"]["still"] == 0.0
    assert good["questions_right"] == good["questions_asked"] == len(questions) >= 4
    assert bad["memory_accuracy"] == 0.0 and bad["questions_right"] == 0
    assert bad["event_accuracy"] < good["event_accuracy"]
    assert good["memory_events"] == bad["memory_events"] > 50
    assert good["distinct_answers"] > 2 and bad["distinct_answers"] == 1
    # Each setting's replay time is its own svlm-eval's, not this call's.
    assert (good["replay_minutes"], bad["replay_minutes"]) == (1.5, 0.5)
    # Narrated right with a text window, every answer is still in the cache's text; with no
    # text window none is (pause-end questions are about leavings 50 s old or more).
    assert good["questions_in_cache"] == good["questions_right_in_cache"] == len(questions)
    assert bad["questions_in_cache"] == bad["questions_right_in_cache"] == 0
    reference = {"always_silent": 0.5, "chance": 0.25, "seed": 31, "seconds": SECONDS,
                 "model": "m", "replay_minutes": 2.0, "questions": len(questions),
                 "questions_constant_right": 3, "questions_chance_right": 1.2}
    sim_ablations.write_results(tmp_path, [good, bad], reference)
    table = (tmp_path / "results.md").read_text()
    assert "| 100.0 (100.0 / 100.0) |" in table and "| 0.0 (0.0 / 0.0) |" in table
    assert "no previous text (text window 0)" in table
    assert "| setting | enters | moves | turns and moves | leaves | is back | is still |" in table
    assert "| text0 | 100.0 | 100.0 | 100.0 | 100.0 | 0.0 | 0.0 |" in table
    assert "best constant answer per kind (always the same colour, always the same shape) " \
        "gets 3, random words 1.2. Distinct answers per setting: bounded " in table
    assert f"answered right: bounded {len(questions)} ({len(questions)}), text0 0 (0)." in table
    assert (tmp_path / "ablations.png").stat().st_size > 0
    assert json.loads((tmp_path / "results.json").read_text())["results"][1]["setting"] == "text0"
