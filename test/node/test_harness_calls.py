"""The test harness's service calls when a response goes missing.

On a loaded machine Fast DDS can drop a new client's first response (the server has not yet
discovered the client's response reader). ``NarratorHarness`` sends queries again and judges a
transition whose answer was lost by the node's state. Here a stand-in lifecycle server holds
back chosen responses until the test ends, which looks the same to the caller.
"""

import threading
from collections.abc import Iterator

import pytest
import rclpy
from lifecycle_msgs.msg import State, Transition
from lifecycle_msgs.srv import ChangeState, GetState
from narrator_harness import NarratorHarness
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.context import Context

from svlm_ros.node.steady_executor import SteadyMultiThreadedExecutor

NAMESPACE = "/harness_calls_test"


class WithholdingLifecycleServer:
    """``narrator/get_state`` and ``narrator/change_state`` that withhold the first
    ``withhold`` responses of each (they are sent only when the server closes)."""

    def __init__(self, withhold: int) -> None:
        self.withhold = withhold
        self.state = "unconfigured"
        self.requests = {"get_state": 0, "change_state": 0}
        self.released = threading.Event()
        self.context = Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("narrator", namespace=NAMESPACE, context=self.context)
        group = ReentrantCallbackGroup()
        self.node.create_service(GetState, "narrator/get_state", self._get_state,
                                 callback_group=group)  # fmt: skip
        self.node.create_service(ChangeState, "narrator/change_state", self._change_state,
                                 callback_group=group)  # fmt: skip
        self.executor = SteadyMultiThreadedExecutor(num_threads=4, context=self.context)
        self.executor.add_node(self.node)
        self.spinner = threading.Thread(target=self.executor.spin, daemon=True)
        self.spinner.start()

    def _hold(self, service: str) -> None:
        self.requests[service] += 1
        if self.requests[service] <= self.withhold:
            self.released.wait(timeout=60.0)  # a response the caller never sees in time

    def _get_state(self, request, response):
        self._hold("get_state")
        response.current_state = State(label=self.state)
        return response

    def _change_state(self, request, response):
        if request.transition.id == Transition.TRANSITION_CONFIGURE:
            self.state = "inactive"  # the transition happens; only its answer is held back
        self._hold("change_state")
        response.success = True
        return response

    def close(self) -> None:
        self.released.set()
        self.executor.shutdown(timeout_sec=2.0)
        # The released callbacks answer from the executor's worker threads. rclpy 9 (Kilted)
        # joins those in shutdown(); rclpy 7 (Jazzy) does not, and an answer sent after
        # destroy_node() fails (printed as "exception was never retrieved"): join them here.
        workers = getattr(self.executor, "_executor", None)
        if workers is not None:
            workers.shutdown(wait=True)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)


@pytest.fixture
def harness() -> Iterator[NarratorHarness]:
    harness = NarratorHarness(NAMESPACE, node_name="harness_calls_client")
    yield harness
    harness.close()


@pytest.fixture
def server_withholding_one() -> Iterator[WithholdingLifecycleServer]:
    server = WithholdingLifecycleServer(withhold=1)
    yield server
    server.close()


def test_a_query_whose_response_is_lost_is_sent_again(harness, server_withholding_one):
    client = harness.client(GetState, "narrator/get_state")
    assert client is harness.client(GetState, "narrator/get_state")  # one client, kept
    response = harness.call(client, GetState.Request(), timeout=20.0, resend_after=1.0)
    assert response.current_state.label == "unconfigured"
    assert server_withholding_one.requests["get_state"] == 2


def test_without_resending_a_lost_response_is_a_clear_failure(harness, server_withholding_one):
    client = harness.client(GetState, "narrator/get_state")
    with pytest.raises(AssertionError, match="no response to .*get_state within 1.5 s"):
        harness.call(client, GetState.Request(), timeout=1.5)
    assert server_withholding_one.requests["get_state"] == 1


def test_a_transition_whose_answer_is_lost_is_judged_by_the_state(harness, server_withholding_one):
    # The lost answer of CONFIGURE is not resent (a second CONFIGURE would be refused): the
    # state it left, "inactive", says it happened. The state query's own first response is
    # withheld too, and answered on the second try.
    assert harness.lifecycle(Transition.TRANSITION_CONFIGURE, timeout=1.5)
    assert server_withholding_one.requests == {"get_state": 2, "change_state": 1}


def test_a_lost_transition_that_did_not_happen_fails_with_the_state(harness):
    server = WithholdingLifecycleServer(withhold=1)
    server.requests["get_state"] = 1  # state queries are answered at once
    try:
        with pytest.raises(AssertionError, match="within 1.5 s; the node is 'unconfigured'"):
            harness.lifecycle(Transition.TRANSITION_ACTIVATE, timeout=1.5)
    finally:
        server.close()
