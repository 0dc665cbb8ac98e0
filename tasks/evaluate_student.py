"""Stage 6: the evaluation suite for the teacher and the untrained student (baselines, computed once per
teacher/data/eval config) and for each trained student."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task

from dskd.data.annotate import read_sequences
from dskd.eval.evaluation import evaluate_model
from dskd.lexicon.wordnet import load_wordnet
from dskd.teacher.model import load_causal_lm, load_tokenizer
from dskd.train.student import build_student_from_section, resolve_layers
from tasks.common import run_stage, stage_cache_policy
from tasks.prepare_teacher import teacher_dir


def _heldout(annotate: Path, eval_cfg: dict[str, Any]):
    seqs = read_sequences(sorted((annotate / "heldout").glob("*.parquet")))
    return seqs[: eval_cfg["max_seqs"]] if eval_cfg["max_seqs"] else seqs


def _wordnet(section: dict[str, Any], home: str):
    if not section["eval"]["probe_items"]:
        return None
    return load_wordnet(section.get("nltk_data_dir"), cache_dir=Path(home) / "nltk_data")


@task(cache_policy=stage_cache_policy("baselines"), persist_result=True, result_serializer="json")
def evaluate_baselines(
    section: dict[str, Any],
    upstream: dict[str, str],
    home: str,
    tracking_cfg: dict[str, Any],
    parent_run_id: str | None = None,
    runtime: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Cache key: eval + student sections + teacher, annotate and teacher-cache keys (the cache's block influence
    picks the student's layers); no training, so shared by every arm."""

    def build(tmp: Path, extra: dict, up: dict[str, Path]) -> None:
        model_dir = teacher_dir(up["teacher"])
        tokenizer, wn = load_tokenizer(model_dir), _wordnet(section, home)
        heldout, cfg, student = _heldout(up["annotate"], section["eval"]), section["eval"], section["student"]
        results = {"teacher": evaluate_model(load_causal_lm(model_dir), tokenizer, heldout, cfg, wn)}
        init = build_student_from_section(model_dir, resolve_layers(student, model_dir, up["teacher_cache"]))
        results["student_init"] = evaluate_model(init, tokenizer, heldout, cfg, wn)
        (tmp / "metrics.json").write_text(json.dumps(results, indent=2))
        extra["metrics"] = {f"{who}.{k}": v for who, m in results.items() for k, v in m.items()}

    return run_stage("baselines", section, upstream, home, parent_run_id, tracking_cfg, build, runtime=runtime)


@task(cache_policy=stage_cache_policy("evaluate"), persist_result=True, result_serializer="json")
def evaluate_student(
    section: dict[str, Any],
    upstream: dict[str, str],
    home: str,
    tracking_cfg: dict[str, Any],
    parent_run_id: str | None = None,
    runtime: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Cache key: eval section + teacher, annotate, train and baselines keys. metrics.json holds all three models."""

    def build(tmp: Path, extra: dict, up: dict[str, Path]) -> None:
        model_dir = teacher_dir(up["teacher"])
        tokenizer, wn = load_tokenizer(model_dir), _wordnet(section, home)
        heldout, cfg = _heldout(up["annotate"], section["eval"]), section["eval"]
        results = json.loads((up["baselines"] / "metrics.json").read_text())
        trained = load_causal_lm(up["train"] / "student", dtype="float32")
        results["student"] = evaluate_model(trained, tokenizer, heldout, cfg, wn)
        (tmp / "metrics.json").write_text(json.dumps(results, indent=2))
        extra["metrics"] = {k: v for k, v in results["student"].items()}

    return run_stage("evaluate", section, upstream, home, parent_run_id, tracking_cfg, build, runtime=runtime)
