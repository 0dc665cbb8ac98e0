"""Exact nearest-sense candidates against a numpy brute force (method.md §3)."""

import numpy as np
import pytest

import dskd.senses.candidates as cand
from dskd.lexicon.types import ANTONYM, SYNONYM, TokenLexicon
from dskd.senses.candidates import select_candidates
from dskd.senses.dictionary import SenseTable

VOCAB, DIM = 30, 8


def _world(seed=0, max_deg=6, n_spans=3):
    """Random table (0-6 senses per id, some ids without any), lexicon with real and virtual tails."""
    rng = np.random.default_rng(seed)
    spans = [[int(a), int(b)] for a, b in rng.integers(0, VOCAB, size=(n_spans, 2))]
    n_ids = VOCAB + n_spans
    counts = rng.integers(0, 7, size=n_ids)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    vectors = rng.standard_normal((offsets[-1], DIM)).astype(np.float32)
    heads, tails, rel = [], [], []
    for h in range(VOCAB):
        for relation in (SYNONYM, ANTONYM):
            deg = int(rng.integers(0, max_deg + 1))
            for t in rng.choice(n_ids, size=deg, replace=False).tolist():
                if t != h:
                    heads.append(h), tails.append(t), rel.append(relation)
    lex = TokenLexicon(VOCAB, np.array(heads), np.array(tails), np.array(rel, np.int8), spans)
    return SenseTable(vectors, offsets), lex


def _related(lex, h, relation):
    sel = (lex.heads == h) & (lex.relation == relation)
    return sorted(set(lex.tails[sel].tolist()) - {h})


def _brute(table, q, pool_ids, kappa):
    rows = np.concatenate([table.rows(i) for i in pool_ids]) if pool_ids else np.empty(0, np.int64)
    rows = np.unique(rows)
    d2 = ((table.vectors[rows].astype(np.float64) - q.astype(np.float64)) ** 2).sum(-1)
    top = rows[np.lexsort((rows, d2))][:kappa]
    return np.concatenate([top, np.full(kappa - top.size, -1)])


def _queries(m, seed):
    rng = np.random.default_rng(seed)
    return (
        rng.standard_normal((m, DIM)).astype(np.float32),
        rng.integers(0, VOCAB, size=m),
        rng.random(m) < 0.6,
    )


@pytest.mark.parametrize("self_in_both", [True, False])
def test_matches_brute_force_without_sampling(self_in_both):
    table, lex = _world()
    q, y, full = _queries(400, seed=1)
    kappa = 5
    pos, neg = select_candidates(table, q, y, full, lex, kappa=kappa, max_related=25, self_in_both_pools=self_in_both)
    assert pos.shape == neg.shape == (400, kappa) and pos.dtype == np.int64
    for i in range(400):
        yi = int(y[i])
        if not full[i]:
            np.testing.assert_array_equal(pos[i], _brute(table, q[i], [yi], kappa))
            assert (neg[i] == -1).all()
            continue
        np.testing.assert_array_equal(pos[i], _brute(table, q[i], [yi, *_related(lex, yi, SYNONYM)], kappa))
        ants = _related(lex, yi, ANTONYM)
        if not ants:  # reference: no antonyms -> no negative pool, even with y's own senses available
            assert (neg[i] == -1).all()
        else:
            pool = ([yi] if self_in_both else []) + ants
            np.testing.assert_array_equal(neg[i], _brute(table, q[i], pool, kappa))
    assert (pos == -1).any() and (pos >= 0).any()  # the fixture does exercise -1 padding


def test_self_in_both_pools_switch():
    # y = 0 with senses rows 0..2, one antonym (1) with rows 3..4; kappa large -> the whole pool comes back.
    vecs = np.arange(12, dtype=np.float32).reshape(6, 2)
    table = SenseTable(vecs, np.array([0, 3, 5, 6]))
    lex = TokenLexicon(3, np.array([0, 0]), np.array([1, 2]), np.array([ANTONYM, SYNONYM], np.int8))
    q = np.zeros((1, 2), np.float32)
    _, neg_on = select_candidates(table, q, np.array([0]), np.array([True]), lex, kappa=8)
    _, neg_off = select_candidates(table, q, np.array([0]), np.array([True]), lex, kappa=8, self_in_both_pools=False)
    assert neg_on[0].tolist() == [0, 1, 2, 3, 4, -1, -1, -1]
    assert neg_off[0].tolist() == [3, 4, -1, -1, -1, -1, -1, -1]
    pos, _ = select_candidates(table, q, np.array([0]), np.array([True]), lex, kappa=8, self_in_both_pools=False)
    assert pos[0].tolist() == [0, 1, 2, 5, -1, -1, -1, -1]  # positives always hold y's own senses


def test_positive_only_rows_and_missing_senses():
    vecs = np.array([[0, 0], [5, 5], [1, 1]], np.float32)
    table = SenseTable(vecs, np.array([0, 2, 2, 3]))  # token 1 has no senses
    lex = TokenLexicon(3, np.array([0, 1]), np.array([2, 0]), np.array([ANTONYM, SYNONYM], np.int8))
    q = np.array([[4, 4], [4, 4], [0, 0]], np.float32)
    pos, neg = select_candidates(table, q, np.array([0, 0, 1]), np.array([False, True, True]), lex, kappa=2)
    assert pos.tolist() == [[1, 0], [1, 0], [0, 1]]  # y=1 has no senses: its pool is its synonym's
    assert neg.tolist() == [[-1, -1], [1, 2], [-1, -1]]  # positive-only row: no negatives


def test_ties_are_broken_by_row_index():
    vecs = np.array([[1, 0], [0, 1], [1, 0], [0, 1], [-1, 0]], np.float32)  # rows 0/2 and 1/3 are equal
    table = SenseTable(vecs, np.array([0, 2, 4, 5]))
    lex = TokenLexicon(3, np.array([0, 0]), np.array([1, 2]), np.array([SYNONYM, SYNONYM], np.int8))
    q = np.zeros((30, 2), np.float32)  # every row is at distance 1: pure tie, order = row order
    pos, _ = select_candidates(table, q, np.zeros(30, np.int64), np.ones(30, bool), lex, kappa=3)
    assert (pos == [0, 1, 2]).all()


def _many_synonyms_world(n_syn=12):
    rng = np.random.default_rng(7)
    n_ids = n_syn + 1
    counts = np.r_[2, rng.integers(1, 4, size=n_syn)]  # every synonym has senses
    table = SenseTable(rng.standard_normal((counts.sum(), DIM)).astype(np.float32), np.r_[0, np.cumsum(counts)])
    lex = TokenLexicon(n_ids, np.zeros(n_syn, np.int64), np.arange(1, n_ids), np.full(n_syn, SYNONYM, np.int8))
    return table, lex


def test_sampled_pools_are_exact_on_their_sample():
    table, lex = _many_synonyms_world()
    m, max_related = 200, 5
    q = np.random.default_rng(8).standard_normal((m, DIM)).astype(np.float32)
    y, full = np.zeros(m, np.int64), np.ones(m, bool)
    # kappa larger than any pool: each row lists its whole pool, so the sampled subset can be read back.
    big, _ = select_candidates(table, q, y, full, lex, kappa=64, max_related=max_related, seed=3)
    owner = np.repeat(np.arange(table.n_ids), table.n_senses())
    subsets = set()
    for i in range(m):
        rows = big[i][big[i] >= 0]
        ids = sorted(set(owner[rows].tolist()))
        assert ids[0] == 0 and len(ids) == 1 + max_related  # y itself + exactly max_related synonyms
        np.testing.assert_array_equal(big[i], _brute(table, q[i], ids, 64))
        subsets.add(tuple(ids))
    assert len(subsets) > 50  # sampled per position, not once per head
    # Same seed, small kappa: the same subsets, so the prefix of the full ranking.
    small, _ = select_candidates(table, q, y, full, lex, kappa=3, max_related=max_related, seed=3)
    np.testing.assert_array_equal(small, big[:, :3])
    other, _ = select_candidates(table, q, y, full, lex, kappa=3, max_related=max_related, seed=4)
    assert not np.array_equal(other, small)


def test_chunked_full_ranking_is_identical(monkeypatch):
    table, lex = _many_synonyms_world()
    q = np.random.default_rng(9).standard_normal((150, DIM)).astype(np.float32)
    args = (table, q, np.zeros(150, np.int64), np.ones(150, bool), lex)
    ref = select_candidates(*args, kappa=4, max_related=3)
    monkeypatch.setattr(cand, "_MAX_CELLS", 64)  # forces chunks of a few queries
    got = select_candidates(*args, kappa=4, max_related=3)
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])


def test_empty_and_bad_input():
    table, lex = _world()
    pos, neg = select_candidates(table, np.zeros((0, DIM), np.float32), np.zeros(0, np.int64), np.zeros(0, bool), lex)
    assert pos.shape == neg.shape == (0, 5)
    with pytest.raises(ValueError):
        select_candidates(table, np.zeros((1, DIM), np.float32), np.array([VOCAB]), np.array([True]), lex)
    small = SenseTable(table.vectors[:0], np.zeros(VOCAB + 1, np.int64))  # lacks the virtual ids
    with pytest.raises(ValueError):
        select_candidates(small, np.zeros((1, DIM), np.float32), np.array([0]), np.array([True]), lex)
