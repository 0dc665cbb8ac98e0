"""Merge per-shard sense reservoirs into one, weighted by how many vectors each shard saw.

The teacher pass samples a reservoir per corpus shard (seeded by the shard's index), so the result does not
depend on which worker ran which shard. Merging two uniform samples ``a`` (of ``n_a`` vectors) and ``b`` (of
``n_b``) into a uniform sample of ``m = min(cap, n_a + n_b)`` from the union: the number taken from ``a`` is
hypergeometric (``m`` draws without replacement from ``n_a`` + ``n_b``), and that many are picked uniformly
from ``a``'s kept vectors (a uniform subset of a uniform sample is a uniform sample), the rest from ``b``.
Never more than ``a`` keeps: ``take_a <= min(n_a, m) <= min(n_a, cap) = len(a)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

__all__ = ["merge_reservoir_parts", "merge_samples", "part_paths"]


def merge_samples(
    a: np.ndarray, n_a: int, b: np.ndarray, n_b: int, cap: int, rng: np.random.Generator
) -> tuple[np.ndarray, int]:
    """(uniform sample of at most ``cap`` rows from the union of the streams behind ``a`` and ``b``, n_a + n_b)."""
    if a.shape[0] != min(n_a, cap) or b.shape[0] != min(n_b, cap):
        raise ValueError(f"a reservoir keeps min(n_seen, cap) rows: got {a.shape[0]}/{n_a}, {b.shape[0]}/{n_b}")
    total = n_a + n_b
    if total <= cap:  # nothing was ever dropped: keep every vector, a's first (stream order)
        return np.concatenate([a, b]), total
    take_a = int(rng.hypergeometric(n_a, n_b, cap)) if n_a and n_b else (cap if n_a else 0)
    pick_a = np.sort(rng.choice(a.shape[0], size=take_a, replace=False))
    pick_b = np.sort(rng.choice(b.shape[0], size=cap - take_a, replace=False))
    return np.concatenate([a[pick_a], b[pick_b]]), total


def merge_reservoir_parts(
    parts: Iterable[Iterable[tuple[int, np.ndarray, int]]], cap: int, seed: int = 0
) -> Iterator[tuple[int, np.ndarray, int]]:
    """Fold parts (each yielding ``(token_id, kept [n, d], n_seen)``) in the given order; yield merged rows by id.

    Deterministic in ``seed`` and the order of ``parts`` (pass them in shard order, not completion order).
    Memory: the merged reservoir, at most ``cap`` vectors per distinct token (as for a single stream).
    """
    rng = np.random.default_rng(seed)
    merged: dict[int, tuple[np.ndarray, int]] = {}
    for part in parts:
        for token_id, vectors, n_seen in part:
            if token_id in merged:
                merged[token_id] = merge_samples(*merged[token_id], vectors, n_seen, cap, rng)
            else:
                merged[token_id] = (vectors, n_seen)
    for token_id in sorted(merged):
        vectors, n_seen = merged[token_id]
        yield token_id, vectors, n_seen


def part_paths(parts_dir: Path) -> list[Path]:
    """Per-shard reservoir files in shard order (their names carry the zero-padded shard index)."""
    return sorted(parts_dir.glob("reservoir-*.parquet"))
