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
    assert len(lines) >= 5, output
    assert all("| truth:" in line for line in lines)
    assert "asking: what did you see?" in output and "answer (" in output, output
    assert re.search(r"\d+ of \d+ seconds right", output), output
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
