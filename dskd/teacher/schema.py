"""The teacher-cache Parquet schema, in one place (writers and readers both import it from here).

One row per sequence. Flattened fixed-size lists keep the files compact and streamable:
  topk_ids     [L*k]  uint16 when the vocab fits, else int32   (which of the teacher's logits)
  topk_logits  [L*k]  float16                                  (raw teacher logits z_i)
  lse          [L]    float32   logsumexp(z / T) over the FULL vocab: p_i = exp(z_i/T - lse) exactly
  sense_positions [n] int32     positions whose final hidden state is kept (full ∪ positive-only)
  sense_hidden [n*d]  float16   the teacher's final hidden states at those positions
Bytes per token for logits, raw: k*(2+2)+4 with uint16 ids (k=20: 84 B/token; zstd on disk: ~80), k*(4+2)+4 with
int32 ids for vocabularies over 65,535 such as Llama-3's (k=20: 124 B raw).
"""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

SCHEMA_VERSION = 1
CAPTURE_KEY = b"dskd_capture"


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


def check_capture(expected: dict[str, Any], found: dict[str, Any]) -> None:
    """Refuse a cache captured under a different teacher/tokenizer/k/T, naming the first difference."""
    for key in sorted(set(expected) | set(found)):
        if expected.get(key) != found.get(key):
            raise ValueError(
                f"teacher cache was captured with {key}={found.get(key)!r} but this run needs "
                f"{expected.get(key)!r}; rebuild the cache (change nothing else) or restore the matching config"
            )
