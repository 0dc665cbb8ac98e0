"""Operations commands: Prefect deployments and worker, and the MLflow model registry (`dskd models ...`)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from dskd.config import ConfigError, load_config
from flows import settings
from flows.env import configure_environment

# The checkout holding prefect.yaml: the CWD when it has one (an installed package lives in site-packages).
REPO = Path.cwd() if (Path.cwd() / "prefect.yaml").is_file() else Path(__file__).resolve().parent.parent
console = Console()
models_app = typer.Typer(help="MLflow model registry: list, promote, roll back students.", no_args_is_help=True)


def _prefect(*args: str) -> None:
    cmd = [sys.executable, "-m", "prefect", *args]
    result = subprocess.run(cmd, cwd=REPO, env={**os.environ, "DSKD_REPO": str(REPO)})
    if result.returncode:
        raise typer.Exit(result.returncode)


def deploy(pool: str = typer.Option(settings.WORK_POOL_PROCESS, help="process work pool to deploy to")) -> None:
    """Create the work pool if missing and apply every deployment in prefect.yaml (needs PREFECT_API_URL)."""
    if not os.environ.get(settings.ENV_PREFECT_API):
        console.print(
            "[red]error:[/red] PREFECT_API_URL is unset: start a server (`prefect server start --host 127.0.0.1`) "
            "and export PREFECT_API_URL=http://127.0.0.1:4200/api"
        )
        raise typer.Exit(2)
    probe = subprocess.run([sys.executable, "-m", "prefect", "work-pool", "inspect", pool], capture_output=True)
    if probe.returncode:
        _prefect("work-pool", "create", pool, "--type", "process")
    _prefect("--no-prompt", "deploy", "--all")


def worker(
    pool: str = typer.Option(settings.WORK_POOL_PROCESS, help="work pool to poll"),
    run_once: bool = typer.Option(False, help="poll once, run what is due, exit"),
) -> None:
    """Start a Prefect process worker that runs the pipeline's deployment runs from this checkout."""
    _prefect("worker", "start", "--pool", pool, "--type", "process", *(["--run-once"] if run_once else []))


def _client(config: Path | None):
    from tasks.tracking import client_for, tracking_uri

    try:
        cfg = load_config(config)
    except ConfigError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from None
    configure_environment(cfg.home_path)
    return client_for(tracking_uri(cfg.tracking.tracking_uri, cfg.home_path)), cfg.registry.model_name


@models_app.command("list")
def models_list(config: Path = typer.Option(None, "--config", "-c")) -> None:
    """Registered student versions with aliases and held-out metrics."""
    from tasks.registry import list_versions

    client, name = _client(config)
    table = Table(title=name)
    for col in ("version", "aliases", "heldout_perplexity", "heldout_accuracy", "train key", "run"):
        table.add_column(col)
    for row in list_versions(client, name):
        tags = row["tags"]
        table.add_row(
            str(row["version"]),
            ", ".join(row["aliases"]),
            tags.get("heldout_perplexity", "")[:10],
            tags.get("heldout_accuracy", "")[:6],
            tags.get("dskd.train_key", ""),
            row["run_id"] or "",
        )
    console.print(table)


@models_app.command("promote")
def models_promote(version: int, config: Path = typer.Option(None, "--config", "-c")) -> None:
    """Make VERSION the champion by hand (the automatic gate is bypassed; recorded for rollback)."""
    from tasks.registry import promote

    client, name = _client(config)
    previous = promote(client, name, version)
    console.print(f"{name}: champion {previous} -> {version}")


@models_app.command("rollback")
def models_rollback(config: Path = typer.Option(None, "--config", "-c")) -> None:
    """Move the champion alias back to the version it replaced."""
    from tasks.registry import rollback

    client, name = _client(config)
    try:
        version = rollback(client, name)
    except ValueError as err:
        console.print(f"[red]error:[/red] {err}")
        raise typer.Exit(2) from None
    console.print(f"{name}: champion rolled back to version {version}")
