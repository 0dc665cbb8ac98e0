"""Preflight: what the config and the teacher's config.json already tell is refused before any stage runs."""

from __future__ import annotations

import json

import pytest

from dskd.config import ConfigError, load_config
from dskd.preflight import check_resources, preflight, teacher_shape


def cfg_for(tiny_teacher_dir, tmp_path, *overrides):
    tiny = ["student.n_layers=2", "student.n_trainable_layers=1"]
    return load_config(None, [f"home={tmp_path}", f"teacher.path={tiny_teacher_dir}", *tiny, *overrides], environ={})


def test_teacher_shape_from_config_json(tiny_teacher_dir, tmp_path):
    shape = teacher_shape(cfg_for(tiny_teacher_dir, tmp_path))
    assert (shape.n_layers, shape.hidden_size, shape.vocab_size) == (4, 64, 49152)  # save_tiny_llama


def test_embedded_default_shape_from_the_gguf_header(tmp_path):
    """No teacher artifact yet: the GGUF header gives SmolLM2-135M's 30 layers x 576 without converting it."""
    shape = teacher_shape(load_config(None, [f"home={tmp_path}"], environ={}))
    assert (shape.n_layers, shape.hidden_size, shape.vocab_size) == (30, 576, 49152)
    assert shape.source.endswith(".gguf")


def test_a_valid_config_passes(tiny_teacher_dir, tmp_path):
    assert preflight(cfg_for(tiny_teacher_dir, tmp_path), environ={})["teacher"].n_layers == 4


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["student.n_layers=5"], "student.n_layers=5 exceeds the 4 layers"),
        (["student.hidden_size=32"], "set student.project_to_teacher=true"),
        (["cache.topk=60000"], "cache.topk=60000 exceeds"),
        (["train.threads_per_worker=2"], "4 CPUs, but the local Ray gets 2"),
        (["train.num_workers=3", "corpus.n_train_seqs=2"], "train.num_workers=3 exceeds corpus.n_train_seqs=2"),
        (["eval.tasks=[arc_easyy]"], "unknown harness task(s) arc_easyy"),
        (["eval.limit=-1"], "invalid config value for 'eval.limit'"),
        (["student.layers=[0, 9]", "student.n_layers=2"], "names layer 9 but the model has layers 0..3"),
        (["student.init_path=/nope"], "student.init_path"),
        (["registry.metric=perplexity"], "registry.metric 'perplexity' is not an eval metric"),
        (["lexicon.sources=[kaikki]"], "kaikki_path=None is not a file"),
    ],
)
def test_bad_settings_are_one_line_errors(tiny_teacher_dir, tmp_path, overrides, needle):
    with pytest.raises(ConfigError) as err:
        preflight(cfg_for(tiny_teacher_dir, tmp_path, *overrides))
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_corpus_too_small_for_the_sequences_asked(tiny_teacher_dir, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("x" * 1000)  # 1000 bytes < (16 + 4) x 64 tokens: can never fill them
    overrides = [f"corpus.source={corpus}", "corpus.n_train_seqs=16", "corpus.n_heldout_seqs=4", "corpus.seq_len=64"]
    with pytest.raises(ConfigError, match="holds 1,000 bytes, fewer than the 1,280 tokens"):
        preflight(cfg_for(tiny_teacher_dir, tmp_path, *overrides))
    (corpus / "b.txt").write_text("x" * 300)
    preflight(cfg_for(tiny_teacher_dir, tmp_path, *overrides))  # 1300 bytes: annotate decides


def test_remote_cluster_skips_local_cpu_check(tiny_teacher_dir, tmp_path):
    cfg = cfg_for(tiny_teacher_dir, tmp_path, "train.threads_per_worker=2")
    check_resources(cfg, environ={"RAY_ADDRESS": "10.0.0.1:6379"})  # the cluster's CPUs are its business


def test_unreachable_or_unwritable_storage(tiny_teacher_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    with pytest.raises(ConfigError, match="storage.uri .* cannot be reached"):
        preflight(cfg_for(tiny_teacher_dir, tmp_path, f"storage.uri={blocker.as_uri()}/store"))
    with pytest.raises(ConfigError, match="storage.uri 'nosuch://x' cannot be opened"):
        preflight(cfg_for(tiny_teacher_dir, tmp_path, "storage.uri=nosuch://x"))


def test_student_init_path_layers_and_vocab(tiny_teacher_dir, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    config = json.loads((tiny_teacher_dir / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    with pytest.raises(ConfigError, match="exceeds the 1 layers of student.init_path"):
        preflight(cfg_for(tiny_teacher_dir, tmp_path, f"student.init_path={other}"))
    (other / "config.json").write_text(json.dumps({**config, "vocab_size": 32000}))
    with pytest.raises(ConfigError, match="vocab 32000, the teacher 49152"):
        preflight(cfg_for(tiny_teacher_dir, tmp_path, f"student.init_path={other}"))
