"""The comparison report: mean ± std per arm, DSKD step-time overhead over KD, plots — as an artifact + MLflow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task

from dskd.eval.arms import differences_table, paired_differences
from dskd.eval.comparison import markdown_table, plot_loss_curves, plot_metric_bars, summarise
from tasks.common import run_stage, stage_cache_policy
from tasks.tracking import tag_label

STAGE = "compare"


@task(cache_policy=stage_cache_policy(STAGE), persist_result=True, result_serializer="json")
def compare_report(
    section: dict[str, Any],
    upstream: dict[str, str],
    home: str,
    tracking_cfg: dict[str, Any],
    parent_run_id: str | None = None,
    runtime: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Cache key: the arm/seed grid + every arm's train and evaluate keys (upstream "train:<arm>:<seed>", ...)."""

    def build(tmp: Path, extra: dict, up: dict[str, Path]) -> None:
        runs, histories, baselines = [], {}, {}
        for arm in section["arms"]:
            for seed in section["seeds"]:
                metrics = json.loads((up[f"evaluate:{arm}:{seed}"] / "metrics.json").read_text())
                history = json.loads((up[f"train:{arm}:{seed}"] / "history.json").read_text())
                baselines = {"teacher": metrics["teacher"], "student (untrained)": metrics["student_init"]}
                steps = [h["step_seconds"] for h in history[1:]] or [h["step_seconds"] for h in history]
                runs.append(
                    {"arm": arm, "seed": seed, "metrics": metrics["student"], "step_seconds": sum(steps) / len(steps)}
                )
                histories.setdefault(arm, []).append(history)
        summary = summarise(runs)
        table = markdown_table(summary, baselines)
        overheads = {
            arm: summary[arm]["step_seconds"][0] / summary["kd"]["step_seconds"][0]
            for arm in summary
            if arm.startswith("dskd") and "kd" in summary
        }
        for arm, ratio in overheads.items():
            table += f"\n\n{arm} step time / kd step time (same flow run, mean over seeds): {ratio:.3f}"
        # Paired per-seed differences (same seed = same data order and init): each DSKD arm and CE against KD.
        paired_runs = [{**r, "metrics": {**r["metrics"], "step_seconds": r["step_seconds"]}} for r in runs]
        paired = {}
        for arm in summary:
            if arm != "kd" and "kd" in summary:
                paired[arm] = paired_differences(paired_runs, arm, "kd")
                table += f"\n\nPaired per-seed differences, {arm} − kd:\n\n" + differences_table(paired[arm], arm, "kd")
        (tmp / "comparison.md").write_text(table + "\n")
        report = {"runs": runs, "summary": summary, "paired_vs_kd": paired}
        (tmp / "comparison.json").write_text(json.dumps(report, indent=2))
        plot_metric_bars(summary, tmp / "metric_bars.png")
        plot_loss_curves(histories, tmp / "loss_curves.png")
        # MLflow names: "dskd@0.5" -> "dskd_lam0.5" (MLflow refuses "@").
        extra["metrics"] = {
            f"{tag_label(arm)}.{k}": v[0] for arm, m in summary.items() for k, v in m.items() if isinstance(v, tuple)
        }
        for arm, ratio in overheads.items():
            extra["metrics"][f"{tag_label(arm)}_over_kd_step_time"] = ratio
        for arm, diffs in paired.items():
            extra["metrics"].update({f"{tag_label(arm)}_minus_kd.{k}": d["mean"] for k, d in diffs.items()})

    return run_stage(STAGE, section, upstream, home, parent_run_id, tracking_cfg, build, runtime=runtime)
