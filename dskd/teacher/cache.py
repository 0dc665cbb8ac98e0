"""One streaming teacher pass: top-k logits for KD, hidden states for the sense dictionary and sense positions.

Memory stays bounded: shards are processed batch by batch, and the dictionary reservoir keeps at most
``reservoir_per_token`` vectors per predicted token.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from dskd.senses.dictionary import Reservoir
from dskd.store.integrity import PARQUET_WRITE, iter_batches, read_table
from dskd.store.staging import UnitStaging
from dskd.teacher.block_influence import BlockInfluence, measure_block_influence
from dskd.teacher.kd_pack import RowGroupBuffer, logit_rows, with_logit_fields, writer_options
from dskd.teacher.model import (
    decoder_layers,
    final_hidden_and_logits,
    load_causal_lm,
    resolve_compute_dtype,
    resolve_device,
)
from dskd.teacher.schema import RESERVOIR_SCHEMA, teacher_cache_schema


def tokenizer_hash(tokenizer) -> str:
    """Hash of the tokenizer's vocabulary: a cache is only valid for the tokenizer it was built with."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


@torch.no_grad()
def teacher_outputs(
    model,
    input_ids: torch.Tensor,
    topk: int,
    temperature: float,
    kd_mode: str = "topk",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(kept logits, kept ids, lse_T, argmax ids, final hidden) for a batch [B, L].

    ``topk``: the k largest logits. ``sampled``: k ids drawn with replacement from softmax(z/T) (sorted, repeats
    kept: each draw weighs 1/k in the KD estimate), with their logits.
    """
    hidden, logits = final_hidden_and_logits(model, input_ids)
    logits = logits.float()
    lse = torch.logsumexp(logits / temperature, dim=-1)
    argmax = logits.argmax(dim=-1)
    if kd_mode == "sampled":
        probs = torch.softmax(logits / temperature, dim=-1).reshape(-1, logits.shape[-1])
        ids = torch.multinomial(probs, topk, replacement=True, generator=generator).sort(dim=-1).values
        ids = ids.reshape(*logits.shape[:-1], topk)
        values = logits.gather(-1, ids)
    else:
        values, ids = logits.topk(topk, dim=-1)
    return values, ids, lse, argmax, hidden.float()


def cache_shard(
    model,
    shard_path: Path,
    out_path: Path,
    reservoir: Reservoir,
    capture: dict[str, Any],
    batch_size: int,
    device: str,
    progress: tqdm | None = None,
    block_influence: BlockInfluence | None = None,
    block_influence_tokens: int = 0,
    generator: torch.Generator | None = None,
) -> int:
    """Run the teacher over one annotated shard; write its cache shard; feed the reservoir. Returns rows.

    The first ``block_influence_tokens`` positions of the shard also feed ``block_influence`` (layer hooks).
    """
    table = read_table(shard_path)
    seq_ids = table.column("seq_id").to_numpy()
    input_ids = np.asarray(table.column("input_ids").to_pylist(), dtype=np.int64)
    full = table.column("full_positions").to_pylist()
    posonly = table.column("posonly_positions").to_pylist()
    # The KD columns in capture's kd_encoding (fp16 or packed: dskd.teacher.kd_pack).
    schema = with_logit_fields(teacher_cache_schema(capture["vocab_size"], capture), capture)
    topk, temperature = capture["topk"], capture["kd_temperature"]
    kd_mode = capture.get("kd_mode", "topk")
    groups = RowGroupBuffer(input_ids.shape[1])  # row groups of ~32k positions, not per batch: zstd packs KD better
    # No dictionary encoding: float columns never repeat, and trying it made hidden-state writes ~3x slower.
    options = {**PARQUET_WRITE, **writer_options(capture)}  # packed KD streams: a higher zstd level
    with pq.ParquetWriter(out_path, schema, compression="zstd", use_dictionary=False, **options) as writer:
        for start in range(0, len(seq_ids), batch_size):
            batch = torch.from_numpy(input_ids[start : start + batch_size]).to(device)
            measure = block_influence is not None and block_influence.count < block_influence_tokens
            with measure_block_influence(model, block_influence) if measure else nullcontext():
                values, ids, lse, argmax, hidden = teacher_outputs(model, batch, topk, temperature, kd_mode, generator)
            hidden_np = hidden.cpu().numpy()
            # Dictionary: file each vector under the token the teacher PREDICTS there (method.md §1).
            reservoir.add(argmax.cpu().numpy().reshape(-1), hidden_np.reshape(-1, hidden_np.shape[-1]))
            logit = logit_rows(values, ids, lse, capture)
            rows = []
            for b in range(batch.shape[0]):
                i = start + b
                positions = np.union1d(full[i], posonly[i]).astype(np.int32)
                rows.append(
                    {
                        "seq_id": int(seq_ids[i]),
                        **logit[b],
                        "sense_positions": positions,
                        "sense_hidden": hidden_np[b, positions].astype(np.float16).reshape(-1),
                    }
                )
            groups.write(writer, pa.Table.from_pylist(rows, schema=schema))
            if progress is not None:
                progress.update(batch.numel())
        groups.flush(writer)
    return len(seq_ids)


def shard_cache_name(shard_path: Path) -> str:
    """Cache shard file name for an annotated shard (train-00003.parquet -> cache-00003.parquet)."""
    return shard_path.name.replace("train-", "cache-")


def cache_shard_and_sample(
    model,
    shard_index: int,
    shard_path: Path,
    out_dir: Path,
    capture: dict[str, Any],
    batch_size: int,
    reservoir_cap: int,
    device: str,
    progress: tqdm | None = None,
    block_influence_tokens: int = 0,
) -> dict[str, Any]:
    """One shard of the teacher pass: ``out_dir/shards/cache-*.parquet`` + ``out_dir/parts/reservoir-<i>.parquet``;
    with ``block_influence_tokens`` the result also holds the shard's block-influence sums.

    The shard's reservoir is seeded by ``shard_index`` alone, so merging the parts in shard order
    (:mod:`dskd.teacher.reservoir_merge`) gives the same dictionary however shards were spread over workers.
    """
    reservoir = Reservoir(cap=reservoir_cap, dim=capture["hidden_size"], seed=shard_index, dtype=np.float16)
    influence = BlockInfluence(len(decoder_layers(model))) if block_influence_tokens else None
    # Sampled-KD draws: seeded by (cache seed, shard index) alone, so any worker count draws the same ids.
    generator = torch.Generator(device=device).manual_seed(capture.get("seed", 0) * 1_000_003 + shard_index)
    (out_dir / "shards").mkdir(parents=True, exist_ok=True)
    (out_dir / "parts").mkdir(parents=True, exist_ok=True)
    rows = cache_shard(
        model,
        shard_path,
        out_dir / "shards" / shard_cache_name(shard_path),
        reservoir,
        capture,
        batch_size,
        device,
        progress,
        influence,
        block_influence_tokens,
        generator,
    )
    write_reservoir(reservoir_rows(reservoir), out_dir / "parts" / f"reservoir-{shard_index:05d}.parquet")
    done: dict[str, Any] = {"shard": shard_index, "rows": rows}
    if influence is not None:
        done["block_influence"] = influence.to_json()
    return done


class TeacherPass:
    """A loaded teacher with the cache section and capture: caches whole shards. The one code path of the teacher
    pass, run in-process or inside each Ray teacher replica."""

    def __init__(
        self, model_dir: Path, section: dict[str, Any], capture: dict[str, Any], threads: int | None = None
    ) -> None:
        if threads:
            torch.set_num_threads(threads)
        self.device = resolve_device(section["device"])  # resolved where the pass runs (a replica's node)
        self.dtype = resolve_compute_dtype(section["compute_dtype"], self.device)
        self.model = load_causal_lm(model_dir, dtype=self.dtype, device=self.device)
        self.section, self.capture = section, capture

    @torch.inference_mode()
    def cache(self, shard_index: int, shard_path: Path, out_dir: Path, progress: tqdm | None = None) -> dict[str, Any]:
        """:func:`cache_shard_and_sample` for one shard; adds the device and dtype it ran with."""
        done = cache_shard_and_sample(
            self.model,
            shard_index,
            shard_path,
            out_dir,
            self.capture,
            self.section["batch_size"],
            self.section["reservoir_per_token"],
            self.device,
            progress,
            self.section.get("block_influence_tokens", 0),
        )
        return {**done, "device": self.device, "compute_dtype": self.dtype}

    def cache_staged(
        self, shard_index: int, shard_path: Path, staging_root: Path, progress: tqdm | None = None
    ) -> dict[str, Any]:
        """:meth:`cache` into a scratch dir of the staging dir, then commit the shard (files + done marker) there:
        once this returns, a killed stage keeps the shard. The result carries the staged ``files``."""
        staging = UnitStaging(staging_root)
        scratch = staging.unit_dir()
        done = self.cache(shard_index, shard_path, scratch, progress)
        return {**done, "files": staging.commit(shard_index, scratch, done)["files"]}


def staged_shards(staging_root: Path, n_shards: int) -> dict[int, dict[str, Any]]:
    """Results of the shards a killed pass already staged intact (sha256-checked), by shard index; each is marked
    ``resumed`` and carries its staged ``files``. The others are recomputed."""
    markers = UnitStaging(staging_root).completed()
    return {
        i: {**m["result"], "files": m["files"], "resumed": True}
        for i, m in markers.items()
        if i < n_shards and m["result"].get("shard") == i
    }


def reservoir_rows(reservoir: Reservoir) -> Iterator[tuple[int, np.ndarray, int]]:
    """``(token_id, kept vectors, n_seen)`` of a live reservoir, by token id."""
    seen = reservoir.n_seen()
    for token_id, vectors in reservoir.items():
        yield token_id, vectors, seen[token_id]


def write_reservoir(rows: Iterable[tuple[int, np.ndarray, int]], out_path: Path) -> int:
    """Persist reservoir rows (float16 vectors, flattened) to Parquet; returns the token count."""
    with pq.ParquetWriter(out_path, RESERVOIR_SCHEMA, compression="zstd", **PARQUET_WRITE) as writer:
        batch: list[dict] = []
        n_tokens = 0
        for token_id, vectors, n_seen in rows:
            batch.append(
                {
                    "token_id": int(token_id),
                    "count": int(vectors.shape[0]),
                    "n_seen": int(n_seen),
                    "vectors": np.asarray(vectors, dtype=np.float16).reshape(-1),
                }
            )
            n_tokens += 1
            if len(batch) == 1024:
                writer.write_table(pa.Table.from_pylist(batch, schema=RESERVOIR_SCHEMA))
                batch = []
        if batch:
            writer.write_table(pa.Table.from_pylist(batch, schema=RESERVOIR_SCHEMA))
    return n_tokens


def reservoir_file_rows(path: Path, dim: int) -> Iterator[tuple[int, np.ndarray, int]]:
    """``(token_id, vectors [n, dim] float16, n_seen)`` from a reservoir file, batch by batch."""
    for batch in iter_batches(path, batch_size=512):
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
