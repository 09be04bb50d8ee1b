"""PNG figures of training and evaluation (matplotlib, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: training boxes and CI have no display
    import matplotlib.pyplot as plt

    return plt


def plot_loss(records: Sequence[dict], path: str | Path) -> Path:
    """Training loss (per step, and its running mean over a fiftieth of the run) and the
    learning rate over optimizer steps."""
    plt = _pyplot()
    steps = [r["step"] for r in records]
    losses = [r["loss"] for r in records]
    fig, loss_axis = plt.subplots(figsize=(7, 4))
    loss_axis.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.6,
                   label="loss per step")
    # One chunk per step makes the raw loss noisy; the running mean shows the trend.
    window = max(1, len(losses) // 50)
    running, total = [], 0.0
    for index, loss in enumerate(losses):
        total += loss - (losses[index - window] if index >= window else 0.0)
        running.append(total / min(index + 1, window))
    loss_axis.plot(steps, running, color="tab:blue", label=f"running mean ({window} steps)")
    loss_axis.legend(loc="upper right")
    loss_axis.set_xlabel("optimizer step")
    loss_axis.set_ylabel("loss (mean per trained token)", color="tab:blue")
    lr_axis = loss_axis.twinx()
    lr_axis.plot(steps, [r["lr"] for r in records], color="tab:gray", linestyle="--",
                 label="learning rate")
    lr_axis.set_ylabel("learning rate", color="tab:gray")
    loss_axis.set_title("svlm-train")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_evaluation(rows: Sequence[dict], path: str | Path, window: int = 10) -> Path:
    """Per-second chrF (rolling mean over ``window`` seconds, when references exist) and step
    latency over stream time."""
    plt = _pyplot()
    times = [r["second"] for r in rows]
    has_reference = any("chrf" in r for r in rows)
    panels = 2 if has_reference else 1
    fig, axes = plt.subplots(panels, 1, figsize=(8, 2.8 * panels), sharex=True, squeeze=False)
    axes = axes[:, 0]
    if has_reference:
        scores = [r.get("chrf", 0.0) for r in rows]
        rolling = []
        for i in range(len(scores)):
            recent = scores[max(0, i - window + 1): i + 1]
            rolling.append(sum(recent) / len(recent))
        axes[0].plot(times, scores, ".", alpha=0.3, label="per second")
        axes[0].plot(times, rolling, label=f"rolling mean ({window} s)")
        axes[0].set_ylabel("chrF")
        axes[0].legend(loc="upper right")
    axes[-1].plot(times, [r["latency"] * 1e3 for r in rows], color="tab:red")
    axes[-1].set_ylabel("step latency (ms)")
    axes[-1].set_xlabel("stream time (s)")
    axes[0].set_title("svlm-eval")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
