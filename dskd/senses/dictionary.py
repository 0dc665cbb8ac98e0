"""The sense dictionary (method.md §1 and the span senses of §2).

Three pieces, in pipeline order:

* :class:`Reservoir` keeps at most ``cap`` teacher hidden states per predicted token while the corpus
  streams by (Algorithm R, vectorised over a batch).
* :func:`build_sense_table` runs per-token k-means (faiss) over the reservoir: the centroids are the
  token's senses.
* :func:`compose_virtual_senses` adds the composed senses of the multi-token lexicon tails (virtual ids).

The result is a :class:`SenseTable`: one float32 matrix of all senses plus CSR offsets per id, stored with
safetensors (the reference pickles a dict of tensors; pickle is banned here, see design.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from safetensors.numpy import load_file, save_file

_FORMAT = "dskd.senses.dictionary/1"


@dataclass
class SenseTable:
    """All senses of all ids as one matrix; the senses of id ``i`` are ``vectors[offsets[i]:offsets[i+1]]``.

    Ids ``0..vocab_size-1`` are tokens, ids ``vocab_size..`` are virtual ids of multi-token spans
    (see :class:`dskd.lexicon.types.TokenLexicon`). An id may have 0 senses.
    """

    vectors: np.ndarray  # float32 [R, d]
    offsets: np.ndarray  # int64 [n_ids + 1]

    def __post_init__(self) -> None:
        self.vectors = np.ascontiguousarray(self.vectors, dtype=np.float32)
        self.offsets = np.ascontiguousarray(self.offsets, dtype=np.int64)
        if self.vectors.ndim != 2:
            raise ValueError(f"vectors must be 2-D [R, d], got shape {self.vectors.shape}")
        if self.offsets.ndim != 1 or self.offsets.size < 1 or self.offsets[0] != 0:
            raise ValueError("offsets must be 1-D, start at 0 and have n_ids + 1 entries")
        if np.any(np.diff(self.offsets) < 0) or self.offsets[-1] != self.vectors.shape[0]:
            raise ValueError("offsets must be non-decreasing and end at the number of sense rows")

    @property
    def n_ids(self) -> int:
        """Number of ids (tokens + virtual spans) the table covers."""
        return int(self.offsets.size - 1)

    @property
    def dim(self) -> int:
        """Width d of a sense vector (the teacher's hidden size)."""
        return int(self.vectors.shape[1])

    def senses(self, i: int) -> np.ndarray:
        """Senses of id ``i`` as a view ``[n_i, d]`` (``n_i`` may be 0)."""
        return self.vectors[self.offsets[i] : self.offsets[i + 1]]

    def rows(self, i: int) -> np.ndarray:
        """Row indices into :attr:`vectors` of the senses of id ``i``."""
        return np.arange(self.offsets[i], self.offsets[i + 1], dtype=np.int64)

    def n_senses(self) -> np.ndarray:
        """Number of senses per id, int64 ``[n_ids]``."""
        return np.diff(self.offsets)

    def save(self, path: str | Path) -> None:
        """Write the table to ``path`` as safetensors (never pickle)."""
        save_file(
            {"vectors": self.vectors, "offsets": self.offsets},
            str(path),
            metadata={"format": _FORMAT, "n_ids": str(self.n_ids), "dim": str(self.dim)},
        )

    @classmethod
    def load(cls, path: str | Path) -> SenseTable:
        """Read a table written by :meth:`save`."""
        tensors = load_file(str(path))
        return cls(vectors=tensors["vectors"], offsets=tensors["offsets"])


def _offsets_from_counts(counts: np.ndarray) -> np.ndarray:
    offsets = np.zeros(counts.size + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets


def offered_batch(token_ids: np.ndarray, vectors: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(token ids as flat int64, vectors) of one ``add`` call, checked: [n, dim] vectors, ids >= 0."""
    tok = np.asarray(token_ids, dtype=np.int64).reshape(-1)
    vec = np.asarray(vectors)
    if vec.ndim != 2 or vec.shape != (tok.size, dim):
        raise ValueError(f"vectors must be [{tok.size}, {dim}], got {vec.shape}")
    if tok.size and tok.min() < 0:
        raise ValueError("token ids must be >= 0")
    return tok, vec


def stream_positions(keys: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Each offered vector's 0-based position in its key's stream (``seen[key]`` before it + its rank among the
    batch's vectors of that key, stable = stream order); ``seen`` is advanced by the batch's counts in place."""
    uniq, inv, counts = np.unique(keys, return_inverse=True, return_counts=True)
    order = np.argsort(inv, kind="stable")
    rank = np.empty(keys.size, dtype=np.int64)
    rank[order] = np.arange(keys.size) - np.repeat(np.cumsum(counts) - counts, counts)
    positions = seen[keys] + rank
    seen[uniq] += counts
    return positions


class Reservoir:
    """Per-token uniform reservoir (Algorithm R) with at most ``cap`` vectors per token, fed in batches.

    The ``i``-th vector (0-based, in stream order) of a token is kept outright while ``i < cap``; afterwards
    it replaces slot ``u = floor(U * (i + 1))`` when ``u < cap`` (``U`` uniform in [0, 1)). Every vector seen
    for a token therefore ends up kept with probability ``cap / n_seen``. One float64 draw per post-fill
    vector, in stream order, makes the result independent of how the stream is cut into batches.

    Storage grows per token in power-of-two blocks (1, 2, 4, ... up to ``cap``), so memory is at most about
    twice the kept vectors and never more than ``cap`` per distinct token; all writes of a batch are numpy
    scatter operations (one per block level), no Python loop per vector or per token.
    """

    def __init__(self, cap: int, dim: int, seed: int = 0, dtype: np.dtype | type = np.float32) -> None:
        if cap < 1 or dim < 1:
            raise ValueError("cap and dim must be >= 1")
        self.cap, self.dim = int(cap), int(dim)
        self.dtype = np.dtype(dtype)
        self._rng = np.random.default_rng(seed)
        # Block level L holds stream indices [2^L - 1, 2^(L+1) - 1); the last one is cut so the total is cap.
        self._n_levels = int(self.cap).bit_length()
        sizes = [1 << lvl for lvl in range(self._n_levels)]
        sizes[-1] = self.cap - ((1 << (self._n_levels - 1)) - 1)
        self._level_size = sizes
        self._pools = [np.empty((0, s, self.dim), dtype=self.dtype) for s in sizes]
        self._used = [0] * self._n_levels
        self._slot_of = np.full(0, -1, dtype=np.int64)  # token id -> slot
        self._token = np.empty(0, dtype=np.int64)  # slot -> token id
        self._seen = np.empty(0, dtype=np.int64)  # slot -> vectors seen so far
        self._blocks = np.empty((0, self._n_levels), dtype=np.int64)  # slot, level -> block id in that pool

    def __len__(self) -> int:
        return int(self._token.size)

    def n_seen(self) -> dict[int, int]:
        """Token id -> how many vectors of it were offered so far."""
        return dict(zip(self._token.tolist(), self._seen.tolist(), strict=True))

    def add(self, token_ids: np.ndarray, vectors: np.ndarray) -> None:
        """Offer ``vectors[j]`` under ``token_ids[j]`` for every j, in order (the stream order)."""
        tok, vec = offered_batch(token_ids, vectors, self.dim)
        if tok.size == 0:
            return
        slot = self._slots_for(tok)

        idx = stream_positions(slot, self._seen)  # 0-based position of each vector in its token's stream

        # Still filling: kept outright. Written before any replacement (they come earlier in the stream).
        fill = np.flatnonzero(idx < self.cap)
        if fill.size:
            self._write(slot[fill], idx[fill], vec[fill], allocate=True)

        # Full: vector i replaces slot u = floor(U * (i+1)) if u < cap, drawn in stream order.
        rep = np.flatnonzero(idx >= self.cap)
        if rep.size:
            u = np.floor(self._rng.random(rep.size) * (idx[rep] + 1)).astype(np.int64)
            keep = u < self.cap
            rep, u = rep[keep], u[keep]
            if rep.size:
                # Algorithm R is sequential: when two vectors of a batch hit one slot, the later one wins.
                key = slot[rep] * self.cap + u
                _, first_in_reversed = np.unique(key[::-1], return_index=True)
                last = rep.size - 1 - first_in_reversed
                self._write(slot[rep[last]], u[last], vec[rep[last]], allocate=False)

    def items(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(token_id, kept vectors [n_i, d])`` in increasing token id; ``n_i = min(seen, cap)``."""
        for s in np.argsort(self._token, kind="stable"):
            n = int(min(self._seen[s], self.cap))
            parts, got = [], 0
            for lvl in range(self._n_levels):
                if got >= n:
                    break
                block = self._pools[lvl][self._blocks[s, lvl]]
                parts.append(block[: n - got])
                got += parts[-1].shape[0]
            yield int(self._token[s]), np.concatenate(parts, axis=0)

    # -- internals -------------------------------------------------------------------------------------------

    def _slots_for(self, tok: np.ndarray) -> np.ndarray:
        top = int(tok.max()) + 1
        if top > self._slot_of.size:
            grown = np.full(max(top, 2 * self._slot_of.size), -1, dtype=np.int64)
            grown[: self._slot_of.size] = self._slot_of
            self._slot_of = grown
        new_tokens = np.unique(tok[self._slot_of[tok] < 0])
        if new_tokens.size:
            first = self._token.size
            self._slot_of[new_tokens] = np.arange(first, first + new_tokens.size)
            self._token = np.concatenate([self._token, new_tokens])
            self._seen = np.concatenate([self._seen, np.zeros(new_tokens.size, dtype=np.int64)])
            self._blocks = np.concatenate(
                [self._blocks, np.full((new_tokens.size, self._n_levels), -1, dtype=np.int64)]
            )
        return self._slot_of[tok]

    def _write(self, slots: np.ndarray, pos: np.ndarray, vec: np.ndarray, allocate: bool) -> None:
        # Stream index i lives in level floor(log2(i+1)) at offset i+1-2^level.
        level = np.floor(np.log2(pos + 1)).astype(np.int64)
        level[(np.int64(1) << (level + 1)) <= pos + 1] += 1  # guard float rounding of log2
        level[(np.int64(1) << level) > pos + 1] -= 1
        offset = pos + 1 - (np.int64(1) << level)
        for lvl in np.unique(level).tolist():
            sel = np.flatnonzero(level == lvl)
            s, off = slots[sel], offset[sel]
            if allocate:
                starts = s[off == 0]  # the first vector of a block allocates it
                if starts.size:
                    self._blocks[starts, lvl] = self._alloc(lvl, starts.size)
            self._pools[lvl][self._blocks[s, lvl], off] = vec[sel]

    def _alloc(self, lvl: int, n: int) -> np.ndarray:
        pool, used = self._pools[lvl], self._used[lvl]
        if used + n > pool.shape[0]:
            grown = np.empty((max(used + n, 2 * pool.shape[0], 8), *pool.shape[1:]), dtype=self.dtype)
            grown[:used] = pool[:used]
            self._pools[lvl] = grown
        self._used[lvl] = used + n
        return np.arange(used, used + n, dtype=np.int64)


def resolve_faiss_gpu(use_gpu: bool | None) -> bool:
    """None -> whether faiss sees a GPU; True without a GPU is an error (not a silent CPU fallback)."""
    if use_gpu is None:
        return faiss.get_num_gpus() > 0
    if use_gpu and faiss.get_num_gpus() == 0:
        raise RuntimeError("use_gpu=True but faiss sees no GPU (faiss-cpu build or no device)")
    return bool(use_gpu)


def build_sense_table(
    items: Iterable[tuple[int, np.ndarray]],
    n_ids: int,
    dim: int,
    k: int,
    seed: int = 0,
    niter: int = 20,
    use_gpu: bool | None = None,
    progress: bool = False,
) -> SenseTable:
    """Per-token k-means over reservoir vectors; the centroids are the token's senses (method.md §1).

    ``items`` yields ``(id, vectors [n, dim])`` (e.g. :meth:`Reservoir.items`), each id at most once. A token
    with ``n <= k`` vectors keeps its raw vectors (in input order); absent ids get 0 senses. ``use_gpu=None``
    means "GPU when faiss sees one".
    """
    use_gpu = resolve_faiss_gpu(use_gpu)
    # This is faiss.Kmeans(dim, k, niter=niter, seed=seed, gpu=use_gpu) without its per-call setup: Kmeans
    # builds a fresh index per call, and on GPU a fresh StandardGpuResources per call (index_cpu_to_all_gpus),
    # which dominates for thousands of small problems. One flat index is shared and reset by Clustering.train.
    if use_gpu:
        res = faiss.StandardGpuResources()
        index = faiss.GpuIndexFlatL2(res, dim)
    else:
        res, index = None, faiss.IndexFlatL2(dim)
    cp = faiss.ClusteringParameters()
    cp.niter, cp.seed, cp.verbose = int(niter), int(seed), False
    # min 1 point per centroid silences faiss' "please provide at least 39*k points" warning (reservoirs are
    # small by design); a huge max disables faiss' silent subsampling so every kept vector counts.
    cp.min_points_per_centroid = 1
    cp.max_points_per_centroid = 1 << 30
    # k-means++ seeding, like the reference's sklearn KMeans: faiss' default (random points) often drops two
    # seeds into one sense cluster and never recovers within Lloyd iterations. Older faiss lacks the option.
    if hasattr(faiss, "ClusteringInitMethod_KMEANS_PLUS_PLUS"):
        cp.init_method = faiss.ClusteringInitMethod_KMEANS_PLUS_PLUS

    if progress:
        from tqdm import tqdm  # optional nicety; only imported when asked for

        items = tqdm(items, desc="k-means per token", unit="tok")

    senses: dict[int, np.ndarray] = {}
    for token_id, vecs in items:
        token_id = int(token_id)
        if not 0 <= token_id < n_ids:
            raise ValueError(f"id {token_id} outside [0, {n_ids})")
        if token_id in senses:
            raise ValueError(f"id {token_id} given twice")
        x = np.ascontiguousarray(vecs, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != dim:
            raise ValueError(f"vectors of id {token_id} must be [n, {dim}], got {x.shape}")
        if x.shape[0] == 0:
            continue
        if x.shape[0] <= k:
            senses[token_id] = x.copy()
            continue
        clus = faiss.Clustering(dim, k, cp)
        clus.train(x, index)
        senses[token_id] = faiss.vector_float_to_array(clus.centroids).reshape(k, dim)
    del res  # keep GPU resources alive until all training is done

    counts = np.zeros(n_ids, dtype=np.int64)
    ids = sorted(senses)
    for i in ids:
        counts[i] = senses[i].shape[0]
    vectors = np.concatenate([senses[i] for i in ids]) if ids else np.zeros((0, dim), dtype=np.float32)
    return SenseTable(vectors=vectors, offsets=_offsets_from_counts(counts))


def compose_virtual_senses(
    table: SenseTable,
    vocab_size: int,
    virtual_spans: list[list[int]],
    n_samples: int = 10,
    seed: int = 0,
) -> SenseTable:
    """Return ``table``'s token senses extended by one sense set per virtual id ``vocab_size + i``.

    For span ``[t0, t1, ...]``: sample up to ``n_samples`` senses of ``t0`` (all of them, in order, when it
    has that few); for each start, walk the following tokens and append the sense of each that is nearest
    (L2) to the running mean of the chain so far; the chain's mean is one span sense. A span with any token
    lacking senses gets 0 senses. Ids of ``table`` at or beyond ``vocab_size`` (older virtual ids) are
    dropped.
    """
    if table.n_ids < vocab_size:
        raise ValueError(f"table covers {table.n_ids} ids, fewer than vocab_size={vocab_size}")
    rng = np.random.default_rng(seed)
    span_senses: list[np.ndarray] = []
    for span in virtual_spans:
        if len(span) == 0 or any(not 0 <= t < vocab_size for t in span):
            raise ValueError(f"span {span} must be non-empty real token ids")
        clouds = [table.senses(t) for t in span]
        if any(c.shape[0] == 0 for c in clouds):
            span_senses.append(np.zeros((0, table.dim), dtype=np.float32))
            continue
        first = clouds[0]
        if first.shape[0] > n_samples:
            first = first[np.sort(rng.choice(first.shape[0], n_samples, replace=False))]
        acc = first.astype(np.float64)  # running sum of each chain, one row per start
        for j, cloud in enumerate(clouds[1:], start=1):
            mean = acc / j
            d2 = ((mean[:, None, :] - cloud[None, :, :].astype(np.float64)) ** 2).sum(-1)
            acc += cloud[np.argmin(d2, axis=1)]  # argmin: first index on ties
        span_senses.append((acc / len(span)).astype(np.float32))

    base = table.vectors[: table.offsets[vocab_size]]
    counts = np.concatenate(
        [table.n_senses()[:vocab_size], np.array([s.shape[0] for s in span_senses], dtype=np.int64)]
    )
    vectors = np.concatenate([base, *span_senses], axis=0) if span_senses else base.copy()
    return SenseTable(vectors=vectors, offsets=_offsets_from_counts(counts))


@contextmanager
def faiss_single_thread() -> Iterator[None]:
    """One OpenMP thread for faiss during thousands of tiny per-token problems.

    Thread start-up dominates problems of ≤ 50 vectors: measured 2.8x (idle) to 80x (busy 2-core box) faster on
    one thread (bench/README.md). The previous thread count is restored afterwards.
    """
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)
