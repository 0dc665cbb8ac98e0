"""Spill runs of a bounded reservoir's write log, and the streaming k-way merge that reads them back.

A run is one Parquet file of writes ``(token_id, slot, vector)`` sorted by ``(token_id, slot)``, at most one write per
key (the log is compacted before it is spilled). Runs are numbered in stream order, so for a key written in several
runs the write of the latest run is the one Algorithm R kept. :func:`latest_writes` merges any number of runs (and
the in-memory log, the newest "run") a window of whole tokens at a time: memory is one read batch per run plus
the window, never the whole reservoir.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dskd.store.integrity import iter_batches, lean_write_options

Writes = tuple[np.ndarray, np.ndarray, np.ndarray]  # (token_id int64 [n], slot int64 [n], vectors [n, d])


def _run_table(writes: Writes) -> pa.Table:
    tok, slot, vec = writes
    return pa.table(
        {
            "token_id": pa.array(tok, pa.int64()),
            "slot": pa.array(slot.astype(np.int32), pa.int32()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(vec).reshape(-1)), vec.shape[1]),
        }
    )


def write_run(path: Path, batches: Iterable[Writes], row_group_rows: int) -> int:
    """Write key-sorted writes (one or more batches, in order) to one run file; small row groups (zstd, page
    checksums) so a reader holds little of each run. Returns the rows written."""
    writer, rows = None, 0
    try:
        for writes in batches:
            if writes[0].size == 0:
                continue
            table = _run_table(writes)
            if writer is None:
                writer = pq.ParquetWriter(path, table.schema, **lean_write_options(table.schema))
            writer.write_table(table, row_group_size=max(1, row_group_rows))
            rows += writes[0].size
    finally:
        if writer is not None:
            writer.close()
    return rows


def read_run(path: Path, dim: int, batch_rows: int) -> Iterator[Writes]:
    """Batches of a run file, in its (key-sorted) order."""
    for batch in iter_batches(path, batch_size=max(1, batch_rows)):
        vec = batch.column("vector").flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)
        yield (
            batch.column("token_id").to_numpy().astype(np.int64),
            batch.column("slot").to_numpy().astype(np.int64),
            vec,
        )


def last_per_key(writes: Writes, cap: int) -> Writes:
    """Keep the last write (in log order) of every ``(token_id, slot)``; the result is sorted by that key."""
    tok, slot, vec = writes
    if tok.size == 0:
        return writes
    key = tok * cap + slot
    _, first_in_reversed = np.unique(key[::-1], return_index=True)  # sorted by key
    last = tok.size - 1 - first_in_reversed
    return tok[last], slot[last], vec[last]


class _Cursor:
    """One sorted source (a run, or the in-memory log) with the rows read but not yet merged."""

    def __init__(self, batches: Iterable[Writes], dim: int, dtype: np.dtype) -> None:
        self._it = iter(batches)
        self.done = False
        empty = (np.empty(0, np.int64), np.empty(0, np.int64), np.empty((0, dim), dtype))
        self.buf: Writes = empty

    def pull(self) -> None:
        """Append the next batch to the buffer (or mark the source exhausted)."""
        nxt = next(self._it, None)
        if nxt is None:
            self.done = True
            return
        self.buf = tuple(np.concatenate([a, b]) for a, b in zip(self.buf, nxt, strict=True))  # type: ignore[assignment]

    def take_below(self, hi: int | None) -> Writes:
        """Remove and return the buffered rows with ``token_id < hi`` (all of them when ``hi`` is None)."""
        cut = self.buf[0].size if hi is None else int(np.searchsorted(self.buf[0], hi, side="left"))
        out = tuple(a[:cut] for a in self.buf)
        self.buf = tuple(a[cut:] for a in self.buf)  # type: ignore[assignment]
        return out  # type: ignore[return-value]


def latest_writes(sources: list[Iterable[Writes]], cap: int, dim: int, dtype: np.dtype) -> Iterator[Writes]:
    """Merge key-sorted sources, oldest first; yield windows of whole tokens sorted by ``(token_id, slot)``, one
    write per key: the newest source's (later runs overwrite earlier ones, exactly as the slots were written)."""
    cursors = [_Cursor(s, dim, dtype) for s in sources]
    while True:
        for c in cursors:
            while not c.done and c.buf[0].size == 0:
                c.pull()
        live = [c for c in cursors if not c.done]
        if not live and all(c.buf[0].size == 0 for c in cursors):
            return
        # Every row of a token below ``hi`` is buffered: each live source's next unread row is >= its last one.
        hi = min(int(c.buf[0][-1]) for c in live) if live else None
        parts = [(i, c.take_below(hi)) for i, c in enumerate(cursors)]
        if sum(p[0].size for _, p in parts) == 0:  # the limiting source holds one token only so far: read on
            min(live, key=lambda c: int(c.buf[0][-1])).pull()
            continue
        tok = np.concatenate([p[0] for _, p in parts])
        slot = np.concatenate([p[1] for _, p in parts])
        src = np.concatenate([np.full(p[0].size, i) for i, p in parts])
        order = np.lexsort((src, slot, tok))  # by key, then by source: the newest source last
        key = tok[order] * cap + slot[order]
        last = np.flatnonzero(np.r_[key[1:] != key[:-1], True])  # the newest write of each key
        pick = order[last]
        vec = np.concatenate([p[2] for _, p in parts])  # the window's one copy of vectors (+ the picked rows)
        yield tok[pick], slot[pick], vec[pick]
