"""``qos_reliability: auto`` over real DDS: each camera subscribes with what its publishers offer.

Two levels. The intake alone (``CameraIntake`` on a plain rclpy node, no model; a few seconds):
the QoS it picks per camera at subscribe, that the 2 s re-check really replaces the
subscription (the new reader is what the graph shows, the old one is gone), and that frames
arrive through it. Then the installed narrator (tiny model; marked slow): the same three cases
as a user sees them in ``/diagnostics`` (keys ``qos`` and ``qos_reason`` of each camera).

The three cameras: ``reliable`` publishes with rclpy's default QoS (reliable, volatile, depth
10) from before the narrator subscribes; ``late`` has no publisher at first, then a reliable
one; ``best`` publishes best effort (sensor-data QoS, what camera drivers use).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import numpy as np
import pytest
import rclpy
from narrator_harness import NarratorHarness, raw_image
from rclpy.context import Context
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, qos_profile_sensor_data
from ros_helpers import NodeProcess, installed_executable, installed_share
from sensor_msgs.msg import Image

from svlm_ros.node.camera_intake import QOS_RECHECK_SECONDS, CameraIntake
from svlm_ros.node.parameters import defaults
from svlm_ros.node.steady_executor import SteadyMultiThreadedExecutor
from svlm_ros.node.streams import Streams

CAMERAS = ("reliable", "late", "best")
RCLPY_DEFAULT_QOS = QoSProfile(depth=10)  # what create_publisher(..., 10) gives: reliable
# The re-check period, discovery of the new publisher and of the new reader, with room for a
# loaded 2-core machine.
SWITCH_TIMEOUT = QOS_RECHECK_SECONDS + 8.0
_numbers = itertools.count()


def topic_of(namespace: str, camera: str) -> str:
    return f"{namespace}/{camera}/image_raw"


class Feeds:
    """Camera publishers in their own rclpy context (their own DDS participant), publishing a
    small frame on every publisher at ``rate`` Hz from a thread until ``close``."""

    def __init__(self, rate: float = 20.0) -> None:
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(f"qos_auto_cameras_{next(_numbers)}",
                                      context=self.context)
        self.publishers = {}
        self.lock = threading.Lock()
        self.frame = np.full((48, 64, 3), 120, np.uint8)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(rate,), daemon=True)
        self._thread.start()

    def add(self, topic: str, qos: QoSProfile):
        publisher = self.node.create_publisher(Image, topic, qos)
        with self.lock:
            self.publishers[topic] = publisher
        return publisher

    def _run(self, rate: float) -> None:
        started, count = time.monotonic(), 0
        while not self._stop.is_set():
            with self.lock:
                for publisher in self.publishers.values():
                    publisher.publish(raw_image(self.frame, time.time(), "qos_auto_frame"))
            count += 1
            self._stop.wait(max(0.0, started + count / rate - time.monotonic()))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


def wait_until(condition, timeout: float, what: str):
    """Poll ``condition`` (the ROS graph or counters, nothing to wait on) until truthy."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
    return value


class Intake:
    """A ``CameraIntake`` with ``qos_reliability: auto`` on a plain node of its own context,
    spinning on a multi-threaded executor (as the narrator's), for ``CAMERAS``."""

    def __init__(self, namespace: str, use_sim_time: bool = False) -> None:
        self.values = defaults()
        self.values.update(
            camera_topics=[f"{camera}/image_raw" for camera in CAMERAS],
            qos_reliability="auto",
        )
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(
            f"qos_auto_intake_{next(_numbers)}", namespace=namespace, context=self.context,
            parameter_overrides=[Parameter("use_sim_time", value=use_sim_time)],
        )
        logger = SimpleNamespace(info=print, error=print, warning=print)
        self.streams = Streams(self.values, logger)
        self.intake = CameraIntake(self.node, self.streams, self.values, lambda: None)
        self.executor = SteadyMultiThreadedExecutor(num_threads=4, context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def camera(self, name: str):
        return self.streams.camera(name)

    def received(self, name: str) -> int:
        return self.camera(name).stats.frames_received

    def close(self) -> None:
        self.intake.unsubscribe()
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@pytest.fixture
def feeds() -> Iterator[Feeds]:
    made = Feeds()
    yield made
    made.close()


def subscriptions_of(node, topic: str, node_name: str) -> list[str]:
    """Reliability of every subscription of ``node_name`` to ``topic``, as the graph has it."""
    return [
        info.qos_profile.reliability.name.lower()
        for info in node.get_subscriptions_info_by_topic(topic)
        if info.node_name == node_name
    ]


def test_auto_subscribes_as_the_publishers_offer_and_resubscribes_when_one_appears(feeds):
    namespace = f"/qos_auto_{os.getpid()}_{next(_numbers)}"
    reliable = feeds.add(topic_of(namespace, "reliable"), RCLPY_DEFAULT_QOS)
    best = feeds.add(topic_of(namespace, "best"), qos_profile_sensor_data)
    intake = Intake(namespace)
    try:
        node = intake.node
        # Both publishers discovered (with their QoS) before the intake looks.
        for camera in ("reliable", "best"):
            wait_until(lambda c=camera: node.get_publishers_info_by_topic(topic_of(namespace, c)),
                       10.0, f"the {camera} publisher in the graph")
        intake.intake.subscribe()
        choices = intake.intake.qos_choices
        assert (choices["reliable"].reliability, choices["reliable"].durability) == (
            "reliable", "volatile")
        assert "all 1 publisher(s) reliable" in choices["reliable"].reason
        assert choices["late"].reliability == "best_effort"
        assert "no publisher yet" in choices["late"].reason
        assert choices["best"].reliability == "best_effort"
        assert "1 of 1 publisher(s) best effort" in choices["best"].reason
        for name in CAMERAS:
            assert intake.camera(name).qos_choice is choices[name]  # what status shows

        # Frames arrive through the subscriptions as chosen (reliable matched reliable).
        wait_until(lambda: intake.received("reliable") >= 10 and intake.received("best") >= 10,
                   15.0, "frames from the reliable and the best-effort publisher")
        assert reliable.get_subscription_count() == 1 and best.get_subscription_count() == 1
        node_name = node.get_name()
        assert subscriptions_of(feeds.node, topic_of(namespace, "reliable"), node_name) == [
            "reliable"]
        assert subscriptions_of(feeds.node, topic_of(namespace, "best"), node_name) == [
            "best_effort"]

        # A reliable publisher appears for "late": within one re-check the subscription is
        # replaced by a reliable one (one reader, not two), and frames arrive through it.
        late_topic = topic_of(namespace, "late")
        wait_until(lambda: subscriptions_of(feeds.node, late_topic, node_name) == ["best_effort"],
                   10.0, "the best-effort subscription of late in the graph")
        late = feeds.add(late_topic, RCLPY_DEFAULT_QOS)
        wait_until(lambda: intake.camera("late").qos_choice.reliability == "reliable",
                   SWITCH_TIMEOUT, "late resubscribed reliable")
        assert "all 1 publisher(s) reliable" in intake.camera("late").qos_choice.reason
        switched = intake.received("late")
        wait_until(lambda: subscriptions_of(feeds.node, late_topic, node_name) == ["reliable"],
                   10.0, "only the reliable subscription of late in the graph")
        wait_until(lambda: intake.received("late") >= switched + 10, 15.0,
                   "frames from late after the switch")
        assert late.get_subscription_count() == 1
        # The others were re-checked too, and kept (same QoS: not resubscribed).
        assert choices["reliable"].reliability == "reliable"
        assert choices["best"].reliability == "best_effort"
        assert reliable.get_subscription_count() == 1

        # Unsubscribed (lifecycle cleanup): no reader left, and no QoS shown for any camera.
        intake.intake.unsubscribe()
        assert all(intake.camera(name).qos_choice is None for name in CAMERAS)
        assert not intake.intake.qos_choices
        wait_until(lambda: not any(subscriptions_of(feeds.node, topic_of(namespace, name),
                                                    node_name) for name in CAMERAS),
                   10.0, "no subscription of the intake left in the graph")
    finally:
        intake.close()


def test_the_recheck_runs_on_wall_time_under_sim_time_with_no_clock(feeds):
    # use_sim_time with no /clock yet (a simulator or bag not started): ROS time stands at
    # zero, and a timer on the node's clock would never fire. The publishers come and go in
    # wall time, so the re-check must too.
    namespace = f"/qos_auto_{os.getpid()}_{next(_numbers)}"
    intake = Intake(namespace, use_sim_time=True)
    try:
        assert intake.node.get_clock().now().nanoseconds == 0
        intake.intake.subscribe()
        assert intake.camera("late").qos_choice.reliability == "best_effort"
        feeds.add(topic_of(namespace, "late"), RCLPY_DEFAULT_QOS)
        wait_until(lambda: intake.camera("late").qos_choice.reliability == "reliable",
                   SWITCH_TIMEOUT, "late resubscribed reliable with sim time standing still")
        wait_until(lambda: intake.received("late") >= 10, 15.0, "frames from late")
    finally:
        intake.close()


# ----- the installed narrator -------------------------------------------------------------
NAMESPACE = "/qos_auto_test"
START_TIMEOUT = 90.0  # a loaded 2-core machine: imports, model load and the first rounds


def camera_diagnostic(harness: NarratorHarness, camera: str, since: float = 0.0):
    """The newest ``/diagnostics`` entry of ``camera`` received after ``since`` (wall time), as
    ``(level, message, {key: value})``; None if none yet."""
    with harness.changed:
        for arrived, array in reversed(harness.received.diagnostics):
            if arrived < since:
                break
            for entry in array.status:
                if entry.name == f"{NAMESPACE}/narrator: camera {camera}":
                    return entry.level, entry.message, {v.key: v.value for v in entry.values}
    return None


def diagnostic_value(harness: NarratorHarness, camera: str, key: str, since: float = 0.0):
    found = camera_diagnostic(harness, camera, since)
    return found and found[2].get(key)


@pytest.fixture(scope="module")
def narrated(tiny_model_path, tmp_path_factory):
    """A harness whose ``reliable`` (rclpy default QoS) and ``best`` (best effort) cameras
    publish from before the installed narrator starts; ``late`` has no publisher yet."""
    harness = NarratorHarness(NAMESPACE, node_name="qos_auto_client")
    process = None
    try:
        harness.add_feed("reliable/image_raw", "reliable_frame", width=160, height=120,
                         qos=RCLPY_DEFAULT_QOS)
        harness.add_feed("best/image_raw", "best_frame", width=160, height=120,
                         qos=qos_profile_sensor_data)
        harness.start_feeds(rate=15.0)
        ros_home = tmp_path_factory.mktemp("ros_home_qos_auto")
        process = NodeProcess(
            [
                installed_executable("svlm_ros", "narrator"),
                "--ros-args",
                "--params-file", installed_share("svlm_ros") / "config" / "narrator.yaml",
                "-r", f"__ns:={NAMESPACE}",
                "-p", f"model_path:={tiny_model_path}",
                "-p", "camera_topics:=[reliable/image_raw, late/image_raw, best/image_raw]",
                # qos_reliability left at the shipped default: auto.
                "-p", "torch_threads:=1",
                "-p", "max_pixels:=12544",
                "-p", "min_pixels:=3136",
                "-p", "max_new_tokens:=2",
                "-p", "status_period:=0.25",
            ],  # fmt: skip
            log_path=tmp_path_factory.mktemp("qos_auto_log") / "narrator.log",
            env={**os.environ, "ROS_HOME": str(ros_home), "PYTHONUNBUFFERED": "1"},
        )
        harness.wait_for(lambda: camera_diagnostic(harness, "reliable"), START_TIMEOUT,
                         "a camera diagnostic")
    except BaseException as error:
        harness.close()
        if process is None:
            raise
        try:
            process.stop(timeout=10.0)
        except TimeoutError:
            pass
        raise AssertionError(f"{error}: {process.describe()}") from None
    harness.process = process
    yield harness
    harness.close()
    if process.poll() is None:
        try:
            process.stop(timeout=10.0)
        except TimeoutError:
            pass
    process.close()


def frames_received(harness: NarratorHarness, camera: str) -> int:
    status = harness.camera_status(camera)
    return status.frames_received if status is not None else 0


def describe(harness: NarratorHarness) -> str:
    return "; ".join(f"{c}: {camera_diagnostic(harness, c)}" for c in CAMERAS) + (
        f"; {harness.process.describe()}")


@pytest.mark.slow  # one narrator process for the three tests, about 30 s
def test_narrator_subscribes_reliable_to_an_rclpy_default_publisher(narrated):
    harness = narrated
    try:
        harness.wait_for(lambda: diagnostic_value(harness, "reliable", "qos")
                         == "reliable/volatile", 10.0, "qos reliable/volatile")
        reason = diagnostic_value(harness, "reliable", "qos_reason")
        assert "publisher(s) reliable" in reason
        harness.wait_for(lambda: frames_received(harness, "reliable") >= 15, 30.0,
                         "frames from the reliable camera")
        harness.wait_narrations("reliable", 1, 60.0)
    except AssertionError as error:
        raise AssertionError(f"{error}: {describe(harness)}") from None
    assert "camera reliable: subscribing" in harness.process.output()


@pytest.mark.slow
def test_narrator_subscribes_best_effort_to_a_best_effort_publisher(narrated):
    harness = narrated
    try:
        harness.wait_for(lambda: diagnostic_value(harness, "best", "qos")
                         == "best_effort/volatile", 10.0, "qos best_effort/volatile")
        assert "best effort" in diagnostic_value(harness, "best", "qos_reason")
        harness.wait_for(lambda: frames_received(harness, "best") >= 15, 30.0,
                         "frames from the best-effort camera")
    except AssertionError as error:
        raise AssertionError(f"{error}: {describe(harness)}") from None


@pytest.mark.slow
def test_narrator_resubscribes_reliable_when_a_reliable_publisher_appears(narrated):
    harness = narrated
    try:
        assert diagnostic_value(harness, "late", "qos") == "best_effort/volatile"
        assert "no publisher yet" in diagnostic_value(harness, "late", "qos_reason")
        assert frames_received(harness, "late") == 0
        harness.add_feed("late/image_raw", "late_frame", width=160, height=120,
                         qos=RCLPY_DEFAULT_QOS)  # the running feeder thread picks it up
        appeared = time.time()
        harness.wait_for(lambda: diagnostic_value(harness, "late", "qos", since=appeared)
                         == "reliable/volatile", SWITCH_TIMEOUT, "late resubscribed reliable")
        switched = time.time()
        assert "publisher(s) reliable" in diagnostic_value(harness, "late", "qos_reason")
        before = frames_received(harness, "late")
        harness.wait_for(lambda: frames_received(harness, "late") >= before + 15, 30.0,
                         "frames from late after the switch")
        harness.wait_narrations("late", 1, 60.0, since=switched)
    except AssertionError as error:
        raise AssertionError(f"{error}: {describe(harness)}") from None
    subscribed = [line for line in harness.process.output().splitlines()
                  if "camera late: subscribing" in line]
    assert len(subscribed) == 2, subscribed  # at configure, then once on the re-check
    assert "best_effort/volatile (no publisher yet" in subscribed[0]
    assert "reliable/volatile (all 1 publisher(s) reliable" in subscribed[1]
