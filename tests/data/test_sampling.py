"""Sense-loss position sampling (method.md §4)."""

import numpy as np
import pytest

from dskd.data.sampling import sample_sense_positions, sense_sample_size

L = 300


# |A| -> n: min(25, |A|) unless ⌊0.4·|A|⌋ > 25: 0 -> 0, 10 -> 10, 25 -> 25 (⌊10⌋ = 10),
# 63 -> 25 (⌊25.2⌋ = 25 is not > 25), 70 -> 28 (⌊28⌋ > 25), 200 -> 80.
@pytest.mark.parametrize(("n_a", "expected"), [(0, 0), (10, 10), (25, 25), (63, 25), (70, 28), (200, 80)])
def test_counts_follow_the_rule(n_a, expected):
    assert sense_sample_size(n_a) == expected
    rng = np.random.default_rng(n_a)
    has = np.zeros(L, bool)
    has[rng.choice(L, n_a, replace=False)] = True
    full, pos_only = sample_sense_positions(has, np.random.default_rng(0))
    assert full.size == pos_only.size == expected
    assert full.dtype == pos_only.dtype == np.int64
    for arr in (full, pos_only):
        assert np.all(np.diff(arr) > 0)  # sorted, no repeats
    assert has[full].all()
    assert pos_only.size == 0 or (pos_only.min() >= 0 and pos_only.max() < L)


def test_custom_max_and_frac():
    assert sense_sample_size(10, max_n=3, frac=0.5) == 5  # ⌊5⌋ > 3
    assert sense_sample_size(10, max_n=8, frac=0.5) == 8


def test_seeded_and_positive_only_spans_all_positions():
    has = np.zeros(L, bool)
    has[:40] = True  # A = first 40 positions -> n = 25
    a = sample_sense_positions(has, np.random.default_rng(1))
    b = sample_sense_positions(has, np.random.default_rng(1))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    # The positive-only draw is uniform over all L positions, not restricted to A (overlap is allowed).
    drawn = np.concatenate([sample_sense_positions(has, np.random.default_rng(s))[1] for s in range(20)])
    assert (drawn >= 40).mean() > 0.7
