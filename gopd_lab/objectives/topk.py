"""The ``topk`` estimator: the ``full`` estimator on the teacher's top-k tokens plus one tail bucket."""

from __future__ import annotations

import torch
from torch import Tensor

from gopd_lab.objectives.advantages import target_logprobs
from gopd_lab.objectives.estimator import TEACHER_TOPK, Estimator, LossInput, register_estimator
from gopd_lab.objectives.full import full_loss


def topk_buckets(logp: Tensor, index: Tensor) -> Tensor:
    """Collapse full log-distributions ``(..., V)`` onto ``k`` chosen tokens plus one tail bucket.

    Returns ``(..., k + 1)`` log-probs: the ``k`` gathered entries and ``log(1 - sum of them)``.
    """
    top = logp.gather(-1, index)  # (..., k)
    return torch.cat([top, _log_tail(top)], dim=-1)


def _log_tail(top: Tensor) -> Tensor:
    """``log(1 - sum(exp(top)))`` over the last dim, clamped away from log(0)."""
    mass = top.exp().sum(-1, keepdim=True)
    return torch.log((1.0 - mass).clamp(min=1e-12))


def topk_loss(
    logp_student: Tensor,
    index: Tensor,
    lp_teacher_topk: Tensor,
    lp_reference_topk: Tensor | None,
    lam: float | Tensor,
    mask: Tensor,
) -> tuple[Tensor, dict[str, float]]:
    """The full estimator restricted to the teacher's top-k tokens plus one tail bucket.

    ``index`` ``(B, C, k)`` are the teacher's top-k token ids at each state, ``lp_teacher_topk`` and
    ``lp_reference_topk`` ``(B, C, k)`` the teacher's and reference's log-probs of those tokens. Each
    distribution becomes ``k + 1`` buckets (the tail holds the remaining mass), the G-OPD target is
    formed on the buckets, and the loss is ``KL(student buckets ‖ target buckets)`` per state. With
    ``k = V`` this equals :func:`full_loss`.
    """
    teacher_b = torch.cat([lp_teacher_topk, _log_tail(lp_teacher_topk)], dim=-1)  # (B, C, k+1)
    reference_b = None
    if lp_reference_topk is not None:
        reference_b = torch.cat([lp_reference_topk, _log_tail(lp_reference_topk)], dim=-1)
    target_b = target_logprobs(teacher_b, reference_b, lam)
    student_b = topk_buckets(logp_student, index)  # (B, C, k+1)
    return full_loss(student_b, target_b, mask)


@register_estimator
class TopK(Estimator):
    """Needs the teacher's top-k ids and log-probs per state and the reference's log-probs at those ids."""

    name = "topk"
    needs = TEACHER_TOPK

    def loss(self, x: LossInput):
        out, scored = x.out, x.scored
        states = x.weights[out.positions.b, out.positions.c]  # (N,)
        lam_n = scored.lam[out.positions.b][:, None]  # (N, 1)
        return topk_loss(out.logp, scored.topk_index, scored.lp_teacher_topk, scored.lp_reference_topk, lam_n, states)
