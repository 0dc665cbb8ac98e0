"""CE and KD at T = 1 in one pass over the vocabulary, with a hand-written gradient.

Why: on a CPU the loss terms of :mod:`dskd.train.losses` took ~40 % of a training step of the embedded default
(a 1,016 x 49,152 logit matrix per batch): CE's log-softmax, KD's logsumexp and the rest bucket's logsumexp over
the ids outside the top-k each make their own full-vocabulary passes forward and again backward. All three need
only the student's softmax q, so this computes it once (one exp pass), keeps it for the backward, and writes the
gradient of ``ce_weight · CE + KD`` in closed form (two passes). The values are those of
:func:`~dskd.train.losses.ce_loss` + :func:`~dskd.train.losses.kd_loss` / :func:`~dskd.train.losses.sampled_kd_loss`
at T = 1 (tests/train/test_fused_loss.py checks values and gradients against them in float64).

Gradient w.r.t. the logits z of one position (q = softmax(z), p the teacher's probabilities on the k cached ids,
y the target, K the cached ids, c = d total / d CE, a = d total / d KD · alpha):

* CE: c · (q − e_y)
* top-k KD: a · [(Σ_K p + p_rest) · q − p on K − p_rest · q / Q_out outside K], Q_out = Σ_{j∉K} q_j
* sampled KD: a · [(Σ_j w_j) · q − Σ_j w_j e_{x_j}]
"""

from __future__ import annotations

import torch
from torch import Tensor

# The rest cell's outside mass is floored here (float32's smallest normal): a student that puts all its mass on
# the k ids then gets a large but finite rest term, never inf/NaN.
_TINY = torch.finfo(torch.float32).tiny


class _CeKd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, targets, ids, teacher_logp, weights, alpha, sampled):  # noqa: D102
        n, v = logits.shape
        # One float32 copy, turned in place into exp(z - m), then into the softmax: no other [N, V] tensor.
        q = logits.to(torch.float32, copy=True)
        m = q.amax(-1, keepdim=True)
        z_target = q.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        z_ids = q.gather(-1, ids)
        q.sub_(m).exp_()
        s = q.sum(-1, keepdim=True)
        lse = (m + s.log()).squeeze(-1)
        ce = (lse - z_target).mean()
        log_q_ids = z_ids - lse.unsqueeze(-1)
        p = teacher_logp.exp()
        if sampled:
            kd_rows = (weights * (teacher_logp - log_q_ids)).sum(-1)
            rest, s_out = None, None
        else:
            kd_rows = (p * (teacher_logp - log_q_ids)).sum(-1)
            rest = (1.0 - p.sum(-1)).clamp_min(0.0) if ids.shape[-1] < v else torch.zeros_like(lse)
            # Outside mass summed directly (zero the k ids, sum, put them back): no 1 - Σq cancellation.
            kept_e = q.gather(-1, ids)
            q.scatter_(-1, ids, 0.0)
            s_out = q.sum(-1, keepdim=True).clamp_min(_TINY * s)
            q.scatter_(-1, ids, kept_e)
            log_q_rest = (s_out / s).log().squeeze(-1)
            kd_rows = kd_rows + torch.xlogy(rest, rest) - rest * log_q_rest
        q.div_(s)  # now the softmax, kept for the backward
        ctx.save_for_backward(q, targets, ids, p if not sampled else weights, rest, s_out, s)
        ctx.alpha, ctx.sampled, ctx.in_dtype = float(alpha), sampled, logits.dtype
        return ce, alpha * kd_rows.mean()

    @staticmethod
    def backward(ctx, grad_ce, grad_kd):  # noqa: D102
        q, targets, ids, p_or_w, rest, s_out, s = ctx.saved_tensors
        n = q.shape[0]
        c = grad_ce.float() / n
        a = grad_kd.float() * ctx.alpha / n
        if ctx.sampled:
            row = c + a * p_or_w.sum(-1, keepdim=True)  # [N, 1]
            g = q * row
            g.scatter_add_(-1, ids, -a * p_or_w)
        else:
            total_p = p_or_w.sum(-1, keepdim=True) + rest.unsqueeze(-1)
            inside = c + a * total_p  # [N, 1], the coefficient of q on the k ids
            outside = inside - a * rest.unsqueeze(-1) * s / s_out  # ... and on every other id
            q_ids = q.gather(-1, ids)
            g = q * outside
            g.scatter_(-1, ids, q_ids * inside - a * p_or_w)
        g.scatter_add_(-1, targets.unsqueeze(-1), (-c).expand(n, 1).contiguous())
        return g.to(ctx.in_dtype), None, None, None, None, None, None


def ce_and_kd_t1(
    student_logits: Tensor,
    targets: Tensor,
    teacher_ids_logits: Tensor,
    teacher_ids: Tensor,
    teacher_lse: Tensor,
    alpha: float,
    sampled: bool = False,
    weights: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """(CE, KD) at T = 1, equal to ``ce_loss`` and ``kd_loss`` (top-k + rest bucket) or ``sampled_kd_loss``.

    Args:
        student_logits: ``[N, V]`` (any float dtype; computed in float32, the gradient comes back in its dtype).
        targets: ``[N]`` next-token ids.
        teacher_ids_logits: ``[N, k]`` the teacher's raw logits on its cached ids.
        teacher_ids: ``[N, k]`` the cached ids (distinct for top-k; repeats allowed when ``sampled``).
        teacher_lse: ``[N]`` the teacher's logsumexp over the full vocabulary.
        alpha: the KD weight.
        sampled: Random-Sampling KD (weights default 1/k per draw) instead of top-k + rest.
        weights: ``[N, k]`` importance weights for ``sampled``.
    """
    teacher_logp = teacher_ids_logits.float() - teacher_lse.float().unsqueeze(-1)
    ids = teacher_ids.long()
    if sampled and weights is None:
        weights = torch.full_like(teacher_logp, 1.0 / teacher_logp.shape[-1])
    w = weights.float() if weights is not None else None
    return _CeKd.apply(student_logits, targets.long(), ids, teacher_logp, w, alpha, sampled)
