"""Compact KD columns of the teacher cache (``cache.kd_encoding=packed``): delta-coded ids + 8-bit log-probabilities.

Per position the cache keeps k ids (the top-k, or k draws for sampled KD) and the teacher's log-probability
log p_i = z_i/T − lse_T on each. ``fp16`` (the original encoding) stores ``topk_ids`` (uint16), ``topk_logits``
(fp16) and ``lse`` (fp32): 4k + 4 B raw per position. ``packed`` stores four binary columns per sequence row
(Parquet BYTE_ARRAY, one value per row, zstd, no dictionary, page checksums like every column):

  kd_gaps  [L*k] uint8   the ids sorted ascending, delta-coded: the first gap is the id itself, then id_j − id_{j−1};
                         0 = the same id again (sampled-KD draws keep their counts as runs of zero gaps); a gap
                         ≥ 255 is written as the escape byte 255 and its value goes to ``kd_wide``
  kd_wide  [n_esc*w]     the escaped gaps in row-major order, as w little-endian byte planes (all low bytes, then
                         all high bytes: zstd packs the planes better than interleaved); w = 2, 4 when V > 65,536
  kd_q     [n_distinct]  uint8 per DISTINCT id (a repeat has none): q_i = round((m − log p_i) / step), clipped to
                         0..255, m = the row's max log p; step = 1/4 nat (``STEP``, recorded in the capture)
  kd_mass  [L]   uint8   the kept mass M = Σ_distinct p_i as a logit code c = round(8·ln(M/(1−M))) + 128, clipped
                         to 0..255 (M and the rest 1 − M down to 1.3e-7)

Raw bytes per position: k + (k_distinct) + 1 + w·(escaped gaps): for top-20, 41 B + ~2 B per escape, against 84 B
for fp16; zstd then squeezes the streams (bench/README.md "Packed KD columns": 39.6 B/token at k=20 in 64-sequence
shards, against 74.9 for fp16).

Decoding: log p̂_i = log M̂ − q_i·step − log Σ_j exp(−q_j·step) (j over the distinct ids), M̂ = sigmoid((c−128)/8).
The row max is implied (normalisation to M̂), so no max or lse is stored. Errors: each code is within step/2 of
m − log p_i (ids within 255·step = 64 nats of the max; further ones are clipped, their p being < 1e-27·p_max),
so differences log p̂_i − log p̂_j are within ``step`` of the truth; M̂ is within 1/16 in logit of M, i.e. the
(kept, rest) split is nearly exact even when the rest is tiny (what an fp16 max would get wrong: the rest cell is
1 − Σ p̂_i). The KD losses take the decoded values as logits z' = T·log p̂ with lse' = 0 (a constant shift of the
logits: p_i = exp(z'_i/T − lse')), so :func:`dskd.train.losses.kd_loss` and ``sampled_kd_loss`` read the packed form
unchanged. The ids come back in ascending order, not the teacher's top-k order: both losses sum over the k ids and
do not depend on the order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

ENCODINGS = ("fp16", "packed")
FP16_COLUMNS = ("topk_ids", "topk_logits", "lse")
PACKED_COLUMNS = ("kd_gaps", "kd_wide", "kd_q", "kd_mass")
STEP = 0.25  # nats per value code (exact in binary); bench/README.md has the KL and bytes of 1/8 and 1/2
Q_MAX = 255
ESCAPE = 255  # gap byte meaning "the gap is in kd_wide"
MASS_SCALE, MASS_ZERO = 8.0, 128  # kept-mass code: round(8 * logit(M)) + 128
KD_ZSTD_LEVEL = 9
PACK_VERSION = 1  # recorded in the capture: a change of layout refuses older packed caches


def encoding_of(capture: dict[str, Any]) -> str:
    """The KD encoding a capture was written with (``fp16`` for caches that predate the field)."""
    return capture.get("kd_encoding", "fp16")


def encoding_capture(encoding: str, step: float = STEP) -> dict[str, Any]:
    """Capture entries of an encoding: the training's capture check then refuses a cache in another one."""
    if encoding not in ENCODINGS:
        raise ValueError(f"cache.kd_encoding={encoding!r} is not one of {ENCODINGS}; fix the config")
    if encoding == "fp16":
        return {"kd_encoding": "fp16"}
    return {"kd_encoding": "packed", "kd_pack": {"version": PACK_VERSION, "step": step}}


def check_encoding(expected: dict[str, Any], found: dict[str, Any]) -> None:
    """Refuse a cache whose KD encoding differs from the run's (or predates the field), with a one-line error."""
    want, got = expected.get("kd_encoding", "fp16"), found.get("kd_encoding")
    if got == want and found.get("kd_pack") == expected.get("kd_pack"):
        return
    if got is None:
        what = "no kd_encoding (an older cache format)"
    elif got == want:
        what = f"packed layout {found.get('kd_pack')} (this version writes {expected.get('kd_pack')})"
    else:
        what = f"kd_encoding={got!r}"
    raise ValueError(
        f"teacher cache was written with {what} but this run reads cache.kd_encoding={want!r}; rerun the "
        "teacher-cache stage (`dskd run` rebuilds it) or set cache.kd_encoding to the cache's encoding"
    )


def logit_columns(capture: dict[str, Any]) -> tuple[str, ...]:
    """Names of the KD columns of a cache shard written with ``capture``."""
    return PACKED_COLUMNS if encoding_of(capture) == "packed" else FP16_COLUMNS


def with_logit_fields(schema: pa.Schema, capture: dict[str, Any]) -> pa.Schema:
    """The cache-shard schema for ``capture``'s encoding: ``schema`` (the fp16 one) with its three KD fields
    replaced by the packed binary columns, at the same place, metadata kept."""
    if encoding_of(capture) == "fp16":
        return schema
    at = schema.names.index(FP16_COLUMNS[0])
    kept = [f for f in schema if f.name not in FP16_COLUMNS]
    packed = [pa.field(name, pa.binary()) for name in PACKED_COLUMNS]
    return pa.schema(kept[:at] + packed + kept[at:], metadata=schema.metadata)


def writer_options(capture: dict[str, Any]) -> dict[str, Any]:
    """Extra ParquetWriter options of the KD columns: zstd level 9 on the packed byte streams (−1.2 B/token against
    level 1 at k=20, ~3 µs/token of writing; the fp16 columns gain nothing from it and keep the default level)."""
    if encoding_of(capture) != "packed":
        return {}
    return {"compression_level": {name: KD_ZSTD_LEVEL for name in PACKED_COLUMNS}}


def _wide_bytes(vocab_size: int) -> int:
    return 2 if vocab_size <= 65536 else 4


def _distinct(gaps: np.ndarray) -> np.ndarray:
    """[N, k] bool: the first occurrence of each id (a zero gap after the first column is a repeat)."""
    out = gaps != 0
    out[:, 0] = True
    return out


@dataclass(frozen=True)
class PackedKD:
    """The packed KD signal of N positions with k ids each (one sequence row, or a batch of rows stacked)."""

    gaps: np.ndarray  # [N, k] uint8
    wide: np.ndarray  # [n_esc] int64, the escaped gaps in row-major order
    q: np.ndarray  # [n_distinct] uint8, row-major over the distinct ids
    mass: np.ndarray  # [N] uint8
    step: float = STEP  # nats per value code (the capture's kd_pack.step)

    def to_columns(self, vocab_size: int) -> dict[str, bytes]:
        """The four binary column values of one cache row."""
        w = _wide_bytes(vocab_size)
        planes = self.wide.astype(f"<u{w}").view(np.uint8).reshape(-1, w).T
        return {
            "kd_gaps": self.gaps.tobytes(),
            "kd_wide": np.ascontiguousarray(planes).tobytes(),
            "kd_q": self.q.tobytes(),
            "kd_mass": self.mass.tobytes(),
        }

    @classmethod
    def from_columns(
        cls, cols: dict[str, bytes], k: int, vocab_size: int, step: float = STEP, where: str = "cache row"
    ) -> PackedKD:
        """One row's column values (zero-copy where possible); inconsistent lengths are a one-line error."""
        gaps = np.frombuffer(cols["kd_gaps"], np.uint8)
        mass = np.frombuffer(cols["kd_mass"], np.uint8)
        q = np.frombuffer(cols["kd_q"], np.uint8)
        n, w = mass.shape[0], _wide_bytes(vocab_size)
        ok = gaps.shape[0] == n * k
        n_esc = int((gaps == ESCAPE).sum())
        n_distinct = int(_distinct(gaps.reshape(n, k)).sum()) if ok else -1
        if not ok or q.shape[0] != n_distinct or len(cols["kd_wide"]) != n_esc * w:
            raise ValueError(
                f"{where}: packed KD columns do not fit together ({gaps.shape[0]} gap bytes for {n} positions x "
                f"k={k}, {q.shape[0]} value bytes, {len(cols['kd_wide'])} wide bytes for {n_esc} escapes): the cache "
                "is corrupt or of another layout; rerun the teacher-cache stage"
            )
        planes = np.frombuffer(cols["kd_wide"], np.uint8).reshape(w, n_esc)
        wide = (planes.astype(np.int64) << (8 * np.arange(w, dtype=np.int64))[:, None]).sum(0)
        return cls(gaps.reshape(n, k), wide, q, mass, step)

    @staticmethod
    def concat(parts: list[PackedKD]) -> PackedKD:
        """Stack rows into one (every stream stays row-major, so decoding the stack decodes every row)."""
        arrays = (np.concatenate([getattr(p, f) for p in parts]) for f in ("gaps", "wide", "q", "mass"))
        return PackedKD(*arrays, step=parts[0].step)


def _log_mass(logp: np.ndarray, distinct: np.ndarray) -> np.ndarray:
    """[N] log Σ_distinct p_i, float64."""
    x = np.where(distinct, logp.astype(np.float64), -np.inf)
    top = x.max(axis=1)
    return top + np.log(np.exp(x - top[:, None]).sum(axis=1))


def pack(ids: np.ndarray, logp: np.ndarray, vocab_size: int, step: float = STEP) -> PackedKD:
    """Pack ``ids [N, k]`` (any order, repeats allowed) and their log-probabilities ``logp [N, k]``."""
    ids = np.asarray(ids, dtype=np.int64)
    order = np.argsort(ids, axis=1, kind="stable")
    sorted_ids = np.take_along_axis(ids, order, axis=1)
    sorted_logp = np.take_along_axis(np.asarray(logp, dtype=np.float64), order, axis=1)
    gaps = np.diff(sorted_ids, axis=1, prepend=0)
    escaped = gaps >= ESCAPE
    distinct = _distinct(gaps)
    codes = np.rint((sorted_logp.max(axis=1, keepdims=True) - sorted_logp) / step)
    log_m = np.minimum(_log_mass(sorted_logp, distinct), 0.0)
    with np.errstate(divide="ignore"):  # M = 1 (k = V): logit +inf, clipped to the top code
        logit = log_m - np.log(-np.expm1(log_m))
    mass = np.clip(np.rint(logit * MASS_SCALE) + MASS_ZERO, 0, 255)
    return PackedKD(
        gaps=np.where(escaped, ESCAPE, gaps).astype(np.uint8),
        wide=gaps[escaped],
        q=np.clip(codes, 0, Q_MAX).astype(np.uint8)[distinct],
        mass=mass.astype(np.uint8),
        step=step,
    )


def unpack(packed: PackedKD) -> tuple[np.ndarray, np.ndarray]:
    """``(ids [N, k] int64 ascending, log p̂ [N, k] float32)`` of a packed signal (repeats get their id's value)."""
    gaps = packed.gaps.astype(np.int64)
    gaps[packed.gaps == ESCAPE] = packed.wide  # boolean-mask order is row-major, as written
    ids = np.cumsum(gaps, axis=1)
    distinct = _distinct(packed.gaps)
    k = gaps.shape[1]
    codes = np.zeros(gaps.shape, dtype=np.float64)
    codes[distinct] = packed.q
    # A repeat takes the value of the last distinct id before it (its own first occurrence).
    last = np.maximum.accumulate(np.where(distinct, np.arange(k), 0), axis=1)
    codes = np.take_along_axis(codes, last, axis=1)
    rel = -codes * packed.step  # log p_i − m, up to rounding
    log_norm = _log_mass(rel, distinct)
    logit = (packed.mass.astype(np.float64) - MASS_ZERO) / MASS_SCALE
    log_m = -np.logaddexp(0.0, -logit)  # log sigmoid
    return ids, (rel + (log_m - log_norm)[:, None]).astype(np.float32)


def logit_rows(
    values: torch.Tensor, ids: torch.Tensor, lse: torch.Tensor, capture: dict[str, Any]
) -> list[dict[str, Any]]:
    """The KD column values of each sequence of a teacher batch (``values``/``ids [B, L, k]`` raw logits and ids,
    ``lse [B, L]``), in ``capture``'s encoding."""
    vocab = capture["vocab_size"]
    ids_np = ids.cpu().numpy()
    if encoding_of(capture) == "fp16":
        id_dtype = np.uint16 if vocab <= 65535 else np.int32  # dskd.teacher.schema.ids_type
        values_np, lse_np = values.cpu().numpy(), lse.cpu().numpy()
        return [
            {
                "topk_ids": ids_np[b].astype(id_dtype).reshape(-1),
                "topk_logits": values_np[b].astype(np.float16).reshape(-1),
                "lse": lse_np[b].astype(np.float32),
            }
            for b in range(ids_np.shape[0])
        ]
    logp = (values.float() / capture["kd_temperature"] - lse.float().unsqueeze(-1)).cpu().numpy()
    k, step = ids_np.shape[-1], capture["kd_pack"]["step"]
    return [
        pack(ids_np[b].reshape(-1, k), logp[b].reshape(-1, k), vocab, step).to_columns(vocab)
        for b in range(ids_np.shape[0])
    ]


def read_packed(table: pa.Table, i: int, capture: dict[str, Any]) -> PackedKD:
    """Row ``i`` of a packed cache table (its bytes, not decoded)."""
    cols = {name: table.column(name)[i].as_py() for name in PACKED_COLUMNS}
    step = capture["kd_pack"]["step"]
    return PackedKD.from_columns(cols, capture["topk"], capture["vocab_size"], step, f"teacher-cache row {i}")


def decode_batch(parts: list[PackedKD], temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode a batch of packed rows (each ``[L, k]``) into what the KD losses take: ``(ids [B, L, k] int64,
    logits [B, L, k] float32 = T·log p̂, lse [B, L] = 0)``."""
    n_rows, (seq_len, k) = len(parts), parts[0].gaps.shape
    ids, logp = unpack(PackedKD.concat(parts))
    return (
        torch.from_numpy(ids.reshape(n_rows, seq_len, k)),
        torch.from_numpy((logp * np.float32(temperature)).reshape(n_rows, seq_len, k)),
        torch.zeros(n_rows, seq_len, dtype=torch.float32),
    )


# Row groups sized in positions, not in teacher batches: ParquetWriter.write_table closes a row group per call and
# zstd compresses each column chunk on its own, so one group per teacher batch (8 sequences) leaves the KD byte
# streams far less compressed than larger groups do (bench/README.md "Packed KD columns"). Memory: the buffered
# positions of every column of the shard, a few MB for the default teacher.
ROW_GROUP_POSITIONS = 32768  # 256 sequences of 128 tokens, 16 of 2048


class RowGroupBuffer:
    """Collects a writer's tables and writes them as one row group per ``positions`` buffered positions."""

    def __init__(self, seq_len: int, positions: int = ROW_GROUP_POSITIONS) -> None:
        self.rows_per_group = max(1, positions // max(seq_len, 1))
        self._tables: list[pa.Table] = []
        self._rows = 0

    def write(self, writer: pq.ParquetWriter, table: pa.Table) -> None:
        """Buffer ``table``; write a row group to ``writer`` when enough rows are buffered."""
        self._tables.append(table)
        self._rows += table.num_rows
        if self._rows >= self.rows_per_group:
            self.flush(writer)

    def flush(self, writer: pq.ParquetWriter) -> None:
        """Write what is buffered as one row group (nothing when empty). Call once more after the last batch."""
        if self._tables:
            writer.write_table(pa.concat_tables(self._tables), row_group_size=self._rows)
            self._tables, self._rows = [], 0
