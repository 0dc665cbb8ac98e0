"""PNG plots a person would rather look at than numbers (matplotlib, headless Agg backend)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def senses_histogram(counts: np.ndarray, out: Path) -> None:
    """Histogram of senses per token (tokens with at least one sense)."""
    fig, ax = plt.subplots(figsize=(5, 3))
    present = counts[counts > 0]
    ax.hist(present, bins=np.arange(0.5, (present.max() if present.size else 1) + 1.5))
    ax.set_xlabel("senses per token")
    ax.set_ylabel("tokens")
    ax.set_title(f"{present.size} tokens with senses")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def loss_curves(history: list[dict[str, float]], out: Path) -> None:
    """Training loss terms per step."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    steps = [h["step"] for h in history]
    for key in ("loss_total", "loss_ce", "loss_kd", "loss_sense"):
        values = [h.get(key, np.nan) for h in history]
        if any(v for v in values if v == v):
            ax.plot(steps, values, label=key.removeprefix("loss_"))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def block_influence_bars(scores: list[float], out: Path) -> None:
    """Block influence per teacher layer (log scale: the first and last layers dwarf the rest)."""
    fig, ax = plt.subplots(figsize=(7, 3))
    ax.bar(range(len(scores)), np.maximum(np.asarray(scores), 1e-6))
    ax.set_yscale("log")
    ax.set_xlabel("teacher layer")
    ax.set_ylabel("BI = 1 - mean cos(h_in, h_out)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
