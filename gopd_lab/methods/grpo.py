"""GRPO: group-relative rewards of ``samples_per_prompt`` samples per prompt as every token's advantage, the
policy-gradient loss on the sampled tokens, and an optional k3 KL to the reference (``kl_coef``)."""

from __future__ import annotations

from gopd_lab.methods.method import Method, register_method
from gopd_lab.objectives import LossInput, group_advantages, kl_k3, masked_mean, sampled_loss


@register_method
class GRPO(Method):
    name = "grpo"
    needs_tasks = True
    min_group = 2  # a group of one has advantage 0 (TRL refuses fewer than 2 generations too)

    def needs_reference(self, cfg) -> bool:
        return cfg.kl_coef > 0

    def step(self, ctx, batch):
        """One GRPO step: samples, their rewards, group-relative A_t on every token, the policy-gradient loss."""
        rollout = ctx.sample(batch)  # stage 1: samples_per_prompt completions (B, C) of each prompt
        scored = ctx.reward(rollout)  # stage 2: the verifier's reward (B,), lp_reference (B, C) when kl_coef > 0
        objective = self.objective(scored, ctx.cfg)  # stage 3: A_t = group_advantages (B, C), then self.loss
        return ctx.update(scored, objective)  # stage 4: micro-batches → backward → all-reduce → clip → step

    def advantages(self, scored, lp_student, cfg):
        mask = scored.rollout.completion_mask.float()  # (B, C)
        group = group_advantages(scored.rewards, cfg.samples_per_prompt, scale_std=cfg.grpo_scale_std)  # (B,)
        return group[:, None] * mask  # (B, C)

    def loss(self, x: LossInput):
        cfg = x.cfg
        loss, extra = sampled_loss(x.out.lp, x.advantages, x.weights, lp_old=x.lp_old, clip_eps=cfg.clip_eps)
        if cfg.kl_coef > 0:
            kl = masked_mean(kl_k3(x.out.lp, x.scored.lp_reference), x.weights)  # KL(π_θ ‖ π_R) estimate
            loss = loss + cfg.kl_coef * kl
            extra["kl_reference"] = float(kl.detach())
        return loss, extra
