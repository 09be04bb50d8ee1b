"""``gpu_targets`` judges svlm-bench reports; ``scripts/measure_gpu.sh`` runs them (CPU dry run)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from svlm_ros.benchmarks.gpu_targets import TARGETS, judge, main, met

REPO = Path(__file__).resolve().parents[2]


def _row(cameras: int, phase: str, per_second=(200.0, 240.0), decode=10.0,
         video_per_second=None, latency_p99=800.0) -> dict:
    both = {"p50": 1.0, "p99": 1.0}
    return {
        "cameras": cameras, "phase": phase,
        "ms_per_video_second": {"p50": per_second[0], "p99": per_second[1]},
        "parts_ms": {"preprocess": both, "vision": both, "prefill": both, "evict": both,
                     "round": both, "decode_per_token": {"p50": decode, "p99": decode}},
        "video_seconds_per_second": (cameras + 0.5 if video_per_second is None
                                     else video_per_second),
        "latency_ms": {"p50": 100.0, "p99": latency_p99},
    }


def _write(tmp_path, name: str, *rows: dict) -> str:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"device": "test", "decode_path": "graphed",
                                "prefill_path": "eager", "rows": list(rows)}))
    return str(path)


def test_every_target_met(tmp_path, capsys):
    good = _write(tmp_path, "good", _row(1, "minute1"), _row(1, "hour2"), _row(4, "hour2"))
    assert main([good]) == 0
    out = capsys.readouterr().out
    assert out.count("MET") == len(TARGETS) and "MISSED" not in out


@pytest.mark.parametrize("row,missed", [
    (_row(1, "hour2", per_second=(320.0, 400.0)), "300 ms per second"),
    (_row(1, "hour2", decode=12.5), "12 ms per token"),
    (_row(1, "hour2", per_second=(200.0, 310.0)), "1.5x the median"),
])
def test_a_missed_one_camera_target_is_named(tmp_path, capsys, row, missed):
    assert main([_write(tmp_path, "run", row, _row(4, "hour2"))]) == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("MISSED")]
    assert len(lines) == 1 and missed in lines[0]


def test_four_cameras_behind_real_time_or_late_miss(tmp_path):
    # On average within real time, but the slowest seconds took 4 x 260 ms > 1 s.
    behind = _row(4, "hour2", per_second=(200.0, 260.0), video_per_second=4.5)
    late = _row(4, "hour2", latency_p99=1200.0)
    for four in (behind, late):
        verdicts = judge([("run", {"rows": [_row(1, "hour2"), four]})])
        assert [met(target, figure) for target, _, figure in verdicts].count(False) == 1


def test_compared_reports_are_shown_not_judged(tmp_path, capsys):
    shipped = _write(tmp_path, "shipped", _row(1, "hour2"))
    slower = _write(tmp_path, "eager_decode", _row(1, "hour2", decode=30.0), _row(4, "hour2"))
    assert main([shipped, "--compare", slower]) == 1  # four cameras: not measured when shipped
    out = capsys.readouterr().out
    assert "decode ms per token p50 10.00 (limit 12; shipped)" in out
    assert out.count("NOT MEASURED") == 2 and "MISSED" not in out
    assert "eager_decode" in out  # listed in the comparison table


def test_the_first_judged_report_with_a_row_decides(tmp_path, capsys):
    first = _write(tmp_path, "first", _row(1, "hour2", decode=13.0))
    second = _write(tmp_path, "second", _row(1, "hour2"), _row(4, "hour2"))
    assert main([first, second]) == 1
    assert "decode ms per token p50 13.00 (limit 12; first)" in capsys.readouterr().out


def test_plot_of_every_run(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    shipped = _write(tmp_path, "shipped", _row(1, "minute1"), _row(1, "hour2"))
    other = _write(tmp_path, "eager_decode", _row(1, "hour2", decode=30.0))
    plot = tmp_path / "parts.png"
    main([shipped, "--compare", other, "--plot", str(plot)])
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 10_000
    assert f"plot: {plot}" in capsys.readouterr().out


def test_a_file_that_is_not_a_report_is_refused(tmp_path, capsys):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"policies": {}}))
    assert main([str(other)]) == 2
    assert "svlm-bench --parts --json" in capsys.readouterr().err


def _measure(out, *options, timeout: float):
    env = {**os.environ, "SVLM_SKIP_CUDA_TESTS": "1"}
    return subprocess.run(["bash", str(REPO / "scripts/measure_gpu.sh"), str(out), *options],
                          capture_output=True, text=True, env=env, timeout=timeout)


def test_measure_gpu_leaves_no_report_of_a_failed_run(tmp_path):
    done = _measure(tmp_path, "--frame-size", "wide", timeout=300)
    assert done.returncode == 1
    assert "no benchmark report of the shipped configuration was written" in done.stderr
    assert not list(tmp_path.glob("*.json"))


def test_measure_gpu_wants_the_folder_first(tmp_path):
    done = subprocess.run(["bash", str(REPO / "scripts/measure_gpu.sh"), "--measure-seconds",
                           "60"], capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 2 and "the folder comes first" in done.stderr
    assert not (tmp_path / "--measure-seconds").exists()


@pytest.mark.slow  # five tiny benchmark runs and one compile: about 70 s on 2 cores
def test_measure_gpu_dry_run_on_the_cpu(tmp_path):
    done = _measure(tmp_path, "--model-shape", "tiny", "--device", "cpu", "--warmup-seconds",
                    "2", "--measure-seconds", "2", "--frame-size", "160x120", "--threads", "1",
                    timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    names = {path.stem for path in tmp_path.glob("*.json")}
    assert names == {"shipped", "batched_4", "eager_decode", "prefill_compiled",
                     "vision_compiled"}
    assert json.loads((tmp_path / "prefill_compiled.json").read_text())["prefill_path"] == \
        "compiled"
    assert (tmp_path / "parts.png").stat().st_size > 10_000
    targets = (tmp_path / "targets.txt").read_text()
    assert targets.count("MET") == len(TARGETS)
