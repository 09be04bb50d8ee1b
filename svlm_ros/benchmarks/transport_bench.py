"""Measure how many camera frames reach the narrator, per transport setting.

``python -m svlm_ros.benchmarks.transport_bench`` (``--help`` for options) runs, for each
setting below, the installed ``narrator`` (tiny model, the shipped parameter file) and a camera
publisher in another process on the same host, publishing ``--rate`` Hz for ``--seconds``; it
reads what the narrator counted (``frames_received`` and its own loss estimate from
``/status``) and the QoS its camera subscription had (``/diagnostics`` key ``qos``: more than one
when ``auto`` changed it while the camera ran), and prints one Markdown table row per setting:

* raw ``sensor_msgs/Image`` rgb8 640x480 and 1280x720, the publisher best effort (sensor-data
  QoS, what camera drivers use) or reliable (rclpy's default QoS), the narrator
  ``qos_reliability`` given as best_effort (the default before ``auto``) or reliable, or left
  at ``auto`` (the shipped default: it subscribes when no publisher exists yet, so best effort
  at first, then takes the publisher's QoS on its 2 s re-check);
* the shipped Fast DDS profile (``config/fastdds_large_images.xml``) on neither side, the
  narrator's side only, the publisher's side only, or both;
* ``sensor_msgs/CompressedImage`` JPEG of the same frames.

``--only`` (repeatable) runs the settings whose name contains one of its values. Needs a sourced
ROS environment with svlm_ros built. Run it on an otherwise quiet machine: a busy CPU loses
frames too (the header line prints the load average).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from svlm_ros.node.transport_monitor import with_profile, without_profile


@dataclass(frozen=True)
class Setting:
    """One row of the table."""

    name: str
    width: int
    height: int
    compressed: bool = False
    publisher_reliable: bool = False
    #: The narrator's ``qos_reliability``: best_effort, reliable or auto.
    narrator_qos: str = "best_effort"
    profile_publisher: bool = False
    profile_narrator: bool = False


SETTINGS = (
    Setting("raw 640x480, both best effort, no profile", 640, 480),
    Setting("raw 640x480, publisher reliable (rclpy default), narrator best effort", 640, 480,
            publisher_reliable=True),
    Setting("raw 640x480, both reliable", 640, 480, publisher_reliable=True,
            narrator_qos="reliable"),
    Setting("raw 640x480, best effort, profile on the narrator only", 640, 480,
            profile_narrator=True),
    Setting("raw 640x480, best effort, profile on the publisher only", 640, 480,
            profile_publisher=True),
    Setting("raw 640x480, best effort, profile on both", 640, 480, profile_publisher=True,
            profile_narrator=True),
    Setting("raw 1280x720, both best effort, no profile", 1280, 720),
    Setting("raw 1280x720, both reliable", 1280, 720, publisher_reliable=True,
            narrator_qos="reliable"),
    Setting("raw 1280x720, best effort, profile on the publisher only", 1280, 720,
            profile_publisher=True),
    Setting("compressed 640x480 (JPEG), best effort, no profile", 640, 480, compressed=True),
    Setting("compressed 1280x720 (JPEG), best effort, no profile", 1280, 720, compressed=True),
    # The shipped default, qos_reliability: auto.
    Setting("raw 640x480, publisher reliable (rclpy default), narrator auto, no profile", 640,
            480, publisher_reliable=True, narrator_qos="auto"),
    Setting("raw 640x480, publisher best effort, narrator auto, no profile", 640, 480,
            narrator_qos="auto"),
    Setting("raw 1280x720, publisher reliable (rclpy default), narrator auto, no profile", 1280,
            720, publisher_reliable=True, narrator_qos="auto"),
    Setting("compressed 640x480 (JPEG), publisher reliable (rclpy default), narrator auto, "
            "no profile", 640, 480, compressed=True, publisher_reliable=True, narrator_qos="auto"),
)  # fmt: skip


def publish(arguments: argparse.Namespace) -> int:
    """The camera process: publish frames stamped with wall time, print how many."""
    import cv2
    import numpy as np
    import rclpy
    from builtin_interfaces.msg import Time
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
    from sensor_msgs.msg import CompressedImage, Image

    rclpy.init()
    node = rclpy.create_node("transport_bench_camera")
    qos = (
        QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10,
                   reliability=ReliabilityPolicy.RELIABLE)
        if arguments.reliable else qos_profile_sensor_data
    )  # fmt: skip
    height, width = arguments.height, arguments.width
    y, x = np.mgrid[0:height, 0:width]
    frame = np.stack([x * 255 // width, y * 255 // height, (x + y) % 256], -1).astype(np.uint8)
    if arguments.compressed:
        publisher = node.create_publisher(CompressedImage, arguments.topic + "/compressed", qos)
        jpeg = cv2.imencode(".jpg", frame[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 80])[1]
        message = CompressedImage(format="jpeg", data=jpeg.tobytes())
    else:
        publisher = node.create_publisher(Image, arguments.topic, qos)
        message = Image(height=height, width=width, encoding="rgb8", step=width * 3,
                        data=frame.tobytes())  # fmt: skip
    # Let discovery finish before counting (the narrator subscribes already).
    deadline = time.monotonic() + 10.0
    while publisher.get_subscription_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    count = 0
    while time.monotonic() - started < arguments.seconds:
        now = time.time()
        message.header.stamp = Time(sec=int(now), nanosec=int((now % 1) * 1e9))
        publisher.publish(message)
        count += 1
        delay = started + count / arguments.rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing the camera
    print(f"published {count}", flush=True)
    node.destroy_node()
    rclpy.shutdown()
    return 0


def _latest_camera_status(statuses: list):
    return statuses[-1].cameras[0] if statuses and statuses[-1].cameras else None


def run_setting(setting: Setting, arguments, model_path: Path, work: Path) -> str:
    """Run one setting; the Markdown row."""
    import rclpy
    from ament_index_python.packages import get_package_prefix, get_package_share_directory
    from diagnostic_msgs.msg import DiagnosticArray
    from rclpy.executors import SingleThreadedExecutor

    from svlm_ros.msg import NarratorStatus

    share = Path(get_package_share_directory("svlm_ros"))
    profile = str(share / "config" / "fastdds_large_images.xml")
    base_env = without_profile(os.environ)
    namespace = "/transport_bench"
    narrator_env = dict(base_env, ROS_HOME=str(work / "ros_home"))
    if setting.profile_narrator:
        narrator_env = with_profile(narrator_env, profile)
    narrator = subprocess.Popen(
        [
            str(Path(get_package_prefix("svlm_ros")) / "lib" / "svlm_ros" / "narrator"),
            "--ros-args", "--params-file", str(share / "config" / "narrator.yaml"),
            "-r", f"__ns:={namespace}",
            "-p", f"model_path:={model_path}",
            "-p", f"image_transports:=[{'compressed' if setting.compressed else 'raw'}]",
            "-p", f"qos_reliability:={setting.narrator_qos}",
            "-p", "max_pixels:=100352",
            "-p", "max_new_tokens:=4",
            "-p", "status_period:=0.5",
        ],  # fmt: skip
        env=narrator_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # The measuring node sees only status messages (small): no profile needed here.
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node("transport_bench_reader", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    statuses: list = []
    node.create_subscription(NarratorStatus, f"{namespace}/status", statuses.append, 10)
    # The camera subscription's QoS, each value once, in the order seen.
    qos_seen: list[str] = []

    def on_diagnostics(array) -> None:
        for entry in array.status:
            if entry.name == f"{namespace}/narrator: camera camera":
                qos = next((v.value for v in entry.values if v.key == "qos"), "")
                if qos and (not qos_seen or qos_seen[-1] != qos):
                    qos_seen.append(qos)

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diagnostics, 10)
    try:
        deadline = time.monotonic() + 120.0
        while not (statuses and statuses[-1].state == "active"):
            if time.monotonic() > deadline or narrator.poll() is not None:
                return f"| {setting.name} | narrator did not start | | | | |"
            executor.spin_once(timeout_sec=0.2)
        publisher_env = dict(base_env, ROS_HOME=str(work / "ros_home"))
        if setting.profile_publisher:
            publisher_env = with_profile(publisher_env, profile)
        camera = subprocess.Popen(
            [
                sys.executable, "-m", "svlm_ros.benchmarks.transport_bench", "--publish",
                "--topic", f"{namespace}/camera/image_raw", "--width", str(setting.width),
                "--height", str(setting.height), "--rate", str(arguments.rate),
                "--seconds", str(arguments.seconds),
                *(["--compressed"] if setting.compressed else []),
                *(["--reliable"] if setting.publisher_reliable else []),
            ],  # fmt: skip
            env=publisher_env,
            stdout=subprocess.PIPE,
            text=True,
        )
        before = _latest_camera_status(statuses)
        del qos_seen[:-1]  # what it subscribed with before the camera came
        while camera.poll() is None:
            executor.spin_once(timeout_sec=0.2)
        # While the camera ran (once it is gone, auto goes back to best effort).
        qos_while_camera = list(qos_seen)
        # The newest status after the last frames had time to arrive.
        settle = time.monotonic() + 1.5
        while time.monotonic() < settle:
            executor.spin_once(timeout_sec=0.1)
        after = _latest_camera_status(statuses)
        published = int(camera.stdout.read().split()[-1])
        received = after.frames_received - before.frames_received
        narrated = after.seconds_narrated - before.seconds_narrated
        return (
            f"| {setting.name} | {published} | {received} ({100 * received / published:.0f} %) "
            f"| {after.frames_lost_fraction * 100:.0f} % | {narrated} "
            f"| {' then '.join(qos_while_camera) or 'not seen'} |"
        )
    finally:
        narrator.send_signal(signal.SIGINT)
        try:
            narrator.wait(timeout=10.0)
        except subprocess.TimeoutExpired:
            narrator.kill()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=12.0, help="seconds of camera input")
    parser.add_argument("--rate", type=float, default=30.0, help="camera frames per second")
    parser.add_argument("--only", action="append", default=[],
                        help="run the settings whose name contains this (repeatable: any of them)")
    parser.add_argument("--model-path", default="", help="checkpoint (default: a tiny one)")
    # The camera process (started by this script).
    parser.add_argument("--publish", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--topic", default="", help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, default=640, help=argparse.SUPPRESS)
    parser.add_argument("--height", type=int, default=480, help=argparse.SUPPRESS)
    parser.add_argument("--compressed", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--reliable", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Print the transport table (or, with ``--publish``, be the camera)."""
    arguments = parse_arguments(argv)
    if arguments.publish:
        return publish(arguments)
    work = Path(tempfile.mkdtemp(prefix="transport_bench_"))
    (work / "ros_home").mkdir()
    model_path = arguments.model_path
    if not model_path:
        from svlm_ros.engine.tiny_model import make_tiny_checkpoint

        model_path = make_tiny_checkpoint(work / "tiny")
    load = ", ".join(f"{value:.1f}" for value in os.getloadavg())
    print(f"{arguments.rate:g} Hz for {arguments.seconds:g} s per setting, one host, "
          f"{os.cpu_count()} cores, load average {load} (1, 5, 15 min) at the start")
    print("| setting | published | received by the narrator | narrator's loss estimate "
          "| seconds narrated | narrator's subscription |")
    print("|---|---|---|---|---|---|")
    for setting in SETTINGS:
        if arguments.only and not any(part in setting.name for part in arguments.only):
            continue
        print(run_setting(setting, arguments, Path(model_path), work), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
