"""The scratch area: ``$DSKD_HOME/scratch/<stage>/<key>/``, transient outputs of a stage that one later stage reads.

The teacher-cache stage puts the sense positions' hidden states here instead of into its artifact: only the
sense-index stage reads them, and it deletes the scratch dir once its own artifact is complete. A scratch dir is
published like an artifact (files linked into a temp dir beside it, ``complete.json`` written last, then renamed
into place), so a reader never sees a half-written one. It is local to the machine and never published to the
shared store: a reader that finds none (deleted, another machine) must regenerate what it needs.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

COMPLETE = "complete.json"


def scratch_dir(home: str | Path, stage: str, key: str) -> Path:
    """Where the scratch outputs of ``stage``/``key`` live (complete or not)."""
    return Path(home) / "scratch" / stage / key


def publish_scratch(root: Path, files: list[dict[str, Any]], dest: Path, info: dict[str, Any]) -> None:
    """Hard-link (copy across filesystems) ``root/<f["path"]>`` for each file entry into ``dest``; write
    ``complete.json`` (``info`` + the file entries) last and rename into place, replacing an older copy."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.parent / f".tmp-{dest.name}-{uuid.uuid4().hex[:8]}"
    try:
        for f in files:
            target = tmp / f["path"]
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(root / f["path"], target)
            except OSError:
                shutil.copy2(root / f["path"], target)
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / COMPLETE).write_text(json.dumps({**info, "files": files}, indent=1, sort_keys=True))
        shutil.rmtree(dest, ignore_errors=True)  # same key: same content, an earlier attempt's copy
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def complete_scratch(path: Path) -> dict[str, Any] | None:
    """``complete.json`` of a complete scratch dir whose files are all there with their sizes, else None."""
    try:
        info = json.loads((path / COMPLETE).read_text())
        if all((path / f["path"]).stat().st_size == f["bytes"] for f in info["files"]):
            return info
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def remove_scratch(path: Path) -> None:
    """Delete a scratch dir (its reader's artifact is complete): ``complete.json`` first, so a crash midway
    leaves a dir no reader trusts."""
    (path / COMPLETE).unlink(missing_ok=True)
    shutil.rmtree(path, ignore_errors=True)
