"""The demo's eyes: prints the live narration beside the ground truth, asks a question, records.

Run by ``scripts/demo.sh`` next to ``sim_camera`` and the ``narrator`` (same namespace):

    svlm-demo-monitor --seconds 60 --out demo_output [--question "..."] [--ask-at 30]

It subscribes to ``camera/image_raw``, ``narration``, ``ground_truth`` and ``answer``, and
  * prints one line per narrated second: the narration and what really happened, with the
    events only memory can narrate marked (``[memory: text]`` for a shape that is back,
    ``[memory: vision]`` for one that is still);
  * after ``--ask-at`` seconds asks ``--question`` through the ``ask`` service and prints the
    answer;
  * records the four topics into ``OUT/run_<time>`` (mcap; Foxglove opens it) and writes
    ``OUT/narration.gif`` (and ``.mp4``) with the narration under each frame;
  * judges the first ``--seconds`` narrated seconds, stops after them (or at Ctrl-C) and
    prints how many the narration got right (``svlm_ros.sim.scoring``).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import deque
from pathlib import Path

import numpy as np
import rclpy
from rclpy._rclpy_pybind11 import RCLError
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.utilities import remove_ros_args
from sensor_msgs.msg import Image

from svlm_ros.image_conversion import ImageRejected, image_message_to_rgb
from svlm_ros.msg import Answer, Narration
from svlm_ros.node.bag_recorder import BagRecorder
from svlm_ros.node.stamps import stamp_to_seconds
from svlm_ros.sim.captioned_video import CaptionedVideo
from svlm_ros.sim.world import parse_event
from svlm_ros.srv import Ask

#: What a memory event needs remembered, by kind (see ``svlm_ros.sim.world``).
MEMORY_NEEDS = {"returns": "text", "still": "vision"}

DEFAULT_QUESTION = "What colour was the last shape that left?"


def printable(text: str) -> str:
    """One line of readable text: a narrator may say anything, newlines included."""
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def memory_need(truth: str | None) -> str | None:
    """``text`` or ``vision`` when the true event can only be narrated from memory."""
    event = parse_event(truth) if truth else None
    return MEMORY_NEEDS.get(event[0]) if event else None


def narration_matches(narration: str, truth: str) -> bool:
    """Both silent, or the same event words."""
    if not truth.strip():
        return not narration.strip()
    return parse_event(narration) == parse_event(truth)


class DemoMonitor(Node):
    """See the module docstring."""

    def __init__(self, out_dir: Path, question: str, ask_at: float, record: bool = True,
                 seconds: float = float("inf")):
        super().__init__("demo_monitor")
        self.seconds = seconds  # narrated seconds to judge
        self.question = question
        self.ask_at = ask_at
        self.truths: dict[int, str] = {}
        self.pairs: list[tuple[int, str, str | None]] = []
        self.frames: deque[tuple[float, np.ndarray]] = deque(maxlen=16)
        self.video = CaptionedVideo(fps=2.0)
        self.first_narration: float | None = None
        self.asked = False
        self.answer_future = None
        self.answer_text: str | None = None
        self.recorder = None
        if record:
            stamp = time.strftime("%Y%m%d_%H%M%S")
            self.recorder = BagRecorder(out_dir / f"run_{stamp}", {
                self.resolve_topic_name("camera/image_raw"): "sensor_msgs/msg/Image",
                self.resolve_topic_name("narration"): "svlm_ros/msg/Narration",
                self.resolve_topic_name("ground_truth"): "svlm_ros/msg/Narration",
                self.resolve_topic_name("answer"): "svlm_ros/msg/Answer",
            })
        camera_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.BEST_EFFORT)
        self.create_subscription(Image, "camera/image_raw", self._on_image, camera_qos)
        self.create_subscription(Narration, "narration", self._on_narration, 50)
        self.create_subscription(Narration, "ground_truth", self._on_truth, 50)
        self.create_subscription(Answer, "answer", self._on_answer, 10)
        self.ask_client = self.create_client(Ask, "ask")

    # ----- recording ---------------------------------------------------------------------------
    def _record(self, topic: str, message) -> None:
        if self.recorder is not None:
            self.recorder.write(self.resolve_topic_name(topic), message,
                                self.get_clock().now().nanoseconds)

    def _on_image(self, message: Image) -> None:
        self._record("camera/image_raw", message)
        # Keep a few frames a second for the captioned video (every 0.25 s of camera time).
        stamp = stamp_to_seconds(message.header.stamp)
        if self.frames and stamp - self.frames[-1][0] < 0.24:
            return
        try:
            self.frames.append((stamp, image_message_to_rgb(message)))
        except ImageRejected as error:
            self.get_logger().warning(f"unreadable camera frame: {error}")

    def _on_truth(self, message: Narration) -> None:
        self._record("ground_truth", message)
        self.truths[round(stamp_to_seconds(message.header.stamp))] = message.text

    def _on_answer(self, message: Answer) -> None:
        self._record("answer", message)

    @property
    def done(self) -> bool:
        """Whether ``seconds`` narrated seconds have been judged."""
        return len(self.pairs) >= self.seconds

    def _on_narration(self, message: Narration) -> None:
        self._record("narration", message)
        if self.done:
            return  # arrived while the demo winds down: recorded, not judged
        end = stamp_to_seconds(message.header.stamp)
        truth = self.truths.get(round(end))
        second = int(round(message.stream_time)) - 1
        if self.first_narration is None:
            self.first_narration = time.monotonic()
        said = message.text if not message.silent else ""
        self.pairs.append((second, said, truth))
        mark = " " if truth is None else ("+" if narration_matches(said, truth) else "x")
        need = memory_need(truth)
        print(f"[{second:4d} s] {mark} narrator: {printable(said) or '...':<42} | truth: "
              f"{'?' if truth is None else (truth or '...')}"
              + (f"  [memory: {need}]" if need else ""), flush=True)
        for stamp, picture in self.frames:
            if end - 1.0 <= stamp < end:
                self.video.add(picture, said, truth)

    # ----- the question ------------------------------------------------------------------------
    def maybe_ask(self) -> None:
        if self.asked or self.first_narration is None:
            return
        if time.monotonic() - self.first_narration < self.ask_at:
            return
        if not self.ask_client.service_is_ready():
            return
        self.asked = True
        print(f"\n  asking: {self.question}", flush=True)
        self.answer_future = self.ask_client.call_async(Ask.Request(question=self.question))
        self.answer_future.add_done_callback(self._on_ask_done)

    def _on_ask_done(self, future) -> None:
        response = future.result()
        if response is None or not response.success:
            reason = response.message if response is not None else "no response"
            print(f"  the narrator could not answer: {reason}\n", flush=True)
            self.answer_text = ""
            return
        self.answer_text = response.answer
        print(f"  answer ({response.latency:.2f} s): {printable(response.answer)}\n",
              flush=True)

    # ----- the end -----------------------------------------------------------------------------
    def summary(self) -> str:
        judged = [(said, truth) for _, said, truth in self.pairs if truth is not None]
        if not judged:
            return "no narration was paired with ground truth"
        right = sum(narration_matches(said, truth) for said, truth in judged)
        events = [(said, truth) for said, truth in judged if truth]
        events_right = sum(narration_matches(said, truth) for said, truth in events)
        memory = [(said, truth) for said, truth in events if memory_need(truth)]
        memory_right = sum(narration_matches(said, truth) for said, truth in memory)
        quiet = len(judged) - len(events)
        return (f"{right} of {len(judged)} seconds right ({100 * right / len(judged):.0f} %): "
                f"{events_right} of {len(events)} event seconds ({memory_right} of "
                f"{len(memory)} that need memory), {right - events_right} of {quiet} quiet "
                f"seconds; always-silent would get {100 * quiet / len(judged):.0f} %")


def parse_arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="svlm-demo-monitor", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0,
                        help="narrated seconds to judge; stop after them (default 60)")
    parser.add_argument("--out", type=Path, default=Path("demo_output"),
                        help="folder for the bag and the video (default demo_output)")
    parser.add_argument("--question", default=DEFAULT_QUESTION, help="question to ask")
    parser.add_argument("--ask-at", type=float, default=None,
                        help="seconds after the first narration to ask (default: 3/4 through)")
    parser.add_argument("--startup-timeout", type=float, default=600.0,
                        help="give up if no narration arrives within this many seconds")
    parser.add_argument("--no-record", action="store_true", help="write no bag and no video")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error("--seconds must be > 0")
    if args.ask_at is None:
        args.ask_at = 0.75 * args.seconds
    return args


def main(argv: list[str] | None = None) -> int:
    full = sys.argv if argv is None else [sys.argv[0], *argv]
    args = parse_arguments(remove_ros_args(full)[1:])
    args.out.mkdir(parents=True, exist_ok=True)
    rclpy.init(args=full)
    monitor = None
    status = 0
    try:
        monitor = DemoMonitor(args.out, args.question, args.ask_at, record=not args.no_record,
                              seconds=args.seconds)
        executor = SingleThreadedExecutor()
        executor.add_node(monitor)
        started = time.monotonic()
        print("waiting for the first narration (the narrator loads its model) ...", flush=True)
        while rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
            monitor.maybe_ask()
            now = time.monotonic()
            if monitor.first_narration is None:
                if now - started > args.startup_timeout:
                    print(f"no narration within {args.startup_timeout:g} s", file=sys.stderr)
                    status = 1
                    break
                continue
            waiting_for_answer = monitor.asked and monitor.answer_text is None
            # The count of narrated seconds, not wall time: a slow start or a late round does
            # not change how many seconds the summary judges.
            if monitor.done and not waiting_for_answer:
                break
            if now - monitor.first_narration >= args.seconds + 60:
                break  # an answer that never comes does not hold the demo forever
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except RCLError:
        # A signal can shut the context down between two spins: that is a normal stop.
        if rclpy.ok():
            raise
    finally:
        if monitor is not None:
            finish(monitor, args.out)
            monitor.destroy_node()
        rclpy.try_shutdown()
    return status


def finish(monitor: DemoMonitor, out: Path) -> None:
    """Close the bag, write the video, print where everything is."""
    print("\n" + monitor.summary())
    if monitor.recorder is not None:
        bag = monitor.recorder.close()
        counts = ", ".join(f"{topic} {n}" for topic, n in monitor.recorder.counts.items())
        print(f"bag:   {bag} ({counts})")
        if monitor.video.frames:
            gif = monitor.video.write_gif(out / "narration.gif")
            mp4 = monitor.video.write_mp4(out / "narration.mp4")
            print(f"video: {gif}" + (f" and {mp4}" if mp4 else ""))


if __name__ == "__main__":
    sys.exit(main())
