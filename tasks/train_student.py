"""Stage 5: Ray Train TorchTrainer distils the student from the cached teacher signals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import ray
from prefect import task

from dskd.plots import loss_curves
from dskd.store.artifacts import stage_key
from dskd.store.integrity import read_schema
from dskd.teacher.kd_pack import check_encoding
from dskd.teacher.schema import capture_of, check_capture
from dskd.train.loop import TrainJob
from dskd.train.student import resolve_layers
from tasks.cache_teacher_outputs import expected_capture
from tasks.common import run_stage, stage_cache_policy
from tasks.prepare_teacher import teacher_dir
from tasks.ray_train import clean_finished_run, fit, init_ray, run_name_for
from tasks.tracking import tracking_uri

STAGE = "train"


@task(cache_policy=stage_cache_policy(STAGE), persist_result=True, result_serializer="json")
def train_student(
    section: dict[str, Any],
    upstream: dict[str, str],
    home: str,
    tracking_cfg: dict[str, Any],
    parent_run_id: str | None = None,
    runtime: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Cache key: train + student sections, κ, and the teacher, annotate, cache and sense-index keys.

    ``train.ray_address`` is part of the train section, so moving to a cluster re-trains (deliberate). With
    ``runtime["storage_uri"]`` workers fetch missing inputs from the store and checkpoints go to
    ``<uri>/ray_results`` (unless ``train.storage_path`` is set).
    """
    storage_uri = (runtime or {}).get("storage_uri")

    def build(tmp: Path, extra: dict, up: dict[str, Path]) -> None:
        model_dir = teacher_dir(up["teacher"])
        cache_shards = sorted((up["teacher_cache"] / "shards").glob("*.parquet"))
        found = capture_of(read_schema(cache_shards[0]))
        expected = expected_capture(upstream["teacher"], model_dir, section["cache"])
        check_encoding(expected, found)  # its own message: an old or differently encoded cache -> rerun the stage
        check_capture(expected, found)
        student = resolve_layers(section["student"], model_dir, up["teacher_cache"])
        extra["student_layers"] = student["layers"]
        job = TrainJob(
            teacher_dir=str(model_dir),
            annotate_dir=str(up["annotate"]),
            cache_dir=str(up["teacher_cache"]),
            index_dir=str(up["sense_index"]),
            kd_temperature=found["kd_temperature"],
            kd_mode=found.get("kd_mode", "topk"),
            student=student,
            train=section["train"],
            kappa=section["kappa"],
            storage_uri=storage_uri,
            artifact_dirs=[str(up[n]) for n in ("teacher", "annotate", "teacher_cache", "sense_index")],
        )
        train_cfg = section["train"]
        started = init_ray(train_cfg["ray_address"], max(2, train_cfg["num_workers"]), Path(home) / "ray")
        try:
            uri = tracking_uri(tracking_cfg.get("tracking_uri"), home)
            checkpoints = f"{storage_uri.rstrip('/')}/ray_results" if storage_uri else str(Path(home) / "ray_results")
            run_name = run_name_for(stage_key(STAGE, section, upstream))  # a rerun of this key resumes
            checkpoint = fit(job, train_cfg, checkpoints, uri, extra["mlflow_run_id"], run_name)
            with checkpoint.as_directory() as ckpt:
                shutil.copytree(Path(ckpt) / "student", tmp / "student")
                history = json.loads((Path(ckpt) / "history.json").read_text())
            clean_finished_run(train_cfg.get("storage_path") or checkpoints, run_name, train_cfg["keep_checkpoints"])
        finally:
            if started:
                ray.shutdown()
        (tmp / "history.json").write_text(json.dumps(history))
        if history:
            loss_curves(history, tmp / "loss_curves.png")
            last = history[-1]
            mean_step = sum(h["step_seconds"] for h in history) / len(history)
            extra["metrics"] = {
                "steps": last["step"],
                "final_loss_total": last["loss_total"],
                "mean_step_seconds": mean_step,
                "train_tokens": sum(h.get("tokens", 0.0) for h in history),
                "train_seconds": sum(h["step_seconds"] for h in history),
                # 1 = bf16 autocast ("auto" on a bf16 GPU or an AVX512-BF16/AMX CPU), 0 = fp32: the key holds "auto".
                "bf16_autocast": last.get("bf16_autocast", 0.0),
            }

    return run_stage(
        STAGE, section, upstream, home, parent_run_id, tracking_cfg, build, hash_files=True, runtime=runtime
    )
