"""The dictionary reservoir of the teacher pass within a memory budget, and its Parquet files.

:class:`BoundedReservoir` makes exactly the draws of :class:`dskd.senses.dictionary.Reservoir` (Algorithm R per
predicted token, one float64 per post-fill vector in stream order) and keeps exactly the same vectors, but it does
not hold the reservoir: Algorithm R's decisions need only each token's count, so the vectors go to a write log
``(token, slot, vector)``. When the log outgrows ``memory_bytes`` it is compacted (last write per slot) and, if
still over half the budget, spilled to a sorted Parquet run (:mod:`dskd.teacher.reservoir_spill`). Reading the
reservoir back merges the runs and the log, newest write per slot winning: the same reservoir for any budget.
Without the budget the reservoir of Llama-3-8B at cap 50 is O(distinct predicted tokens x cap x d), ~53 GB float16.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dskd.store.integrity import PARQUET_WRITE, iter_batches
from dskd.teacher.reservoir_spill import last_per_key, latest_writes, read_run, write_run
from dskd.teacher.schema import RESERVOIR_SCHEMA

GIB = 1 << 30
RESERVOIR_ROW_GROUP_BYTES = 4 << 20  # small row groups: a k-way merge holds one of every part file at a time


class BoundedReservoir:
    """Per-token uniform reservoir of at most ``cap`` vectors, holding at most ~``memory_bytes`` of them in RAM.

    ``memory_bytes=None``: never spills. ``spill_dir`` (required with a budget) receives ``run-*.parquet``;
    :meth:`close` deletes them. The budget counts vectors and keys; one batch's writes may exceed it briefly.
    """

    def __init__(
        self,
        cap: int,
        dim: int,
        seed: int = 0,
        dtype: np.dtype | type = np.float16,
        memory_bytes: int | None = None,
        spill_dir: Path | None = None,
    ) -> None:
        if cap < 1 or dim < 1:
            raise ValueError("cap and dim must be >= 1")
        if memory_bytes is not None and spill_dir is None:
            raise ValueError("a reservoir memory budget needs a spill_dir for the spilled runs")
        self.cap, self.dim, self.dtype = int(cap), int(dim), np.dtype(dtype)
        self._rng = np.random.default_rng(seed)
        self._seen = np.zeros(0, dtype=np.int64)  # token id -> vectors offered
        self._log: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._log_rows = 0
        row_bytes = self.dim * self.dtype.itemsize + 16  # vector + token id + slot
        self._max_rows = None if memory_bytes is None else max(2, int(memory_bytes) // row_bytes)
        self._spill_dir = Path(spill_dir) if spill_dir is not None else None
        self.runs: list[Path] = []

    def add(self, token_ids: np.ndarray, vectors: np.ndarray) -> None:
        """Offer ``vectors[j]`` under ``token_ids[j]`` for every j, in order (the stream order)."""
        tok = np.asarray(token_ids, dtype=np.int64).reshape(-1)
        vec = np.asarray(vectors)
        if vec.ndim != 2 or vec.shape != (tok.size, self.dim):
            raise ValueError(f"vectors must be [{tok.size}, {self.dim}], got {vec.shape}")
        if tok.size == 0:
            return
        if tok.min() < 0:
            raise ValueError("token ids must be >= 0")
        if int(tok.max()) >= self._seen.size:
            self._seen = np.concatenate([self._seen, np.zeros(int(tok.max()) + 1 - self._seen.size, np.int64)])
        # Rank of each vector among the same token's vectors in this batch (stable = stream order).
        uniq, inv, counts = np.unique(tok, return_inverse=True, return_counts=True)
        order = np.argsort(inv, kind="stable")
        rank = np.empty(tok.size, dtype=np.int64)
        rank[order] = np.arange(tok.size) - np.repeat(np.cumsum(counts) - counts, counts)
        idx = self._seen[tok] + rank
        self._seen[uniq] += counts
        fill = np.flatnonzero(idx < self.cap)  # kept outright, logged before this batch's replacements
        self._append(tok[fill], idx[fill], vec[fill])
        rep = np.flatnonzero(idx >= self.cap)
        if rep.size:  # the same draws, in the same order, as Reservoir.add
            u = np.floor(self._rng.random(rep.size) * (idx[rep] + 1)).astype(np.int64)
            keep = u < self.cap
            rep, u = rep[keep], u[keep]
            if rep.size:
                self._append(*last_per_key((tok[rep], u, vec[rep]), self.cap))
        if self._max_rows is not None and self._log_rows > self._max_rows:
            self._compact()
            if self._log_rows > self._max_rows // 2:  # compaction did not free enough: spill the log
                self._spill()

    def n_seen(self) -> dict[int, int]:
        """Token id -> how many vectors of it were offered so far."""
        ids = np.flatnonzero(self._seen)
        return dict(zip(ids.tolist(), self._seen[ids].tolist(), strict=True))

    def rows(self, batch_rows: int | None = None) -> Iterator[tuple[int, np.ndarray, int]]:
        """``(token_id, kept vectors [min(n_seen, cap), d] in slot order, n_seen)`` by increasing token id."""
        self._compact()
        per_run = batch_rows or max(1, (self._max_rows or 1 << 16) // max(len(self.runs) + 1, 1))
        sources: list[Iterable] = [read_run(p, self.dim, per_run) for p in self.runs]
        sources.append([self._log[0]] if self._log else [])
        for tok, _, vec in latest_writes(sources, self.cap, self.dim, self.dtype):
            starts = np.flatnonzero(np.r_[True, tok[1:] != tok[:-1]])
            for s, e in itertools.pairwise([*starts.tolist(), tok.size]):
                token_id = int(tok[s])
                yield token_id, vec[s:e], int(self._seen[token_id])

    def items(self) -> Iterator[tuple[int, np.ndarray]]:
        """``(token_id, kept vectors)`` by increasing token id, as :meth:`Reservoir.items`."""
        for token_id, vectors, _ in self.rows():
            yield token_id, vectors

    def close(self) -> None:
        """Delete the spilled runs."""
        for path in self.runs:
            path.unlink(missing_ok=True)
        self.runs = []

    def _append(self, tok: np.ndarray, slot: np.ndarray, vec: np.ndarray) -> None:
        if tok.size:
            self._log.append((tok, slot.astype(np.int64), np.asarray(vec, dtype=self.dtype)))
            self._log_rows += tok.size

    def _compact(self) -> None:
        if self._log:  # also sorts a lone chunk by key, as the merge needs
            merged = tuple(np.concatenate(cols) for cols in zip(*self._log, strict=True))
            self._log = [last_per_key(merged, self.cap)]  # type: ignore[arg-type]
            self._log_rows = int(self._log[0][0].size)

    def _spill(self) -> None:
        assert self._spill_dir is not None
        self._spill_dir.mkdir(parents=True, exist_ok=True)
        path = self._spill_dir / f"run-{len(self.runs):05d}.parquet"
        write_run(path, self._log[0])
        self.runs.append(path)
        self._log, self._log_rows = [], 0


def reservoir_rows(reservoir) -> Iterator[tuple[int, np.ndarray, int]]:
    """``(token_id, kept vectors, n_seen)`` of a live reservoir (bounded or not), by token id."""
    if isinstance(reservoir, BoundedReservoir):
        yield from reservoir.rows()
        return
    seen = reservoir.n_seen()
    for token_id, vectors in reservoir.items():
        yield token_id, vectors, seen[token_id]


def write_reservoir(rows: Iterable[tuple[int, np.ndarray, int]], out_path: Path) -> int:
    """Persist reservoir rows (float16 vectors, flattened) to Parquet in small row groups; returns the token
    count. Streams: holds one row group (~4 MiB) at a time."""
    with pq.ParquetWriter(out_path, RESERVOIR_SCHEMA, compression="zstd", **PARQUET_WRITE) as writer:
        batch: list[dict] = []
        n_tokens = batch_bytes = 0
        for token_id, vectors, n_seen in rows:
            flat = np.asarray(vectors, dtype=np.float16).reshape(-1)
            batch.append({"token_id": int(token_id), "count": int(vectors.shape[0]), "n_seen": int(n_seen)})
            batch[-1]["vectors"] = flat
            n_tokens += 1
            batch_bytes += flat.nbytes
            if len(batch) == 1024 or batch_bytes >= RESERVOIR_ROW_GROUP_BYTES:
                writer.write_table(pa.Table.from_pylist(batch, schema=RESERVOIR_SCHEMA))
                batch, batch_bytes = [], 0
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema=RESERVOIR_SCHEMA))
    return n_tokens


def reservoir_file_rows(path: Path, dim: int, batch_rows: int = 512) -> Iterator[tuple[int, np.ndarray, int]]:
    """``(token_id, vectors [n, dim] float16, n_seen)`` from a reservoir file, ``batch_rows`` rows at a time."""
    for batch in iter_batches(path, batch_size=max(1, batch_rows)):
        columns = (
            batch.column("token_id").to_pylist(),
            batch.column("vectors").to_numpy(zero_copy_only=False),
            batch.column("n_seen").to_pylist(),
        )
        for token_id, vectors, n_seen in zip(*columns, strict=True):
            yield token_id, np.asarray(vectors, dtype=np.float16).reshape(-1, dim), n_seen


def read_reservoir(path: Path, dim: int) -> Iterator[tuple[int, np.ndarray]]:
    """Iterate (token_id, vectors [n, dim] float32) from a reservoir file, batch by batch."""
    for token_id, vectors, _ in reservoir_file_rows(path, dim):
        yield token_id, vectors.astype(np.float32)


def remove_spill_dir(path: Path) -> None:
    """Drop a spill dir (a killed pass may leave one behind)."""
    shutil.rmtree(path, ignore_errors=True)
