"""Stage 7: log the trained student (HF dir, safetensors) to MLflow and register a model version."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from prefect import task

from tasks.common import run_stage, stage_cache_policy
from tasks.registry import register_version
from tasks.tracking import client_for, tracking_uri

STAGE = "register"


def git_commit() -> str:
    """The code's git commit, or 'unknown' outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@task(cache_policy=stage_cache_policy(STAGE), persist_result=True, result_serializer="json")
def register_student(
    section: dict[str, Any],
    upstream: dict[str, str],
    home: str,
    tracking_cfg: dict[str, Any],
    parent_run_id: str | None = None,
    runtime: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Cache key: registry section + train and evaluate keys, so an unchanged rerun registers nothing new."""

    def build(tmp: Path, extra: dict, up: dict[str, Path]) -> None:
        client = client_for(tracking_uri(tracking_cfg.get("tracking_uri"), home))
        run_id = extra["mlflow_run_id"]
        client.log_artifacts(run_id, str(up["train"] / "student"), artifact_path="student")
        source = f"{client.get_run(run_id).info.artifact_uri}/student"
        metrics = json.loads((up["evaluate"] / "metrics.json").read_text())["student"]
        metric = section["metric"]
        if metric not in metrics:
            raise ValueError(f"registry.metric '{metric}' is not an eval metric; choose one of {sorted(metrics)}")
        tags = {
            "dskd.teacher_key": upstream.get("teacher", ""),
            "dskd.cache_key": upstream.get("teacher_cache", ""),
            "dskd.train_key": upstream["train"],
            "dskd.config_hash": section.get("config_hash", ""),
            "dskd.git_commit": git_commit(),
            **{k: v for k, v in metrics.items()},
        }
        info = register_version(
            client, section["model_name"], source, run_id, tags, metric, metrics[metric], section["min_improvement"]
        )
        (tmp / "registration.json").write_text(json.dumps(info, indent=2))
        extra["registration"] = info

    return run_stage(STAGE, section, upstream, home, parent_run_id, tracking_cfg, build, runtime=runtime)
