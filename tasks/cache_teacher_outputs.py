"""Stage 3: one streaming teacher pass -> top-k logits + sense hidden states (sharded Parquet) + reservoir."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from prefect import task
from tqdm import tqdm

from dskd.senses import Reservoir
from dskd.teacher import load_causal_lm, load_tokenizer, resolve_compute_dtype, resolve_device
from dskd.teacher_cache import cache_shard, tokenizer_hash, write_reservoir
from tasks.common import run_stage, stage_cache_policy
from tasks.prepare_teacher import teacher_dir

STAGE = "teacher_cache"


def expected_capture(teacher_key: str, model_dir: Path, section: dict[str, Any]) -> dict[str, Any]:
    """What a cache must have been captured with to serve this run (checked again before training)."""
    tokenizer = load_tokenizer(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    return {
        "teacher_key": teacher_key,
        "tokenizer_hash": tokenizer_hash(tokenizer),
        "vocab_size": len(tokenizer),
        "hidden_size": config["hidden_size"],
        "topk": section["topk"],
        "kd_temperature": section["kd_temperature"],
    }


@task(cache_policy=stage_cache_policy(STAGE), persist_result=True, result_serializer="json")
def cache_teacher_outputs(
    section: dict[str, Any],
    upstream: dict[str, str],
    home: str,
    tracking_cfg: dict[str, Any],
    parent_run_id: str | None = None,
) -> dict[str, Any]:
    """Cache key: cache section (top-k, T, batch, reservoir cap, dtype, device) + teacher and annotate keys."""

    def build(tmp: Path, extra: dict, up: dict[str, Path]) -> None:
        model_dir = teacher_dir(up["teacher"])
        device = resolve_device(section["device"])
        dtype = resolve_compute_dtype(section["compute_dtype"], device)
        capture = expected_capture(upstream["teacher"], model_dir, section)
        model = load_causal_lm(model_dir, dtype=dtype, device=device)
        # float16 in RAM, as on disk: the reservoir is bounded only by V x cap x d.
        reservoir = Reservoir(cap=section["reservoir_per_token"], dim=capture["hidden_size"], seed=0, dtype=np.float16)
        shards = sorted((up["annotate"] / "train").glob("*.parquet"))
        (tmp / "shards").mkdir()
        total_tokens = json.loads((up["annotate"] / "manifest.json").read_text())["metrics"]["train_tokens"]
        rows = 0
        with torch.inference_mode(), tqdm(total=total_tokens, desc="teacher pass", unit="tok") as bar:
            for shard in shards:
                out = tmp / "shards" / shard.name.replace("train-", "cache-")
                rows += cache_shard(model, shard, out, reservoir, capture, section["batch_size"], device, bar)
        n_tokens = write_reservoir(reservoir, tmp / "reservoir.parquet")
        (tmp / "capture.json").write_text(json.dumps({**capture, "compute_dtype": dtype, "device": device}))
        shard_bytes = sum(p.stat().st_size for p in (tmp / "shards").glob("*.parquet"))
        extra["capture"] = capture
        extra["rows"] = {"sequences": rows, "reservoir_tokens": n_tokens}
        extra["metrics"] = {
            "cache_bytes": shard_bytes,
            "cache_bytes_per_token": shard_bytes / max(total_tokens, 1),
            "reservoir_tokens": n_tokens,
            "reservoir_bytes": (tmp / "reservoir.parquet").stat().st_size,
            "tokens": total_tokens,
        }

    return run_stage(STAGE, section, upstream, home, parent_run_id, tracking_cfg, build)
