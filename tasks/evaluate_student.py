"""Stage 6: the evaluation suite for the teacher and the untrained student (baselines, computed once per
teacher/data/eval config) and for each trained student."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task

from dskd.data.annotate import read_sequences
from dskd.eval.evaluation import evaluate_model
from dskd.eval.harness import harness_tags, load_hf_model, results_json
from dskd.eval.samples import greedy_continuations
from dskd.lexicon.wordnet import load_wordnet
from dskd.teacher.model import load_tokenizer
from dskd.train.student import build_student_from_section, resolve_layers
from tasks.common import run_stage, stage_cache_policy
from tasks.prepare_teacher import teacher_dir
from tasks.tracking import client_for, tracking_uri


def _heldout(annotate: Path, eval_cfg: dict[str, Any]):
    seqs = read_sequences(sorted((annotate / "heldout").glob("*.parquet")))
    return seqs[: eval_cfg["max_seqs"]] if eval_cfg["max_seqs"] else seqs


def _wordnet(section: dict[str, Any], home: str):
    if not section["eval"]["probe_items"]:
        return None
    return load_wordnet(section.get("nltk_data_dir"), cache_dir=Path(home) / "nltk_data")


def _evaluate(who: str, model, tokenizer, heldout, section, wn, tmp: Path, run, samples: dict) -> dict[str, float]:
    """Flat metrics of one model; the harness's own results JSON goes next to metrics.json as
    ``harness_<who>.json`` and to the stage's MLflow run (artifact + tags: lm-eval and task versions, n-shot,
    limit), so a figure can be compared with what ``lm_eval`` prints. Its greedy samples go into ``samples``."""
    metrics, results = evaluate_model(model, tokenizer, heldout, section["eval"], wn)
    cfg = section["eval"]
    samples[who] = greedy_continuations(model, tokenizer, cfg["sample_prompts"], cfg["sample_tokens"])
    if results is not None:
        path = tmp / f"harness_{who}.json"
        path.write_text(results_json(results))
        client, run_id = run
        client.log_artifact(run_id, str(path))
        for key, value in harness_tags(results).items():
            client.set_tag(run_id, key if who == "student" else f"{who}.{key}", value)
    return metrics


def _write_samples(tmp: Path, samples: dict, run) -> None:
    """samples.json beside metrics.json, and the same file on the stage's MLflow run."""
    path = tmp / "samples.json"
    path.write_text(json.dumps(samples, indent=2, ensure_ascii=False))
    client, run_id = run
    client.log_artifact(run_id, str(path))


def _run(tracking_cfg: dict[str, Any], home: str, extra: dict):
    return client_for(tracking_uri(tracking_cfg.get("tracking_uri"), home)), extra["mlflow_run_id"]


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
        run = _run(tracking_cfg, home, extra)
        teacher = load_hf_model(model_dir, cfg["dtype"])
        samples: dict = {}
        results = {"teacher": _evaluate("teacher", teacher, tokenizer, heldout, section, wn, tmp, run, samples)}
        init = build_student_from_section(model_dir, resolve_layers(student, model_dir, up["teacher_cache"]))
        results["student_init"] = _evaluate("student_init", init, tokenizer, heldout, section, wn, tmp, run, samples)
        (tmp / "metrics.json").write_text(json.dumps(results, indent=2))
        _write_samples(tmp, samples, run)
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
    """Cache key: eval section + teacher, annotate, train and baselines keys. metrics.json and samples.json (greedy
    continuations of ``eval.sample_prompts``) hold all three models."""

    def build(tmp: Path, extra: dict, up: dict[str, Path]) -> None:
        model_dir = teacher_dir(up["teacher"])
        tokenizer, wn = load_tokenizer(model_dir), _wordnet(section, home)
        heldout = _heldout(up["annotate"], section["eval"])
        results = json.loads((up["baselines"] / "metrics.json").read_text())
        trained = load_hf_model(up["train"] / "student", section["eval"]["dtype"])
        samples = json.loads((up["baselines"] / "samples.json").read_text())
        run = _run(tracking_cfg, home, extra)
        results["student"] = _evaluate("student", trained, tokenizer, heldout, section, wn, tmp, run, samples)
        (tmp / "metrics.json").write_text(json.dumps(results, indent=2))
        _write_samples(tmp, samples, run)
        extra["metrics"] = {k: v for k, v in results["student"].items()}

    return run_stage("evaluate", section, upstream, home, parent_run_id, tracking_cfg, build, runtime=runtime)
