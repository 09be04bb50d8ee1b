"""``svlm-bench``: step time and memory of the bounded cache against its two baselines.

A simulated camera (``--frame-size``, 30 Hz, stamps only: no real time passes) streams
``--stream-seconds`` of synthetic frames through a model for each policy:

* ``bounded`` - StreamingVLM's reused cache with sink, text and vision windows (this project);
* ``full``    - never evicts: the cache grows with the stream (full attention);
* ``recompute`` - every second re-encodes the retained window from scratch, vision included
  (the sliding-window-with-overlap baseline), with the same window sizes as ``bounded``.

Each policy stops early when its ``--budget-seconds`` of wall time are spent, and says so.
Per-second figures are aggregated over the first and the last 60 stream seconds run.
Progress goes to stderr; the table to stdout; ``--json FILE`` writes the figures.

``--parts`` (implied by ``--model-shape``) measures instead where a round's time goes, for the
GPU: per part (preprocess, vision, prefill, decode per token, evict) p50 and p99, milliseconds
and seconds of video per second, for each ``--cameras`` count (cameras run one after another,
as the node runs them) at minute 1 and at hour 2. Hour 2 is reached without streaming two
hours: after the first frame the stamps jump to 7,200 s (a gap the sampler accounts for), so
time stamps have their hour-2 length; then ``--warmup-seconds`` fill every window before
``--measure-seconds`` are measured. ``--model-shape qwen2.5-vl-7b`` builds a random-weight model
with the 7B's exact shapes directly on the device (no download).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import torch
from transformers.cache_utils import Cache, DynamicLayer

from svlm_ros.engine.cache_policy import CachePolicyConfig, EvictionPlan
from svlm_ros.engine.decoding import SamplingConfig
from svlm_ros.engine.frame_sampler import MAX_STREAM_SECONDS
from svlm_ros.engine.model_loading import load_model
from svlm_ros.engine.model_shapes import MODEL_SHAPES, build_shaped_model
from svlm_ros.engine.static_prefill import PREFILL_PATHS
from svlm_ros.engine.streaming_session import StreamConfig, StreamingSession
from svlm_ros.engine.vision_input import VideoBlock

CAMERA_RATE_HZ = 30
WINDOW_FOR_AGGREGATES = 60


class GrowingKVCache(Cache):
    """An unbounded cache (transformers' dynamic layers) for the ``full`` baseline."""

    def __init__(self, num_layers: int):
        super().__init__(layers=[DynamicLayer() for _ in range(num_layers)])

    @property
    def length(self) -> int:
        return self.get_seq_length()

    def truncate(self, length: int) -> None:
        removed = self.length - length
        if removed:
            self.crop(-removed)

    def reset(self) -> None:
        for layer in self.layers:
            layer.reset()


class FullAttentionSession(StreamingSession):
    """Never evicts: every second stays in the cache (the cost grows with the stream)."""

    def __init__(self, loaded, config: StreamConfig):
        cache = CachePolicyConfig(
            text_sink_tokens=config.cache.text_sink_tokens,
            text_window_tokens=config.cache.text_window_tokens,
            vision_window_seconds=MAX_STREAM_SECONDS,
        )
        # Eager decode and prefill: the fixed-shape paths need the preallocated cache this
        # baseline lacks.
        super().__init__(loaded, dataclasses.replace(config, cache=cache, decode_path="eager",
                                                     prefill_path="eager"))

    def _make_cache(self):
        return GrowingKVCache(self.model.config.get_text_config().num_hidden_layers)


class RecomputeSession(StreamingSession):
    """Same retained content as ``bounded``, but rebuilt from scratch every second."""

    def __init__(self, loaded, config: StreamConfig):
        # Eager prefill: the whole retained window is prefilled anew every second, a new
        # length (a new compiled shape) almost every time.
        super().__init__(loaded, dataclasses.replace(config, prefill_path="eager"))

    def reset(self) -> None:
        super().reset()
        self._blocks: dict[float, VideoBlock] = {}

    def _apply_eviction(self, plan: EvictionPlan) -> None:
        kept = {span.stream_second for span in self.policy.rounds}
        self._blocks = {start: block for start, block in self._blocks.items() if start in kept}

    def _prefill(self, prompt, video):
        self._blocks[self.policy.rounds[-1].stream_second] = video
        blocks = [self._blocks[span.stream_second] for span in self.policy.rounds]
        retained_ids = self.policy.token_ids.tolist()
        retained_positions = self.policy.positions
        self.cache.reset()
        self.policy.truncate(0)
        merged = VideoBlock(
            pixel_values=torch.cat([b.pixel_values for b in blocks]),
            grid_thw=torch.cat([b.grid_thw for b in blocks]),
            second_per_grid=video.second_per_grid,
            tokens=sum(b.tokens for b in blocks),
            size=video.size,
        )
        return self._forward(
            retained_ids + prompt.ids, torch.cat([retained_positions, prompt.positions], dim=1),
            merged,
        )


POLICIES = {
    "bounded": StreamingSession,
    "full": FullAttentionSession,
    "recompute": RecomputeSession,
}


def parse_frame_size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"frame size must be WxH, got {text!r}") from error
    if width <= 0 or height <= 0:
        raise argparse.ArgumentTypeError(f"frame size must be positive, got {text!r}")
    return width, height


def _median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def run_policy(name: str, loaded, config: StreamConfig, args) -> dict:
    """Stream through one policy and return its figures."""
    session = POLICIES[name](loaded, config)
    width, height = args.frame_size
    rng = np.random.default_rng(args.seed)
    # A pool of distinct frames stands in for the camera; generating 30 new 720p frames per
    # simulated second would measure numpy, not the model.
    pool = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(8)]
    process = psutil.Process(os.getpid())
    on_cuda = loaded.device.type == "cuda"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(loaded.device)
    steps: list[float] = []
    cpu_steps: list[float] = []  # process CPU time per step: less sensitive to other load
    rss: list[float] = []
    cache_max = 0
    started = time.perf_counter()
    stopped_early = False
    frame = 0
    for _second in range(args.stream_seconds + 1):  # one simulated second per loop
        for _frame in range(CAMERA_RATE_HZ):
            session.add_frame(pool[frame % len(pool)], 1000.0 + frame / CAMERA_RATE_HZ)
            frame += 1
        cpu_started = time.process_time()
        result, _ = session.run_pending()
        if result is None:
            continue
        if on_cuda:
            torch.cuda.synchronize(loaded.device)
        cpu_steps.append((time.process_time() - cpu_started) * 1e3)
        steps.append(result.timings_ms["total"])
        rss.append(process.memory_info().rss / 2**20)
        cache_max = max(cache_max, result.cache_tokens)
        done = len(steps)
        if done % 60 == 0 or done == args.stream_seconds:
            print(
                f"[{name}] {done}/{args.stream_seconds} s  step {steps[-1]:.1f} ms  "
                f"cache {result.cache_tokens} tok  rss {rss[-1]:.0f} MB",
                file=sys.stderr,
                flush=True,
            )
        if done >= args.stream_seconds:
            break
        if args.budget_seconds and time.perf_counter() - started > args.budget_seconds:
            stopped_early = True
            print(f"[{name}] stopped by its budget of {args.budget_seconds} s after {done} "
                  "stream seconds", file=sys.stderr, flush=True)
            break
    first, last = steps[:WINDOW_FOR_AGGREGATES], steps[-WINDOW_FOR_AGGREGATES:]
    return {
        "seconds_run": len(steps),
        "stopped_early": stopped_early,
        "step_ms_first_median": _median(first),
        "step_ms_last_median": _median(last),
        "step_ms_p99": float(np.percentile(steps, 99)) if steps else float("nan"),
        "step_cpu_ms_first_median": _median(cpu_steps[:WINDOW_FOR_AGGREGATES]),
        "step_cpu_ms_last_median": _median(cpu_steps[-WINDOW_FOR_AGGREGATES:]),
        "rss_mb_first": _median(rss[:WINDOW_FOR_AGGREGATES]),
        "rss_mb_last": _median(rss[-WINDOW_FOR_AGGREGATES:]),
        "cuda_mb_peak": torch.cuda.max_memory_allocated(loaded.device) / 2**20 if on_cuda else None,
        "cache_tokens_max": cache_max,
        # The bound this stream can reach (frame size, stream length) and the preallocated
        # capacity (worst frame shape and stream length, plus room for a question).
        "cache_bound": None if name == "full" else session.stream_bound(
            height, width, args.stream_seconds),
        "cache_capacity": None if name == "full" else session.bound,
    }


PARTS = ("preprocess", "vision", "prefill", "decode_per_token", "evict", "round")
PHASES = {"minute1": 0.0, "hour2": 7200.0}


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": float("nan"), "p99": float("nan")}
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99))}


def run_parts(loaded, config: StreamConfig, cameras: int, phase: str, args) -> dict:
    """Stream ``cameras`` simulated cameras (one session each, rounds one after another) to
    ``phase`` and measure every round's parts over ``--measure-seconds``."""
    group = None
    if args.batched and cameras > 1:
        from svlm_ros.engine.camera_group import CameraGroup

        group = CameraGroup(loaded, config, cameras=cameras)
        sessions = group.sessions
    else:
        sessions = [StreamingSession(loaded, config) for _ in range(cameras)]
    for session in sessions:
        session.sync_timings = True  # per-part times are device times, not launch times
    width, height = args.frame_size
    rng = np.random.default_rng(args.seed)
    pool = [rng.integers(0, 256, (height, width, 3), dtype=np.uint8) for _ in range(8)]
    origin = 1000.0
    jump = PHASES[phase]
    if phase == "minute1":
        jump = max(0.0, 60.0 - args.warmup_seconds)  # measure from minute 1 on
    parts: dict[str, list[float]] = {name: [] for name in PARTS}
    second_ms: list[float] = []  # all cameras' rounds of one stream second, one after another
    latency_ms: list[float] = []  # due (end of the second) to narration, camera by camera
    generated: list[int] = []
    frame = 0

    def feed(stamp: float) -> None:
        nonlocal frame
        for session in sessions:
            session.add_frame(pool[frame % len(pool)], stamp)
        frame += 1

    if jump:
        feed(origin)  # the first frame fixes stream time 0; the next ones come after the jump
    start = origin + jump
    total_seconds = args.warmup_seconds + args.measure_seconds
    for second in range(total_seconds + 1):
        for index in range(CAMERA_RATE_HZ):
            feed(start + second + index / CAMERA_RATE_HZ)
        elapsed = 0.0
        results = []
        if group is not None:
            # Cameras due together: prefills one by one, one batched decode, closes. Every
            # camera's narration comes at the end of the whole call.
            while True:
                due = [session.sampler.pop_ready()[0] for session in sessions]
                if all(second is None for second in due):
                    break
                started = sessions[0]._clock()
                batch = [r for r in group.run_rounds(due) if r is not None]
                took = (sessions[0]._clock() - started) * 1e3
                results.extend(batch)
                elapsed += took
                if second > args.warmup_seconds and all(r.start >= jump for r in batch):
                    latency_ms.extend([elapsed] * len(batch))
        for session in (sessions if group is None else ()):
            while True:  # the pre-jump period, if any, is run first and not measured
                result, _ = session.run_pending()
                if result is None:
                    break
                results.append(result)
                elapsed += result.timings_ms["total"]
                if second > args.warmup_seconds and result.start >= jump:
                    latency_ms.append(elapsed)
        if second <= args.warmup_seconds:
            continue
        second_ms.append(elapsed)
        for result in results:
            timings = result.timings_ms
            for name in ("preprocess", "vision", "prefill", "evict"):
                parts[name].append(timings[name])
            parts["decode_per_token"].append(timings["decode"] / max(1, result.generated_tokens))
            parts["round"].append(timings["total"])
            generated.append(result.generated_tokens)
    per_second = [ms / cameras for ms in second_ms]  # one camera's share of wall time
    return {
        "cameras": cameras,
        "phase": phase,
        "stream_time_measured": [sessions[0].policy.rounds[-1].stream_second - args.measure_seconds
                                 + 1, sessions[0].policy.rounds[-1].stream_second + 1],
        "rounds_measured": len(parts["round"]),
        "generated_tokens_mean": float(np.mean(generated)) if generated else float("nan"),
        "cache_tokens": sessions[0].cache.length,
        "parts_ms": {name: _percentiles(values) for name, values in parts.items()},
        "ms_per_video_second": _percentiles(per_second),
        # Video seconds narrated per wall second, all cameras together (>= cameras: real time).
        "video_seconds_per_second": (cameras * len(second_ms) / (sum(second_ms) / 1e3)
                                     if second_ms else float("nan")),
        "latency_ms": _percentiles(latency_ms),
        "decode_path": "batched" if group is not None else sessions[0].decode_path,
        "prefill_path": sessions[0].prefill_path,
    }


def print_parts(report: dict) -> None:
    """The per-part table, one row per camera count and phase."""
    print(f"device {report['device']}, model {report['model']}, frames {report['frames']}, "
          f"decode {report['decode_path']}, prefill {report['prefill_path']}, "
          f"dtype {report['dtype']}")
    columns = [f"{name} p50/p99" for name in PARTS]
    print(f"{'cams':>4} {'phase':<8} {'rounds':>6} " + " ".join(f"{c:>22}" for c in columns)
          + f" {'ms/video s p50/p99':>20} {'video s/s':>9} {'latency p50/p99':>18}")
    for row in report["rows"]:
        cells = [f"{row['parts_ms'][n]['p50']:.1f}/{row['parts_ms'][n]['p99']:.1f}"
                 for n in PARTS]
        ms = row["ms_per_video_second"]
        latency = row["latency_ms"]
        print(f"{row['cameras']:>4} {row['phase']:<8} {row['rounds_measured']:>6} "
              + " ".join(f"{c:>22}" for c in cells)
              + f" {ms['p50']:>9.1f}/{ms['p99']:<10.1f} {row['video_seconds_per_second']:>9.2f}"
              f" {latency['p50']:>8.1f}/{latency['p99']:<9.1f}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="svlm-bench",
        description="Step time and memory of the bounded streaming cache vs. full attention "
        "and per-second recomputation, on a simulated 30 Hz camera.",
    )
    parser.add_argument("--model", help="checkpoint directory (default: a fresh tiny model)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    parser.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    parser.add_argument("--attn", default="auto", help="attention kernel (default auto)")
    parser.add_argument("--stream-seconds", type=int, default=300,
                        help="simulated stream length in seconds (default 300)")
    parser.add_argument("--frame-size", type=parse_frame_size, default=(1280, 720),
                        help="camera frame size WxH (default 1280x720)")
    parser.add_argument("--policies", default="bounded,full,recompute",
                        help="comma-separated subset of bounded,full,recompute")
    parser.add_argument("--budget-seconds", type=float, default=0.0,
                        help="wall-time budget per policy; 0 = none (default 0)")
    parser.add_argument("--max-new-tokens", type=int, default=20,
                        help="tokens generated per second (default 20)")
    parser.add_argument("--vision-window-seconds", type=int, default=16,
                        help="vision window of bounded and recompute (default 16)")
    parser.add_argument("--seed", type=int, default=0, help="frame and sampling seed")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads for torch; 0 = torch's default")
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--model-shape", choices=MODEL_SHAPES,
                        help="random weights with these shapes, built on --device (no "
                        "download); implies --parts")
    parser.add_argument("--parts", action="store_true",
                        help="per-part p50/p99 for --cameras at minute 1 and hour 2 "
                        "instead of the policy comparison")
    parser.add_argument("--cameras", default="1,4",
                        help="camera counts for --parts, comma-separated (default 1,4)")
    parser.add_argument("--phases", default="minute1,hour2",
                        help="phases for --parts: minute1, hour2 (default both)")
    parser.add_argument("--warmup-seconds", type=int, default=70,
                        help="stream seconds before measuring in --parts; 70 fills the paper's "
                        "windows at 20 tokens per round (default 70)")
    parser.add_argument("--measure-seconds", type=int, default=30,
                        help="stream seconds measured per phase in --parts (default 30)")
    parser.add_argument("--batched", action="store_true",
                        help="in --parts, decode the cameras due together as one batch "
                        "(CameraGroup) instead of one after another")
    parser.add_argument("--decode-path", default="auto",
                        help="auto, eager, static, graphed or compiled (default auto: graphed "
                        "on CUDA, eager on the CPU)")
    parser.add_argument("--prefill-path", default="eager", choices=PREFILL_PATHS,
                        help="eager, static or compiled (default eager); compare the 'prefill' "
                        "part of a compiled run with an eager one")
    parser.add_argument("--compile-vision", action="store_true",
                        help="run the vision encoder through torch.compile (StreamConfig."
                        "compile_vision); compare its 'vision' part with a run without")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console entry point ``svlm-bench``."""
    args = build_parser().parse_args(argv)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or not policies:
        print(f"svlm-bench: unknown policies {unknown}; choose from {sorted(POLICIES)}",
              file=sys.stderr)
        return 2
    if args.stream_seconds < 1:
        print("svlm-bench: --stream-seconds must be >= 1", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    parts_mode = args.parts or args.model_shape is not None
    try:
        cameras = [int(c) for c in args.cameras.split(",") if c.strip()]
        phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    except ValueError:
        cameras, phases = [], []
    if parts_mode and (not cameras or min(cameras) < 1 or not phases
                       or any(p not in PHASES for p in phases)
                       or args.warmup_seconds < 0 or args.measure_seconds < 1):
        print(f"svlm-bench: --cameras must be positive integers, --phases from {list(PHASES)}, "
              "--measure-seconds >= 1", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as scratch:
        model_dir = args.model
        if model_dir is None or args.model_shape:
            from .tiny_model import make_tiny_checkpoint

            model_dir = str(make_tiny_checkpoint(Path(scratch) / "tiny"))
        try:
            if args.model_shape:
                loaded = build_shaped_model(args.model_shape, model_dir, device=args.device,
                                            dtype=args.dtype, seed=args.seed)
            else:
                loaded = load_model(model_dir, device=args.device, dtype=args.dtype,
                                    attn_implementation=args.attn)
            config = StreamConfig(
                max_new_tokens=args.max_new_tokens,
                cache=CachePolicyConfig(vision_window_seconds=args.vision_window_seconds),
                sampling=SamplingConfig(seed=args.seed),
                decode_path=args.decode_path,
                compile_vision=args.compile_vision,
                prefill_path=args.prefill_path,
            )
        except ValueError as error:
            print(f"svlm-bench: {error}", file=sys.stderr)
            return 2
        device_label = str(loaded.device) + (
            f" ({torch.cuda.get_device_name(loaded.device)})"
            if loaded.device.type == "cuda"
            else f" ({torch.get_num_threads()} torch threads, {os.cpu_count()} cores)")
        if parts_mode:
            report = {
                "device": device_label,
                "model": (f"random {args.model_shape}" if args.model_shape
                          else Path(args.model).name if args.model else "tiny (svlm-make-tiny)"),
                "dtype": str(loaded.dtype).replace("torch.", ""),
                "frames": f"{args.frame_size[0]}x{args.frame_size[1]} at {CAMERA_RATE_HZ} Hz",
                "rows": [],
            }
            for count in cameras:
                for phase in phases:
                    print(f"[parts] {count} camera(s), {phase}", file=sys.stderr, flush=True)
                    report["rows"].append(run_parts(loaded, config, count, phase, args))
            report["decode_path"] = report["rows"][0]["decode_path"]
            report["prefill_path"] = report["rows"][0]["prefill_path"]
            report["compile_vision"] = bool(args.compile_vision)
            print_parts(report)
            if args.json:
                args.json.write_text(json.dumps(report, indent=2))
            return 0
        report = {
            "device": device_label,
            "model": Path(args.model).name if args.model else "tiny (svlm-make-tiny)",
            "stream_seconds": args.stream_seconds,
            "policies": {},
        }
        for name in policies:
            report["policies"][name] = run_policy(name, loaded, config, args)
    header = (f"{'policy':<10} {'seconds':>7} {'first ms':>9} {'last ms':>9} {'p99 ms':>9} "
              f"{'rss first':>9} {'rss last':>9} {'cache max':>9} {'bound':>7}")
    print(f"device {report['device']}, model {report['model']}, "
          f"frames {args.frame_size[0]}x{args.frame_size[1]} at {CAMERA_RATE_HZ} Hz")
    print(header)
    for name, row in report["policies"].items():
        flag = " (stopped by budget)" if row["stopped_early"] else ""
        print(f"{name:<10} {row['seconds_run']:>7} {row['step_ms_first_median']:>9.1f} "
              f"{row['step_ms_last_median']:>9.1f} {row['step_ms_p99']:>9.1f} "
              f"{row['rss_mb_first']:>9.0f} {row['rss_mb_last']:>9.0f} "
              f"{row['cache_tokens_max']:>9} {row['cache_bound'] or '-':>7}{flag}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
