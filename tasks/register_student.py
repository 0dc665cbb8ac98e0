"""Stage 7: log the trained student to MLflow as a transformers model (teacher's tokenizer, model card) and
register it as a model version behind the champion gate."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

from prefect import task

from dskd.store.artifacts import artifact_dir, is_complete, read_manifest
from tasks.common import run_stage, stage_cache_policy
from tasks.model_card import CORPUS_LICENSES, render_card, stage_keys, teacher_facts
from tasks.prepare_teacher import teacher_dir
from tasks.registry import register_version
from tasks.student_model import log_student, using_tracking_uri
from tasks.tracking import client_for, tracking_uri

STAGE = "register"


def _samples(evaluate_dir: Path) -> dict:
    """The evaluate stage's greedy continuations ({} for an artifact made before they existed)."""
    path = evaluate_dir / "samples.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def git_commit() -> str:
    """The code's git commit, or 'unknown' outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def card_facts(home: str, section: dict, upstream: dict[str, str], up: dict[str, Path], run_id: str) -> dict:
    """What the model card says, read from the upstream manifests (every stage behind this one)."""
    keys = stage_keys(home, upstream)
    paths = {s: artifact_dir(home, s, k) for s, k in keys.items()}
    manifests = {s: read_manifest(p) for s, p in paths.items() if is_complete(p)}
    corpus = manifests.get("annotate", {}).get("config", {}).get("corpus", {})
    train = manifests.get("train", {})
    metrics = train.get("metrics", {})
    return {
        "model_name": section["model_name"],
        "teacher": teacher_facts(manifests["teacher"]["config"], teacher_dir(up["teacher"])),
        "corpus": {
            "source": corpus.get("source", "?"),
            "content_hash": corpus.get("content_hash", "?"),
            "license": CORPUS_LICENSES.get(corpus.get("source", ""), "unknown"),
        },
        "keys": keys,
        "config": {s: m["config"] for s, m in manifests.items() if s != "baselines"} | {"register": section},
        "train": {
            "steps": metrics.get("steps"),
            "tokens": metrics.get("train_tokens"),
            "seconds": metrics.get("train_seconds"),
            "layers": train.get("student_layers"),
        },
        "results": json.loads((up["evaluate"] / "metrics.json").read_text()),
        "samples": _samples(up["evaluate"]),
        "metric": section["metric"],
        "run_id": run_id,
        "git_commit": git_commit(),
    }


@task(cache_policy=stage_cache_policy(STAGE), persist_result=True, result_serializer="json")
def register_student(
    section: dict[str, Any],
    upstream: dict[str, str],
    home: str,
    tracking_cfg: dict[str, Any],
    parent_run_id: str | None = None,
    runtime: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Cache key: registry section + teacher, cache, train and evaluate keys, so an unchanged rerun registers
    nothing new. The model card reads every stage behind those keys from their manifests."""

    def build(tmp: Path, extra: dict, up: dict[str, Path]) -> None:
        uri = tracking_uri(tracking_cfg.get("tracking_uri"), home)
        client = client_for(uri)
        run_id = extra["mlflow_run_id"]
        metrics = json.loads((up["evaluate"] / "metrics.json").read_text())["student"]
        metric = section["metric"]
        if metric not in metrics:
            raise ValueError(f"registry.metric '{metric}' is not an eval metric; choose one of {sorted(metrics)}")
        facts = card_facts(home, section, upstream, up, run_id)
        card = render_card(facts)
        (tmp / "README.md").write_text(card)  # also logged to the stage run (run_stage logs *.md)
        tags = {
            "dskd.teacher_key": upstream.get("teacher", ""),
            "dskd.cache_key": upstream.get("teacher_cache", ""),
            "dskd.train_key": upstream["train"],
            "dskd.config_hash": section.get("config_hash", ""),
            "dskd.git_commit": facts["git_commit"],
            **{k: v for k, v in metrics.items()},
        }
        licence = (
            f"Teacher: {facts['teacher']['id']}, licence {facts['teacher']['license']} (this student derives from "
            f"its weights).\nTraining corpus: {facts['corpus']['source']}, licence {facts['corpus']['license']}.\n"
        )
        teacher_cfg = read_manifest(up["teacher"])["config"] if is_complete(up["teacher"]) else {}
        with using_tracking_uri(uri):
            model_id = log_student(
                client,
                run_id,
                up["train"] / "student",
                teacher_dir(up["teacher"]),
                card,
                licence,
                metadata={k: str(v) for k, v in tags.items() if k.startswith("dskd.")},
                trust_remote_code=bool(teacher_cfg.get("trust_remote_code", False)),
            )
            info = register_version(
                client,
                section["model_name"],
                f"models:/{model_id}",
                run_id,
                tags,
                metric,
                metrics[metric],
                section["min_improvement"],
                model_id=model_id,
            )
        (tmp / "registration.json").write_text(json.dumps(info, indent=2))
        extra["registration"] = info

    return run_stage(STAGE, section, upstream, home, parent_run_id, tracking_cfg, build, runtime=runtime)
