"""Comparison arms and paired differences.

An arm is a loss mode with optional overrides of the train section: ``kd``, ``dskd``, ``dskd@0.5`` (λ = 0.5).
Arms trained on the same seeds see the same data order and initialisation, so the per-seed difference of two arms
is a paired comparison: its spread is the noise of the difference, usually smaller than either arm's own spread.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

LOSSES = ("ce", "kd", "dskd")


def parse_arm(arm: str) -> dict[str, Any]:
    """``"dskd@0.5"`` -> {"loss": "dskd", "lam": 0.5}; ``"kd"`` -> {"loss": "kd"}. One-line error otherwise."""
    loss, _, lam = arm.partition("@")
    if loss not in LOSSES:
        raise ValueError(f"arm {arm!r}: the loss must be one of {', '.join(LOSSES)} (optionally dskd@<lambda>)")
    if not lam:
        return {"loss": loss}
    if loss != "dskd":
        raise ValueError(f"arm {arm!r}: only dskd takes a sense-loss weight (dskd@0.5)")
    try:
        value = float(lam)
    except ValueError:
        raise ValueError(f"arm {arm!r}: '{lam}' is not a number (example: dskd@0.5)") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"arm {arm!r}: lambda must be a finite number >= 0")
    return {"loss": loss, "lam": value}


def paired_differences(runs: list[dict], arm: str, base: str) -> dict[str, dict[str, float]]:
    """Per metric, the mean, sample std and count of ``arm − base`` over the seeds both arms ran.

    ``runs``: [{"arm", "seed", "metrics": {name: value}}]. Metrics missing from either side are skipped.
    """
    by_seed = {(r["arm"], r["seed"]): r["metrics"] for r in runs}
    seeds = sorted({s for a, s in by_seed if a == arm} & {s for a, s in by_seed if a == base})
    if not seeds:
        return {}
    names = set(by_seed[(arm, seeds[0])]) & set(by_seed[(base, seeds[0])])
    out: dict[str, dict[str, float]] = {}
    for name in sorted(names):
        diffs = [by_seed[(arm, s)][name] - by_seed[(base, s)][name] for s in seeds]
        if not all(isinstance(d, int | float) and math.isfinite(d) for d in diffs):
            continue
        values = np.asarray(diffs, dtype=float)
        std = float(values.std(ddof=1)) if values.size > 1 else 0.0
        out[name] = {"mean": float(values.mean()), "std": std, "n": float(values.size), "per_seed": diffs}
    return out


def differences_table(diffs: dict[str, dict[str, Any]], arm: str, base: str) -> str:
    """Markdown: metric | mean diff ± std | per seed | whether the mean is outside 2 std / sqrt(n) (the paired
    standard error; with 3 seeds a rough guide, not a test)."""
    lines = [
        f"| metric | {arm} − {base} (mean ± std over seeds) | per seed | beyond 2·SE? |",
        "|---|---|---|---|",
    ]
    for name, d in diffs.items():
        se = d["std"] / math.sqrt(d["n"]) if d["n"] > 1 else math.inf
        beyond = "yes" if abs(d["mean"]) > 2 * se else "no"
        per_seed = ", ".join(f"{v:+.4g}" for v in d["per_seed"])
        lines.append(f"| {name} | {d['mean']:+.4g} ± {d['std']:.4g} | {per_seed} | {beyond} |")
    return "\n".join(lines)
