"""SDPO: G-OPD whose teacher is the student itself, re-prompted with feedback on its own answer
(``gopd_lab.scorers.self_teacher``); λ, the reference and the estimators are G-OPD's."""

from __future__ import annotations

from gopd_lab.methods.gopd import GOPD
from gopd_lab.methods.method import register_method


@register_method
class SDPO(GOPD):
    name = "sdpo"
    needs_tasks = True
    needs_teacher = False
    self_teacher = True

    def step(self, ctx, batch):
        """One SDPO step: G-OPD's, with the student re-prompted by the verifier's feedback as its own teacher."""
        rollout = ctx.sample(batch)  # stage 1: the student samples completions (B, C)
        scored = ctx.score(rollout, self_teacher=True)  # stage 2: feedback → the self-teacher's lp_teacher (B, C)
        objective = self.objective(scored, ctx.cfg, ctx.dist, ctx.state)  # stage 3: G-OPD's A_t and loss
        return ctx.update(scored, objective)  # stage 4: micro-batches → backward → all-reduce → clip → step

    def check(self, cfg) -> str | None:
        if "{prompt}" not in cfg.sdpo_template:
            return "sdpo_template must contain {prompt}"
        return None
