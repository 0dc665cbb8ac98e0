"""The reservoir within a memory budget: spilled runs merge back to exactly the unbounded reservoir."""

from __future__ import annotations

import numpy as np
import pytest

from dskd.senses.dictionary import Reservoir
from dskd.teacher.reservoir import RUN_FAN_IN, BoundedReservoir, reservoir_file_rows, write_reservoir
from dskd.teacher.reservoir_merge import merge_batch_rows, merge_reservoir_parts

DIM, CAP = 3, 4


def _stream(seed: int, n: int = 600, vocab: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.zipf(1.6, n) % vocab  # skewed: some tokens far past the cap, some seen once
    return tokens, rng.normal(size=(n, DIM)).astype(np.float32)


def _feed(res, tokens, vectors, batch: int) -> None:
    for s in range(0, tokens.size, batch):
        res.add(tokens[s : s + batch], vectors[s : s + batch])


def test_unbounded_keeps_exactly_what_reservoir_keeps():
    tokens, vectors = _stream(0)
    ref, ours = Reservoir(CAP, DIM, seed=5, dtype=np.float16), BoundedReservoir(CAP, DIM, seed=5)
    _feed(ref, tokens, vectors, 37)
    _feed(ours, tokens, vectors, 37)
    want, got = list(ref.items()), list(ours.items())
    assert [t for t, _ in got] == [t for t, _ in want]
    for (_, a), (_, b) in zip(want, got, strict=True):
        np.testing.assert_array_equal(a, b)
    assert ours.n_seen() == ref.n_seen()


@pytest.mark.parametrize("budget_rows", [2, 7, 40])
def test_tiny_budget_spills_and_gives_the_same_reservoir(tmp_path, budget_rows):
    tokens, vectors = _stream(1)
    row_bytes = DIM * 2 + 16
    unbounded = BoundedReservoir(CAP, DIM, seed=3)
    bounded = BoundedReservoir(CAP, DIM, seed=3, memory_bytes=budget_rows * row_bytes, spill_dir=tmp_path / "spill")
    _feed(unbounded, tokens, vectors, 16)
    _feed(bounded, tokens, vectors, 16)
    assert bounded.spills >= 3  # it did spill, several times
    if budget_rows == 2:  # so often that runs of one tier were merged into the next (tiered k-way merges)
        assert bounded.spills > RUN_FAN_IN and len(bounded.runs) < bounded.spills
    assert sorted(p.name for p in (tmp_path / "spill").iterdir()) == [p.name for p in bounded.runs]
    want, got = list(unbounded.rows()), list(bounded.rows())
    assert [(t, s) for t, _, s in got] == [(t, s) for t, _, s in want]
    assert sum(s for _, _, s in got) == tokens.size
    for (_, a, s), (_, b, _) in zip(want, got, strict=True):
        assert b.shape == (min(s, CAP), DIM)
        np.testing.assert_array_equal(a, b)
    bounded.close()
    assert not list((tmp_path / "spill").iterdir())


def test_a_budget_without_a_spill_dir_is_refused():
    with pytest.raises(ValueError, match="spill_dir"):
        BoundedReservoir(CAP, DIM, memory_bytes=1024)


def test_part_merge_reads_a_few_rows_per_part_and_gives_the_same_result(tmp_path):
    paths = []
    for part in range(4):
        tokens, vectors = _stream(10 + part, n=200)
        res = BoundedReservoir(CAP, DIM, seed=part)
        _feed(res, tokens, vectors, 50)
        paths.append(tmp_path / f"reservoir-{part:05d}.parquet")
        write_reservoir(res.rows(), paths[-1])

    def merged(batch_rows):
        parts = (reservoir_file_rows(p, DIM, batch_rows) for p in paths)
        return list(merge_reservoir_parts(parts, cap=CAP, seed=0))

    small, large = merged(1), merged(512)
    assert [(t, s) for t, _, s in small] == [(t, s) for t, _, s in large]
    assert all(np.array_equal(a, b) for (_, a, _), (_, b, _) in zip(small, large, strict=True))
    assert sum(s for _, _, s in small) == 4 * 200
    # One batch of each of 245 parts (Llama-3 shards) of 50 x 4096 float16 rows within 8 GiB: 85 rows each.
    assert merge_batch_rows(8 << 30, 245, 50, 4096) == (8 << 30) // (245 * 50 * 4096 * 2) == 85
    assert merge_batch_rows(1, 4, CAP, DIM) == 1
