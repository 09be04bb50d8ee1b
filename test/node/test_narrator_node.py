"""The installed narrator with a tiny model, over real DDS, driven like a robot would drive it.

One narrator process serves the whole module (starting one costs seconds): three cameras from
the shipped parameter file plus command-line overrides -- ``front`` (raw rgb8 640x480 at
30 Hz), ``rear`` (JPEG 640x480 at 30 Hz, its camera clock 30 s behind wall time) and ``idle``
(nothing published). Tests run in file order; the ones that change the node's state
(parameters, lifecycle, SIGINT) come last. Narration text is random with a tiny model, so no
test looks at its content.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from ament_index_python.packages import get_package_prefix
from lifecycle_msgs.msg import Transition
from narrator_harness import (
    NarratorHarness,
    compressed_image,
    from_stamp,
    raw_image,
)
from rclpy.parameter import Parameter
from ros_helpers import NodeProcess, installed_executable, installed_share

from svlm_ros.srv import Ask

REAR_CLOCK_OFFSET = -30.0
MAX_PENDING_SECONDS = 4
START_TIMEOUT = 90.0  # a loaded 2-core machine: imports, model load and the first rounds


@pytest.fixture(scope="module")
def narrator(tiny_model_path, tmp_path_factory):
    """The running narrator process (module scope)."""
    ros_home = tmp_path_factory.mktemp("ros_home_narrator")
    log_path = tmp_path_factory.mktemp("narrator_log") / "narrator.log"
    params_file = installed_share("svlm_ros") / "config" / "narrator.yaml"
    process = NodeProcess(
        [
            installed_executable("svlm_ros", "narrator"),
            "--ros-args",
            "--params-file", params_file,
            "-p", f"model_path:={tiny_model_path}",
            "-p", "camera_topics:=[front/image_raw, rear/image_raw, idle/image_raw]",
            "-p", "image_transports:=[raw, compressed, raw]",
            "-p", "max_new_tokens:=4",
            "-p", "max_answer_tokens:=8",
            "-p", f"max_pending_seconds:={MAX_PENDING_SECONDS}",
            # 128 vision tokens per round instead of 392: the 640x480 frames are still sent
            # and converted in full, the tiny model just sees them smaller.
            "-p", "max_pixels:=100352",
            # One torch thread: this shared 2-core machine runs other work too, and OpenMP
            # threads waiting on each other make rounds 10x slower there.
            "-p", "torch_threads:=1",
            # Status four times a second: the tests wait on counters in it.
            "-p", "status_period:=0.25",
            # Room for bursts: on this busy 2-core machine the node's Python executor takes
            # frames slower than a burst arrives; with sensor-data depth 5 most of a burst
            # would be overwritten before its callback runs (up to 60 % of a 30 Hz feed here).
            "-p", "qos_depth:=50",
        ],  # fmt: skip
        log_path=log_path,
        env={**os.environ, "ROS_HOME": str(ros_home), "PYTHONUNBUFFERED": "1"},
    )
    yield process
    if process.poll() is None:
        try:
            process.stop(timeout=10.0)
        except TimeoutError:
            pass
    process.close()


@pytest.fixture(scope="module")
def harness(narrator):
    """Test-side node: camera feeds running, everything the narrator publishes collected."""
    harness = NarratorHarness("/svlm")
    harness.front = harness.add_feed("front/image_raw", "front_optical_frame")
    harness.rear = harness.add_feed(
        "rear/image_raw/compressed", "rear_optical_frame", compressed=True,
        clock_offset=REAR_CLOCK_OFFSET, seed=1,
    )  # fmt: skip
    harness.start_feeds(rate=30.0)
    try:
        # Past the first, slow rounds (lazy initialisation in torch and transformers).
        harness.wait_narrations("front", 3, START_TIMEOUT)
        harness.wait_narrations("rear", 3, START_TIMEOUT)
    except AssertionError as error:
        harness.close()
        raise AssertionError(f"{error}: {narrator.describe()}") from None
    yield harness
    harness.close()


def assert_alive(narrator: NodeProcess) -> None:
    assert narrator.poll() is None, narrator.describe()


def status_after(harness: NarratorHarness, since: float, timeout: float = 10.0):
    """The first status published after ``since`` (wall time)."""
    return harness.wait_for(lambda: harness.latest_status(since), timeout, "a status message")


def test_names_under_the_default_namespace(harness, narrator):
    node = harness.node
    harness.wait_for(
        lambda: ("narrator", "/svlm") in node.get_node_names_and_namespaces(), 10.0, "the node"
    )
    topics = dict(node.get_topic_names_and_types())
    assert topics.get("/svlm/narration") == ["svlm_ros/msg/Narration"]
    assert topics.get("/svlm/narration_text") == ["std_msgs/msg/String"]
    assert topics.get("/svlm/answer") == ["svlm_ros/msg/Answer"]
    assert topics.get("/svlm/status") == ["svlm_ros/msg/NarratorStatus"]
    assert topics.get("/diagnostics") == ["diagnostic_msgs/msg/DiagnosticArray"]
    services = dict(node.get_service_names_and_types())
    assert services.get("/svlm/ask") == ["svlm_ros/srv/Ask"]
    assert "/svlm/narrator/change_state" in services
    assert harness.lifecycle_state() == "active"
    assert_alive(narrator)


def test_narrates_once_per_second_stamped_with_the_camera_clock(harness, narrator):
    started = time.time()
    found = harness.wait_narrations("front", 6, 30.0, since=started)
    origins = set()
    times = []
    for message in found:
        assert message.camera == "front"
        assert message.header.frame_id == "front_optical_frame"
        assert message.stream_time == pytest.approx(round(message.stream_time), abs=1e-6)
        # stamp = end of the narrated second on the camera clock = first frame + stream_time.
        origins.add(round(from_stamp(message.header.stamp) - message.stream_time, 3))
        times.append(message.stream_time)
        assert message.silent == (message.text == "")
        assert message.cache_tokens > 0
        assert math.isfinite(message.latency) and -0.05 < message.latency < 10.0
        assert from_stamp(message.header.stamp) <= harness.front.last_stamp
    assert len(origins) == 1, f"stamps are not stream origin + stream_time: {origins}"
    # At most one narration per second of stream, and they follow the camera in real time:
    # the stream time they cover grows like the wall clock (seconds are skipped only when
    # the machine is too slow, and then stream time still keeps pace).
    assert times == sorted(set(times)), f"stream times not increasing: {times}"
    arrivals = [a for a, m in harness.received.narrations if m in found]
    assert times[-1] - times[0] == pytest.approx(arrivals[-1] - arrivals[0], abs=3.0), times
    assert len(found) >= (times[-1] - times[0]) / 2, f"most seconds skipped: {times}"
    # A second is narrated soon after it ends.
    assert harness.front.now() - from_stamp(found[-1].header.stamp) < 10.0


def test_narration_text_is_the_text_of_non_silent_narrations(harness):
    started = time.time()
    harness.wait_for(
        lambda: len([t for a, t in harness.received.texts if a >= started]) >= 3, 30.0, "texts"
    )
    spoken = {message.text for message in harness.narrations() if not message.silent}
    texts = [text for _, text in harness.received.texts]
    assert texts and all(text in spoken for text in texts)
    assert "" not in texts


def test_second_camera_compressed_with_its_own_clock(harness):
    found = harness.wait_narrations("rear", 3, 30.0, since=time.time())
    for message in found:
        assert message.header.frame_id == "rear_optical_frame"
        # Stamps are on the rear camera's clock (30 s behind), not the node's.
        offset = from_stamp(message.header.stamp) - time.time()
        assert REAR_CLOCK_OFFSET - 10.0 < offset < REAR_CLOCK_OFFSET + 1.0
        assert message.latency > -REAR_CLOCK_OFFSET - 1.0  # measured on the node clock
    front_times = [m.stream_time for m in harness.narrations("front")]
    assert front_times, "both cameras narrate at the same time"


def test_status_reports_every_camera(harness):
    status = status_after(harness, time.time())
    assert status.state == "active" and status.error == ""
    assert status.model and status.device == "cpu" and status.dtype == "float32"
    assert (status.decode_path, status.prefill_path) == ("eager", "eager")  # CPU defaults
    assert status.process_memory > 0
    cameras = {camera.name: camera for camera in status.cameras}
    assert list(cameras) == ["front", "rear", "idle"]
    assert cameras["front"].topic == "/svlm/front/image_raw"
    assert cameras["rear"].topic == "/svlm/rear/image_raw/compressed"
    assert cameras["rear"].transport == "compressed"
    for name in ("front", "rear"):
        camera = cameras[name]
        assert camera.frames_received > 30
        assert 0 < camera.frames_sampled < camera.frames_received
        assert camera.frames_dropped == (
            camera.frames_received - camera.frames_sampled - camera.frames_rejected
        )
        assert camera.seconds_narrated >= 2
        assert camera.seconds_pending <= MAX_PENDING_SECONDS
        assert 0 < camera.cache_tokens <= camera.cache_bound
        assert 0 < camera.step_latency_median <= camera.step_latency_p99
        assert camera.publish_latency_median <= camera.publish_latency_p99
        assert math.isfinite(camera.real_time_factor) and camera.real_time_factor > 0
        assert camera.frame_id.endswith("_optical_frame")
    idle = cameras["idle"]
    assert idle.frames_received == 0 and idle.seconds_narrated == 0
    assert math.isnan(idle.step_latency_median)


def test_diagnostics_name_the_node_and_each_camera(harness):
    started = time.time()
    array = harness.wait_for(
        lambda: next((m for a, m in reversed(harness.received.diagnostics) if a >= started), None),
        10.0,
        "/diagnostics",
    )
    names = [status.name for status in array.status]
    assert names == [
        "/svlm/narrator: node",
        "/svlm/narrator: camera front",
        "/svlm/narrator: camera rear",
        "/svlm/narrator: camera idle",
    ]
    assert array.status[0].message == "narrating"
    keys = {value.key for value in array.status[1].values}
    assert {"frames_received", "seconds_skipped", "step_latency_p99"} <= keys


def test_ask_answers_and_publishes_the_answer(harness):
    started = time.time()
    question = "What is on the table?"
    response = harness.ask(question, camera="front")
    assert response.success, response.message
    assert response.message == "" and 0.0 < response.latency < 30.0
    published = harness.wait_for(
        lambda: next(
            (m for a, m in harness.received.answers if a >= started and m.question == question),
            None,
        ),
        10.0,
        "the answer on /svlm/answer",
    )
    assert published.answer == response.answer
    assert published.camera == "front" and published.header.frame_id == "front_optical_frame"
    assert published.stream_time > 0

    # No camera named: the default camera (the first one).
    response = harness.ask("And now?")
    assert response.success, response.message
    default = harness.wait_for(
        lambda: next((m for a, m in harness.received.answers if m.question == "And now?"), None),
        10.0,
        "the second answer",
    )
    assert default.camera == "front"
    response = harness.ask("What is behind?", camera="rear")
    assert response.success, response.message


@pytest.mark.parametrize(
    ("question", "camera", "reason"),
    [
        ("", "front", "question is empty"),
        ("   \n", "front", "question is empty"),
        ("x" * 100_000, "front", "max_question_tokens"),
        ("what? " * 400, "front", "max_question_tokens"),  # short enough to be tokenized
        ("What is there?", "nope", "unknown camera 'nope'"),
        ("What is there?", "idle", "no frames have been narrated yet"),
    ],
    ids=["empty", "blank", "100kB", "over-token-budget", "unknown-camera", "no-frames-yet"],
)
def test_ask_refusals_come_back_with_a_reason(harness, narrator, question, camera, reason):
    before = status_after(harness, time.time())
    response = harness.ask(question, camera=camera)
    assert not response.success
    assert reason in response.message
    assert response.answer == ""
    status = harness.wait_for(
        lambda: (s := harness.latest_status()) and s.asks_failed > before.asks_failed and s,
        10.0,
        "asks_failed to count the refusal",
    )
    assert reason in status.last_ask_error
    assert_alive(narrator)


def test_twenty_concurrent_asks_all_answered_while_narrating(harness, narrator):
    before = status_after(harness, time.time())
    started = time.time()
    client = harness.client(Ask, "ask")
    assert client.wait_for_service(timeout_sec=10.0)
    futures = [
        client.call_async(Ask.Request(question=f"Question {index}: what moved?", camera="front"))
        for index in range(20)
    ]
    done = threading.Event()
    remaining = [len(futures)]
    lock = threading.Lock()

    def finished(_future) -> None:
        with lock:
            remaining[0] -= 1
            if remaining[0] == 0:
                done.set()

    for future in futures:
        future.add_done_callback(finished)
    # Other services are not held up by queued asks.
    asked = time.monotonic()
    assert harness.get_parameters(["fps"])[0].value == 2.0
    assert time.monotonic() - asked < 5.0
    assert done.wait(120.0), f"{remaining[0]} of 20 asks unanswered: {narrator.describe()}"
    responses = [future.result() for future in futures]
    assert all(response.success for response in responses), [r.message for r in responses]
    # Narration went on while the asks were served (they interleave with rounds).
    harness.wait_narrations("front", 2, 30.0, since=started)
    harness.wait_narrations("rear", 2, 30.0, since=started)
    status = harness.wait_for(
        lambda: (s := harness.latest_status()) and s.asks_answered >= before.asks_answered + 20
        and s,
        10.0,
        "asks_answered to count 20 answers",
    )
    assert status.asks_failed == before.asks_failed
    assert_alive(narrator)


# Frames the sampler does not need are dropped without being decoded, so a bad message is
# only looked at (and rejected) when it would be kept: stamp it in a slot the camera has not
# filled yet, one sampling interval (fps 2) ahead of the camera clock.
AHEAD = 0.6


def _bad_raw(harness, **fields):
    """A front-camera rgb8 Image stamped ahead, with ``fields`` overriding its fields."""
    message = raw_image(harness.front.frame, harness.front.now() + AHEAD, "front_optical_frame")
    for name, value in fields.items():
        setattr(message, name, value)
    return message


BAD_FRONT = {
    "wrong-encoding": (lambda h: _bad_raw(h, encoding="rgb9"), "unsupported encoding 'rgb9'"),
    "data-short": (lambda h: _bad_raw(h, data=bytes(640 * 480 * 3 - 1)), "expected height*step"),
    "data-long": (lambda h: _bad_raw(h, data=bytes(640 * 480 * 3 + 7)), "expected height*step"),
    "width-0": (lambda h: _bad_raw(h, width=0, step=0, data=b""), "is empty"),
    "height-0": (lambda h: _bad_raw(h, height=0, data=b""), "is empty"),
    # The header claims 8000x8000: refused from the header, before the 192 MB are looked at.
    "8000x8000": (
        lambda h: _bad_raw(h, width=8000, height=8000, step=24000),
        "exceeds max_pixels",
    ),
    "stamp-backwards": (
        lambda h: raw_image(h.front.frame, h.front.now() - 5.0, "front_optical_frame"),
        "stamp went backwards",
    ),
    # Accepted by the converter but impossible for the vision encoder (aspect ratio 640:1).
    "640x1": (
        lambda h: raw_image(
            np.zeros((1, 640, 3), np.uint8), h.front.now() + AHEAD, "front_optical_frame"
        ),
        "aspect ratio",
    ),
}


def _png_8000x8000() -> bytes:
    # A real 8000x8000 PNG (all black compresses to a few hundred kB).
    return cv2.imencode(".png", np.zeros((8000, 8000), np.uint8))[1].tobytes()


BAD_REAR = {
    "corrupt-jpeg": (
        lambda h: compressed_image(
            h.rear.jpeg[:200] + bytes(5000), h.rear.now() + AHEAD, "rear_frame"
        ),
        "could not decode",
    ),
    "random-bytes": (
        lambda h: compressed_image(os.urandom(3000), h.rear.now() + AHEAD, "rear_optical_frame"),
        "format says jpeg but the message holds data starting",
    ),
    # A valid PNG labelled jpeg: a decoder would take it; the declared format is checked.
    "png-labelled-jpeg": (
        lambda h: compressed_image(
            cv2.imencode(".png", h.front.frame)[1].tobytes(), h.rear.now() + AHEAD,
            "rear_optical_frame", "jpeg",
        ),
        "format says jpeg but the message holds png data",
    ),
    "unknown-format": (
        lambda h: compressed_image(h.rear.jpeg, h.rear.now() + AHEAD, "rear_optical_frame", "tiff"),
        "unknown compressed format",
    ),
    "8000x8000-png": (
        lambda h: compressed_image(
            _png_8000x8000(), h.rear.now() + AHEAD, "rear_optical_frame", "png"
        ),
        "exceeds max_pixels",
    ),
}


def _inject(harness, feed, camera: str, make, reason: str, timeout: float = 15.0):
    """Publish a bad message (again every 0.5 s, in case best effort lost it) until the
    status counts its rejection with ``reason``."""
    status_after(harness, time.time())
    before = harness.camera_status(camera)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        feed.publish(make(harness))
        try:
            return harness.wait_for(
                lambda: (c := harness.camera_status(camera))
                and c.frames_rejected > before.frames_rejected
                and reason in c.last_rejection
                and c,
                0.5,
                f"{camera} to reject ({reason})",
            )
        except AssertionError:
            continue
    last = harness.camera_status(camera)
    raise AssertionError(
        f"{camera}: rejection '{reason}' not counted; last_rejection={last.last_rejection!r}"
    )


@pytest.mark.parametrize("case", list(BAD_FRONT))
def test_bad_raw_frames_are_rejected_counted_and_survived(harness, narrator, case):
    make, reason = BAD_FRONT[case]
    _inject(harness, harness.front, "front", make, reason)
    harness.wait_narrations("front", 1, 30.0, since=time.time())
    assert_alive(narrator)


@pytest.mark.parametrize("case", list(BAD_REAR))
def test_bad_compressed_frames_are_rejected_counted_and_survived(harness, narrator, case):
    make, reason = BAD_REAR[case]
    _inject(harness, harness.rear, "rear", make, reason)
    harness.wait_narrations("rear", 1, 30.0, since=time.time())
    assert_alive(narrator)


def test_camera_stall_of_ten_seconds_then_resume(harness, narrator):
    before = harness.camera_status("rear")
    last_time = harness.narrations("rear")[-1].stream_time
    harness.rear.jump(10.0)  # no frames for 10 s of camera time, then frames again
    started = time.time()
    found = harness.wait_for(
        lambda: [m for m in harness.narrations("rear", started) if m.stream_time > last_time + 10],
        30.0,
        "narration after the stall",
    )
    assert found[0].stream_time - last_time >= 10.0
    status = harness.wait_for(
        lambda: (c := harness.camera_status("rear")) and c.seconds_gap >= before.seconds_gap + 9
        and c,
        10.0,
        "the stall in seconds_gap",
    )
    assert status.seconds_gap - before.seconds_gap <= 11
    harness.wait_narrations("rear", 2, 30.0, since=time.time())
    assert_alive(narrator)


def test_skips_seconds_to_stay_current_when_behind(harness, narrator):
    # 30 seconds of front camera time arrive within 0.15 s (a replay 200x faster than real
    # time; slow enough for the image callback, far too fast for the model): the worker
    # narrates the newest completed second each time and counts the ones it passed over.
    before = harness.camera_status("front")
    last_narrated = harness.narrations("front")[-1].stream_time
    started = time.time()
    harness.front.burst(30, spacing=1.0, interval=0.005)
    status = harness.wait_for(
        lambda: (c := harness.camera_status("front", started))
        and c.seconds_skipped + c.seconds_overflowed
        >= before.seconds_skipped + before.seconds_overflowed + 10
        and c,
        20.0,
        "skipped seconds to be counted",
    )
    assert status.seconds_pending <= MAX_PENDING_SECONDS
    narrated = status.seconds_narrated - before.seconds_narrated
    assert narrated < 20, "it narrated most of a burst it cannot keep up with"
    # It is current again: narrations continue on the live camera, after the burst.
    found = harness.wait_narrations("front", 2, 30.0, since=time.time())
    assert found[-1].stream_time >= last_narrated + 28  # the 30 s burst, give or take ends
    assert_alive(narrator)


def test_svlm_ask_command(harness, narrator):
    command = Path(get_package_prefix("svlm_ros")) / "bin" / "svlm-ask"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    answered = subprocess.run(
        [command, "--camera", "front", "--timeout", "30", "What is in view?"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert answered.returncode == 0, answered.stderr
    refused = subprocess.run(
        [command, "--camera", "nope", "What is in view?"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert refused.returncode == 1
    assert "unknown camera 'nope'" in refused.stderr
    missing = subprocess.run(
        [command, "--service", "/nobody/ask", "--timeout", "1", "Hello?"],
        capture_output=True, text=True, timeout=60, env=env,
    )  # fmt: skip
    assert missing.returncode == 1
    assert "not available" in missing.stderr
    assert_alive(narrator)


@pytest.mark.parametrize(
    ("parameters", "reason"),
    [
        ([Parameter("fps", Parameter.Type.DOUBLE, 3.0)], "multiple of the model's temporal patch"),
        ([Parameter("fps", Parameter.Type.DOUBLE, 2.5)], "whole number"),
        ([Parameter("min_pixels", Parameter.Type.INTEGER, 700_000)], "min_pixels"),
        ([Parameter("temperature", Parameter.Type.DOUBLE, -1.0)], "temperature"),
        ([Parameter("top_p", Parameter.Type.DOUBLE, 0.0)], "top_p"),
        ([Parameter("max_new_tokens", Parameter.Type.INTEGER, 0)], "max_new_tokens"),
        ([Parameter("fps", Parameter.Type.STRING, "fast")], "wrong parameter type"),
        ([Parameter("default_camera", Parameter.Type.STRING, "nope")], "not a camera"),
        ([Parameter("model_path", Parameter.Type.STRING, "/elsewhere")], "read-only"),
        ([Parameter("camera_topics", Parameter.Type.STRING_ARRAY, ["a"])], "read-only"),
        ([Parameter("camera_names", Parameter.Type.STRING_ARRAY, ["a", "b", "c"])], "read-only"),
        ([Parameter("device", Parameter.Type.STRING, "cuda")], "read-only"),
    ],
    ids=[
        "fps-3", "fps-2.5", "min-over-max-pixels", "negative-temperature", "top_p-0",
        "max_new_tokens-0", "fps-string", "unknown-default-camera", "model_path",
        "camera_topics", "camera_names", "device",
    ],
)  # fmt: skip
def test_bad_parameters_are_refused_with_a_reason(harness, narrator, parameters, reason):
    results = harness.set_parameters(parameters)
    assert len(results) == 1 and not results[0].successful
    assert reason.lower() in results[0].reason.lower(), results[0].reason
    current = harness.get_parameters([parameters[0].name])[0]
    assert current.value != parameters[0].value
    assert_alive(narrator)


def test_good_parameter_change_restarts_the_streams(harness, narrator):
    before = harness.camera_status("front")
    # fps 1 with period 2 s: two frames per narration. One at a time each would be refused
    # (fps 1 * period 1 = 1 frame), so set both atomically.
    results = harness.set_parameters(
        [Parameter("fps", Parameter.Type.DOUBLE, 1.0), Parameter("period", Parameter.Type.DOUBLE,
                                                                 2.0)],
        atomically=True,
    )
    assert all(result.successful for result in results), results
    started = time.time()
    status = harness.wait_for(
        lambda: (c := harness.camera_status("front", started))
        and c.stream_restarts == before.stream_restarts + 1
        and c,
        10.0,
        "the stream restart in the status",
    )
    assert status.stream_restarts == before.stream_restarts + 1
    found = harness.wait_narrations("front", 2, 40.0, since=time.time())
    # A new stream: stream time starts over, in 2-second periods.
    assert all(message.stream_time % 2.0 == pytest.approx(0.0) for message in found)
    assert found[0].stream_time < before.stream_time
    values = [p.value for p in harness.get_parameters(["fps", "period"])]
    assert values == [1.0, 2.0]
    assert_alive(narrator)


def test_lifecycle_deactivate_activate_cleanup_configure(harness, narrator):
    assert harness.lifecycle(Transition.TRANSITION_DEACTIVATE)
    assert harness.lifecycle_state() == "inactive"
    refused = harness.ask("Still there?")
    assert not refused.success and "not active" in refused.message
    paused = time.time() + 0.5  # a round already running may still publish
    with pytest.raises(AssertionError):
        harness.wait_narrations("front", 1, 3.0, since=paused)
    assert status_after(harness, time.time()).state == "inactive"

    assert harness.lifecycle(Transition.TRANSITION_ACTIVATE)
    harness.wait_narrations("front", 1, 30.0, since=time.time())

    assert harness.lifecycle(Transition.TRANSITION_DEACTIVATE)
    assert harness.lifecycle(Transition.TRANSITION_CLEANUP)
    assert harness.lifecycle_state() == "unconfigured"
    refused = harness.ask("Anyone?")
    assert not refused.success and "model not loaded" in refused.message
    status = status_after(harness, time.time())
    assert status.state == "unconfigured" and status.model == ""

    assert harness.lifecycle(Transition.TRANSITION_CONFIGURE)
    assert harness.lifecycle(Transition.TRANSITION_ACTIVATE)
    harness.wait_narrations("front", 1, 60.0, since=time.time())
    assert harness.ask("Back?").success
    assert_alive(narrator)


def test_sigint_ends_it_with_exit_0_within_5_s(harness, narrator):
    harness.wait_narrations("front", 1, 30.0, since=time.time())  # busy: frames and rounds
    assert narrator.stop(timeout=5.0, sig=signal.SIGINT) == 0, narrator.describe()
    assert "Traceback" not in narrator.output(), narrator.output()
