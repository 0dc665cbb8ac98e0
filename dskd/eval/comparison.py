"""Arm-vs-arm comparison (ce / kd / dskd over seeds): mean ± std tables and plots from eval and train outputs."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

# Metrics shown in the table, in order (those absent from a run are skipped).
HEADLINE = ("heldout_perplexity", "heldout_accuracy")


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def summarise(runs: list[dict]) -> dict[str, dict[str, tuple[float, float]]]:
    """``runs``: [{"arm", "seed", "metrics": {...}, "step_seconds": float}] -> {arm: {metric: (mean, std)}}."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        mine = [r for r in runs if r["arm"] == arm]
        keys = [k for k in mine[0]["metrics"] if k.endswith(("acc", "perplexity", "accuracy"))]
        out[arm] = {k: mean_std([r["metrics"][k] for r in mine]) for k in keys}
        out[arm]["step_seconds"] = mean_std([r["step_seconds"] for r in mine])
    return out


def metric_columns(summary: dict[str, dict[str, tuple[float, float]]]) -> list[str]:
    """Headline metrics first, then MC accuracies, probe accuracies, step time."""
    first = next(iter(summary.values()))
    rest = sorted(k for k in first if k not in HEADLINE and k != "step_seconds" and not k.endswith("acc_norm"))
    return [k for k in HEADLINE if k in first] + rest + ["step_seconds"]


def markdown_table(summary: dict[str, dict[str, tuple[float, float]]], baselines: dict[str, dict]) -> str:
    """Arms (and teacher / untrained-student baselines) as rows, metrics as columns, mean ± std."""
    cols = metric_columns(summary)
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, metrics in baselines.items():
        cells = [_fmt(metrics.get(c, math.nan), 0.0) if c != "step_seconds" else "" for c in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for arm, metrics in summary.items():
        lines.append(f"| {arm} | " + " | ".join(_fmt(*metrics.get(c, (math.nan, 0.0))) for c in cols) + " |")
    return "\n".join(lines)


def _fmt(mean: float, std: float) -> str:
    if isinstance(mean, float) and math.isnan(mean):
        return "—"
    digits = 1 if abs(mean) >= 100 else 3
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if std else f"{mean:.{digits}f}"


def plot_metric_bars(summary: dict, out: Path) -> None:
    """One panel per metric: bar per arm with std error bars."""
    cols = [c for c in metric_columns(summary) if c != "heldout_perplexity"]
    fig, axes = plt.subplots(1, len(cols), figsize=(2.6 * len(cols), 3), squeeze=False)
    for ax, col in zip(axes[0], cols, strict=True):
        arms = list(summary)
        ax.bar(arms, [summary[a][col][0] for a in arms], yerr=[summary[a][col][1] for a in arms], capsize=3)
        ax.set_title(col, fontsize=8)
        ax.tick_params(labelsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def plot_loss_curves(histories: dict[str, list[list[dict]]], out: Path) -> None:
    """Mean total loss per step for each arm (over its seeds)."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for arm, runs in histories.items():
        n = min(len(h) for h in runs)
        if n == 0:
            continue
        mean = np.mean([[step["loss_total"] for step in h[:n]] for h in runs], axis=0)
        ax.plot(range(1, n + 1), mean, label=arm)
    ax.set_xlabel("step")
    ax.set_ylabel("total loss (mean over seeds)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
