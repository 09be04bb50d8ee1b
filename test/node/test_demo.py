"""``scripts/demo.sh`` end to end, for a few seconds: camera, narrator, monitor, bag and video."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_demo(args: list[str], tmp_path: Path, timeout: float = 240.0,
             interrupt_after: float | None = None) -> tuple[int, str]:
    env = {**os.environ, "ROS_HOME": str(tmp_path / "ros_home"), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(["bash", str(REPO / "scripts" / "demo.sh"), *args],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=env, cwd=tmp_path, start_new_session=True)
    try:
        if interrupt_after is not None:
            deadline = time.monotonic() + timeout
            output = []
            for line in process.stdout:  # wait for narration to flow, then press Ctrl-C
                output.append(line)
                if len([x for x in output if re.match(r"\[\s*\d+ s\]", x)]) >= interrupt_after:
                    os.killpg(process.pid, signal.SIGINT)
                    break
                if time.monotonic() > deadline:
                    break
            rest, _ = process.communicate(timeout=60)
            return process.returncode, "".join(output) + rest
        out, _ = process.communicate(timeout=timeout)
        return process.returncode, out
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_demo_narrates_asks_records_and_stops(tiny_model_path, tmp_path):
    out = tmp_path / "demo"
    status, output = run_demo(["--seconds", "6", "--model", str(tiny_model_path), "--out",
                               str(out), "--question", "what did you see?"], tmp_path)
    assert status == 0, output
    lines = [x for x in output.splitlines() if re.match(r"\[\s*\d+ s\] [+x ] narrator:", x)]
    assert len(lines) == 6, output  # --seconds narrated seconds, judged and no more
    assert all("| truth:" in line for line in lines)
    assert "asking: what did you see?" in output and "answer (" in output, output
    assert re.search(r"\d of 6 seconds right", output), output
    bags = list(out.glob("run_*"))
    assert len(bags) == 1 and list(bags[0].glob("*.mcap")), output
    assert (out / "narration.gif").stat().st_size > 0
    # The nodes were stopped: nothing of this demo is left running.
    leftover = subprocess.run(["pgrep", "-f", f"model_path:={tiny_model_path}"],
                              capture_output=True, text=True)
    assert leftover.stdout.strip() == ""


@pytest.mark.slow
def test_demo_stops_cleanly_on_ctrl_c(tiny_model_path, tmp_path):
    out = tmp_path / "demo"
    status, output = run_demo(["--seconds", "600", "--model", str(tiny_model_path), "--out",
                               str(out)], tmp_path, interrupt_after=3)
    assert status in (0, 130), output
    assert re.search(r"\d+ of \d+ seconds right", output), output  # the summary still came
    assert list(out.glob("run_*")), output  # and the bag was closed, not abandoned
    leftover = subprocess.run(["pgrep", "-f", f"model_path:={tiny_model_path}"],
                              capture_output=True, text=True)
    assert leftover.stdout.strip() == ""


def test_demo_refuses_bad_arguments(tmp_path):
    status, output = run_demo(["--seconds", "soon"], tmp_path, timeout=30)
    assert status == 2 and "--seconds needs a number" in output
    status, output = run_demo(["--frobnicate"], tmp_path, timeout=30)
    assert status == 2 and "unknown argument" in output


def test_the_monitor_marks_and_counts_the_events_that_need_memory():
    from svlm_ros.node.demo_monitor import DemoMonitor, memory_need, narration_matches

    assert memory_need("the red circle is back from the left") == "text"
    assert memory_need("the blue square is still") == "vision"
    assert memory_need("a red circle enters from the left") is None
    assert memory_need("") is None and memory_need(None) is None
    assert not narration_matches("a red circle enters from the left",
                                 "the red circle is back from the left")
    monitor = DemoMonitor.__new__(DemoMonitor)  # summary() reads only the pairs
    monitor.pairs = [(0, "", ""), (1, "the red circle is back from the left",
                                   "the red circle is back from the left"),
                     (2, "", "the blue square is still"), (3, "a red square enters from the top",
                                                           "a red square enters from the top")]
    assert monitor.summary() == ("3 of 4 seconds right (75 %): 2 of 3 event seconds (1 of 2 "
                                 "that need memory), 1 of 1 quiet seconds; always-silent would "
                                 "get 25 %")
