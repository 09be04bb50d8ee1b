"""Benchmark the running narrator: narration latency, and no queue growth at 30 Hz input.

``python -m svlm_ros.benchmarks.narrator_bench --duration 300`` (``--help`` for options) starts
the installed ``narrator`` (lib/svlm_ros/narrator, the shipped parameter file, a fresh tiny
model unless ``--model-path`` is given), publishes ``--rate`` Hz ``--width`` x ``--height``
rgb8 frames to it from this process for ``--duration`` seconds, and prints:

* first, the cost of the image callback's own work per frame, measured in this process
  (convert + hand to the frame sampler; target median <= 1 ms);
* every ``--report-every`` seconds, the node's own counters from ``/svlm/status``: frames
  received / sampled / dropped / rejected, seconds narrated / skipped / overflowed and the
  pending queue, with the step and publish latency;
* with ``--asks N``, N concurrent asks sent ``--asks-at`` seconds in: how many were
  answered and how long the last took (the issue-10 check of ``torch_threads``);
* at the end, the narration latency (``Narration.latency``: end of the narrated second on
  the camera clock to publication) after ``--warmup`` seconds: median, p99, max and the share
  within the 1.2 s target (met when the p99 is within it); and whether the queue stayed
  bounded (``seconds_pending`` never above ``max_pending_seconds`` and not growing).

Needs a sourced ROS environment with svlm_ros built. Frames go through DDS shared memory; the
shipped ``config/fastdds_large_images.xml`` profile is used unless
``FASTDDS_DEFAULT_PROFILES_FILE`` is already set (without it most best-effort 640x480 frames
are lost on one machine). Exit status 0 when both targets are met.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

LATENCY_TARGET_S = 1.2


def _stamp(seconds: float):
    from builtin_interfaces.msg import Time

    nanoseconds = round(seconds * 1e9)
    return Time(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)


def _percentile(values: list[float], fraction: float) -> float:
    return float(np.percentile(values, fraction * 100.0)) if values else float("nan")


def measure_frame_path(width: int, height: int, rate: float, frames: int = 3000) -> None:
    """Time what the node's image callback does per raw frame, in this process: convert a
    ``sensor_msgs/Image``'s fields to RGB and hand the array to a frame sampler (the store)."""
    import array

    from svlm_ros.engine.frame_sampler import FrameSampler
    from svlm_ros.image_conversion import raw_image_to_rgb

    data = array.array("B", np.random.default_rng(1).integers(0, 256, width * height * 3,
                                                              dtype=np.uint8).tobytes())
    sampler = FrameSampler(fps=2.0, period=1.0, max_pending=4)
    samples = np.empty(frames)
    for index in range(frames):
        started = time.perf_counter_ns()
        rgb = raw_image_to_rgb(encoding="rgb8", width=width, height=height, step=width * 3,
                               is_bigendian=False, data=data)
        sampler.add(rgb, 1000.0 + index / rate)
        samples[index] = time.perf_counter_ns() - started
        if index % 60 == 0:
            sampler.pop_ready(latest_only=True)
    print(f"image callback path (rgb8 {width}x{height} convert + hand to the sampler), "
          f"{frames} frames: median {np.median(samples) / 1e3:.0f} us, "
          f"p99 {np.percentile(samples, 99) / 1e3:.0f} us (target: median <= 1000 us)")


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of input")
    parser.add_argument("--report-every", type=float, default=30.0, help="seconds per line")
    parser.add_argument("--warmup", type=float, default=10.0,
                        help="seconds left out of the latency figures (first rounds)")
    parser.add_argument("--rate", type=float, default=30.0, help="camera frames per second")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--fps", type=float, default=2.0, help="model frames per second")
    parser.add_argument("--model-path", default="", help="checkpoint (default: a tiny one)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-new-tokens", type=int, default=20)
    parser.add_argument("--max-pixels", type=int, default=602112)
    parser.add_argument("--torch-threads", type=int, default=0,
                        help="the node's torch_threads (0: automatic)")
    parser.add_argument("--asks", type=int, default=0, help="concurrent asks to send")
    parser.add_argument("--asks-at", type=float, default=20.0,
                        help="seconds after the first frame to send the asks")
    parser.add_argument("--namespace", default="/svlm_bench",
                        help="namespace for the narrator (keeps it apart from others)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; 0 when the latency and queue targets are met."""
    arguments = parse_arguments(argv)
    measure_frame_path(arguments.width, arguments.height, arguments.rate)
    from ament_index_python.packages import get_package_prefix, get_package_share_directory

    share = Path(get_package_share_directory("svlm_ros"))
    from svlm_ros.node.transport_monitor import PROFILE_VARIABLES

    for variable in PROFILE_VARIABLES:
        os.environ.setdefault(variable, str(share / "config" / "fastdds_large_images.xml"))
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import QoSProfile, qos_profile_sensor_data
    from sensor_msgs.msg import Image

    from svlm_ros.msg import Narration, NarratorStatus
    from svlm_ros.srv import Ask

    work = Path(tempfile.mkdtemp(prefix="narrator_bench_"))
    model_path = arguments.model_path
    if not model_path:
        from svlm_ros.engine.tiny_model import make_tiny_checkpoint

        model_path = str(make_tiny_checkpoint(work / "tiny"))
    (work / "ros_home").mkdir()
    executable = Path(get_package_prefix("svlm_ros")) / "lib" / "svlm_ros" / "narrator"
    command = [
        str(executable), "--ros-args",
        "--params-file", str(share / "config" / "narrator.yaml"),
        "-r", f"__ns:={arguments.namespace}",
        "-p", f"model_path:={model_path}",
        "-p", f"device:={arguments.device}",
        "-p", f"fps:={arguments.fps}",
        "-p", f"max_new_tokens:={arguments.max_new_tokens}",
        "-p", f"max_pixels:={arguments.max_pixels}",
        "-p", f"torch_threads:={arguments.torch_threads}",
    ]  # fmt: skip
    log_path = work / "narrator.log"
    environment = {**os.environ, "ROS_HOME": str(work / "ros_home"), "PYTHONUNBUFFERED": "1"}
    with open(log_path, "wb") as log:
        narrator = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=environment)

    rclpy.init()
    node = rclpy.create_node("narrator_bench")
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    namespace = arguments.namespace.rstrip("/")
    narrations: list[tuple[float, Narration]] = []
    statuses: list[tuple[float, NarratorStatus]] = []
    lock = threading.Lock()

    def keep(store: list):
        def callback(message) -> None:
            with lock:
                store.append((time.time(), message))

        return callback

    node.create_subscription(Narration, f"{namespace}/narration", keep(narrations),
                             QoSProfile(depth=100))
    node.create_subscription(NarratorStatus, f"{namespace}/status", keep(statuses),
                             QoSProfile(depth=10))
    publisher = node.create_publisher(Image, f"{namespace}/camera/image_raw",
                                      qos_profile_sensor_data)
    frame = np.random.default_rng(0).integers(
        0, 256, (arguments.height, arguments.width, 3), dtype=np.uint8
    ).tobytes()
    stop = threading.Event()
    published = [0]
    ask_client = node.create_client(Ask, f"{namespace}/ask", qos_profile=QoSProfile(depth=100))
    asks: dict[str, list] = {"answered": [], "refused": []}
    asks_sent = [0.0]

    def ask_done(future) -> None:
        result = future.result()
        with lock:
            asks["answered" if result.success else "refused"].append(time.monotonic())

    def publish_frames(started: float) -> None:
        ticks = 0
        while not stop.is_set():
            message = Image(height=arguments.height, width=arguments.width, encoding="rgb8",
                            step=arguments.width * 3)
            message.header.stamp = _stamp(time.time())
            message.header.frame_id = "bench_camera"
            message.data = frame
            publisher.publish(message)
            published[0] += 1
            ticks += 1
            delay = started + ticks / arguments.rate - time.monotonic()
            if delay > 0:
                stop.wait(delay)

    spinner = threading.Thread(target=lambda: _spin(executor, stop), daemon=True)
    spinner.start()
    print(f"narrator: {' '.join(command)}\nlog: {log_path}", flush=True)
    # Wait until the narrator is active (first status with state active), then feed it.
    deadline = time.monotonic() + 180.0
    while time.monotonic() < deadline:
        with lock:
            ready = statuses and statuses[-1][1].state == "active"
        if ready or narrator.poll() is not None:
            break
        stop.wait(0.2)
    if narrator.poll() is not None or not ready:
        print(f"narrator did not become active; see {log_path}", file=sys.stderr)
        stop.set()
        narrator.kill()
        return 2
    max_pending = None
    started_wall = time.time()
    started = time.monotonic()
    feeder = threading.Thread(target=publish_frames, args=(started,), daemon=True)
    feeder.start()
    header = (f"{'t s':>6} {'published':>9} {'received':>9} {'sampled':>8} {'dropped':>8} "
              f"{'rejected':>8} {'pending':>7} {'skipped':>7} {'overflow':>8} {'narrated':>8} "
              f"{'step p50/p99 ms':>16} {'latency p50/p99 ms':>19}")
    print(f"{arguments.rate:g} Hz {arguments.width}x{arguments.height} rgb8 in, model fps "
          f"{arguments.fps:g}, for {arguments.duration:g} s\n{header}", flush=True)
    pending_seen: list[int] = []
    next_report = started + arguments.report_every
    end = started + arguments.duration
    while time.monotonic() < end and narrator.poll() is None:
        stop.wait(min(1.0, max(0.0, min(next_report, end) - time.monotonic())))
        if arguments.asks and not asks_sent[0] and time.monotonic() - started >= arguments.asks_at:
            asks_sent[0] = time.monotonic()
            for index in range(arguments.asks):
                ask_client.call_async(
                    Ask.Request(question=f"Question {index}: what moved?")
                ).add_done_callback(ask_done)
        with lock:
            status = statuses[-1][1] if statuses else None
        if status is not None and status.cameras:
            pending_seen.append(status.cameras[0].seconds_pending)
        if time.monotonic() >= next_report or time.monotonic() >= end:
            next_report += arguments.report_every
            if status is not None and status.cameras:
                camera = status.cameras[0]
                print(
                    f"{time.monotonic() - started:6.0f} {published[0]:9d} "
                    f"{camera.frames_received:9d} {camera.frames_sampled:8d} "
                    f"{camera.frames_dropped:8d} {camera.frames_rejected:8d} "
                    f"{camera.seconds_pending:7d} {camera.seconds_skipped:7d} "
                    f"{camera.seconds_overflowed:8d} {camera.seconds_narrated:8d} "
                    f"{camera.step_latency_median * 1e3:7.0f}/{camera.step_latency_p99 * 1e3:<8.0f}"
                    f" {camera.publish_latency_median * 1e3:8.0f}/"
                    f"{camera.publish_latency_p99 * 1e3:<10.0f}",
                    flush=True,
                )
    stop.set()
    feeder.join(timeout=5.0)
    crashed = narrator.poll() is not None
    narrator.send_signal(signal.SIGINT)
    try:
        exit_status = narrator.wait(timeout=10.0)
    except subprocess.TimeoutExpired:
        narrator.kill()
        exit_status = None
    spinner.join(timeout=5.0)
    node.destroy_node()
    rclpy.try_shutdown()

    with lock:
        latencies = [m.latency for arrived, m in narrations
                     if arrived - started_wall >= arguments.warmup]
        received_gap = [arrived - (m.header.stamp.sec + m.header.stamp.nanosec * 1e-9)
                        for arrived, m in narrations if arrived - started_wall >= arguments.warmup]
        narrated = len(narrations)
    max_pending = max(pending_seen) if pending_seen else 0
    if arguments.asks:
        with lock:
            done = asks["answered"] + asks["refused"]
            last = f"{max(done) - asks_sent[0]:.1f} s" if done and asks_sent[0] else "-"
            print(f"\n{arguments.asks} concurrent asks: {len(asks['answered'])} answered, "
                  f"{len(asks['refused'])} refused, "
                  f"{arguments.asks - len(done)} unanswered at the end; last reply after {last}")
    print(f"\nnarrations: {narrated} in {arguments.duration:g} s "
          f"({len(latencies)} after the {arguments.warmup:g} s warm-up)")
    within = sum(latency <= LATENCY_TARGET_S for latency in latencies)
    if latencies:
        print(
            f"latency (end of second -> published), s: median {np.median(latencies):.3f}, "
            f"p99 {_percentile(latencies, 0.99):.3f}, max {max(latencies):.3f}; "
            f"{within}/{len(latencies)} within {LATENCY_TARGET_S} s"
        )
        print(f"end of second -> received here, s: median {np.median(received_gap):.3f}, "
              f"p99 {_percentile(received_gap, 0.99):.3f}")
    third = max(1, len(pending_seen) // 3)
    growing = np.mean(pending_seen[-third:]) > np.mean(pending_seen[:third]) + 1.0
    print(f"pending seconds: max {max_pending}, mean first third "
          f"{np.mean(pending_seen[:third]):.2f}, last third {np.mean(pending_seen[-third:]):.2f}")
    # The target is read as "p99 within 1.2 s"; the count above shows any outliers.
    latency_ok = bool(latencies) and _percentile(latencies, 0.99) <= LATENCY_TARGET_S
    queue_ok = max_pending <= 4 and not growing
    print(f"latency target (p99 within {LATENCY_TARGET_S} s): "
          f"{'PASS' if latency_ok else 'FAIL'}; queue bounded and not growing: "
          f"{'PASS' if queue_ok else 'FAIL'}; narrator exit status {exit_status}"
          f"{' (it had stopped during the run)' if crashed else ''}")
    return 0 if latency_ok and queue_ok and not crashed else 1


def _spin(executor, stop: threading.Event) -> None:
    while not stop.is_set():
        executor.spin_once(timeout_sec=0.1)


if __name__ == "__main__":
    raise SystemExit(main())
