"""`dskd verify [--stage S]`: check every artifact of a home (sha256 against manifests, Parquet page checksums)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from dskd.config import ConfigError, load_config
from dskd.store.integrity import CorruptArtifactError, verify_artifact

console = Console()


def verify(
    overrides: list[str] = typer.Argument(None, help="config overrides, key=value (only `home` matters)"),
    config: Path = typer.Option(None, "--config", "-c", help="YAML config (for its home)"),
    stage: str = typer.Option(None, "--stage", "-s", help="check only this stage's artifacts"),
) -> None:
    """Verify the artifacts under DSKD_HOME; exit 1 when one is corrupt (remove it and rerun to recompute)."""
    try:
        home = load_config(config, overrides or []).home_path
    except ConfigError as err:
        console.print(f"[red]error:[/red] {err}", soft_wrap=True)
        raise typer.Exit(2) from None
    root = home / "artifacts"
    stages = [root / stage] if stage else sorted(p for p in root.glob("*") if p.is_dir())
    if stage and not stages[0].is_dir():
        console.print(f"[red]error:[/red] no artifacts of stage '{stage}' under {root}", soft_wrap=True)
        raise typer.Exit(2)
    table = Table(title=f"dskd verify {home}")
    for col in ("stage", "key", "files", "status"):
        table.add_column(col)
    bad = 0
    for stage_dir in stages:
        for artifact in sorted(p for p in stage_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            try:
                n = verify_artifact(artifact)
                table.add_row(stage_dir.name, artifact.name, str(n), "[green]ok[/green]")
            except CorruptArtifactError as err:
                bad += 1
                table.add_row(stage_dir.name, artifact.name, "-", f"[red]{err}[/red]")
    console.print(table)
    if bad:
        console.print(f"[red]{bad} corrupt artifact(s)[/red]: remove them and rerun to recompute", soft_wrap=True)
        raise typer.Exit(1)
