"""Per-key staging for stages that build an artifact unit by unit (the teacher pass: one unit per corpus shard).

A killed stage loses its temp artifact dir, but not its staging dir ``$DSKD_HOME/staging/<stage>/<key>/``: every
finished unit's files are fsynced and renamed into it, then a done marker ``done/<index>.json`` (the unit's result
and the sha256 of each of its files) is written the same way, last. A rerun trusts a unit only when its marker
parses and every file it lists still has that sha256, computes the rest, and links the staged files into the new
temp artifact dir. The staging dir is removed once the artifact is complete.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dskd.store.artifacts import sha256_file

DONE = "done"


def staging_dir(home: str | Path, stage: str, key: str) -> Path:
    """Where the units of the artifact ``stage``/``key`` are staged while it is being built."""
    return Path(home) / "staging" / stage / key


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    _fsync(path.parent)


class UnitStaging:
    """The staging dir of one artifact: commit finished units, list the ones a rerun can trust, link them out."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def unit_dir(self) -> Path:
        """A fresh scratch dir inside the staging dir (same filesystem: commit is a rename) for one unit."""
        scratch = self.root / f".unit-{uuid.uuid4().hex}"
        scratch.mkdir(parents=True)
        return scratch

    def commit(self, index: int, scratch: Path, result: dict[str, Any]) -> dict[str, Any]:
        """Move the unit's files from ``scratch`` into the staging dir (fsync, rename), then write its marker.

        Files keep their path relative to ``scratch``; one already staged under that path (an untrusted earlier
        attempt) is replaced. Returns the marker.
        """
        files = []
        for path in sorted(p for p in scratch.rglob("*") if p.is_file()):
            rel = path.relative_to(scratch).as_posix()
            _fsync(path)
            files.append({"path": rel, "bytes": path.stat().st_size, "sha256": sha256_file(path)})
            dest = self.root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
            _fsync(dest.parent)
        shutil.rmtree(scratch, ignore_errors=True)
        marker = {"index": index, "files": files, "result": result}
        (self.root / DONE).mkdir(exist_ok=True)
        _write_atomic(self.root / DONE / f"{index:05d}.json", json.dumps(marker, sort_keys=True))
        return marker

    def _trusted(self, path: Path) -> dict[str, Any] | None:
        try:
            marker = json.loads(path.read_text())
            for f in marker["files"]:
                staged = self.root / f["path"]
                if staged.stat().st_size != f["bytes"] or sha256_file(staged) != f["sha256"]:
                    return None
            return marker
        except (OSError, ValueError, KeyError, TypeError):  # missing file, torn or foreign marker
            return None

    def completed(self) -> dict[int, dict[str, Any]]:
        """Markers of the units whose files are all intact, by index. Untrusted markers and scratch dirs left by a
        killed attempt are removed (their units are recomputed)."""
        if not self.root.is_dir():
            return {}
        for scratch in self.root.glob(".unit-*"):
            shutil.rmtree(scratch, ignore_errors=True)
        done: dict[int, dict[str, Any]] = {}
        for path in sorted((self.root / DONE).glob("*.json")):
            marker = self._trusted(path)
            if marker is None:
                path.unlink(missing_ok=True)
            else:
                done[int(marker["index"])] = marker
        return done

    def link_into(self, markers: list[dict[str, Any]], dest: Path, keep: Callable[[str], bool] | None = None) -> None:
        """Hard-link (copy across filesystems) the markers' files (those whose relative path ``keep`` accepts, all
        by default) into ``dest`` at their relative paths: the staged copies stay until :meth:`remove`, so a
        crash while assembling loses nothing."""
        for marker in markers:
            for f in marker["files"]:
                if keep is not None and not keep(f["path"]):
                    continue
                target = dest / f["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(self.root / f["path"], target)
                except OSError:
                    shutil.copy2(self.root / f["path"], target)

    def remove(self) -> None:
        """Drop the staging dir (the artifact it fed is complete)."""
        shutil.rmtree(self.root, ignore_errors=True)
