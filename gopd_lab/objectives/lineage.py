"""The G-OPD lineage: ways of choosing λ (or the teacher's say) per token or per batch, as pure tensor functions.

All inputs are per-token log-probs on the sampled completion tokens, ``(B, C)`` float32, with a completion
``mask`` ``(B, C)`` (1 = valid token). Nothing here calls a model; ``docs/lineage.md`` gives the formulas,
their sources and every choice made where a paper leaves one open.

- REOPD (arXiv 2608.11698): per-token ``λ_t = 1 + γ_b·q_t``, ``q_t = exp(−δ_t/τ)``,
  ``δ_t = exp(x_t) − x_t − 1``, ``x_t = lp_teacher − lp_student``; ``γ_b`` a clipped, EMA-smoothed batch budget.
- A-G-OPD: one λ per batch, ``clip(1 + ρ·RMS(lp_T − lp_θ)/RMS(lp_T − lp_R), 1, λ_max)``.
- Entropy-aware OPD (arXiv 2603.07079): forward KL to the teacher where the teacher's entropy exceeds a
  threshold, the reverse-KL (sampled-token) signal elsewhere.
- Reward-gated OPD (arXiv 2607.04037): a sample's teacher signal is kept only where the sign of the teacher's
  sequence-level preference over the student agrees with the verifier.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

Reduce = Callable[[Tensor], Tensor]
"""Sums a 1-D float64 tensor of batch statistics over the processes of a data-parallel run (identity alone), so a
batch-level quantity is computed from the global batch: every process gets the same value."""

__all__ = [
    "LAM_MODES",
    "LOSS_KINDS",
    "reopd_lambda",
    "reopd_q",
    "reopd_budget",
    "agopd_lambda",
    "entropy_split",
    "forward_kl",
    "reward_gate",
]

LAM_MODES = ("fixed", "reopd", "agopd", "entropy", "gated")
LOSS_KINDS = ("reverse", "forward", "gated")
"""What each token's loss is, as logged per token (``loss_kind``): the reverse-KL / G-OPD sampled-token
signal, the forward KL to the teacher (entropy-aware OPD), or no teacher signal (reward gate closed)."""


def _valid(mask: Tensor | None, like: Tensor) -> Tensor:
    return torch.ones_like(like, dtype=torch.bool) if mask is None else mask.bool()


def _masked_sq_sum(x: Tensor, valid: Tensor) -> Tensor:
    return torch.where(valid, x, torch.zeros_like(x)).double().pow(2).sum()


def reopd_q(lp_teacher: Tensor, lp_student: Tensor, *, tau: float, mask: Tensor | None = None) -> Tensor:
    """REOPD's agreement weight ``q_t = exp(−δ_t/τ)`` with ``δ_t = e^{x_t} − x_t − 1`` and
    ``x_t = lp_teacher − lp_student`` (detached; ``(B, C)``, 0 on masked positions).

    ``δ_t ≥ 0`` is the k3 divergence term, ``≈ x_t²/2`` near 0, so ``q_t ≈ 1`` where teacher and student
    agree on the sampled token (``|x_t| ≪ √(2τ)``) and ``→ 0`` where they disagree."""
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    x = (lp_teacher.detach() - lp_student.detach()).float()  # (B, C)
    valid = _valid(mask, x) & torch.isfinite(x)
    x = torch.where(valid, x, torch.zeros_like(x))
    delta = torch.expm1(x) - x  # (B, C), e^x − x − 1 without cancellation
    return torch.where(valid, torch.exp(-delta / tau), torch.zeros_like(x))


def reopd_lambda(
    lp_teacher: Tensor, lp_student: Tensor, *, gamma: float, tau: float, mask: Tensor | None = None
) -> Tensor:
    """REOPD's per-token reward scale ``λ_t = 1 + γ·q_t`` ``(B, C)`` (1 on masked positions).

    ``gamma`` is the batch budget ``γ_b ≥ 0`` (see :func:`reopd_budget`); ``q_t`` is :func:`reopd_q`. Feed
    the result to ``gopd_advantages(..., lam=λ_t)``: extrapolation happens only on tokens where the
    student already agrees with the teacher; elsewhere the signal is plain OPD."""
    if not (math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"gamma (the batch budget γ_b) must be finite and >= 0, got {gamma}")
    q = reopd_q(lp_teacher, lp_student, tau=tau, mask=mask)
    lam = 1.0 + gamma * q  # (B, C)
    return torch.where(_valid(mask, lam), lam, torch.ones_like(lam))


def reopd_budget(
    q: Tensor,
    mask: Tensor | None,
    *,
    target: float,
    gamma_max: float,
    ema: float,
    previous: float | None,
    reduce: Reduce | None = None,
) -> tuple[float, float]:
    """The batch budget ``γ_b`` of REOPD → ``(γ_b, raw)``.

    ``raw = clip(target / mean_t q_t, 0, γ_max)`` is the budget at which the batch's mean extrapolation
    ``mean_t (λ_t − 1)`` equals ``target`` (``γ_max`` when no token agrees, ``mean q = 0``); the budget is
    its EMA over batches, ``γ_b = ema·γ_{b−1} + (1 − ema)·raw`` (``γ_1 = raw``), so it stays in ``[0, γ_max]``.
    ``reduce`` (:data:`Reduce`): ``mean_t q_t`` over the global batch of a multi-process run (its sum of ``q`` and
    its token count are summed over processes).
    """
    if not (target >= 0 and gamma_max >= 0 and 0.0 <= ema < 1.0):
        raise ValueError(f"need target >= 0, gamma_max >= 0, 0 <= ema < 1; got {target}, {gamma_max}, {ema}")
    valid = _valid(mask, q)
    stats = torch.stack([torch.where(valid, q, torch.zeros_like(q)).double().sum(), valid.sum().double()]).cpu()
    if reduce is not None:
        stats = reduce(stats)
    q_mean = float(stats[0] / stats[1].clamp(min=1))
    raw = gamma_max if q_mean <= 0 else min(max(target / q_mean, 0.0), gamma_max)
    gamma = raw if previous is None else ema * previous + (1.0 - ema) * raw
    return gamma, raw


def agopd_lambda(
    lp_teacher: Tensor,
    lp_student: Tensor,
    lp_reference: Tensor,
    *,
    rho: float,
    lam_max: float,
    mask: Tensor | None = None,
    reduce: Reduce | None = None,
) -> Tensor:
    """A-G-OPD's one λ per batch (a 0-dim tensor):
    ``λ = clip(1 + ρ·RMS(A_opd)/RMS(A_extra), 1, λ_max)``, ``A_opd = lp_T − lp_θ``, ``A_extra = lp_T − lp_R``,
    RMS over the batch's valid tokens. ``λ = 1`` when ``RMS(A_extra) = 0`` (the teacher adds nothing over the
    reference: no direction to extrapolate along). ``reduce`` (:data:`Reduce`): the RMS over the global batch of
    a multi-process run (the two sums of squares and the token count are summed over processes)."""
    if not (rho >= 0 and lam_max >= 1):
        raise ValueError(f"need rho >= 0 and lam_max >= 1, got rho={rho}, lam_max={lam_max}")
    valid = _valid(mask, lp_teacher)
    a_opd = (lp_teacher.detach() - lp_student.detach()).float()  # (B, C)
    a_extra = (lp_teacher.detach() - lp_reference.detach()).float()  # (B, C)
    stats = torch.stack([_masked_sq_sum(a_opd, valid), _masked_sq_sum(a_extra, valid), valid.sum().double()]).cpu()
    if reduce is not None:
        stats = reduce(stats)
    n = stats[2].clamp(min=1)
    rms_opd, rms_extra = (stats[0] / n).sqrt(), (stats[1] / n).sqrt()
    if float(rms_extra) == 0.0:
        return torch.ones((), device=lp_teacher.device)
    return (1.0 + rho * rms_opd / rms_extra).clamp(1.0, lam_max).float().to(lp_teacher.device)


def entropy_split(teacher_entropy: Tensor, *, threshold: float, mask: Tensor | None = None) -> Tensor:
    """Entropy-aware OPD's split ``(B, C)`` bool: True where the teacher's next-token entropy
    ``H(π_T(·|s_t))`` (nats) is strictly above ``threshold`` (those states get the forward KL), False
    elsewhere and on masked positions."""
    return (teacher_entropy > threshold) & _valid(mask, teacher_entropy)


def forward_kl(logp_teacher: Tensor, logp_student: Tensor) -> Tensor:
    """Per-state forward KL ``KL(π_T ‖ π_θ) = Σ_v π_T(v)·(log π_T(v) − log π_θ(v))`` over the last dim;
    the teacher is detached, the gradient flows into ``logp_student``."""
    logp_teacher = logp_teacher.detach().float()
    p = logp_teacher.exp()
    return (p * (logp_teacher - logp_student)).sum(-1)


def reward_gate(
    lp_teacher: Tensor, lp_student: Tensor, rewards: Tensor, *, mask: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Reward-gated OPD's per-sample gate → ``(gate (B,) bool, preference (B,))``.

    The teacher's preference over the student on sample ``i`` is ``Δ_i = Σ_t (lp_T − lp_θ)`` over its valid
    tokens (``log π_T(a) − log π_θ(a)``: > 0 when the teacher finds the completion likelier than the student
    does). The verifier's verdict is ``v_i = +1`` if ``r_i ≥ 0.5`` else ``−1`` (verifiers score 0 or 1). The
    gate is open where they agree strictly, ``v_i·Δ_i > 0``; a tie ``Δ_i = 0`` or a NaN reward closes it."""
    valid = _valid(mask, lp_teacher)
    x = (lp_teacher.detach() - lp_student.detach()).float()
    pref = torch.where(valid, x, torch.zeros_like(x)).sum(-1)  # (B,)
    r = rewards.to(pref.device).float()
    verdict = torch.where(r >= 0.5, 1.0, -1.0)
    gate = (verdict * pref > 0) & torch.isfinite(r)
    return gate, pref
