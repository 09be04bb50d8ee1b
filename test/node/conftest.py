"""Fixtures of the ROS tests: private ROS_HOME folders, an rclpy context and node, installed
nodes started as processes. Only this folder's tests import rclpy.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import rclpy
from rclpy.context import Context
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from ros_helpers import NodeProcess, installed_executable, installed_share

from svlm_ros.node.transport_monitor import PROFILE_VARIABLES


def pytest_configure(config: pytest.Config) -> None:
    # Raw 640x480 frames (900 KB) between processes are mostly lost with Fast DDS's default
    # 512 KB shared-memory segment (best effort). The installed profile enlarges the segment
    # of every participant these tests start, in this process and in the nodes it spawns.
    # It must be set before the first participant exists, hence here.
    # Fast DDS 2.x (Jazzy) and 3.x (Kilted) read the profile from differently named variables.
    if not any(variable in os.environ for variable in PROFILE_VARIABLES):
        try:
            profile = installed_share("svlm_ros") / "config" / "fastdds_large_images.xml"
        except (KeyError, LookupError, ValueError):  # package not built: tests will say so
            return
        if profile.is_file():
            os.environ.update(dict.fromkeys(PROFILE_VARIABLES, str(profile)))


@pytest.fixture(scope="session", autouse=True)
def test_process_ros_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """ROS_HOME (logs) of the pytest process: a temp folder, not the checkout's .ros/."""
    ros_home = tmp_path_factory.mktemp("ros_home_pytest")
    previous = os.environ.get("ROS_HOME")
    os.environ["ROS_HOME"] = str(ros_home)
    yield ros_home
    if previous is None:
        del os.environ["ROS_HOME"]
    else:
        os.environ["ROS_HOME"] = previous


@pytest.fixture
def rclpy_context() -> Iterator[Context]:
    """A fresh rclpy context for one test, shut down afterwards."""
    context = Context()
    rclpy.init(context=context)
    try:
        yield context
    finally:
        rclpy.try_shutdown(context=context)


@pytest.fixture
def executor(rclpy_context: Context) -> Iterator[SingleThreadedExecutor]:
    """An executor in the test's context."""
    executor = SingleThreadedExecutor(context=rclpy_context)
    try:
        yield executor
    finally:
        executor.shutdown()


_node_numbers = itertools.count()


@pytest.fixture
def ros_node(rclpy_context: Context, executor: SingleThreadedExecutor) -> Iterator[Node]:
    """A node of the test process, added to ``executor``."""
    node = rclpy.create_node(
        f"test_client_{os.getpid()}_{next(_node_numbers)}", context=rclpy_context
    )
    executor.add_node(node)
    try:
        yield node
    finally:
        executor.remove_node(node)
        node.destroy_node()


SpawnNode = Callable[..., NodeProcess]


@pytest.fixture
def spawn_node(tmp_path: Path) -> Iterator[SpawnNode]:
    """Start installed executables as processes, each with its own ROS_HOME.

    ``spawn_node(package, executable, args=(), env=None)`` returns a NodeProcess;
    whatever still runs at the end of the test is interrupted, then killed.
    """
    processes: list[NodeProcess] = []

    def spawn(
        package: str,
        executable: str,
        args: Sequence[str | os.PathLike] = (),
        env: dict[str, str] | None = None,
    ) -> NodeProcess:
        index = len(processes)
        ros_home = tmp_path / f"ros_home_{executable}_{index}"
        ros_home.mkdir()
        process_env = {**os.environ, "ROS_HOME": str(ros_home), "PYTHONUNBUFFERED": "1"}
        process_env.update(env or {})
        process = NodeProcess(
            [installed_executable(package, executable), *args],
            log_path=tmp_path / f"{executable}_{index}.log",
            env=process_env,
        )
        processes.append(process)
        return process

    yield spawn
    for process in processes:
        if process.poll() is None:
            try:
                process.stop(timeout=5.0)
            except TimeoutError:
                pass  # killed by stop(); the test itself reports what went wrong
        process.close()
