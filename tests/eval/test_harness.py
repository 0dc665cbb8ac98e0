"""Benchmarks through lm-evaluation-harness: `dskd eval` gives the harness CLI's figures; metric flattening,
per-task settings, merging and the probe's harness log-likelihood, checked by hand."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dskd.eval import harness

# A results dict shaped as lm-eval 0.4.13 returns it (abridged): one task and a group of two subtasks.
RESULTS = {
    "results": {
        "arc_easy": {
            "alias": "arc_easy",
            "sample_len": 50,
            "acc,none": 0.48,
            "acc_stderr,none": 0.0714,
            "acc_norm,none": 0.38,
            "acc_norm_stderr,none": 0.0693,
        },
        "mmlu": {"alias": "mmlu", "acc,none": 0.25, "acc_stderr,none": 0.1, "sample_count": {"acc,none": 5}},
        "mmlu_anatomy": {"alias": "anatomy", "acc,none": 0.5, "acc_stderr,none": "N/A"},
        "mmlu_virology": {"alias": "virology", "acc,none": 0.0, "acc_stderr,none": 0.0},
        "gsm": {"exact_match,strict-match": 0.1, "exact_match_stderr,strict-match": 0.05},
    },
    "group_subtasks": {"mmlu": ["mmlu_anatomy", "mmlu_virology"]},
    "versions": {"arc_easy": 1.0, "mmlu": "2", "mmlu_anatomy": 1.0, "mmlu_virology": 1.0, "gsm": 3.0},
    "n-shot": {"arc_easy": 0, "mmlu_anatomy": 5, "mmlu_virology": 5, "gsm": 8},
    "n-samples": {
        "arc_easy": {"original": 570, "effective": 50},
        "mmlu_anatomy": {"original": 135, "effective": 2},
        "mmlu_virology": {"original": 166, "effective": 3},
        "gsm": {"original": 10, "effective": 10},
    },
    "config": {"limit": 50},
    "lm_eval_version": "0.4.13",
}


def test_flatten_results_by_hand():
    assert harness.flatten_results(RESULTS) == {
        "mc.arc_easy.acc": 0.48,
        "mc.arc_easy.acc_stderr": 0.0714,
        "mc.arc_easy.acc_norm": 0.38,
        "mc.arc_easy.acc_norm_stderr": 0.0693,
        "mc.arc_easy.n": 50.0,
        "mc.arc_easy.n_shot": 0.0,
        "mc.mmlu.acc": 0.25,
        "mc.mmlu.acc_stderr": 0.1,
        "mc.mmlu.n": 5.0,  # 2 + 3 over its subtasks
        "mc.mmlu.n_shot": 5.0,
        "mc.gsm.exact_match.strict-match": 0.1,
        "mc.gsm.exact_match_stderr.strict-match": 0.05,
        "mc.gsm.n": 10.0,
        "mc.gsm.n_shot": 8.0,
    }
    # a subtask asked for by name: its "N/A" stderr is left out, not turned into a number
    assert harness.flatten_results(RESULTS, ["mmlu_anatomy"]) == {
        "mc.mmlu_anatomy.acc": 0.5,
        "mc.mmlu_anatomy.n": 2.0,
        "mc.mmlu_anatomy.n_shot": 5.0,
    }


def test_harness_tags_and_merge():
    tags = harness.harness_tags(RESULTS)
    assert tags["lm_eval.version"] == "0.4.13"
    assert (tags["lm_eval.arc_easy.version"], tags["lm_eval.arc_easy.n_shot"], tags["lm_eval.arc_easy.limit"]) == (
        "1.0",
        "0",
        "50",
    )
    assert tags["lm_eval.mmlu.version"] == "2" and tags["lm_eval.mmlu.n_shot"] == "5"
    other = {
        "results": {"piqa": {"acc,none": 0.6}},
        "versions": {"piqa": 1.0},
        "n-shot": {"piqa": 0},
        "config": {"limit": 7},
    }
    merged = harness.merge_results([RESULTS, other])
    assert merged["results"]["piqa"] == {"acc,none": 0.6}
    assert merged["results"]["arc_easy"] == RESULTS["results"]["arc_easy"]
    assert merged["versions"] == {**RESULTS["versions"], "piqa": 1.0}
    assert merged["config"]["limit"]["piqa"] == 7 and merged["config"]["limit"]["arc_easy"] == 50
    assert harness.harness_tags(merged)["lm_eval.piqa.limit"] == "7"
    assert harness.merge_results([other]) is other


def test_suite_settings_groups_tasks_by_limit_and_shots():
    cfg = {
        "tasks": ["arc_easy", "piqa", "mmlu", "arc_challenge"],
        "limit": 100,
        "num_fewshot": 0,
        "task_overrides": {
            "mmlu": {"limit": 3, "num_fewshot": None},
            "arc_challenge": {"limit": None, "num_fewshot": 5},
        },
    }
    assert harness.suite_settings(cfg) == {
        (100, 0): ["arc_easy", "piqa"],
        (3, 0): ["mmlu"],
        (100, 5): ["arc_challenge"],
    }


def test_write_task_dir_fills_every_template(tmp_path):
    out = harness.write_task_dir(tmp_path / "tasks")
    assert sorted(p.name for p in out.glob("*.yaml")) == sorted(f"{t}.yaml" for t in harness.LOCAL_TASKS if t != "mmlu")
    subjects = sorted(out.glob("mmlu/mmlu_*.yaml"))
    assert len(subjects) == 57
    for path in [*out.glob("*.yaml"), *subjects]:
        text = path.read_text()
        assert "${" not in text
        for line in text.splitlines():
            if line.strip().startswith(("include:", "validation:", "dev:", "test:")) and "/" in line:
                assert Path(line.split(":", 1)[1].strip()).is_file(), line


def test_unknown_task_is_a_one_line_error():
    with pytest.raises(ValueError, match="unknown harness task.*arc_easyy.*arc_easy, arc_challenge"):
        harness.check_tasks(["arc_easy", "arc_easyy"], harness.local_task_manager())


@pytest.fixture(scope="module")
def tiny_model(tiny_teacher_dir):
    return harness.load_hf_model(tiny_teacher_dir, "float32")


def _cli(*args: str):
    from flows.cli import app

    return CliRunner().invoke(app, list(args))


def test_dskd_eval_equals_the_harness_cli(tiny_teacher_dir, tmp_path):
    """`dskd eval DIR` and `python -m lm_eval --model hf` on the project's arc_easy YAML: the same figures."""
    ours = tmp_path / "ours.json"
    res = _cli(
        "eval", str(tiny_teacher_dir), f"home={tmp_path / 'home'}", "--tasks", "arc_easy", "--limit", "50",
        "--num-fewshot", "0", "--output", str(ours),
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "arc_easy" in res.output and "acc_norm" in res.output and "±" in res.output
    task_dir = harness.write_task_dir(tmp_path / "tasks")
    cmd = [
        sys.executable, "-m", "lm_eval", "--model", "hf", "--model_args", f"pretrained={tiny_teacher_dir}",
        "--tasks", str(task_dir / "arc_easy.yaml"), "--limit", "50", "--output_path", str(tmp_path / "cli" / "r.json"),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=900)
    theirs = json.loads(next((tmp_path / "cli").glob("r_*.json")).read_text())
    mine = json.loads(ours.read_text())
    for key in ("acc,none", "acc_norm,none", "acc_stderr,none", "acc_norm_stderr,none"):
        assert mine["results"]["arc_easy"][key] == theirs["results"]["arc_easy"][key], key
    assert mine["versions"] == theirs["versions"] and mine["n-shot"] == theirs["n-shot"] == {"arc_easy": 0}
    assert mine["n-samples"]["arc_easy"] == {"original": 570, "effective": 50}


def test_dskd_eval_registered_version_without_tokenizer(tiny_teacher_dir, tmp_path):
    """models:/NAME/VERSION from an MLflow registry on SQLite; the artifact has no tokenizer: the teacher's is used."""
    import shutil

    from tasks.tracking import client_for, ensure_experiment

    home = tmp_path / "home"
    home.mkdir()
    student = tmp_path / "student"
    student.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(tiny_teacher_dir / name, student / name)
    client = client_for(f"sqlite:///{home / 'mlflow.db'}")
    run = client.create_run(ensure_experiment(client, "dskd", home))
    client.log_artifacts(run.info.run_id, str(student), artifact_path="student")
    client.create_registered_model("tiny")
    client.create_model_version("tiny", f"{run.info.artifact_uri}/student", run_id=run.info.run_id)
    client.set_registered_model_alias("tiny", "champion", "1")
    res = _cli(
        "eval", "models:/tiny@champion", f"home={home}", f"teacher.path={tiny_teacher_dir}", "--tasks", "piqa",
        "--limit", "2", "--batch-size", "2",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "has no tokenizer; using the pipeline teacher's" in res.output and "piqa" in res.output
    bad = _cli("eval", "models:/tiny/9", f"home={home}", "--tasks", "piqa", "--limit", "1")
    assert bad.exit_code == 2 and "models:/tiny/9" in bad.output and len(bad.output.strip().splitlines()) <= 3
    nodir = _cli("eval", str(tmp_path / "nope"), f"home={home}", "--tasks", "piqa")
    assert nodir.exit_code == 2 and "not a local HF model dir" in nodir.output


def test_evaluate_model_flat_metrics(tiny_model, smollm_tokenizer):
    from dskd.eval.evaluation import evaluate_model

    heldout = torch.randint(0, 100, (2, 8)).numpy()
    cfg = {
        "batch_size": 4, "tasks": ["arc_challenge", "mmlu"], "limit": 2, "num_fewshot": 0,
        "task_overrides": {"mmlu": {"limit": 1, "num_fewshot": None}}, "probe_items": 0, "seed": 0,
    }  # fmt: skip
    metrics, results = evaluate_model(tiny_model, smollm_tokenizer, heldout, cfg)
    assert metrics["mc.arc_challenge.n"] == 2 and metrics["mc.mmlu.n"] == 57  # one item per MMLU subject
    # one item per subject: the harness cannot compute a subject's stderr ("N/A"), so the group has none either
    assert 0 <= metrics["mc.mmlu.acc"] <= 1 and "mc.mmlu.acc_stderr" not in metrics
    assert {"mc.arc_challenge.acc_norm", "mc.arc_challenge.acc_norm_stderr"} <= set(metrics)
    assert results["config"]["limit"] == {"arc_challenge": 2, "mmlu": 1} and math.isfinite(metrics["heldout_nll"])
    assert "mmlu_anatomy" in results["results"]  # the subjects stay in the harness JSON
