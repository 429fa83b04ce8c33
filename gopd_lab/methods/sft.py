"""SFT on expert answers (``tasks``' answers or ``expert_data``), and ``offpolicy``: SFT on the teacher's own
samples. The batch is expert text, not a student rollout; the advantages are zero."""

from __future__ import annotations

from gopd_lab.methods.method import Method, register_method
from gopd_lab.objectives import LossInput, sft_loss


@register_method
class SFT(Method):
    name = "sft"
    samples_student = False
    needs_tasks = True

    def step(self, ctx, batch):
        """One SFT step: the expert answers, teacher-forced; the loss is their negative log-likelihood."""
        rollout = ctx.sample(batch, policy="expert")  # stage 1: expert answers (B, C), nothing sampled
        scored = ctx.unscored(rollout)  # stage 2: nothing to score (λ = 1, no teacher, no reward)
        objective = self.objective(scored, ctx.cfg)  # stage 3: A_t = 0, loss = self.loss (token NLL)
        return ctx.update(scored, objective)  # stage 4: micro-batches → backward → all-reduce → clip → step

    def loss(self, x: LossInput):
        return sft_loss(x.out.lp, x.weights)


@register_method
class OffPolicy(SFT):
    name = "offpolicy"
    needs_tasks = False
    needs_teacher = True
    expert_source = "teacher"
