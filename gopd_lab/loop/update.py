"""Stages 3 and 4: advantages and the optimizer step on a :class:`~gopd_lab.scorers.score.Scored` batch.

The advantage needs ``lp_student`` on the sampled tokens; strictly on-policy that is exactly the update's
own forward pass (detached), so no extra student pass is run: the forward happens, ``A_t`` is formed from
its detached log-probs, then the loss is built from the same forward.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gopd_lab.config import ConfigError, RunConfig
from gopd_lab.errors import NonFiniteError
from gopd_lab.lm.logprobs import StudentOut, student_forward, student_kl_forward
from gopd_lab.lm.precision import autocast
from gopd_lab.methods import get_method
from gopd_lab.methods.method import Objective
from gopd_lab.objectives import chord_phi, get_estimator, masked_mean, sft_loss
from gopd_lab.scorers.score import Scored


def needs_full(cfg) -> bool:
    """Whether the student's forward returns full per-state log-distributions: G-OPD's per-state estimators
    (``full``, ``topk``, ``jsd``) and the forward KL of ``lam_mode='entropy'``."""
    uses_lam = get_method(cfg.method).uses_lam
    return uses_lam and (get_estimator(cfg.estimator).student_full or cfg.lam_mode == "entropy")


@dataclass
class UpdateResult:
    """What the update saw: metrics, and the per-token values of its first forward (pre-step weights)."""

    metrics: dict[str, float]
    lp_student: Tensor
    advantages: Tensor
    lam_t: Tensor | None = None
    """``(B, C)`` the λ each token's G-OPD signal used (G-OPD / SDPO)."""
    loss_kind: Tensor | None = None
    """``(B, C)`` index into :data:`~gopd_lab.objectives.lineage.LOSS_KINDS`: which loss each token got."""


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


def _forward(student: nn.Module, scored: Scored, cfg: RunConfig):
    """The student forward the loss needs: fused head + KL for ``full`` (when the model allows), else chunked
    log-probs (with full distributions for ``topk``/``jsd``)."""
    chunk = cfg.score_chunk_tokens
    fused_ok = cfg.loss_agg == "token-mean"  # the fused KL returns the plain token mean
    uses_lam = get_method(cfg.method).uses_lam
    if uses_lam and get_estimator(cfg.estimator).fused_kl and scored.target is not None and fused_ok:
        out = student_kl_forward(student, scored.rollout, scored.target, chunk_tokens=chunk)
        if out is not None:
            return out
    return student_forward(student, scored.rollout, full=needs_full(cfg), chunk_tokens=chunk)


def enable_gradient_checkpointing(student: nn.Module) -> None:
    """Recompute the student's decoder layers in backward (``RunConfig.gradient_checkpointing``): activations
    of one layer at a time instead of all of them, for about one more forward of compute. Non-reentrant
    checkpointing: the values and gradients are those of the plain forward."""
    enable = getattr(student, "activation_checkpointing_enable", None)  # transformers >= 5.x's name
    if enable is not None:
        enable(activation_checkpointing_kwargs={"use_reentrant": False})
        return
    enable = getattr(student, "gradient_checkpointing_enable", None)
    if enable is None:
        raise ConfigError(
            f"gradient_checkpointing=True needs a Hugging Face student (gradient_checkpointing_enable); "
            f"{type(student).__name__} has none: set gradient_checkpointing=False"
        )
    enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def micro_batches(n: int, size: int) -> list[tuple[int, int]]:
    """``[(start, stop)]`` row ranges of at most ``size`` rows (``size`` 0 = one range over all ``n`` rows)."""
    size = size if size > 0 else max(n, 1)
    return [(i, min(i + size, n)) for i in range(0, max(n, 1), size)]


def update(
    student: nn.Module,
    optimizer: torch.optim.Optimizer,
    scored: Scored,
    cfg: RunConfig,
    dist=None,
    *,
    objective: Objective | None = None,
    mu: float | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> UpdateResult:
    """One optimizer step per each of ``cfg.epochs_per_batch`` epochs over the batch; metrics from the first
    (pre-step) forward. It reads the run's config itself (``cfg``: the estimator, ``loss_agg``,
    ``micro_batch_size``, ``max_grad_norm``, ``mu``, ``phi_weighting``, ``score_chunk_tokens``).

    ``objective`` (:class:`~gopd_lab.methods.method.Objective`) gives each micro-batch's ``A_t`` and loss; None =
    the method's (:meth:`~gopd_lab.methods.method.Method.objective`) without state (REOPD's budget then starts
    afresh: a recipe passes the run's). ``mu`` is this step's weight of the SFT term on ``scored.expert``
    (CHORD's schedule, ``mu_at``); None = ``cfg.mu``.

    The batch runs ``cfg.micro_batch_size`` rows per forward/backward (0 = all at once). Each micro-batch's
    loss is a token mean over its own rows, so it is weighted by ``n_micro / n_batch`` before backward: the
    accumulated gradient is that of the whole batch's token mean, and the step equals the one-pass step.
    With ``dist`` (:class:`~gopd_lab.scale.distributed.Distributed`, N processes) ``n_batch`` is the global token
    count and gradients are summed over processes before clipping, so the step equals a one-process step on
    the global batch. With ``autocast_dtype`` (the run's mixed precision) the forward and backward run under ``torch.autocast``
    (float32 weights, gradients and optimizer state; log-probs, losses and metrics stay float32)."""
    rollout = scored.rollout
    mask = rollout.completion_mask.float()  # (B, C)
    weights = loss_weights(mask, cfg.loss_agg)  # (B, C) each token's share of the loss (cfg.loss_agg)
    n_batch = _global_tokens(weights, dist)  # the global sum of the weights: tokens, or non-empty rows
    parts = micro_batches(len(rollout), cfg.micro_batch_size)
    objective = objective if objective is not None else get_method(cfg.method).objective(scored, cfg, dist)
    mu = cfg.mu if mu is None else mu
    epochs, amp = cfg.epochs_per_batch, autocast_dtype
    student.train()
    first: UpdateResult | None = None
    lp_old = None
    if objective.whole_batch and len(parts) > 1:  # the rule needs every row's log-probs before the first backward
        lp_old = _rollout_logprobs(student, scored, parts, cfg, amp)  # (B, C)
        objective.prepare(lp_old)
    for epoch in range(epochs):
        optimizer.zero_grad(set_to_none=True)
        lps, ents, advs, total, extra = [], [], [], 0.0, {}
        for start, stop in parts:
            part = scored.rows(start, stop) if len(parts) > 1 else scored
            with autocast(amp, mask.device):
                out = _forward(student, part, cfg)
            old = lp_old[start:stop] if lp_old is not None else out.lp.detach()  # (b, C)
            part_weights = loss_weights(part.rollout.completion_mask, cfg.loss_agg)  # (b, C) = weights[start:stop]
            loss, adv, part_extra = objective(
                part, slice(start, stop), out, old, old if epoch > 0 else None, part_weights
            )
            n_part = float(weights[start:stop].sum())
            weight = n_part / n_batch * (1.0 - mu if _mixes_expert(scored, mu) else 1.0)
            (loss.float() * weight).backward()
            total += float(loss.detach()) * weight
            _accumulate(extra, part_extra, n_part)
            lps.append(out.lp.detach())
            ents.append(out.entropy.detach())
            advs.append(adv)
        n_local = float(weights.sum())
        extra = {k: v / max(n_local, 1e-12) for k, v in extra.items()}
        extra.update(objective.end_epoch())
        if _mixes_expert(scored, mu):
            sft_total, sft_extra = expert_sft_backward(student, scored.expert, cfg, dist, mu=mu, autocast_dtype=amp)
            total += sft_total
            extra.update(sft_extra)
        params = [p for p in student.parameters() if p.requires_grad]
        if dist is not None:
            dist.all_reduce_grads(params)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm if cfg.max_grad_norm else float("inf"))
        _check_finite(total, grad_norm, dist, epoch, epochs)
        optimizer.step()
        lp_now = torch.cat(lps)  # (B, C)
        if lp_old is None:
            lp_old = lp_now
        if first is None:
            advantages = torch.cat(advs)
            out_all = StudentOut(lp=lp_now, logp=None, entropy=torch.cat(ents), positions=None)
            first = UpdateResult(_metrics(scored, out_all, advantages, total, grad_norm, extra), lp_now, advantages)
            lineage = objective.record()
            if lineage is not None:
                first.metrics.update(lineage.metrics)
                first.lam_t, first.loss_kind = lineage.lam_t, lineage.kind
        elif epochs > 1:  # batch reuse: report how far the last epoch's policy moved from the rollout's
            first.metrics.update(clip_frac=extra.get("clip_frac", 0.0), approx_kl_old=extra.get("approx_kl_old", 0.0))
    optimizer.zero_grad(set_to_none=True)
    return first


@torch.no_grad()
def _rollout_logprobs(
    student: nn.Module, scored: Scored, parts: list[tuple[int, int]], cfg: RunConfig, amp: torch.dtype | None
) -> Tensor:
    """``(B, C)`` the student's log-probs on the rollout, micro-batch by micro-batch, without gradients: what
    a whole-batch λ rule reads before the first backward (one extra forward when the batch is split)."""
    lps = []
    for start, stop in parts:
        with autocast(amp, scored.rollout.completion_mask.device):
            rows = scored.rollout.select(range(start, stop))
            out = student_forward(student, rows, chunk_tokens=cfg.score_chunk_tokens)
        lps.append(out.lp.float())
    return torch.cat(lps)


def _check_finite(loss: float, grad_norm: Tensor, dist, epoch: int = 0, epochs: int = 1) -> None:
    """Stop before a step that would write NaN/inf into the weights. The gradient norm is the same on every
    process (taken after the all-reduce), so all of them stop together; the local loss is checked alone. The
    message says which of the batch's ``epochs`` optimizer steps it was (earlier ones were taken)."""
    loss_value, norm = float(loss), float(grad_norm)  # as _metrics reads them (a DTensor norm under FSDP)
    if not math.isfinite(norm) or ((dist is None or dist.world == 1) and not math.isfinite(loss_value)):
        where = "" if epochs == 1 else f" in epoch {epoch + 1} of {epochs} over this batch"
        taken = (
            "before its optimizer step"
            if epoch == 0
            else f"before that epoch's optimizer step; the batch's first {epoch} optimizer step(s) were taken"
        )
        raise NonFiniteError(f"non-finite loss ({loss_value:g}) or gradient norm ({norm:g}){where}; stopped {taken}")


def _mixes_expert(scored: Scored, mu: float) -> bool:
    return scored.expert is not None and mu > 0


def _accumulate(into: dict[str, float], extra: dict[str, float], n: float) -> None:
    """Token-weighted sums of a micro-batch's metrics (each a token mean over the micro-batch)."""
    for key, value in extra.items():
        into[key] = into.get(key, 0.0) + float(value) * n


def expert_sft_backward(
    student: nn.Module,
    expert,
    cfg: RunConfig,
    dist=None,
    *,
    mu: float | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[float, dict[str, float]]:
    """Backward of ``μ·L_SFT`` on the expert batch (``mu``, else ``cfg.mu``), micro-batched like the update;
    returns its value (the share of this process) and its metrics."""
    mu = cfg.mu if mu is None else mu
    mask = loss_weights(expert.completion_mask, cfg.loss_agg)  # (B, C) each token's share (cfg.loss_agg)
    n_batch = _global_tokens(mask, dist)
    total, extra = 0.0, {}
    for start, stop in micro_batches(len(expert), cfg.micro_batch_size):
        part = expert.select(range(start, stop)) if stop - start < len(expert) else expert
        with autocast(autocast_dtype, mask.device):
            sft, part_extra = expert_sft_loss(student, part, cfg)
        n_part = float(mask[start:stop].sum())
        weight = mu * n_part / n_batch
        (sft.float() * weight).backward()
        total += float(sft.detach()) * weight
        _accumulate(extra, {"sft_loss": float(sft.detach()), "expert_nll": part_extra["nll"]}, n_part)
    n_local = max(float(mask.sum()), 1e-12)
    return total, {"mu": mu, **{k: v / n_local for k, v in extra.items()}}


def expert_sft_loss(student: nn.Module, expert, cfg: RunConfig) -> tuple[Tensor, dict[str, float]]:
    """SFT on the expert batch (CHORD, Zhang et al. arXiv 2508.11408), each token weighted by CHORD's
    ``φ = p(1 − p)`` (detached) when ``cfg.phi_weighting``; the update mixes it as ``(1 − μ)·L + μ·L_SFT``."""
    out = student_forward(student, expert, chunk_tokens=cfg.score_chunk_tokens)
    mask = loss_weights(expert.completion_mask, cfg.loss_agg)
    weights = chord_phi(out.lp) if cfg.phi_weighting else None
    return sft_loss(out.lp, mask, weights)


def _global_tokens(mask: Tensor, dist) -> float:
    """The batch's valid tokens over every process (this process's alone without ``dist``), at least 1: the
    denominator that turns each micro-batch's token mean into its share of the global token mean."""
    n_local = float(mask.sum())
    if dist is None or dist.world == 1:
        return max(n_local, 1.0)
    return max(dist.sum(n_local), 1.0)


@torch.no_grad()
def _metrics(scored: Scored, out, advantages: Tensor, loss: float, grad_norm: Tensor, extra: dict) -> dict[str, float]:
    mask = scored.rollout.completion_mask.float()
    lp = out.lp.detach()
    adv_mean = masked_mean(advantages, mask)
    adv_var = masked_mean((advantages - adv_mean) ** 2, mask)
    m = {
        "loss": float(loss),
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
