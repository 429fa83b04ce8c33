"""Stages 3 and 4: advantages and the optimizer step on a :class:`~gopd_lab.score.Scored` batch.

The advantage needs ``lp_student`` on the sampled tokens; strictly on-policy that is exactly the update's
own forward pass (detached), so no extra student pass is run: the forward happens, ``A_t`` is formed from
its detached log-probs, then the loss is built from the same forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .errors import NonFiniteError
from .lineage import (
    LOSS_KINDS,
    agopd_lambda,
    entropy_split,
    forward_kl,
    reopd_budget,
    reopd_lambda,
    reopd_q,
    reward_gate,
)
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
    lam_mode: str = "fixed"
    """How λ is chosen (``RunConfig.lam_mode``); the lineage's knobs follow (``RunConfig`` documents them)."""
    lineage: dict = field(default_factory=dict)
    """``reopd_tau``, ``reopd_gamma_max``, ``reopd_target``, ``reopd_ema``, ``agopd_rho``, ``agopd_lam_max``,
    ``entropy_threshold`` (the ``RunConfig`` fields of the same names)."""
    reopd_gamma: float | None = None
    """REOPD's batch budget γ_b after the last batch (the EMA's state; None before the first)."""

    @classmethod
    def from_config(cls, cfg) -> UpdateSettings:
        knobs = ("reopd_tau", "reopd_gamma_max", "reopd_target", "reopd_ema", "agopd_rho", "agopd_lam_max")
        lineage = {k: getattr(cfg, k) for k in (*knobs, "entropy_threshold")}
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
            cfg.lam_mode,
            lineage,
        )

    @property
    def needs_full(self) -> bool:
        return self.method == "gopd" and (self.estimator != "sampled" or self.lam_mode == "entropy")


@dataclass
class UpdateResult:
    """What the update saw: metrics, and the per-token values of its first forward (pre-step weights)."""

    metrics: dict[str, float]
    lp_student: Tensor
    advantages: Tensor
    lam_t: Tensor | None = None
    """``(B, C)`` the λ each token's G-OPD signal used (G-OPD / SDPO)."""
    loss_kind: Tensor | None = None
    """``(B, C)`` index into :data:`~gopd_lab.lineage.LOSS_KINDS`: which loss each token got."""


@dataclass
class Lineage:
    """What the λ rule chose for a batch: the advantages it gives, λ per token, which loss per token, metrics."""

    advantages: Tensor
    lam_t: Tensor
    kind: Tensor
    metrics: dict[str, float]


@torch.no_grad()
def lineage_signal(scored: Scored, lp_student: Tensor, s: UpdateSettings, dist=None) -> Lineage:
    """G-OPD's ``A_t`` with λ chosen by ``s.lam_mode`` (docs/lineage.md), from the detached ``lp_student``.

    ``fixed``: the sample's λ. ``reopd``: ``λ_t = 1 + γ_b·q_t`` (advances the budget's EMA, once per batch).
    ``agopd``: one λ for the batch. ``entropy``: ``A_t = 0`` where the teacher's entropy is above the threshold
    (those states get the forward KL in :func:`update`). ``gated``: ``A_t = 0`` on samples whose gate is closed.
    With ``dist`` (N processes) γ_b's mean q and A-G-OPD's sums of squares are taken over the global batch, so
    every process uses the same batch-level λ as one process on the whole batch would."""
    reduce = dist.sum_stats if dist is not None and dist.world > 1 else None
    mask = scored.rollout.completion_mask.float()  # (B, C)
    valid = mask.bool()
    k, m = s.lineage, {}
    lam = scored.lam  # (B,)
    if s.lam_mode == "reopd":
        q = reopd_q(scored.lp_teacher, lp_student, tau=k["reopd_tau"], mask=mask)  # (B, C)
        s.reopd_gamma, raw = reopd_budget(
            q,
            mask,
            target=k["reopd_target"],
            gamma_max=k["reopd_gamma_max"],
            ema=k["reopd_ema"],
            previous=s.reopd_gamma,
            reduce=reduce,
        )
        lam = reopd_lambda(scored.lp_teacher, lp_student, gamma=s.reopd_gamma, tau=k["reopd_tau"], mask=mask)
        m.update(reopd_gamma_b=s.reopd_gamma, reopd_gamma_raw=raw, reopd_q_mean=float(masked_mean(q, mask)))
    elif s.lam_mode == "agopd":
        lam_b = agopd_lambda(
            scored.lp_teacher,
            lp_student,
            scored.lp_reference,
            rho=k["agopd_rho"],
            lam_max=k["agopd_lam_max"],
            mask=mask,
            reduce=reduce,
        )
        lam = lam_b.expand(len(mask))  # (B,)
    adv = gopd_advantages(lp_student, scored.lp_teacher, scored.lp_reference, lam=lam, gamma=s.gamma, mask=mask)
    lam_t = (lam[:, None] if lam.ndim == 1 else lam).expand(mask.shape).float()  # (B, C)
    kind = torch.zeros(mask.shape, dtype=torch.long, device=mask.device)  # (B, C) 0 = reverse
    if s.lam_mode == "entropy":
        ent = scored.teacher_entropy if scored.teacher_entropy is not None else torch.zeros_like(mask)
        high = entropy_split(ent, threshold=k["entropy_threshold"], mask=mask)  # (B, C)
        adv = torch.where(high, torch.zeros_like(adv), adv)
        kind[high] = LOSS_KINDS.index("forward")
        m.update(
            entropy_high_frac=float(masked_mean(high.float(), mask)), teacher_entropy=float(masked_mean(ent, mask))
        )
    if s.lam_mode == "gated":
        gate, _ = reward_gate(scored.lp_teacher, lp_student, scored.rewards, mask=mask)  # (B,)
        adv = adv * gate[:, None]
        kind[valid & ~gate[:, None]] = LOSS_KINDS.index("gated")
        m["gate_rate"] = float(gate.float().mean())
    lam_valid = lam_t[valid]
    if lam_valid.numel():
        m.update(
            lam_mean=float(lam_valid.mean()),
            lam_std=float(lam_valid.std(unbiased=False)),
            lam_min=float(lam_valid.min()),
            lam_max=float(lam_valid.max()),
        )
    return Lineage(adv, lam_t, kind, m)


def advantages_for(scored: Scored, lp_student: Tensor, s: UpdateSettings) -> Tensor:
    """Per-token advantages ``(B, C)`` (detached) of the method: G-OPD's ``A_t``, GRPO's group-relative
    reward on every token of a sample, zeros for SFT."""
    mask = scored.rollout.completion_mask.float()
    if s.method == "gopd":  # one path for G-OPD's A_t: the λ rule of s.lam_mode
        return lineage_signal(scored, lp_student, s).advantages
    if s.method == "grpo":
        return group_advantages(scored.rewards, s.group_size, scale_std=s.scale_std)[:, None] * mask
    return torch.zeros_like(mask)


def compute_loss(
    scored: Scored, out, advantages: Tensor, s: UpdateSettings, lp_old: Tensor | None
) -> tuple[Tensor, dict]:
    """The method's loss from one student forward ``out`` (:class:`~gopd_lab.scoring.StudentOut`)."""
    mask = scored.rollout.completion_mask.float()  # (B, C)
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
    states = torch.ones(out.logp.shape[0], device=out.logp.device)  # (N,) every kept state is valid
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
    if s.method == "gopd" and s.estimator == "full" and scored.target is not None:
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
    lp_old = lineage = None
    for epoch in range(s.epochs):
        out = _forward(student, scored, s)
        lp_now = out.lp.detach()  # (B, C)
        if lp_old is None:
            lp_old = lp_now
            if s.method == "gopd":  # λ chosen once per batch, from the rollout's own log-probs
                lineage = lineage_signal(scored, lp_old, s, dist)
        advantages = lineage.advantages if lineage is not None else advantages_for(scored, lp_old, s)  # (B, C)
        loss, extra = compute_loss(scored, out, advantages, s, lp_old if epoch > 0 else None)
        if s.lam_mode == "entropy" and scored.fkl_index is not None:  # + Σ_high KL(π_T ‖ π_θ) / N_tokens
            fkl = forward_kl(scored.fkl_logp_teacher, out.logp[scored.fkl_index])  # (M,)
            loss = loss + fkl.sum() / mask.sum().clamp(min=1)
            extra["forward_kl"] = float(fkl.detach().mean()) if len(fkl) else 0.0
        loss = loss * _global_scale(mask, dist)
        if scored.expert is not None and s.mu > 0:
            loss, sft_extra = mix_expert_sft(
                student, loss, scored.expert, s, _global_scale(scored.expert.completion_mask, dist)
            )
            extra.update(sft_extra)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in student.parameters() if p.requires_grad]
        if dist is not None:
            dist.all_reduce_grads(params)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, s.max_grad_norm if s.max_grad_norm else float("inf"))
        _check_finite(loss, grad_norm, dist, epoch, s.epochs)
        optimizer.step()
        if first is None:
            first = UpdateResult(_metrics(scored, out, advantages, loss, grad_norm, extra), lp_now, advantages)
            if lineage is not None:
                first.metrics.update(lineage.metrics)
                first.lam_t, first.loss_kind = lineage.lam_t, lineage.kind
        elif s.epochs > 1:  # batch reuse: report how far the last epoch's policy moved from the rollout's
            first.metrics.update(clip_frac=extra.get("clip_frac", 0.0), approx_kl_old=extra.get("approx_kl_old", 0.0))
    optimizer.zero_grad(set_to_none=True)
    return first


def _check_finite(loss: Tensor, grad_norm: Tensor, dist, epoch: int = 0, epochs: int = 1) -> None:
    """Stop before a step that would write NaN/inf into the weights. The gradient norm is the same on every
    process (taken after the all-reduce), so all of them stop together; the local loss is checked alone. The
    message says which of the batch's ``epochs`` optimizer steps it was (earlier ones were taken)."""
    loss_value, norm = float(loss.detach()), float(grad_norm)  # as _metrics reads them (a DTensor norm under FSDP)
    if not math.isfinite(norm) or ((dist is None or dist.world == 1) and not math.isfinite(loss_value)):
        where = "" if epochs == 1 else f" in epoch {epoch + 1} of {epochs} over this batch"
        taken = (
            "before its optimizer step"
            if epoch == 0
            else f"before that epoch's optimizer step; the batch's first {epoch} optimizer step(s) were taken"
        )
        raise NonFiniteError(f"non-finite loss ({loss_value:g}) or gradient norm ({norm:g}){where}; stopped {taken}")


def expert_sft_loss(student: nn.Module, expert, s: UpdateSettings) -> tuple[Tensor, dict[str, float]]:
    """SFT on the expert batch, each token weighted by CHORD's ``φ = p(1 − p)`` (detached) when enabled."""
    out = student_forward(student, expert, chunk_tokens=s.chunk_tokens)
    mask = expert.completion_mask.float()
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
    """``n_local / n_global``: turns a local token mean into this process's share of the global one, so the
    gradients summed over processes are those of the global token mean."""
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
