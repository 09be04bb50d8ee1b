"""Soak the installed narrator: hours of simulated stream as fast as the model takes them.

``python -m svlm_ros.benchmarks.soak_bench --seconds 7200`` (``--help`` for options) starts
the installed ``narrator`` with ``use_sim_time`` (tiny model unless ``--model-path``) and plays
it a simulated camera: this process publishes ``/clock`` and four small rgb8 frames per
simulated second, one second after another as soon as the previous second is narrated
(second ``s``'s first frame completes second ``s - 1``). Mixed in:

* bad inputs every ``--bad-every`` seconds (wrong data length, unknown encoding, 0 width),
  stamped where the sampler would keep them, so they are looked at and rejected;
* stalls every ``--stall-every`` seconds: 20 s of simulated time without frames; the second
  before must be narrated from the clock alone (``period_close_slack``);
* the camera clock going back by 500 s every ``--jump-back-every`` seconds (a driver restart:
  the stream restarts) and ahead by 1000 s every ``--jump-ahead-every`` seconds;
* an ask every ``--ask-every`` seconds, not waited for.

It prints, and returns as ``SoakFigures``: whether the process survived (and exited 0 on
SIGINT), resident memory after the warm-up and at the end (growth in %), every simulated
second that had a valid frame against those narrated, answers and refusals, rejected frames
and the wall time. Exit status 0 when nothing crashed, growth < 3 % and every second with a
frame was narrated.

Needs a sourced ROS environment with svlm_ros built.
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
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from svlm_ros.node import exit_watchdog

FRAMES_PER_SECOND = 4  # camera frames per simulated second (the model takes 2)
STALL_SECONDS = 20
JUMP_BACK_SECONDS = 500
JUMP_AHEAD_SECONDS = 1000
# The first words of exit_watchdog.MESSAGE, as bytes to look for in the narrator's log.
STUCK_EXIT_MARKER = exit_watchdog.MESSAGE.split("{")[0].encode()
START = 1_000_000.0  # simulated time of the first frame (whole seconds throughout)


@dataclass
class SoakFigures:
    """What a soak measured."""

    simulated_seconds: int = 0
    seconds_with_frames: int = 0
    seconds_narrated: int = 0
    missing: list[float] = field(default_factory=list)
    alive: bool = False
    exit_status: int | None = None
    # Wall seconds from SIGINT until the process ended (None: it was killed, or had died).
    exit_seconds: float | None = None
    # The narrator's exit deadline fired (svlm_ros.node.exit_watchdog): shutdown hung
    # somewhere, and the log holds every thread's stack.
    exit_forced: bool = False
    rss_after_warmup: int = 0
    rss_end: int = 0
    asks_answered: int = 0
    asks_refused: int = 0
    frames_rejected: int = 0
    seconds_gap: int = 0
    stream_restarts_by_clock: int = 0
    publish_retries: int = 0
    # Simulated seconds past a second's end until it was narrated, when no later frame came.
    close_delays: list[float] = field(default_factory=list)
    wall_seconds: float = 0.0

    @property
    def rss_growth(self) -> float:
        """Resident memory growth from the warm-up to the end (fraction)."""
        if not self.rss_after_warmup:
            return float("nan")
        return self.rss_end / self.rss_after_warmup - 1.0

    def ok(self) -> bool:
        """0 crashes, RSS growth < 3 %, every second with a frame narrated."""
        return (self.alive and self.exit_status == 0 and self.rss_growth < 0.03
                and not self.missing)  # fmt: skip

    def report(self) -> str:
        return "\n".join([
            f"simulated seconds: {self.simulated_seconds} in {self.wall_seconds:.0f} s wall "
            f"({self.simulated_seconds / max(self.wall_seconds, 1e-9):.1f}x real time)",
            f"seconds with a frame: {self.seconds_with_frames}; narrated: "
            f"{self.seconds_narrated}; missing: {len(self.missing)}"
            + (f" (first: {self.missing[:5]})" if self.missing else ""),
            f"crashes: {0 if self.alive else 1}; exit status on SIGINT: {self.exit_status}"
            + (f" after {self.exit_seconds:.1f} s" if self.exit_seconds is not None else "")
            + (" (forced by the exit deadline; stacks in the log)" if self.exit_forced else ""),
            f"resident memory: {self.rss_after_warmup / 2**20:.1f} MiB after warm-up, "
            f"{self.rss_end / 2**20:.1f} MiB at the end ({self.rss_growth * 100:+.2f} %)",
            f"asks: {self.asks_answered} answered, {self.asks_refused} refused; frames "
            f"rejected: {self.frames_rejected}; gap seconds: {self.seconds_gap}; stream "
            f"restarts by the clock going back: {self.stream_restarts_by_clock}; publish "
            f"retries (this process): {self.publish_retries}",
            f"seconds closed by the clock alone (stalls, clock jumps, the end): "
            f"{len(self.close_delays)}, narrated {max(self.close_delays, default=float('nan')):.2f}"
            " s (simulated) after their end at most",
        ])  # fmt: skip


def _stamp(seconds: float):
    from builtin_interfaces.msg import Time

    nanoseconds = round(seconds * 1e9)
    return Time(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)


def run_soak(
    seconds: int,
    *,
    model_path: str | Path,
    work: Path,
    bad_every: int = 50,
    stall_every: int = 300,
    jump_back_every: int = 900,
    jump_ahead_every: int = 2000,
    ask_every: int = 20,
    warmup: int = 120,
    progress_every: int = 0,
    namespace: str = "/soak",
    exit_wait: float = 10.0,
) -> SoakFigures:
    """Play ``seconds`` simulated seconds to a fresh narrator process; the figures.

    ``exit_wait`` is how long the process may take to end after the final SIGINT before it is
    killed (exit status then None). The 5 s the README promises is tested on an idle node
    (test_narrator_node); a soak measures survival, and reports how long the exit took.
    """
    import rclpy
    from ament_index_python.packages import get_package_prefix, get_package_share_directory
    from rclpy._rclpy_pybind11 import RCLError
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image

    from svlm_ros.msg import Narration, NarratorStatus
    from svlm_ros.srv import Ask

    figures = SoakFigures()
    share = Path(get_package_share_directory("svlm_ros"))
    ros_home = work / "ros_home"
    ros_home.mkdir(parents=True, exist_ok=True)
    log = open(work / "narrator.log", "wb")  # noqa: SIM115 - closed in finally
    narrator = subprocess.Popen(
        [
            str(Path(get_package_prefix("svlm_ros")) / "lib" / "svlm_ros" / "narrator"),
            "--ros-args", "--params-file", str(share / "config" / "narrator.yaml"),
            "-r", f"__ns:={namespace}",
            "-p", f"model_path:={model_path}",
            "-p", "use_sim_time:=true",
            "-p", "qos_reliability:=reliable",
            "-p", "qos_depth:=100",
            "-p", "max_pixels:=12544",
            "-p", "min_pixels:=3136",
            "-p", "max_new_tokens:=2",
            "-p", "max_answer_tokens:=4",
            "-p", "vision_window_seconds:=4",
            "-p", "text_sink_tokens:=64",
            "-p", "text_window_tokens:=64",
            "-p", "max_pending_seconds:=8",
            "-p", "status_period:=5.0",
        ],  # fmt: skip
        env={**os.environ, "ROS_HOME": str(ros_home), "PYTHONUNBUFFERED": "1"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("soak_camera", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100,
                          reliability=ReliabilityPolicy.RELIABLE)  # fmt: skip
    clock = node.create_publisher(Clock, "/clock", reliable)
    camera = node.create_publisher(Image, f"{namespace}/camera/image_raw", reliable)
    ask = node.create_client(Ask, f"{namespace}/ask")
    changed = threading.Condition()
    # End stamps narrated, counted: after the camera clock goes back, seconds repeat.
    narrated: Counter[float] = Counter()
    statuses: list = []
    asks = {"answered": 0, "refused": 0}

    def on_narration(message: Narration) -> None:
        with changed:
            narrated[round(message.header.stamp.sec + message.header.stamp.nanosec * 1e-9, 3)] += 1
            changed.notify_all()

    def on_status(message: NarratorStatus) -> None:
        with changed:
            statuses.append(message)
            changed.notify_all()

    node.create_subscription(Narration, f"{namespace}/narration", on_narration, reliable)
    node.create_subscription(NarratorStatus, f"{namespace}/status", on_status, 10)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    frame = np.full((48, 64, 3), 120, np.uint8)
    frame[::8] = 30

    def image(stamp: float, **fields) -> Image:
        message = Image(height=48, width=64, encoding="rgb8", step=64 * 3,
                        data=frame.tobytes())  # fmt: skip
        message.header.stamp = _stamp(stamp)
        message.header.frame_id = "soak_camera"
        for name, value in fields.items():
            setattr(message, name, value)
        return message

    def send(publisher, message) -> None:
        # A reliable writer whose reader is slow to acknowledge (a busy machine) may refuse
        # a sample for a moment; that is the benchmark's own transport, not the narrator.
        for _attempt in range(100):
            try:
                publisher.publish(message)
                return
            except RCLError:
                figures.publish_retries += 1
                time.sleep(0.05)
        publisher.publish(message)

    def set_clock(seconds_: float) -> None:
        send(clock, Clock(clock=_stamp(seconds_)))

    def wait_narrated(end: float, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        with changed:
            while narrated[round(end, 3)] < expected[round(end, 3)]:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or narrator.poll() is not None:
                    return False
                changed.wait(min(remaining, 0.5))
        return True

    def close_on_clock(end: float) -> None:
        """No more frames: run the simulated clock on at real-time pace until the second
        ending at ``end`` is narrated; keep how far past its end that took."""
        now = end
        while now < end + 10.0 and narrator.poll() is None:
            now += 0.05
            set_clock(now)
            with changed:
                if changed.wait_for(
                    lambda: narrated[round(end, 3)] >= expected[round(end, 3)], timeout=0.05
                ):
                    figures.close_delays.append(now - end)
                    return
        wait_narrated(end)

    def latest_status() -> NarratorStatus | None:
        with changed:
            return statuses[-1] if statuses else None

    def answered(future) -> None:
        try:
            result = future.result()
        except Exception:  # noqa: BLE001 - counted as refused
            result = None
        key = "answered" if result is not None and result.success else "refused"
        asks[key] += 1

    expected: Counter[float] = Counter()  # end stamps of seconds that had a valid frame
    started = time.monotonic()
    try:
        # Wait for the narrator (active, subscribed) while the simulated clock runs up to
        # START (the status timer runs on it).
        deadline = time.monotonic() + 120.0
        before = START - 600.0
        while not ((s := latest_status()) and s.state == "active"
                   and camera.get_subscription_count() > 0):  # fmt: skip
            if time.monotonic() > deadline or narrator.poll() is not None:
                raise RuntimeError(f"narrator did not start; see {work / 'narrator.log'}")
            before = min(before + 1.0, START - 1.0)
            set_clock(before)
            time.sleep(0.1)  # pacing the simulated clock
        offset = START  # simulated time of second 0
        pending: float | None = None  # end stamp of the second to wait for
        for second in range(seconds):
            begin = offset + second
            if second and jump_back_every and second % jump_back_every == 0:
                # A driver restart: the camera clock (and the simulation) go back. The
                # sampler needs CLOCK_JUMP_FRAMES backward frames in a row to restart the
                # stream; send them all at the new second's start.
                if pending is not None:
                    close_on_clock(pending)
                    pending = None
                offset -= JUMP_BACK_SECONDS
                begin = offset + second
                set_clock(begin)
                for _ in range(15):
                    send(camera, image(begin))
                figures.stream_restarts_by_clock += 1
            elif second and jump_ahead_every and second % jump_ahead_every == 0:
                offset += JUMP_AHEAD_SECONDS
                begin = offset + second
            elif second and stall_every and second % stall_every == 0:
                # The camera stops: the last second is narrated from the clock alone.
                if pending is not None:
                    close_on_clock(pending)
                    pending = None
                offset += STALL_SECONDS
                begin = offset + second
            for index in range(FRAMES_PER_SECOND):
                stamp = begin + index / FRAMES_PER_SECOND
                set_clock(stamp)
                if bad_every and second % bad_every == 0 and index == FRAMES_PER_SECOND // 2:
                    # Bad messages where the sampler would keep a frame: each is decoded and
                    # rejected, then the good frame takes the slot.
                    send(camera, image(stamp, data=bytes(64 * 48 * 3 - 1)))
                    send(camera, image(stamp, encoding="rgb9"))
                    send(camera, image(stamp, width=0, step=0, data=b""))
                send(camera, image(stamp))
            if pending is not None:
                wait_narrated(pending)
            expected[round(begin + 1.0, 3)] += 1
            pending = begin + 1.0
            if ask_every and second % ask_every == ask_every - 1 and ask.service_is_ready():
                ask.call_async(Ask.Request(question=f"What happened at {second}?")
                               ).add_done_callback(answered)  # fmt: skip
            if second == warmup:
                status = latest_status()
                figures.rss_after_warmup = status.process_memory if status else 0
            if narrator.poll() is not None:
                break
            if progress_every and second % progress_every == 0:
                print(f"  {second} s simulated, {time.monotonic() - started:.0f} s wall, "
                      f"{sum(narrated.values())} narrated", flush=True)
        if pending is not None:  # the stream ends: the last second from the clock alone
            close_on_clock(pending)
        # A last status (the timer runs on simulated time) for the memory at the end.
        last = pending or offset
        count = len(statuses)
        for step in range(1, 40):
            set_clock(last + 0.5 * step)
            with changed:
                changed.wait_for(lambda: len(statuses) > count, timeout=0.25)
            if len(statuses) > count:
                break
        status = latest_status()
        figures.rss_end = status.process_memory if status else 0
        camera_status = status.cameras[0] if status and status.cameras else None
        if camera_status is not None:
            figures.frames_rejected = camera_status.frames_rejected
            figures.seconds_gap = camera_status.seconds_gap
        with changed:
            figures.missing = sorted(
                end for end, count in expected.items() if narrated[end] < count
            )
        figures.simulated_seconds = seconds
        figures.seconds_with_frames = sum(expected.values())
        with changed:
            figures.seconds_narrated = sum(
                min(narrated[end], count) for end, count in expected.items()
            )
        figures.alive = narrator.poll() is None
        figures.asks_answered, figures.asks_refused = asks["answered"], asks["refused"]
    finally:
        figures.wall_seconds = time.monotonic() - started
        if narrator.poll() is None:
            narrator.send_signal(signal.SIGINT)
            signalled = time.monotonic()
            try:
                figures.exit_status = narrator.wait(timeout=exit_wait)
                figures.exit_seconds = time.monotonic() - signalled
            except subprocess.TimeoutExpired:
                # Every thread's stack into the log (the narrator registers SIGUSR1 for it).
                narrator.send_signal(signal.SIGUSR1)
                time.sleep(1.0)
                narrator.kill()
                narrator.wait()
        else:
            figures.exit_status = narrator.returncode
        log.close()
        figures.exit_forced = STUCK_EXIT_MARKER in (work / "narrator.log").read_bytes()
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    return figures


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=7200, help="simulated seconds")
    parser.add_argument("--model-path", default="", help="checkpoint (default: a tiny one)")
    parser.add_argument("--bad-every", type=int, default=50)
    parser.add_argument("--stall-every", type=int, default=300)
    parser.add_argument("--jump-back-every", type=int, default=900)
    parser.add_argument("--jump-ahead-every", type=int, default=2000)
    parser.add_argument("--ask-every", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=300,
                        help="simulated seconds before the first memory reading")
    parser.add_argument("--progress-every", type=int, default=600)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the soak and print its figures; 0 when every target is met."""
    arguments = parse_arguments(argv)
    work = Path(tempfile.mkdtemp(prefix="soak_bench_"))
    model_path = arguments.model_path
    if not model_path:
        from svlm_ros.engine.tiny_model import make_tiny_checkpoint

        model_path = make_tiny_checkpoint(work / "tiny")
    figures = run_soak(
        arguments.seconds,
        model_path=model_path,
        work=work,
        bad_every=arguments.bad_every,
        stall_every=arguments.stall_every,
        jump_back_every=arguments.jump_back_every,
        jump_ahead_every=arguments.jump_ahead_every,
        ask_every=arguments.ask_every,
        warmup=arguments.warmup,
        progress_every=arguments.progress_every,
    )
    print(figures.report())
    print("targets (0 crashes, memory growth < 3 %, every second with a frame narrated): "
          + ("met" if figures.ok() else "NOT met") + f"; narrator log: {work / 'narrator.log'}")
    return 0 if figures.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
