"""Stage 0: make the teacher a local HF directory (convert the embedded GGUF once, or adopt teacher.path)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import task

from dskd.teacher.model import check_model_dir, convert_gguf_teacher, gguf_source
from tasks.common import run_stage, stage_cache_policy

STAGE = "teacher"


def teacher_dir(artifact: Path) -> Path:
    """The HF model directory behind a teacher artifact (converted copy, or the user's own path)."""
    meta = json.loads((artifact / "teacher.json").read_text())
    return Path(meta["model_dir"]) if meta["model_dir"] else artifact / "model"


@task(cache_policy=stage_cache_policy(STAGE), persist_result=True, result_serializer="json")
def prepare_teacher(
    section: dict[str, Any],
    upstream: dict[str, str],
    home: str,
    tracking_cfg: dict[str, Any],
    parent_run_id: str | None = None,
    runtime: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Cache key: the teacher section (path or GGUF package/file, dtype). A user path is validated, not copied."""

    def build(tmp: Path, extra: dict, _: dict) -> None:
        if section["path"]:
            model_dir = str(check_model_dir(section["path"]))
        else:
            convert_gguf_teacher(
                gguf_source(section["gguf_package"], section["gguf_file"]), tmp / "model", section["dtype"]
            )
            model_dir = None
        (tmp / "teacher.json").write_text(json.dumps({"model_dir": model_dir}))

    return run_stage(STAGE, section, upstream, home, parent_run_id, tracking_cfg, build, runtime=runtime)
