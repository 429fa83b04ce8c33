"""The optimizer and its step schedules: the learning-rate multiplier, CHORD's SFT weight μ_k and G-OPD's λ_k."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from gopd_lab.config import LAM_SCHEDULES

FUSED_DEVICES = ("cpu", "cuda", "xpu", "mps")


def make_optimizer(params: list, cfg) -> torch.optim.Optimizer:
    """``cfg.optimizer`` over ``params``. AdamW uses torch's fused kernel (one pass over all parameters, the
    default of the Hugging Face Trainer on torch ≥ 2.8) when every parameter is a plain floating tensor on a
    device that has it; the arithmetic is AdamW's either way."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    fused = bool(params) and all(
        type(p) is torch.nn.Parameter
        and p.is_floating_point()
        and p.device.type == params[0].device.type in FUSED_DEVICES
        for p in params
    )
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)


def lr_factor(cfg) -> Callable[[int], float]:
    """Multiplier of ``cfg.lr`` at each step: linear warm-up, then constant, linear or cosine decay to 0."""
    warm, total = cfg.warmup_steps, cfg.steps

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.lr_schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warm) / max(1, total - warm))
        if cfg.lr_schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def mu_at(
    step: int, *, peak: float, schedule: str = "constant", valley: float = 0.0, warmup: int = 0, total: int = 1
) -> float:
    """CHORD's weight of the SFT term at 0-based ``step`` (Zhang et al., arXiv 2508.11408).

    ``constant``: ``peak`` throughout. ``warmup_cosine``: linear from ``valley`` to ``peak`` over
    ``warmup`` steps, then cosine decay from ``peak`` to ``valley`` at the last step (``total``).
    """
    if schedule == "constant":
        return peak
    if schedule != "warmup_cosine":
        raise ValueError(f"mu_schedule must be constant or warmup_cosine, got {schedule!r}")
    if step < warmup:
        return valley + (peak - valley) * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - 1 - warmup))
    return valley + (peak - valley) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lam_at(
    step: int, lam: float | dict[str, float], *, schedule: str = "constant", start: float = 1.0, warmup: int = 0
) -> float | dict[str, float]:
    """G-OPD's λ at 0-based ``step``: ``constant``: ``lam`` throughout. ``linear``: from ``start`` at step 0 to
    ``lam`` at step ``warmup`` (``λ_k = start + (lam − start)·min(1, k / warmup)``), then ``lam``; a
    ``{domain: λ}`` ramps every domain's λ from the same ``start``."""
    if schedule == "constant" or warmup <= 0:
        return lam
    if schedule != "linear":
        raise ValueError(f"lam_schedule must be one of {LAM_SCHEDULES}, got {schedule!r}")
    frac = min(1.0, step / warmup)
    if isinstance(lam, dict):
        return {d: start + (float(v) - start) * frac for d, v in lam.items()}
    return start + (float(lam) - start) * frac
