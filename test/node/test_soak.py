"""A short soak of the installed narrator (the full one: python -m svlm_ros.benchmarks.soak_bench).

Simulated time (use_sim_time) as fast as the model takes it, with bad inputs, stalls, the
camera clock going back and jumping ahead, and asks, all within a few simulated minutes.
"""

from __future__ import annotations

import warnings

import pytest

from svlm_ros.benchmarks.soak_bench import run_soak


@pytest.mark.slow  # about 20 s of simulated minutes on a loaded 2-core machine
def test_short_soak_survives_and_narrates_every_second_with_a_frame(tiny_model_path, tmp_path):
    figures = run_soak(
        180,
        model_path=tiny_model_path,
        work=tmp_path,
        bad_every=10,
        stall_every=45,
        jump_back_every=70,
        jump_ahead_every=130,
        ask_every=7,
        warmup=30,
        namespace="/soak_test",
        # A full CI run loads both cores; one soak there took over 10 s to stop. The 5 s
        # promise is tested on a quiet node in test_narrator_node; here, ending cleanly counts.
        exit_wait=30.0,
    )
    log_tail = (tmp_path / "narrator.log").read_bytes()[-12000:].decode(errors="replace")
    report = figures.report() + "\nnarrator log (end):\n" + log_tail
    if figures.exit_forced:
        # Shutdown hung, and the exit deadline ended the process in time (exit status 0, as
        # the README promises): not a failure of the soak, but the stacks show where it hung.
        warnings.warn("the narrator's exit deadline fired:\n" + report, stacklevel=1)
    assert figures.alive and figures.exit_status == 0, report
    assert figures.seconds_with_frames == 180 and not figures.missing, report
    assert figures.rss_growth < 0.03, report
    # Every kind of trouble really happened, and was counted.
    assert figures.asks_answered >= 20, report
    assert figures.frames_rejected >= 3 * 18, report
    assert figures.seconds_gap >= 3 * 20 + 1000, report
    assert figures.stream_restarts_by_clock == 2, report
