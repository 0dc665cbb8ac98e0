"""MLflow tracking: one parent run per flow run, one nested run per computed stage (explicit client, no
global active-run state, so tasks in threads or Ray workers cannot cross wires)."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def tracking_uri(configured: str | None, home: str | Path) -> str:
    """config > MLFLOW_TRACKING_URI > SQLite under DSKD_HOME."""
    if configured:
        return configured
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    return f"sqlite:///{Path(home).resolve() / 'mlflow.db'}"


def client_for(uri: str) -> MlflowClient:
    """A client whose registry lives with its tracking store (SQLite holds both)."""
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(client: MlflowClient, name: str, home: str | Path) -> str:
    """The experiment id; a new one on a local store gets its artifact root under DSKD_HOME (not ./mlruns)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    if client.tracking_uri.startswith(("http://", "https://")):
        # A tracking server decides where artifacts go (e.g. its S3 bucket).
        return client.create_experiment(name)
    root = (Path(home).resolve() / "mlartifacts").as_uri()
    return client.create_experiment(name, artifact_location=f"{root}/{name}")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"a.b": "value"} for MLflow params (values truncated to MLflow's limit)."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = json.dumps(value)[:6000] if not isinstance(value, str) else value[:6000]
    return out


@contextmanager
def stage_run(
    uri: str, experiment: str, home: str | Path, parent_run_id: str | None, stage: str, params: dict[str, Any]
) -> Iterator[tuple[MlflowClient, str]]:
    """A nested MLflow run for one stage; marked FAILED if the body raises."""
    client = client_for(uri)
    exp_id = ensure_experiment(client, experiment, home)
    tags = {"dskd.stage": stage}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp_id, run_name=stage, tags=tags)
    run_id = run.info.run_id
    for key, value in flatten(params).items():
        client.log_param(run_id, key, value)
    try:
        yield client, run_id
    except BaseException:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")


def log_metrics(client: MlflowClient, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Log numeric metrics (non-numbers skipped)."""
    for key, value in metrics.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            client.log_metric(run_id, key, float(value), step=step)


def tag_label(stage: str) -> str:
    """A stage name as a valid MLflow tag-name part: "train:kd:0" -> "train.kd.0", "train:dskd@0.5:1" ->
    "train.dskd_lam0.5.1" (MLflow allows alphanumerics, _ - . space / only)."""
    return re.sub(r"[^\w\-. /]", "_", stage.replace(":", ".").replace("@", "_lam"))


class ParentRun:
    """The flow run's MLflow parent run: full config as params, stage keys/status as tags, summary artifact."""

    def __init__(self, tracking_cfg: dict[str, Any], home: str, cfg, run_name: str = "dskd-pipeline") -> None:
        self.run_name = run_name
        self.uri = tracking_uri(tracking_cfg.get("tracking_uri"), home)
        self.client = client_for(self.uri)
        self.experiment_id = ensure_experiment(self.client, tracking_cfg["experiment"], home)
        self.cfg = cfg
        self.run_id: str | None = None

    def __enter__(self) -> ParentRun:
        run = self.client.create_run(self.experiment_id, run_name=self.run_name, tags={"dskd.flow": self.run_name})
        self.run_id = run.info.run_id
        for key, value in flatten(self.cfg.model_dump(mode="json")).items():
            self.client.log_param(self.run_id, key, value)
        return self

    def stage_done(self, stage: str, result: dict[str, Any], cached: bool) -> None:
        label = tag_label(stage)
        self.client.set_tag(self.run_id, f"dskd.{label}.key", result["key"])
        status = "fetched" if result.get("fetched") else "cached" if cached else "computed"
        self.client.set_tag(self.run_id, f"dskd.{label}.status", status)

    def finish(self, summary: dict[str, Any]) -> None:
        self.client.log_dict(self.run_id, summary, "summary.json")
        for row in summary["stages"]:
            self.client.log_metric(self.run_id, f"seconds.{row['stage']}", row["seconds"])

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.run_id:
            self.client.set_terminated(self.run_id, status="FAILED" if exc_type else "FINISHED")
