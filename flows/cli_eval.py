"""`dskd eval MODEL`: score a registered student, a local HF dir or the pipeline's teacher with lm-evaluation-harness
(the same code as the pipeline's baselines / evaluate stages), print the harness's figures with their stderr."""

from __future__ import annotations

import re
import tempfile
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from dskd.config import ConfigError, PipelineConfig, load_config
from flows.env import configure_environment

console = Console()
MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(2)


def teacher_model_dir(cfg: PipelineConfig) -> Path:
    """teacher.path, else the embedded teacher's artifact under DSKD_HOME (converted now if it is missing)."""
    from dskd.teacher.model import check_model_dir

    if cfg.teacher.path:
        return check_model_dir(cfg.teacher.path)
    from flows.dskd_pipeline import stage_sections
    from tasks.prepare_teacher import prepare_teacher, teacher_dir

    row = prepare_teacher.fn(stage_sections(cfg)["teacher"], {}, str(cfg.home_path), cfg.tracking.model_dump())
    return teacher_dir(Path(row["path"]))


def download_registered(cfg: PipelineConfig, uri: str, dest: Path) -> Path:
    """The HF dir of a registered version (``models:/NAME/VERSION`` or ``models:/NAME@ALIAS``), downloaded."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from tasks.tracking import client_for, tracking_uri

    match = MODEL_URI.match(uri)
    if not match:
        raise ValueError(f"model URI '{uri}': use models:/NAME/VERSION or models:/NAME@ALIAS")
    store = tracking_uri(cfg.tracking.tracking_uri, cfg.home_path)
    client = client_for(store)
    name = match["name"]
    try:
        if match["alias"]:
            version = client.get_model_version_by_alias(name, match["alias"]).version
        else:
            version = client.get_model_version(name, match["version"]).version
        source = client.get_model_version_download_uri(name, version)
    except MlflowException as err:
        raise ValueError(f"{uri}: {str(err).splitlines()[0]} (registry {store}; see `dskd models list`)") from None
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(dest), tracking_uri=store))
    found = [p.parent for p in [local / "config.json", *local.glob("*/config.json")] if p.is_file()]
    if not found:
        raise ValueError(f"{uri}: the registered artifact holds no HF model dir (no config.json)")
    return found[0]


def resolve_model(cfg: PipelineConfig, model: str, scratch: Path) -> Path:
    """MODEL argument -> a local HF model dir."""
    if model == "teacher":
        return teacher_model_dir(cfg)
    if model.startswith("models:/"):
        return download_registered(cfg, model, scratch)
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        raise ValueError(
            f"'{model}' is not a local HF model dir (no config.json), 'teacher', or models:/NAME/VERSION|@ALIAS"
        )
    return path


def suite_config(cfg: PipelineConfig, tasks: str | None, limit: int | None, num_fewshot: int | None, batch_size):
    """The eval section with the command-line choices; an explicit --limit / --num-fewshot applies to every task
    (the config's per-task overrides of that setting are dropped, so one harness call scores them all)."""
    suite: dict[str, Any] = cfg.eval.model_dump()
    if tasks is not None:
        suite["tasks"] = [t.strip() for t in tasks.split(",") if t.strip()]
    for key, value in (("limit", limit), ("num_fewshot", num_fewshot)):
        if value is not None:
            suite[key] = value
            suite["task_overrides"] = {t: {**o, key: None} for t, o in suite["task_overrides"].items()}
    if batch_size is not None:
        suite["batch_size"] = batch_size
    return suite


def eval_command(
    model: str = typer.Argument(..., help="models:/NAME/VERSION, models:/NAME@ALIAS, a local HF dir, or 'teacher'"),
    overrides: list[str] = typer.Argument(None, help="config overrides, key=value (home=..., teacher.path=...)"),
    tasks: str = typer.Option(None, "--tasks", help="comma-separated harness tasks or YAML paths (eval.tasks)"),
    limit: int = typer.Option(None, "--limit", min=1, help="items per task, every task (eval.limit + overrides)"),
    num_fewshot: int = typer.Option(None, "--num-fewshot", min=0, help="shots, every task (eval.num_fewshot)"),
    batch_size: int = typer.Option(None, "--batch-size", min=1, help="harness batch size (eval.batch_size)"),
    dtype: str = typer.Option(None, "--dtype", help="auto | native | float32 | bfloat16 | float16 (eval.dtype)"),
    output: Path = typer.Option(None, "--output", "-o", help="write the harness's results JSON to this file"),
    config: Path = typer.Option(None, "--config", "-c", help="YAML config (teacher, registry, eval defaults)"),
) -> None:
    """Score MODEL with lm-evaluation-harness on the pipeline's suite (or --tasks) and print its figures."""
    try:
        cfg = load_config(config, [*(overrides or []), *([f"eval.dtype={dtype}"] if dtype else [])])
    except (ConfigError, FileNotFoundError) as err:
        _fail(str(err).splitlines()[0])
    configure_environment(cfg.home_path)
    from dskd.eval.harness import check_tasks, load_hf_model, local_task_manager, results_json, run_suite
    from dskd.teacher.model import load_tokenizer

    suite = suite_config(cfg, tasks, limit, num_fewshot, batch_size)
    if not suite["tasks"]:
        _fail("no tasks: pass --tasks or set eval.tasks")
    with tempfile.TemporaryDirectory(prefix="dskd-eval-") as scratch:
        try:
            model_dir = resolve_model(cfg, model, Path(scratch))
            manager = local_task_manager()
            check_tasks(suite["tasks"], manager)
            tok_dir = model_dir
            if not any((model_dir / f).is_file() for f in TOKENIZER_FILES):
                tok_dir = teacher_model_dir(cfg)
                console.print(f"note: {model} has no tokenizer; using the pipeline teacher's ({tok_dir})")
            lm_model = load_hf_model(model_dir, suite["dtype"], cfg.teacher.trust_remote_code)
            tokenizer = load_tokenizer(tok_dir, cfg.teacher.trust_remote_code)
        except (ValueError, FileNotFoundError, OSError) as err:
            _fail(str(err).splitlines()[0])
        t0 = time.perf_counter()
        results = run_suite(lm_model, tokenizer, suite, manager)
        seconds = time.perf_counter() - t0
    print_results(results, f"{model} ({suite['dtype']}, {seconds:.0f} s)")
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(results_json(results))
        console.print(f"harness results JSON: {output}")


def print_results(results: dict[str, Any], title: str) -> None:
    """One row per (task, metric): value ± the harness's stderr, n-shot, items, task version."""
    from dskd.eval.harness import flatten_results, top_level_tasks

    flat = flatten_results(results)
    table = Table(title=title)
    for col in ("task", "version", "n-shot", "items", "metric", "value", "± stderr"):
        table.add_column(col, justify="left" if col in ("task", "metric") else "right")
    for task in top_level_tasks(results):
        names = [k for k in flat if k.startswith(f"mc.{task}.") and k.count(".") >= 2]
        metrics = [k.split(".", 2)[2] for k in names]
        metrics = [m for m in metrics if m not in ("n", "n_shot") and not m.split(".")[0].endswith("_stderr")]
        for i, metric in enumerate(metrics):
            se = flat.get(f"mc.{task}.{_stderr_name(metric)}")
            table.add_row(
                task if i == 0 else "",
                str((results.get("versions") or {}).get(task, "")) if i == 0 else "",
                _int(flat.get(f"mc.{task}.n_shot")) if i == 0 else "",
                _int(flat.get(f"mc.{task}.n")) if i == 0 else "",
                metric,
                f"{flat[f'mc.{task}.{metric}']:.4f}",
                f"{se:.4f}" if se is not None else "n/a",
            )
    console.print(table)
    limit = (results.get("config") or {}).get("limit")
    console.print(f"lm-eval {results.get('lm_eval_version', '?')}, limit {limit}; ± is the harness's standard error")


def _stderr_name(metric: str) -> str:
    # "acc" -> "acc_stderr"; a filtered metric "exact_match.strict-match" -> "exact_match_stderr.strict-match"
    base, dot, filt = metric.partition(".")
    return f"{base}_stderr{dot}{filt}"


def _int(value: float | None) -> str:
    return "" if value is None else str(int(value))


def eval_tasks_command(dest: Path = typer.Argument(..., help="directory to write the task YAMLs into")) -> None:
    """Write the project's harness task YAMLs (paths filled in for this machine) for `lm_eval --include_path`."""
    from dskd.eval.harness import write_task_dir

    write_task_dir(dest)
    console.print(f"task YAMLs in {dest}: lm_eval --model hf --model_args pretrained=DIR --include_path {dest} ...")
