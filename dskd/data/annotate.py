"""Annotate the corpus: fixed-length token sequences, a held-out split, and the sense-loss positions.

Position t of a sequence predicts y = input_ids[t+1]. Sense positions are sampled once here (seeded),
not per step as in the reference, so the teacher pass can cache hidden states for exactly those positions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from dskd.data.sampling import sample_sense_positions
from dskd.store.integrity import PARQUET_WRITE, read_table

TRAIN_SCHEMA = pa.schema(
    [
        ("seq_id", pa.int64()),
        ("input_ids", pa.list_(pa.int32())),
        ("full_positions", pa.list_(pa.int32())),
        ("posonly_positions", pa.list_(pa.int32())),
    ]
)
HELDOUT_SCHEMA = pa.schema([("seq_id", pa.int64()), ("input_ids", pa.list_(pa.int32()))])


def pack_documents(
    docs: Iterable[str], tokenizer, seq_len: int, n_seqs: int, doc_ids: Iterable[int]
) -> list[np.ndarray]:
    """Concatenate documents (EOS between them) and cut into ``n_seqs`` sequences of ``seq_len`` tokens."""
    eos = tokenizer.eos_token_id
    buf: list[int] = []
    out: list[np.ndarray] = []
    for _, doc in zip(doc_ids, docs, strict=False):
        buf.extend(tokenizer(doc, add_special_tokens=False)["input_ids"])
        if eos is not None:
            buf.append(eos)
        while len(buf) >= seq_len and len(out) < n_seqs:
            out.append(np.asarray(buf[:seq_len], dtype=np.int32))
            buf = buf[seq_len:]
        if len(out) >= n_seqs:
            break
    return out


def split_documents(docs: list[str], n_heldout_docs: int, seed: int) -> tuple[list[str], list[str]]:
    """Shuffle documents with ``seed`` and hold out the first ``n_heldout_docs`` (split by document)."""
    order = np.random.default_rng(seed).permutation(len(docs))
    held = [docs[i] for i in order[:n_heldout_docs]]
    train = [docs[i] for i in order[n_heldout_docs:]]
    return train, held


def annotate_sequences(
    seqs: list[np.ndarray], has_lexicon: np.ndarray, seed: int, max_n: int, frac: float
) -> Iterator[dict]:
    """Rows for the train split: sampled full (syn/ant) and positive-only positions per sequence."""
    rng = np.random.default_rng(seed)
    for seq_id, ids in enumerate(seqs):
        # Position t has a next token only for t < L-1.
        targets = ids[1:]
        full, posonly = sample_sense_positions(has_lexicon[targets], rng, max_n=max_n, frac=frac)
        yield {
            "seq_id": seq_id,
            "input_ids": ids,
            "full_positions": full.astype(np.int32),
            "posonly_positions": posonly.astype(np.int32),
        }


def write_shards(rows: Iterable[dict], schema: pa.Schema, out_dir: Path, prefix: str, shard_rows: int) -> int:
    """Write rows into ``<prefix>-00000.parquet`` ... shards (zstd); returns the row count."""
    out_dir.mkdir(parents=True, exist_ok=True)
    batch: list[dict] = []
    shard = total = 0

    def flush() -> None:
        nonlocal shard
        table = pa.Table.from_pylist(batch, schema=schema)
        pq.write_table(table, out_dir / f"{prefix}-{shard:05d}.parquet", compression="zstd", **PARQUET_WRITE)
        shard += 1

    for row in rows:
        batch.append(row)
        total += 1
        if len(batch) == shard_rows:
            flush()
            batch = []
    if batch:
        flush()
    return total


def read_sequences(paths: list[Path]) -> np.ndarray:
    """All ``input_ids`` of the given shards as one [N, L] int64 array."""
    table = pa.concat_tables(read_table(p, columns=["input_ids"]) for p in paths)
    return np.asarray(table.column("input_ids").to_pylist(), dtype=np.int64)
