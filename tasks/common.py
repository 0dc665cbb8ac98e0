"""What every stage task shares: artifact keys, the cache policy, and the compute-or-reuse wrapper."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy

from dskd.store.artifacts import artifact_dir, is_complete, stage_key, write_artifact
from dskd.store.integrity import verify_consumed
from dskd.store.remote import ArtifactStore
from dskd.store.scratch import scratch_dir
from tasks import tracking


@dataclass
class ArtifactPresent(CachePolicy):
    """Cache-key part that changes when the stage's artifact is missing on disk (or from the shared store).

    A Prefect cache hit is only trusted while the artifact it points to still exists: if someone deleted
    ``$DSKD_HOME/artifacts/<stage>/<key>``, the key becomes unique and the stage recomputes. With
    ``runtime["storage_uri"]`` an artifact the store lacks (a store configured after it was made, or pruned) also
    misses, so the task runs and :func:`run_stage` publishes the local copy without recomputing it.
    """

    stage: str = ""
    # An upstream stage whose scratch area this stage consumes and deletes: while that scratch exists (the upstream
    # was rebuilt under the same key after this stage's artifact was made) the key misses, so the task runs, finds
    # its artifact complete and deletes the scratch instead of leaving it on disk for good.
    consumes_scratch_of: str = ""

    def compute_key(self, task_ctx, inputs: dict[str, Any], flow_parameters, **kwargs) -> str | None:
        key = stage_key(self.stage, inputs["section"], inputs["upstream"])
        storage_uri = (inputs.get("runtime") or {}).get("storage_uri")
        published = not storage_uri or ArtifactStore(storage_uri).has(self.stage, key)
        consumed = self.consumes_scratch_of
        pending = bool(consumed) and scratch_dir(inputs["home"], consumed, inputs["upstream"][consumed]).exists()
        if published and not pending and is_complete(artifact_dir(inputs["home"], self.stage, key)):
            return f"{self.stage}:{key}:present"
        return f"{self.stage}:{key}:missing:{uuid.uuid4().hex}"


def stage_cache_policy(stage: str, consumes_scratch_of: str = "") -> CachePolicy:
    """Key = INPUTS (section, upstream keys, home) + TASK_SOURCE + artifact presence (and, with
    ``consumes_scratch_of``, the absence of that upstream stage's scratch area: see :class:`ArtifactPresent`).

    The MLflow parent run id, tracking settings and ``runtime`` (where a stage runs: workers, Ray address) are
    excluded: they change per run, user or cluster and do not change what the stage computes. (Subtract them from
    INPUTS itself: subtracting from the compound policy would add a second, unfiltered INPUTS.)
    """
    return (
        (INPUTS - "parent_run_id" - "tracking_cfg" - "runtime")
        + TASK_SOURCE
        + ArtifactPresent(stage=stage, consumes_scratch_of=consumes_scratch_of)
    )


def run_stage(
    stage: str,
    section: dict[str, Any],
    upstream: dict[str, str],
    home: str,
    parent_run_id: str | None,
    tracking_cfg: dict[str, Any],
    build: Callable[[Path, dict[str, Any], dict[str, Path]], None],
    hash_files: bool = True,
    runtime: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Reuse the stage's artifact if complete (locally, else in the shared store), else build it atomically inside
    a nested MLflow run and publish it to the store.

    ``build(tmp_dir, extra, upstream_paths)`` writes files into tmp_dir and may put metrics into
    ``extra["metrics"]`` and other manifest fields into ``extra``. ``runtime["storage_uri"]``: the shared
    store (:class:`dskd.store.remote.ArtifactStore`), if any.
    Returns {stage, key, path, computed, seconds} (+ ``fetched`` when it came from the store).
    """
    key = stage_key(stage, section, upstream)
    final = artifact_dir(home, stage, key)
    t0 = time.perf_counter()
    store = ArtifactStore(runtime["storage_uri"]) if runtime and runtime.get("storage_uri") else None
    if is_complete(final):
        if store is not None:
            store.publish(final, stage, key)  # no-op when published; catches up artifacts the store lacks
        return {"stage": stage, "key": key, "path": str(final), "computed": False, "seconds": 0.0}
    if store is not None and store.has(stage, key):
        store.fetch(stage, key, final)
        seconds = time.perf_counter() - t0
        return {"stage": stage, "key": key, "path": str(final), "computed": False, "fetched": True, "seconds": seconds}
    # An upstream name is its stage, optionally qualified ("evaluate:kd:0" when several of one stage feed in).
    upstream_paths = {name: artifact_dir(home, name.split(":")[0], k) for name, k in upstream.items()}
    for path in upstream_paths.values():
        verify_consumed(path)  # non-Parquet files by sha256; Parquet pages are CRC-checked as they are read
    uri = tracking.tracking_uri(tracking_cfg.get("tracking_uri"), home)
    with tracking.stage_run(uri, tracking_cfg["experiment"], home, parent_run_id, stage, section) as (client, rid):
        client.set_tag(rid, "dskd.key", key)
        with write_artifact(home, stage, key, section, upstream, hash_files=hash_files) as (tmp, extra):
            extra["mlflow_run_id"] = rid
            build(tmp, extra, upstream_paths)
        seconds = time.perf_counter() - t0
        tracking.log_metrics(client, rid, {**extra.get("metrics", {}), "stage_seconds": seconds})
        client.log_artifact(rid, str(final / "manifest.json"))
        for report in [*final.glob("*.png"), *final.glob("*.md")]:  # what a person would rather look at
            client.log_artifact(rid, str(report))
        if store is not None:
            store.publish(final, stage, key)
            client.set_tag(rid, "dskd.store_uri", store.uri)
    return {"stage": stage, "key": key, "path": str(final), "computed": True, "seconds": seconds}
