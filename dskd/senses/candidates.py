"""Exact nearest-sense candidate selection per sampled position (method.md §3).

For a position with next token y and teacher hidden state h:

* full position (y has lexicon entries): positive pool = senses of y ∪ senses of up to ``max_related``
  randomly sampled synonyms of y; negative pool = [senses of y] ∪ senses of up to ``max_related`` sampled
  antonyms — built only when y has antonyms, as in the reference.
* positive-only position: positive pool = senses of y; no negatives.

P_t / N_t = the ``kappa`` pool rows nearest to h in squared L2, found by an exhaustive (exact) faiss search
restricted to the pool. Output rows index ``SenseTable.vectors``; -1 pads pools smaller than ``kappa``.
"""

from __future__ import annotations

import faiss
import numpy as np

from dskd.lexicon.types import ANTONYM, SYNONYM, TokenLexicon
from dskd.senses.dictionary import SenseTable, resolve_faiss_gpu

# faiss GPU brute-force k-selection is limited to k <= 2048; larger full rankings run on the CPU.
_GPU_MAX_K = 2048
# Bound on queries x pool-rows per full-ranking call (distances + ids + masks stay well under 100 MB).
_MAX_CELLS = 1 << 21


class _Knn:
    """Exact k-NN (squared L2) over a small database: faiss.knn on CPU, faiss.knn_gpu on GPU."""

    def __init__(self, use_gpu: bool) -> None:
        self.res = faiss.StandardGpuResources() if use_gpu else None

    def __call__(self, xq: np.ndarray, xb: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        xb = np.ascontiguousarray(xb, dtype=np.float32)
        if self.res is not None and k <= _GPU_MAX_K:
            dist, idx = faiss.knn_gpu(self.res, xq, xb, k)
        else:
            dist, idx = faiss.knn(xq, xb, k)
        # Ties: stable by database index (pools are passed in ascending row order, so = by row index).
        order = np.lexsort((idx, dist), axis=-1)
        return np.take_along_axis(dist, order, -1), np.take_along_axis(idx, order, -1)


def _rows_of(table: SenseTable, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sense rows of ``ids`` concatenated, and for each row the index into ``ids`` it came from."""
    starts = table.offsets[ids]
    counts = table.offsets[ids + 1] - starts
    owner = np.repeat(np.arange(ids.size, dtype=np.int64), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    rows = np.repeat(starts, counts) + np.arange(owner.size, dtype=np.int64) - first
    return rows, owner


def _related(indptr: np.ndarray, ids: np.ndarray, y: int) -> np.ndarray:
    # Distinct tails, y itself excluded (its senses enter the pools explicitly, never via sampling).
    tails = np.unique(ids[indptr[y] : indptr[y + 1]])
    return tails[tails != y]


def select_candidates(
    table: SenseTable,
    queries: np.ndarray,
    next_tokens: np.ndarray,
    full: np.ndarray,
    lexicon: TokenLexicon,
    kappa: int = 5,
    max_related: int = 25,
    self_in_both_pools: bool = True,
    seed: int = 0,
    use_gpu: bool | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``kappa`` positive and negative sense rows per position (method.md §3).

    Args:
        table: sense table covering ``lexicon.n_ids`` ids (tokens + virtual spans).
        queries: teacher hidden states ``[M, d]`` at the positions.
        next_tokens: next token y per position ``[M]`` (real token ids).
        full: ``[M]`` True for a full (syn + ant) position, False for a positive-only one.
        lexicon: head token -> synonym / antonym ids.
        kappa: candidates kept per pool.
        max_related: synonyms (resp. antonyms) sampled per position when y has more.
        self_in_both_pools: put y's own senses into the negative pool too (reference behaviour).
        seed: seeds the per-position sampling of related ids.
        use_gpu: faiss GPU search; None = when faiss sees a GPU.

    Returns:
        ``(pos_rows, neg_rows)``, each int64 ``[M, kappa]`` of rows into ``table.vectors`` ordered by
        increasing distance (ties by row index), -1 padded.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    next_tokens = np.asarray(next_tokens, dtype=np.int64).reshape(-1)
    full = np.asarray(full, dtype=bool).reshape(-1)
    m = queries.shape[0]
    if next_tokens.size != m or full.size != m:
        raise ValueError("queries, next_tokens and full must have the same length")
    if m and queries.shape[1] != table.dim:
        raise ValueError(f"queries have width {queries.shape[1]}, senses {table.dim}")
    if table.n_ids < lexicon.n_ids:
        raise ValueError(f"sense table covers {table.n_ids} ids, lexicon needs {lexicon.n_ids}")
    if m and (next_tokens.min() < 0 or next_tokens.max() >= lexicon.vocab_size):
        raise ValueError("next_tokens must be real token ids in [0, vocab_size)")

    pos_out = np.full((m, kappa), -1, dtype=np.int64)
    neg_out = np.full((m, kappa), -1, dtype=np.int64)
    if m == 0 or kappa == 0:
        return pos_out, neg_out

    sel = _Selector(table, kappa, max_related, np.random.default_rng(seed), _Knn(resolve_faiss_gpu(use_gpu)))
    syn_ptr, syn_ids = lexicon.csr(SYNONYM)
    ant_ptr, ant_ids = lexicon.csr(ANTONYM)

    # Group positions by y: every pool is built from y's lexicon entries, so one search serves all positions
    # of a y (deterministic order: y ascending, positions ascending within y).
    order = np.argsort(next_tokens, kind="stable")
    ys, starts = np.unique(next_tokens[order], return_index=True)
    bounds = np.append(starts, m)
    for y, lo, hi in zip(ys.tolist(), bounds[:-1].tolist(), bounds[1:].tolist(), strict=True):
        idx = order[lo:hi]
        own = table.rows(y)
        po, fu = idx[~full[idx]], idx[full[idx]]
        if po.size:
            pos_out[po] = sel.fixed(queries[po], own)
        if fu.size == 0:
            continue
        q = queries[fu]
        # The positive pool always holds y's own senses (method.md §3). NB: the reference only builds a
        # positive pool when y has synonyms; we keep y's senses even then, like a positive-only position.
        pos_out[fu] = sel.sampled(q, own, _related(syn_ptr, syn_ids, y), include_own=True)
        ants = _related(ant_ptr, ant_ids, y)
        # The reference builds negatives only when y has antonyms: no antonyms -> no negative pool (all -1),
        # even with self_in_both_pools. With antonyms that all lack senses, the pool is y's senses alone.
        if ants.size:
            # FLAG: the reference appends y's OWN senses to the negative pool as well, so the hinge also
            # pushes s_t away from y's senses that the positive term pulls it toward. Kept
            # (self_in_both_pools=True by default) to match it; switch it off for antonym-only negatives.
            neg_out[fu] = sel.sampled(q, own, ants, include_own=self_in_both_pools)
    return pos_out, neg_out


class _Selector:
    """Pool searches for one select_candidates call (holds the table, rng and knn backend)."""

    def __init__(self, table: SenseTable, kappa: int, max_related: int, rng: np.random.Generator, knn: _Knn) -> None:
        self.table, self.kappa, self.max_related, self.rng, self.knn = table, kappa, max_related, rng, knn

    def fixed(self, q: np.ndarray, pool: np.ndarray) -> np.ndarray:
        """Top-kappa rows of one pool shared by all queries (pool rows ascending)."""
        out = np.full((q.shape[0], self.kappa), -1, dtype=np.int64)
        k = min(self.kappa, pool.size)
        if k:
            _, local = self.knn(q, self.table.vectors[pool], k)
            out[:, :k] = pool[local]
        return out

    def sampled(self, q: np.ndarray, own: np.ndarray, related: np.ndarray, include_own: bool) -> np.ndarray:
        """Top-kappa rows of [own rows] ∪ senses of up to max_related related ids sampled per query."""
        if related.size <= self.max_related:
            # Nothing to sample: the pool depends on y only, one search for all queries.
            rel_rows, _ = _rows_of(self.table, related)
            pool = np.union1d(own, rel_rows) if include_own else np.unique(rel_rows)
            return self.fixed(q, pool)

        # Per-query subsets: rank the union of all candidate rows once per query (exact, full ranking), then
        # keep the first kappa rows that belong to that query's sampled subset. Same result as one search per
        # query over its own pool, with one faiss call per chunk instead of one per query.
        rel_rows, owner = _rows_of(self.table, related)
        rows = np.concatenate([own, rel_rows])
        owner = np.concatenate([np.full(own.size, -1, dtype=np.int64), owner])
        order = np.argsort(rows, kind="stable")  # ascending rows -> ties broken by row index
        rows, owner = rows[order], owner[order]
        out = np.full((q.shape[0], self.kappa), -1, dtype=np.int64)
        # Uniform subset of size max_related per query: the max_related smallest of iid uniform keys.
        keys = self.rng.random((q.shape[0], related.size))
        picked = np.argpartition(keys, self.max_related - 1, axis=1)[:, : self.max_related]
        chosen = np.zeros((q.shape[0], related.size + 1), dtype=bool)  # last column: "own" (owner -1)
        np.put_along_axis(chosen, picked, True, axis=1)
        chosen[:, -1] = include_own
        if rows.size == 0:
            return out
        xb = self.table.vectors[rows]
        step = max(1, _MAX_CELLS // rows.size)
        for lo in range(0, q.shape[0], step):
            hi = min(lo + step, q.shape[0])
            _, local = self.knn(q[lo:hi], xb, rows.size)  # [n, |U|], nearest first
            member = chosen[lo:hi][np.arange(hi - lo)[:, None], owner[local]]
            rank = np.cumsum(member, axis=1)
            r, c = np.nonzero(member & (rank <= self.kappa))
            out[lo + r, rank[r, c] - 1] = rows[local[r, c]]
        return out
