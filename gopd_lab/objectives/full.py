"""The ``full`` estimator: per-state ``KL(π_θ ‖ normalise(π_R^(1−λ)·π_T^λ))`` over the full vocabulary."""

from __future__ import annotations

from torch import Tensor

from gopd_lab.objectives.advantages import masked_mean
from gopd_lab.objectives.estimator import MIXED_TARGET, Estimator, LossInput, register_estimator


def full_loss(logp_student: Tensor, logp_target: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Full-vocabulary estimator: per-state ``KL(π_θ(·|s_t) ‖ target(·|s_t))``, averaged over tokens.

    ``logp_student`` ``(B, C, V)`` carries the gradient; ``logp_target`` ``(B, C, V)`` is the
    detached target from :func:`target_logprobs` (the teacher at ``lam = 1``, where this is exactly
    the reverse KL to the teacher). Zero sampling variance at each visited state.
    """
    logp_target = logp_target.detach()
    p = logp_student.exp()  # (B, C, V)
    kl = (p * (logp_student - logp_target)).sum(-1)  # (B, C)
    loss = masked_mean(kl, mask)
    return loss, {"kl_to_target": float(loss.detach())}


@register_estimator
class Full(Estimator):
    """Zero sampling variance at each visited state; the update may fuse it with the LM head."""

    name = "full"
    needs = MIXED_TARGET
    fused_kl = True

    def loss(self, x: LossInput):
        out, scored, weights = x.out, x.scored, x.weights
        if out.kl_loss is not None:  # fused with the LM head (student_kl_forward): the same mean KL as full_loss
            return out.kl_loss, {"kl_to_target": float(out.kl_loss.detach())}
        states = weights[out.positions.b, out.positions.c]  # (N,) the weight of every kept state
        target = scored.target.dense() if hasattr(scored.target, "dense") else scored.target  # (N, V)
        return full_loss(out.logp, target, states)
