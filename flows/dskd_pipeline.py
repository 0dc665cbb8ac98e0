"""The DSKD pipeline flow: composes the stage tasks, each cached on its config section + upstream keys."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow

from dskd.config import PipelineConfig, load_config
from dskd.data.corpus import content_hash, source_files
from dskd.train.student import check_same_vocabulary
from tasks.annotate_corpus import annotate_corpus
from tasks.build_lexicon import build_lexicon
from tasks.build_sense_index import build_sense_index
from tasks.cache_teacher_outputs import cache_teacher_outputs
from tasks.evaluate_student import evaluate_baselines, evaluate_student
from tasks.prepare_teacher import prepare_teacher
from tasks.register_student import register_student
from tasks.tracking import ParentRun
from tasks.train_student import train_student


def stage_sections(cfg: PipelineConfig) -> dict[str, dict[str, Any]]:
    """Each stage's cache-relevant inputs: its own section (plus the few upstream settings it reads)."""
    lexicon = cfg.lexicon.model_dump()
    if cfg.lexicon.kaikki_path and "kaikki" in cfg.lexicon.sources:
        lexicon["kaikki_hash"] = content_hash([Path(cfg.lexicon.kaikki_path)])
    corpus = cfg.corpus.model_dump()
    corpus["content_hash"] = content_hash(source_files(cfg.corpus.source))
    senses = cfg.senses
    return {
        "teacher": cfg.teacher.model_dump(),
        "lexicon": lexicon,
        "annotate": {
            "corpus": corpus,
            "sampling": {"max_positions": senses.max_positions, "frac_positions": senses.frac_positions},
        },
        "teacher_cache": cfg.cache.key_dump(),
        "sense_index": senses.model_dump(),
        "train": {
            "train": cfg.train.model_dump(),
            "student": cfg.student.model_dump(),
            "kappa": senses.kappa,
            "cache": cfg.cache.key_dump(),
        },
        "baselines": {
            "eval": cfg.eval.model_dump(),
            "student": cfg.student.model_dump(),
            "nltk_data_dir": cfg.lexicon.nltk_data_dir,
        },
        "evaluate": {"eval": cfg.eval.model_dump(), "nltk_data_dir": cfg.lexicon.nltk_data_dir},
        "register": {**cfg.registry.model_dump(), "config_hash": cfg.digest()},
    }


def stage_runtimes(cfg: PipelineConfig) -> dict[str, dict[str, Any]]:
    """Where stages run and share artifacts (not part of any key): the shared store for every stage, and the
    teacher pass's replicas and the Ray cluster they use."""
    common = {"storage_uri": cfg.storage.uri}
    runtimes = {stage: dict(common) for stage in [*(s for s, _, _ in STAGES), "compare"]}
    runtimes["teacher_cache"].update(
        num_workers=cfg.cache.num_workers,
        threads_per_worker=cfg.cache.threads_per_worker,
        reservoir_memory_gb=cfg.cache.reservoir_memory_gb,
        ray_address=cfg.train.ray_address,
        ray_temp_dir=str(cfg.home_path / "ray"),
    )
    return runtimes


STAGES = [
    # (stage, task, upstream stages)
    ("teacher", prepare_teacher, []),
    ("lexicon", build_lexicon, ["teacher"]),
    ("annotate", annotate_corpus, ["teacher", "lexicon"]),
    ("teacher_cache", cache_teacher_outputs, ["teacher", "annotate"]),
    ("sense_index", build_sense_index, ["lexicon", "annotate", "teacher_cache"]),
    ("train", train_student, ["teacher", "annotate", "teacher_cache", "sense_index"]),
    ("baselines", evaluate_baselines, ["teacher", "annotate", "teacher_cache"]),  # cache: the student's layers
    ("evaluate", evaluate_student, ["teacher", "annotate", "train", "baselines"]),
    ("register", register_student, ["teacher", "teacher_cache", "train", "evaluate"]),
]


def run_stage_task(
    stage_task,
    stage: str,
    section: dict,
    upstream: dict[str, str],
    home: str,
    tracking_cfg: dict,
    parent,
    runtime: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Submit one stage task; returns its result with ``cached`` and wall ``seconds`` (also tagged on the parent)."""
    t0 = time.perf_counter()
    state = stage_task(section, upstream, home, tracking_cfg, parent.run_id, runtime, return_state=True)
    result = state.result()
    cached = state.name == "Cached" or not result["computed"]
    parent.stage_done(stage, result, cached)
    return {**result, "cached": cached, "seconds": time.perf_counter() - t0}


@flow(name="dskd-pipeline")
def dskd_pipeline(config_path: str | None = None, overrides: list[str] | None = None) -> dict[str, Any]:
    """Run every DSKD stage; unchanged stages are Prefect cache hits and do no work."""
    cfg = load_config(config_path, overrides)
    home = str(cfg.home_path)
    tracking_cfg = cfg.tracking.model_dump()
    sections, runtimes = stage_sections(cfg), stage_runtimes(cfg)
    if cfg.student.init_path and cfg.teacher.path:
        check_same_vocabulary(cfg.teacher.path, cfg.student.init_path)  # refuse before any work starts
    keys: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    with ParentRun(tracking_cfg, home, cfg) as parent:
        for stage, stage_task, needs in STAGES:
            upstream = {n: keys[n] for n in needs}
            row = run_stage_task(
                stage_task, stage, sections[stage], upstream, home, tracking_cfg, parent, runtimes.get(stage)
            )
            keys[stage] = row["key"]
            rows.append(row)
        summary = {"stages": rows, "keys": keys, "mlflow_run_id": parent.run_id}
        parent.finish(summary)
    return summary
