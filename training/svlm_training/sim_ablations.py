"""``svlm-sim-ablations``: the paper's ablations, reproduced on an unseen simulated stream.

    svlm-sim-ablations --model config/sim_narrator --out ablations [--seconds 7200]

1. ``svlm-sim``'s bag writer records an unseen stream (``--seed``, default 100777: a held-out
   seed, ``FIRST_HELD_OUT_SEED`` or above, which training refuses) of ``--seconds`` (2 h) as an
   mcap bag;
2. ``svlm-eval`` replays it through the streaming engine once per cache setting, with the same
   model and narration settings, for the whole stream, asking the memory questions of
   ``svlm_ros.sim.questions`` at the end of every pause ("What colour was the last shape that
   left?", "What shape was the last one that left?", whose answer left the vision window at
   least a minute before);
3. every transcript is scored per 10-minute slice (``svlm_ros.sim.scoring``), with the events
   that need memory (a shape that is back, one that is still) on their own, and the results
   go into ``OUT/results.md`` (a table), ``OUT/results.json`` and ``OUT/ablations.png``.

Settings (``--settings``, comma-separated; all by default):

    bounded    ours, as the narrator was trained: sink + previous text (first and last tokens)
               + 8 s of vision, contiguous positions
    full       nothing evicted (full attention), until ``--full-budget`` wall seconds
    sliding    a sliding window without sinks: no system-prompt sink, no text sink
    native     ours, but positions are not made contiguous after evictions
    vision1, vision4, vision16
               ours with a 1 s, 4 s and 16 s vision window (8 s is ``bounded``)
    text0      ours without previous text (text sink and window 0): no words outlive
               their round
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from svlm_ros.engine.prompt_format import PromptFormat
from svlm_ros.sim.bag_writer import BagSettings, write_world_bag
from svlm_ros.sim.questions import (
    answer_is_right,
    chance_answers_right,
    constant_answer_right,
    pause_end_questions,
)
from svlm_ros.sim.scoring import accuracy_by_kind, chance_accuracy, score_narration, total
from svlm_ros.sim.world import FIRST_HELD_OUT_SEED, KINDS, World, WorldConfig
from svlm_training.cache_text import latest_leaving_answers, text_in_cache
from svlm_training.sim_narrator import IMAGE_TOPIC, NARRATOR_SETTINGS, TEXT_TOPIC

SETTINGS = {
    "bounded": ([], "ours: sink + text windows + 8 s vision, contiguous positions"),
    "full": (["--vision-window-seconds", "{seconds}"], "full attention (nothing evicted)"),
    "sliding": (["--no-attention-sink", "--text-sink-tokens", "0"],
                "sliding window without sinks"),
    "native": (["--native-positions"], "native (non-contiguous) positions"),
    "vision1": (["--vision-window-seconds", "1"], "vision window 1 s"),
    "vision4": (["--vision-window-seconds", "4"], "vision window 4 s"),
    "vision16": (["--vision-window-seconds", "16"], "vision window 16 s"),
    "text0": (["--text-sink-tokens", "0", "--text-window-tokens", "0"],
              "no previous text (text window 0)"),
}
SLICE_SECONDS = 600


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="svlm-sim-ablations",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="the sim narrator checkpoint")
    parser.add_argument("--out", required=True, help="results folder (reused: finished "
                        "settings are not run again)")
    parser.add_argument("--seconds", type=int, default=7200, help="stream length (default 2 h)")
    parser.add_argument("--seed", type=int, default=FIRST_HELD_OUT_SEED + 777,
                        help=f"world seed (default {FIRST_HELD_OUT_SEED + 777}; seeds below "
                        f"{FIRST_HELD_OUT_SEED} may have been trained on)")
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help=f"comma-separated subset of {', '.join(SETTINGS)}")
    parser.add_argument("--full-budget", type=float, default=900.0,
                        help="wall seconds after which full attention is stopped (default 900)")
    parser.add_argument("--baseline-seconds", type=int, default=0,
                        help="replay only this many seconds for the settings other than "
                             "bounded (default 0: the whole stream); for a quicker run")
    return parser


def narrator_flags() -> list[str]:
    flags = []
    for name, value in NARRATOR_SETTINGS.items():
        flags += [f"--{name.replace('_', '-')}", str(value)]
    return flags


def run_setting(name: str, args, bag: Path, questions: Path) -> Path:
    from svlm_training import evaluation

    out = Path(args.out) / name
    if (out / "transcript.jsonl").exists():
        return out
    extra = [flag.format(seconds=args.seconds) for flag in SETTINGS[name][0]]
    argv = ["--bag", str(bag), "--model", str(args.model), "--image-topic", IMAGE_TOPIC,
            "--out", str(out), "--questions", str(questions), *narrator_flags(), *extra]
    if name == "full":
        argv += ["--budget-seconds", str(args.full_budget)]
    if name != "bounded" and args.baseline_seconds:
        argv += ["--max-seconds", str(args.baseline_seconds)]
    print(f"== {name}: {SETTINGS[name][1]}", flush=True)
    status = evaluation.main(argv)
    if status:
        raise RuntimeError(f"svlm-eval failed for {name} (exit status {status})")
    return out


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarize(name: str, folder: Path, world: World, questions, tokenizer=None) -> dict:
    """One setting's scores from its replay folder. With the model's ``tokenizer``, also how
    many questions the cache's text could still answer (``questions_in_cache``)."""
    rows = read_jsonl(folder / "transcript.jsonl")
    narration = [(int(round(row["second"])), row["text"]) for row in rows]
    slices = score_narration(world, narration, SLICE_SECONDS)
    overall = total(slices)
    answers = {(int(round(a["second"])), a["question"]): a
               for a in read_jsonl(folder / "answers.jsonl")}
    asked = [q for q in questions if (q.second, q.question) in answers]
    is_right = {q: answer_is_right(q, answers[q.second, q.question].get("answer", ""))
                for q in asked}
    right = sum(is_right.values())
    scores = json.loads((folder / "scores.json").read_text())
    in_cache = right_in_cache = None
    if tokenizer is not None and "settings" in scores:
        settings = scores["settings"]
        prompt_format = PromptFormat(tokenizer, settings.get("system_prompt", ""),
                                     settings.get("instruction", ""),
                                     settings.get("previous_text", ""))
        words = [text for _, text in sorted(narration)]
        given = {int(round(a["round"])) - 1: a.get("answer", "")
                 for a in answers.values() if a.get("round") is not None}
        held = [q for q in asked if latest_leaving_answers(
            q, text_in_cache(prompt_format, settings, words, given, q.second))]
        in_cache = len(held)
        right_in_cache = sum(is_right[q] for q in held)
    latencies = [row["latency"] for row in rows]
    return {
        "setting": name,
        "description": SETTINGS[name][1],
        "seconds": overall.seconds,
        "stopped_early": bool(scores.get("stopped_early")),
        "accuracy": overall.accuracy,
        "event_accuracy": overall.events_right / max(1, overall.event_seconds),
        "quiet_accuracy": overall.quiet_right / max(1, overall.quiet_seconds),
        "events_spoken": overall.events_spoken / max(1, overall.event_seconds),
        "colour_right": overall.colour_right / max(1, overall.event_seconds),
        "memory_events": overall.memory_seconds,
        "memory_accuracy": overall.memory_right / max(1, overall.memory_seconds),
        "kind_accuracy": accuracy_by_kind(world, narration),
        "first_slice": slices[0].accuracy if slices else math.nan,
        "last_slice": slices[-1].accuracy if slices else math.nan,
        "slices": [{"start": s.start, "end": s.end, "accuracy": s.accuracy,
                    "always_silent": s.always_silent} for s in slices],
        "questions_asked": len(asked),
        "questions_right": right,
        # Asked questions whose answer the cache's text still held (the latest leaving it
        # narrates is the one asked about): the rest no reading of the cache could answer.
        "questions_in_cache": in_cache,
        "questions_right_in_cache": right_in_cache,
        # Few distinct answers mean a constant guess, not memory (see constant_answer_right).
        "distinct_answers": len({answers[q.second, q.question].get("answer", "").strip().lower()
                                 for q in asked}),
        "step_ms_median": 1e3 * sorted(latencies)[len(latencies) // 2] if latencies else math.nan,
        "cache_tokens_max": max((row["cache_tokens"] for row in rows), default=0),
        # The replay's own time, whichever call of this tool ran it (finished settings are
        # reused, so the wall time of this call says nothing about them).
        "replay_minutes": round(scores.get("wall_seconds", math.nan) / 60, 1),
    }


def write_results(out: Path, results: list[dict], reference: dict) -> None:
    header = ("| setting | seconds | accuracy % | first 10 min (always silent) | last 10 min "
              "(always silent) | events right | memory events right (is back / is still) | "
              "events spoken | colour right | quiet right | memory questions | step ms | "
              "cache tokens max |")
    lines = [header, "|" + "---|" * 13]
    for r in results:
        stopped = " (stopped by budget)" if r["stopped_early"] else ""
        lines.append(
            f"| {r['setting']}: {r['description']} | {r['seconds']}{stopped} | "
            f"{100 * r['accuracy']:.1f} | {_slice_text(r, 0)} | {_slice_text(r, -1)} | "
            f"{100 * r['event_accuracy']:.1f} | {_memory_text(r)} | "
            f"{100 * r['events_spoken']:.1f} | {100 * r['colour_right']:.1f} | "
            f"{100 * r['quiet_accuracy']:.1f} | {r['questions_right']}/{r['questions_asked']} | "
            f"{r['step_ms_median']:.0f} | {r['cache_tokens_max']} |")
    lines += ["", f"Always silent: {100 * reference['always_silent']:.1f} %; chance: "
              f"{100 * reference['chance']:.1f} % (over the whole stream)."]
    # Per kind: saying "is back" more often raises `returns` at the cost of `enters`, and
    # `turns` needs the shape's previous direction as much as `returns` needs its leaving.
    lines += ["", "Seconds right per kind of event (%):", "",
              "| setting | " + " | ".join(KIND_LABELS[k] for k in KINDS) + " |",
              "|" + "---|" * (len(KINDS) + 1)]
    for r in results:
        kinds = r.get("kind_accuracy", {})
        lines.append(f"| {r['setting']} | " + " | ".join(
            f"{100 * kinds[k]:.1f}" if k in kinds else "-" for k in KINDS) + " |")
    if "questions" in reference:
        asked = reference["questions"]
        lines += ["", f"Memory questions ({asked} asked): the best constant answer per kind "
                  f"(always the same colour, always the same shape) gets "
                  f"{reference['questions_constant_right']}, random words "
                  f"{reference['questions_chance_right']:.1f}. Distinct answers per setting: "
                  + ", ".join(f"{r['setting']} {r.get('distinct_answers', '-')}"
                              for r in results) + "."]
        if any(r.get("questions_in_cache") is not None for r in results):
            lines += ["", "Questions whose answer the cache's text still held when asked (the "
                      "latest leaving it narrates is the one asked about), and of those "
                      "answered right: " + ", ".join(
                          f"{r['setting']} {r['questions_in_cache']} "
                          f"({r['questions_right_in_cache']})"
                          for r in results if r.get("questions_in_cache") is not None) + "."]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps({"results": results, **reference},
                                                 indent=2) + "\n")
    plot(out / "ablations.png", results, reference)


#: Column names of the per-kind table: the words the narration uses for each kind.
KIND_LABELS = {"enters": "enters", "moves": "moves", "turns": "turns and moves",
               "leaves": "leaves", "returns": "is back", "still": "is still"}


def _memory_text(result: dict) -> str:
    kinds = result.get("kind_accuracy", {})
    parts = " / ".join(f"{100 * kinds[k]:.1f}" if k in kinds else "-" for k in ("returns", "still"))
    return f"{100 * result['memory_accuracy']:.1f} ({parts})"


def _slice_text(result: dict, index: int) -> str:
    """A slice's accuracy with the always-silent share of the same seconds: slices differ in
    how many quiet seconds they hold, and that moves a narrator's accuracy with them."""
    if not result["slices"]:
        return "-"
    chosen = result["slices"][index]
    return f"{100 * chosen['accuracy']:.1f} ({100 * chosen['always_silent']:.1f})"


def plot(path: Path, results: list[dict], reference: dict) -> None:
    """Accuracy per 10-minute slice (left) and the events that need memory per setting
    (right: a shape that is back, one that is still, and beside them a shape that merely
    enters)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (axis, memory) = plt.subplots(1, 2, figsize=(14, 4.8),
                                          gridspec_kw={"width_ratios": [3, 2]})
    for r in results:
        minutes = [(s["start"] + s["end"]) / 120 for s in r["slices"]]
        accuracy = [100 * s["accuracy"] for s in r["slices"]]
        axis.plot(minutes, accuracy, marker="o", label=f"{r['setting']}", linewidth=1.5)
    # Always silent per slice (of the longest run): the share of quiet seconds in each slice.
    longest = max(results, key=lambda r: len(r["slices"]), default=None)
    if longest is not None and longest["slices"]:
        edges = [s["start"] / 60 for s in longest["slices"]] + [longest["slices"][-1]["end"] / 60]
        silent = [100 * s["always_silent"] for s in longest["slices"]]
        axis.stairs(silent, edges, baseline=None, color="grey", linestyle="--",
                    label="always silent (per slice)")
    else:
        axis.axhline(100 * reference["always_silent"], color="grey", linestyle="--",
                     label="always silent")
    axis.axhline(100 * reference["chance"], color="black", linestyle=":", label="chance")
    axis.set_xlabel("stream time (minutes, 10-minute slices)")
    axis.set_ylabel("per-second accuracy (%)")
    axis.set_title("Narration accuracy over a 2-hour unseen simulated stream")
    axis.set_ylim(0, 100)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower left", fontsize=8, ncol=3)

    names = [r["setting"] for r in results]
    positions = range(len(results))
    # ``enters`` beside ``is back``: a narrator that only says "is back" more often gains on
    # one and loses on the other; telling them apart raises both.
    for offset, kind, label in ((-0.27, "enters", "enters (a new shape)"),
                                (0.0, "returns", "is back (needs the text)"),
                                (0.27, "still", "is still (needs the vision window)")):
        values = [100 * r.get("kind_accuracy", {}).get(kind, 0.0) for r in results]
        memory.bar([p + offset for p in positions], values, width=0.27, label=label)
    memory.set_xticks(list(positions), names, rotation=30, ha="right")
    memory.set_ylabel("seconds right (%)")
    memory.set_title("Events that need memory, and new shapes")
    memory.set_ylim(0, 118)  # room above the bars for the legend
    memory.set_yticks(range(0, 101, 20))
    memory.grid(alpha=0.3, axis="y")
    memory.legend(loc="upper center", fontsize=7, ncol=3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``svlm-sim-ablations``."""
    args = build_parser().parse_args(argv)
    names = [name.strip() for name in args.settings.split(",") if name.strip()]
    unknown = sorted(set(names) - set(SETTINGS))
    if unknown:
        print(f"svlm-sim-ablations: error: unknown settings {unknown}", file=sys.stderr)
        return 2
    if args.seed < FIRST_HELD_OUT_SEED:
        print(f"svlm-sim-ablations: warning: seed {args.seed} is below {FIRST_HELD_OUT_SEED}: "
              "a training stream may have used its world", file=sys.stderr)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    world = World(WorldConfig(seed=args.seed))
    bag = out / f"stream_seed{args.seed}_{args.seconds}s"
    if not bag.exists():
        print(f"writing the evaluation stream {bag} ...", flush=True)
        write_world_bag(bag, world, BagSettings(seconds=args.seconds, camera_hz=2.0,
                                                storage="mcap", image_format="png",
                                                image_topic=IMAGE_TOPIC, text_topic=TEXT_TOPIC))
    questions = pause_end_questions(world, args.seconds)
    questions_file = out / "questions.jsonl"
    questions_file.write_text("".join(json.dumps({"second": q.second, "question": q.question,
                                                  "answer": q.answer, "age": q.age}) + "\n"
                                      for q in questions))
    try:
        folders = {name: run_setting(name, args, bag, questions_file) for name in names}
    except RuntimeError as error:
        print(f"svlm-sim-ablations: error: {error}", file=sys.stderr)
        return 1
    from transformers import AutoProcessor

    tokenizer = AutoProcessor.from_pretrained(args.model).tokenizer
    results = [summarize(name, folder, world, questions, tokenizer)
               for name, folder in folders.items()]
    quiet = sum(1 for s in range(args.seconds) if world.event_at(s) is None) / args.seconds
    reference = {"always_silent": quiet, "chance": chance_accuracy(quiet),
                 "seed": args.seed, "seconds": args.seconds, "model": str(args.model),
                 "questions": len(questions),
                 "questions_constant_right": constant_answer_right(questions),
                 "questions_chance_right": round(chance_answers_right(questions), 1),
                 "replay_minutes": round(sum(r["replay_minutes"] for r in results), 1)}
    write_results(out, results, reference)
    print((out / "results.md").read_text())
    print(f"plot: {out / 'ablations.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
