"""The model card of a registered student: a Hugging Face README.md (YAML front matter + markdown) rendered from
the stage manifests and the evaluation metrics, so every model version says what it was distilled from and how
it scored."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import yaml

from dskd.store.artifacts import artifact_dir, is_complete, read_manifest

# Licences of what the embedded default ships (README "The embedded default").
EMBEDDED_TEACHER = {"id": "HuggingFaceTB/SmolLM2-135M-Instruct", "license": "apache-2.0"}
CORPUS_LICENSES = {"boolq": "cc-by-sa-3.0"}  # BoolQ passages are Wikipedia text
STAGE_ORDER = ["teacher", "lexicon", "annotate", "teacher_cache", "sense_index", "train", "baselines", "evaluate"]
WHO = [("teacher", "teacher"), ("student_init", "untrained student"), ("student", "student")]


def stage_keys(home: str | Path, upstream: dict[str, str]) -> dict[str, str]:
    """Every stage key behind ``upstream``, following each manifest's own upstream keys (transitively)."""
    keys: dict[str, str] = {}
    todo = list(upstream.items())
    while todo:
        name, key = todo.pop()
        stage = name.split(":")[0]
        if stage in keys:
            continue
        keys[stage] = key
        path = artifact_dir(home, stage, key)
        if is_complete(path):
            todo.extend(read_manifest(path).get("upstream", {}).items())
    return {s: keys[s] for s in [*STAGE_ORDER, *sorted(set(keys) - set(STAGE_ORDER))] if s in keys}


def read_license(model_dir: Path) -> str:
    """``license`` of a local HF model: its README front matter, else config.json, else 'unknown'."""
    readme = model_dir / "README.md"
    if readme.is_file():
        match = re.match(r"^---\s*\n(.*?)\n---", readme.read_text(errors="replace"), re.DOTALL)
        if match:
            meta = yaml.safe_load(match.group(1)) or {}
            if isinstance(meta, dict) and meta.get("license"):
                return str(meta["license"])
    config = model_dir / "config.json"
    if config.is_file():
        value = json.loads(config.read_text()).get("license")
        if value:
            return str(value)
    return "unknown"


def teacher_facts(teacher_section: dict[str, Any], model_dir: Path) -> dict[str, str]:
    """Teacher id, local path and licence (the embedded GGUF's, or read from the user's model dir)."""
    if not teacher_section.get("path"):
        source = f"{teacher_section.get('gguf_package')}/{teacher_section.get('gguf_file')}"
        return {**EMBEDDED_TEACHER, "path": str(model_dir), "source": f"GGUF {source}, converted to a HF dir"}
    config = json.loads((model_dir / "config.json").read_text()) if (model_dir / "config.json").is_file() else {}
    name = config.get("_name_or_path") or model_dir.name
    return {"id": str(name), "license": read_license(model_dir), "path": str(model_dir), "source": "teacher.path"}


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if isinstance(value, int) or (float(value).is_integer() and abs(value) < 1e5):
        return str(int(value))
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.3g}"
    return f"{value:.4g}"


def _cell(metrics: dict[str, Any], key: str) -> str:
    if key not in metrics:
        return "–"
    value, stderr = metrics[key], metrics.get(f"{key}_stderr")
    if isinstance(stderr, int | float) and math.isfinite(stderr):
        return f"{_fmt(value)} ± {_fmt(stderr)}"
    return _fmt(value)


def eval_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown table: one row per metric (stderr folded in as ±), one column per model."""
    keys = sorted({k for m in results.values() for k in m if not k.endswith("_stderr")})
    keys.sort(key=lambda k: (not k.startswith("heldout"), k.startswith("probe"), k))  # held-out, mc, probe
    head = "| metric | " + " | ".join(label for who, label in WHO if who in results) + " |"
    rows = [head, "|---" * (1 + sum(who in results for who, _ in WHO)) + "|"]
    for key in keys:
        cells = [_cell(results[who], key) for who, _ in WHO if who in results]
        rows.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def comparison(results: dict[str, dict[str, Any]], metric: str) -> str:
    """One sentence per reference model on the gate metric (ratio student / reference)."""
    student = results.get("student", {}).get(metric)
    if student is None:
        return f"`{metric}` was not measured."
    lines = []
    for who, label in WHO[:2]:
        ref = results.get(who, {}).get(metric)
        if isinstance(ref, int | float) and ref:
            lines.append(f"- vs the {label}: {_fmt(student)} against {_fmt(ref)} (ratio {student / ref:.3g})")
    return f"`{metric}` (the registry's gate metric, lower is better):\n" + "\n".join(lines)


def samples_table(samples: dict[str, list[dict[str, str]]]) -> str:
    """Markdown: each prompt with every model's greedy continuation ("" when there are none)."""
    if not samples.get("student"):
        return ""
    rows = ["| prompt | model | greedy continuation |", "|---|---|---|"]
    for i, item in enumerate(samples["student"]):
        for who, label in WHO:
            if who in samples and i < len(samples[who]):
                text = samples[who][i]["continuation"].replace("|", "\\|").replace("\n", " ")
                rows.append(f"| {item['prompt'] if who == 'teacher' else ''} | {label} | {text} |")
    return "\n".join(rows)


def render_card(facts: dict[str, Any]) -> str:
    """The README.md text. ``facts``: model_name, teacher (teacher_facts), corpus {source, content_hash, license},
    keys (stage_keys), config {stage: section}, train {steps, tokens, seconds, layers}, results (metrics.json),
    metric, run_id, git_commit."""
    teacher, corpus, train = facts["teacher"], facts["corpus"], facts["train"]
    licenses = sorted({teacher["license"], corpus["license"]} - {"unknown"})
    front = {
        "license": teacher["license"] if teacher["license"] != "unknown" else "other",
        "base_model": teacher["id"],
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["dskd", "knowledge-distillation", "mlflow"],
        "dskd": {"corpus_license": corpus["license"], "upstream_licenses": licenses},
    }
    keys = "\n".join(f"| {stage} | `{key}` |" for stage, key in facts["keys"].items())
    config = yaml.safe_dump(facts["config"], sort_keys=False, default_flow_style=False).rstrip()
    return f"""---
{yaml.safe_dump(front, sort_keys=False).rstrip()}
---

# {facts["model_name"]}

A student distilled from **{teacher["id"]}** with Decoder-based Sense Knowledge Distillation (DSKD,
arXiv 2602.22351) by dskd-pipeline. It uses the teacher's tokenizer, chat template and generation config.

## Loading

```python
import mlflow
pipe = mlflow.transformers.load_model("models:/{facts["model_name"]}@champion")  # a text-generation pipeline
print(pipe("The capital of France is", max_new_tokens=20))
```

The `model/` folder of the downloaded artifact is a plain Hugging Face directory (weights in safetensors plus
the tokenizer): `AutoModelForCausalLM.from_pretrained(path)` and `AutoTokenizer.from_pretrained(path)`.

## Provenance

| | |
|---|---|
| teacher | {teacher["id"]} ({teacher["source"]}) |
| teacher path | `{teacher["path"]}` |
| corpus | `{corpus["source"]}`, content hash `{corpus["content_hash"]}` |
| MLflow run | `{facts["run_id"]}` |
| git commit | `{facts["git_commit"]}` |

Stage keys (`$DSKD_HOME/artifacts/<stage>/<key>`):

| stage | key |
|---|---|
{keys}

## Training

{_fmt(train.get("steps", "?"))} optimizer steps, {_fmt(train.get("tokens", "?"))} training tokens,
{_fmt(train.get("seconds", "?"))} s of step time. Teacher layers kept: {train.get("layers", "?")}.

## Evaluation

{eval_table(facts["results"])}

{comparison(facts["results"], facts["metric"])}

{samples_table(facts.get("samples", {}))}

## Configuration

Each stage's config section as it entered the stage key (where the run happened — home, tracking, storage —
is not part of it):

```yaml
{config}
```

## Licences

- teacher: {teacher["license"]} (the student is a derivative of the teacher's weights)
- training corpus: {corpus["license"]}
"""
