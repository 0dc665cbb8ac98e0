"""Losses against hand-computed numbers and closed-form limits (method.md §4)."""

import math

import pytest
import torch
import torch.nn.functional as F

from dskd.train.losses import SenseProjection, ce_loss, dskd_total, kd_loss, sampled_kd_loss, sense_loss


def _topk_cache(teacher_logits: torch.Tensor, k: int, t: float):
    """What the teacher cache stores: top-k raw logits, their ids, logsumexp(z/T) over the full vocab."""
    vals, ids = teacher_logits.topk(k, dim=-1)
    return vals, ids, torch.logsumexp(teacher_logits / t, dim=-1)


# --- KD --------------------------------------------------------------------------------------------


def test_kd_full_vocab_by_hand():
    # V = 3, T = 2. Teacher z = [2 ln2, 0, 0] -> z/T = [ln2, 0, 0] -> p = [2, 1, 1] / 4 = [0.5, 0.25, 0.25].
    # Student z = 0 -> q = [1/3, 1/3, 1/3].
    # KL = 0.5 ln(0.5·3) + 2 · 0.25 ln(0.25·3) = 0.5 ln 1.5 + 0.5 ln 0.75 = 0.5 ln 1.125 = 0.0588915178.
    # L = alpha · T² · KL = 0.7 · 4 · 0.0588915178 = 0.1648962499.
    teacher = torch.tensor([[2 * math.log(2.0), 0.0, 0.0]])
    student = torch.zeros(1, 3)
    vals, ids, lse = _topk_cache(teacher, k=3, t=2.0)
    assert lse.item() == pytest.approx(math.log(4.0))
    got = kd_loss(student, vals, ids, lse, temperature=2.0, alpha=0.7)
    assert got.item() == pytest.approx(0.1648962499, rel=1e-6)


def test_kd_rest_bucket_by_hand():
    # V = 4, T = 1, alpha = 1. Teacher p = [0.4, 0.3, 0.2, 0.1] (z = ln p, so lse = ln 1 = 0);
    # student q = 0.25 each.
    # Top-2 ids {0, 1}: p_rest = 1 - 0.7 = 0.3, q_rest = 1 - 0.5 = 0.5.
    # KL = 0.4 ln(0.4/0.25) + 0.3 ln(0.3/0.25) + 0.3 ln(0.3/0.5)
    #    = 0.4 ln 1.6 + 0.3 ln 1.2 + 0.3 ln 0.6
    #    = 0.1880014517 + 0.0546964670 - 0.1532476871 = 0.0894502316.
    # (The full KL has 0.2 ln 0.8 + 0.1 ln 0.4 in place of the rest term: 0.1064402; the k+1 cell KL
    # is lower.)
    p = torch.tensor([[0.4, 0.3, 0.2, 0.1]])
    teacher = p.log()
    student = torch.zeros(1, 4)
    ids = torch.tensor([[1, 0]])  # order of the ids must not matter
    vals = teacher.gather(-1, ids)
    lse = torch.logsumexp(teacher, -1)
    got = kd_loss(student, vals, ids, lse, temperature=1.0, alpha=1.0)
    assert got.item() == pytest.approx(0.0894502316, rel=1e-5)
    full = kd_loss(student, teacher, torch.tensor([[0, 1, 2, 3]]), lse, temperature=1.0, alpha=1.0)
    assert full.item() == pytest.approx(0.1064402, rel=1e-5)
    assert got.item() < full.item()


def test_kd_identical_logits_is_zero_for_any_k():
    torch.manual_seed(0)
    z = torch.randn(6, 50) * 3
    for k in (1, 5, 50):
        vals, ids, lse = _topk_cache(z, k, t=2.0)
        assert kd_loss(z, vals, ids, lse).abs().item() < 1e-5


def test_kd_full_vocab_matches_reference_and_t_squared():
    # With k = V it must be the reference: alpha · T² · kl_div(log_softmax(zS/T), softmax(zT/T), batchmean).
    torch.manual_seed(1)
    zs, zt = torch.randn(5, 11), torch.randn(5, 11) * 2
    for t in (1.0, 2.0, 4.0):
        vals, ids, lse = _topk_cache(zt, 11, t)
        kl = F.kl_div(F.log_softmax(zs / t, -1), F.softmax(zt / t, -1), reduction="batchmean")
        got = kd_loss(zs, vals, ids, lse, temperature=t, alpha=1.0)
        assert got.item() == pytest.approx(t * t * kl.item(), rel=1e-5)
        assert kd_loss(zs, vals, ids, lse, temperature=t, alpha=0.7).item() == pytest.approx(0.7 * got.item())


def test_kd_mask_and_gradient():
    torch.manual_seed(2)
    zt = torch.randn(4, 9)
    zs = torch.randn(4, 9, requires_grad=True)
    vals, ids, lse = _topk_cache(zt, 3, 2.0)
    mask = torch.tensor([True, False, True, False])
    masked = kd_loss(zs, vals, ids, lse, mask=mask)
    kept = kd_loss(zs[mask], vals[mask], ids[mask], lse[mask])
    assert masked.item() == pytest.approx(kept.item(), rel=1e-6)
    masked.backward()
    assert torch.isfinite(zs.grad).all() and zs.grad[~mask].abs().sum() == 0
    # All positions masked: 0, not NaN.
    assert kd_loss(zs, vals, ids, lse, mask=torch.zeros(4, dtype=torch.bool)).item() == 0.0


def test_kd_peaked_student_stays_finite():
    # The student puts ~all mass on the top-k ids: q_rest underflows; the loss must stay finite.
    zt = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    zs = torch.tensor([[200.0, 0.0, 0.0, 0.0]], requires_grad=True)
    vals, ids, lse = _topk_cache(zt, 1, 1.0)
    loss = kd_loss(zs, vals, ids, lse, temperature=1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(zs.grad).all()


# --- CE --------------------------------------------------------------------------------------------


def test_ce_by_hand():
    # Uniform logits over 3 tokens: CE = ln 3 = 1.0986123, whatever the target.
    # Logits [ln 2, 0, 0] with target 0: -ln(2/4) = ln 2 = 0.6931472. Masking the first row leaves ln 2.
    logits = torch.tensor([[0.0, 0.0, 0.0], [math.log(2.0), 0.0, 0.0]])
    targets = torch.tensor([2, 0])
    assert ce_loss(logits, targets).item() == pytest.approx((math.log(3) + math.log(2)) / 2)
    assert ce_loss(logits, targets, torch.tensor([False, True])).item() == pytest.approx(math.log(2))


# --- sense -----------------------------------------------------------------------------------------


def test_sense_loss_by_hand():
    # d = 2, s = (0, 0).
    # positives (1,1), (2,0): (1/2)(1+1) = 1, (1/2)(4+0) = 2 -> mean 1.5.
    # negatives (0.5,0.5), (3,3): (1/2)(0.25+0.25) = 0.25 -> max(0, 1-0.25) = 0.75; (1/2)(9+9) = 9 -> 0.
    #   mean 0.375. l = 1.5 + 0.375 = 1.875; with beta_p = 2, beta_n = 0.5: 3 + 0.1875 = 3.1875.
    s = torch.zeros(1, 2)
    pos = torch.tensor([[[1.0, 1.0], [2.0, 0.0]]])
    neg = torch.tensor([[[0.5, 0.5], [3.0, 3.0]]])
    ones = torch.ones(1, 2, dtype=torch.bool)
    assert sense_loss(s, pos, ones, neg, ones).item() == pytest.approx(1.875)
    got = sense_loss(s, pos, ones, neg, ones, beta_p=2.0, beta_n=0.5)
    assert got.item() == pytest.approx(3.1875)
    # margin 10: hinge (10-0.25) and (10-9) -> mean (9.75 + 1)/2 = 5.375; l = 1.5 + 5.375 = 6.875.
    assert sense_loss(s, pos, ones, neg, ones, margin=10.0).item() == pytest.approx(6.875)


def test_sense_loss_masks_padding():
    # Row 0: only the first positive valid (1.0), no valid negatives -> 1.0.
    # Row 1: no valid positives (padding holds NaN, must not leak), one valid negative at (1/2)(0.5²·2)=0.25
    #   -> hinge 0.75.
    s = torch.zeros(2, 2)
    nan = float("nan")
    pos = torch.tensor([[[1.0, 1.0], [nan, nan]], [[nan, nan], [nan, nan]]])
    neg = torch.tensor([[[nan, nan], [nan, nan]], [[0.5, 0.5], [nan, nan]]])
    pos_mask = torch.tensor([[True, False], [False, False]])
    neg_mask = torch.tensor([[False, False], [True, False]])
    got = sense_loss(s, pos, pos_mask, neg, neg_mask)
    assert got.tolist() == pytest.approx([1.0, 0.75])


def test_sense_loss_closed_form_limits():
    torch.manual_seed(3)
    s = torch.randn(4, 8)
    pos = s.unsqueeze(1).expand(4, 3, 8).clone()  # student sits on every positive -> pull term 0
    far = s.unsqueeze(1) + 10.0  # (1/d)||n - s||² = 100 > margin -> hinge 0
    mask = torch.ones(4, 3, dtype=torch.bool)
    assert sense_loss(s, pos, mask, far.expand(4, 3, 8), mask).abs().max().item() == 0.0


def test_sense_loss_gradient_reaches_student():
    s = torch.zeros(1, 2, requires_grad=True)
    pos = torch.tensor([[[2.0, 0.0]]])
    mask = torch.ones(1, 1, dtype=torch.bool)
    sense_loss(s, pos, mask, pos, torch.zeros_like(mask)).sum().backward()
    # d/ds (1/2)||p - s||² = -(p - s) = (-2, 0)
    assert s.grad[0].tolist() == pytest.approx([-2.0, 0.0])


def test_dskd_total():
    kd, ce = torch.tensor(0.5), torch.tensor(2.0)
    # 0.5 + 2.0 + 1.5 · mean(1, 3) = 2.5 + 3.0 = 5.5
    assert dskd_total(kd, ce, torch.tensor([1.0, 3.0]), lam=1.5).item() == pytest.approx(5.5)
    assert dskd_total(kd, ce, torch.empty(0), lam=1.5).item() == pytest.approx(2.5)


def test_sense_projection_shapes_and_training():
    torch.manual_seed(4)
    proj = SenseProjection(6, 10)
    assert proj.proj.bias is None and proj.proj.weight.shape == (10, 6)
    h = torch.randn(8, 6)
    pos = torch.randn(8, 2, 10)
    mask = torch.ones(8, 2, dtype=torch.bool)
    no_neg = torch.zeros(8, 2, dtype=torch.bool)
    assert proj(h.unsqueeze(0)).shape == (1, 8, 10)
    opt = torch.optim.SGD(proj.parameters(), lr=0.5)
    first = None
    for _ in range(20):
        loss = sense_loss(proj(h), pos, mask, pos, no_neg).mean()
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first


def test_sampled_kd_exhaustive_weights_give_exact_kl():
    # Sampling "the whole distribution": every id once, weighted by p_T -> the estimator is exactly KL(p_T || q_S).
    torch.manual_seed(1)
    z_t, z_s, t = torch.randn(3, 7), torch.randn(3, 7), 2.0
    ids = torch.arange(7).expand(3, 7)
    lse = torch.logsumexp(z_t / t, -1)
    p = torch.softmax(z_t / t, -1)
    exact = (p * (torch.log_softmax(z_t / t, -1) - torch.log_softmax(z_s / t, -1))).sum(-1).mean()
    got = sampled_kd_loss(z_s, z_t, ids, lse, temperature=t, alpha=1.0, weights=p)
    assert torch.allclose(got, exact * t * t, atol=1e-6)


def test_sampled_kd_draws_by_hand():
    # Two draws of id 0 and one of id 2 over V=3, T=1, alpha=1: (1/3)*[2*(log p0 - log q0) + (log p2 - log q2)].
    z_t = torch.tensor([[2.0, 0.0, 1.0]])
    z_s = torch.tensor([[0.0, 0.0, 0.0]])
    ids = torch.tensor([[0, 0, 2]])
    lse = torch.logsumexp(z_t, -1)
    log_p = z_t - lse
    log_q = torch.full((3,), -math.log(3.0))
    expected = (2 * (log_p[0, 0] - log_q[0]) + (log_p[0, 2] - log_q[2])) / 3
    got = sampled_kd_loss(z_s, z_t[:, [0, 0, 2]], ids, lse, temperature=1.0, alpha=1.0)
    assert torch.allclose(got, expected, atol=1e-6)


def test_sampled_kd_is_unbiased_for_the_cross_entropy_gradient():
    # The mean gradient over many draws from p approaches the gradient of the exact KL.
    torch.manual_seed(0)
    z_t = torch.randn(1, 6)
    p = torch.softmax(z_t, -1)
    lse = torch.logsumexp(z_t, -1)
    z_s = torch.zeros(1, 6, requires_grad=True)
    exact = (p * (torch.log(p) - torch.log_softmax(z_s, -1))).sum()
    (g_exact,) = torch.autograd.grad(exact, z_s)
    draws = torch.multinomial(p.expand(4000, 6), 8, replacement=True, generator=torch.Generator().manual_seed(0))
    z_s_many = torch.zeros(4000, 6, requires_grad=True)
    est = sampled_kd_loss(z_s_many, z_t.expand(4000, 6).gather(-1, draws), draws, lse.expand(4000), 1.0, 1.0)
    (g_est,) = torch.autograd.grad(est * 4000, z_s_many)
    assert torch.allclose(g_est.mean(0), g_exact[0], atol=0.02)


def test_kd_rest_bucket_stays_exact_and_differentiable_when_the_student_saturates():
    """Student mass on the k ids rounds to 1 in float32: log q_rest comes from the logits outside the ids (here
    log 45 - 200 - logsumexp(30..26)), not log(1 - Σq) = -inf whose gradient was NaN and diverged a run."""
    vocab, k = 50, 5
    ids = torch.arange(k).unsqueeze(0)
    student = torch.full((1, vocab), -200.0)
    student[0, :k] = torch.tensor([30.0, 29.0, 28.0, 27.0, 26.0])
    student.requires_grad_(True)
    teacher = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]])
    lse = torch.tensor([math.log(sum(math.exp(v) for v in (5, 4, 3, 2, 1)) + 45.0)])
    loss = kd_loss(student, teacher, ids, lse, temperature=1.0, alpha=1.0)
    loss.backward()
    assert torch.isfinite(student.grad).all()
    lse_s = math.log(sum(math.exp(v) for v in (30, 29, 28, 27, 26)))
    p = [math.exp(v - lse[0].item()) for v in (5, 4, 3, 2, 1)]
    q = [v - lse_s for v in (30, 29, 28, 27, 26)]  # log q on the ids (the -200 tail adds ~e^-226 to lse_s)
    p_rest = 1.0 - sum(p)
    log_q_rest = math.log(45.0) - 200.0 - lse_s
    expected = sum(pi * (math.log(pi) - qi) for pi, qi in zip(p, q, strict=True)) + p_rest * (
        math.log(p_rest) - log_q_rest
    )
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
