"""The teacher-cache Parquet schemas, in one place (writers and readers both import them from here).

Cache shards (``shards/cache-*.parquet``, persistent, read by training): one row per sequence, flattened lists:
  topk_ids     [L*k]  uint16 when the vocab fits, else int32   (which of the teacher's logits)
  topk_logits  [L*k]  float16                                  (raw teacher logits z_i)
  lse          [L]    float32   logsumexp(z / T) over the FULL vocab: p_i = exp(z_i/T - lse) exactly
Bytes per token for logits, raw: k*(2+2)+4 with uint16 ids (k=20: 84 B/token; zstd on disk: ~80), k*(4+2)+4 with
int32 ids for vocabularies over 65,535 such as Llama-3's (k=20: 124 B raw).

Hidden shards (``hidden/hidden-*.parquet``, transient: the scratch area, read only by the sense-index stage, which
deletes them once its artifact is complete; format 2 on):
  sense_positions [n] int32     positions whose final hidden state is kept (full ∪ positive-only)
  sense_hidden [n*d]  float16   the teacher's final hidden states at those positions

``CACHE_FORMAT`` is recorded in the capture (shard metadata and ``capture.json``); a cache of another format is
refused with a one-line error (:func:`check_format`).
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

SCHEMA_VERSION = 1
CAPTURE_KEY = b"dskd_capture"
# 1 (no "format" in the capture): sense_hidden inside the cache shards. 2: hidden states in separate, transient
# hidden shards; the reservoir sampled within cache.reservoir_memory_gb (a k-way merge of spilled runs).
CACHE_FORMAT = 2


def ids_type(vocab_size: int) -> pa.DataType:
    """Smallest integer type that holds every token id."""
    return pa.uint16() if vocab_size <= 65535 else pa.int32()


def teacher_cache_schema(vocab_size: int, capture: dict[str, Any]) -> pa.Schema:
    """Schema of a teacher-cache shard, with the capture config in its metadata (the fp16 KD columns;
    ``cache.kd_encoding=packed`` swaps them for the binary columns of :mod:`dskd.teacher.kd_pack`)."""
    return pa.schema(
        [
            ("seq_id", pa.int64()),
            ("topk_ids", pa.list_(ids_type(vocab_size))),
            ("topk_logits", pa.list_(pa.float16())),
            ("lse", pa.list_(pa.float32())),
        ],
        metadata={CAPTURE_KEY: json.dumps(capture, sort_keys=True).encode()},
    )


def hidden_schema(capture: dict[str, Any]) -> pa.Schema:
    """Schema of a hidden shard (the sense positions' final hidden states), with the capture in its metadata."""
    return pa.schema(
        [
            ("seq_id", pa.int64()),
            ("sense_positions", pa.list_(pa.int32())),
            ("sense_hidden", pa.list_(pa.float16())),
        ],
        metadata={CAPTURE_KEY: json.dumps(capture, sort_keys=True).encode()},
    )


# count = vectors kept (min(n_seen, cap)); n_seen = vectors offered, the weight when reservoirs are merged.
RESERVOIR_SCHEMA = pa.schema(
    [
        ("token_id", pa.int64()),
        ("count", pa.int32()),
        ("n_seen", pa.int64()),
        ("vectors", pa.list_(pa.float16())),
    ]
)

CANDIDATES_SCHEMA = pa.schema(
    [
        ("seq_id", pa.int64()),
        ("sense_positions", pa.list_(pa.int32())),
        ("full", pa.list_(pa.bool_())),
        ("pos_rows", pa.list_(pa.int32())),  # [n*kappa] sense-table rows, -1 = padding
        ("neg_rows", pa.list_(pa.int32())),
    ]
)


def capture_of(schema: pa.Schema) -> dict[str, Any]:
    """The capture config stored in a teacher-cache shard's schema metadata."""
    meta = schema.metadata or {}
    if CAPTURE_KEY not in meta:
        raise ValueError("not a dskd teacher-cache shard (no capture metadata); rebuild the cache")
    return json.loads(meta[CAPTURE_KEY])


def check_format(found: dict[str, Any], where: str = "artifacts/teacher_cache/<key>") -> None:
    """Refuse a teacher cache of another format (an older version wrote it) with a one-line error and the fix."""
    got = found.get("format", 1)
    if got != CACHE_FORMAT:
        made_by = "an older" if isinstance(got, int) and got < CACHE_FORMAT else "another"
        raise ValueError(
            f"teacher cache {where} has format {got} but this version reads format {CACHE_FORMAT}: it was made "
            f"by {made_by} version; rerun the teacher-cache stage (delete {where})"
        )


def check_capture(expected: dict[str, Any], found: dict[str, Any]) -> None:
    """Refuse a cache captured under a different teacher/tokenizer/k/T, naming the first difference (an older
    format first, with its own message)."""
    check_format(found)
    for key in sorted(set(expected) | set(found)):
        if expected.get(key) != found.get(key):
            raise ValueError(
                f"teacher cache was captured with {key}={found.get(key)!r} but this run needs "
                f"{expected.get(key)!r}; rebuild the cache (change nothing else) or restore the matching config"
            )
