"""The ``sampled`` estimator: policy gradient on the sampled tokens with the detached G-OPD advantage ``A_t``
(γ > 0: its discounted return-to-go; ``clip_eps``: PPO's clipped surrogate)."""

from __future__ import annotations

import torch
from torch import Tensor

from gopd_lab.objectives.advantages import masked_mean
from gopd_lab.objectives.estimator import SAMPLED_TOKENS, Estimator, LossInput, register_estimator


def sampled_loss(
    lp_student: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    lp_old: Tensor | None = None,
    clip_eps: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Policy gradient on the sampled tokens with a detached advantage (official G-OPD, Tinker).

    ``loss = -sum_t rho_t * A_t / N_tokens`` with ``rho_t = exp(lp_student - lp_old)``.
    Strictly on-policy (one update per batch) ``lp_old = lp_student.detach()`` so ``rho = 1`` and its
    gradient is ``∇ lp_student``. With ``clip_eps`` the PPO clipped surrogate
    ``min(rho*A, clip(rho, 1-eps, 1+eps)*A)`` is used instead.
    """
    if lp_old is None:
        lp_old = lp_student.detach()
    advantages = advantages.detach()
    ratio = torch.exp(lp_student - lp_old)  # (B, C)
    pg_obj = ratio * advantages  # (B, C)
    clip_frac = torch.zeros(())
    if clip_eps is not None:
        clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
        pg_obj = torch.minimum(pg_obj, clipped)
        with torch.no_grad():
            clip_frac = masked_mean(((ratio - 1.0).abs() > clip_eps).float(), mask)
    loss = -masked_mean(pg_obj, mask)
    with torch.no_grad():
        approx_kl = masked_mean(lp_old - lp_student, mask)
    return loss, {"clip_frac": float(clip_frac), "approx_kl_old": float(approx_kl)}


@register_estimator
class Sampled(Estimator):
    """``-mean_t ρ_t·A_t`` on the sampled tokens: needs only their log-probs, consumes the advantages."""

    name = "sampled"
    needs = SAMPLED_TOKENS
    uses_advantages = True

    def loss(self, x: LossInput):
        return sampled_loss(x.out.lp, x.advantages, x.weights, lp_old=x.lp_old, clip_eps=x.cfg.clip_eps)
