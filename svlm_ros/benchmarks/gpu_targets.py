"""Read ``svlm-bench --json`` reports and judge them against the GPU real-time targets.

``python -m svlm_ros.benchmarks.gpu_targets SHIPPED.json [...] [--compare OTHER.json ...]
[--plot parts.png]`` prints one row per measured camera count and phase of every report (the
figures a reader compares across decode and prefill paths), then the targets of issue 9 with
the figure that decides each:

* one camera at hour 2: at most 300 ms per second of video (p50), decode at most 12 ms per
  token (p50), the p99 of a second at most 1.5 times its median;
* four cameras at hour 2: every camera narrated every second (the p99 wall time of one
  second of all four cameras' rounds within the second), p99 narration latency at most 1 s.

``--plot`` draws each row's round as a bar of its parts against the 300 ms target and real
time. Targets are judged on the positional reports only (the configuration you ship); ``--compare``
reports only join the table. A target is decided by the first positional report with a row for
it; one none measured is listed as not measured. Exit status 0 when every target was measured
and met, 1 otherwise. Needs no GPU and no ROS: ``scripts/measure_gpu.sh`` runs the benchmarks
on a GPU and this at the end.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Target:
    """One requirement: ``figure(row) <= limit`` on the row of ``cameras`` at ``phase``."""

    what: str
    cameras: int
    phase: str
    figure: str
    limit: float


def _second_spread(row: dict) -> float:
    per_second = row["ms_per_video_second"]
    return per_second["p99"] / per_second["p50"]


def _all_cameras_second_p99(row: dict) -> float:
    """p99 wall milliseconds that one second of every camera's rounds took (each camera
    narrated every second when it is within 1,000)."""
    return row["ms_per_video_second"]["p99"] * row["cameras"]


FIGURES = {
    "ms per video second p50": lambda row: row["ms_per_video_second"]["p50"],
    "decode ms per token p50": lambda row: row["parts_ms"]["decode_per_token"]["p50"],
    "p99 / p50 of a second": _second_spread,
    "ms per second of all cameras p99": _all_cameras_second_p99,
    "latency ms p99": lambda row: row["latency_ms"]["p99"],
}

TARGETS = (
    Target("one camera: <= 300 ms per second of video", 1, "hour2",
           "ms per video second p50", 300.0),
    Target("one camera: decode <= 12 ms per token", 1, "hour2", "decode ms per token p50", 12.0),
    Target("one camera: p99 <= 1.5x the median", 1, "hour2", "p99 / p50 of a second", 1.5),
    Target("four cameras: each narrated every second", 4, "hour2",
           "ms per second of all cameras p99", 1000.0),
    Target("four cameras: p99 narration latency <= 1 s", 4, "hour2", "latency ms p99", 1000.0),
)


def load_reports(paths: list[Path]) -> list[tuple[str, dict]]:
    """``(label, report)`` per file; the label is the file's stem.

    Raises:
        ValueError: a file that is not an ``svlm-bench --parts`` JSON report.
    """
    reports = []
    for path in paths:
        try:
            report = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{path}: not readable as JSON ({error})") from error
        if not isinstance(report, dict) or not isinstance(report.get("rows"), list):
            raise ValueError(f"{path}: no 'rows'; write it with svlm-bench --parts --json")
        reports.append((path.stem, report))
    return reports


def judge(reports: list[tuple[str, dict]]) -> list[tuple[Target, str | None, float | None]]:
    """``(target, label of the report judged, figure)`` per target; None where not measured."""
    verdicts = []
    for target in TARGETS:
        found = next(((label, row) for label, report in reports for row in report["rows"]
                      if row["cameras"] == target.cameras and row["phase"] == target.phase),
                     None)
        if found is None:
            verdicts.append((target, None, None))
        else:
            verdicts.append((target, found[0], FIGURES[target.figure](found[1])))
    return verdicts


def met(target: Target, figure: float | None) -> bool:
    return figure is not None and math.isfinite(figure) and figure <= target.limit


def format_rows(reports: list[tuple[str, dict]]) -> list[str]:
    """One line per measured row: the figures to compare across paths."""
    lines = [f"{'report':<18} {'decode/prefill/vision':<26} {'cams':>4} {'phase':<8} "
             f"{'ms/video s p50/p99':>19} {'decode/tok':>10} {'prefill':>8} {'vision':>7} "
             f"{'latency p99':>11}"]
    for label, report in reports:
        vision = "compiled" if report.get("compile_vision") else "eager"
        paths = f"{report.get('decode_path', '?')}/{report.get('prefill_path', 'eager')}/{vision}"
        for row in report["rows"]:
            per_second, parts = row["ms_per_video_second"], row["parts_ms"]
            lines.append(
                f"{label:<18} {paths:<26} {row['cameras']:>4} {row['phase']:<8} "
                f"{per_second['p50']:>9.1f}/{per_second['p99']:<9.1f} "
                f"{parts['decode_per_token']['p50']:>10.1f} {parts['prefill']['p50']:>8.1f} "
                f"{parts['vision']['p50']:>7.1f} {row['latency_ms']['p99']:>11.1f}")
    return lines


#: The parts of a round drawn in the plot, in time order, and their colours.
PLOT_PARTS = (("preprocess", "tab:gray"), ("evict", "tab:brown"), ("vision", "tab:green"),
              ("prefill", "tab:orange"), ("decode", "tab:blue"))


def plot_parts(reports: list[tuple[str, dict]], path: Path) -> Path:
    """A bar per measured row: one round's parts (p50, decode = per token x tokens generated)
    against the 300 ms target and real time; the p99 of a second as a black tick.

    Raises:
        ImportError: matplotlib is not installed.
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: GPU boxes have no display
    import matplotlib.pyplot as plt

    rows = [(f"{label} ({row['cameras']} cam, {row['phase']})", row)
            for label, report in reports for row in report["rows"]]
    fig, axis = plt.subplots(figsize=(11, 1.6 + 0.45 * len(rows)))
    for index, (_, row) in enumerate(rows):
        left = 0.0
        for name, colour in PLOT_PARTS:
            if name == "decode":
                value = (row["parts_ms"]["decode_per_token"]["p50"]
                         * row.get("generated_tokens_mean", 0.0))
            else:
                value = row["parts_ms"][name]["p50"]
            if not math.isfinite(value):
                continue
            axis.barh(index, value, left=left, color=colour,
                      label=name if index == 0 else None)
            left += value
        axis.plot([row["ms_per_video_second"]["p99"]], [index], marker="|", color="black",
                  markersize=14, label="p99 of a second (one camera's share)" if index == 0
                  else None)
    axis.axvline(300, color="tab:red", linestyle="--", label="target: 300 ms per second")
    axis.axvline(1000, color="black", linestyle=":", label="real time (1,000 ms)")
    axis.set_yticks(range(len(rows)), [name for name, _ in rows])
    axis.invert_yaxis()
    axis.set_xlabel("milliseconds per round (p50 of each part)")
    axis.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    devices = ", ".join(sorted({report.get("device", "?") for _, report in reports}))
    axis.set_title(f"Where a round's time goes: {devices}", fontsize="medium")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m svlm_ros.benchmarks.gpu_targets",
        description="Judge svlm-bench --json reports against the GPU real-time targets.")
    parser.add_argument("reports", nargs="+", type=Path,
                        help="svlm-bench --parts --json files of the shipped configuration; "
                        "the first with a row for a target decides it")
    parser.add_argument("--compare", nargs="*", type=Path, default=[],
                        help="more reports shown in the table, not judged")
    parser.add_argument("--plot", type=Path,
                        help="also draw every run's parts to this PNG (needs matplotlib)")
    args = parser.parse_args(argv)
    try:
        judged = load_reports(args.reports)
        compared = load_reports(args.compare)
    except ValueError as error:
        print(f"gpu_targets: {error}", file=sys.stderr)
        return 2
    devices = sorted({report.get("device", "?") for _, report in judged + compared})
    print(f"device {', '.join(devices)}")
    print("\n".join(format_rows(judged + compared)))
    if args.plot:
        try:
            print(f"plot: {plot_parts(judged + compared, args.plot)}")
        except ImportError:
            print("plot: skipped, matplotlib is not installed (pip install matplotlib)",
                  file=sys.stderr)
    print()
    all_met = True
    for target, label, figure in judge(judged):
        if label is None:
            all_met = False
            print(f"NOT MEASURED  {target.what} (no report has {target.cameras} camera(s) at "
                  f"{target.phase})")
            continue
        ok = met(target, figure)
        all_met &= ok
        print(f"{'MET' if ok else 'MISSED':<13} {target.what}: {target.figure} {figure:.2f} "
              f"(limit {target.limit:g}; {label})")
    return 0 if all_met else 1


if __name__ == "__main__":
    sys.exit(main())
