"""A falsifying control for OPD: the same step as G-OPD (the student samples, the teacher scores the rollout, the
sampled-token policy gradient), but every sampled token gets the same negative advantage ``A_t = −c``: no
teacher signal reaches the update (the teacher's log-probs are only logged, e.g. ``reverse_kl``).

With ``A_t = −c`` the sampled estimator's loss is ``c·mean_t log π_θ(y_t)``: it lowers the log-prob of whatever
the student sampled, a push towards higher entropy that is the same for every token. If this arm comes close to
OPD, much of OPD's gain does not need the teacher. The constant ``c`` is given as ``lam`` (λ has no other role in
this method), chosen to match OPD's mean ``|A_t|`` on its training batches (sweeps/v2/lam_controls.yaml says how
it was measured).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gopd_lab.methods.gopd import GOPD, Lineage, lam_stats
from gopd_lab.methods.method import register_method


@register_method
class ConstantAdvantage(GOPD):
    name = "constant"

    def check(self, cfg) -> str | None:
        if cfg.estimator != "sampled":
            return f"method='constant' is a sampled-token control: set estimator='sampled', not {cfg.estimator!r}"
        if cfg.lam_mode != "fixed" or cfg.gamma != 0:
            return "method='constant' gives every token the same A_t = −lam: set lam_mode='fixed' and gamma=0"
        return None

    def signal(self, scored, lp_student: Tensor, cfg, dist=None, state=None) -> Lineage:
        """``A_t = −c`` on every valid token ``(B, C)``, ``c`` = the row's ``lam``."""
        mask = scored.rollout.completion_mask.float()  # (B, C)
        c = scored.lam.to(mask)  # (B,)
        advantages = -c[:, None] * mask  # (B, C)
        lam_t = c[:, None].expand(mask.shape).float()  # (B, C)
        kind = torch.zeros(mask.shape, dtype=torch.long, device=mask.device)  # (B, C) 0 = reverse (sampled token)
        return Lineage(advantages, lam_t, kind, lam_stats(lam_t, mask.bool()))
