"""The fused T = 1 CE + KD (dskd/train/fused_loss.py) against the reference losses: values and gradients."""

from __future__ import annotations

import pytest
import torch

from dskd.train.fused_loss import ce_and_kd_t1
from dskd.train.losses import ce_loss, kd_loss, sampled_kd_loss


def _case(n: int, v: int, k: int, seed: int, sampled: bool, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    student = (torch.randn(n, v, generator=g, dtype=dtype) * 3).requires_grad_(True)
    teacher_full = torch.randn(n, v, generator=g, dtype=torch.float64) * 3
    lse = torch.logsumexp(teacher_full, -1)
    if sampled:
        ids = torch.multinomial(teacher_full.softmax(-1), k, replacement=True, generator=g)
    else:
        ids = teacher_full.topk(k, -1).indices
    targets = torch.randint(0, v, (n,), generator=g)
    return student, teacher_full.gather(-1, ids), ids, lse, targets


def _reference(student, t_logits, ids, lse, targets, alpha, sampled, ce_weight):
    kd = (sampled_kd_loss if sampled else kd_loss)(student, t_logits, ids, lse, temperature=1.0, alpha=alpha)
    ce = ce_loss(student, targets)
    return ce, kd, ce_weight * ce + kd


@pytest.mark.parametrize(
    ("v", "k", "sampled"),
    [(50, 5, False), (50, 50, False), (50, 8, True), (7, 7, True)],
    ids=["topk", "k=V (no rest cell)", "sampled", "sampled, repeats"],
)
def test_values_and_gradient_match_the_reference(v, k, sampled):
    for ce_weight, alpha in ((1.0, 0.7), (0.0, 1.0), (0.5, 2.0)):
        student, t_logits, ids, lse, targets = _case(6, v, k, seed=k, sampled=sampled)
        ce, kd, total = _reference(student, t_logits, ids, lse, targets, alpha, sampled, ce_weight)
        (grad_ref,) = torch.autograd.grad(total, student)
        f_ce, f_kd = ce_and_kd_t1(student, targets, t_logits, ids, lse, alpha=alpha, sampled=sampled)
        (grad,) = torch.autograd.grad(ce_weight * f_ce + f_kd, student)
        torch.testing.assert_close(f_ce.double(), ce.double(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(f_kd.double(), kd.double(), rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(grad, grad_ref, rtol=1e-5, atol=1e-8)


def test_hand_computed_two_token_vocabulary():
    """V = 2, k = 1: student logits (0, 0) -> q = (1/2, 1/2); teacher p = (0.8, 0.2) kept id 0, target id 1.
    CE = ln 2; KD = 0.8 ln(0.8/0.5) + 0.2 ln(0.2/0.5) (the rest cell is the other id); dCE/dz = (1/2, −1/2);
    dKD/dz = q − p = (−0.3, 0.3)."""
    student = torch.zeros(1, 2, dtype=torch.float64, requires_grad=True)
    t_logits = torch.log(torch.tensor([[0.8]], dtype=torch.float64))
    ce, kd = ce_and_kd_t1(student, torch.tensor([1]), t_logits, torch.tensor([[0]]), torch.zeros(1), alpha=1.0)
    assert float(ce.detach()) == pytest.approx(0.6931471805599453)
    assert float(kd.detach()) == pytest.approx(0.8 * 0.47000362924573563 + 0.2 * -0.916290731874155)
    (ce + kd).backward()
    torch.testing.assert_close(student.grad, torch.tensor([[0.5 - 0.3, -0.5 + 0.3]], dtype=torch.float64))


def test_all_mass_on_the_kept_ids_stays_finite():
    """A student that puts everything on the top-k (outside exp underflows to 0) gets a large, finite rest term
    and a finite gradient, as the reference's logsumexp form does."""
    student = torch.full((2, 10), -200.0)
    student[:, :3] = 50.0
    student.requires_grad_(True)
    t_logits = torch.log(torch.tensor([[0.5, 0.2, 0.1]] * 2))
    ids = torch.tensor([[0, 1, 2]] * 2)
    ce, kd = ce_and_kd_t1(student, torch.tensor([0, 5]), t_logits, ids, torch.zeros(2), alpha=0.7)
    (ce + kd).backward()
    assert torch.isfinite(kd) and float(kd.detach()) > 10
    assert torch.isfinite(student.grad).all()


def test_bf16_logits_get_a_bf16_gradient_close_to_float32():
    student, t_logits, ids, lse, targets = _case(8, 300, 20, seed=3, sampled=False, dtype=torch.float32)
    ce32, kd32 = ce_and_kd_t1(student, targets, t_logits, ids, lse, alpha=0.7)
    (g32,) = torch.autograd.grad(ce32 + kd32, student)
    s16 = student.detach().bfloat16().requires_grad_(True)
    ce16, kd16 = ce_and_kd_t1(s16, targets, t_logits, ids, lse, alpha=0.7)
    (g16,) = torch.autograd.grad(ce16 + kd16, s16)
    assert g16.dtype == torch.bfloat16
    torch.testing.assert_close(g16.float(), g32, rtol=0.05, atol=2e-3)
