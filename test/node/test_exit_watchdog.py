"""The exit deadline armed at shutdown (svlm_ros.node.exit_watchdog), in real processes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from svlm_ros.node import exit_watchdog

# A process that arms the deadline and then returns from its main thread while a non-daemon
# thread is stuck: the interpreter would wait for that thread for ever at exit (as it waits
# for an executor pool thread still inside a callback).
STUCK_AT_EXIT = textwrap.dedent("""
    import sys, threading
    from svlm_ros.node import exit_watchdog

    def stuck_in_a_callback():
        threading.Event().wait()

    threading.Thread(target=stuck_in_a_callback, name="pool-0").start()
    exit_watchdog.arm(float(sys.argv[1]), status=int(sys.argv[2]))
""")

QUICK_EXIT = textwrap.dedent("""
    import sys
    from svlm_ros.node import exit_watchdog

    exit_watchdog.arm(float(sys.argv[1]), status=int(sys.argv[2]))
    print("cleaned up")
""")


def run(script: str, seconds: float, status: int) -> tuple[subprocess.CompletedProcess, float]:
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", script, str(seconds), str(status)],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    return done, time.monotonic() - started


def test_a_process_stuck_at_exit_ends_at_the_deadline_with_every_stack_in_stderr():
    done, _ = run(STUCK_AT_EXIT, 0.5, 3)
    assert done.returncode == 3, done.stderr
    assert exit_watchdog.MESSAGE.format(seconds=0.5) in done.stderr
    # The stuck thread's stack names where it waits.
    assert "stuck_in_a_callback" in done.stderr, done.stderr


def test_a_process_that_exits_in_time_is_left_alone():
    done, elapsed = run(QUICK_EXIT, 30.0, 3)
    assert done.returncode == 0 and done.stdout.strip() == "cleaned up", done.stderr
    assert "shutdown did not finish" not in done.stderr
    assert elapsed < 30.0  # the daemon timer did not hold the process


def test_a_deadline_must_be_positive():
    with pytest.raises(ValueError, match="must be positive"):
        exit_watchdog.arm(0.0)
