"""The few Ray lines: a WorkerContext over ray.train, the per-worker entry point, and the trainer launch."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import ray
import ray.train
import ray.train.torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from dskd.train.loop import TrainJob, run_training
from tasks.train_progress import ProgressBoard, board_progress

RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
MLFLOW_RUN_FILE = "mlflow_run_id.txt"


def run_name_for(train_key: str) -> str:
    """The Ray run name of a train stage key: a rerun of the same key (after the driver died) resumes its latest
    complete checkpoint instead of starting at step 1."""
    return f"dskd-train-{train_key}"


def _storage_fs(storage_path: str) -> tuple[pafs.FileSystem, str]:
    if "://" in storage_path:
        return pafs.FileSystem.from_uri(storage_path)
    return pafs.LocalFileSystem(), str(Path(storage_path).resolve())


def _checkpoint_dirs(fs: pafs.FileSystem, run_dir: str) -> list[str]:
    if fs.get_file_info(run_dir).type == pafs.FileType.NotFound:
        return []
    entries = fs.get_file_info(pafs.FileSelector(run_dir))
    return sorted(e.path for e in entries if e.type == pafs.FileType.Directory and "checkpoint_" in e.base_name)


def finished_checkpoint(storage_path: str, run_name: str) -> Checkpoint | None:
    """The final checkpoint of a run that finished but whose driver died before collecting it, else None."""
    fs, base = _storage_fs(storage_path)
    for path in reversed(_checkpoint_dirs(fs, f"{base.rstrip('/')}/{run_name}")):
        state = f"{path}/state.json"
        if fs.get_file_info(state).type != pafs.FileType.File:
            continue
        with fs.open_input_stream(state) as fh:
            done = json.loads(fh.read()).get("final", False)
        return Checkpoint(path, filesystem=fs) if done else None
    return None


def clean_finished_run(storage_path: str, run_name: str, keep: int) -> None:
    """After a run finished: remove its dir (``keep`` = 0), or keep the newest ``keep`` checkpoints and move the dir
    aside as ``<run_name>-finished`` so a later run of the same key (artifact deleted) starts afresh."""
    fs, base = _storage_fs(storage_path)
    run_dir = f"{base.rstrip('/')}/{run_name}"
    if fs.get_file_info(run_dir).type == pafs.FileType.NotFound:
        return
    if keep == 0:
        fs.delete_dir(run_dir)
        return
    for old in _checkpoint_dirs(fs, run_dir)[:-keep]:
        fs.delete_dir(old)
    finished = f"{run_dir}-finished"
    if fs.get_file_info(finished).type != pafs.FileType.NotFound:
        fs.delete_dir(finished)
    fs.move(run_dir, finished)


class RayWorkerContext:
    """WorkerContext backed by ray.train: rank/world, DDP preparation, checkpoint report/restore."""

    def __init__(
        self, tracking_uri: str | None, run_id: str | None, progress=None, scratch_root: str | None = None
    ) -> None:
        ctx = ray.train.get_context()
        self._scratch_root = scratch_root  # checkpoint scratch dirs go under it (None: the system temp dir)
        self.rank = ctx.get_world_rank()
        self.world_size = ctx.get_world_size()
        self.device = str(ray.train.torch.get_device())
        self._client = None
        self._run_id = run_id
        self._progress = progress if self.rank == 0 else None  # the driver's ProgressBoard actor
        if self.rank == 0 and tracking_uri and run_id:
            from mlflow.tracking import MlflowClient  # rank 0 alone logs

            self._client = MlflowClient(tracking_uri=tracking_uri)

    def prepare_model(self, model):
        # Gradients as views into DDP's all-reduce buckets: no copy of every gradient into a bucket and back per
        # step, and one gradient buffer instead of two (PyTorch's DDP docs; the numbers are the same).
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"gradient_as_bucket_view": True})

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        if checkpoint_dir is not None and self._run_id:
            (checkpoint_dir / MLFLOW_RUN_FILE).write_text(self._run_id)  # which MLflow run logged its history
        checkpoint = Checkpoint.from_directory(str(checkpoint_dir)) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)
        if checkpoint_dir is not None:
            # report() has persisted it to the run's storage_path: the local scratch copy is dead weight.
            shutil.rmtree(
                checkpoint_dir.parent if checkpoint_dir.parent.name.startswith("dskd-ckpt-") else checkpoint_dir,
                ignore_errors=True,
            )

    def checkpoint_dir(self) -> Path | None:
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None
        path = Path(checkpoint.to_directory())
        self._relog_history(path)
        return path

    def _relog_history(self, checkpoint: Path) -> None:
        """A run resumed after the driver died has a new MLflow run: log the steps the checkpoint covers there too,
        so it holds every step once (a worker restart keeps its MLflow run, which has them already)."""
        history, logged_by = checkpoint / "history.json", checkpoint / MLFLOW_RUN_FILE
        if self._client is None or not history.is_file():
            return
        if logged_by.is_file() and logged_by.read_text().strip() == self._run_id:
            return
        for row in json.loads(history.read_text()):
            self.log_metrics({k: v for k, v in row.items() if k != "step"}, int(row["step"]))

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        if self._progress is not None:
            self._progress.update.remote({**metrics, "step": step})  # fire and forget: never waits on the driver
        if self._client is None:
            return
        from mlflow.entities import Metric

        now = int(__import__("time").time() * 1000)
        self._client.log_batch(self._run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    def scratch_dir(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="dskd-ckpt-", dir=self._scratch_root))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point on every worker. Checkpoint scratch dirs live under one temp dir of this worker,
    removed when it returns or raises: report() removes each after persisting it, this catches the ones a failed
    step or report left (a SIGKILLed worker still leaves its own)."""
    with tempfile.TemporaryDirectory(prefix="dskd-worker-") as root:
        progress = config.get("progress")
        ctx = RayWorkerContext(config.get("tracking_uri"), config.get("mlflow_run_id"), progress, scratch_root=root)
        run_training(TrainJob(**config["job"]), ctx)


def init_ray(address: str | None, num_cpus: int, temp_dir: Path) -> bool:
    """Connect to ``address`` (or RAY_ADDRESS), else start a local Ray on loopback.

    Returns True when this call initialised Ray (the caller then shuts it down: a local Ray stops, a connection to
    an existing cluster is closed and the cluster keeps running).
    """
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
        return True
    # Ray puts AF_UNIX sockets under its temp dir (path limit 107 bytes): keep it short, one per DSKD_HOME.
    digest = hashlib.sha256(str(temp_dir.resolve()).encode()).hexdigest()[:8]
    temp_dir = Path(tempfile.gettempdir()) / f"dskd-ray-{digest}"
    temp_dir.mkdir(parents=True, exist_ok=True)
    ray.init(
        num_cpus=num_cpus,
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=str(temp_dir),
        log_to_driver=False,
        runtime_env={"env_vars": RAY_ENV},
    )
    return True


@contextmanager
def ray_session(address: str | None, num_cpus: int, temp_dir: Path) -> Iterator[None]:
    """Ray initialised for the duration of a block (reused by every train task inside it)."""
    started = init_ray(address, num_cpus, temp_dir)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def fit(
    job: TrainJob,
    train_cfg: dict[str, Any],
    storage_path: str,
    tracking_uri: str,
    mlflow_run_id: str,
    run_name: str | None = None,
) -> Checkpoint:
    """Run the TorchTrainer; returns the final checkpoint (holding ``student/`` and ``history.json``).

    A fresh run name each call unless ``run_name`` is given (:func:`run_name_for` the train key): re-using one resumes
    from its latest complete checkpoint. The caller copies what it needs out of the returned checkpoint, then calls
    :func:`clean_finished_run`.
    """
    storage = train_cfg.get("storage_path") or storage_path
    if run_name is not None and (done := finished_checkpoint(storage, run_name)) is not None:
        return done  # the driver died after training finished: nothing left to train
    board = ProgressBoard.remote()
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "job": asdict(job),
            "tracking_uri": tracking_uri,
            "mlflow_run_id": mlflow_run_id,
            "progress": board,
        },
        scaling_config=ScalingConfig(
            num_workers=train_cfg["num_workers"],
            use_gpu=train_cfg["use_gpu"],
            resources_per_worker={"CPU": train_cfg["threads_per_worker"]} if not train_cfg["use_gpu"] else None,
        ),
        run_config=RunConfig(
            name=run_name or f"dskd-{uuid.uuid4().hex[:8]}",
            storage_path=storage,
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=train_cfg["max_failures"]),
        ),
    )
    try:
        with board_progress(board):  # a live bar on the driver (steps, loss, tokens/s, ETA) when on a terminal
            result = trainer.fit()
    finally:
        ray.kill(board)
    if result.error:
        raise result.error
    if result.checkpoint is None:
        raise RuntimeError("training finished without a final checkpoint; see the Ray logs under DSKD_HOME/ray")
    return result.checkpoint
