"""The `dskd` command line: run the pipeline flow and show what each stage did."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from dskd.config import ConfigError, load_config
from dskd.eval.arms import parse_arm
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
    console.print(f"[red]error:[/red] {message}", soft_wrap=True)
    raise typer.Exit(2)


def _load_and_check(config: Path | None, overrides: list[str]):
    """Config, the process environment, then the preflight checks (no stage runs until they pass); one line and
    exit 2 on a problem."""
    try:
        cfg = load_config(config, overrides)
    except (ConfigError, FileNotFoundError) as err:
        _fail(str(err).splitlines()[0])
    configure_environment(cfg.home_path, cfg.train.ray_address)  # before preflight imports transformers (offline)
    quiet_console()
    from dskd.preflight import preflight

    try:
        preflight(cfg)
    except (ConfigError, FileNotFoundError) as err:
        _fail(str(err).splitlines()[0])
    return cfg


def quiet_console() -> None:
    """Prefect's console handler shows only CRITICAL at the CLI: a failed task's traceback stays in the Prefect DB
    and the log file, the terminal gets the one line (export PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL=WARNING to see
    them). Set before prefect is imported."""
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "CRITICAL")


def _run_flow(home: Path, flow, *args):
    """Run a flow; a user error raised anywhere inside it (a Prefect task, a Ray worker) ends as one line, exit 2,
    with the full traceback in ``$DSKD_HOME/logs/last-error.log``. Other errors keep their traceback."""
    from flows.errors import user_error, write_traceback

    try:
        return flow(*args)
    except Exception as err:
        cause = user_error(err)
        if cause is None:
            raise
        log = write_traceback(home, err)
        _fail(f"{str(cause).splitlines()[0] if str(cause) else type(cause).__name__} (traceback: {log})")


@app.command()
def run(
    overrides: list[str] = typer.Argument(None, help="config overrides, key=value (e.g. train.lr=1e-4)"),
    config: Path = typer.Option(None, "--config", "-c", help="YAML config (default: built-in embedded default)"),
) -> None:
    """Run the full pipeline: teacher, lexicon, annotate, teacher cache, sense index, train, evaluate, register."""
    cfg = _load_and_check(config, overrides or [])
    from flows.dskd_pipeline import dskd_pipeline  # after the environment is set

    t0 = time.perf_counter()
    summary = _run_flow(cfg.home_path, dskd_pipeline, str(config) if config else None, list(overrides or []))
    print_summary(summary, time.perf_counter() - t0)


@app.command()
def compare(
    overrides: list[str] = typer.Argument(None, help="config overrides, key=value"),
    config: Path = typer.Option(None, "--config", "-c", help="YAML config (default: embedded default)"),
    arms: str = typer.Option(
        "ce,kd,dskd", help="arms to compare, comma-separated: ce, kd, dskd, or dskd@<lambda> (e.g. dskd@0.5)"
    ),
    seeds: str = typer.Option("0,1,2", help="seeds per arm, comma-separated"),
) -> None:
    """Train ce / kd / dskd students on the same cache and seeds, evaluate all, print mean ± std."""
    try:
        seed_list = [int(s) for s in seeds.split(",") if s.strip()]
    except ValueError:
        _fail(f"--seeds {seeds!r}: a comma-separated list of integers (e.g. 0,1,2)")
    cfg = _load_and_check(config, overrides or [])
    arm_list = [a.strip() for a in arms.split(",") if a.strip()]
    try:
        for arm in arm_list:
            parse_arm(arm)
    except ValueError as err:
        _fail(f"--arms: {err}")
    from flows.compare import dskd_compare

    t0 = time.perf_counter()
    summary = _run_flow(
        cfg.home_path, dskd_compare, str(config) if config else None, list(overrides or []), arm_list, seed_list
    )
    console.print(f"dskd compare ({time.perf_counter() - t0:.1f} s): report in {summary['report']}")
    console.print((Path(summary["report"]) / "comparison.md").read_text())


def print_samples(evaluate_dir: Path) -> None:
    """The greedy continuations of the evaluate stage (teacher, untrained and trained student), if it has them."""
    import json

    path = evaluate_dir / "samples.json"
    if not path.is_file():
        return
    from tasks.model_card import WHO  # the same (key, label) pairs as the model card's tables

    samples = json.loads(path.read_text())
    for i, first in enumerate(samples.get("teacher", [])):
        console.print(f"[bold]{first['prompt']}[/bold] …")
        for who, label in WHO:
            if who in samples and i < len(samples[who]):
                console.print(f"  {label:>17}: {samples[who][i]['continuation']!r}", markup=False, highlight=False)


def print_summary(summary: dict, wall: float) -> None:
    """Stage table, the greedy samples, then the registered model."""
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
    for row in summary["stages"]:
        if row["stage"] == "evaluate":
            print_samples(Path(row["path"]))
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
from flows.cli_verify import verify  # noqa: E402

app.command("eval")(eval_command)
app.command("eval-tasks")(eval_tasks_command)

app.command()(deploy)
app.command()(verify)
app.command()(worker)
app.add_typer(models_app, name="models")


def main() -> None:  # pragma: no cover - console entry
    app(sys.argv[1:])


if __name__ == "__main__":  # pragma: no cover
    main()
