"""The ``jsd`` estimator: generalised Jensen-Shannon divergence JSD(β) to the teacher (GKD; λ = 1 only)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from gopd_lab.objectives.advantages import masked_mean
from gopd_lab.objectives.estimator import TEACHER_DISTRIBUTION, Estimator, LossInput, register_estimator
from gopd_lab.objectives.full import chunked_state_mean


def jsd_loss(logp_student: Tensor, logp_teacher: Tensor, mask: Tensor, beta: float) -> tuple[Tensor, dict[str, float]]:
    """Generalised Jensen-Shannon divergence JSD(β) to the teacher (GKD, Agarwal et al. 2023).

    With ``M = β·π_T + (1-β)·π_θ``: ``JSD(β) = β·KL(π_T ‖ M) + (1-β)·KL(π_θ ‖ M)`` per state. The
    end points follow the convention of TRL's ``generalized_jsd_loss``: ``β = 0`` is the forward KL
    ``KL(π_T ‖ π_θ)`` and ``β = 1`` the reverse KL ``KL(π_θ ‖ π_T)`` (the OPD objective).
    """
    loss = masked_mean(jsd_per_state(logp_student, logp_teacher, beta), mask)
    return loss, {"jsd": float(loss.detach())}


def jsd_per_state(logp_student: Tensor, logp_teacher: Tensor, beta: float) -> Tensor:
    """JSD(β) of :func:`jsd_loss` at each state: ``(..., V)`` → ``(...)``."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    logp_teacher = logp_teacher.detach().float()
    if beta == 0.0:
        return (logp_teacher.exp() * (logp_teacher - logp_student)).sum(-1)
    if beta == 1.0:
        return (logp_student.exp() * (logp_student - logp_teacher)).sum(-1)
    log_m = torch.logsumexp(
        torch.stack([logp_teacher + math.log(beta), logp_student + math.log(1.0 - beta)]), dim=0
    )  # (..., V)
    kl_t = (logp_teacher.exp() * (logp_teacher - log_m)).sum(-1)
    kl_s = (logp_student.exp() * (logp_student - log_m)).sum(-1)
    return beta * kl_t + (1.0 - beta) * kl_s  # (...)


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
        out, scored = x.out, x.scored
        states = x.weights[out.positions.b, out.positions.c]  # (N,)
        if hasattr(scored.target, "rows"):  # a lazy teacher distribution: formed chunk by chunk, never (N, V)
            beta = x.cfg.jsd_beta
            rows = scored.target.rows_per_chunk(x.cfg.score_chunk_tokens)
            loss = chunked_state_mean(lambda s, t: jsd_per_state(s, t, beta), out.logp, scored.target, states, rows)
            return loss, {"jsd": float(loss.detach())}
        return jsd_loss(out.logp, scored.target, states, x.cfg.jsd_beta)
