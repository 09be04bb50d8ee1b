"""The installed narrator executable, started the way the launch file starts it."""

from pathlib import Path

import yaml
from rcl_interfaces.srv import GetParameters
from ros_helpers import call_service, installed_share, spin_until, wait_for_service

from svlm_ros.srv import Ask

NAMESPACE = "/svlm"


def narrator_args(params_file: Path) -> list[str]:
    return ["--ros-args", "--params-file", str(params_file), "-r", f"__ns:={NAMESPACE}"]


def installed_params_file() -> Path:
    return installed_share("svlm_ros") / "config" / "narrator.yaml"


def test_serves_ask_and_exits_cleanly_on_sigint(spawn_node, ros_node, executor):
    narrator = spawn_node("svlm_ros", "narrator", narrator_args(installed_params_file()))
    client = ros_node.create_client(Ask, "/svlm/ask")
    wait_for_service(client, timeout=20.0, process=narrator)

    assert spin_until(
        executor,
        lambda: ("narrator", NAMESPACE) in ros_node.get_node_names_and_namespaces(),
        timeout=10.0,
    ), f"/svlm/narrator not in the graph: {ros_node.get_node_names_and_namespaces()}"

    response = call_service(
        executor, client, Ask.Request(question="What is in view?"), timeout=10.0
    )
    assert isinstance(response, Ask.Response)
    # Without a model the node must say why it cannot answer.
    assert response.success or response.message, narrator.describe()
    assert response.latency >= 0.0

    assert narrator.stop(timeout=5.0) == 0, narrator.describe()


def test_parameters_file_applies_under_the_namespace(spawn_node, ros_node, executor, tmp_path):
    # The installed file with one value changed: proves that its `/**` section reaches the
    # node under the namespace (the installed values equal the declared defaults).
    params = yaml.safe_load(installed_params_file().read_text())
    params["/**"]["ros__parameters"]["default_camera"] = "front"
    params_file = tmp_path / "narrator.yaml"
    params_file.write_text(yaml.safe_dump(params))
    narrator = spawn_node("svlm_ros", "narrator", narrator_args(params_file))

    client = ros_node.create_client(GetParameters, "/svlm/narrator/get_parameters")
    wait_for_service(client, timeout=20.0, process=narrator)
    response = call_service(
        executor, client, GetParameters.Request(names=["default_camera"]), timeout=10.0
    )
    assert [value.string_value for value in response.values] == ["front"]

    assert narrator.stop(timeout=5.0) == 0, narrator.describe()
