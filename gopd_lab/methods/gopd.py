"""G-OPD (OPD at λ = 1, ExOPD at λ > 1): the teacher and the reference score the student's rollout, the
per-token advantage is ``A_t = λ·(log π_T − log π_R) − (log π_θ − log π_R)`` with λ chosen by ``lam_mode``
(docs/math.md, docs/lineage.md), and the loss is the configured estimator's (``gopd_lab.objectives``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from gopd_lab.methods.method import Method, Objective, register_method
from gopd_lab.objectives import LossInput, get_estimator, gopd_advantages, masked_mean
from gopd_lab.objectives.lineage import (
    LOSS_KINDS,
    agopd_lambda,
    entropy_split,
    forward_kl,
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
        ramps = cfg.lam_schedule != "constant" and cfg.lam_start != 1  # λ ≠ 1 during the ramp
        return cfg.always_reference or ramps or any(lam != 1 for _, lam in cfg.lam_items())

    def step(self, ctx, batch):
        """One G-OPD step (docs/architecture.md, "the loop on one screen"); the loss is :class:`GOPDObjective`."""
        rollout = ctx.sample(batch)  # stage 1: the student samples completions (B, C) of the batch's prompts
        scored = ctx.score(rollout)  # stage 2: lp_teacher, lp_reference (B, C), λ (B,) by domain and lam_schedule
        objective = self.objective(scored, ctx.cfg, ctx.dist, ctx.state)  # stage 3: A_t and the estimator's loss
        return ctx.update(scored, objective)  # stage 4: micro-batches → backward → all-reduce → clip → step

    def new_state(self, cfg, metrics_rows: list[dict]) -> LamState:
        """The λ rule's state; a resumed REOPD run continues its budget from the last logged ``reopd_gamma_b``."""
        resumed = metrics_rows[-1].get("reopd_gamma_b") if cfg.lam_mode == "reopd" and metrics_rows else None
        return LamState(reopd_gamma=resumed)

    def objective(self, scored, cfg, dist=None, state: LamState | None = None) -> GOPDObjective:
        return GOPDObjective(self, scored, cfg, dist, state)

    def signal(self, scored, lp_student: Tensor, cfg, dist=None, state: LamState | None = None) -> Lineage:
        """G-OPD's ``A_t`` (detached, ``(B, C)``) with the λ each token used, the loss each token gets and λ's
        metrics; the update calls it on the whole batch or micro-batch by micro-batch (:func:`lineage_signal`).
        ``state``: what the λ rule carries from batch to batch (advanced in place)."""
        return lineage_signal(scored, lp_student, cfg, dist, state)

    def advantages(self, scored, lp_student, cfg):
        return self.signal(scored, lp_student, cfg).advantages  # one path for A_t: the λ rule of lam_mode

    def loss(self, x: LossInput):
        return get_estimator(x.cfg.estimator).loss(x)


class GOPDObjective(Objective):
    """G-OPD's loss of one batch, micro-batch by micro-batch: ``A_t`` by the λ rule of ``lam_mode`` from the
    forward's detached log-probs (on-policy: ``lp_θ_old = lp_θ``), then the configured estimator's loss, plus the
    forward KL on the high-entropy states of ``lam_mode='entropy'``. ``fixed`` λ is applied part by part; the
    other rules choose λ once per batch (from every row when the batch is split, :meth:`prepare`), and later
    epochs reuse the first epoch's ``A_t``."""

    def __init__(self, method: GOPD, scored, cfg, dist=None, state: LamState | None = None):
        self.method, self.scored, self.cfg, self.dist, self.state = method, scored, cfg, dist, state
        self.whole_batch = cfg.lam_mode != "fixed"  # λ from statistics of the whole batch
        self.lineage: Lineage | None = None  # the batch's A_t, λ per token and loss kinds, once known
        self.signals: list[Lineage] = []  # fixed λ: the parts' signals of the first epoch
        self.fkl_sum, self.fkl_states = 0.0, 0

    def prepare(self, lp_student: Tensor) -> None:
        self.lineage = self.method.signal(self.scored, lp_student, self.cfg, self.dist, self.state)

    def __call__(self, part, rows, out, lp_student, lp_old, weights):
        s = self.cfg
        if self.lineage is not None:  # λ chosen once for the batch (or A_t of the first epoch)
            A_t = self.lineage.advantages[rows]  # (b, C)
        elif self.whole_batch:  # one part: it is the whole batch
            self.lineage = self.method.signal(self.scored, lp_student, s, self.dist, self.state)
            A_t = self.lineage.advantages  # (B, C)
        else:  # fixed λ: per token, part by part
            self.signals.append(self.method.signal(part, lp_student, s, state=self.state))
            A_t = self.signals[-1].advantages  # (b, C)
        loss, metrics = self.method.loss(LossInput(out, part, A_t, weights, s, lp_old))  # the estimator's loss
        if s.lam_mode == "entropy" and part.fkl_index is not None:  # + Σ_high w·KL(π_T ‖ π_θ) / Σ w
            fkl = forward_kl(part.fkl_logp_teacher, out.logp[part.fkl_index])  # (M,)
            w_states = weights[part.rollout.completion_mask.bool()][part.fkl_index]  # (M,) row-major states
            loss = loss + (w_states * fkl).sum() / max(float(weights.sum()), 1e-12)
            self.fkl_sum, self.fkl_states = self.fkl_sum + float(fkl.detach().sum()), self.fkl_states + len(fkl)
        return loss, A_t, metrics

    def end_epoch(self) -> dict[str, float]:
        if self.signals and self.lineage is None:  # fixed λ computed part by part: one record for the batch
            lam_t = torch.cat([sig.lam_t for sig in self.signals])  # (B, C)
            kind = torch.cat([sig.kind for sig in self.signals])  # (B, C)
            advantages = torch.cat([sig.advantages for sig in self.signals])  # (B, C)
            mask = self.scored.rollout.completion_mask.bool()
            self.lineage = Lineage(advantages, lam_t, kind, lam_stats(lam_t, mask))
        metrics = {}
        if self.cfg.lam_mode == "entropy":
            metrics["forward_kl"] = self.fkl_sum / max(self.fkl_states, 1)
        self.fkl_sum, self.fkl_states = 0.0, 0
        return metrics

    def record(self) -> Lineage | None:
        return self.lineage


@dataclass
class LamState:
    """What G-OPD's λ rule carries from one batch to the next; the recipe owns one per run (``StepContext.state``,
    from :meth:`GOPD.new_state`) and passes it to :func:`lineage_signal`, which advances it."""

    reopd_gamma: float | None = None
    """REOPD's batch budget γ_b after the last batch (the EMA's state; None before the first)."""


@dataclass
class Lineage:
    """What the λ rule chose for a batch: the advantages it gives, λ per token, which loss per token, metrics."""

    advantages: Tensor
    lam_t: Tensor
    kind: Tensor
    metrics: dict[str, float]


@torch.no_grad()
def lineage_signal(scored, lp_student: Tensor, cfg, dist=None, state: LamState | None = None) -> Lineage:
    """G-OPD's ``A_t`` with λ chosen by ``cfg.lam_mode`` (docs/lineage.md), from the detached ``lp_student``; the λ
    of ``fixed`` is the one scoring applied (``scored.lam``, :meth:`~gopd_lab.loop.step.StepContext.score`).

    ``fixed``: the sample's λ. ``reopd``: ``λ_t = 1 + γ_b·q_t`` (advances the budget's EMA in ``state``, once per
    batch; without ``state`` the budget starts afresh).
    ``agopd``: one λ for the batch. ``entropy``: ``A_t = 0`` where the teacher's entropy is above the threshold
    (those states get the forward KL in :func:`update`). ``gated``: ``A_t = 0`` on samples whose gate is closed.
    With ``dist`` (N processes) γ_b's mean q and A-G-OPD's sums of squares are taken over the global batch, so
    every process uses the same batch-level λ as one process on the whole batch would."""
    reduce = dist.sum_stats if dist is not None and dist.world > 1 else None
    mask = scored.rollout.completion_mask.float()  # (B, C)
    valid = mask.bool()
    s, m = cfg, {}
    lam = scored.lam  # (B,)
    if s.lam_mode == "reopd":
        q = reopd_q(scored.lp_teacher, lp_student, tau=s.reopd_tau, mask=mask)  # (B, C)
        gamma, raw = reopd_budget(
            q,
            mask,
            target=s.reopd_target,
            gamma_max=s.reopd_gamma_max,
            ema=s.reopd_ema,
            previous=state.reopd_gamma if state is not None else None,
            reduce=reduce,
        )
        if state is not None:
            state.reopd_gamma = gamma
        lam = reopd_lambda(scored.lp_teacher, lp_student, gamma=gamma, tau=s.reopd_tau, mask=mask)
        m.update(reopd_gamma_b=gamma, reopd_gamma_raw=raw, reopd_q_mean=float(masked_mean(q, mask)))
    elif s.lam_mode == "agopd":
        lam_b = agopd_lambda(
            scored.lp_teacher,
            lp_student,
            scored.lp_reference,
            rho=s.agopd_rho,
            lam_max=s.agopd_lam_max,
            mask=mask,
            reduce=reduce,
        )
        lam = lam_b.expand(len(mask))  # (B,)
    adv = gopd_advantages(lp_student, scored.lp_teacher, scored.lp_reference, lam=lam, gamma=s.gamma, mask=mask)
    lam_t = (lam[:, None] if lam.ndim == 1 else lam).expand(mask.shape).float()  # (B, C)
    kind = torch.zeros(mask.shape, dtype=torch.long, device=mask.device)  # (B, C) 0 = reverse
    if s.lam_mode == "entropy":
        ent = scored.teacher_entropy if scored.teacher_entropy is not None else torch.zeros_like(mask)
        high = entropy_split(ent, threshold=s.entropy_threshold, mask=mask)  # (B, C)
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
