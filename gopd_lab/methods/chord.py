"""CHORD: GRPO plus a μ-weighted SFT term on expert answers (``mu``, its schedule, CHORD's φ weighting); the
update rule is GRPO's, the expert term is mixed in by the update."""

from __future__ import annotations

from gopd_lab.methods.grpo import GRPO
from gopd_lab.methods.method import register_method


@register_method
class CHORD(GRPO):
    name = "chord"

    def check(self, cfg) -> str | None:
        if cfg.mu <= 0:
            return "method='chord' needs mu > 0 (the weight of the SFT term); mu=0 is plain GRPO"
        return None
