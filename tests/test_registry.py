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
