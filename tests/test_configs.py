"""Every shipped config loads through PipelineConfig; the real-teacher configs carry the paper's settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from dskd.config import load_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
# The paper (docs/method.md §5): senses k, λ, per-worker lr (× world size in the loop).
PAPER = {"llama3-8b-instruct.yaml": (10, 1.0, 5e-5), "mistral-7b-instruct.yaml": (5, 1.5, 2e-5)}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads(path):
    cfg = load_config(path, environ={})
    assert cfg.registry.model_name


def test_real_teacher_configs_exist():
    assert set(PAPER) <= {p.name for p in CONFIGS}


@pytest.mark.parametrize("name", sorted(PAPER))
def test_real_teacher_config_matches_the_paper(name):
    path = Path(__file__).parents[1] / "configs" / name
    cfg = load_config(path, environ={})
    k, lam, lr = PAPER[name]
    assert (cfg.senses.k, cfg.train.lam, cfg.train.lr) == (k, lam, lr)
    assert cfg.train.epochs == 2 and cfg.train.loss == "dskd" and cfg.train.batch_size == 1
    assert cfg.teacher.dtype == "bfloat16" and cfg.teacher.path
    assert cfg.train.use_gpu and cfg.train.precision == "bf16" and cfg.train.max_grad_norm is None
    assert cfg.storage.uri and "://" in cfg.storage.uri
    # The paper's student: the first 16 of 32 layers, the top 2 trainable, nothing else unfrozen; KD at T = 2.
    s = cfg.student
    assert (s.n_layers, s.layers, s.n_trainable_layers) == (16, "first", 2)
    assert not (s.train_embeddings or s.train_lm_head or s.train_final_norm)
    assert cfg.cache.kd_temperature == 2.0 and cfg.cache.kd_mode == "topk"
    assert (cfg.train.alpha, cfg.train.weight_decay, cfg.train.warmup_frac) == (0.7, 1e-3, 0.1)
    # Headed by its own launch command.
    first = path.read_text().splitlines()[:4]
    assert any(f"dskd run --config configs/{name}" in line for line in first), first
