"""Helpers for tests that run installed ROS executables and talk to them with rclpy.

Every wait here has a deadline and ends early when the awaited thing happens (or the
node process dies), so tests never sleep a fixed time hoping something is ready.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ament_index_python.packages import get_package_prefix, get_package_share_directory
from rclpy.client import Client
from rclpy.executors import Executor
from rclpy.task import Future


def installed_executable(package: str, name: str) -> Path:
    """Path of ``lib/<package>/<name>`` in the package's install prefix (what ros2 run uses)."""
    path = Path(get_package_prefix(package)) / "lib" / package / name
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"{path} is not an executable; build with scripts/setup.sh")
    return path


def installed_share(package: str) -> Path:
    """The package's installed ``share/<package>`` folder."""
    return Path(get_package_share_directory(package))


class NodeProcess:
    """An installed executable running as its own process, its output kept in a log file.

    Args:
        command: the executable and its arguments.
        log_path: file that receives stdout and stderr.
        env: the process environment.
    """

    def __init__(self, command: Sequence[str | os.PathLike], log_path: Path, env: dict) -> None:
        self.command = [str(part) for part in command]
        self.log_path = log_path
        self._log_file = open(log_path, "wb")  # closed by stop() or close()
        self.process = subprocess.Popen(
            self.command, stdout=self._log_file, stderr=subprocess.STDOUT, env=env
        )

    def output(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(errors="replace")

    def poll(self) -> int | None:
        """The exit status, or None while the process runs."""
        return self.process.poll()

    def describe(self) -> str:
        """Command, state and output, for assertion messages."""
        state = self.poll()
        status = "running" if state is None else f"exited with {state}"
        return f"{' '.join(self.command)}\n({status}); output:\n{self.output()}"

    def stop(self, timeout: float = 5.0, sig: int = signal.SIGINT) -> int:
        """Send ``sig`` and wait up to ``timeout`` seconds for the exit status.

        Raises:
            TimeoutError: the process outlived the timeout; it is killed first.
        """
        try:
            if self.process.poll() is None:
                self.process.send_signal(sig)
            try:
                return self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise TimeoutError(
                    f"still running {timeout} s after signal {sig}: {self.describe()}"
                ) from None
        finally:
            self.close()

    def close(self) -> None:
        """Close the log file (the process writes to its own copy of the descriptor)."""
        self._log_file.close()


def wait_for_service(client: Client, timeout: float, process: NodeProcess | None = None) -> None:
    """Wait until ``client``'s service is discovered.

    Raises:
        RuntimeError: ``process`` exited first.
        TimeoutError: not discovered within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.wait_for_service(timeout_sec=0.1):
            return
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"node exited before serving {client.srv_name}: {process.describe()}"
            )
    details = f": {process.describe()}" if process is not None else ""
    raise TimeoutError(f"service {client.srv_name} not found within {timeout} s{details}")


def spin_until(executor: Executor, condition: Callable[[], bool], timeout: float) -> bool:
    """Spin ``executor`` until ``condition()`` is true; False if ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while not condition():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        executor.spin_once(timeout_sec=min(remaining, 0.1))
    return True


def call_service(
    executor: Executor, client: Client, request, timeout: float, resend_after: float = 0.0
):
    """Call the service and return the response.

    With ``resend_after`` > 0 (only for a request that is safe to repeat), the request is sent
    again whenever that many seconds pass unanswered: a client's first response can be lost
    while the server has not yet discovered it (see ``NarratorHarness.client``).

    Raises:
        TimeoutError: no response within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        attempt = min(remaining, resend_after) if resend_after > 0 else remaining
        future: Future = client.call_async(request)
        executor.spin_until_future_complete(future, timeout_sec=max(attempt, 0.0))
        if future.done():
            return future.result()
        client.remove_pending_request(future)
        if attempt >= remaining:
            raise TimeoutError(f"no response from {client.srv_name} within {timeout} s")
