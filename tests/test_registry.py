"""Registry gate, promotion and rollback against a real MLflow SQLite store."""

from __future__ import annotations

import pytest

from tasks.registry import list_versions, passes_gate, promote, register_version, rollback
from tasks.tracking import client_for, ensure_experiment


def test_gate_arithmetic():
    assert passes_gate(10.0, None, 0.0)  # no champion yet
    assert passes_gate(9.9, 10.0, 0.0) and not passes_gate(10.0, 10.0, 0.0)  # strictly better
    # 5% margin: must be below 10 * (1 - 0.05) = 9.5
    assert passes_gate(9.4, 10.0, 0.05) and not passes_gate(9.6, 10.0, 0.05)


@pytest.fixture()
def client(tmp_path):
    client = client_for(f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = ensure_experiment(client, "t", tmp_path)
    run = client.create_run(exp)
    src = tmp_path / "model"
    src.mkdir()
    (src / "config.json").write_text("{}")
    client.log_artifacts(run.info.run_id, str(src), "student")
    source = f"{client.get_run(run.info.run_id).info.artifact_uri}/student"
    return client, run.info.run_id, source


def _register(client, run_id, source, ppl):
    return register_version(
        client, "m", source, run_id, {"heldout_perplexity": ppl}, "heldout_perplexity", ppl, min_improvement=0.0
    )


def test_challenger_promoted_only_when_better(client):
    c, run_id, source = client
    first = _register(c, run_id, source, 20.0)
    assert first["promoted"] and first["version"] == 1
    worse = _register(c, run_id, source, 25.0)
    assert not worse["promoted"] and worse["champion_value_before"] == 20.0
    assert int(c.get_model_version_by_alias("m", "champion").version) == 1
    assert int(c.get_model_version_by_alias("m", "challenger").version) == 2
    better = _register(c, run_id, source, 15.0)
    assert better["promoted"]
    assert int(c.get_model_version_by_alias("m", "champion").version) == 3
    rows = list_versions(c, "m")
    assert [r["version"] for r in rows] == [3, 2, 1]
    assert rows[0]["aliases"] == ["challenger", "champion"]


def test_promote_and_rollback(client):
    c, run_id, source = client
    _register(c, run_id, source, 20.0)
    _register(c, run_id, source, 25.0)
    assert promote(c, "m", 2) == 1
    assert int(c.get_model_version_by_alias("m", "champion").version) == 2
    assert rollback(c, "m") == 1
    assert int(c.get_model_version_by_alias("m", "champion").version) == 1
    with pytest.raises(ValueError, match="nothing to roll back"):
        rollback(c, "m")


def test_register_is_idempotent_per_train_key(client):
    """A crash after create_model_version (before the register artifact was renamed into place) makes the rerun
    register again: the version tagged with the same train key is reused, not duplicated."""
    c, run_id, source = client
    tags = {"heldout_perplexity": 20.0, "dskd.train_key": "abc"}
    first = register_version(c, "m", source, run_id, tags, "heldout_perplexity", 20.0, 0.0)
    again = register_version(c, "m", source, run_id, tags, "heldout_perplexity", 20.0, 0.0)
    assert (first["version"], first["reused"], again["version"], again["reused"]) == (1, False, 1, True)
    assert again["promoted"] and again["champion_value_before"] is None
    assert [r["version"] for r in list_versions(c, "m")] == [1]
    # A new train key registers a new version; rerunning the first (not champion any more) adds nothing.
    better = register_version(c, "m", source, run_id, {**tags, "dskd.train_key": "def"}, "heldout_perplexity", 10.0, 0)
    assert better["version"] == 2 and better["promoted"]
    rerun2 = register_version(c, "m", source, run_id, {**tags, "dskd.train_key": "def"}, "heldout_perplexity", 10.0, 0)
    assert rerun2["version"] == 2 and rerun2["promoted"] and rerun2["champion_value_before"] == 20.0
    assert [r["version"] for r in list_versions(c, "m")] == [2, 1]
    assert int(c.get_model_version_by_alias("m", "champion").version) == 2


def test_model_card_eval_table_folds_stderr_and_compares():
    from tasks.model_card import comparison, eval_table

    results = {
        "teacher": {"heldout_perplexity": 30.5, "mc.arc_easy.acc": 0.5, "mc.arc_easy.acc_stderr": 0.1},
        "student_init": {"heldout_perplexity": 3.9e9, "mc.arc_easy.acc": 0.25},
        "student": {"heldout_perplexity": 61.0, "mc.arc_easy.acc": 0.375, "mc.arc_easy.acc_stderr": 0.0625},
    }
    table = eval_table(results).splitlines()
    assert table[0] == "| metric | teacher | untrained student | student |"
    assert table[2] == "| heldout_perplexity | 30.5 | 3.9e+09 | 61 |"  # held-out rows first
    assert table[3] == "| mc.arc_easy.acc | 0.5 ± 0.1 | 0.25 | 0.375 ± 0.0625 |"
    assert len(table) == 4  # no separate *_stderr rows
    text = comparison(results, "heldout_perplexity")
    assert "vs the teacher: 61 against 30.5 (ratio 2)" in text
    assert "vs the untrained student: 61 against 3.9e+09 (ratio 1.56e-08)" in text


def test_model_card_licence_and_stage_keys(tmp_path):
    from dskd.store.artifacts import write_artifact
    from tasks.model_card import read_license, render_card, stage_keys, teacher_facts

    model = tmp_path / "llama"
    model.mkdir()
    (model / "config.json").write_text('{"_name_or_path": "meta-llama/Meta-Llama-3-8B-Instruct"}')
    assert read_license(model) == "unknown"
    (model / "README.md").write_text("---\nlicense: llama3\nlanguage: [en]\n---\n# Llama 3\n")
    facts = teacher_facts({"path": str(model)}, model)
    assert facts == {
        "id": "meta-llama/Meta-Llama-3-8B-Instruct",
        "license": "llama3",
        "path": str(model),
        "source": "teacher.path",
    }
    assert teacher_facts({"path": None, "gguf_package": "p", "gguf_file": "f.gguf"}, model)["license"] == "apache-2.0"
    # teacher <- annotate <- train: the train key alone reaches all three manifests.
    for stage, key, up in [
        ("teacher", "t1", {}),
        ("annotate", "a1", {"teacher": "t1"}),
        ("train", "r1", {"annotate": "a1"}),
    ]:
        with write_artifact(tmp_path, stage, key, {"x": 1}, up) as (out, _):
            (out / "f").write_text("1")
    assert stage_keys(tmp_path, {"train": "r1", "evaluate:kd:0": "e1"}) == {
        "teacher": "t1",
        "annotate": "a1",
        "train": "r1",
        "evaluate": "e1",
    }
    card = render_card(
        {
            "model_name": "m",
            "teacher": facts,
            "corpus": {"source": "boolq", "content_hash": "abc123", "license": "cc-by-sa-3.0"},
            "keys": {"train": "r1"},
            "config": {"train": {"lr": 5e-5}},
            "train": {"steps": 4, "tokens": 256.0, "seconds": 1.5, "layers": [0, 1]},
            "results": {"student": {"heldout_perplexity": 9.0}},
            "samples": {
                "teacher": [{"prompt": "The capital of France is", "continuation": " Paris."}],
                "student": [{"prompt": "The capital of France is", "continuation": " a | b\nc"}],
            },
            "metric": "heldout_perplexity",
            "run_id": "run",
            "git_commit": "c0ffee",
        }
    )
    front = card.split("---\n")[1]
    assert "license: llama3\nbase_model: meta-llama/Meta-Llama-3-8B-Instruct\n" in front
    assert "| train | `r1` |" in card and "content hash `abc123`" in card and "4 optimizer steps, 256 training" in card
    assert "lr: 5.0e-05" in card and "- training corpus: cc-by-sa-3.0" in card
    # Samples: the prompt once (teacher row), pipes escaped and newlines folded so the table stays a table.
    assert "| The capital of France is | teacher |  Paris. |\n|  | student |  a \\| b c |" in card
