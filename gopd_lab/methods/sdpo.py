"""SDPO: G-OPD whose teacher is the student itself, re-prompted with feedback on its own answer
(``gopd_lab.scorers.self_teacher``); λ, the reference and the estimators are G-OPD's."""

from __future__ import annotations

from gopd_lab.methods.gopd import GOPD
from gopd_lab.methods.method import Method, register_method


@register_method
class SDPO(GOPD):
    name = "sdpo"
    update_rule = "gopd"
    needs_tasks = True
    needs_teacher = False
    self_teacher = True
    step = Method.step  # the shared path: the collector builds the self-teacher's view (scorers.self_teacher)

    def check(self, cfg) -> str | None:
        if "{prompt}" not in cfg.sdpo_template:
            return "sdpo_template must contain {prompt}"
        return None
