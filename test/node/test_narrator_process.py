"""The installed narrator executable: names, start-up checks, lifecycle by hand, signals.

test_narrator_node.py drives one long-running narrator; these tests each start their own,
short-lived one to check what happens at start-up and at the end.
"""

import os
import signal
import time
from pathlib import Path

import pytest
import yaml
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import GetState
from narrator_harness import NarratorHarness, from_stamp
from rcl_interfaces.srv import GetParameters
from ros_helpers import call_service, installed_share, spin_until, wait_for_service

from svlm_ros.msg import NarratorStatus
from svlm_ros.srv import Ask


def installed_params_file() -> Path:
    return installed_share("svlm_ros") / "config" / "narrator.yaml"


def narrator_args(params_file: Path, *extra: str) -> list[str]:
    return ["--ros-args", "--params-file", str(params_file), *extra]


def test_default_namespace_serves_ask_and_reports_why_it_has_no_model(
    spawn_node, ros_node, executor
):
    # The shipped file has no model_path: the node comes up, refuses to configure, says why.
    narrator = spawn_node("svlm_ros", "narrator", narrator_args(installed_params_file()))
    client = ros_node.create_client(Ask, "/svlm/ask")
    wait_for_service(client, timeout=30.0, process=narrator)
    assert spin_until(
        executor,
        lambda: ("narrator", "/svlm") in ros_node.get_node_names_and_namespaces(),
        timeout=10.0,
    ), f"/svlm/narrator not in the graph: {ros_node.get_node_names_and_namespaces()}"

    response = call_service(
        executor, client, Ask.Request(question="What is in view?"), timeout=10.0,
        resend_after=2.0,  # refused without a model: safe to ask again
    )
    assert not response.success
    assert "model not loaded" in response.message and "model_path is empty" in response.message
    assert response.latency >= 0.0

    statuses = []
    ros_node.create_subscription(NarratorStatus, "/svlm/status", statuses.append, 10)
    assert spin_until(executor, lambda: statuses, timeout=10.0), narrator.describe()
    assert statuses[-1].state == "unconfigured"
    assert "model_path is empty" in statuses[-1].error
    assert [camera.name for camera in statuses[-1].cameras] == ["camera"]

    assert narrator.stop(timeout=5.0) == 0, narrator.describe()


def test_parameters_file_applies_under_a_remapped_namespace(
    spawn_node, ros_node, executor, tmp_path
):
    # The installed file with one value changed: proves that its `/**` section reaches the
    # node under any namespace (the installed values equal the declared defaults).
    params = yaml.safe_load(installed_params_file().read_text())
    params["/**"]["ros__parameters"]["default_camera"] = "front"
    params["/**"]["ros__parameters"]["camera_topics"] = ["/front/image_raw"]
    params_file = tmp_path / "narrator.yaml"
    params_file.write_text(yaml.safe_dump(params))
    narrator = spawn_node(
        "svlm_ros", "narrator", narrator_args(params_file, "-r", "__ns:=/robot2/svlm")
    )

    client = ros_node.create_client(GetParameters, "/robot2/svlm/narrator/get_parameters")
    wait_for_service(client, timeout=30.0, process=narrator)
    response = call_service(
        executor,
        client,
        GetParameters.Request(names=["default_camera", "camera_names", "fps"]),
        timeout=10.0,
        resend_after=2.0,
    )
    assert response.values[0].string_value == "front"
    assert list(response.values[1].string_array_value) == []  # YAML [] is an empty list
    assert response.values[2].double_value == 2.0
    assert narrator.stop(timeout=5.0) == 0, narrator.describe()


def test_invalid_start_up_parameters_exit_with_every_reason(spawn_node):
    narrator = spawn_node(
        "svlm_ros",
        "narrator",
        narrator_args(
            installed_params_file(),
            "-p", "fps:=3.0",
            "-p", "camera_topics:=[a/image, b/image]",
            "-p", "camera_names:=[only_one]",
        ),  # fmt: skip
    )
    assert narrator.process.wait(timeout=30.0) == 1, narrator.describe()
    output = narrator.output()
    assert "invalid parameters" in output
    assert "multiple of the model's temporal patch size" in output
    assert "one name per topic" in output
    assert "Traceback" not in output


def test_integer_for_a_decimal_parameter_is_explained(spawn_node):
    narrator = spawn_node(
        "svlm_ros", "narrator", narrator_args(installed_params_file(), "-p", "fps:=2")
    )
    assert narrator.process.wait(timeout=30.0) == 1, narrator.describe()
    assert "2.0 rather than 2" in narrator.output()


@pytest.mark.slow  # loads the model by hand and narrates on /clock, about 12 s
def test_lifecycle_by_hand_sim_time_then_sigterm_within_5_s(spawn_node, tiny_model_path):
    # autostart false: the node waits unconfigured until a lifecycle manager (here the test)
    # configures and activates it; then it narrates, and SIGTERM ends it cleanly.
    # use_sim_time: the camera stamps frames in simulated time (from 1000 s) and /clock runs
    # 100 s ahead of the camera, so the node clock (latency, status stamps) must be /clock.
    narrator = spawn_node(
        "svlm_ros",
        "narrator",
        narrator_args(
            installed_params_file(),
            "-p", "autostart:=false",
            "-p", f"model_path:={tiny_model_path}",
            "-p", "max_new_tokens:=2",
            "-p", "max_pixels:=100352",
            "-p", "torch_threads:=1",
            "-p", "use_sim_time:=true",
        ),  # fmt: skip
    )
    harness = NarratorHarness("/svlm", node_name="lifecycle_manager")
    try:
        state_client = harness.client(GetState, "narrator/get_state")
        assert state_client.wait_for_service(timeout_sec=30.0), narrator.describe()
        assert harness.lifecycle_state() == "unconfigured", narrator.describe()
        refused = harness.ask("Anything?")
        assert not refused.success and "model not loaded" in refused.message

        camera = harness.add_feed("camera/image_raw", "camera_frame",
                                  clock_offset=1000.0 - time.time())
        harness.start_feeds(rate=30.0, clock=lambda: camera.now() + 100.0)
        assert harness.lifecycle(Transition.TRANSITION_CONFIGURE, timeout=60.0), (
            narrator.describe()
        )
        assert harness.lifecycle_state() == "inactive"
        assert harness.lifecycle(Transition.TRANSITION_ACTIVATE)
        found = harness.wait_narrations("camera", 2, 60.0)
        narration = found[-1]
        assert narration.header.frame_id == "camera_frame"
        assert 1000.0 < from_stamp(narration.header.stamp) < 1200.0  # the camera's clock
        assert 99.0 < narration.latency < 110.0, narration.latency  # measured on /clock
        status = harness.wait_for(
            lambda: (s := harness.latest_status()) and s.state == "active" and s, 10.0, "status"
        )
        assert 1090.0 < from_stamp(status.header.stamp) < 1300.0

        started = time.monotonic()
        assert narrator.stop(timeout=5.0, sig=signal.SIGTERM) == 0, narrator.describe()
        assert time.monotonic() - started < 5.0
        assert "Traceback" not in narrator.output(), narrator.output()
    finally:
        harness.close()


LOAD_GATE_HOOK = '''\
"""Test hook (sitecustomize): load_model waits until the test creates the gate file."""
import os
import time

import svlm_ros.engine.model_loading as loading

_load_model = loading.load_model


def _gated_load_model(*args, **kwargs):
    gate = os.environ["SVLM_TEST_LOAD_GATE"]
    open(gate + ".waiting", "w").close()
    while not os.path.exists(gate):
        time.sleep(0.05)
    return _load_model(*args, **kwargs)


loading.load_model = _gated_load_model
'''


def test_autostart_answers_status_lifecycle_and_parameters_while_the_model_loads(
    spawn_node, tiny_model_path, tmp_path
):
    # Review: with autostart the model was loaded before the executor spun, so during a long
    # load (a 7B model: tens of seconds) nothing answered. Here the load waits for the test.
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(LOAD_GATE_HOOK)
    gate = tmp_path / "gate"
    narrator = spawn_node(
        "svlm_ros",
        "narrator",
        narrator_args(
            installed_params_file(),
            "-r", "__ns:=/autostart_test",
            "-p", f"model_path:={tiny_model_path}",
            "-p", "torch_threads:=1",
            "-p", "max_pixels:=100352",
            "-p", "status_period:=0.2",
        ),  # fmt: skip
        env={
            "PYTHONPATH": os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]),
            "SVLM_TEST_LOAD_GATE": str(gate),
        },
    )
    harness = NarratorHarness("/autostart_test", node_name="autostart_test_client")
    try:
        deadline = time.monotonic() + 60.0
        while not Path(f"{gate}.waiting").exists():  # the load has begun
            assert narrator.poll() is None, narrator.describe()
            assert time.monotonic() < deadline, f"load never began: {narrator.describe()}"
            time.sleep(0.1)  # polling a file; nothing to wait on
        assert harness.lifecycle_state() == "configuring", narrator.describe()
        status = harness.wait_for(harness.latest_status, 20.0, "a status during the load")
        assert status.state == "configuring"
        assert harness.get_parameters(["fps"])[0].value == 2.0
        gate.touch()
        harness.wait_for(
            lambda: (s := harness.latest_status()) and s.state == "active", 60.0, "active"
        )
        assert narrator.stop(timeout=5.0) == 0, narrator.describe()
    finally:
        harness.close()
