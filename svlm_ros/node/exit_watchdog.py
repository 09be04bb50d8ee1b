"""A deadline on the process's exit, armed when shutdown starts.

The README promises that SIGINT and SIGTERM end the narrator within 5 s. Its own steps fit in
that (the worker's join, the executor's and rclpy's shutdown), but a step outside its control
can block for ever: an executor pool thread still inside a callback, which the interpreter
joins at exit, or a DDS participant that does not let go. ``ros2 launch`` would then escalate
to SIGTERM and SIGKILL, and the user would see a node that ignored them with no reason given.

``arm`` starts a daemon timer. If the process still runs when it fires, the timer writes
every thread's stack to stderr (where the stuck step shows), and ends the process with
``os._exit``: no further cleanup runs, as none that was due got done in time anyway.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading

#: The marker line written before the stacks, for logs and tests to find.
MESSAGE = "shutdown did not finish within {seconds:g} s; every thread's stack follows; exiting"


def arm(seconds: float, status: int = 0) -> threading.Timer:
    """End the process with ``status`` if it still runs ``seconds`` from now.

    Safe to call once shutdown has started: the timer is a daemon thread, so it never keeps
    the process alive, and it keeps running while the main thread waits at exit for others.
    """
    if seconds <= 0:
        raise ValueError(f"the exit deadline must be positive, got {seconds}")

    def fire() -> None:
        sys.stdout.flush()
        sys.stderr.write(MESSAGE.format(seconds=seconds) + "\n")
        sys.stderr.flush()
        faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        sys.stderr.flush()
        os._exit(status)

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.name = "exit-watchdog"
    timer.start()
    return timer
