"""The G-OPD objectives as pure tensor functions (no model calls).

Notation (docs/math.md): per-token log-probs on the sampled completion tokens ``lp_student``
(log π_θ), ``lp_teacher`` (log π_T), ``lp_reference`` (log π_R), each ``(B, C)`` float32, and a
completion ``mask`` ``(B, C)`` that is 1 on real completion tokens (up to and including EOS).

G-OPD per-token advantage (Yang et al., arXiv 2602.12125)::

    A_t = lam * (lp_teacher - lp_reference) - (lp_student - lp_reference)
        = lam * lp_teacher - (lam - 1) * lp_reference - lp_student

``lam == 1`` is OPD (the reference cancels), ``0 < lam < 1`` interpolates reference → teacher,
``lam > 1`` is ExOPD (reward extrapolation).

Every loss is normalised by the number of valid tokens in the batch (``mask.sum().clamp(min=1)``),
and returns ``(loss, metrics)`` with metrics as python floats computed under ``no_grad``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gopd_lab.objectives.lineage import agopd_lambda, entropy_split, forward_kl, reopd_budget, reopd_lambda, reward_gate

__all__ = [
    "gopd_advantages",
    "reopd_lambda",
    "reopd_budget",
    "agopd_lambda",
    "entropy_split",
    "forward_kl",
    "reward_gate",
    "discounted_returns",
    "target_logprobs",
    "masked_mean",
    "entropy_from_logp",
    "group_advantages",
    "grpo_token_advantages",
    "kl_k3",
    "sft_loss",
    "chord_phi",
]


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` weighted by ``mask`` (1 = valid; fractional weights give expectations), 0 when the
    mask is empty. Masked-out entries are selected away, so a NaN or inf there cannot leak in."""
    mask = mask.to(x.dtype)
    x = torch.where(mask != 0, x, torch.zeros_like(x))
    return (x * mask).sum() / mask.sum().clamp(min=1)


def discounted_returns(values: Tensor, gamma: float, mask: Tensor | None = None) -> Tensor:
    """Return-to-go within each row: ``G_t = sum_{t' >= t} gamma^(t'-t) * values_t'``.

    ``values`` is ``(B, C)``; masked positions contribute nothing and get 0.
    """
    if mask is not None:
        values = values * mask.to(values.dtype)
    if gamma == 0.0:
        return values
    out = torch.zeros_like(values)  # (B, C)
    running = torch.zeros_like(values[:, 0])  # (B,)
    for t in range(values.shape[1] - 1, -1, -1):
        running = values[:, t] + gamma * running
        out[:, t] = running
    if mask is not None:
        out = out * mask.to(values.dtype)
    return out


def gopd_advantages(
    lp_student: Tensor,
    lp_teacher: Tensor,
    lp_reference: Tensor | None = None,
    *,
    lam: float | Tensor = 1.0,
    gamma: float = 0.0,
    mask: Tensor | None = None,
) -> Tensor:
    """Per-token G-OPD advantages, detached.

    ``A_t = lam * (lp_teacher - lp_reference) - (lp_student - lp_reference)``; with ``gamma > 0``
    the advantages become discounted returns-to-go within each sequence
    (``gamma = 0``: token level, what the official code optimises; ``gamma = 1``: the
    sequence-level objective). ``lam`` may be a float, a ``(B,)`` tensor (one λ per sample, for
    multi-teacher runs with one λ per domain) or a ``(B, C)`` tensor (one λ per token: REOPD's
    ``λ_t``, :func:`reopd_lambda`). ``lp_reference`` may be ``None`` only when every λ
    is 1, where the reference cancels exactly; rows whose λ is 1 use ``lp_teacher − lp_student``
    whatever their ``lp_reference`` holds (NaN where the reference was not run); with a per-token λ the same
    holds per token. Masked positions are 0.
    """
    lam_t = torch.as_tensor(lam, dtype=torch.float32, device=lp_student.device)
    if lam_t.ndim == 1:
        lam_t = lam_t[:, None]  # (B, 1)
    if bool((lam_t <= 0).any()):
        raise ValueError(f"lam must be > 0, got {lam}")
    lp_student = lp_student.detach().float()
    lp_teacher = lp_teacher.detach().float()
    if lp_reference is None:
        if not bool((lam_t == 1).all()):
            raise ValueError("lp_reference is required when lam != 1 (G-OPD needs the reference model)")
        adv = lp_teacher - lp_student  # (B, C)
    else:
        lp_reference = lp_reference.detach().float()
        adv = lam_t * (lp_teacher - lp_reference) - (lp_student - lp_reference)  # (B, C)
        adv = torch.where(lam_t == 1, lp_teacher - lp_student, adv)  # the reference cancels at λ = 1
    if mask is not None:
        adv = torch.where(mask.bool(), adv, torch.zeros_like(adv))
    return discounted_returns(adv, gamma, mask)


def target_logprobs(logp_teacher: Tensor, logp_reference: Tensor | None, lam: float | Tensor) -> Tensor:
    """Log of the per-state G-OPD target ``normalise(π_R^(1-lam) · π_T^lam)`` over the last dim.

    ``logp_*`` are full log-distributions ``(..., V)``. With ``lam == 1`` this is the teacher.
    ``lam`` may be a float or a tensor broadcastable to ``(..., 1)``.
    """
    if logp_reference is None:
        lam_t = torch.as_tensor(lam)
        if not bool((lam_t == 1).all()):
            raise ValueError("logp_reference is required when lam != 1")
        return logp_teacher.float()
    lam_t = torch.as_tensor(lam, dtype=torch.float32, device=logp_teacher.device)
    mixed = lam_t * logp_teacher.float() + (1.0 - lam_t) * logp_reference.float()  # (..., V)
    return torch.log_softmax(mixed, dim=-1)


def entropy_from_logp(logp: Tensor) -> Tensor:
    """Entropy of full log-distributions over the last dim."""
    return -(logp.exp() * logp).sum(-1)


def group_advantages(rewards: Tensor, group_size: int, *, scale_std: bool = True, eps: float = 1e-6) -> Tensor:
    """GRPO's group-relative advantages (Shao et al. 2024): ``(r - mean_g) / (std_g + eps)``.

    ``rewards`` ``(B,)`` with the ``group_size`` samples of each prompt adjacent. ``scale_std=False``
    keeps only the mean baseline (Dr. GRPO). A group whose rewards are all equal gets 0.
    """
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.float().view(-1, group_size)  # (G_count, G)
    centred = r - r.mean(-1, keepdim=True)
    if scale_std:
        centred = centred / (r.std(-1, unbiased=False, keepdim=True) + eps)
    return centred.view(-1)


def grpo_token_advantages(
    rewards: Tensor, group_size: int, mask: Tensor, *, scale_std: bool = True, eps: float = 1e-6
) -> Tensor:
    """GRPO's per-token credit: each completion's group-relative advantage (:func:`group_advantages`) on every
    one of its tokens, ``A_t = A`` for ``mask_t = 1`` and 0 past the completion (B, C) — the advantage that
    multiplies each sampled token's log-prob in GRPO's policy gradient. A verifier reward says *that* a
    completion was wrong, so every token of it gets the same credit; OPD's ``A_t`` says *which* token."""
    adv = group_advantages(rewards, group_size, scale_std=scale_std, eps=eps)  # (B,)
    return adv[:, None] * mask.float()  # (B, C)


def kl_k3(lp_student: Tensor, lp_reference: Tensor) -> Tensor:
    """Per-token estimator of ``KL(π_θ ‖ π_R)`` on samples from π_θ (Schulman's k3):
    ``exp(lp_R − lp_θ) − (lp_R − lp_θ) − 1`` (unbiased, always >= 0)."""
    d = lp_reference.detach() - lp_student
    return torch.exp(d) - d - 1.0


def sft_loss(lp: Tensor, mask: Tensor, weights: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
    """Negative log-likelihood of the target tokens, ``-Σ_t w_t·lp_t / N_tokens`` (``w = 1`` by default)."""
    nll = -lp if weights is None else -(weights.detach() * lp)
    loss = masked_mean(nll, mask)
    return loss, {"nll": float(masked_mean(-lp.detach(), mask))}


def chord_phi(lp: Tensor) -> Tensor:
    """CHORD's per-token SFT weight ``φ = p·(1 − p)`` with ``p = exp(lp)``, detached: it damps tokens the
    model already knows (p → 1) and tokens it finds hopeless (p → 0)."""
    p = lp.detach().exp()
    return p * (1.0 - p)
