"""The ``full`` estimator: per-state ``KL(π_θ ‖ normalise(π_R^(1−λ)·π_T^λ))`` over the full vocabulary."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from gopd_lab.objectives.advantages import masked_mean
from gopd_lab.objectives.estimator import MIXED_TARGET, Estimator, LossInput, register_estimator


def full_loss(logp_student: Tensor, logp_target: Tensor, mask: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Full-vocabulary estimator: per-state ``KL(π_θ(·|s_t) ‖ target(·|s_t))``, averaged over tokens.

    ``logp_student`` ``(B, C, V)`` carries the gradient; ``logp_target`` ``(B, C, V)`` is the
    detached target from :func:`target_logprobs` (the teacher at ``lam = 1``, where this is exactly
    the reverse KL to the teacher). Zero sampling variance at each visited state.
    """
    loss = masked_mean(kl_per_state(logp_student, logp_target), mask)
    return loss, {"kl_to_target": float(loss.detach())}


def kl_per_state(logp_student: Tensor, logp_target: Tensor) -> Tensor:
    """``KL(π_θ ‖ target)`` over the last dim: ``(..., V)`` → ``(...)``."""
    p = logp_student.exp()  # (..., V)
    return (p * (logp_student - logp_target.detach())).sum(-1)


def chunked_state_mean(
    per_state: Callable[[Tensor, Tensor], Tensor], logp_student: Tensor, target, mask: Tensor, rows: int
) -> Tensor:
    """``masked_mean(per_state(logp_student, target), mask)`` over ``N`` states, ``rows`` at a time, for a lazy
    target (``scorers.lazy_target.LazyTarget`` / ``GroupedTarget``: ``target.rows(i, j)`` forms rows ``i:j``, and
    ``target.rows_per_chunk(chunk_tokens)`` is the scoring chunk's size). Each chunk is
    checkpointed with its target rows formed inside: backward re-forms them, so neither the ``(N, V)`` target nor
    the ``(N, V)`` intermediates of ``per_state`` are kept (the student's ``(N, V)`` log-probs are its input)."""
    mask = mask.to(logp_student.dtype)
    total = logp_student.new_zeros(())

    def chunk(logp: Tensor, m: Tensor, start: int, stop: int) -> Tensor:
        x = per_state(logp, target.rows(start, stop))  # (n,)
        return (torch.where(m != 0, x, torch.zeros_like(x)) * m).sum()

    for i in range(0, len(mask), rows):
        j = min(i + rows, len(mask))
        part = (logp_student[i:j], mask[i:j], i, j)
        total = total + (checkpoint(chunk, *part, use_reentrant=False) if logp_student.requires_grad else chunk(*part))
    return total / mask.sum().clamp(min=1)


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
        if hasattr(scored.target, "rows"):  # a lazy target: formed chunk by chunk, never (N, V) at once
            rows = scored.target.rows_per_chunk(x.cfg.score_chunk_tokens)
            loss = chunked_state_mean(kl_per_state, out.logp, scored.target, states, rows)
            return loss, {"kl_to_target": float(loss.detach())}
        return full_loss(out.logp, scored.target, states)
