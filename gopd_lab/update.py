"""Stages 3 and 4: advantages and the optimizer step on a :class:`~gopd_lab.score.Scored` batch.

The advantage needs ``lp_student`` on the sampled tokens; strictly on-policy that is exactly the update's
own forward pass (detached), so no extra student pass is run: the forward happens, ``A_t`` is formed from
its detached log-probs, then the loss is built from the same forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .objectives import (
    chord_phi,
    full_loss,
    gopd_advantages,
    group_advantages,
    jsd_loss,
    kl_k3,
    masked_mean,
    sampled_loss,
    sft_loss,
    topk_loss,
)
from .score import Scored
from .scoring import student_forward, student_kl_forward


@dataclass
class UpdateSettings:
    """The estimator knobs the update uses (a view of :class:`~gopd_lab.config.RunConfig`)."""

    method: str = "gopd"
    estimator: str = "sampled"
    gamma: float = 0.0
    clip_eps: float | None = None
    jsd_beta: float = 1.0
    epochs: int = 1
    max_grad_norm: float | None = 1.0
    chunk_tokens: int = 0
    group_size: int = 1
    kl_coef: float = 0.0
    scale_std: bool = True
    mu: float = 0.0
    """Weight of the SFT term on ``scored.expert`` this step: ``L = (1 − μ)·L + μ·L_SFT``."""
    phi_weighting: bool = True
    loss_agg: str = "token-mean"
    """``token-mean`` or ``seq-mean-token-mean`` (see :func:`loss_weights`)."""

    @classmethod
    def from_config(cls, cfg) -> UpdateSettings:
        return cls(
            cfg.rl_method,
            cfg.estimator,
            cfg.gamma,
            cfg.clip_eps,
            cfg.jsd_beta,
            cfg.epochs_per_batch,
            cfg.max_grad_norm,
            cfg.score_chunk_tokens,
            cfg.samples_per_prompt,
            cfg.kl_coef,
            cfg.grpo_scale_std,
            cfg.mu,
            cfg.phi_weighting,
            cfg.loss_agg,
        )

    @property
    def needs_full(self) -> bool:
        return self.method == "gopd" and self.estimator != "sampled"


@dataclass
class UpdateResult:
    """What the update saw: metrics, and the per-token values of its first forward (pre-step weights)."""

    metrics: dict[str, float]
    lp_student: Tensor
    advantages: Tensor


def loss_weights(mask: Tensor, loss_agg: str = "token-mean") -> Tensor:
    """Per-token weights ``(B, C)`` whose weighted mean (:func:`~gopd_lab.objectives.masked_mean`) is the loss.

    ``token-mean``: the mask itself, ``L = Σ_bt m·ℓ / Σ_bt m``. ``seq-mean-token-mean``: ``m_bt / Σ_t m_bt``
    (0 on empty rows), whose sum is the number ``B'`` of non-empty rows, so ``L = (1/B') Σ_b mean_t ℓ_bt``."""
    mask = mask.float()
    if loss_agg == "token-mean":
        return mask
    if loss_agg == "seq-mean-token-mean":
        return mask / mask.sum(-1, keepdim=True).clamp(min=1)
    raise ValueError(f"loss_agg must be token-mean or seq-mean-token-mean, got {loss_agg!r}")


def advantages_for(scored: Scored, lp_student: Tensor, s: UpdateSettings) -> Tensor:
    """Per-token advantages ``(B, C)`` (detached) of the method: G-OPD's ``A_t``, GRPO's group-relative
    reward on every token of a sample, zeros for SFT."""
    mask = scored.rollout.completion_mask.float()
    if s.method == "gopd":
        return gopd_advantages(
            lp_student, scored.lp_teacher, scored.lp_reference, lam=scored.lam, gamma=s.gamma, mask=mask
        )
    if s.method == "grpo":
        return group_advantages(scored.rewards, s.group_size, scale_std=s.scale_std)[:, None] * mask
    return torch.zeros_like(mask)


def compute_loss(
    scored: Scored, out, advantages: Tensor, s: UpdateSettings, lp_old: Tensor | None
) -> tuple[Tensor, dict]:
    """The method's loss from one student forward ``out`` (:class:`~gopd_lab.scoring.StudentOut`), its
    per-token terms aggregated by ``s.loss_agg``."""
    mask = loss_weights(scored.rollout.completion_mask, s.loss_agg)  # (B, C) token weights
    if s.method == "sft":
        return sft_loss(out.lp, mask)
    if s.method == "grpo":
        loss, extra = sampled_loss(out.lp, advantages, mask, lp_old=lp_old, clip_eps=s.clip_eps)
        if s.kl_coef > 0:
            kl = masked_mean(kl_k3(out.lp, scored.lp_reference), mask)  # KL(π_θ ‖ π_R) estimate
            loss = loss + s.kl_coef * kl
            extra["kl_reference"] = float(kl.detach())
        return loss, extra
    if s.estimator == "sampled":
        return sampled_loss(out.lp, advantages, mask, lp_old=lp_old, clip_eps=s.clip_eps)
    if out.kl_loss is not None:  # the fused full estimator (student_kl_forward): the same mean KL as full_loss
        return out.kl_loss, {"kl_to_target": float(out.kl_loss.detach())}
    states = mask[out.positions.b, out.positions.c]  # (N,) the weight of every kept state
    if s.estimator == "full":
        return full_loss(out.logp, scored.target, states)
    if s.estimator == "topk":
        lam_n = scored.lam[out.positions.b][:, None]  # (N, 1)
        return topk_loss(out.logp, scored.topk_index, scored.lp_teacher_topk, scored.lp_reference_topk, lam_n, states)
    if s.estimator == "jsd":
        return jsd_loss(out.logp, scored.target, states, s.jsd_beta)
    raise ValueError(f"unknown estimator {s.estimator!r}")


def _forward(student: nn.Module, scored: Scored, s: UpdateSettings):
    """The student forward the loss needs: fused head + KL for ``full`` (when the model allows), else chunked
    log-probs (with full distributions for ``topk``/``jsd``)."""
    fused_ok = s.loss_agg == "token-mean"  # the fused KL returns the plain token mean
    if s.method == "gopd" and s.estimator == "full" and scored.target is not None and fused_ok:
        out = student_kl_forward(student, scored.rollout, scored.target, chunk_tokens=s.chunk_tokens)
        if out is not None:
            return out
    return student_forward(student, scored.rollout, full=s.needs_full, chunk_tokens=s.chunk_tokens)


def update(
    student: nn.Module, optimizer: torch.optim.Optimizer, scored: Scored, s: UpdateSettings, dist=None
) -> UpdateResult:
    """One optimizer step per epoch over the batch; metrics from the first (pre-step) forward.

    With ``dist`` (:class:`~gopd_lab.distributed.Distributed`, N processes) each loss is rescaled from a
    local to a global token mean and gradients are summed over processes before clipping, so the step
    equals a one-process step on the global batch."""
    rollout = scored.rollout
    mask = rollout.completion_mask.float()  # (B, C)
    student.train()
    first: UpdateResult | None = None
    lp_old = None
    for epoch in range(s.epochs):
        out = _forward(student, scored, s)
        lp_now = out.lp.detach()  # (B, C)
        if lp_old is None:
            lp_old = lp_now
        advantages = advantages_for(scored, lp_old, s)  # (B, C), detached
        loss, extra = compute_loss(scored, out, advantages, s, lp_old if epoch > 0 else None)
        loss = loss * _global_scale(loss_weights(mask, s.loss_agg), dist)
        if scored.expert is not None and s.mu > 0:
            expert_weights = loss_weights(scored.expert.completion_mask, s.loss_agg)
            loss, sft_extra = mix_expert_sft(student, loss, scored.expert, s, _global_scale(expert_weights, dist))
            extra.update(sft_extra)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in student.parameters() if p.requires_grad]
        if dist is not None:
            dist.all_reduce_grads(params)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm if s.max_grad_norm else float("inf"))
        optimizer.step()
        if first is None:
            first = UpdateResult(_metrics(scored, out, advantages, loss, grad_norm, extra), lp_now, advantages)
        elif s.epochs > 1:  # batch reuse: report how far the last epoch's policy moved from the rollout's
            first.metrics.update(clip_frac=extra.get("clip_frac", 0.0), approx_kl_old=extra.get("approx_kl_old", 0.0))
    optimizer.zero_grad(set_to_none=True)
    return first


def expert_sft_loss(student: nn.Module, expert, s: UpdateSettings) -> tuple[Tensor, dict[str, float]]:
    """SFT on the expert batch, each token weighted by CHORD's ``φ = p(1 − p)`` (detached) when enabled."""
    out = student_forward(student, expert, chunk_tokens=s.chunk_tokens)
    mask = loss_weights(expert.completion_mask, s.loss_agg)
    weights = chord_phi(out.lp) if s.phi_weighting else None
    return sft_loss(out.lp, mask, weights)


def mix_expert_sft(
    student: nn.Module, loss: Tensor, expert, s: UpdateSettings, scale: float = 1.0
) -> tuple[Tensor, dict[str, float]]:
    """``(1 − μ)·loss + μ·L_SFT`` (CHORD, Zhang et al. arXiv 2508.11408; also OPD + expert data)."""
    sft, extra = expert_sft_loss(student, expert, s)
    return (1.0 - s.mu) * loss + s.mu * sft * scale, {
        "mu": s.mu,
        "sft_loss": float(sft.detach()),
        "expert_nll": extra["nll"],
    }


def _global_scale(mask: Tensor, dist) -> float:
    """``n_local / n_global`` of the summed loss weights (tokens for ``token-mean``, non-empty rows for
    ``seq-mean-token-mean``): turns a local weighted mean into this process's share of the global one, so the
    gradients summed over processes are those of the global mean."""
    if dist is None or dist.world == 1:
        return 1.0
    n_local = float(mask.sum())
    return n_local / max(dist.sum(n_local), 1.0)


@torch.no_grad()
def _metrics(scored: Scored, out, advantages: Tensor, loss: Tensor, grad_norm: Tensor, extra: dict) -> dict[str, float]:
    mask = scored.rollout.completion_mask.float()
    lp = out.lp.detach()
    adv_mean = masked_mean(advantages, mask)
    adv_var = masked_mean((advantages - adv_mean) ** 2, mask)
    m = {
        "loss": float(loss.detach()),
        "adv_mean": float(adv_mean),
        "adv_std": float(adv_var.sqrt()),
        "lp_student_mean": float(masked_mean(lp, mask)),
        "entropy": float(masked_mean(out.entropy, mask)),
        "grad_norm": float(grad_norm),
        "clip_frac": float(extra.get("clip_frac", 0.0)),
        "tokens": int(mask.sum()),
        "completion_len": float(mask.sum(1).mean()),
    }
    m.update({k: v for k, v in extra.items() if k not in m})
    m.update(scored.extra)
    if scored.lp_teacher is not None:
        m["lp_teacher_mean"] = float(masked_mean(scored.lp_teacher, mask))
        m["reverse_kl"] = float(masked_mean(lp - scored.lp_teacher, mask))
        if scored.lp_reference is not None:
            reward = scored.lp_teacher - scored.lp_reference  # NaN on rows at λ = 1 (reference not run)
            m["reward_mean"] = float(masked_mean(reward, mask * torch.isfinite(reward)))
    if scored.rewards is not None:
        m["score_mean"] = float(scored.rewards.float().mean())
        if scored.lp_teacher is None:  # GRPO / CHORD: the verifier's score is the RL reward
            m["reward_mean"] = m["score_mean"]
    return m
