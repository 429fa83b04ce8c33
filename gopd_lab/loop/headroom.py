"""The G-OPD target as a decodable model: how good is the policy that G-OPD distils toward?

At λ the token-level G-OPD target is ``π_λ(·|s) ∝ π_R(·|s)^(1−λ) · π_T(·|s)^λ`` (see docs/metrics.md,
"The target's headroom"). :class:`TargetModel` (:mod:`gopd_lab.lm.target`, re-exported here) wraps a teacher
and a reference so that each decoding step returns ``λ·log π_T + (1 − λ)·log π_R`` as its logits (the softmax
of which is ``π_λ``); the ordinary sampler and :func:`gopd_lab.loop.evaluate.evaluate` then decode and score it like any model,
greedy (argmax of ``π_λ``) and sampled (from ``π_λ`` at the sampling temperature). Each wrapped model
keeps its own key-value cache.

At ``λ = 1`` the target is the teacher and at ``λ = 0`` the reference: only that model is run and its
own logits are returned, so decoding is bit-for-bit the same as decoding that model.

:func:`headroom_curve` evaluates the target over a list of λ: the accuracy a student distilled with
that λ could at best approach. If it does not rise above λ = 1, extrapolation has nothing to find.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from torch import nn

from gopd_lab.lm.target import TargetModel
from gopd_lab.loop.evaluate import evaluate_target

__all__ = ["TargetModel", "headroom_curve"]


def headroom_curve(
    teacher: nn.Module,
    reference: nn.Module,
    tokenizer,
    tasks: dict,
    lams: Sequence[float] = (0.0, 0.5, 1.0, 1.25, 1.5, 2.0, 3.0),
    **kwargs,
) -> pd.DataFrame:
    """Accuracy of the target at every λ in ``lams``: the rows of :func:`~gopd_lab.loop.evaluate.evaluate_target`
    with a ``lam`` column (``kwargs`` go to it: ``k``, ``seed``, ``limit``, ``max_new_tokens``, ...).
    Every λ uses the same ``seed``, so the curve compares the targets on the same random stream."""
    frames = [evaluate_target(teacher, reference, tokenizer, tasks, lam=lam, **kwargs) for lam in lams]
    for lam, frame in zip(lams, frames):
        frame.insert(0, "lam", float(lam))
    return pd.concat(frames, ignore_index=True)
