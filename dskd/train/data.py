"""Training data from the caches: annotate shards + teacher-cache shards + candidate shards, joined by row.

The three artifacts are written shard-for-shard in the same order, so a training row is the i-th row of the
i-th shard of each. Each worker takes every ``world``-th row, the same count on every rank (DDP needs equal steps).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dskd.store.integrity import num_rows, read_table


@dataclass
class TrainRow:
    input_ids: np.ndarray  # [L] int64
    topk_ids: np.ndarray  # [L, k] int64
    topk_logits: np.ndarray  # [L, k] float32
    lse: np.ndarray  # [L] float32
    sense_positions: np.ndarray  # [n] int64
    full: np.ndarray  # [n] bool
    pos_rows: np.ndarray  # [n, kappa] int64
    neg_rows: np.ndarray  # [n, kappa] int64


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
            yield _row(ann, cache, cand, int(i), kappa)


def _row(ann, cache, cand, i: int, kappa: int) -> TrainRow:
    ids = np.asarray(ann.column("input_ids")[i].as_py(), dtype=np.int64)
    seq_len = ids.shape[0]
    topk_ids = np.asarray(cache.column("topk_ids")[i].values, dtype=np.int64).reshape(seq_len, -1)
    topk_logits = np.asarray(cache.column("topk_logits")[i].values, dtype=np.float32).reshape(seq_len, -1)
    positions = np.asarray(cand.column("sense_positions")[i].values, dtype=np.int64)
    return TrainRow(
        input_ids=ids,
        topk_ids=topk_ids,
        topk_logits=topk_logits,
        lse=np.asarray(cache.column("lse")[i].values, dtype=np.float32),
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


def collate(rows: list[TrainRow]) -> Batch:
    """Stack rows into tensors; sense positions are flattened across the batch."""
    sense_batch = np.concatenate([np.full(len(r.sense_positions), b) for b, r in enumerate(rows)])
    kappa = rows[0].pos_rows.shape[1]
    return Batch(
        input_ids=torch.from_numpy(np.stack([r.input_ids for r in rows])),
        topk_ids=torch.from_numpy(np.stack([r.topk_ids for r in rows])),
        topk_logits=torch.from_numpy(np.stack([r.topk_logits for r in rows])),
        lse=torch.from_numpy(np.stack([r.lse for r in rows])),
        sense_batch=torch.from_numpy(sense_batch.astype(np.int64)),
        sense_pos=torch.from_numpy(np.concatenate([r.sense_positions for r in rows])),
        pos_rows=torch.from_numpy(np.concatenate([r.pos_rows for r in rows]).reshape(-1, kappa)),
        neg_rows=torch.from_numpy(np.concatenate([r.neg_rows for r in rows]).reshape(-1, kappa)),
    )
