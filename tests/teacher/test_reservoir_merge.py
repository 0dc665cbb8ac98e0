"""Merging per-shard reservoirs: sizes, determinism and uniformity over the union of the streams."""

from __future__ import annotations

import numpy as np
import pytest

from dskd.senses.dictionary import Reservoir
from dskd.teacher.cache import reservoir_file_rows, reservoir_rows, write_reservoir
from dskd.teacher.reservoir_merge import merge_reservoir_parts, merge_samples


def _sample(items: np.ndarray, cap: int, seed: int) -> tuple[np.ndarray, int]:
    res = Reservoir(cap=cap, dim=1, seed=seed)
    res.add(np.zeros(items.size, np.int64), items[:, None].astype(np.float32))
    ((_, kept),) = list(res.items())
    return kept, items.size


def test_small_streams_keep_everything_in_order():
    a, b = np.array([[1.0], [2.0]]), np.array([[3.0]])
    merged, seen = merge_samples(a, 2, b, 1, cap=5, rng=np.random.default_rng(0))
    assert seen == 3
    np.testing.assert_array_equal(merged, [[1.0], [2.0], [3.0]])


def test_merged_sample_is_uniform_over_the_union():
    # Streams of 90 (items 0..89) and 10 (items 90..99) vectors, cap 10: in the union every item must be kept
    # with probability 10/100 = 0.1, so over 2000 seeds the first stream gives 2000 · 10 · 0.9 = 18000 kept
    # rows and the second 2000 · 10 · 0.1 = 2000 (a per-part cap-sized merge without weights would give ~50/50).
    # Each item: 2000 · 0.1 = 200 expected hits (binomial sd ≈ 13.4); allow ±30 % per item.
    hits = np.zeros(100)
    for seed in range(2000):
        a, n_a = _sample(np.arange(90), 10, seed)
        b, n_b = _sample(np.arange(90, 100), 10, seed + 7919)
        merged, seen = merge_samples(a, n_a, b, n_b, cap=10, rng=np.random.default_rng(seed))
        assert seen == 100 and merged.shape == (10, 1) and np.unique(merged).size == 10
        hits[merged[:, 0].astype(int)] += 1
    assert abs(hits[:90].sum() - 18000) < 400 and abs(hits[90:].sum() - 2000) < 400
    assert np.all(np.abs(hits - 200) < 60), hits


def test_merge_refuses_a_sample_that_is_not_a_reservoir():
    with pytest.raises(ValueError, match="min\\(n_seen, cap\\)"):
        merge_samples(np.zeros((3, 1)), 10, np.zeros((1, 1)), 1, cap=5, rng=np.random.default_rng(0))


def test_parts_fold_by_token_and_are_deterministic(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for part in range(3):
        res = Reservoir(cap=4, dim=2, seed=part, dtype=np.float16)
        tokens = rng.integers(0, 6, 40) if part < 2 else np.array([99])  # token 99 only in the last part
        res.add(tokens, rng.normal(size=(tokens.size, 2)))
        paths.append(tmp_path / f"reservoir-{part:05d}.parquet")
        write_reservoir(reservoir_rows(res), paths[-1])
    seen_per_part = [{t: s for t, _, s in reservoir_file_rows(p, 2)} for p in paths]

    def merged(seed):
        return list(merge_reservoir_parts((reservoir_file_rows(p, 2) for p in paths), cap=4, seed=seed))

    rows = merged(0)
    assert [t for t, _, _ in rows] == sorted({t for s in seen_per_part for t in s})
    for token_id, vectors, n_seen in rows:
        assert n_seen == sum(s.get(token_id, 0) for s in seen_per_part)  # weights add up
        assert vectors.shape == (min(4, n_seen), 2) and vectors.dtype == np.float16
    assert all(np.array_equal(x[1], y[1]) for x, y in zip(rows, merged(0), strict=True))
    assert not all(np.array_equal(x[1], y[1]) for x, y in zip(rows, merged(1), strict=True))
