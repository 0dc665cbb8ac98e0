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


def test_ce_weight_scales_only_the_corpus_term(student):
    """train.ce_weight: total = w·CE + KD (+ λ·sense) in kd/dskd; the ce arm ignores it (its loss is CE alone)."""
    batch, senses = make_batch(student.config.vocab_size, 64, 4)
    kd = compute_losses(student, batch, senses, {**CFG, "loss": "kd"}, 2.0)
    kd0 = compute_losses(student, batch, senses, {**CFG, "loss": "kd", "ce_weight": 0.0}, 2.0)
    full = compute_losses(student, batch, senses, {**CFG, "ce_weight": 0.25}, 2.0)
    ce = compute_losses(student, batch, senses, {**CFG, "loss": "ce", "ce_weight": 0.0}, 2.0)
    assert torch.isclose(kd0["total"], kd["kd"])
    assert torch.isclose(full["total"], 0.25 * full["ce"] + full["kd"] + full["sense"])
    assert torch.isclose(ce["total"], ce["ce"]) and float(ce["ce"]) > 0


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


class _Ctx:
    """The WorkerContext of one local process (the loop's protocol; Ray supplies the real one)."""

    rank, world_size, device = 0, 1, "cpu"

    def __init__(self) -> None:
        self.logged: list[dict] = []

    def prepare_model(self, model):
        return model

    def report(self, metrics, checkpoint_dir) -> None:
        pass

    def checkpoint_dir(self):
        return None

    def log_metrics(self, metrics, step) -> None:
        self.logged.append(metrics)

    def scratch_dir(self):
        raise AssertionError("no checkpoint expected")


def _one_step(tiny_teacher_dir, micro_batches, **train):
    from transformers import get_constant_schedule

    from dskd.train.loop import TrainJob, TrainStep

    torch.manual_seed(0)
    model = build_student(tiny_teacher_dir, n_layers=2, n_trainable="all")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    cfg = {**CFG, "loss": "kd", "checkpoint_every": 10**9, "max_grad_norm": None, **train}
    job = TrainJob("", "", "", "", 2.0, {}, cfg, 3)
    ctx = _Ctx()
    TrainStep(model, opt, get_constant_schedule(opt), None, None, cfg, job, ctx, 10, [])(micro_batches, 0, 0)
    return model, ctx.logged[0]


def test_accumulating_two_micro_batches_equals_one_double_batch(tiny_teacher_dir):
    (whole, _), (a, _), (b, _) = (make_batch(49152, 64, 4, seed=s) for s in (0, 0, 1))
    halves = [a, b]
    double = collate_pair(a, b)
    accumulated, m1 = _one_step(tiny_teacher_dir, halves)
    single, m2 = _one_step(tiny_teacher_dir, [double])
    assert m1["tokens"] == m2["tokens"] == 40
    assert m1["loss_total"] == pytest.approx(m2["loss_total"], rel=1e-5)
    # Gradients, not weights: AdamW's first step is ~lr·sign(g), which amplifies rounding where g ≈ 0.
    pairs = zip(accumulated.named_parameters(), single.named_parameters(), strict=True)
    grads = [(n, x.grad, y.grad) for (n, x), (_, y) in pairs]
    assert len([g for g in grads if g[1] is not None]) > 10
    for n, x, y in grads:
        if x is not None:
            assert torch.allclose(x, y, rtol=1e-4, atol=1e-8), n


def collate_pair(a, b):
    """One batch holding the rows of two (sense rows re-indexed to the second half)."""
    from dskd.train.data import Batch

    cat = {k: torch.cat([getattr(a, k), getattr(b, k)]) for k in a.__dict__}
    cat["sense_batch"] = torch.cat([a.sense_batch, b.sense_batch + a.input_ids.shape[0]])
    return Batch(**cat)


def test_clipping_bounds_the_gradient_norm_and_reports_it(tiny_teacher_dir):
    batch, _ = make_batch(49152, 64, 4)
    model, metrics = _one_step(tiny_teacher_dir, [batch], max_grad_norm=0.01)
    after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
    assert metrics["grad_norm"] > 0.01  # the norm before clipping
    assert float(after) == pytest.approx(0.01, rel=1e-3)


def test_non_finite_gradient_skips_the_step_then_fails_the_run(tiny_teacher_dir):
    """A NaN batch (teacher lse NaN -> NaN loss and gradient) leaves the weights as they were and is counted; more
    than MAX_NONFINITE_STEPS of them fail the run with a one-line error instead of training on NaN."""
    from transformers import get_constant_schedule

    from dskd.train.loop import MAX_NONFINITE_STEPS, TrainJob, TrainStep

    batch, _ = make_batch(49152, 64, 4)
    batch.lse[:] = float("nan")
    torch.manual_seed(0)
    model = build_student(tiny_teacher_dir, n_layers=2, n_trainable="all")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    cfg = {**CFG, "loss": "kd", "checkpoint_every": 10**9, "max_grad_norm": 1.0}
    ctx = _Ctx()
    step = TrainStep(
        model, opt, get_constant_schedule(opt), None, None, cfg, TrainJob("", "", "", "", 2.0, {}, cfg, 3), ctx, 10, []
    )
    for i in range(MAX_NONFINITE_STEPS):
        assert step([batch], i, 0) == i + 1
    assert [m["skipped_steps"] for m in ctx.logged] == [1.0, 2.0, 3.0]
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    with pytest.raises(FloatingPointError, match=r"training diverged: 4 optimizer steps .* lower train.lr"):
        step([batch], MAX_NONFINITE_STEPS, 0)


def test_a_checkpoint_with_non_finite_weights_is_refused_in_one_line(tiny_teacher_dir, tmp_path: Path):
    model = build_student(tiny_teacher_dir, n_layers=2, n_trainable=1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with torch.no_grad():
        next(p for p in model.parameters() if p.requires_grad).fill_(float("nan"))
    _save_checkpoint(tmp_path / "ck", model, opt, None, step=40, epoch=0)
    fresh = build_student(tiny_teacher_dir, n_layers=2, n_trainable=1)
    opt2 = torch.optim.AdamW([p for p in fresh.parameters() if p.requires_grad], lr=1e-3)
    with pytest.raises(ValueError, match=r"holds non-finite weights .* diverged; delete the run's checkpoint") as e:
        _load_checkpoint(tmp_path / "ck", fresh, opt2, None)
    assert "\n" not in str(e.value)


class _ReportingCtx(_Ctx):
    """A context that records what the loop reports to the runtime, as rank ``rank``."""

    def __init__(self, scratch: Path, rank: int = 0) -> None:
        super().__init__()
        self.rank, self.scratch = rank, scratch
        self.reports: list[tuple[int, bool]] = []

    def report(self, metrics, checkpoint_dir) -> None:
        self.reports.append((int(metrics["step"]), checkpoint_dir is not None))

    def scratch_dir(self):
        return self.scratch


@pytest.mark.parametrize("rank", [0, 1])
def test_the_runtime_hears_only_checkpoint_steps_metrics_every_step(tiny_teacher_dir, tmp_path: Path, rank: int):
    """Ray Train's report is a barrier behind a one-slot queue drained every 2 s: a report per step floored every
    step at ~2 s. Every rank reports at the checkpoint steps alone (rank 0 with the checkpoint); metrics go out
    through log_metrics every step."""
    from transformers import get_constant_schedule

    from dskd.train.loop import TrainJob, TrainStep

    batch, _ = make_batch(49152, 64, 4)
    model = build_student(tiny_teacher_dir, n_layers=2, n_trainable=1)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    cfg = {**CFG, "loss": "kd", "checkpoint_every": 2, "max_grad_norm": 1.0}
    ctx = _ReportingCtx(tmp_path, rank)
    step_fn = TrainStep(
        model, opt, get_constant_schedule(opt), None, None, cfg, TrainJob("", "", "", "", 2.0, {}, cfg, 3), ctx, 5, []
    )
    step = 0
    for _ in range(5):
        step = step_fn([batch], step, 0)
    assert ctx.reports == [(2, rank == 0), (4, rank == 0)]  # step 5 is the last: _finish reports the final model
    assert len(ctx.logged) == (5 if rank == 0 else 0)  # rank 0 logs for the run
    assert sorted(p.name for p in tmp_path.iterdir()) == (["ckpt-2", "ckpt-4"] if rank == 0 else [])
