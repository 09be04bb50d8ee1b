"""SteadyMultiThreadedExecutor: each ready callback is handed to the pool once, all still run.

Real rclpy nodes over DDS in one process: two subscriptions in their own callback groups on a
one-thread pool, one of them slow, so that the other's tasks wait for the pool thread; rclpy's
own executor hands a waiting task over again on every look (thousands of times a second).
"""

from __future__ import annotations

import threading
import time

import pytest
import rclpy
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.context import Context
from std_msgs.msg import String

from svlm_ros.node.steady_executor import SteadyMultiThreadedExecutor


class CountingExecutor(SteadyMultiThreadedExecutor):
    """Counts the callbacks the dispatcher hands over."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.handed_over = 0

    def wait_for_ready_callbacks(self, *args, **kwargs):
        ready = super().wait_for_ready_callbacks(*args, **kwargs)
        self.handed_over += 1
        return ready


pytestmark = pytest.mark.filterwarnings("ignore:MultiThreadedExecutor is used with a single")


@pytest.fixture
def node_and_executor():
    context = Context()
    rclpy.init(context=context)
    node = rclpy.create_node("steady_executor_test", context=context)
    executor = CountingExecutor(num_threads=1, context=context)
    executor.add_node(node)
    yield node, executor
    executor.shutdown(timeout_sec=2.0)
    node.destroy_node()
    rclpy.try_shutdown(context=context)


def test_a_waiting_callback_is_handed_over_once_and_every_message_is_handled(node_and_executor):
    node, executor = node_and_executor
    received = {"slow": 0, "fast": 0}
    lock = threading.Lock()

    def slow(_message):
        time.sleep(0.1)  # holds the only pool thread: the fast topic's tasks wait for it
        with lock:
            received["slow"] += 1

    def fast(_message):
        with lock:
            received["fast"] += 1

    for topic, callback in (("slow", slow), ("fast", fast)):
        node.create_subscription(String, topic, callback, 50,
                                 callback_group=MutuallyExclusiveCallbackGroup())
    publishers = {topic: node.create_publisher(String, topic, 50) for topic in received}
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    deadline = time.monotonic() + 10.0
    while any(p.get_subscription_count() == 0 for p in publishers.values()):
        assert time.monotonic() < deadline, "subscriptions not matched"
        time.sleep(0.05)
    for _ in range(10):
        publishers["slow"].publish(String(data="s"))
        publishers["fast"].publish(String(data="f"))
        time.sleep(0.05)
    while received != {"slow": 10, "fast": 10}:
        assert time.monotonic() < deadline, f"callbacks missing: {received}"
        time.sleep(0.05)
    # One hand-over per message, and a few for wake-ups; rclpy's own executor hands a task
    # that waits for the pool over again on every look (thousands here).
    assert executor.handed_over <= 3 * 20, executor.handed_over


def test_a_callback_error_surfaces_in_spin_once(node_and_executor):
    node, executor = node_and_executor

    def broken(_message):
        raise RuntimeError("broken callback")

    node.create_subscription(String, "broken", broken, 10)
    publisher = node.create_publisher(String, "broken", 10)
    deadline = time.monotonic() + 10.0
    while publisher.get_subscription_count() == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    publisher.publish(String(data="x"))
    with pytest.raises(RuntimeError, match="broken callback"):
        while time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
            time.sleep(0.05)  # the callback ran on the pool; its error comes with a later look


def test_a_coroutine_task_that_waits_is_resumed_and_finishes(node_and_executor):
    node, executor = node_and_executor
    gate = rclpy.task.Future()
    steps = []

    async def waits_for_gate():
        steps.append("started")
        await gate
        steps.append("finished")

    task = executor.create_task(waits_for_gate)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    deadline = time.monotonic() + 10.0
    while steps != ["started"]:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    gate.set_result(True)
    while not task.done():
        assert time.monotonic() < deadline, steps
        time.sleep(0.01)
    assert steps == ["started", "finished"]


def test_shutdown_ends_spin_while_the_pool_is_busy(node_and_executor):
    node, executor = node_and_executor
    release = threading.Event()
    timer_ran = threading.Event()

    def blocking(_message):
        release.wait(5.0)

    node.create_subscription(String, "block", blocking, 10,
                             callback_group=MutuallyExclusiveCallbackGroup())
    node.create_timer(0.02, timer_ran.set, callback_group=MutuallyExclusiveCallbackGroup())
    publisher = node.create_publisher(String, "block", 10)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    deadline = time.monotonic() + 10.0
    while publisher.get_subscription_count() == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    timer_ran.wait(5.0)
    publisher.publish(String(data="x"))
    time.sleep(0.3)  # the subscription holds the pool thread; the timer's task waits
    started = time.monotonic()
    executor.shutdown(timeout_sec=0.5)
    release.set()
    spinner.join(timeout=5.0)
    assert not spinner.is_alive()
    assert time.monotonic() - started < 5.0
