"""What the bench scripts share for measuring: interleaved timing, spread, load, machine facts, the RESULT line.

Every figure is a ratio of interleaved medians measured side by side in one process: the machine is shared and
noisy, absolute seconds drift, ratios much less. The last stdout line of every script is its ``RESULT`` line.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def log(msg: str) -> None:
    """Progress to stderr (stdout ends with the RESULT line)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def interleave(fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Run the callables side by side: ``warmup`` untimed rounds, then ``repeats`` timed rounds whose order
    alternates (A B, B A, ...) so slow drift of the machine hits every variant alike. Returns seconds per variant."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
            log(f"  repeat {r + 1}/{repeats} {name}: {times[name][-1]:.3f} s")
    return times


def median(xs: list[float]) -> float:
    return float(statistics.median(xs))


def spread(xs: list[float]) -> dict[str, float | int]:
    """Median, quartiles, min/max and count of samples (the spread a figure is reported with)."""
    q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive") if len(xs) > 1 else (xs[0], xs[0], xs[0])
    return {"n": len(xs), "median": median(xs), "q1": float(q1), "q3": float(q3), "min": min(xs), "max": max(xs)}


def loadavg() -> float | None:
    """1-minute load average (None where the OS has none): how busy the machine was around a measurement."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def short_tmp(tag: str) -> Path:
    """A short private temp dir (AF_UNIX socket paths under it stay below the 107-byte limit)."""
    return Path(tempfile.mkdtemp(prefix=f"db{tag[:2]}-", dir="/tmp"))


def leaked_checkpoints(tmp: Path) -> dict[str, Any]:
    """Checkpoint scratch dirs the training left behind in ``tmp`` (tasks.ray_train.RayWorkerContext.scratch_dir)."""
    dirs = list(tmp.rglob("dskd-ckpt-*"))
    size = sum(f.stat().st_size for d in dirs for f in d.rglob("*") if f.is_file())
    return {"leaked_checkpoint_dirs": len(dirs), "leaked_checkpoint_bytes": size}


def machine() -> dict[str, Any]:
    import platform

    import torch

    info = {
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.is_available(),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    try:
        info["loadavg_1m"] = round(os.getloadavg()[0], 2)
    except OSError:
        pass
    return info


# -- result line ---------------------------------------------------------------------------------------------------


def result(measure: str, value: float, op: str, target: float, details: dict[str, Any], valid: bool = True) -> bool:
    """Print the details (one JSON line) and, as the LAST stdout line, the parseable RESULT line.

    ``valid=False`` (a figure the script itself judged to be noise) fails whatever the value."""
    if op not in ("<=", ">="):
        raise ValueError(op)
    passed = valid and (bool(value <= target) if op == "<=" else bool(value >= target))
    print("DETAILS " + json.dumps({"measure": measure, **details, "machine": machine()}, default=str), flush=True)
    print(f"RESULT measure={measure} value={value:.6g} target={op}{target:g} pass={str(passed).lower()}", flush=True)
    return passed
