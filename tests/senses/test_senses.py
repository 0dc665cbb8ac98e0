"""Sense dictionary: reservoir, per-token k-means, span composition, safetensors round trip."""

import math

import faiss
import numpy as np
import pytest

from dskd.senses.dictionary import Reservoir, SenseTable, build_sense_table, compose_virtual_senses

# --- SenseTable ------------------------------------------------------------------------------------


def _table() -> SenseTable:
    vecs = np.arange(12, dtype=np.float32).reshape(6, 2)
    return SenseTable(vectors=vecs, offsets=np.array([0, 2, 2, 5, 6]))


def test_table_accessors():
    t = _table()
    assert t.n_ids == 4 and t.dim == 2
    assert t.n_senses().tolist() == [2, 0, 3, 1]
    assert t.senses(1).shape == (0, 2)
    np.testing.assert_array_equal(t.senses(2), [[4, 5], [6, 7], [8, 9]])
    assert t.rows(2).tolist() == [2, 3, 4]


def test_table_rejects_bad_offsets():
    with pytest.raises(ValueError):
        SenseTable(vectors=np.zeros((3, 2), np.float32), offsets=np.array([0, 2]))
    with pytest.raises(ValueError):
        SenseTable(vectors=np.zeros((3, 2), np.float32), offsets=np.array([0, 2, 1, 3]))


def test_table_save_load_round_trip(tmp_path):
    t = _table()
    t.save(tmp_path / "s.safetensors")
    back = SenseTable.load(tmp_path / "s.safetensors")
    np.testing.assert_array_equal(back.vectors, t.vectors)
    np.testing.assert_array_equal(back.offsets, t.offsets)
    assert back.vectors.dtype == np.float32 and back.offsets.dtype == np.int64
    empty = SenseTable(vectors=np.zeros((0, 7), np.float32), offsets=np.zeros(4, np.int64))
    empty.save(tmp_path / "e.safetensors")
    back = SenseTable.load(tmp_path / "e.safetensors")
    assert back.dim == 7 and back.n_ids == 3 and back.n_senses().sum() == 0


# --- Reservoir -------------------------------------------------------------------------------------


def _algorithm_r(tokens, vectors, cap, seed):
    """Sequential Algorithm R with the same draw rule: u = floor(U · (i+1)), one U per post-fill item."""
    rng = np.random.default_rng(seed)
    kept, seen = {}, {}
    for t, v in zip(tokens.tolist(), vectors, strict=True):
        i = seen.get(t, 0)
        seen[t] = i + 1
        if i < cap:
            kept.setdefault(t, []).append(v)
        else:
            u = math.floor(rng.random() * (i + 1))
            if u < cap:
                kept[t][u] = v
    return {t: np.stack(kept[t]) for t in sorted(kept)}


def _stream(n=3000, n_tokens=40, dim=3, seed=0):
    rng = np.random.default_rng(seed)
    # Zipf-ish token frequencies so some tokens overflow the cap and some never fill it.
    tokens = np.minimum(rng.zipf(1.5, size=n), n_tokens) - 1 + 1000  # large ids exercise the id map
    vectors = np.arange(n * dim, dtype=np.float32).reshape(n, dim)
    return tokens, vectors


@pytest.mark.parametrize("cap", [1, 7, 50])
def test_reservoir_matches_sequential_algorithm_r_for_any_batching(cap):
    tokens, vectors = _stream()
    expected = _algorithm_r(tokens, vectors, cap, seed=5)
    for cuts in ([3000], [1, 2, 997, 1000, 1000], [13] * 230 + [10]):
        res = Reservoir(cap=cap, dim=3, seed=5)
        lo = 0
        for c in cuts:
            res.add(tokens[lo : lo + c], vectors[lo : lo + c])
            lo += c
        got = dict(res.items())
        assert list(got) == list(expected)
        for t in expected:
            np.testing.assert_array_equal(got[t], expected[t])
            assert got[t].shape[0] == min(cap, int((tokens == t).sum()))


def test_reservoir_keeps_everything_below_cap_in_order():
    res = Reservoir(cap=10, dim=2)
    tok = np.array([4, 1, 4, 4])
    vec = np.arange(8, dtype=np.float32).reshape(4, 2)
    res.add(tok, vec)
    got = dict(res.items())
    np.testing.assert_array_equal(got[1], vec[[1]])
    np.testing.assert_array_equal(got[4], vec[[0, 2, 3]])
    assert res.n_seen() == {4: 3, 1: 1} and len(res) == 2


def test_reservoir_is_seeded():
    tokens, vectors = _stream(n=2000, n_tokens=3)
    runs = []
    for seed in (0, 0, 1):
        res = Reservoir(cap=20, dim=3, seed=seed)
        res.add(tokens, vectors)
        runs.append(np.concatenate([v for _, v in res.items()]))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def test_reservoir_is_roughly_uniform():
    # 1000 items of one token, cap 50: each item must survive with prob 50/1000 = 0.05. Over 300 seeds, each
    # tenth of the stream (100 items) is kept 300 · 100 · 0.05 = 1500 times in expectation (sd ≈ 37 for
    # independent draws); allow ±15 %. The first and last 50 items (the "filled" and the "late" ones) too.
    n, cap, seeds = 1000, 50, 300
    hits = np.zeros(n)
    tok = np.zeros(n, dtype=np.int64)
    vec = np.arange(n, dtype=np.float32)[:, None]
    for seed in range(seeds):
        res = Reservoir(cap=cap, dim=1, seed=seed)
        res.add(tok, vec)
        ((_, kept),) = list(res.items())
        assert kept.shape == (cap, 1) and np.unique(kept).size == cap
        hits[kept[:, 0].astype(int)] += 1
    per_tenth = hits.reshape(10, 100).sum(1)
    assert np.all(np.abs(per_tenth - 1500) < 0.15 * 1500), per_tenth
    assert abs(hits[:50].sum() - 750) < 0.25 * 750 and abs(hits[-50:].sum() - 750) < 0.25 * 750


def test_reservoir_rejects_bad_input():
    res = Reservoir(cap=3, dim=2)
    with pytest.raises(ValueError):
        res.add(np.array([1, 2]), np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError):
        res.add(np.array([-1]), np.zeros((1, 2), np.float32))


# --- build_sense_table -----------------------------------------------------------------------------


def test_build_keeps_raw_vectors_for_small_tokens_and_skips_absent():
    rng = np.random.default_rng(0)
    few = rng.standard_normal((3, 4)).astype(np.float32)
    exactly_k = rng.standard_normal((5, 4)).astype(np.float32)
    many = rng.standard_normal((40, 4)).astype(np.float32)
    table = build_sense_table([(2, few), (0, many), (5, exactly_k)], n_ids=7, dim=4, k=5, use_gpu=False)
    assert table.n_senses().tolist() == [5, 0, 3, 0, 0, 5, 0]
    np.testing.assert_array_equal(table.senses(2), few)
    np.testing.assert_array_equal(table.senses(5), exactly_k)
    # Same algorithm and parameters as faiss.Kmeans (the shared index is only a speed-up).
    km = faiss.Kmeans(
        4,
        5,
        niter=20,
        seed=0,
        min_points_per_centroid=1,
        max_points_per_centroid=1 << 30,
        init_method=faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS,
    )
    km.train(many)
    np.testing.assert_allclose(table.senses(0), km.centroids, rtol=1e-5, atol=1e-6)


def test_build_recovers_blob_centres():
    rng = np.random.default_rng(1)
    centres = np.array([[10.0, 0, 0, 0], [0, 10.0, 0, 0], [0, 0, 10.0, 0]], dtype=np.float32)
    pts = np.concatenate([c + 0.05 * rng.standard_normal((30, 4)) for c in centres]).astype(np.float32)
    pts = pts[rng.permutation(len(pts))]
    table = build_sense_table([(1, pts)], n_ids=2, dim=4, k=3, seed=3, use_gpu=False)
    got = table.senses(1)
    # match each centroid to its nearest true centre: a bijection, each within noise
    nearest = np.argmin(((got[:, None] - centres[None]) ** 2).sum(-1), axis=1)
    assert sorted(nearest.tolist()) == [0, 1, 2]
    np.testing.assert_allclose(got, centres[nearest], atol=0.05)


def test_build_rejects_bad_items():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ValueError):
        build_sense_table([(0, x), (0, x)], n_ids=2, dim=3, k=2, use_gpu=False)
    with pytest.raises(ValueError):
        build_sense_table([(5, x)], n_ids=2, dim=3, k=2, use_gpu=False)
    with pytest.raises(ValueError):
        build_sense_table([(0, x)], n_ids=2, dim=4, k=2, use_gpu=False)


def test_build_from_reservoir_end_to_end():
    tokens, vectors = _stream(n=600, n_tokens=5, dim=3)
    res = Reservoir(cap=30, dim=3)
    res.add(tokens, vectors)
    table = build_sense_table(res.items(), n_ids=1010, dim=3, k=4, use_gpu=False)
    counts = table.n_senses()
    for t in range(1000, 1005):
        assert counts[t] == min(4, int((tokens == t).sum()))
    assert counts[:1000].sum() == 0


# --- compose_virtual_senses ------------------------------------------------------------------------


def _hand_table() -> SenseTable:
    # token 0: (0,0), (10,0); token 1: (1,0), (9,0), (5,5); token 2: (0,2); token 3: none;
    # token 4: (4,0); token 5: (3.5,0), (1.5,0)
    rows = [[0, 0], [10, 0], [1, 0], [9, 0], [5, 5], [0, 2], [4, 0], [3.5, 0], [1.5, 0]]
    return SenseTable(vectors=np.array(rows, np.float32), offsets=np.array([0, 2, 5, 6, 6, 7, 9]))


def test_compose_by_hand():
    spans = [[0, 1], [0, 1, 2], [0, 3], [0, 4, 5]]
    out = compose_virtual_senses(_hand_table(), vocab_size=6, virtual_spans=spans)
    assert out.n_ids == 10
    np.testing.assert_array_equal(out.vectors[:9], _hand_table().vectors)  # token senses untouched
    # [0,1]: start (0,0) -> nearest of token 1 is (1,0) -> mean (0.5, 0); start (10,0) -> (9,0) -> (9.5, 0).
    np.testing.assert_allclose(out.senses(6), [[0.5, 0], [9.5, 0]])
    # [0,1,2]: chains (0,0),(1,0),(0,2) -> (1/3, 2/3); (10,0),(9,0),(0,2) -> (19/3, 2/3).
    np.testing.assert_allclose(out.senses(7), [[1 / 3, 2 / 3], [19 / 3, 2 / 3]], rtol=1e-6)
    # [0,3]: token 3 has no senses -> none.
    assert out.senses(8).shape == (0, 2)
    # [0,4,5]: chain (0,0),(4,0); running mean (2,0) picks (1.5,0) (the last element alone would pick (3.5,0))
    #   -> ((0 + 4 + 1.5)/3, 0) = (1.8333, 0); the other start of token 0, (10,0): (10+4+3.5)/3 = 5.8333.
    np.testing.assert_allclose(out.senses(9), [[5.5 / 3, 0], [17.5 / 3, 0]], rtol=1e-6)


def test_compose_samples_starts_and_replaces_old_virtual_ids():
    base = _hand_table()
    out = compose_virtual_senses(base, 6, [[1, 2]], n_samples=2, seed=0)
    got = out.senses(6)
    # two distinct starts among token 1's three senses, each averaged with (0,2)
    candidates = (base.senses(1) + np.array([0, 2], np.float32)) / 2
    assert got.shape == (2, 2)
    assert all(any(np.allclose(g, c) for c in candidates) for g in got) and not np.allclose(got[0], got[1])
    again = compose_virtual_senses(out, 6, [[0, 1]])  # ids >= vocab_size of the input are rebuilt
    assert again.n_ids == 7
    np.testing.assert_allclose(again.senses(6), [[0.5, 0], [9.5, 0]])
