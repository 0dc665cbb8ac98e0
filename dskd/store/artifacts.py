"""Artifacts on disk: ``$DSKD_HOME/artifacts/<stage>/<key>/`` written atomically with a ``manifest.json``.

Atomic = written to a temp dir beside the target, then renamed into place, so a crash never leaves a
half-written artifact that a later run would trust. An existing complete artifact is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from dskd import __version__
from dskd.config import stable_hash

MANIFEST = "manifest.json"
# Bump a stage's schema version when its on-disk format changes: old artifacts are then not reused.
SCHEMA_VERSIONS = {
    "teacher": 1,
    # Parquet-writing stages, 2/3+: page CRC checksums written (and verified on read): older files lack them.
    "lexicon": 2,
    "annotate": 2,
    # 2: reservoir rows carry n_seen; 3: page checksums; 4: kd_mode in the capture, block_influence.json;
    # 5: cache format 2 (sense hidden states out of the shards, into the scratch area; budgeted reservoir merge);
    # 6: kd_encoding in the capture (fp16 / packed KD columns, dskd/teacher/kd_pack.py)
    "teacher_cache": 6,
    "sense_index": 3,  # 3: reads the hidden states from the scratch area (or regenerates them), then deletes it
    "train": 2,  # 2: student layers chosen by block influence (resolved list in the manifest)
    # baselines/evaluate 2: the untrained student is built from the teacher cache's layer choice; 3: contrast probe;
    # 4: samples.json (greedy continuations)
    "baselines": 4,
    "evaluate": 4,
    "register": 2,  # 2: the student is logged as an MLflow transformers model with a model card
    "compare": 2,  # 2: paired per-seed differences, probe stderr
}


def stage_key(stage: str, section: dict[str, Any], upstream: dict[str, str]) -> str:
    """Key of an artifact: hash of its config section, upstream artifact keys, schema and code version."""
    return stable_hash(
        {
            "stage": stage,
            "section": section,
            "upstream": upstream,
            "schema": SCHEMA_VERSIONS[stage],
            "code": __version__,
        }
    )


def artifact_dir(home: str | Path, stage: str, key: str) -> Path:
    """Where the artifact of ``stage`` with ``key`` lives (complete or not)."""
    return Path(home) / "artifacts" / stage / key


def is_complete(path: Path) -> bool:
    """An artifact is complete when its manifest exists (written last, before the rename)."""
    return (path / MANIFEST).is_file()


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of a complete artifact."""
    return json.loads((path / MANIFEST).read_text())


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Streaming sha256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def move_into_place(tmp: Path, final: Path) -> None:
    """Rename a finished temp dir to ``final``; when someone finished the same key first (same inputs, so same
    content), keep theirs and drop ours."""
    try:
        os.replace(tmp, final)
    except OSError:
        if not is_complete(final):
            raise
        shutil.rmtree(tmp)


@contextmanager
def write_artifact(
    home: str | Path,
    stage: str,
    key: str,
    section: dict[str, Any],
    upstream: dict[str, str],
    hash_files: bool = True,
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Yield (tmp_dir, extra) to fill; on success write the manifest and rename tmp_dir into place.

    ``extra`` is a dict the caller may fill with row counts / metrics; it lands in the manifest.
    On error the temp dir is removed and nothing already in place is touched.
    """
    final = artifact_dir(home, stage, key)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{key}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    extra: dict[str, Any] = {}
    try:
        yield tmp, extra
        files = sorted(p for p in tmp.rglob("*") if p.is_file())
        manifest = {
            "stage": stage,
            "key": key,
            "schema_version": SCHEMA_VERSIONS[stage],
            "code_version": __version__,
            "config": section,
            "upstream": upstream,
            "files": [
                {
                    "path": str(p.relative_to(tmp)),
                    "bytes": p.stat().st_size,
                    **({"sha256": sha256_file(p)} if hash_files else {}),
                }
                for p in files
            ],
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            **extra,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
        move_into_place(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
