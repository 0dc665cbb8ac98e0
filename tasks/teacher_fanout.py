"""The teacher pass fanned out over Ray: one teacher replica per actor, corpus shards handed out as actors free up.

Every actor commits its shards' cache files and per-shard reservoirs (files, then a done marker) straight into the
stage's staging dir when it can see it (same node, or DSKD_HOME on a shared mount); otherwise, with
``storage.uri`` set, it stages them in the store and the driver collects and commits them. A replica that dies is
restarted once and its shard retried; shards already committed are never recomputed, by this run or by a rerun
after the driver died. The driver merges the reservoirs in shard order afterwards, so the artifact is the same as
an in-process pass.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

import ray
from ray.util import ActorPool

from dskd.store.remote import ArtifactStore
from dskd.store.staging import UnitStaging
from dskd.teacher.cache import staged_shards
from tasks.ray_train import ray_session


@ray.remote
class TeacherReplica:
    """Loads the teacher once; caches whole shards on request.

    With a shared store (``storage_uri``) a replica on a node that lacks the teacher or the annotated corpus fetches
    them first, and when it cannot see the driver's output dir (no shared mount) it stages its shard files in the
    store for the driver to collect.
    """

    def __init__(
        self,
        model_dir: str,
        section: dict[str, Any],
        capture: dict[str, Any],
        threads: int,
        storage_uri: str | None = None,
        artifact_dirs: list[str] | None = None,
    ) -> None:
        from dskd.teacher.cache import TeacherPass

        self.store = ArtifactStore(storage_uri) if storage_uri else None
        if self.store is not None:
            self.store.ensure_all_local(artifact_dirs or [])
        self.teacher = TeacherPass(Path(model_dir), section, capture, threads)

    def cache(self, shard_index: int, shard_path: str, out_dir: str, staging: str) -> dict[str, Any]:
        if Path(out_dir).is_dir() or self.store is None:  # same node or a shared mount: commit in place
            done = self.teacher.cache_staged(shard_index, Path(shard_path), Path(out_dir))
        else:
            with tempfile.TemporaryDirectory(prefix="dskd-shard-") as local:
                done = self.teacher.cache(shard_index, Path(shard_path), Path(local))
                done["staged"] = self.store.upload_staged(Path(local), staging)
        return {**done, "node": ray.get_runtime_context().get_node_id(), "pid": os.getpid()}


def fan_out_teacher_pass(
    shards: list[Path],
    out_dir: Path,
    model_dir: Path,
    section: dict[str, Any],
    capture: dict[str, Any],
    runtime: dict[str, Any],
    artifact_dirs: list[Path] | None = None,
) -> list[dict[str, Any]]:
    """Cache every shard that the staging dir ``out_dir`` lacks on ``runtime["num_workers"]`` replicas; results of
    all shards in shard order (those staged by an earlier attempt marked ``resumed``).

    ``runtime``: num_workers, threads_per_worker, ray_address (None = RAY_ADDRESS or a local Ray), ray_temp_dir,
    storage_uri (optional shared store: replicas fetch ``artifact_dirs`` and stage shards through it when they
    do not share the driver's disk). Replicas ask for a GPU each when ``section["device"]`` is cuda, or auto on a
    cluster that has GPUs.
    """
    done = staged_shards(out_dir, len(shards))
    todo = [i for i in range(len(shards)) if i not in done]
    if not todo:
        return [done[i] for i in range(len(shards))]
    n_workers = min(runtime["num_workers"], len(todo))
    threads = runtime["threads_per_worker"]
    storage_uri = runtime.get("storage_uri")
    staging = f"teacher_cache/{uuid.uuid4().hex}"
    with ray_session(runtime.get("ray_address"), n_workers * threads, Path(runtime["ray_temp_dir"])):
        gpus = ray.cluster_resources().get("GPU", 0)
        wants_gpu = section["device"] == "cuda" or (section["device"] == "auto" and gpus >= n_workers)
        # A lost replica (its process or node died) is restarted once and its shard retried: a retry recomputes
        # only that shard (the others are committed), and one more loss fails the stage; the rerun resumes.
        options = {"num_cpus": threads, "num_gpus": 1 if wants_gpu else 0, "max_restarts": 1, "max_task_retries": 1}
        dirs = [str(d) for d in artifact_dirs or []]
        actors = [
            TeacherReplica.options(**options).remote(str(model_dir), section, capture, threads, storage_uri, dirs)
            for _ in range(n_workers)
        ]
        try:
            jobs = [(i, str(shards[i]), str(out_dir), staging) for i in todo]
            computed = list(ActorPool(actors).map_unordered(lambda actor, job: actor.cache.remote(*job), jobs))
        finally:
            for actor in actors:
                ray.kill(actor)
    if any("staged" in d for d in computed):
        store, local = ArtifactStore(storage_uri), UnitStaging(out_dir)
        try:
            for d in computed:
                if "staged" in d:
                    scratch = local.unit_dir()
                    store.download_staged(staging, d["staged"], scratch)
                    d["files"] = local.commit(d["shard"], scratch, d)["files"]
        finally:
            store.remove_staged(staging)
    done.update({d["shard"]: d for d in computed})
    return [done[i] for i in range(len(shards))]
