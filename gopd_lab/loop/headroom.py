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

:func:`check_headroom` is the check before a run (``RunConfig.headroom_check``): does the teacher know the task
at all? Its greedy accuracy on a few test prompts of each task; below ``headroom_min_acc`` there is nothing to
distil ("no teacher here knows this task"), and the run warns or refuses before it trains.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import pandas as pd
from torch import nn

from gopd_lab.errors import ConfigError
from gopd_lab.lm.target import TargetModel
from gopd_lab.loop.evaluate import evaluate, evaluate_target

__all__ = ["HeadroomError", "TargetModel", "check_headroom", "headroom_curve", "teacher_accuracy"]


class HeadroomError(ConfigError):
    """The teacher does not know a task it is asked to teach (``headroom_check='refuse'``)."""


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


def teacher_accuracy(models, tasks: dict, *, prompts: int, max_new_tokens: int) -> pd.DataFrame:
    """Greedy accuracy of each task's teacher (``models.teacher_for(domain)``) on its first ``prompts`` test
    prompts: columns ``domain``, ``teacher``, ``greedy_acc``, ``n``. A teacher without weights here (a server) is
    left out."""
    rows = []
    for domain, task in tasks.items():
        teacher = models.teacher_for(domain)
        if not isinstance(teacher, nn.Module):
            continue
        table = evaluate(teacher, models.tokenizer, {domain: task}, k=0, max_new_tokens=max_new_tokens, limit=prompts)
        name = models.names.get(f"teacher/{domain}", models.names.get("teacher/default", "?"))
        rows.append({"domain": domain, "teacher": name, **table.iloc[0][["greedy_acc", "n"]].to_dict()})
    return pd.DataFrame(rows, columns=["domain", "teacher", "greedy_acc", "n"])


def check_headroom(models, tasks: dict, cfg) -> pd.DataFrame | None:
    """``cfg.headroom_check``: ``off`` (None), else :func:`teacher_accuracy` on ``cfg.headroom_prompts`` prompts per
    task; a task whose teacher is below ``cfg.headroom_min_acc`` warns (``warn``) or stops the run (``refuse``,
    :class:`HeadroomError`) with one message naming the task, the teacher and its score."""
    if cfg.headroom_check == "off" or not tasks or not models.teachers:
        return None
    table = teacher_accuracy(models, tasks, prompts=cfg.headroom_prompts, max_new_tokens=cfg.max_new_tokens)
    weak = table[table.greedy_acc < cfg.headroom_min_acc]
    if len(weak):
        found = "; ".join(
            f"task {r.domain!r}: teacher {r.teacher!r} answers {r.greedy_acc:.0%} of {int(r.n)} test prompts greedily"
            for r in weak.itertuples()
        )
        message = (
            f"no teacher here knows this task ({found}; below headroom_min_acc={cfg.headroom_min_acc:g}): distilling "
            "from it cannot teach the task. Give a teacher that knows it (a checkpoint trained on the task), or "
            "set headroom_check='off' to train anyway"
        )
        if cfg.headroom_check == "refuse":
            raise HeadroomError(message)
        warnings.warn(message, UserWarning, stacklevel=3)
    return table
