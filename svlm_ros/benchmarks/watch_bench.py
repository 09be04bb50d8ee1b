"""Cost of a watch question: one evaluation of one question on one camera, against a round.

``python -m svlm_ros.benchmarks.watch_bench`` (``--help`` for options) narrates the simulated
world as the demo does (``sim_camera``'s 224x168 frames at 30 Hz, seed 424242) with the demo's
parameters (``config/sim_demo.yaml``, completed by the model's ``svlm_settings.json`` as the
node completes them) and the model of ``--model`` (``config/sim_narrator`` by default;
``tiny`` is a fresh ``svlm-make-tiny`` checkpoint). After every round it scores each
``--question`` from the stream's cache (``engine.watching.yes_probability``, what the node's
watcher runs between rounds), and prints, after ``--warmup`` seconds, the median, p90 and max
time of one evaluation (one question, one camera) beside the round's, the question's tokens,
the cache it attended over, and how much of the first answer token's probability the yes and
no tokens hold. Rounds and evaluations run on one thread as in the node; the
process's torch threads are ``--torch-threads`` (the demo's 1 by default).

On a GPU: ``--device cuda --dtype auto`` (times are synchronized with the device).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml


def config_folder() -> Path:
    """The checkout's ``config/`` when run from the source tree, else the installed one."""
    source = Path(__file__).resolve().parents[2] / "config"
    if (source / "sim_demo.yaml").is_file():
        return source
    from ament_index_python.packages import get_package_share_directory

    return Path(get_package_share_directory("svlm_ros")) / "config"

DEFAULT_QUESTIONS = (
    "Is a red shape in view?",
    "Is a shape moving?",
    "Is the view empty?",
)
CAMERA_RATE_HZ = 30


def stream_values(params_file: Path, model_path: str) -> dict:
    """The node's parameter values for ``params_file`` and ``model_path``: defaults, then the
    file's values (given), then the model's settings for the rest (as the node does)."""
    from svlm_ros.engine.model_settings import read_settings
    from svlm_ros.node.model_defaults import model_defaults
    from svlm_ros.node.parameters import defaults

    given = yaml.safe_load(params_file.read_text())["/**"]["ros__parameters"]
    values = defaults()
    values.update({name: given[name] for name in given if name in values})
    merged = model_defaults(read_settings(model_path), values, set(given))
    values.update(merged.changes)
    values["model_path"] = model_path
    return values


def _stats(values: list[float]) -> str:
    if not values:
        return "n/a"
    return (f"median {statistics.median(values):.1f} ms, p90 "
            f"{float(np.percentile(values, 90)):.1f} ms, max {max(values):.1f} ms")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="",
                        help="checkpoint folder (default: config/sim_narrator), or 'tiny' for a "
                             "fresh svlm-make-tiny model")
    parser.add_argument("--params", type=Path, default=None,
                        help="parameter file (default: config/sim_demo.yaml)")
    parser.add_argument("--seconds", type=int, default=40, help="stream seconds narrated")
    parser.add_argument("--warmup", type=int, default=5, help="first seconds not counted")
    parser.add_argument("--question", action="append", dest="questions",
                        help=f"a watch question (repeatable); default: {DEFAULT_QUESTIONS}")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=424242, help="the simulated world's seed")
    args = parser.parse_args(argv)
    questions = args.questions or list(DEFAULT_QUESTIONS)

    from svlm_ros.engine.model_loading import load_model
    from svlm_ros.engine.streaming_session import StreamingSession
    from svlm_ros.engine.watching import yes_probability
    from svlm_ros.node.parameters import stream_config
    from svlm_ros.sim.world import World, WorldConfig

    torch.set_num_threads(args.torch_threads)
    model_path = args.model or str(config_folder() / "sim_narrator")
    params = args.params or config_folder() / "sim_demo.yaml"
    if model_path == "tiny":
        from svlm_ros.engine.tiny_model import make_tiny_checkpoint

        model_path = str(make_tiny_checkpoint(Path(tempfile.mkdtemp()) / "tiny"))
    values = stream_values(params, model_path)
    loaded = load_model(model_path, device=args.device, dtype=args.dtype,
                        attn_implementation="auto")
    session = StreamingSession(loaded, stream_config(values))
    cuda = loaded.device.type == "cuda"
    session.sync_timings = cuda
    world = World(WorldConfig(seed=args.seed, width=224, height=168))

    def clock() -> float:
        if cuda:
            torch.cuda.synchronize(loaded.device)
        return time.perf_counter()

    rounds: list[float] = []
    evaluations: list[float] = []
    cache_tokens: list[int] = []
    question_tokens: dict[str, int] = {}
    masses: list[float] = []
    frame = 0
    for second in range(args.seconds + 1):
        for _ in range(CAMERA_RATE_HZ):
            session.add_frame(world.render(frame / CAMERA_RATE_HZ), 1000.0 + frame / 30)
            frame += 1
        started = clock()
        result, _ = session.run_pending()
        finished = clock()
        if result is None:
            continue
        counted = second >= args.warmup
        if counted:
            rounds.append((finished - started) * 1e3)
            cache_tokens.append(session.cache_tokens)
        for question in questions:
            started = clock()
            answer = yes_probability(session, question)
            finished = clock()
            question_tokens[question] = answer.question_tokens
            if counted:
                evaluations.append((finished - started) * 1e3)
                masses.append(answer.answer_mass)
    print(f"model {model_path} on {loaded.device} ({loaded.dtype}), torch threads "
          f"{torch.get_num_threads()}; {len(rounds)} rounds counted after {args.warmup} s, "
          f"{len(questions)} questions each")
    print(f"round:                       {_stats(rounds)}")
    print(f"one question, one camera:    {_stats(evaluations)}")
    print(f"question tokens {sorted(set(question_tokens.values()))}, cache tokens "
          f"{min(cache_tokens, default=0)}..{max(cache_tokens, default=0)}")
    if masses:
        print(f"yes and no tokens hold {statistics.median(masses):.2%} of the first answer "
              "token's probability (median; near 0: the model does not take the questions as "
              "yes/no questions)")
    if rounds and evaluations:
        share = statistics.median(evaluations) / statistics.median(rounds)
        print(f"one evaluation is {share:.1%} of a round (medians)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
