"""`dskd compare`: ce, kd and dskd students trained on the same cached stages with the same budget and seeds,
evaluated with the same suite, summarised as mean ± std with plots. Only training and evaluation differ."""

from __future__ import annotations

import copy
from typing import Any

from prefect import flow

from dskd.config import load_config
from dskd.eval.arms import parse_arm
from flows.dskd_pipeline import STAGES, run_stage_task, stage_runtimes, stage_sections
from tasks.compare_report import compare_report
from tasks.evaluate_student import evaluate_student
from tasks.ray_train import ray_session
from tasks.tracking import ParentRun
from tasks.train_student import train_student

SHARED = ("teacher", "lexicon", "annotate", "teacher_cache", "sense_index", "baselines")


@flow(name="dskd-compare")
def dskd_compare(
    config_path: str | None = None,
    overrides: list[str] | None = None,
    arms: list[str] | None = None,
    seeds: list[int] | None = None,
) -> dict[str, Any]:
    """Train and evaluate every (arm, seed) on the shared cached stages; returns the report artifact."""
    cfg = load_config(config_path, overrides)
    arms = arms or ["ce", "kd", "dskd"]
    seeds = seeds or [0, 1, 2]
    home, tracking_cfg = str(cfg.home_path), cfg.tracking.model_dump()
    sections, runtimes = stage_sections(cfg), stage_runtimes(cfg)
    needs_of = {stage: needs for stage, _, needs in STAGES}
    tasks_of = {stage: task for stage, task, _ in STAGES}
    keys: dict[str, str] = {}
    rows: list[dict[str, Any]] = []
    with ParentRun(tracking_cfg, home, cfg, run_name="dskd-compare") as parent:
        for stage in SHARED:
            upstream = {n: keys[n] for n in needs_of[stage]}
            row = run_stage_task(
                tasks_of[stage], stage, sections[stage], upstream, home, tracking_cfg, parent, runtimes.get(stage)
            )
            keys[stage] = row["key"]
            rows.append(row)
        report_upstream: dict[str, str] = {}
        # One Ray session for every arm: worker groups restart per arm, the Ray runtime does not.
        with ray_session(cfg.train.ray_address, max(2, cfg.train.num_workers), cfg.home_path / "ray"):
            for arm in arms:
                for seed in seeds:
                    train_section = copy.deepcopy(sections["train"])
                    train_section["train"].update(**parse_arm(arm), seed=seed)  # "dskd@0.5": λ = 0.5
                    upstream = {n: keys[n] for n in needs_of["train"]}
                    trained = run_stage_task(
                        train_student,
                        f"train:{arm}:{seed}",
                        train_section,
                        upstream,
                        home,
                        tracking_cfg,
                        parent,
                        runtimes["train"],
                    )
                    upstream = {**{n: keys[n] for n in needs_of["evaluate"] if n != "train"}, "train": trained["key"]}
                    evaluated = run_stage_task(
                        evaluate_student,
                        f"evaluate:{arm}:{seed}",
                        sections["evaluate"],
                        upstream,
                        home,
                        tracking_cfg,
                        parent,
                        runtimes["evaluate"],
                    )
                    rows += [trained, evaluated]
                    report_upstream[f"train:{arm}:{seed}"] = trained["key"]
                    report_upstream[f"evaluate:{arm}:{seed}"] = evaluated["key"]
        report = run_stage_task(
            compare_report,
            "compare",
            {"arms": arms, "seeds": seeds},
            report_upstream,
            home,
            tracking_cfg,
            parent,
            runtimes["compare"],
        )
        rows.append(report)
        summary = {"stages": rows, "keys": keys, "report": report["path"], "mlflow_run_id": parent.run_id}
        parent.finish(summary)
    return summary
