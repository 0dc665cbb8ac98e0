"""Training data from the caches: annotate shards + teacher-cache shards + candidate shards, joined by row.

The three artifacts are written shard-for-shard in the same order, so a training row is the i-th row of the
i-th shard of each. Each worker takes every ``world``-th row, the same count on every rank (DDP needs equal steps).

The KD signal is read in the encoding the cache shard's capture names (``cache.kd_encoding``): ``fp16`` rows carry
the ids/logits/lse arrays, ``packed`` rows carry their packed bytes (:class:`dskd.teacher.kd_pack.PackedKD`) and
:func:`collate` decodes them per batch: no unpacked copy exists on disk.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dskd.store.integrity import num_rows, read_table
from dskd.teacher.kd_pack import PackedKD, decode_batch, encoding_of, read_packed
from dskd.teacher.schema import capture_of


@dataclass
class TrainRow:
    input_ids: np.ndarray  # [L] int64
    topk_ids: np.ndarray | None  # [L, k] int64 (None when ``kd_packed`` holds the KD signal)
    topk_logits: np.ndarray | None  # [L, k] float32
    lse: np.ndarray | None  # [L] float32
    sense_positions: np.ndarray  # [n] int64
    full: np.ndarray  # [n] bool
    pos_rows: np.ndarray  # [n, kappa] int64
    neg_rows: np.ndarray  # [n, kappa] int64
    kd_packed: PackedKD | None = None  # [L, k] packed (cache.kd_encoding=packed), decoded by collate
    kd_temperature: float = 1.0  # T of the packed row's capture (decoded logits are T·log p)


def shard_paths(annotate_dir: Path, cache_dir: Path, index_dir: Path) -> list[tuple[Path, Path, Path]]:
    """Matching (annotate, teacher cache, candidates) shard triples, refusing a mismatch."""
    ann = sorted((annotate_dir / "train").glob("*.parquet"))
    cache = sorted((cache_dir / "shards").glob("*.parquet"))
    cand = sorted((index_dir / "candidates").glob("*.parquet"))
    if not (len(ann) == len(cache) == len(cand)) or not ann:
        raise ValueError(
            f"shard counts differ (annotate {len(ann)}, cache {len(cache)}, candidates {len(cand)}): "
            "the artifacts come from different runs; rerun the pipeline so they are rebuilt together"
        )
    return list(zip(ann, cache, cand, strict=True))


def count_rows(paths: list[tuple[Path, Path, Path]]) -> int:
    """Total training sequences (from Parquet footers, no data read)."""
    return sum(num_rows(a) for a, _, _ in paths)


def iter_rows(
    paths: list[tuple[Path, Path, Path]], rank: int, world: int, kappa: int, epoch_seed: int
) -> Iterator[TrainRow]:
    """This rank's rows, shard by shard (bounded memory), shuffled within each shard per epoch."""
    per_rank = count_rows(paths) // world
    global_index = 0
    emitted = 0
    rng = np.random.default_rng(epoch_seed)
    for ann_path, cache_path, cand_path in paths:
        ann = read_table(ann_path, columns=["seq_id", "input_ids"])
        cache = read_table(cache_path)
        capture = capture_of(cache.schema)
        cand = read_table(cand_path)
        if ann.column("seq_id").to_pylist() != cache.column("seq_id").to_pylist():
            raise ValueError(f"{cache_path.name}: seq_id order differs from {ann_path.name}; rebuild the cache")
        n = ann.num_rows
        mine = [i for i in range(n) if (global_index + i) % world == rank]
        global_index += n
        for i in rng.permutation(mine):
            if emitted == per_rank:
                return
            emitted += 1
            yield _row(ann, cache, cand, int(i), kappa, capture)


def _row(ann, cache, cand, i: int, kappa: int, capture: dict | None = None) -> TrainRow:
    ids = np.asarray(ann.column("input_ids")[i].as_py(), dtype=np.int64)
    seq_len = ids.shape[0]
    capture = capture if capture is not None else capture_of(cache.schema)
    packed = read_packed(cache, i, capture) if encoding_of(capture) == "packed" else None
    if packed is not None:
        if packed.gaps.shape[0] != seq_len:
            n = packed.gaps.shape[0]
            raise ValueError(f"teacher-cache row {i} has {n} positions, not {seq_len}; rerun the teacher-cache stage")
        topk_ids = topk_logits = lse = None
    else:
        topk_ids = np.asarray(cache.column("topk_ids")[i].values, dtype=np.int64).reshape(seq_len, -1)
        topk_logits = np.asarray(cache.column("topk_logits")[i].values, dtype=np.float32).reshape(seq_len, -1)
        lse = np.asarray(cache.column("lse")[i].values, dtype=np.float32)
    positions = np.asarray(cand.column("sense_positions")[i].values, dtype=np.int64)
    return TrainRow(
        input_ids=ids,
        topk_ids=topk_ids,
        topk_logits=topk_logits,
        lse=lse,
        kd_packed=packed,
        kd_temperature=float(capture["kd_temperature"]),
        sense_positions=positions,
        full=np.asarray(cand.column("full")[i].as_py(), dtype=bool),
        pos_rows=np.asarray(cand.column("pos_rows")[i].values, dtype=np.int64).reshape(-1, kappa),
        neg_rows=np.asarray(cand.column("neg_rows")[i].values, dtype=np.int64).reshape(-1, kappa),
    )


@dataclass
class Batch:
    input_ids: torch.Tensor  # [B, L]
    topk_ids: torch.Tensor  # [B, L, k]
    topk_logits: torch.Tensor  # [B, L, k]
    lse: torch.Tensor  # [B, L]
    sense_batch: torch.Tensor  # [M] which sequence
    sense_pos: torch.Tensor  # [M] which position
    pos_rows: torch.Tensor  # [M, kappa]
    neg_rows: torch.Tensor  # [M, kappa]

    def to(self, device: str) -> Batch:
        return Batch(**{k: v.to(device) for k, v in self.__dict__.items()})


def _kd_tensors(rows: list[TrainRow]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, logits, lse) of the batch: stacked, or decoded from the packed rows (logits T·log p, lse 0)."""
    packed = [r.kd_packed for r in rows]
    if all(p is not None for p in packed):
        return decode_batch(packed, rows[0].kd_temperature)
    if any(p is not None for p in packed):
        raise ValueError(
            "a batch mixes packed and fp16 KD rows (shards of two encodings); rerun the teacher-cache stage"
        )
    return (
        torch.from_numpy(np.stack([r.topk_ids for r in rows])),
        torch.from_numpy(np.stack([r.topk_logits for r in rows])),
        torch.from_numpy(np.stack([r.lse for r in rows])),
    )


def collate(rows: list[TrainRow]) -> Batch:
    """Stack rows into tensors (packed KD rows decoded here); sense positions are flattened across the batch."""
    sense_batch = np.concatenate([np.full(len(r.sense_positions), b) for b, r in enumerate(rows)])
    kappa = rows[0].pos_rows.shape[1]
    topk_ids, topk_logits, lse = _kd_tensors(rows)
    return Batch(
        input_ids=torch.from_numpy(np.stack([r.input_ids for r in rows])),
        topk_ids=topk_ids,
        topk_logits=topk_logits,
        lse=lse,
        sense_batch=torch.from_numpy(sense_batch.astype(np.int64)),
        sense_pos=torch.from_numpy(np.concatenate([r.sense_positions for r in rows])),
        pos_rows=torch.from_numpy(np.concatenate([r.pos_rows for r in rows]).reshape(-1, kappa)),
        neg_rows=torch.from_numpy(np.concatenate([r.neg_rows for r in rows]).reshape(-1, kappa)),
    )
