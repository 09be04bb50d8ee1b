"""Per-camera counters and latency statistics, and the first-come-first-served lock."""

from __future__ import annotations

import math
import threading

import pytest

from svlm_ros.node.fair_lock import FairLock
from svlm_ros.node.stream_stats import CameraStats, LatencyWindow, median, percentile


def test_median_and_percentile():
    assert median([3.0, 1.0, 2.0]) == 2.0
    assert median([4.0, 1.0, 3.0, 2.0]) == 2.5
    assert math.isnan(median([]))
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 1.0) == 100.0
    assert percentile(values, 0.0) == 1.0
    assert math.isnan(percentile([], 0.5))
    with pytest.raises(ValueError, match="fraction"):
        percentile(values, 1.5)


def test_latency_window_keeps_the_newest_samples():
    window = LatencyWindow(size=3)
    for value in (100.0, 1.0, 2.0, 3.0):
        window.add(value)
    assert len(window) == 3
    assert window.median() == 2.0
    assert window.p99() == 3.0
    with pytest.raises(ValueError):
        LatencyWindow(size=0)


def test_camera_counters_add_up():
    stats = CameraStats(window=10)
    for index in range(30):
        stats.record_received()
        if index == 5:
            stats.record_rejection("stamp went backwards")
        else:
            stats.record_accepted(sampled=index % 15 == 0)
    stats.record_round(silent=False, step_seconds=0.2, publish_latency=0.3, stream_time=1.0,
                       cache_tokens=100)
    stats.record_round(silent=True, step_seconds=0.4, publish_latency=0.5, stream_time=2.0,
                       cache_tokens=150)
    stats.record_skipped(3)
    stats.record_skipped(0)
    stats.record_round_error("RuntimeError: out of memory")
    snapshot = stats.snapshot(pending=1, overflowed=2, gap=4, period=0.5)
    assert snapshot.frames_received == 30
    assert snapshot.frames_rejected == 1 and snapshot.last_rejection == "stamp went backwards"
    assert snapshot.frames_sampled == 2
    assert snapshot.frames_dropped == 27
    assert (snapshot.seconds_narrated, snapshot.seconds_silent) == (2, 1)
    assert snapshot.seconds_skipped == 3
    assert (snapshot.seconds_overflowed, snapshot.seconds_gap) == (2, 4)
    assert snapshot.seconds_pending == 1
    assert snapshot.round_errors == 1 and "out of memory" in snapshot.last_round_error
    assert snapshot.stream_time == 2.0 and snapshot.cache_tokens == 150
    assert snapshot.step_latency_median == pytest.approx(0.3)
    assert snapshot.step_latency_p99 == pytest.approx(0.4)
    assert snapshot.publish_latency_median == pytest.approx(0.4)
    assert snapshot.real_time_factor == pytest.approx(0.3 / 0.5)


def test_a_restarted_stream_keeps_its_counts():
    stats = CameraStats()
    stats.record_round(silent=False, step_seconds=0.1, publish_latency=0.1, stream_time=5.0,
                       cache_tokens=10)
    stats.record_stream_restart(overflowed=3, gap=7)
    snapshot = stats.snapshot(pending=0, overflowed=1, gap=1, period=1.0)
    assert (snapshot.seconds_overflowed, snapshot.seconds_gap) == (4, 8)
    assert snapshot.stream_restarts == 1
    assert snapshot.stream_time == 0.0 and snapshot.cache_tokens == 0
    empty = CameraStats().snapshot(pending=0, overflowed=0, gap=0, period=1.0)
    assert math.isnan(empty.step_latency_median) and math.isnan(empty.real_time_factor)


def test_counters_are_exact_under_concurrent_updates():
    stats = CameraStats()

    def hammer() -> None:
        for _ in range(2000):
            stats.record_received()
            stats.record_accepted(sampled=True)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    snapshot = stats.snapshot(pending=0, overflowed=0, gap=0, period=1.0)
    assert snapshot.frames_received == snapshot.frames_sampled == 8000


def test_fair_lock_serves_waiters_in_arrival_order():
    lock = FairLock()
    order: list[int] = []
    lock.acquire()
    threads = []
    for index in range(5):
        thread = threading.Thread(target=lambda i=index: (lock.acquire(), order.append(i),
                                                          lock.release()))
        thread.start()
        threads.append(thread)
        # Wait until this thread has its ticket before starting the next one.
        while lock.waiting() < index + 2:
            threading.Event().wait(0.001)
    lock.release()
    for thread in threads:
        thread.join(timeout=5.0)
    assert order == [0, 1, 2, 3, 4]
    assert lock.waiting() == 0


def test_fair_lock_hands_over_instead_of_being_taken_back():
    # The thread that releases and asks again at once goes behind the one already waiting.
    lock = FairLock()
    events: list[str] = []
    lock.acquire()
    waiter = threading.Thread(target=lambda: (lock.acquire(), events.append("waiter"),
                                              lock.release()))
    waiter.start()
    while lock.waiting() < 2:
        threading.Event().wait(0.001)
    lock.release()
    with lock:
        events.append("releaser")
    waiter.join(timeout=5.0)
    assert events == ["waiter", "releaser"]
