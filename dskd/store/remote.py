"""Shared artifact storage behind a URI (``file:///shared/dskd``, ``s3://bucket/dskd``; anything pyarrow.fs opens).

Every machine computes into its own ``$DSKD_HOME/artifacts/<stage>/<key>/`` (atomic, see :mod:`dskd.store.artifacts`)
and *publishes* the finished artifact to ``<uri>/artifacts/<stage>/<key>/``; a machine that lacks an artifact
*fetches* it from there instead of recomputing it. The remote manifest is written last and fetched files are
checked against its sha256s, so a half-published or corrupted artifact is never trusted. Credentials come from
the environment (``AWS_ACCESS_KEY_ID`` ...), never from the URI, so they cannot reach logs or MLflow params.
"""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterable
from pathlib import Path

import pyarrow.fs as pafs

from dskd.config import check_storage_uri
from dskd.store.artifacts import MANIFEST, is_complete, move_into_place, sha256_file

__all__ = ["ArtifactStore"]


class ArtifactStore:
    """Publish / fetch complete artifacts under ``<uri>/artifacts``."""

    def __init__(self, uri: str) -> None:
        check_storage_uri(uri)
        try:
            self.fs, root = pafs.FileSystem.from_uri(uri)
        except (ValueError, OSError) as err:  # pyarrow's ArrowInvalid is a ValueError
            raise ValueError(
                f"storage.uri {uri!r} cannot be opened ({err}); use file:///abs/path or s3://bucket/prefix"
            ) from err
        self.uri = uri
        self.base = root.rstrip("/")
        self.root = f"{self.base}/artifacts"

    def _put(self, local_file: Path, remote: str) -> None:
        parent = remote.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)  # object stores ignore this; a file system needs the parent
        pafs.copy_files(str(local_file.resolve()), remote, destination_filesystem=self.fs)

    def _get(self, remote: str, local_file: Path) -> None:
        local_file.parent.mkdir(parents=True, exist_ok=True)
        pafs.copy_files(remote, str(local_file), source_filesystem=self.fs)

    def _path(self, stage: str, key: str, rel: str = "") -> str:
        base = f"{self.root}/{stage}/{key}"
        return f"{base}/{rel}" if rel else base

    def has(self, stage: str, key: str) -> bool:
        """True when a complete artifact (its manifest) is published."""
        return self.fs.get_file_info(self._path(stage, key, MANIFEST)).type == pafs.FileType.File

    def publish(self, local: Path, stage: str, key: str) -> bool:
        """Upload a complete local artifact, manifest last; False if one is already published (same key, same
        content)."""
        if not is_complete(local):
            raise ValueError(f"{local} is not a complete artifact (no {MANIFEST}); only finished stages are published")
        if self.has(stage, key):
            return False
        self.fs.create_dir(self._path(stage, key), recursive=True)
        files = sorted(p for p in local.rglob("*") if p.is_file() and p != local / MANIFEST)
        for path in [*files, local / MANIFEST]:
            self._put(path, self._path(stage, key, path.relative_to(local).as_posix()))
        return True

    def fetch(self, stage: str, key: str, dest: Path) -> None:
        """Download a published artifact into ``dest`` (atomic; sha256-checked against its manifest)."""
        with self.fs.open_input_stream(self._path(stage, key, MANIFEST)) as fh:
            manifest = json.loads(fh.read())
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.parent / f".fetch-{key}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            for entry in manifest["files"]:
                target = tmp / entry["path"]
                self._get(self._path(stage, key, entry["path"]), target)
                if "sha256" in entry and sha256_file(target) != entry["sha256"]:
                    raise ValueError(
                        f"{self.uri}: {stage}/{key}/{entry['path']} does not match its manifest sha256; "
                        f"delete that artifact from the store and rerun to recompute it"
                    )
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))
            move_into_place(tmp, dest)  # another worker on this machine may have fetched it first
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def ensure_local(self, artifact: Path) -> bool:
        """Fetch ``.../artifacts/<stage>/<key>`` into place when it is not complete locally; True if fetched."""
        if is_complete(artifact):
            return False
        self.fetch(artifact.parent.name, artifact.name, artifact)
        return True

    def ensure_all_local(self, artifacts: Iterable[str | Path]) -> int:
        """:meth:`ensure_local` for each artifact dir (what a worker on another node reads); returns how many were
        fetched."""
        return sum(self.ensure_local(Path(artifact)) for artifact in artifacts)

    # Staging: scratch space for workers on nodes without a shared mount (the teacher pass's replicas upload
    # their shards here; the driver collects them into its artifact and removes the staging dir).
    def upload_staged(self, local_dir: Path, staging: str) -> list[str]:
        """Copy every file under ``local_dir`` to ``<uri>/staging/<staging>/``; returns their relative paths."""
        rels = sorted(p.relative_to(local_dir).as_posix() for p in local_dir.rglob("*") if p.is_file())
        for rel in rels:
            self._put(local_dir / rel, f"{self.base}/staging/{staging}/{rel}")
        return rels

    def download_staged(self, staging: str, rels: list[str], dest: Path) -> None:
        """Copy staged files (relative paths from :meth:`upload_staged`) into ``dest``."""
        for rel in rels:
            self._get(f"{self.base}/staging/{staging}/{rel}", dest / rel)

    def remove_staged(self, staging: str) -> None:
        """Delete a staging dir (no error when it is already gone)."""
        path = f"{self.base}/staging/{staging}"
        if self.fs.get_file_info(path).type != pafs.FileType.NotFound:
            self.fs.delete_dir(path)
