"""Frames lost between camera and narrator: the estimate from stamps, and the installed
narrator's warning when a camera publishes large raw images with default middleware settings.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticStatus
from narrator_harness import NarratorHarness
from ros_helpers import installed_share

from svlm_ros.node.transport_monitor import (
    MIN_SAMPLES,
    STARVED_SECONDS,
    ArrivalMonitor,
    StarvationWatch,
    explain,
    without_profile,
)

RATE = 30.0


def monitor_of(stamps, message_bytes: int = 921_600) -> ArrivalMonitor:
    monitor = ArrivalMonitor()
    for stamp in stamps:
        monitor.record(float(stamp), message_bytes)
    return monitor


def test_every_frame_arriving_is_no_loss():
    figures = monitor_of(100.0 + np.arange(200) / RATE).figures()
    assert figures.stamp_rate == pytest.approx(RATE, rel=1e-6)
    assert figures.lost_fraction == pytest.approx(0.0, abs=1e-9)
    assert figures.received_rate == pytest.approx(RATE, rel=1e-6)
    assert explain(figures, transport="raw", reliability="best_effort") == ""


def test_half_the_frames_lost_at_random_is_measured_and_explained():
    rng = np.random.default_rng(3)
    stamps = [100.0 + index / RATE for index in range(600) if rng.random() < 0.5]
    figures = monitor_of(stamps).figures()
    assert figures.stamp_rate == pytest.approx(RATE, rel=0.01)
    assert 0.4 < figures.lost_fraction < 0.6
    warning = explain(figures, transport="raw", reliability="best_effort")
    assert "lost" in warning and "512 KB shared-memory segment" in warning
    assert "fastdds_large_images.xml" in warning and "compressed" in warning
    compressed = explain(
        monitor_of(stamps, message_bytes=40_000).figures(),
        transport="compressed", reliability="best_effort",
    )  # fmt: skip
    assert "lost" in compressed and "512 KB" not in compressed
    # Forced best effort gets the hint to subscribe reliable; auto already does that itself.
    assert "qos_reliability: reliable" in warning
    assert "qos_reliability: reliable" not in explain(figures, transport="raw", reliability="auto")


def test_stalls_clock_restarts_and_jitter_are_not_loss():
    rng = np.random.default_rng(4)
    first = 100.0 + np.arange(100) / RATE
    stalled = first[-1] + 10.0 + np.arange(100) / RATE  # the camera stopped for 10 s
    restarted = 5.0 + np.arange(100) / RATE  # its clock went back
    stamps = np.concatenate([first, stalled, restarted]) + rng.normal(0, 0.002, 300)
    figures = monitor_of(stamps).figures()
    assert figures.lost_fraction < 0.05
    assert figures.stamp_rate == pytest.approx(RATE, rel=0.1)


def test_stalls_inside_the_window_are_not_loss():
    # Two 10 s stops among 118 spacings: rare long gaps are the camera pausing.
    stamps = np.concatenate(
        [100.0 + np.arange(40) / RATE, 150.0 + np.arange(40) / RATE, 200.0 + np.arange(40) / RATE]
    )
    figures = monitor_of(stamps).figures()
    assert figures.lost_fraction == pytest.approx(0.0, abs=1e-9)
    assert figures.stamp_rate == pytest.approx(RATE, rel=1e-6)


def test_frames_arriving_seconds_apart_are_loss_not_stalls():
    # What a 900 KB raw camera through Fast DDS's default segment can look like on a loaded
    # host (seen in CI): pairs of consecutive frames, 3 to 8 s apart. Were those gaps stalls,
    # the pairs alone would read as no loss at all, and the worst case would not be reported.
    rng = np.random.default_rng(5)
    stamps, stamp = [], 100.0
    for _ in range(40):
        stamps += [stamp, stamp + 1 / RATE]
        stamp += round(rng.uniform(3.0, 8.0) * RATE) / RATE
    figures = monitor_of(stamps).figures()
    assert figures.stamp_rate == pytest.approx(RATE, rel=1e-6)
    assert figures.lost_fraction > 0.95
    assert "512 KB shared-memory segment" in explain(
        figures, transport="raw", reliability="best_effort"
    )


def test_a_publisher_whose_frames_never_arrive_is_reported_after_a_while():
    watch = StarvationWatch()
    assert watch.check(0, 0, 0.0, transport="raw") == ""  # no publisher: nothing to expect
    assert watch.check(1, 0, 1.0, transport="raw") == ""  # a publisher appears
    assert watch.check(1, 1, 1.0 + STARVED_SECONDS - 0.1, transport="raw") == ""
    warning = watch.check(1, 1, 1.0 + STARVED_SECONDS, transport="raw")
    assert "1 publisher(s) matched for 10 s but 1 frame(s) arrived" in warning
    assert "512 KB shared-memory segment" in warning and "compressed" in warning
    assert "ros2 topic info -v" in watch.check(1, 1, 20.0, transport="compressed")
    # Frames flowing: no warning, and the watch starts over from there.
    assert watch.check(1, 1 + MIN_SAMPLES + 1, 21.0, transport="raw") == ""
    assert watch.check(1, 1 + MIN_SAMPLES + 1, 21.0 + STARVED_SECONDS - 1, transport="raw") == ""
    # The publisher goes: nothing is expected any more.
    assert watch.check(0, 7, 40.0, transport="raw") == ""
    assert watch.check(1, 7, 41.0, transport="raw") == ""


def test_a_slow_camera_is_not_loss():
    # One frame every 5 s: every gap is long, and every frame arrives.
    figures = monitor_of(100.0 + 5.0 * np.arange(30)).figures()
    assert figures.stamp_rate == pytest.approx(0.2, rel=1e-6)
    assert figures.lost_fraction == pytest.approx(0.0, abs=1e-9)
    assert explain(figures, transport="raw", reliability="best_effort") == ""


def test_too_few_frames_give_no_estimate():
    figures = monitor_of([1.0, 1.1, 1.2]).figures()
    assert math.isnan(figures.lost_fraction) and math.isnan(figures.stamp_rate)
    assert explain(figures, transport="raw", reliability="best_effort") == ""


@pytest.mark.slow  # a narrator and a camera process, about 15 s
def test_a_default_camera_losing_raw_frames_gets_a_warning_naming_cause_and_fix(
    spawn_node, tiny_model_path, tmp_path
):
    # The new user: a 640x480 rgb8 camera at 30 Hz, best effort, no middleware
    # profile in its process. Fast DDS's default 512 KB shared-memory segment loses most of
    # those 900 KB frames; the narrator must say so, and what to do.
    namespace = "/transport_test"
    narrator = spawn_node(
        "svlm_ros",
        "narrator",
        [
            "--ros-args",
            "--params-file", str(installed_share("svlm_ros") / "config" / "narrator.yaml"),
            "-r", f"__ns:={namespace}",
            "-p", f"model_path:={tiny_model_path}",
            "-p", "torch_threads:=1",
            "-p", "max_pixels:=100352",
            "-p", "max_new_tokens:=2",
            "-p", "status_period:=0.25",
        ],  # fmt: skip
    )
    harness = NarratorHarness(namespace, node_name="transport_test_client")
    camera = None
    try:
        harness.wait_for(
            lambda: (s := harness.latest_status()) and s.state == "active", 90.0, "active"
        )
        camera_env = without_profile(os.environ)
        camera_env["ROS_HOME"] = str(tmp_path)
        camera_log_path = tmp_path / "camera.log"
        with camera_log_path.open("w") as camera_log:  # the child keeps its own copy
            camera = subprocess.Popen(
                [
                    sys.executable, "-m", "svlm_ros.benchmarks.transport_bench", "--publish",
                    "--topic", f"{namespace}/camera/image_raw", "--rate", str(RATE),
                    "--seconds", "40",
                ],  # fmt: skip
                env=camera_env,
                stdout=camera_log,
                stderr=subprocess.STDOUT,
            )
        try:
            status = harness.wait_for(
                lambda: (c := harness.camera_status("camera")) and c.transport_warning and c,
                40.0,
                "a transport warning",
            )
        except AssertionError as error:
            last = harness.camera_status("camera")
            seen = last and (
                f"{last.frames_received} frames received, stamps {last.frame_rate_stamps:.1f}/s,"
                f" received {last.frame_rate_received:.1f}/s, lost {last.frames_lost_fraction}"
            )  # fmt: skip
            raise AssertionError(
                f"{error}; last camera status: {seen}; camera process (exit {camera.poll()}): "
                f"{camera_log_path.read_text()[-500:]!r}; {narrator.describe()}"
            ) from None
        assert "512 KB shared-memory segment" in status.transport_warning
        assert "fastdds_large_images.xml" in status.transport_warning
        if "publisher(s) matched" in status.transport_warning:
            # Nearly every frame lost (0 or 1 of 1,200 seen here): too few for an estimate,
            # reported from the publisher count.
            assert status.frames_received <= MIN_SAMPLES
        else:
            assert status.frames_lost_fraction > 0.2
            assert status.frame_rate_received < status.frame_rate_stamps
        diagnostic = harness.wait_for(
            lambda: next(
                (
                    entry
                    for _, array in reversed(harness.received.diagnostics)
                    for entry in array.status
                    if entry.name.endswith("camera camera") and "lost" in entry.message
                ),
                None,
            ),
            10.0,
            "the warning on /diagnostics",
        )
        assert diagnostic.level == DiagnosticStatus.WARN
        assert narrator.poll() is None, narrator.describe()
    finally:
        if camera is not None:
            camera.terminate()
            camera.wait(timeout=10.0)
        harness.close()
