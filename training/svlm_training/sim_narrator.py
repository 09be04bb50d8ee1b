"""``svlm-make-sim-narrator OUT``: train a tiny narrator on the simulated world, with our pipeline.

One command, the same steps a robot team takes with its own bags:

1. ``svlm-sim``'s bag writer records ``--bags`` simulated streams (world seeds from
   ``--first-world``, default 1..N; the demo and the long evaluation use other seeds) as
   rosbag2 (mcap, png frames at 2 Hz, ground truth as ``std_msgs/String``), each stream's
   frames starting up to ``--phase-jitter`` seconds into its world's first second, with
   memory questions on about ``--question-share`` of its seconds (``svlm_ros.sim.questions``);
2. ``svlm-bag2dataset`` turns them into a dataset (224x168 frames: 48 vision tokens a second;
   at 112x84 a shape covers about one vision token and the tiny vision tower did not learn to
   see it in the time budget, measured);
3. a tiny Qwen2.5-VL is initialised (``make_tiny_checkpoint``: 4 layers of width 128, a
   2-block vision tower of width 64, a tokenizer that knows the world's words);
4. ``svlm-train`` fine-tunes all of it (vision tower included) on 8 s chunks with 4 s overlap,
   as long as the narrator's vision window (8 s): the paper's 24 s chunks cost three times as
   much per step, and a tiny model on a CPU needs many steps (measured: at 2e-3 the vision
   tower never learned to tell colours apart; at 3e-4 on 8 s chunks it did within 1,600
   steps, but the loss stayed above 0.5 and the narrator named whole events almost never
   until about step 5,000 of a 10,000-step run, when the loss fell from 0.5 to 0.2; the
   committed narrator took three such runs, each continuing the last (``--init-from``,
   ``scripts/make_sim_narrator.sh``): colours, then shapes and kinds, then directions);
5. the trained model is copied to ``OUT`` with ``svlm_settings.json`` (the settings the narrator
   must use, which the node reads from the model folder: ``NARRATOR_SETTINGS``, the prompts it
   was trained with and the engine's format) and ``svlm_recipe.json`` (those settings again and
   the command that made it).

Defaults take about 30 minutes on a 2-core CPU. Everything runs in a work folder
(``--work``, default a temporary one) and ``OUT`` is written only at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from svlm_ros.engine.model_settings import ENGINE_FORMAT, ModelSettings, write_settings
from svlm_ros.engine.tiny_model import make_tiny_checkpoint
from svlm_ros.sim.bag_writer import BagSettings, write_world_bag
from svlm_ros.sim.questions import SIDES
from svlm_ros.sim.world import (
    COLOURS,
    DIRECTIONS,
    FIRST_HELD_OUT_SEED,
    SHAPES,
    World,
    WorldConfig,
)
from svlm_training.train_config import TrainConfig

#: Settings the narrator must run with to see what it was trained on.
NARRATOR_SETTINGS = {
    "fps": 2.0,
    "period": 1.0,
    "max_pixels": 224 * 168,
    "min_pixels": 28 * 28,
    "max_new_tokens": 16,
    "text_sink_tokens": 128,
    "text_window_tokens": 256,
    "vision_window_seconds": 8,
}
#: Chunks as long as the vision window: a chunk shows the model what its cache holds.
CHUNK_SECONDS, OVERLAP_SECONDS = 8, 4
IMAGE_TOPIC = "/camera/image_raw"
TEXT_TOPIC = "/svlm/ground_truth"
QUESTION_TOPIC = "/svlm/question"
#: World variants (``--world``): settings on top of a seed's ``WorldConfig``.
WORLDS = {"memory": {}, "basic": {"return_seconds": 0, "still_seconds": 0}}


def narrator_settings() -> ModelSettings:
    """``svlm_settings.json`` of a sim narrator: ``NARRATOR_SETTINGS``, and the prompts
    ``svlm-train`` renders its chunks with when given none (the engine's), in its format."""
    defaults = TrainConfig(data="", model="", out="")
    return ModelSettings(format=ENGINE_FORMAT, **NARRATOR_SETTINGS,
                         system_prompt=defaults.system_prompt, instruction=defaults.instruction,
                         previous_text=getattr(defaults, "previous_text", ""))


def world_vocabulary() -> list[str]:
    """Sentences with every word the world says, so that each becomes one token."""
    lines = []
    for colour in COLOURS:
        for shape in SHAPES:
            for direction in (*DIRECTIONS, "top", "bottom"):
                lines.append(f"a {colour} {shape} enters from the {direction}")
                lines.append(f"the {colour} {shape} leaves to the {direction}")
                lines.append(f"the {colour} {shape} turns and moves {direction}")
                lines.append(f"the {colour} {shape} moves {direction}")
                lines.append(f"the {colour} {shape} is back from the {direction}")
            lines.append(f"the {colour} {shape} is still")
    lines.append("What colour was the last shape that left?")
    lines.append("What shape was the last one that left?")
    lines += [f"What colour was the shape that left to the {side}?" for side in SIDES]
    return lines


def world_phase(seed: int, jitter: float) -> float:
    """The first frame's world time of stream ``seed``: uniform in ``[0, jitter)``, the same
    for the same seed (0 without jitter)."""
    if not jitter:
        return 0.0
    return random.Random(f"phase-{seed}").uniform(0.0, jitter)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="svlm-make-sim-narrator",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="checkpoint folder to create")
    parser.add_argument("--bags", type=int, default=96, help="simulated streams (default 96)")
    parser.add_argument("--bag-seconds", type=int, default=150,
                        help="seconds per stream (default 150)")
    parser.add_argument("--steps", type=int, default=10000,
                        help="optimizer steps (default 10000)")
    parser.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (3e-4)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation and order seed")
    parser.add_argument("--first-world", type=int, default=1,
                        help="world seed of the first stream (default 1): a later stage on "
                        "new worlds sees streams the earlier ones did not")
    parser.add_argument("--phase-jitter", type=float, default=0.0,
                        help="each stream's first frame starts this many seconds or less "
                        "after its world's second 0 (random per world, below 0.5; default 0): "
                        "a live camera is not synchronised with the world's seconds")
    parser.add_argument("--world", choices=sorted(WORLDS), default="memory",
                        help="memory (default): the world with shapes that are back and shapes "
                        "that are still, events only memory can narrate; basic: without them")
    parser.add_argument("--chunk-seconds", type=int, default=CHUNK_SECONDS,
                        help=f"seconds per training chunk (default {CHUNK_SECONDS}, the vision "
                        "window); longer chunks show more seconds with their whole vision "
                        "window behind them (a shape still for 6 s needs 6 s of frames)")
    parser.add_argument("--overlap-seconds", type=int, default=OVERLAP_SECONDS,
                        help=f"seconds shared by consecutive chunks (default {OVERLAP_SECONDS})")
    parser.add_argument("--question-share", type=float, default=0.05,
                        help="share of seconds with a memory question about a shape that left "
                        "10 s or more before, answered first in that second's text (default "
                        "0.05; 0: none)")
    parser.add_argument("--init-from", default=None, metavar="DIR",
                        help="continue training an earlier sim narrator (a folder this "
                        "command wrote) instead of a fresh tiny model")
    parser.add_argument("--work", default=None,
                        help="work folder (bags, dataset, run); default: a temporary one")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    return parser


def _run_step(name: str, entry, argv: list[str]) -> None:
    status = entry(argv)
    if status:
        raise RuntimeError(f"{name} failed (exit status {status}); see the messages above")


def make_sim_narrator(args: argparse.Namespace) -> Path:
    from svlm_training import bag2dataset, trainer

    out = Path(args.out)
    if not 0 <= args.phase_jitter < 0.5:
        raise ValueError(f"--phase-jitter must be in [0, 0.5) (the frames are 2 Hz), got "
                         f"{args.phase_jitter}")
    if not 0 <= args.question_share <= 1:
        raise ValueError(f"--question-share must be in [0, 1], got {args.question_share}")
    if args.first_world < 1:
        raise ValueError(f"--first-world must be >= 1, got {args.first_world}")
    if args.first_world + args.bags > FIRST_HELD_OUT_SEED:
        raise ValueError(f"worlds {args.first_world}..{args.first_world + args.bags - 1} reach "
                         f"the held-out seeds ({FIRST_HELD_OUT_SEED} on), which evaluation and "
                         "the demo replay; train on lower ones")
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    earlier = None
    if args.init_from is not None:
        recipe_path = Path(args.init_from) / "svlm_recipe.json"
        if not recipe_path.is_file():
            raise ValueError(f"--init-from {args.init_from} is not a sim narrator (no "
                             "svlm_recipe.json there)")
        earlier = json.loads(recipe_path.read_text())
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="svlm_sim_narrator_") as scratch:
        work = Path(args.work) if args.work else Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        bags = []
        settings = BagSettings(seconds=args.bag_seconds, camera_hz=2.0, storage="mcap",
                               image_format="png", image_topic=IMAGE_TOPIC,
                               text_topic=TEXT_TOPIC, question_topic=QUESTION_TOPIC,
                               question_share=args.question_share)
        seeds = range(args.first_world, args.first_world + args.bags)
        with tqdm(total=args.bags, unit="bag", desc="1/4 simulated bags") as bar:
            for seed in seeds:
                phase = world_phase(seed, args.phase_jitter)
                suffix = (f"_{args.world}" if args.world != "memory" else "") + (
                    f"_phase{phase:.4f}" if phase else "") + (
                    f"_questions{args.question_share:g}" if args.question_share else "")
                path = work / "bags" / f"world_{seed:03d}{suffix}"
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    write_world_bag(path, World(WorldConfig(seed=seed, **WORLDS[args.world])),
                                    dataclasses.replace(settings, phase=phase))
                bags.append(str(path))
                bar.update()
        dataset = work / "dataset"
        print("2/4 dataset (svlm-bag2dataset)", flush=True)
        _run_step("svlm-bag2dataset", bag2dataset.main, [
            *bags, "--image-topic", IMAGE_TOPIC, "--text-topic", TEXT_TOPIC,
            *(["--question-topic", QUESTION_TOPIC] if args.question_share else []),
            "--out", str(dataset), "--fps", "2", "--period", "1",
            "--max-pixels", str(NARRATOR_SETTINGS["max_pixels"]),
            "--min-pixels", str(NARRATOR_SETTINGS["min_pixels"]), "--overwrite",
        ])
        if earlier is not None:
            print(f"3/4 initial model: {args.init_from} (--init-from)", flush=True)
            base = Path(args.init_from)
        else:
            print("3/4 initial model (make_tiny_checkpoint)", flush=True)
            base = make_tiny_checkpoint(work / "base", seed=args.seed, num_layers=4,
                                        hidden_size=128, vision_depth=2, vision_hidden_size=64,
                                        initializer_range=0.02,
                                        tokenizer_text=world_vocabulary())
        run = work / "run"
        if run.exists():
            shutil.rmtree(run)
        print("4/4 training (svlm-train)", flush=True)
        train_argv = [
            "--data", str(dataset), "--model", str(base), "--out", str(run),
            "--method", "full", "--train-vision", "--dtype", "float32", "--device", "cpu",
            "--no-gradient-checkpointing", "--lr", str(args.lr), "--warmup-ratio", "0.03",
            "--max-steps", str(args.steps), "--seed", str(args.seed), "--save-every", "0",
            "--chunk-seconds", str(args.chunk_seconds),
            "--overlap-seconds", str(args.overlap_seconds),
            "--max-new-tokens", str(NARRATOR_SETTINGS["max_new_tokens"]),
            "--text-sink-tokens", str(NARRATOR_SETTINGS["text_sink_tokens"]),
            "--text-window-tokens", str(NARRATOR_SETTINGS["text_window_tokens"]),
        ]
        _run_step("svlm-train", trainer.main, train_argv)
        staging = out.with_name(f".{out.name}.partial")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(run / "model", staging)
        for name in ("loss.png", "loss.jsonl"):
            if (run / name).exists():
                shutil.copy2(run / name, staging / name)
        command = (f"svlm-make-sim-narrator OUT --bags {args.bags} --bag-seconds "
                   f"{args.bag_seconds} --steps {args.steps} --lr {args.lr} --seed {args.seed}"
                   f" --first-world {args.first_world} --phase-jitter {args.phase_jitter}"
                   f" --world {args.world} --question-share {args.question_share} --chunk-seconds "
                   f"{args.chunk_seconds} --overlap-seconds {args.overlap_seconds}")
        recipe = {
            # The settings that shape the model (not this machine's paths).
            "command": command if earlier is None else f"{command} --init-from EARLIER",
            # The stages before this one, oldest first: their commands made EARLIER.
            "earlier_stages": ([] if earlier is None else
                               [*earlier.get("earlier_stages", []),
                                {k: earlier[k] for k in ("command", "steps", "minutes")
                                 if k in earlier}]),
            "bags": args.bags, "bag_seconds": args.bag_seconds,
            "world_seeds": [seeds[0], seeds[-1]], "phase_jitter": args.phase_jitter,
            "world": args.world, "question_share": args.question_share,
            "chunk_seconds": args.chunk_seconds, "overlap_seconds": args.overlap_seconds,
            "steps": args.steps, "lr": args.lr, "seed": args.seed,
            "narrator_settings": NARRATOR_SETTINGS,
            "minutes": round((time.perf_counter() - started) / 60, 1),
        }
        (staging / "svlm_recipe.json").write_text(json.dumps(recipe, indent=2) + "\n")
        write_settings(staging, narrator_settings())
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``svlm-make-sim-narrator``."""
    args = build_parser().parse_args(argv)
    try:
        out = make_sim_narrator(args)
    except (FileExistsError, RuntimeError, ValueError) as error:
        print(f"svlm-make-sim-narrator: error: {error}", file=sys.stderr)
        return 1
    print(f"sim narrator written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
