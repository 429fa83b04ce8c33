"""What a method's step runs on: :class:`StepContext` puts the stages behind one call each, with the plumbing
(FSDP gathering, autocast, timing, CHORD's expert batch and μ, the non-finite stop) out of the recipe's way.

A recipe (``gopd_lab.methods``) reads ``rollout = ctx.sample(batch)`` → ``scored = ctx.score(rollout)`` →
``ctx.update(scored, objective)``; the loop (:func:`gopd_lab.loop.train.train`) makes one context per run and
one :class:`Batch` per step, calls ``method.step(ctx, batch)`` and logs ``ctx.times``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gopd_lab.config import RunConfig
from gopd_lab.errors import NonFiniteError
from gopd_lab.lm.precision import autocast
from gopd_lab.lm.rollout import Rollout
from gopd_lab.loop.checkpoint import latest_checkpoint
from gopd_lab.loop.collect import Collector
from gopd_lab.loop.schedules import mu_at
from gopd_lab.loop.update import UpdateResult, UpdateSettings, update
from gopd_lab.methods.method import Objective, get_method
from gopd_lab.scorers.score import Scored


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
    """The stages of one step, each one call, for a run's student, collector, optimizer and settings."""

    cfg: RunConfig
    collector: Collector
    student: torch.nn.Module
    optimizer: torch.optim.Optimizer
    settings: UpdateSettings
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
    def sample(self, batch: Batch) -> Rollout:
        """The student samples the batch's prompts (under FSDP, on the gathered student)."""
        return self._stage1(batch, lambda: self.collector.sample(batch.index, batch.row_seeds), gather=True)

    def expert(self, batch: Batch) -> Rollout:
        """The batch's expert answers, teacher-forced (SFT, off-policy): nothing is sampled."""
        return self._stage1(batch, lambda: self.collector.expert_batch(batch.index), gather=False)

    def rollout(self, batch: Batch) -> Rollout:
        """The batch by the method's flags (the shared path): the student's samples or expert answers."""
        gather = self.collector.method.samples_student
        return self._stage1(batch, lambda: self.collector.rollout(batch.index, batch.row_seeds), gather=gather)

    def _stage1(self, batch: Batch, make, gather: bool) -> Rollout:
        models = self.collector.models
        self.times.clear()
        self.times["start"] = time.perf_counter()
        with self.dist.full_params(self.student, when=gather), autocast(models.autocast_dtype, models.device):
            rollout = make()
        self._mark("rollout")
        self.step = batch.step
        return rollout

    # ------------------------------------------------------------------ stage 2
    def score(self, rollout: Rollout, *, self_teacher: bool = False) -> Scored:
        """G-OPD's scores: each row's teacher and (where λ ≠ 1) reference on the student's tokens; ``self_teacher``:
        the teacher is the student re-prompted with the verifier's feedback (SDPO)."""
        return self._stage2(self.collector.teacher_scores(rollout, self_teacher=self_teacher))

    def reward(self, rollout: Rollout) -> Scored:
        """GRPO's scores: the verifier's rewards (and the reference's log-probs for a KL term)."""
        return self._stage2(self.collector.verifier_scores(rollout))

    def unscored(self, rollout: Rollout) -> Scored:
        """An expert batch as the update reads it: no teacher, no reward (SFT)."""
        return self._stage2(self.collector.expert_scores(rollout))

    def collect_scores(self, rollout: Rollout) -> Scored:
        """The scores by the method's flags (the shared path)."""
        return self._stage2(self.collector.score(rollout))

    def _stage2(self, scored: Scored) -> Scored:
        """Every method's batch carries the expert batch of the μ-weighted SFT term when ``mu > 0``."""
        cfg, collector = self.cfg, self.collector
        self.mu = None  # μ of this step's SFT term (CHORD's schedule), passed to the update: settings stay fixed
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
    def update(self, scored: Scored, objective: Objective | None = None) -> UpdateResult:
        """A_t and the loss per micro-batch (``objective``; None = the update rule's), backward, all-reduce, clip,
        optimizer step (:func:`gopd_lab.loop.update.update`). A non-finite loss stops the run, naming the step."""
        if objective is None:
            objective = get_method(self.settings.method).objective(scored, self.settings, self.dist, self.state)
        try:
            result = update(
                self.student, self.optimizer, scored, self.settings, self.dist, mu=self.mu, objective=objective
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
