"""``svlm-eval``: replay a bag through the streaming engine and score its narration.

    svlm-eval --bag BAG --model runs/kitchen/model --image-topic /camera/image_raw \\
        --text-topic /commentary --out eval/kitchen

The bag's frames go, with their stamps, into the engine's own ``StreamingSession`` (the very
class the node runs: same sampler, cache policy and prompt), and every completed second is
narrated. Time is stream time (the stamps), not the wall clock: no second is skipped however
slow the model is, and ``latency`` is the model's time for that round; the node keeps up with a
live camera when it stays below the period.

Writes (under a temporary name, renamed at the end) into ``--out``:

    transcript.jsonl   one line per second: second, end, text, silent, latency (s),
                       generated_tokens, cache_tokens, and with --text-topic: reference, chrf
    scores.json        chrF (sacrebleu), silence agreement, latency figures, settings
    eval.png           per-second chrF and step latency over stream time
    answers.jsonl      with --questions: second (asked after), question, answer, latency (s),
                       and inline: round (the second whose round answered)

Ablations of the bounded cache (for experiments, not for robots): --no-attention-sink,
--native-positions, and a --vision-window-seconds as long as the bag for full attention, which
--budget-seconds stops after so many wall seconds (``stopped_early`` in scores.json).

References are aligned exactly as ``svlm-bag2dataset`` aligns training text.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

from tqdm import tqdm

from svlm_ros.engine.cache_policy import CachePolicyConfig
from svlm_ros.engine.decoding import SamplingConfig
from svlm_ros.engine.frame_sampler import FrameRejected
from svlm_ros.engine.model_loading import load_model
from svlm_ros.engine.model_settings import read_settings
from svlm_ros.engine.prompt_format import DEFAULT_INSTRUCTION, DEFAULT_SYSTEM_PROMPT
from svlm_ros.engine.streaming_session import StreamConfig, StreamingSession
from svlm_ros.image_conversion import ImageRejected
from svlm_training.alignment import SecondAligner, StampsOutOfOrder
from svlm_training.bag2dataset import STAMP_CHOICES, read_text_events, resolve_stamps
from svlm_training.bag_reading import (
    IMAGE_TYPES,
    TEXT_TYPES,
    BagError,
    BagSource,
    header_stamp,
    make_typestore,
    message_to_rgb,
)
from svlm_training.plots import plot_evaluation
from svlm_training.scoring import score_transcript, second_chrf


def stream_config(args) -> StreamConfig:
    """The engine settings of an evaluation (they should match the node's)."""
    return StreamConfig(
        fps=args.fps,
        period=args.period,
        max_pixels=args.max_pixels,
        min_pixels=args.min_pixels,
        max_new_tokens=args.max_new_tokens,
        system_prompt=args.system_prompt,
        instruction=args.instruction,
        previous_text=args.previous_text,
        cache=CachePolicyConfig(
            text_sink_tokens=args.text_sink_tokens,
            text_window_tokens=args.text_window_tokens,
            vision_window_seconds=args.vision_window_seconds,
            attention_sink=not args.no_attention_sink,
            contiguous_positions=not args.native_positions,
        ),
        sampling=SamplingConfig(temperature=args.temperature, seed=args.seed),
        # Offline replay: every completed second is narrated, none is dropped as stale.
        max_pending_seconds=1 << 20,
    )


def evaluate(args) -> dict:
    """Replay, narrate, score and write the outputs; returns ``scores.json``'s content."""
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    typestore = make_typestore()
    with BagSource(args.bag, typestore) as bag:
        image_type = bag.check_topic(args.image_topic, IMAGE_TYPES, "image")
        text_type = None
        events = []
        if args.text_topic:
            text_type = bag.check_topic(args.text_topic, TEXT_TYPES, "text")
        # Without a text topic only the image topic decides.
        stamps = resolve_stamps(args.stamps, image_type, text_type or image_type)
        if args.text_topic:
            events = read_text_events(bag, args.text_topic, text_type, stamps, args.period,
                                      args.camera)
        questions = read_questions(args.questions) if args.questions else {}
        answers: list[dict] = []
        loaded = load_model(args.model, device=args.device, dtype=args.dtype)
        session = StreamingSession(loaded, stream_config(args))
        # The same sampling as the session's, only to label each second with its reference.
        aligner = SecondAligner(events, fps=args.fps, period=args.period)
        references: dict[float, str] = {}
        rows: list[dict] = []
        rejected = 0
        started = time.perf_counter()
        progress = tqdm(total=bag.message_count(args.image_topic), unit="frame",
                        desc="svlm-eval", disable=args.quiet)

        def out_of_budget() -> bool:
            return bool(args.budget_seconds) and (time.perf_counter() - started
                                                  > args.budget_seconds)

        # Inline questions wait here for the round after the second they follow, one a round.
        waiting: list[tuple[int, str]] = []

        def narrate_pending() -> None:
            while not (args.max_seconds and len(rows) >= args.max_seconds) and not out_of_budget():
                second, _ = session.sampler.pop_ready()
                if second is None:
                    return
                asked = None
                if waiting and waiting[0][0] < second.start and session.can_hold_question():
                    asked = waiting.pop(0)
                result = session.run_round(second, question=asked[1] if asked else "")
                if asked:
                    answers.append({"second": asked[0], "round": result.start,
                                    "question": asked[1], "answer": result.answer,
                                    "latency": result.timings_ms["total"] / 1e3})
                row = {
                    "second": result.start,
                    "end": result.end,
                    "text": result.text,
                    "silent": result.silent,
                    "latency": result.timings_ms["total"] / 1e3,
                    "generated_tokens": result.generated_tokens,
                    "cache_tokens": result.cache_tokens,
                }
                if args.text_topic:
                    row["reference"] = references.get(result.start, "")
                    row["chrf"] = second_chrf(result.text, row["reference"])
                rows.append(row)
                progress.set_postfix(seconds=len(rows), refresh=False)
                for question in questions.get(int(round(result.start)), []):
                    if args.question_mode == "inline":
                        waiting.append((int(round(result.start)), question))
                        continue
                    answer = session.ask(question)  # leaves the stream as it was
                    answers.append({"second": result.start, "question": question,
                                    "answer": answer.text, "latency": answer.latency})

        last_stamp = None
        with progress:
            for item in bag.messages(args.image_topic):
                progress.update()
                stamp = item.receive_time if stamps == "receive" else header_stamp(item.message)
                if stamp is None:
                    raise BagError(f"{bag.path}: image message {item.index} has a zero header "
                                   "stamp; use --stamps receive")
                decoded: list = []

                def decode(message=item.message, decoded=decoded):
                    # Both samplers keep the same frames: decode once for the two of them.
                    if not decoded:
                        decoded.append(message_to_rgb(message, image_type))
                    return decoded[0]

                try:
                    for second in aligner.offer(stamp, decode):
                        references[second.start] = second.text
                    # As the node offers frames: decoded only when the sampler keeps them.
                    session.sampler.offer(stamp, decode)
                except StampsOutOfOrder as error:
                    raise BagError(f"{bag.path}: stamps out of order on "
                                   f"{args.image_topic!r}: {error}") from error
                except (ImageRejected, FrameRejected):
                    rejected += 1
                    continue
                last_stamp = stamp
                narrate_pending()
                if (args.max_seconds and len(rows) >= args.max_seconds) or out_of_budget():
                    break
            else:
                # The end of the bag: close the last second, as the node does once its end has
                # passed on the camera clock.
                for second in aligner.flush():
                    references[second.start] = second.text
                if last_stamp is not None:
                    session.sampler.close_until(last_stamp + args.period)
                narrate_pending()
        # Inline questions no round took (the stream ended first): answered between rounds,
        # so every question gets an answer; "round" None says so.
        for second, question in waiting:
            answer = session.ask(question)
            answers.append({"second": second, "round": None, "question": question,
                            "answer": answer.text, "latency": answer.latency})
        wall = time.perf_counter() - started
    if not rows:
        raise BagError(f"{args.bag}: no complete second was narrated ({rejected} frames rejected)")
    latencies = [row["latency"] for row in rows]
    scores = {
        "bag": str(args.bag),
        "model": str(args.model),
        "seconds": len(rows),
        "silent_share": sum(row["silent"] for row in rows) / len(rows),
        "latency_median": statistics.median(latencies),
        "latency_max": max(latencies),
        "real_time_factor": statistics.median(latencies) / args.period,
        "frames_rejected": rejected,
        "wall_seconds": wall,
        "stamps": stamps,
        "stopped_early": out_of_budget(),
        "settings": asdict(stream_config(args)),
    }
    if args.text_topic:
        scores.update(score_transcript([r["text"] for r in rows], [r["reference"] for r in rows]))
    _write_outputs(out, rows, scores, answers)
    return scores


def read_questions(path: str) -> dict[int, list[str]]:
    """``--questions`` JSONL (``{"second": s, "question": q}`` per line): second -> questions."""
    questions: dict[int, list[str]] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            questions.setdefault(int(item["second"]), []).append(str(item["question"]))
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}:{number}: expected {{\"second\": N, \"question\": "
                             f"\"...\"}}, got {line.strip()[:80]!r} ({error})") from None
    return questions


def _write_outputs(out: Path, rows: list[dict], scores: dict,
                   answers: list[dict] | None = None) -> None:
    tmp = out.parent / f".{out.name}.incomplete-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with (tmp / "transcript.jsonl").open("w", encoding="utf-8") as stream:
            for row in rows:
                stream.write(json.dumps(row) + "\n")
        if answers is not None:
            with (tmp / "answers.jsonl").open("w", encoding="utf-8") as stream:
                for answer in answers:
                    stream.write(json.dumps(answer) + "\n")
        (tmp / "scores.json").write_text(json.dumps(scores, indent=2, default=str) + "\n",
                                         encoding="utf-8")
        plot_evaluation(rows, tmp / "eval.png")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)


def format_summary(scores: dict, out: str) -> str:
    lines = [
        f"svlm-eval: {scores['seconds']} seconds narrated, results in {out}",
        f"  silent share {scores['silent_share']:.2f}; step latency median "
        f"{scores['latency_median'] * 1e3:.0f} ms, max {scores['latency_max'] * 1e3:.0f} ms "
        f"(real-time factor {scores['real_time_factor']:.2f}); {scores['frames_rejected']} "
        "frames rejected",
    ]
    if "chrf" in scores:
        lines.append(f"  chrF {scores['chrf']:.1f} over {scores['reference_spoken_seconds']} "
                     f"spoken reference seconds; silence agreement "
                     f"{scores['silence_agreement']:.2f}  [{scores['chrf_signature']}]")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="svlm-eval",
        description="Replay a bag through the streaming engine (stream time, no ROS), write the "
                    "transcript and, with reference text, score it (chrF, silence agreement).",
    )
    p.add_argument("--bag", required=True, help="rosbag2 bag directory or .db3/.mcap file")
    p.add_argument("--model", required=True, help="model directory (e.g. svlm-train's OUT/model)")
    p.add_argument("--image-topic", required=True, help="Image or CompressedImage topic")
    p.add_argument("--text-topic", default=None,
                   help="String or Narration topic with reference text (optional)")
    p.add_argument("--camera", default=None,
                   help="with a Narration text topic: the camera whose narration is the "
                        "reference (required when the topic holds several)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="auto: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--stamps", choices=STAMP_CHOICES, default="auto",
                   help="as svlm-bag2dataset (default auto)")
    p.add_argument("--max-seconds", type=int, default=0,
                   help="stop after this many narrated seconds (default 0: the whole bag)")
    p.add_argument("--temperature", type=float, default=0.0,
                   help="sampling temperature; 0 is greedy, reproducible (default 0; the node "
                        "narrates with 0.9)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    # The stream settings: as the node, each not given comes from the model's
    # svlm_settings.json, else the node's default (BUILT_IN_SETTINGS).
    p.add_argument("--fps", type=float, help="as the node (default 2)")
    p.add_argument("--period", type=float, help="as the node (default 1)")
    p.add_argument("--max-pixels", type=int, help="as the node (default 602112)")
    p.add_argument("--min-pixels", type=int, help="as the node (default 78400)")
    p.add_argument("--max-new-tokens", type=int, help="as the node (default 20)")
    p.add_argument("--text-sink-tokens", type=int, help="as the node (default 512)")
    p.add_argument("--text-window-tokens", type=int, help="as the node (default 512)")
    p.add_argument("--vision-window-seconds", type=int, help="as the node (default 16)")
    p.add_argument("--no-attention-sink", action="store_true",
                   help="ablation: evict the sink (system prompt) with the first eviction")
    p.add_argument("--native-positions", action="store_true",
                   help="ablation: keep original positions after evictions (not contiguous)")
    p.add_argument("--budget-seconds", type=float, default=0,
                   help="stop after this many wall seconds, e.g. for full attention "
                        "(default 0: no budget)")
    p.add_argument("--questions", default=None,
                   help="JSONL of {\"second\": N, \"question\": \"...\"}: asked after second N "
                        "is narrated (see --question-mode); answers in answers.jsonl")
    p.add_argument("--question-mode", choices=("inline", "between"), default="inline",
                   help="inline (default, as StreamingVLM trains them): a question goes into the "
                        "next second's round, before its video, and the answer is what that "
                        "round says first (one question a round, none while an earlier one is "
                        "still in the vision window: it waits); between: answered at once "
                        "from the cache, without video, as ask() does")
    p.add_argument("--system-prompt", help="as the node (default: Qwen's)")
    p.add_argument("--instruction",
                   help=f"as the node (default {DEFAULT_INSTRUCTION!r}; '' for none)")
    p.add_argument("--previous-text", help="as the node (default: none)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


#: The node's defaults of the stream settings a model's ``svlm_settings.json`` can set.
BUILT_IN_SETTINGS = {
    "fps": 2.0, "period": 1.0, "max_pixels": 602112, "min_pixels": 78400, "max_new_tokens": 20,
    "text_sink_tokens": 512, "text_window_tokens": 512, "vision_window_seconds": 16,
    "system_prompt": DEFAULT_SYSTEM_PROMPT, "instruction": DEFAULT_INSTRUCTION,
    "previous_text": "",
}


def fill_model_settings(args: argparse.Namespace) -> list[str]:
    """Give every stream setting not on the command line the model's value (its
    ``svlm_settings.json``), else the node's default, as the node does; returns the names
    taken from the model's file.

    Raises:
        ValueError: the model's settings file is broken (the message names it).
    """
    settings = read_settings(args.model)
    taken = []
    for name, default in BUILT_IN_SETTINGS.items():
        if getattr(args, name) is not None:
            continue
        if settings is not None:
            setattr(args, name, getattr(settings, name))
            taken.append(name)
        else:
            setattr(args, name, default)
    if not args.system_prompt:
        args.system_prompt = DEFAULT_SYSTEM_PROMPT  # as the node: '' is Qwen's system turn
    return taken


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``svlm-eval``."""
    args = build_parser().parse_args(argv)
    try:
        fill_model_settings(args)
        scores = evaluate(args)
    except (BagError, FileExistsError, ValueError) as error:
        print(f"svlm-eval: error: {error}", file=sys.stderr)
        return 1
    print(format_summary(scores, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
