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

from dskd.senses.dictionary import offered_batch, stream_positions
from dskd.store.integrity import iter_batches, lean_write_options
from dskd.teacher.reservoir_spill import last_per_key, latest_writes, read_run, write_run
from dskd.teacher.schema import RESERVOIR_SCHEMA

GIB = 1 << 30
RESERVOIR_ROW_GROUP_BYTES = 4 << 20  # small row groups: a k-way merge holds one of every part file at a time
RUN_FAN_IN = 8  # runs of one size tier merged into one of the next tier (exact: consecutive runs, newest wins)


def row_group_bytes(memory_bytes: int | None) -> int:
    """Row-group size of reservoir files written within a budget: 4 MiB, or 1/8 of a smaller budget."""
    return (
        RESERVOIR_ROW_GROUP_BYTES if memory_bytes is None else max(1, min(RESERVOIR_ROW_GROUP_BYTES, memory_bytes // 8))
    )


class BoundedReservoir:
    """Per-token uniform reservoir of at most ``cap`` vectors, holding at most ~``memory_bytes`` of them in RAM.

    ``memory_bytes=None``: never spills. ``spill_dir`` (required with a budget) receives ``run-*.parquet``;
    :meth:`close` deletes them. The budget counts vectors and keys (numpy memory; Parquet I/O buffers are extra,
    a few MiB per open file), and is split so that the copies a compaction or a merge window makes stay inside
    it: the log holds a quarter of it; reading back, the runs' read batches together hold a quarter. Runs are
    tiered: ``RUN_FAN_IN`` consecutive runs of one tier are merged into one of the next, so each write is
    rewritten O(log(reservoir / budget)) times. One batch's writes may exceed the budget briefly.
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
        # vector + token id and slot, + the index arrays a merge window makes per row (src, order, key, pick)
        self._row_bytes = self.dim * self.dtype.itemsize + 64
        # A compaction holds the log, its concatenation and the compacted copy (+ one batch): a quarter each.
        self._max_rows = None if memory_bytes is None else max(2, int(memory_bytes) // (4 * self._row_bytes))
        self._spill_dir = Path(spill_dir) if spill_dir is not None else None
        self._n_spilled = 0
        self.runs: list[Path] = []
        self._tiers: list[int] = []  # tier of each run (0 = one spilled log)

    def add(self, token_ids: np.ndarray, vectors: np.ndarray) -> None:
        """Offer ``vectors[j]`` under ``token_ids[j]`` for every j, in order (the stream order)."""
        tok, vec = offered_batch(token_ids, vectors, self.dim)
        if tok.size == 0:
            return
        if int(tok.max()) >= self._seen.size:
            self._seen = np.concatenate([self._seen, np.zeros(int(tok.max()) + 1 - self._seen.size, np.int64)])
        idx = stream_positions(tok, self._seen)
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

    @property
    def spills(self) -> int:
        """Run files written so far (spilled logs and tier merges)."""
        return self._n_spilled

    def n_seen(self) -> dict[int, int]:
        """Token id -> how many vectors of it were offered so far."""
        ids = np.flatnonzero(self._seen)
        return dict(zip(ids.tolist(), self._seen[ids].tolist(), strict=True))

    def rows(self, batch_rows: int | None = None) -> Iterator[tuple[int, np.ndarray, int]]:
        """``(token_id, kept vectors [min(n_seen, cap), d] in slot order, n_seen)`` by increasing token id."""
        self._compact()
        if self.runs and self._log:  # stream everything from disk: the log's memory is the read buffers' now
            self._spill()
        for tok, _, vec in latest_writes(self._sources(batch_rows), self.cap, self.dim, self.dtype):
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
        self.runs, self._tiers = [], []

    def _append(self, tok: np.ndarray, slot: np.ndarray, vec: np.ndarray) -> None:
        if tok.size:
            self._log.append((tok, slot.astype(np.int64), np.asarray(vec, dtype=self.dtype)))
            self._log_rows += tok.size

    def _compact(self) -> None:
        if self._log:  # also sorts a lone chunk by key, as the merge needs
            merged = tuple(np.concatenate(cols) for cols in zip(*self._log, strict=True))
            self._log = [last_per_key(merged, self.cap)]  # type: ignore[arg-type]
            self._log_rows = int(self._log[0][0].size)

    def _sources(self, batch_rows: int | None = None) -> list[Iterable]:
        """The runs (oldest first) and the log (newest), each a key-sorted iterable of write batches; the read
        batches of all runs together hold about ``max_rows`` rows (a window's copies: two more of that)."""
        per_run = batch_rows or max(1, (self._max_rows or 1 << 16) // max(len(self.runs), 1))
        sources: list[Iterable] = [read_run(p, self.dim, per_run) for p in self.runs]
        sources.append([self._log[0]] if self._log else [])
        return sources

    def _run_path(self) -> Path:
        assert self._spill_dir is not None
        self._spill_dir.mkdir(parents=True, exist_ok=True)
        self._n_spilled += 1
        return self._spill_dir / f"run-{self._n_spilled:05d}.parquet"

    def _group_rows(self) -> int:
        return max(
            1,
            row_group_bytes(None if self._max_rows is None else self._max_rows * self._row_bytes)
            // (RUN_FAN_IN * self._row_bytes),
        )

    def _spill(self) -> None:
        path = self._run_path()
        if write_run(path, [self._log[0]], self._group_rows()):
            self.runs.append(path)
            self._tiers.append(0)
        self._log, self._log_rows = [], 0
        # The newest RUN_FAN_IN runs share a tier: merge them into one run of the next tier (streaming).
        while len(self._tiers) >= RUN_FAN_IN and len(set(self._tiers[-RUN_FAN_IN:])) == 1:
            group, tier = self.runs[-RUN_FAN_IN:], self._tiers[-1]
            per_run = max(1, (self._max_rows or 1) // RUN_FAN_IN)
            sources = [read_run(p, self.dim, per_run) for p in group]
            merged = self._run_path()
            write_run(merged, latest_writes(sources, self.cap, self.dim, self.dtype), self._group_rows())
            for old in group:
                old.unlink(missing_ok=True)
            self.runs[-RUN_FAN_IN:], self._tiers[-RUN_FAN_IN:] = [merged], [tier + 1]


def reservoir_rows(reservoir) -> Iterator[tuple[int, np.ndarray, int]]:
    """``(token_id, kept vectors, n_seen)`` of a live reservoir (bounded or not), by token id."""
    if isinstance(reservoir, BoundedReservoir):
        yield from reservoir.rows()
        return
    seen = reservoir.n_seen()
    for token_id, vectors in reservoir.items():
        yield token_id, vectors, seen[token_id]


def write_reservoir(
    rows: Iterable[tuple[int, np.ndarray, int]], out_path: Path, group_bytes: int = RESERVOIR_ROW_GROUP_BYTES
) -> int:
    """Persist reservoir rows (float16 vectors, flattened) to Parquet in small row groups; returns the token
    count. Streams: holds one row group (``group_bytes``, 4 MiB by default) at a time."""
    # Columns built from numpy arrays (no per-row Python objects). An open ParquetWriter itself keeps ~30-45 MiB of
    # pyarrow buffers at 4 MiB row groups (measured).
    n_tokens = 0
    with pq.ParquetWriter(out_path, RESERVOIR_SCHEMA, **lean_write_options(RESERVOIR_SCHEMA)) as writer:
        ids: list[int] = []
        counts: list[int] = []
        seen: list[int] = []
        flats: list[np.ndarray] = []
        pending = 0

        def flush() -> None:
            offsets = np.zeros(len(flats) + 1, np.int32)
            np.cumsum([f.size for f in flats], out=offsets[1:])
            values = pa.array(np.concatenate(flats) if flats else np.zeros(0, np.float16), pa.float16())
            table = pa.Table.from_arrays(
                [
                    pa.array(ids, pa.int64()),
                    pa.array(counts, pa.int32()),
                    pa.array(seen, pa.int64()),
                    pa.ListArray.from_arrays(pa.array(offsets), values),
                ],
                schema=RESERVOIR_SCHEMA,
            )
            writer.write_table(table)

        for token_id, vectors, n_seen in rows:
            flats.append(np.array(vectors, dtype=np.float16).reshape(-1))  # a copy: frees the window it viewed
            ids.append(int(token_id))
            counts.append(int(vectors.shape[0]))
            seen.append(int(n_seen))
            n_tokens += 1
            pending += flats[-1].nbytes
            if len(flats) == 1024 or pending >= group_bytes:
                flush()
                ids, counts, seen, flats, pending = [], [], [], [], 0
        if flats or n_tokens == 0:
            flush()
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
