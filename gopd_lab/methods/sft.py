"""SFT on expert answers (``tasks``' answers or ``expert_data``), and ``offpolicy``: SFT on the teacher's own
samples. The batch is expert text, not a student rollout; the advantages are zero."""

from __future__ import annotations

from gopd_lab.methods.method import Method, register_method
from gopd_lab.objectives import sft_loss


@register_method
class SFT(Method):
    name = "sft"
    samples_student = False
    needs_tasks = True

    def loss(self, scored, out, advantages, weights, settings, lp_old):
        return sft_loss(out.lp, weights)


@register_method
class OffPolicy(SFT):
    name = "offpolicy"
    update_rule = "sft"
    needs_tasks = False
    needs_teacher = True
    expert_source = "teacher"
