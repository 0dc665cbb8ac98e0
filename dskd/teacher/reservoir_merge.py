"""Merge per-shard sense reservoirs into one, weighted by how many vectors each shard saw.

The teacher pass samples a reservoir per corpus shard (seeded by the shard's index), so the result does not
depend on which worker ran which shard. Merging two uniform samples ``a`` (of ``n_a`` vectors) and ``b`` (of
``n_b``) into a uniform sample of ``m = min(cap, n_a + n_b)`` from the union: the number taken from ``a`` is
hypergeometric (``m`` draws without replacement from ``n_a`` + ``n_b``), and that many are picked uniformly
from ``a``'s kept vectors (a uniform subset of a uniform sample is a uniform sample), the rest from ``b``.
Never more than ``a`` keeps: ``take_a <= min(n_a, m) <= min(n_a, cap) = len(a)``.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

__all__ = ["merge_batch_rows", "merge_reservoir_parts", "merge_samples", "part_paths"]


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
    """Merge parts (each yielding ``(token_id, kept [n, d], n_seen)`` by increasing token id); yield merged rows
    by token id.

    A streaming k-way merge: for each token id, its rows are folded in part order (pass the parts in shard order,
    not completion order). Deterministic in ``seed`` and that order. Memory: one read batch per part plus one
    token's rows, not the merged reservoir (O(distinct tokens x cap x d) for a large teacher).
    """
    rng = np.random.default_rng(seed)
    tagged = [((t, i, v, s) for t, v, s in part) for i, part in enumerate(parts)]
    stream = heapq.merge(*tagged, key=lambda row: (row[0], row[1]))
    for token_id, group in itertools.groupby(stream, key=lambda row: row[0]):
        rows = iter(group)
        _, _, vectors, n_seen = next(rows)
        for _, _, more, n_more in rows:
            vectors, n_seen = merge_samples(vectors, n_seen, more, n_more, cap, rng)
        yield int(token_id), vectors, n_seen


def merge_batch_rows(memory_bytes: int, n_parts: int, cap: int, dim: int) -> int:
    """Rows to read per part so that one batch of every part fits ``memory_bytes`` (at least 1)."""
    return max(1, int(memory_bytes) // max(1, n_parts * cap * dim * 2))


def part_paths(parts_dir: Path) -> list[Path]:
    """Per-shard reservoir files in shard order (their names carry the zero-padded shard index)."""
    return sorted(parts_dir.glob("reservoir-*.parquet"))
