"""Stage 3: the teacher pass -> top-k logits (sharded Parquet) + merged sense reservoir in the artifact; the sense
positions' hidden states go to the scratch area ``$DSKD_HOME/scratch/teacher_cache/<key>/hidden/`` (transient: the
sense-index stage, their only reader, deletes them once its artifact is complete)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from prefect import task
from tqdm import tqdm

from dskd.config import CacheConfig
from dskd.plots import block_influence_bars
from dskd.store.artifacts import stage_key
from dskd.store.scratch import publish_scratch, scratch_dir
from dskd.store.staging import UnitStaging, staging_dir
from dskd.teacher.block_influence import BlockInfluence
from dskd.teacher.cache import TeacherPass, reservoir_file_rows, staged_shards, tokenizer_hash, write_reservoir
from dskd.teacher.kd_pack import encoding_capture
from dskd.teacher.model import load_tokenizer
from dskd.teacher.reservoir import GIB
from dskd.teacher.reservoir_merge import merge_batch_rows, merge_reservoir_parts, part_paths
from dskd.teacher.schema import CACHE_FORMAT
from tasks.common import run_stage, stage_cache_policy
from tasks.prepare_teacher import teacher_dir

STAGE = "teacher_cache"


def expected_capture(teacher_key: str, model_dir: Path, section: dict[str, Any]) -> dict[str, Any]:
    """What a cache must have been captured with to serve this run (checked again before training)."""
    tokenizer = load_tokenizer(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    capture = {
        "format": CACHE_FORMAT,
        "teacher_key": teacher_key,
        "tokenizer_hash": tokenizer_hash(tokenizer),
        "vocab_size": len(tokenizer),
        "hidden_size": config["hidden_size"],
        "topk": section["topk"],
        "kd_temperature": section["kd_temperature"],
        "kd_mode": section.get("kd_mode", "topk"),
        **encoding_capture(section.get("kd_encoding", "fp16")),  # a cache in another encoding is refused
    }
    if capture["kd_mode"] == "sampled":
        capture["seed"] = section.get("seed", 0)  # the draws depend on it
    return capture


def merged_block_influence(done: list[dict[str, Any]]) -> BlockInfluence | None:
    """Sum of the shards' block-influence measurements (None when the pass did not measure it)."""
    parts = [BlockInfluence.from_json(d["block_influence"]) for d in done if d.get("block_influence")]
    if not parts:
        return None
    total = parts[0]
    for part in parts[1:]:
        total = total.merge(part)
    return total


def is_hidden_file(rel: str) -> bool:
    """Whether a staged file is a hidden shard (scratch area, not the artifact)."""
    return rel.startswith("hidden/")


def _in_process_pass(
    shards: list[Path], out_dir: Path, model_dir: Path, section: dict[str, Any], capture: dict[str, Any], tokens: int
) -> list[dict[str, Any]]:
    """Cache the shards ``out_dir`` (a staging dir) lacks, one by one, each committed as it finishes; results of
    all shards in shard order (the already staged ones marked ``resumed``)."""
    done = staged_shards(out_dir, len(shards))
    todo = [i for i in range(len(shards)) if i not in done]
    if todo:
        teacher = TeacherPass(model_dir, section, capture)
        with tqdm(total=tokens * len(todo) // len(shards), desc="teacher pass", unit="tok") as bar:
            for i in todo:
                done[i] = teacher.cache_staged(i, shards[i], out_dir, bar)
    return [done[i] for i in range(len(shards))]


@task(cache_policy=stage_cache_policy(STAGE), persist_result=True, result_serializer="json")
def cache_teacher_outputs(
    section: dict[str, Any],
    upstream: dict[str, str],
    home: str,
    tracking_cfg: dict[str, Any],
    parent_run_id: str | None = None,
    runtime: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Cache key: cache section (top-k, T, batch, reservoir cap, dtype, device) + teacher and annotate keys.

    ``runtime`` (num_workers, threads_per_worker, ray_address, ray_temp_dir, storage_uri, reservoir_memory_gb)
    only decides where and within how much memory the pass runs: with more than one worker the shards fan out
    over Ray teacher replicas, each holding at most ``reservoir_memory_gb`` of reservoir vectors (the rest is
    spilled to Parquet; the same reservoir for any budget); the artifact is the same.

    The hidden states of the sense positions are published to the scratch area (hard links from the staging dir,
    ``complete.json`` last) before the artifact is complete; they are never part of the artifact nor of the store.
    """
    runtime = runtime or {}
    workers = runtime.get("num_workers", 1)
    budget_gb = runtime.get("reservoir_memory_gb", CacheConfig.model_fields["reservoir_memory_gb"].default)
    pass_section = {**section, "reservoir_memory_gb": budget_gb}  # the key is made from ``section`` alone
    key = stage_key(STAGE, section, upstream)
    # Finished shards survive a killed pass here (files + done marker); a rerun computes only the others.
    staging = staging_dir(home, STAGE, key)

    def build(tmp: Path, extra: dict, up: dict[str, Path]) -> None:
        model_dir = teacher_dir(up["teacher"])
        capture = expected_capture(upstream["teacher"], model_dir, section)
        shards = sorted((up["annotate"] / "train").glob("*.parquet"))
        total_tokens = json.loads((up["annotate"] / "manifest.json").read_text())["metrics"]["train_tokens"]
        staging.mkdir(parents=True, exist_ok=True)  # replicas on this node (or the shared mount) write into it
        if workers > 1:
            from tasks.teacher_fanout import fan_out_teacher_pass  # Ray only when asked for

            inputs = [up["teacher"], up["annotate"]]  # fetched from storage.uri by replicas on other nodes
            done = fan_out_teacher_pass(shards, staging, model_dir, pass_section, capture, runtime, inputs)
        else:
            done = _in_process_pass(shards, staging, model_dir, pass_section, capture, total_tokens)
        # Staged copies stay until the artifact is in place; hidden shards go to the scratch area instead.
        UnitStaging(staging).link_into(done, tmp, keep=lambda rel: not is_hidden_file(rel))
        hidden = [f for d in done for f in d["files"] if is_hidden_file(f["path"])]
        info = {"stage": STAGE, "key": key, "format": CACHE_FORMAT, "tokens": total_tokens}
        publish_scratch(staging, hidden, scratch_dir(home, STAGE, key), info)
        parts = part_paths(tmp / "parts")
        cap, dim = section["reservoir_per_token"], capture["hidden_size"]
        batch_rows = merge_batch_rows(int(budget_gb * GIB), len(parts), cap, dim)
        rows = merge_reservoir_parts((reservoir_file_rows(p, dim, batch_rows) for p in parts), cap=cap)
        # Fixed 4 MiB row groups (not the budget's): the artifact is byte for byte the same for any budget.
        n_tokens = write_reservoir(rows, tmp / "reservoir.parquet")
        shutil.rmtree(tmp / "parts")  # merged; the per-shard samples are not part of the artifact
        (tmp / "capture.json").write_text(
            json.dumps({**capture, "compute_dtype": done[0]["compute_dtype"], "device": done[0]["device"]})
        )
        influence = merged_block_influence(done)
        if influence is not None:
            scores = influence.scores()
            (tmp / "block_influence.json").write_text(
                json.dumps({"scores": scores, "positions": influence.count, **influence.to_json()}, indent=1)
            )
            block_influence_bars(scores, tmp / "block_influence.png")
            extra["block_influence"] = {"scores": scores, "positions": influence.count}
        shard_bytes = sum(p.stat().st_size for p in (tmp / "shards").glob("*.parquet"))
        hidden_bytes = sum(f["bytes"] for f in hidden)
        extra["capture"] = capture
        extra["rows"] = {"sequences": sum(d["rows"] for d in done), "reservoir_tokens": n_tokens}
        computed = [d for d in done if not d.get("resumed")]
        nodes = len({d.get("node") for d in computed})  # in-process: one (None)
        spills = sum(d.get("reservoir_spill_runs", 0) for d in done)  # runs spilled within reservoir_memory_gb
        extra["execution"] = {
            "workers": workers,
            "shards": len(done),
            "nodes": nodes,
            "reservoir_spill_runs": spills,
            # what "auto" resolved to (the key hashes the section, "auto"); resumed shards carry their own
            "compute_dtypes": sorted({d["compute_dtype"] for d in done if "compute_dtype" in d}),
        }
        # Shards staged by an earlier, killed attempt were not recomputed (same bytes: seeded by shard index).
        extra["resume"] = {"shards_computed": len(computed), "shards_resumed": len(done) - len(computed)}
        extra["metrics"] = {
            "cache_bytes": shard_bytes,
            "cache_bytes_per_token": shard_bytes / max(total_tokens, 1),
            "reservoir_tokens": n_tokens,
            "reservoir_bytes": (tmp / "reservoir.parquet").stat().st_size,
            "persistent_hidden_bytes": 0,  # no hidden state of a sense position is in the artifact
            "scratch_hidden_bytes": hidden_bytes,
            "scratch_hidden_bytes_per_token": hidden_bytes / max(total_tokens, 1),
            "tokens": total_tokens,
            "teacher_workers": workers,
        }

    result = run_stage(STAGE, section, upstream, home, parent_run_id, tracking_cfg, build, runtime=runtime)
    UnitStaging(staging).remove()  # the artifact is complete (built now, or found complete)
    return result
