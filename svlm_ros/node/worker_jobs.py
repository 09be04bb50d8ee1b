"""Model work that other threads hand to the narration worker's thread (asks).

All model work runs on one thread, the narration worker's: rounds, stream rebuilds, watch
questions and asks. CUDA-graph trees (``decode_path: compiled``) are kept per thread, so an
ask decoded on an executor thread would record a second tree and memory pool of its own.
The ask service therefore hands its work here (``submit``) and waits for the future; the
worker runs one job between two rounds (an ask waits at most for the round in progress, and
narration is delayed by at most one answer), or at once when it is idle.

Jobs that have not started when the node deactivates or stops are refused with the reason
(``refuse_pending``), so a waiting ask always gets an answer.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any


class JobRefused(RuntimeError):
    """A job that was not run; the message says why (deactivated, stopping, ...)."""


class WorkerJobs:
    """A first-in, first-out queue of jobs run on the worker's thread.

    Args:
        wake: Wakes the worker thread (called after each ``submit``).
    """

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._lock = threading.Lock()
        self._queue: deque[tuple[Callable[[], Any], Future]] = deque()
        # Why new jobs are refused ('' while they are taken).
        self._closed = "the narration worker is not running"

    def open(self) -> None:
        """Take jobs (the worker thread started)."""
        with self._lock:
            self._closed = ""

    def close(self, reason: str) -> None:
        """Refuse new jobs and every pending one with ``reason`` (the worker stops)."""
        with self._lock:
            self._closed = reason
        self.refuse_pending(reason)

    def submit(self, job: Callable[[], Any]) -> Future:
        """Queue ``job`` for the worker's thread; its future holds the result or the error
        (``JobRefused`` when it never ran)."""
        future: Future = Future()
        with self._lock:
            if self._closed:
                future.set_exception(JobRefused(self._closed))
                return future
            self._queue.append((job, future))
        self._wake()
        return future

    def pending(self) -> int:
        """Jobs waiting to start."""
        with self._lock:
            return len(self._queue)

    def run_one(self) -> bool:
        """Run the oldest pending job here (on the worker's thread); True if one ran."""
        while True:
            with self._lock:
                if not self._queue:
                    return False
                job, future = self._queue.popleft()
            if future.set_running_or_notify_cancel():  # False: its waiter gave up
                break
        try:
            result = job()
        except BaseException as error:  # noqa: BLE001 - handed to the waiter
            future.set_exception(error)
        else:
            future.set_result(result)
        return True

    def refuse_pending(self, reason: str) -> None:
        """Refuse every job that has not started with ``reason``."""
        with self._lock:
            queued, self._queue = self._queue, deque()
        for _job, future in queued:
            if future.set_running_or_notify_cancel():
                future.set_exception(JobRefused(reason))
