"""One streaming teacher pass: top-k logits for KD, hidden states for the sense dictionary and sense positions.

Memory stays bounded: shards are processed batch by batch, and the dictionary reservoir keeps at most
``reservoir_per_token`` vectors per predicted token, at most ``reservoir_memory_gb`` of them in RAM (the rest
spilled to Parquet runs beside the shard: :class:`dskd.teacher.reservoir.BoundedReservoir`).

Per shard the pass writes ``shards/cache-<i>.parquet`` (what training reads: top-k logits + lse),
``hidden/hidden-<i>.parquet`` (the sense positions' hidden states: transient, only the sense-index stage reads
them) and ``parts/reservoir-<i>.parquet`` (the shard's reservoir, merged by the stage).
"""

from __future__ import annotations

import hashlib
import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from dskd.host_memory import keep_freed_memory
from dskd.store.integrity import lean_write_options, read_table
from dskd.store.staging import UnitStaging
from dskd.teacher.block_influence import BlockInfluence, measure_block_influence
from dskd.teacher.host_writer import HostWriter
from dskd.teacher.kd_pack import RowGroupBuffer, logit_rows, with_logit_fields, writer_options
from dskd.teacher.model import (
    decoder_layers,
    final_hidden_and_logits,
    load_causal_lm,
    resolve_compute_dtype,
    resolve_device,
)
from dskd.teacher.reservoir import GIB, BoundedReservoir, remove_spill_dir, row_group_bytes, write_reservoir
from dskd.teacher.reservoir import read_reservoir as read_reservoir  # re-exported: readers import it from here
from dskd.teacher.reservoir import reservoir_file_rows as reservoir_file_rows
from dskd.teacher.reservoir import reservoir_rows as reservoir_rows
from dskd.teacher.schema import hidden_schema, teacher_cache_schema


def tokenizer_hash(tokenizer) -> str:
    """Hash of the tokenizer's vocabulary: a cache is only valid for the tokenizer it was built with."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


# Bytes of float32 logits reduced per logsumexp call. logsumexp makes a full-size temporary (z - max) and reads it
# twice; on a CPU a slice that stays in a core's L2 (8 rows at V = 49,152) makes that ~3.5x faster than one call
# over the batch (float32: 81 -> 23 ms per 1,024 rows; bench/README "logsumexp slices, leaner Parquet writes"). On a
# GPU the budget only bounds the temporary (an 8B teacher's batch of fp32 logits is ~8 GB), in few launches.
LSE_SLICE_BYTES = {"cpu": 3 << 19, "cuda": 256 << 20}


def lse_rows_per_slice(vocab_size: int, device_type: str) -> int:
    """Rows of [*, vocab_size] logits per logsumexp slice on ``device_type`` (at least 1)."""
    budget = LSE_SLICE_BYTES.get(device_type, LSE_SLICE_BYTES["cuda"])
    return max(1, budget // (4 * vocab_size))


def logsumexp_fp32(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """logsumexp(z / T) over the last dim, accumulated in float32, for logits of any float dtype ([..., V] -> [...]).

    Slice by slice (:data:`LSE_SLICE_BYTES`): bf16/fp16 logits are upcast one slice at a time, so the pass never
    holds a float32 copy of the whole batch's logits, and float32 ones are reduced while the slice is in cache."""
    flat = logits.reshape(-1, logits.shape[-1])
    rows_per = lse_rows_per_slice(flat.shape[1], logits.device.type)
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)
    for start in range(0, flat.shape[0], rows_per):
        rows = flat[start : start + rows_per].float()  # no copy when already float32
        out[start : start + rows_per] = torch.logsumexp(rows if temperature == 1.0 else rows / temperature, dim=-1)
    return out.reshape(logits.shape[:-1])


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

    Two passes over the vocabulary in top-k mode: logsumexp and top-k (whose first id is the argmax), both on the
    logits in the teacher's dtype (bf16 -> float32 is exact, so the kept values and ids are those of a float32
    copy; the logsumexp accumulates in float32).
    """
    hidden, logits = final_hidden_and_logits(model, input_ids)
    lse = logsumexp_fp32(logits, temperature)
    if kd_mode == "sampled":
        logits = logits.float()
        scaled = logits if temperature == 1.0 else logits / temperature
        probs = torch.softmax(scaled, dim=-1).reshape(-1, logits.shape[-1])
        ids = torch.multinomial(probs, topk, replacement=True, generator=generator).sort(dim=-1).values
        ids = ids.reshape(*logits.shape[:-1], topk)
        values = logits.gather(-1, ids)
        argmax = logits.argmax(dim=-1)
    else:
        values, ids = logits.topk(topk, dim=-1)  # sorted: values[..., 0] is the max
        # The argmax as argmax() gives it, the lowest id among tied maxima (~3 % of bf16 positions tie): the
        # reservoir files the same vectors under the same tokens as before. (More than k tied maxima: never seen.)
        ties = values == values[..., :1]
        argmax = torch.where(ties, ids, torch.iinfo(ids.dtype).max).min(dim=-1).values
        values = values.float()
    return values, ids, lse, argmax, hidden.float()


def cache_shard(
    model,
    shard_path: Path,
    out_path: Path,
    reservoir,
    capture: dict[str, Any],
    batch_size: int,
    device: str,
    progress: tqdm | None = None,
    block_influence: BlockInfluence | None = None,
    block_influence_tokens: int = 0,
    generator: torch.Generator | None = None,
    hidden_path: Path | None = None,
    overlap: bool = True,
) -> int:
    """Run the teacher over one annotated shard; write its cache shard (and, with ``hidden_path``, its hidden
    shard); feed the reservoir (a :class:`BoundedReservoir` or a ``Reservoir``). Returns rows.

    The first ``block_influence_tokens`` positions of the shard also feed ``block_influence`` (layer hooks).
    ``overlap``: the host work (reservoir, encoding, Parquet writes) on a writer thread behind the next forward
    (:mod:`dskd.teacher.host_writer`); False runs it inline. The files are the same either way.
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
    hidden_writer = None
    if hidden_path:
        hidden = hidden_schema(capture)
        hidden_writer = pq.ParquetWriter(hidden_path, hidden, **lean_write_options(hidden))
    # Packed KD streams: a higher zstd level (kd_pack.writer_options); the hidden shards keep the default level.
    with (
        pq.ParquetWriter(out_path, schema, **lean_write_options(schema), **writer_options(capture)) as writer,
        hidden_writer or nullcontext(),
    ):

        def host_work(item: tuple[int, tuple[torch.Tensor, ...]]) -> None:
            start, (values, ids, lse, argmax, hidden) = item
            hidden_np = hidden.cpu().numpy()
            # Dictionary: file each vector under the token the teacher PREDICTS there (method.md §1).
            reservoir.add(argmax.cpu().numpy().reshape(-1), hidden_np.reshape(-1, hidden_np.shape[-1]))
            logit = logit_rows(values, ids, lse, capture)
            rows, hidden_rows = [], []
            for b in range(hidden_np.shape[0]):
                i = start + b
                positions = np.union1d(full[i], posonly[i]).astype(np.int32)
                rows.append({"seq_id": int(seq_ids[i]), **logit[b]})
                hidden_rows.append(
                    {
                        "seq_id": int(seq_ids[i]),
                        "sense_positions": positions,
                        "sense_hidden": hidden_np[b, positions].astype(np.float16).reshape(-1),
                    }
                )
            groups.write(writer, pa.Table.from_pylist(rows, schema=schema))
            if hidden_writer is not None:
                hidden_writer.write_table(pa.Table.from_pylist(hidden_rows, schema=hidden_writer.schema))

        # Host work of batch i on the writer thread while batch i+1's forward runs (same order: same bytes).
        with HostWriter(host_work, overlap=overlap) as host:
            for start in range(0, len(seq_ids), batch_size):
                batch = torch.from_numpy(input_ids[start : start + batch_size]).to(device)
                measure = block_influence is not None and block_influence.count < block_influence_tokens
                with measure_block_influence(model, block_influence) if measure else nullcontext():
                    outputs = teacher_outputs(model, batch, topk, temperature, kd_mode, generator)
                host.submit((start, outputs))
                if progress is not None:
                    progress.update(batch.numel())
        groups.flush(writer)
    return len(seq_ids)


def shard_cache_name(shard_path: Path) -> str:
    """Cache shard file name for an annotated shard (train-00003.parquet -> cache-00003.parquet)."""
    return shard_path.name.replace("train-", "cache-")


def shard_hidden_name(shard_path: Path) -> str:
    """Hidden shard file name for an annotated shard (train-00003.parquet -> hidden-00003.parquet)."""
    return shard_path.name.replace("train-", "hidden-")


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
    reservoir_memory_gb: float | None = None,
) -> dict[str, Any]:
    """One shard of the teacher pass: ``out_dir/shards/cache-<i>.parquet``, ``out_dir/hidden/hidden-<i>.parquet``
    and ``out_dir/parts/reservoir-<i>.parquet``; with ``block_influence_tokens`` the result also holds the
    shard's block-influence sums.

    The shard's reservoir is seeded by ``shard_index`` alone and does not depend on ``reservoir_memory_gb`` (what
    does not fit is spilled to ``out_dir/.spill``, removed before returning), so merging the parts in shard order
    (:mod:`dskd.teacher.reservoir_merge`) gives the same dictionary however shards were spread over workers.
    """
    spill = out_dir / ".spill"
    budget = None if reservoir_memory_gb is None else int(reservoir_memory_gb * GIB)
    reservoir = BoundedReservoir(reservoir_cap, capture["hidden_size"], shard_index, np.float16, budget, spill)
    influence = BlockInfluence(len(decoder_layers(model))) if block_influence_tokens else None
    # Sampled-KD draws: seeded by (cache seed, shard index) alone, so any worker count draws the same ids.
    generator = torch.Generator(device=device).manual_seed(capture.get("seed", 0) * 1_000_003 + shard_index)
    (out_dir / "shards").mkdir(parents=True, exist_ok=True)
    (out_dir / "parts").mkdir(parents=True, exist_ok=True)
    (out_dir / "hidden").mkdir(parents=True, exist_ok=True)
    try:
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
            hidden_path=out_dir / "hidden" / shard_hidden_name(shard_path),
        )
        part = out_dir / "parts" / f"reservoir-{shard_index:05d}.parquet"
        write_reservoir(reservoir.rows(), part, row_group_bytes(budget))
        spilled = reservoir.spills
    finally:
        reservoir.close()
        remove_spill_dir(spill)  # never committed with the shard's files
    done: dict[str, Any] = {"shard": shard_index, "rows": rows, "reservoir_spill_runs": spilled}
    if influence is not None:
        done["block_influence"] = influence.to_json()
    return done


class TeacherPass:
    """A loaded teacher with the cache section and capture: caches whole shards. The one code path of the teacher
    pass, run in-process or inside each Ray teacher replica."""

    def __init__(
        self, model_dir: Path, section: dict[str, Any], capture: dict[str, Any], threads: int | None = None
    ) -> None:
        keep_freed_memory()  # the per-batch [B, L, V] logits reuse the heap instead of page-faulting
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
            self.section.get("reservoir_memory_gb"),
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
