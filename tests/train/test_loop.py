"""Training loop pieces on a tiny student: loss modes, resume from a safetensors checkpoint, frozen layers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dskd.train.data import TrainRow, collate
from dskd.train.loop import _load_checkpoint, _save_checkpoint, compute_losses
from dskd.train.student import build_student

CFG = {"loss": "dskd", "alpha": 0.7, "lam": 1.0, "beta_p": 1.0, "beta_n": 1.0, "margin": 1.0}


def make_batch(vocab: int, dim: int, n_senses: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(2):
        rows.append(
            TrainRow(
                input_ids=rng.integers(0, vocab, 10),
                topk_ids=rng.integers(0, vocab, (10, 4)),
                topk_logits=rng.normal(size=(10, 4)).astype(np.float32),
                lse=np.full(10, 12.0, np.float32),
                sense_positions=np.array([2, 5]),
                full=np.array([True, False]),
                pos_rows=np.array([[0, 1, -1], [2, -1, -1]]),
                neg_rows=np.array([[3, -1, -1], [-1, -1, -1]]),
            )
        )
    senses = torch.from_numpy(rng.normal(size=(n_senses, dim)).astype(np.float32))
    return collate(rows), senses


@pytest.fixture(scope="module")
def student(tiny_teacher_dir):
    return build_student(tiny_teacher_dir, n_layers=2, n_trainable=1)


def test_only_top_layers_train(student):
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("model.layers.1.") for n in trainable)
    assert len(student.model.layers) == 2


def test_loss_modes(student):
    batch, senses = make_batch(student.config.vocab_size, 64, 4)
    ce = compute_losses(student, batch, senses, {**CFG, "loss": "ce"}, 2.0)
    kd = compute_losses(student, batch, senses, {**CFG, "loss": "kd"}, 2.0)
    full = compute_losses(student, batch, senses, CFG, 2.0)
    assert float(ce["kd"]) == 0 and float(ce["sense"]) == 0
    assert torch.isclose(ce["total"], ce["ce"])
    assert float(kd["kd"]) > 0 and torch.isclose(kd["total"], kd["ce"] + kd["kd"])
    assert float(full["sense"]) > 0
    assert torch.isclose(full["total"], full["ce"] + full["kd"] + full["sense"])
    lam2 = compute_losses(student, batch, senses, {**CFG, "lam": 2.0}, 2.0)
    assert torch.isclose(lam2["total"] - full["total"], full["sense"], rtol=1e-4)


def test_sense_gradient_reaches_only_trainable_layers(student):
    batch, senses = make_batch(student.config.vocab_size, 64, 4)
    student.zero_grad()
    compute_losses(student, batch, senses, CFG, 2.0)["sense"].backward()
    grads = {n: p.grad for n, p in student.named_parameters() if p.grad is not None}
    assert grads and all(n.startswith("model.layers.1.") for n in grads)


def test_checkpoint_round_trip_is_exact(student, tmp_path: Path, tiny_teacher_dir):
    batch, senses = make_batch(student.config.vocab_size, 64, 4)
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    for _ in range(2):
        opt.zero_grad()
        compute_losses(student, batch, senses, CFG, 2.0)["total"].backward()
        opt.step()
    _save_checkpoint(tmp_path / "ck", student, opt, None, step=2, epoch=0)
    assert {p.name for p in (tmp_path / "ck").iterdir()} == {
        "trainable.safetensors",
        "optimizer.safetensors",
        "state.json",
    }
    fresh = build_student(tiny_teacher_dir, n_layers=2, n_trainable=1)
    opt2 = torch.optim.AdamW([p for p in fresh.parameters() if p.requires_grad], lr=1e-3)
    assert _load_checkpoint(tmp_path / "ck", fresh, opt2, None) == (2, 0)
    for (n, a), (_, b) in zip(student.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(a, b), n
    # Same next step from both: optimizer moments were restored too.
    for model, optim in ((student, opt), (fresh, opt2)):
        optim.zero_grad()
        compute_losses(model, batch, senses, CFG, 2.0)["total"].backward()
        optim.step()
    for (n, a), (_, b) in zip(student.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), n
