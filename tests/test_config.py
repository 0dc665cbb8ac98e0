"""Config precedence (defaults < YAML < env < CLI) and one-line errors naming the bad key."""

from __future__ import annotations

from pathlib import Path

import pytest

from dskd.config import ConfigError, PipelineConfig, load_config


def test_defaults_are_the_embedded_default():
    cfg = load_config(environ={})
    assert cfg.teacher.path is None and cfg.corpus.source == "boolq"
    assert (cfg.train.alpha, cfg.senses.kappa, cfg.senses.max_related) == (0.7, 5, 25)  # the paper's
    # Our student construction and KD signal (configs/paper.yaml keeps the paper's first-L / top-2 / T=2).
    st = cfg.student
    assert (st.layers, st.n_trainable_layers, cfg.cache.kd_temperature) == ("block_influence", "all", 1.0)
    assert cfg.train.max_grad_norm == 1.0 and not cfg.student.train_embeddings
    # The YAML default and the built-in defaults agree on what decides the student.
    yml = load_config(Path(__file__).resolve().parents[1] / "configs" / "default.yaml", environ={})
    assert yml.student == cfg.student and yml.cache == cfg.cache


def test_precedence_yaml_env_cli(tmp_path):
    yml = tmp_path / "c.yaml"
    yml.write_text("train:\n  lr: 1.0e-3\n  epochs: 5\ncorpus:\n  seq_len: 64\n")
    env = {"DSKD_TRAIN__LR": "2e-3", "DSKD_CORPUS__SEQ_LEN": "32"}
    cfg = load_config(yml, ["train.lr=3e-3"], environ=env)
    assert cfg.train.lr == 3e-3  # CLI beats env beats YAML
    assert cfg.corpus.seq_len == 32  # env beats YAML
    assert cfg.train.epochs == 5  # YAML beats default


def test_dskd_home_env_sets_home():
    assert load_config(environ={"DSKD_HOME": "/x/y"}).home == "/x/y"


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ("train.lrr=1", "unknown config key 'train.lrr'"),
        ("train.loss=foo", "invalid config value for 'train.loss'"),
        ("nonsense", "not key=value"),
    ],
)
def test_bad_input_gives_one_line_error(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config(overrides=[override], environ={})
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_missing_file_error(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_section_digest_isolates_stages():
    a, b = PipelineConfig(), PipelineConfig()
    b.train.lr = 1.0
    assert a.train.digest() != b.train.digest() and a.cache.digest() == b.cache.digest()
    # Where a run executes and stores things does not change the config hash; what it trains does.
    moved = load_config(None, ["home=/elsewhere", "storage.uri=s3://b/p", "cache.num_workers=4"], environ={})
    assert moved.digest() == load_config(None, [], environ={}).digest()
    assert load_config(None, ["train.seed=7"], environ={}).digest() != moved.digest()


def test_trainable_layers_cannot_exceed_layers():
    with pytest.raises(ConfigError, match="n_trainable_layers"):
        load_config(overrides=["student.n_layers=2", "student.n_trainable_layers=3"], environ={})


def test_shipped_yaml_is_valid():
    cfg = load_config("configs/default.yaml", environ={})
    assert cfg.student.n_layers == 15 and cfg.train.loss == "dskd"


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: 1e-4\n  epochs: [2\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad, environ={})
    assert str(err.value).startswith(f"{bad}:4:1: YAML syntax error") and "\n" not in str(err.value)
    bad.write_bytes(b"train:\n  lr: \xff\n")
    with pytest.raises(ConfigError, match="is not UTF-8 text"):
        load_config(bad, environ={})
