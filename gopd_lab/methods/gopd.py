"""G-OPD (OPD at λ = 1, ExOPD at λ > 1): the teacher and the reference score the student's rollout, the
per-token advantage is ``A_t = λ·(log π_T − log π_R) − (log π_θ − log π_R)`` with λ chosen by ``lam_mode``
(docs/math.md, docs/lineage.md), and the loss is the configured estimator's (``gopd_lab.objectives``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gopd_lab.methods.method import Method, register_method
from gopd_lab.objectives import get_estimator, gopd_advantages, masked_mean
from gopd_lab.objectives.lineage import (
    LOSS_KINDS,
    agopd_lambda,
    entropy_split,
    reopd_budget,
    reopd_lambda,
    reopd_q,
    reward_gate,
)


@register_method
class GOPD(Method):
    name = "gopd"
    needs_teacher = True
    uses_lam = True

    def needs_reference(self, cfg) -> bool:
        return cfg.always_reference or any(lam != 1 for _, lam in cfg.lam_items())

    def signal(self, scored, lp_student: Tensor, settings, dist=None) -> Lineage:
        """G-OPD's ``A_t`` (detached, ``(B, C)``) with the λ each token used, the loss each token gets and λ's
        metrics; the update calls it on the whole batch or micro-batch by micro-batch (:func:`lineage_signal`)."""
        return lineage_signal(scored, lp_student, settings, dist)

    def advantages(self, scored, lp_student, settings):
        return self.signal(scored, lp_student, settings).advantages  # one path for A_t: the λ rule of lam_mode

    def loss(self, scored, out, advantages, weights, settings, lp_old):
        return get_estimator(settings.estimator).loss(out, scored, advantages, weights, settings, lp_old)


@dataclass
class Lineage:
    """What the λ rule chose for a batch: the advantages it gives, λ per token, which loss per token, metrics."""

    advantages: Tensor
    lam_t: Tensor
    kind: Tensor
    metrics: dict[str, float]


@torch.no_grad()
def lineage_signal(scored, lp_student: Tensor, s, dist=None) -> Lineage:
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
    m.update(lam_stats(lam_t, valid))
    return Lineage(adv, lam_t, kind, m)


def lam_stats(lam_t: Tensor, valid: Tensor) -> dict[str, float]:
    """``lam_mean``, ``lam_std``, ``lam_min``, ``lam_max`` of the λ the valid tokens used (empty without any)."""
    lam_valid = lam_t[valid]
    if not lam_valid.numel():
        return {}
    return {
        "lam_mean": float(lam_valid.mean()),
        "lam_std": float(lam_valid.std(unbiased=False)),
        "lam_min": float(lam_valid.min()),
        "lam_max": float(lam_valid.max()),
    }
