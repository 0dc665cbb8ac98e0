"""Live training progress on the driver: rank 0 pushes each step's metrics to a tiny Ray actor (fire and forget,
so a worker never waits on it); a driver thread polls it and drives a tqdm bar (steps, loss, tokens/s, ETA).

Ray Train V2 does not hand per-step reports to the driver while ``fit()`` runs, and worker output is not
forwarded (``log_to_driver=False``), hence the side channel. The bar is off when stderr is not a terminal.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

import ray
from tqdm.auto import tqdm


@ray.remote(num_cpus=0)
class ProgressBoard:
    """The latest step's metrics, written by rank 0 and read by the driver."""

    def __init__(self) -> None:
        self.latest: dict[str, float] = {}

    def update(self, metrics: dict[str, float]) -> None:
        self.latest = metrics

    def read(self) -> dict[str, float]:
        return self.latest


class TrainProgress:
    """A tqdm bar fed by ``fetch()`` (the latest metrics dict, or {}) every ``interval`` s from a daemon thread."""

    def __init__(
        self, fetch: Callable[[], dict[str, Any]], interval: float = 1.0, file=None, disable: bool | None = None
    ) -> None:
        self.fetch = fetch
        self.interval = interval
        stream = file if file is not None else sys.stderr
        off = not stream.isatty() if disable is None else disable
        self.bar = tqdm(total=None, desc="train", unit="step", file=stream, disable=off, dynamic_ncols=True)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dskd-train-progress", daemon=True)

    def show(self, metrics: dict[str, Any]) -> None:
        """Move the bar to ``metrics['step']`` of ``metrics['total_steps']`` with loss and tokens/s."""
        if not metrics or "step" not in metrics:
            return
        total = metrics.get("total_steps")
        if total and self.bar.total != int(total):
            self.bar.total = int(total)
        postfix = {}
        if "loss_total" in metrics:
            postfix["loss"] = f"{metrics['loss_total']:.4g}"
        if "tokens_per_second" in metrics:
            postfix["tok/s"] = f"{metrics['tokens_per_second']:.0f}"
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(int(metrics["step"]) - self.bar.n)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        try:
            self.show(self.fetch())
        except Exception:  # noqa: BLE001 - progress must never fail a training run
            pass

    def __enter__(self) -> TrainProgress:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        if exc[0] is None:
            self.poll()  # the final step
        self.bar.close()


def board_progress(board) -> TrainProgress:
    """A :class:`TrainProgress` reading a :class:`ProgressBoard` actor."""
    return TrainProgress(lambda: ray.get(board.read.remote(), timeout=10))
