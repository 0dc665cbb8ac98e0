"""Stage 6: held-out perplexity and next-token accuracy for the teacher, the untrained and the trained student."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task

from dskd.annotate import read_sequences
from dskd.evaluation import heldout_metrics
from dskd.student import build_student
from dskd.teacher import load_causal_lm
from tasks.common import run_stage, stage_cache_policy
from tasks.prepare_teacher import teacher_dir

STAGE = "evaluate"


@task(cache_policy=stage_cache_policy(STAGE), persist_result=True, result_serializer="json")
def evaluate_student(
    section: dict[str, Any],
    upstream: dict[str, str],
    home: str,
    tracking_cfg: dict[str, Any],
    parent_run_id: str | None = None,
) -> dict[str, Any]:
    """Cache key: eval section + student section + teacher, annotate (held-out split) and train keys."""

    def build(tmp: Path, extra: dict, up: dict[str, Path]) -> None:
        heldout = read_sequences(sorted((up["annotate"] / "heldout").glob("*.parquet")))
        if section["eval"]["max_seqs"]:
            heldout = heldout[: section["eval"]["max_seqs"]]
        bs = section["eval"]["batch_size"]
        model_dir = teacher_dir(up["teacher"])
        results = {"teacher": heldout_metrics(load_causal_lm(model_dir), heldout, bs)}
        student_cfg = section["student"]
        init = build_student(
            model_dir,
            student_cfg["n_layers"],
            student_cfg["n_trainable_layers"],
            student_cfg.get("hidden_size"),
            student_cfg.get("intermediate_size"),
        )
        results["student_init"] = heldout_metrics(init, heldout, bs)
        del init
        trained = load_causal_lm(up["train"] / "student", dtype="float32")
        results["student"] = heldout_metrics(trained, heldout, bs)
        (tmp / "metrics.json").write_text(json.dumps(results, indent=2))
        extra["metrics"] = {f"{who}.{k}": v for who, m in results.items() for k, v in m.items()}
        # The gate metric of the registry, unprefixed: the trained student's.
        extra["student_metrics"] = results["student"]

    return run_stage(STAGE, section, upstream, home, parent_run_id, tracking_cfg, build)
