"""The teacher pass fanned out over Ray: one teacher replica per actor, corpus shards handed out as actors free up.

Every actor writes its shards' cache files and per-shard reservoirs straight into the stage's temp artifact dir
(on a multi-node cluster DSKD_HOME must be storage every node mounts); the driver merges the reservoirs in shard
order afterwards, so the artifact is the same as an in-process pass.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ray
from ray.util import ActorPool

from tasks.ray_train import ray_session


@ray.remote
class TeacherReplica:
    """Loads the teacher once; caches whole shards on request."""

    def __init__(self, model_dir: str, section: dict[str, Any], threads: int) -> None:
        import torch

        from dskd.teacher import load_causal_lm, resolve_compute_dtype, resolve_device

        torch.set_num_threads(threads)
        self.device = resolve_device(section["device"])  # resolved where the replica runs, not on the driver
        self.dtype = resolve_compute_dtype(section["compute_dtype"], self.device)
        self.model = load_causal_lm(Path(model_dir), dtype=self.dtype, device=self.device)
        self.section = section

    def cache(self, shard_index: int, shard_path: str, out_dir: str, capture: dict[str, Any]) -> dict[str, Any]:
        import torch

        from dskd.teacher_cache import cache_shard_and_sample

        with torch.inference_mode():
            done = cache_shard_and_sample(
                self.model,
                shard_index,
                Path(shard_path),
                Path(out_dir),
                capture,
                self.section["batch_size"],
                self.section["reservoir_per_token"],
                self.device,
            )
        node = ray.get_runtime_context().get_node_id()
        return {**done, "device": self.device, "compute_dtype": self.dtype, "node": node, "pid": os.getpid()}


def fan_out_teacher_pass(
    shards: list[Path],
    out_dir: Path,
    model_dir: Path,
    section: dict[str, Any],
    capture: dict[str, Any],
    runtime: dict[str, Any],
) -> list[dict[str, Any]]:
    """Cache every shard on ``runtime["num_workers"]`` replicas; results in shard order.

    ``runtime``: num_workers, threads_per_worker, ray_address (None = RAY_ADDRESS or a local Ray), ray_temp_dir.
    Replicas ask for a GPU each when ``section["device"]`` is cuda, or auto on a cluster that has GPUs.
    """
    n_workers = min(runtime["num_workers"], len(shards))
    threads = runtime["threads_per_worker"]
    with ray_session(runtime.get("ray_address"), n_workers * threads, Path(runtime["ray_temp_dir"])):
        gpus = ray.cluster_resources().get("GPU", 0)
        wants_gpu = section["device"] == "cuda" or (section["device"] == "auto" and gpus >= n_workers)
        options = {"num_cpus": threads, "num_gpus": 1 if wants_gpu else 0}
        actors = [TeacherReplica.options(**options).remote(str(model_dir), section, threads) for _ in range(n_workers)]
        try:
            jobs = [(i, str(shard), str(out_dir), capture) for i, shard in enumerate(shards)]
            done = list(ActorPool(actors).map_unordered(lambda actor, job: actor.cache.remote(*job), jobs))
        finally:
            for actor in actors:
                ray.kill(actor)
    return sorted(done, key=lambda d: d["shard"])
