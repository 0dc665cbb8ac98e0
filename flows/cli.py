"""The `dskd` command line: run the pipeline flow and show what each stage did."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from dskd.config import ConfigError, load_config
from flows.env import configure_environment

app = typer.Typer(
    help="DSKD: distil a decoder LM into a smaller one with sense-level knowledge.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()


@app.callback()
def main_callback() -> None:
    """DSKD pipeline commands (Prefect flows, Ray Train, MLflow tracking)."""


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


@app.command()
def run(
    overrides: list[str] = typer.Argument(None, help="config overrides, key=value (e.g. train.lr=1e-4)"),
    config: Path = typer.Option(None, "--config", "-c", help="YAML config (default: built-in embedded default)"),
) -> None:
    """Run the full pipeline: teacher, lexicon, annotate, teacher cache, sense index, train, evaluate, register."""
    try:
        cfg = load_config(config, overrides or [])
    except (ConfigError, FileNotFoundError) as err:
        _fail(str(err))
    configure_environment(cfg.home_path, cfg.train.ray_address)
    from flows.dskd_pipeline import dskd_pipeline  # after the environment is set

    t0 = time.perf_counter()
    try:
        summary = dskd_pipeline(str(config) if config else None, list(overrides or []))
    except (ValueError, FileNotFoundError) as err:
        _fail(str(err).splitlines()[0])
    print_summary(summary, time.perf_counter() - t0)


@app.command()
def compare(
    overrides: list[str] = typer.Argument(None, help="config overrides, key=value"),
    config: Path = typer.Option(None, "--config", "-c", help="YAML config (default: embedded default)"),
    arms: str = typer.Option("ce,kd,dskd", help="loss modes to compare, comma-separated"),
    seeds: str = typer.Option("0,1,2", help="seeds per arm, comma-separated"),
) -> None:
    """Train ce / kd / dskd students on the same cache and seeds, evaluate all, print mean ± std."""
    try:
        cfg = load_config(config, overrides or [])
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except (ConfigError, FileNotFoundError, ValueError) as err:
        _fail(str(err).splitlines()[0])
    arm_list = [a.strip() for a in arms.split(",") if a.strip()]
    if not set(arm_list) <= {"ce", "kd", "dskd"}:
        _fail(f"--arms {arms!r}: each arm must be one of ce, kd, dskd")
    configure_environment(cfg.home_path, cfg.train.ray_address)
    from flows.compare import dskd_compare

    t0 = time.perf_counter()
    summary = dskd_compare(str(config) if config else None, list(overrides or []), arm_list, seed_list)
    console.print(f"dskd compare ({time.perf_counter() - t0:.1f} s): report in {summary['report']}")
    console.print((Path(summary["report"]) / "comparison.md").read_text())


def print_summary(summary: dict, wall: float) -> None:
    """Stage table, then the registered model."""
    table = Table(title=f"dskd pipeline ({wall:.1f} s)")
    for col in ("stage", "status", "seconds", "artifact"):
        table.add_column(col)
    for row in summary["stages"]:
        if row.get("fetched"):
            status = "[cyan]fetched[/cyan]"  # from storage.uri, computed elsewhere
        else:
            status = "[green]cached[/green]" if row["cached"] else "[yellow]computed[/yellow]"
        table.add_row(row["stage"], status, f"{row['seconds']:.1f}", row["path"])
    console.print(table)
    reg_path = Path(summary["stages"][-1]["path"]) / "registration.json"
    if reg_path.is_file():
        import json

        reg = json.loads(reg_path.read_text())
        console.print(
            f"registered [bold]{reg['model_name']}[/bold] version {reg['version']} "
            f"aliases {', '.join(reg['aliases'])} ({reg['gate_metric']} {reg['challenger_value']:.3f}; "
            f"champion before: {reg['champion_value_before']})"
        )


from flows.cli_eval import eval_command, eval_tasks_command  # noqa: E402
from flows.cli_ops import deploy, models_app, worker  # noqa: E402

app.command("eval")(eval_command)
app.command("eval-tasks")(eval_tasks_command)

app.command()(deploy)
app.command()(worker)
app.add_typer(models_app, name="models")


def main() -> None:  # pragma: no cover - console entry
    app(sys.argv[1:])


if __name__ == "__main__":  # pragma: no cover
    main()
