"""What a method's step runs on: :class:`StepContext` puts the stages behind one call each, with the plumbing
(FSDP gathering, autocast, timing, CHORD's expert batch and μ, the non-finite stop) out of the recipe's way.

A recipe (``gopd_lab.methods``) reads ``rollout = ctx.sample(batch, policy=...)`` → ``scored = ctx.score(rollout,
lam=...)`` → ``ctx.update(scored, objective)``; the loop (:func:`gopd_lab.loop.train.train`) makes one context per
run and one :class:`Batch` per step, calls ``method.step(ctx, batch)`` and logs ``ctx.times``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gopd_lab.config import ConfigError, RunConfig
from gopd_lab.errors import NonFiniteError
from gopd_lab.lm.precision import autocast
from gopd_lab.lm.rollout import Rollout
from gopd_lab.loop.checkpoint import latest_checkpoint
from gopd_lab.loop.collect import Collector
from gopd_lab.loop.schedules import lam_at, mu_at
from gopd_lab.loop.update import UpdateResult, update
from gopd_lab.methods.method import Objective
from gopd_lab.scorers.score import Scored

POLICIES = ("student", "teacher", "expert")
"""Who makes a step's batch (:meth:`StepContext.sample`); a number in [0, 1] mixes the first two."""


@dataclass
class Batch:
    """One step's share of the data on this process: what it indexes and how each row is seeded."""

    step: int
    """The step about to run (0-based)."""
    index: list[int]
    """Rows of the step on this process: prompt indices (repeated ``samples_per_prompt`` times), or expert examples."""
    row_seeds: list[int] | None = None
    """The sampling seed of each row (row-seeded sampling, several processes, vLLM), else None."""


@dataclass
class StepContext:
    """The stages of one step, each one call, for a run's config, student, collector and optimizer."""

    cfg: RunConfig
    collector: Collector
    student: torch.nn.Module
    optimizer: torch.optim.Optimizer
    dist: object
    """The run's :class:`~gopd_lab.scale.distributed.Distributed`."""
    out: Path
    times: dict[str, float] = field(default_factory=dict)
    """``perf_counter`` marks of the step: ``start``, then after ``rollout`` and ``score`` (the loop adds ``update``)."""
    step: int = 0
    """The step running now (0-based)."""
    mu: float | None = None
    """This step's μ of the SFT term (CHORD's schedule); None without one."""
    scored: Scored | None = None
    """The batch the last update ran on (the loop logs its samples)."""
    state: object = None
    """What the method carries from step to step (:meth:`~gopd_lab.methods.method.Method.new_state`; G-OPD's
    :class:`~gopd_lab.methods.gopd.LamState`), passed to its objective."""

    # ------------------------------------------------------------------ stage 1
    def sample(self, batch: Batch, policy: str | float = "student") -> Rollout:
        """The batch's completions: ``"student"`` samples them (on-policy; under FSDP on the gathered student),
        ``"teacher"`` has each row's teacher sample them (off-policy), ``"expert"`` takes the batch's expert
        answers teacher-forced (SFT: nothing is sampled), and a number ``p`` in [0, 1] lets the teacher sample a
        share ``p`` of the rows (drawn per row from ``(seed, step)``) and the student the others."""
        self.step = batch.step
        if isinstance(policy, (int, float)) and not isinstance(policy, bool):
            if not 0.0 <= policy <= 1.0:
                raise ConfigError(f"policy as a number is the teacher's share of the rows, in [0, 1]; got {policy}")
            draw = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + batch.step + 104_729)
            by_teacher = (torch.rand(len(batch.index), generator=draw) < policy).tolist()
        elif policy in POLICIES:
            by_teacher = [policy == "teacher"] * len(batch.index)
        else:
            raise ConfigError(f"policy must be one of {POLICIES} or the teacher's share in [0, 1], got {policy!r}")

        def make() -> Rollout:
            if policy == "expert":
                return self.collector.expert_batch(batch.index)
            return self.collector.sample(batch.index, batch.row_seeds, teacher_rows=by_teacher)

        return self._stage1(make, gather=policy != "expert" and not all(by_teacher))

    def _stage1(self, make, gather: bool) -> Rollout:
        models = self.collector.models
        self.times.clear()
        self.times["start"] = time.perf_counter()
        with self.dist.full_params(self.student, when=gather), autocast(models.autocast_dtype, models.device):
            rollout = make()
        self._mark("rollout")
        return rollout

    # ------------------------------------------------------------------ stage 2
    def lam(self, step: int | None = None) -> float | dict[str, float]:
        """λ at ``step`` (default: this step) by the run's ``lam`` and ``lam_schedule`` (one float or by domain)."""
        cfg = self.cfg
        step = self.step if step is None else step
        return lam_at(step, cfg.lam, schedule=cfg.lam_schedule, start=cfg.lam_start, warmup=cfg.lam_warmup_steps)

    def score(
        self, rollout: Rollout, *, lam: float | dict[str, float] | None = None, self_teacher: bool = False
    ) -> Scored:
        """G-OPD's scores: each row's teacher and (where λ ≠ 1) reference on the rollout's tokens, with λ applied
        here, before any target is formed (``full``'s mixed target, ``scored.lam``): ``lam`` one float or
        ``{domain: λ}``, default :meth:`lam` (the config's, along ``lam_schedule``). ``self_teacher``: the teacher
        is the student re-prompted with the verifier's feedback (SDPO)."""
        lam = self.lam() if lam is None else lam
        if (
            any(v != 1 for v in (lam.values() if isinstance(lam, dict) else [lam]))
            and not self.collector.models.references
        ):
            raise ConfigError(
                f"ctx.score(lam={lam}) needs the reference, which a run loads only when its config has a λ ≠ 1 (lam, "
                "lam_start of lam_schedule) or lam_mode reopd/agopd: set lam in the config to a λ the recipe uses"
            )
        return self._stage2(self.collector.teacher_scores(rollout, lam, self_teacher=self_teacher))

    def reward(self, rollout: Rollout) -> Scored:
        """GRPO's scores: the verifier's rewards (and the reference's log-probs for a KL term)."""
        return self._stage2(self.collector.verifier_scores(rollout))

    def unscored(self, rollout: Rollout) -> Scored:
        """An expert batch as the update reads it: no teacher, no reward (SFT)."""
        return self._stage2(self.collector.expert_scores(rollout))

    def _stage2(self, scored: Scored) -> Scored:
        """Every method's batch carries the expert batch of the μ-weighted SFT term when ``mu > 0``."""
        cfg, collector = self.cfg, self.collector
        self.mu = None  # μ of this step's SFT term (CHORD's schedule), passed to the update
        if cfg.mu > 0:
            scored.expert = collector.expert_batch(self.dist.shard(collector.expert_index(self.step)))
            self.mu = mu_at(
                self.step,
                peak=cfg.mu,
                schedule=cfg.mu_schedule,
                valley=cfg.mu_valley,
                warmup=cfg.mu_warmup_steps,
                total=cfg.steps,
            )
        self._mark("score")
        return scored

    # ------------------------------------------------------------------ stages 3-4
    def update(self, scored: Scored, objective: Objective) -> UpdateResult:
        """A_t and the loss per micro-batch (``objective``, e.g. ``method.objective(scored, ctx.cfg, ctx.dist,
        ctx.state)``), backward, all-reduce, clip, optimizer step (:func:`gopd_lab.loop.update.update`). A
        non-finite loss stops the run, naming the step."""
        try:
            result = update(
                self.student,
                self.optimizer,
                scored,
                self.cfg,
                self.dist,
                objective=objective,
                mu=self.mu,
                autocast_dtype=self.collector.models.autocast_dtype,
            )
        except NonFiniteError as err:
            kept = latest_checkpoint(self.out)
            raise NonFiniteError(
                f"step {self.step + 1}: {err} "
                f"({'the last checkpoint ' + str(kept) + ' is kept' if kept else 'no checkpoint was written'}). "
                "Look for NaN/inf in the student, teacher or reference weights, or lower lr"
            ) from None
        self.scored = scored
        return result

    def _mark(self, stage: str) -> None:
        device = self.collector.models.device
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.times[stage] = time.perf_counter()
