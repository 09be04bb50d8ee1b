"""A multi-threaded executor whose dispatching thread sleeps while a callback waits for a thread.

rclpy's ``MultiThreadedExecutor`` (Humble to Kilted; fixed upstream after rclpy 10.0.2, see
ros2/rclpy#1223 and #1547) hands each ready callback to its thread pool as a task and goes
straight back to look for work. A task that no pool thread has started yet is neither running
nor done, so the very next look finds it again and hands it over again, and again: the
spinning thread holds the GIL in a tight loop until a pool thread gets the GIL and starts the
task. Measured on the narrator with a tiny model and sim time: about 4,000 hand-overs per
second for 4 frames a second, the spinning thread at 100 % of a core, and the narration
worker (the model) starved of the GIL, so a 180-second soak ran at a third of real time.

``SteadyMultiThreadedExecutor`` hands a task over once and then waits until a pool thread
has taken it (or the executor shuts down) before it looks again. The callbacks run on the
pool exactly as before; only the busy loop is gone. When every pool thread is busy, the
dispatcher waits for one to free, which is also when the task could first run anyway.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from rclpy.executors import (
    ConditionReachedException,
    ExternalShutdownException,
    MultiThreadedExecutor,
    ShutdownException,
    TimeoutException,
)
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy

#: How often the dispatcher, waiting for a pool thread to take a task, checks for shutdown.
SHUTDOWN_CHECK_SECONDS = 0.05
#: How often a coroutine task that awaits something (``await future``) is resumed to look.
#: rclpy resumes such a task whenever the dispatcher looks for work, and its busy loop looked
#: all the time; here the look comes at least this often while one waits.
COROUTINE_POLL_SECONDS = 0.01


class SteadyMultiThreadedExecutor(MultiThreadedExecutor):
    """``MultiThreadedExecutor`` that hands each ready callback to its pool once (see the
    module docstring). Same constructor, same ``spin`` and ``spin_once``."""

    def _spin_once_impl(self, timeout_sec: float | None = None,
                        wait_condition: Callable[[], bool] = lambda: False) -> None:
        if self._coroutine_waiting() and (timeout_sec is None or timeout_sec < 0
                                          or timeout_sec > COROUTINE_POLL_SECONDS):
            timeout_sec = COROUTINE_POLL_SECONDS  # spin_once may return early: allowed
        try:
            handler, _, _ = self.wait_for_ready_callbacks(timeout_sec, None, wait_condition)
        except (ExternalShutdownException, ShutdownException, TimeoutException,
                ConditionReachedException):
            return
        taken, returned = threading.Event(), threading.Event()

        def run() -> None:
            taken.set()
            try:
                handler()
            finally:
                returned.set()  # a coroutine task may return pending, to be resumed later

        self._executor.submit(run)
        self._futures.append(handler)  # the task keeps its callback's exception
        while not taken.wait(SHUTDOWN_CHECK_SECONDS):
            if self._is_shutdown or not self._context.ok():
                break
        # The pool thread sets ``taken`` just before the task marks itself running; until
        # then the next look would still find it pending.
        while taken.is_set() and not (handler.executing() or handler.done()
                                      or returned.is_set()):
            if self._is_shutdown or not self._context.ok():
                break
            time.sleep(0.0005)
        for future in [f for f in self._futures if f.done()]:
            self._futures.remove(future)
            try:
                future.result()  # a callback's exception surfaces in spin, as rclpy does
            except _rclpy.InvalidHandle:
                # rclpy's own wait-set task touching a guard condition that shutdown already
                # destroyed: teardown, not a fault of any callback.
                if not (self._is_shutdown or not self._context.ok()):
                    raise

    def _coroutine_waiting(self) -> bool:
        """Whether a task is neither running nor done: a coroutine that awaits something."""
        with self._tasks_lock:
            tasks = list(self._tasks)
        return any(not task.done() and not task.executing() for task, _, _ in tasks)
