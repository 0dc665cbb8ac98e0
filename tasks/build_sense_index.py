"""Stage 4: per-token k-means sense dictionary (faiss, GPU when present) + exact top-κ candidates per position.

The only reader of the sense positions' hidden states: it reads them from the teacher-cache stage's scratch area
(``$DSKD_HOME/scratch/teacher_cache/<key>/``) and deletes that once its own artifact is complete. When the scratch
copy is missing (deleted, consumed by an earlier sense-index config, or the cache came from the shared store onto
another machine) it regenerates the states by running the teacher forward over the annotated shards (the cost of
one teacher pass without the logit work); the manifest's ``hidden_source`` says which it did.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from prefect import task

from dskd.lexicon.token_map import read_lexicon
from dskd.plots import senses_histogram
from dskd.senses.candidates import select_candidates
from dskd.senses.dictionary import build_sense_table, compose_virtual_senses, faiss_single_thread
from dskd.store.artifacts import artifact_dir, is_complete, read_manifest
from dskd.store.integrity import PARQUET_WRITE, read_table
from dskd.store.remote import ArtifactStore
from dskd.store.scratch import complete_scratch, remove_scratch, scratch_dir
from dskd.teacher.cache import read_reservoir, shard_hidden_name
from dskd.teacher.hidden import HiddenRow, load_teacher_for_regeneration, read_hidden_shard, regenerate_hidden
from dskd.teacher.schema import CACHE_FORMAT, CANDIDATES_SCHEMA, check_format
from tasks.common import run_stage, stage_cache_policy
from tasks.prepare_teacher import teacher_dir

STAGE = "sense_index"
CACHE_STAGE = "teacher_cache"


def _candidates_for_shard(
    hidden_rows: Iterable[HiddenRow], ann_path: Path, table, lex, section: dict, dim: int, use_gpu
):
    ann = read_table(ann_path, columns=["seq_id", "input_ids", "full_positions", "posonly_positions"])
    queries, next_tokens, full_flags, owners, positions, seq_ids = [], [], [], [], [], []
    rows_in = iter(hidden_rows)
    for i in range(ann.num_rows):
        seq_id, union, hidden = next(rows_in, (None, None, None))
        if seq_id != ann.column("seq_id")[i].as_py():
            raise ValueError(
                f"{ann_path.name}: hidden states of row {i} are missing or out of order; rerun the "
                "teacher-cache stage (delete artifacts/teacher_cache/<key>)"
            )
        seq_ids.append(seq_id)
        ids = np.asarray(ann.column("input_ids")[i].values, dtype=np.int64)
        full = np.asarray(ann.column("full_positions")[i].values, dtype=np.int64)
        posonly = np.asarray(ann.column("posonly_positions")[i].values, dtype=np.int64)
        # A position may be drawn in both sets: it then gets one full and one positive-only entry.
        entries = np.concatenate([full, posonly])
        flags = np.concatenate([np.ones(len(full), bool), np.zeros(len(posonly), bool)])
        queries.append(hidden[np.searchsorted(union, entries)])
        next_tokens.append(ids[entries + 1])
        full_flags.append(flags)
        owners.append(np.full(len(entries), i))
        positions.append(entries)
    q = np.concatenate(queries) if queries else np.zeros((0, dim), np.float32)
    pos_rows, neg_rows = select_candidates(
        table,
        q,
        np.concatenate(next_tokens),
        np.concatenate(full_flags),
        lex,
        kappa=section["kappa"],
        max_related=section["max_related"],
        self_in_both_pools=section["self_in_both_pools"],
        seed=section["seed"],
        use_gpu=use_gpu,
    )
    owner = np.concatenate(owners)
    flags_all, pos_all = np.concatenate(full_flags), np.concatenate(positions)
    rows = []
    for i in range(ann.num_rows):
        sel = owner == i
        rows.append(
            {
                "seq_id": int(seq_ids[i]),
                "sense_positions": pos_all[sel].astype(np.int32),
                "full": flags_all[sel],
                "pos_rows": pos_rows[sel].reshape(-1).astype(np.int32),
                "neg_rows": neg_rows[sel].reshape(-1).astype(np.int32),
            }
        )
    return pa.Table.from_pylist(rows, schema=CANDIDATES_SCHEMA), pos_rows, neg_rows


@task(
    cache_policy=stage_cache_policy(STAGE, consumes_scratch_of=CACHE_STAGE),
    persist_result=True,
    result_serializer="json",
)
def build_sense_index(
    section: dict[str, Any],
    upstream: dict[str, str],
    home: str,
    tracking_cfg: dict[str, Any],
    parent_run_id: str | None = None,
    runtime: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Cache key: senses section (k, κ, pools, seeds) + lexicon, annotate and teacher-cache keys.

    Hidden states: the teacher-cache scratch copy when complete, else regenerated (the teacher artifact is
    fetched from ``runtime["storage_uri"]`` when this machine lacks it). The scratch copy is deleted once this
    stage's artifact is complete (built now or found complete).
    """
    cache_key = upstream["teacher_cache"]
    where = f"artifacts/teacher_cache/{cache_key}"
    scratch = scratch_dir(home, CACHE_STAGE, cache_key)

    def build(tmp: Path, extra: dict, up: dict[str, Path]) -> None:
        use_gpu = None if section["use_gpu"] == "auto" else False
        capture = json.loads((up["teacher_cache"] / "capture.json").read_text())
        check_format(capture, where)  # an older cache kept sense_hidden in its shards: refuse it, one line
        dim, vocab = capture["hidden_size"], capture["vocab_size"]
        lex = read_lexicon(up["lexicon"])
        hidden_of, extra["hidden_source"] = _hidden_source(up["teacher_cache"], dim)
        with faiss_single_thread():
            _build(tmp, extra, up, lex, dim, vocab, use_gpu, hidden_of)

    def _hidden_source(cache_dir: Path, dim: int) -> tuple[Callable[[Path], Iterable[HiddenRow]], str]:
        info = complete_scratch(scratch)
        if info is not None and info.get("format") == CACHE_FORMAT:
            return (lambda ann: read_hidden_shard(scratch / "hidden" / shard_hidden_name(ann), dim, where)), "scratch"
        manifest = read_manifest(cache_dir)
        teacher = artifact_dir(home, "teacher", manifest["upstream"]["teacher"])
        storage_uri = (runtime or {}).get("storage_uri")
        if not is_complete(teacher) and storage_uri:
            ArtifactStore(storage_uri).fetch("teacher", manifest["upstream"]["teacher"], teacher)
        if not is_complete(teacher):
            raise ValueError(
                f"the hidden states of {where} are gone (no {scratch}) and so is its teacher ({teacher}) to "
                "regenerate them; rerun the pipeline (it rebuilds the teacher) or set storage.uri to the shared store"
            )
        section_ = manifest["config"]
        model, device = load_teacher_for_regeneration(teacher_dir(teacher), section_)
        return (lambda ann: regenerate_hidden(model, ann, section_["batch_size"], device)), "regenerated"

    def _build(tmp: Path, extra: dict, up: dict[str, Path], lex, dim: int, vocab: int, use_gpu, hidden_of) -> None:
        table = build_sense_table(
            read_reservoir(up["teacher_cache"] / "reservoir.parquet", dim),
            n_ids=vocab,
            dim=dim,
            k=section["k"],
            seed=section["seed"],
            niter=section["niter"],
            use_gpu=use_gpu,
            progress=True,
        )
        table = compose_virtual_senses(table, vocab, lex.virtual_spans, section["span_samples"], section["seed"])
        table.save(tmp / "senses.safetensors")
        # A global exact index over every sense row, for inspection/probes (written by faiss, not pickle).
        index = faiss.IndexFlatL2(dim)
        index.add(table.vectors.astype(np.float32))
        faiss.write_index(index, str(tmp / "senses.faiss"))
        (tmp / "candidates").mkdir()
        ann_shards = sorted((up["annotate"] / "train").glob("*.parquet"))
        cache_shards = sorted((up["teacher_cache"] / "shards").glob("*.parquet"))
        n_entries = n_full_with_neg = n_pos = 0
        for ann_path, cache_path in zip(ann_shards, cache_shards, strict=True):
            hidden_rows = hidden_of(ann_path)
            out, pos_rows, neg_rows = _candidates_for_shard(hidden_rows, ann_path, table, lex, section, dim, use_gpu)
            cand_path = tmp / "candidates" / cache_path.name.replace("cache-", "cand-")
            pq.write_table(out, cand_path, compression="zstd", **PARQUET_WRITE)
            n_entries += len(pos_rows)
            n_pos += int((pos_rows >= 0).any(1).sum())
            n_full_with_neg += int((neg_rows >= 0).any(1).sum())
        counts = table.n_senses()
        senses_histogram(counts[:vocab], tmp / "senses_per_token.png")
        extra["metrics"] = {
            "sense_rows": int(table.vectors.shape[0]),
            "tokens_with_senses": int((counts[:vocab] > 0).sum()),
            "virtual_with_senses": int((counts[vocab:] > 0).sum()),
            "candidate_entries": n_entries,
            "entries_with_positives": n_pos,
            "entries_with_negatives": n_full_with_neg,
            "faiss_gpus": faiss.get_num_gpus(),
        }

    result = run_stage(STAGE, section, upstream, home, parent_run_id, tracking_cfg, build, runtime=runtime)
    remove_scratch(scratch)  # this artifact is complete: the hidden states have served their only reader
    return result
