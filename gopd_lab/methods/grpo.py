"""GRPO: group-relative rewards of ``samples_per_prompt`` samples per prompt as every token's advantage, the
policy-gradient loss on the sampled tokens, and an optional k3 KL to the reference (``kl_coef``)."""

from __future__ import annotations

from gopd_lab.methods.method import Method, register_method
from gopd_lab.objectives import group_advantages, kl_k3, masked_mean, sampled_loss


@register_method
class GRPO(Method):
    name = "grpo"
    needs_tasks = True

    def needs_reference(self, cfg) -> bool:
        return cfg.kl_coef > 0

    def step(self, ctx, batch):
        """One GRPO step: samples, their rewards, group-relative A_t on every token, the policy-gradient loss."""
        rollout = ctx.sample(batch)  # stage 1: samples_per_prompt completions (B, C) of each prompt
        scored = ctx.reward(rollout)  # stage 2: the verifier's reward (B,), lp_reference (B, C) when kl_coef > 0
        objective = self.objective(scored, ctx.settings)  # stage 3: A_t = group_advantages (B, C), then self.loss
        return ctx.update(scored, objective)  # stage 4: micro-batches → backward → all-reduce → clip → step

    def advantages(self, scored, lp_student, settings):
        mask = scored.rollout.completion_mask.float()  # (B, C)
        return group_advantages(scored.rewards, settings.group_size, scale_std=settings.scale_std)[:, None] * mask

    def loss(self, scored, out, advantages, weights, settings, lp_old):
        loss, extra = sampled_loss(out.lp, advantages, weights, lp_old=lp_old, clip_eps=settings.clip_eps)
        if settings.kl_coef > 0:
            kl = masked_mean(kl_k3(out.lp, scored.lp_reference), weights)  # KL(π_θ ‖ π_R) estimate
            loss = loss + settings.kl_coef * kl
            extra["kl_reference"] = float(kl.detach())
        return loss, extra
