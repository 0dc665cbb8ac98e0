"""DSKD losses (method.md §4): top-k KD, CE, the sense (pull/push) loss and their total.

Plain functions over tensors; shapes are in each docstring. All reductions are done in float32 whatever the
input dtype (bf16 logits lose too much in log-softmax sums).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _masked_mean(values: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return values.mean() if values.numel() else values.sum()
    mask = mask.to(torch.bool)
    n = mask.sum()
    # An all-masked batch gives 0 (with a graph), never NaN.
    return torch.where(mask, values, torch.zeros_like(values)).sum() / n.clamp_min(1)


def _scaled_with_lse(logits: Tensor, t: float) -> tuple[Tensor, Tensor]:
    """(``logits / t`` in float32, its logsumexp over the vocabulary): computed once per loss, since each pass over
    ``[N, V]`` is a large share of the loss's cost; no copy at T = 1."""
    z = logits.float()
    if t != 1.0:
        z = z / t
    return z, torch.logsumexp(z, -1)


def _kept_log_probs(
    z: Tensor, lse: Tensor, teacher_logits: Tensor, ids: Tensor, teacher_lse: Tensor, t: float
) -> tuple[Tensor, Tensor]:
    """(log q_S, log p_T) at temperature ``t`` on the cached ids ``[N, k]``, from the student's scaled logits ``z``
    and their logsumexp ``lse`` (gathered, not a full log-softmax); p_T is exact thanks to the full-vocab lse stored
    with the cache."""
    q_logp = z.gather(-1, ids.long()) - lse.unsqueeze(-1)
    p_logp = teacher_logits.float() / t - teacher_lse.float().unsqueeze(-1)
    return q_logp, p_logp


def kd_loss(
    student_logits: Tensor,
    teacher_topk_logits: Tensor,
    teacher_topk_ids: Tensor,
    teacher_lse: Tensor,
    temperature: float = 2.0,
    alpha: float = 0.7,
    mask: Tensor | None = None,
) -> Tensor:
    """alpha · T² · mean over positions of KL(p_T ‖ q_S) on the teacher's top-k ids plus a "rest" bucket.

    Args:
        student_logits: ``[N, V]``.
        teacher_topk_logits: ``[N, k]`` raw teacher logits z of its top-k ids.
        teacher_topk_ids: ``[N, k]`` long, distinct per row.
        teacher_lse: ``[N]`` logsumexp(z / T) over the FULL vocabulary, computed when the cache was written.
        temperature: T.
        alpha: weight (method.md L_KD).
        mask: optional ``[N]`` bool of positions that count.

    Teacher: p_i = exp(z_i/T - lse_T) on the k ids, p_rest = max(0, 1 - Σp_i). Student: q = softmax(z^S/T)
    gathered on the same ids, q_rest = 1 - Σq_i. With k = V this is the exact KL of the reference; with k < V
    it is the KL between the two distributions coarsened to the k + 1 cells (a lower bound of the full KL).
    """
    t = float(temperature)
    z, lse = _scaled_with_lse(student_logits, t)  # shared by the kept ids and the rest bucket
    q_logp, p_logp = _kept_log_probs(z, lse, teacher_topk_logits, teacher_topk_ids, teacher_lse, t)
    p = p_logp.exp()
    kl = (p * (p_logp - q_logp)).sum(-1)  # [N]
    if teacher_topk_ids.shape[-1] < student_logits.shape[-1]:
        # Rest bucket. With k = V it is empty by construction: skipped, since 1 - Σp is then rounding noise
        # and log q_rest = -inf would turn noise into inf.
        p_rest = (1.0 - p.sum(-1)).clamp_min(0.0)
        # log q_rest from the student's logits outside the k ids, not log(1 - Σq): when Σq rounds to 1 in float32
        # the latter is -inf with an inf/NaN gradient (it diverged a 96-step run); this is exact and always finite.
        outside = z.scatter(-1, teacher_topk_ids.long(), float("-inf"))
        log_q_rest = torch.logsumexp(outside, -1) - lse
        kl = kl + torch.xlogy(p_rest, p_rest) - p_rest * log_q_rest
    return alpha * t * t * _masked_mean(kl, mask)


def sampled_kd_loss(
    student_logits: Tensor,
    teacher_sampled_logits: Tensor,
    teacher_sampled_ids: Tensor,
    teacher_lse: Tensor,
    temperature: float = 1.0,
    alpha: float = 0.7,
    mask: Tensor | None = None,
    weights: Tensor | None = None,
) -> Tensor:
    """alpha · T² · mean over positions of the Random-Sampling KD estimate of KL(p_T ‖ q_S) (Anshumann et al. 2025).

    The cache holds k ids drawn with replacement from p_T = softmax(z/T) (repeats kept). With weights w_j
    (default 1/k per draw) the estimate is Σ_j w_j (log p_T(x_j) − log q_S(x_j)): its expectation is the full KL,
    and its gradient in the student is that of the cross-entropy to p_T, unbiased — unlike the top-k form, which
    sees nothing of the teacher beyond its k ids. With ``weights`` = p_T over every id of the vocabulary it is the
    exact KL (the closed form the tests check).

    Args: as :func:`kd_loss`; ``teacher_sampled_ids [N, k]`` may repeat; ``weights [N, k]`` sum to 1 per row.
    """
    t = float(temperature)
    z, lse = _scaled_with_lse(student_logits, t)
    q_logp, p_logp = _kept_log_probs(z, lse, teacher_sampled_logits, teacher_sampled_ids, teacher_lse, t)
    if weights is None:
        weights = torch.full_like(q_logp, 1.0 / q_logp.shape[-1])
    kl = (weights.float() * (p_logp - q_logp)).sum(-1)
    return alpha * t * t * _masked_mean(kl, mask)


def ce_loss(student_logits: Tensor, targets: Tensor, mask: Tensor | None = None) -> Tensor:
    """Mean cross-entropy of ``student_logits [N, V]`` against ``targets [N]`` over the (masked) positions."""
    per_pos = F.cross_entropy(student_logits.float(), targets.long(), reduction="none")
    return _masked_mean(per_pos, mask)


def sense_loss(
    student_hidden: Tensor,
    pos: Tensor,
    pos_mask: Tensor,
    neg: Tensor,
    neg_mask: Tensor,
    beta_p: float = 1.0,
    beta_n: float = 1.0,
    margin: float = 1.0,
) -> Tensor:
    """Per-position sense loss ℓ_t, shape ``[M]`` (method.md §4).

    ℓ_t = β_p · mean_{valid p} (1/d)‖p − s‖² + β_n · mean_{valid n} max(0, m − (1/d)‖n − s‖²), with
    ``student_hidden [M, d]`` (already in teacher space), ``pos``/``neg [M, κ, d]`` and bool masks ``[M, κ]``.
    A row with no valid positives (negatives) has positive (hinge) term 0. No L2 normalisation (reference).
    """
    s = student_hidden.float().unsqueeze(1)  # [M, 1, d]
    pos_mask, neg_mask = pos_mask.to(torch.bool), neg_mask.to(torch.bool)
    d2p = (pos.float() - s).pow(2).mean(-1)  # (1/d)‖p − s‖², [M, κ]
    d2n = (neg.float() - s).pow(2).mean(-1)
    # where(), not multiply: padded rows may hold garbage (even NaN) and must not leak into the sum.
    pull = torch.where(pos_mask, d2p, torch.zeros_like(d2p)).sum(-1) / pos_mask.sum(-1).clamp_min(1)
    hinge = torch.relu(margin - d2n)
    push = torch.where(neg_mask, hinge, torch.zeros_like(hinge)).sum(-1) / neg_mask.sum(-1).clamp_min(1)
    return beta_p * pull + beta_n * push


def dskd_total(l_kd: Tensor, l_ce: Tensor, l_sense_rows: Tensor, lam: float) -> Tensor:
    """L = L_KD + L_CE + λ · mean(ℓ_t) over all sampled rows (full and positive-only).

    No rows → no sense term. Rows whose pools were empty contribute 0 but still count in the mean, as in the
    reference.
    """
    if l_sense_rows.numel() == 0:
        return l_kd + l_ce
    return l_kd + l_ce + lam * l_sense_rows.float().mean()


class SenseProjection(nn.Module):
    """Learned linear map of student hidden states (width d_s) into teacher space (width d_t).

    Only needed when the student's width differs from the teacher's (the reference uses equal widths and no
    projection). No bias and no identity shortcut: it is a plain ``nn.Linear(d_s, d_t, bias=False)``.
    """

    def __init__(self, d_student: int, d_teacher: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_student, d_teacher, bias=False)

    def forward(self, hidden: Tensor) -> Tensor:
        """``[..., d_s] -> [..., d_t]``."""
        return self.proj(hidden)
