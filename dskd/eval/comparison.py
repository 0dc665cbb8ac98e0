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
# Figures kept per arm (a harness metric's "_stderr" companion rides along with it).
SCORES = ("acc", "acc_norm", "perplexity", "accuracy", "_stderr")
LEGEND = (
    "± = standard deviation over seeds; se = the harness's standard error of the figure (item sampling; mean over "
    "seeds). A difference smaller than the combined se √(se₁² + se₂²) is inside the stderr: the items cannot "
    "tell the two apart (the combined se of two models on the same items is a conservative bound)."
)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    arr = np.asarray(values, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def summarise(runs: list[dict]) -> dict[str, dict[str, tuple[float, float]]]:
    """``runs``: [{"arm", "seed", "metrics": {...}, "step_seconds": float}] -> {arm: {metric: (mean, std)}}."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for arm in dict.fromkeys(r["arm"] for r in runs):
        mine = [r for r in runs if r["arm"] == arm]
        keys = [k for k in mine[0]["metrics"] if k.endswith(SCORES)]
        out[arm] = {k: mean_std([r["metrics"][k] for r in mine if k in r["metrics"]]) for k in keys}
        out[arm]["step_seconds"] = mean_std([r["step_seconds"] for r in mine])
    return out


def stderr_key(metric: str) -> str:
    """The harness's stderr companion of a flat metric name: mc.arc_easy.acc -> mc.arc_easy.acc_stderr."""
    return f"{metric}_stderr"


def metric_columns(summary: dict[str, dict[str, tuple[float, float]]]) -> list[str]:
    """Headline metrics first, then MC accuracies, probe accuracies, step time (acc_norm and stderr stay in the
    JSON; the stderr is shown inside its figure's cell)."""
    first = next(iter(summary.values()))
    rest = sorted(
        k for k in first if k not in HEADLINE and k != "step_seconds" and not k.endswith(("acc_norm", "_stderr"))
    )
    return [k for k in HEADLINE if k in first] + rest + ["step_seconds"]


def markdown_table(summary: dict[str, dict[str, tuple[float, float]]], baselines: dict[str, dict]) -> str:
    """Arms (and teacher / untrained-student baselines) as rows, metrics as columns: mean ± std over seeds,
    with the harness's stderr next to each benchmark figure; then how each arm differs from the reference arm."""
    cols = metric_columns(summary)
    lines = ["| model | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, metrics in baselines.items():
        cells = [
            _fmt(metrics.get(c, math.nan), 0.0, metrics.get(stderr_key(c))) if c != "step_seconds" else "" for c in cols
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for arm, metrics in summary.items():
        cells = [_fmt(*metrics.get(c, (math.nan, 0.0)), metrics.get(stderr_key(c), (None,))[0]) for c in cols]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines + ["", LEGEND] + differences(summary))


def reference_arm(summary: dict) -> str:
    """What the other arms are compared with: kd (the baseline DSKD must beat) when present, else the first arm."""
    return "kd" if "kd" in summary else next(iter(summary))


def differences(summary: dict[str, dict[str, tuple[float, float]]]) -> list[str]:
    """Markdown lines: every arm minus the reference arm on each figure that has a harness stderr, and whether
    the difference is inside the combined stderr."""
    ref = reference_arm(summary)
    rows = []
    for arm, metrics in summary.items():
        if arm == ref:
            continue
        for metric in sorted(k for k in metrics if stderr_key(k) in metrics and stderr_key(k) in summary[ref]):
            diff = metrics[metric][0] - summary[ref][metric][0]
            se = math.hypot(metrics[stderr_key(metric)][0], summary[ref][stderr_key(metric)][0])
            verdict = "inside the stderr" if abs(diff) <= se else f"outside the stderr ({abs(diff) / se:.1f} se)"
            rows.append(f"| {arm} − {ref} | {metric} | {diff:+.3f} | {se:.3f} | {verdict} |")
    if not rows:
        return []
    head = ["", f"Differences from {ref} (mean over seeds):", "", "| arms | metric | difference | combined se | |"]
    return head + ["|---|---|---|---|---|"] + rows


def _fmt(mean: float, std: float, se: float | None = None) -> str:
    if isinstance(mean, float) and math.isnan(mean):
        return "—"
    digits = 1 if abs(mean) >= 100 else 3
    text = f"{mean:.{digits}f} ± {std:.{digits}f}" if std else f"{mean:.{digits}f}"
    return f"{text} (se {se:.3f})" if se is not None and not math.isnan(se) else text


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
