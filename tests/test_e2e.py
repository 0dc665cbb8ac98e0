"""End to end: the real Prefect flow (ephemeral), real Ray Train (2 local workers), real MLflow (SQLite), on a
tiny config: every stage's artifact, a registered model version that loads and generates, and a fully cached rerun."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from dskd.store.artifacts import read_manifest

pytestmark = pytest.mark.e2e

STAGES = [
    "teacher",
    "lexicon",
    "annotate",
    "teacher_cache",
    "sense_index",
    "train",
    "baselines",
    "evaluate",
    "register",
]


def tiny_overrides(teacher_dir: Path, home: Path) -> list[str]:
    return [
        f"home={home}",
        f"teacher.path={teacher_dir}",
        "corpus.n_train_seqs=16",
        "corpus.n_heldout_seqs=4",
        "corpus.seq_len=32",
        "corpus.shard_seqs=8",
        "train.batch_size=2",
        "train.num_workers=2",
        "train.checkpoint_every=2",
        "train.epochs=1",
        "eval.tasks=[arc_easy, mmlu_anatomy]",
        "eval.limit=4",
        "eval.num_fewshot=1",
        "eval.task_overrides={mmlu_anatomy: {limit: 3, num_fewshot: 0}}",
        "eval.probe_items=6",
        "student.n_layers=2",
        "student.n_trainable_layers=1",
    ]


def stored_fanout_overrides(teacher_dir: Path, home: Path, store_uri: str) -> list[str]:
    """The tiny config publishing to a shared store, with two Ray teacher replicas for the teacher pass (same
    artifact as in-process: test_teacher_fanout)."""
    return tiny_overrides(teacher_dir, home) + [f"storage.uri={store_uri}", "cache.num_workers=2"]


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory) -> str:
    """A shared artifact store (file:// here; s3:// in test_artifact_store) every run below publishes to."""
    return tmp_path_factory.mktemp("e2e_store").as_uri()


@pytest.fixture(scope="module")
def flow_runs(tiny_teacher_dir, tmp_path_factory, store_uri):
    from flows.dskd_pipeline import dskd_pipeline

    home = tmp_path_factory.mktemp("e2e_home")
    overrides = stored_fanout_overrides(tiny_teacher_dir, home, store_uri)
    first = dskd_pipeline(None, overrides)
    second = dskd_pipeline(None, overrides)
    return home, first, second


def test_another_machine_fetches_every_artifact_from_the_store(flow_runs, tiny_teacher_dir, tmp_path, store_uri):
    """A fresh DSKD_HOME with the same storage.uri (another node, a new CI runner) recomputes nothing."""
    from flows.dskd_pipeline import dskd_pipeline

    home, first, _ = flow_runs
    # The store lost one artifact (pruned, or configured after it was made): a rerun on the first machine
    # republishes it from its local copy without recomputing anything.
    shutil.rmtree(Path(store_uri.removeprefix("file://"), "artifacts", "lexicon"))
    again = dskd_pipeline(None, stored_fanout_overrides(tiny_teacher_dir, home, store_uri))
    assert all(row["cached"] for row in again["stages"]) and again["keys"] == first["keys"]
    other = dskd_pipeline(None, tiny_overrides(tiny_teacher_dir, tmp_path / "home2") + [f"storage.uri={store_uri}"])
    assert other["keys"] == first["keys"]
    assert all(row.get("fetched") for row in other["stages"]), [r["stage"] for r in other["stages"]]
    for mine, theirs in zip(first["stages"], other["stages"], strict=True):
        assert read_manifest(Path(theirs["path"]))["files"] == read_manifest(Path(mine["path"]))["files"]
        assert Path(theirs["path"]).is_relative_to(tmp_path / "home2")
    cache = read_manifest(Path(first["stages"][3]["path"]))
    execution = {"workers": 2, "shards": 2, "nodes": 1, "reservoir_spill_runs": 0, "compute_dtypes": ["float32"]}
    assert cache["execution"] == execution
    # Ray Train checkpoints went to the store too (storage.uri/ray_results), not to DSKD_HOME.
    assert list(Path(store_uri.removeprefix("file://"), "ray_results").glob("dskd-*"))


def test_every_stage_writes_a_complete_artifact(flow_runs):
    home, first, _ = flow_runs
    assert [row["stage"] for row in first["stages"]] == STAGES
    for row in first["stages"]:
        assert not row["cached"], f"{row['stage']} should be computed on a fresh home"
        manifest = read_manifest(Path(row["path"]))
        assert manifest["stage"] == row["stage"]
        assert manifest["files"], f"{row['stage']} wrote no files"
        assert Path(row["path"]).parent.parent == home / "artifacts"


def test_stage_contents(flow_runs):
    _, first, _ = flow_runs
    paths = {row["stage"]: Path(row["path"]) for row in first["stages"]}
    annotate = read_manifest(paths["annotate"])
    assert annotate["rows"] == {"train": 16, "heldout": 4}
    cache = read_manifest(paths["teacher_cache"])
    assert cache["rows"]["sequences"] == 16 and cache["rows"]["reservoir_tokens"] > 0
    assert len(list((paths["teacher_cache"] / "shards").glob("*.parquet"))) == 2
    # Hidden states are transient: never in the artifact, and their scratch copy is gone once the sense index is.
    assert cache["metrics"]["persistent_hidden_bytes"] == 0 and cache["metrics"]["scratch_hidden_bytes"] > 0
    assert not [f for f in cache["files"] if f["path"].startswith("hidden/")]
    assert not (paths["teacher_cache"].parents[2] / "scratch" / "teacher_cache" / paths["teacher_cache"].name).exists()
    index = read_manifest(paths["sense_index"])
    assert index["metrics"]["sense_rows"] > 0 and index["metrics"]["candidate_entries"] > 0
    assert (paths["sense_index"] / "senses.safetensors").is_file()
    assert (paths["sense_index"] / "senses.faiss").is_file()
    history = json.loads((paths["train"] / "history.json").read_text())
    # 16 sequences / 2 workers / batch 2 = 4 steps, each with every loss term finite.
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    assert all(h["loss_kd"] >= 0 and h["loss_sense"] >= 0 and h["loss_ce"] > 0 for h in history)
    assert (paths["train"] / "student" / "model.safetensors").is_file()
    metrics = json.loads((paths["evaluate"] / "metrics.json").read_text())
    assert set(metrics) == {"teacher", "student_init", "student"}
    for who in metrics.values():
        assert who["heldout_tokens"] == 4 * 31
        assert who["mc.arc_easy.n"] == 4 and who["mc.mmlu_anatomy.n"] == 3
        assert who["mc.arc_easy.n_shot"] == 1 and who["mc.mmlu_anatomy.n_shot"] == 0
        assert 0.0 <= who["mc.arc_easy.acc"] <= 1.0 and who["mc.arc_easy.acc_stderr"] >= 0
        assert who["probe.syn_vs_antonym.n"] == who["probe.syn_vs_unrelated.n"] == 6  # probe_items per kind
    samples = json.loads((paths["evaluate"] / "samples.json").read_text())
    prompts = ["The capital of France is", "The largest planet in the solar system is"]
    assert set(samples) == {"teacher", "student_init", "student"}
    assert all([s["prompt"] for s in who] == prompts for who in samples.values())
    # A random tiny model still emits its 24 tokens (no EOS among them is likely, but text of some length is).
    assert all(len(s["continuation"]) > 0 for who in samples.values() for s in who)


def test_registered_version_loads_and_generates(flow_runs, tiny_teacher_dir):
    """What a user does after `make run`: pipeline and pyfunc loads of the champion generate; the artifact carries
    a model card naming the teacher and the corpus hash, and its model/ folder is a plain HF dir."""
    import mlflow
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tasks.student_model import pickled_files, using_tracking_uri

    home, first, _ = flow_runs
    reg = json.loads((Path(first["stages"][-1]["path"]) / "registration.json").read_text())
    assert reg["version"] == 1 and reg["promoted"] and set(reg["aliases"]) == {"challenger", "champion"}
    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    version = client.get_model_version_by_alias("dskd-student", "champion")
    assert version.tags["dskd.train_key"] == first["keys"]["train"]
    with using_tracking_uri(uri):
        pipe = mlflow.transformers.load_model("models:/dskd-student@champion")
        predictions = mlflow.pyfunc.load_model("models:/dskd-student@champion").predict(
            ["Hello"], params={"max_new_tokens": 3}
        )
        local = Path(mlflow.artifacts.download_artifacts("models:/dskd-student@champion", dst_path=str(home / "dl")))
    assert len(pipe("Hello", max_new_tokens=3)[0]["generated_text"]) > len("Hello")
    assert isinstance(predictions[0], str) and predictions[0]
    card = (local / "README.md").read_text()
    annotate = read_manifest(Path(first["stages"][2]["path"]))
    assert card.startswith("---\nlicense: ") and annotate["config"]["corpus"]["content_hash"] in card
    assert str(tiny_teacher_dir.resolve()) in card and first["keys"]["sense_index"] in card
    assert pickled_files(local) == []
    model = AutoModelForCausalLM.from_pretrained(local / "model")
    tokenizer = AutoTokenizer.from_pretrained(local / "model")
    out = model.generate(tokenizer("Hello", return_tensors="pt").input_ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == len(tokenizer("Hello").input_ids) + 4


def test_second_run_is_fully_cached(flow_runs):
    _, first, second = flow_runs
    assert all(row["cached"] for row in second["stages"]), [r["stage"] for r in second["stages"] if not r["cached"]]
    assert second["keys"] == first["keys"]


def test_mlflow_parent_and_nested_runs(flow_runs):
    import mlflow

    home, first, second = flow_runs
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")
    nested = client.search_runs(
        [client.get_experiment_by_name("dskd").experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{first['mlflow_run_id']}'",
    )
    assert sorted(r.data.tags["dskd.stage"] for r in nested) == sorted(STAGES)
    assert all(r.info.status == "FINISHED" for r in nested)
    parent2 = client.get_run(second["mlflow_run_id"])
    assert all(parent2.data.tags[f"dskd.{s}.status"] == "cached" for s in STAGES)


def test_changed_corpus_file_recomputes_only_downstream(flow_runs, tiny_teacher_dir, tmp_path):
    """Scheduled-retraining semantics: an edited corpus file changes the content hash, so annotate and every
    stage after it recompute while the teacher and the lexicon stay cached; a new model version is registered."""
    from dskd.data.corpus import iter_documents
    from flows.dskd_pipeline import dskd_pipeline

    home, _, _ = flow_runs
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    docs = list(iter_documents("boolq"))[:80]
    for i in range(2):
        (corpus / f"part{i}.txt").write_text("\n\n".join(docs[i * 40 : (i + 1) * 40]))
    overrides = tiny_overrides(tiny_teacher_dir, home) + [
        f"corpus.source={corpus}",
        "corpus.n_train_seqs=8",
        "corpus.n_heldout_seqs=2",
        "train.num_workers=1",
        "train.batch_size=4",
        "eval.tasks=[]",
        "eval.probe_items=0",
    ]
    before = dskd_pipeline(None, overrides)
    (corpus / "part1.txt").write_text((corpus / "part1.txt").read_text() + "\n\nA new paragraph arrived this week.")
    after = dskd_pipeline(None, overrides)
    status = {row["stage"]: row["cached"] for row in after["stages"]}
    assert status == {
        "teacher": True,
        "lexicon": True,
        "annotate": False,
        "teacher_cache": False,
        "sense_index": False,
        "train": False,
        "baselines": False,
        "evaluate": False,
        "register": False,
    }
    assert after["keys"]["annotate"] != before["keys"]["annotate"]
    versions = [json.loads(p.read_text())["version"] for p in home.glob("artifacts/register/*/registration.json")]
    assert sorted(versions) == [1, 2, 3]
