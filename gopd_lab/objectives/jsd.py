"""The ``jsd`` estimator: generalised Jensen-Shannon divergence JSD(β) to the teacher (GKD; λ = 1 only)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gopd_lab.objectives.advantages import masked_mean
from gopd_lab.objectives.estimator import TEACHER_DISTRIBUTION, Estimator, LossInput, register_estimator


def jsd_loss(logp_student: Tensor, logp_teacher: Tensor, mask: Tensor, beta: float) -> tuple[Tensor, dict[str, float]]:
    """Generalised Jensen-Shannon divergence JSD(β) to the teacher (GKD, Agarwal et al. 2023).

    With ``M = β·π_T + (1-β)·π_θ``: ``JSD(β) = β·KL(π_T ‖ M) + (1-β)·KL(π_θ ‖ M)`` per state. The
    end points follow the convention of TRL's ``generalized_jsd_loss``: ``β = 0`` is the forward KL
    ``KL(π_T ‖ π_θ)`` and ``β = 1`` the reverse KL ``KL(π_θ ‖ π_T)`` (the OPD objective).
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    logp_teacher = logp_teacher.detach().float()
    if beta == 0.0:
        per_state = (logp_teacher.exp() * (logp_teacher - logp_student)).sum(-1)
    elif beta == 1.0:
        per_state = (logp_student.exp() * (logp_student - logp_teacher)).sum(-1)
    else:
        log_m = torch.logsumexp(
            torch.stack([logp_teacher + math.log(beta), logp_student + math.log(1.0 - beta)]), dim=0
        )  # (B, C, V)
        kl_t = (logp_teacher.exp() * (logp_teacher - log_m)).sum(-1)
        kl_s = (logp_student.exp() * (logp_student - log_m)).sum(-1)
        per_state = beta * kl_t + (1.0 - beta) * kl_s  # (B, C)
    loss = masked_mean(per_state, mask)
    return loss, {"jsd": float(loss.detach())}


@register_estimator
class JSD(Estimator):
    """Needs the teacher's full distribution per state; distils to the teacher itself (λ = 1)."""

    name = "jsd"
    needs = TEACHER_DISTRIBUTION

    def check(self, cfg) -> str | None:
        if any(lam != 1 for _, lam in cfg.lam_items()):
            return "estimator='jsd' distils to the teacher itself; set lam=1 (or use 'full' for G-OPD)"
        return None

    def loss(self, x: LossInput):
        states = x.weights[x.out.positions.b, x.out.positions.c]  # (N,)
        return jsd_loss(x.out.logp, x.scored.target, states, x.cfg.jsd_beta)
