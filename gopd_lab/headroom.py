"""The G-OPD target as a decodable model: how good is the policy that G-OPD distils toward?

At λ the token-level G-OPD target is ``π_λ(·|s) ∝ π_R(·|s)^(1−λ) · π_T(·|s)^λ`` (see docs/metrics.md,
"The target's headroom"). :class:`TargetModel` wraps a teacher and a reference so that each decoding
step returns ``λ·log π_T + (1 − λ)·log π_R`` as its logits (the softmax of which is ``π_λ``); the
ordinary sampler and :func:`gopd_lab.evaluate.evaluate` then decode and score it like any model,
greedy (argmax of ``π_λ``) and sampled (from ``π_λ`` at the sampling temperature). Each wrapped model
keeps its own key-value cache.

At ``λ = 1`` the target is the teacher and at ``λ = 0`` the reference: only that model is run and its
own logits are returned, so decoding is bit-for-bit the same as decoding that model.

:func:`headroom_curve` evaluates the target over a list of λ: the accuracy a student distilled with
that λ could at best approach. If it does not rise above λ = 1, extrapolation has nothing to find.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
from torch import nn


@dataclass
class _TargetOutput:
    logits: torch.Tensor
    past_key_values: Any


class TargetModel(nn.Module):
    """``teacher`` and ``reference`` (causal LMs on one vocabulary) decoded as the G-OPD target at ``lam``.

    ``forward`` takes the keyword arguments of a Hugging Face causal LM (``input_ids``, ``attention_mask``,
    ``position_ids``, ``past_key_values``, ``use_cache``, ``logits_to_keep``) and returns ``logits`` =
    ``lam·log_softmax(teacher) + (1 − lam)·log_softmax(reference)`` (float32) and the pair of caches.
    """

    def __init__(self, teacher: nn.Module, reference: nn.Module, lam: float):
        super().__init__()
        if not (isinstance(lam, (int, float)) and lam >= 0 and lam == lam and lam != float("inf")):
            raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
        self.teacher, self.reference, self.lam = teacher, reference, float(lam)
        vt, vr = _vocab(teacher), _vocab(reference)
        if vt is not None and vr is not None and vt != vr:
            raise ValueError(
                f"teacher and reference have different vocabularies ({vt} vs {vr} tokens); "
                "the target needs both on one tokenizer"
            )

    def forward(self, *, past_key_values=None, **kwargs) -> _TargetOutput:
        cache_t, cache_r = past_key_values if past_key_values is not None else (None, None)
        if self.lam == 1.0:  # π_R^0 · π_T: the teacher alone, its own logits
            out = self.teacher(past_key_values=cache_t, **kwargs)
            cache = getattr(out, "past_key_values", None)
            return _TargetOutput(out.logits, None if cache is None else (cache, None))
        if self.lam == 0.0:  # the reference alone
            out = self.reference(past_key_values=cache_r, **kwargs)
            cache = getattr(out, "past_key_values", None)
            return _TargetOutput(out.logits, None if cache is None else (None, cache))
        out_t = self.teacher(past_key_values=cache_t, **kwargs)
        out_r = self.reference(past_key_values=cache_r, **kwargs)
        lp_t = torch.log_softmax(out_t.logits.float(), dim=-1)  # (B, T, V)
        lp_r = torch.log_softmax(out_r.logits.float(), dim=-1)
        logits = self.lam * lp_t + (1.0 - self.lam) * lp_r  # log of π_R^(1-λ)·π_T^λ, unnormalised
        caches = (getattr(out_t, "past_key_values", None), getattr(out_r, "past_key_values", None))
        if caches[0] is None or caches[1] is None:
            caches = None  # one model without a cache: the sampler re-feeds the whole sequence to both
        return _TargetOutput(logits, caches)


def _vocab(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "vocab_size", None)


def headroom_curve(
    teacher: nn.Module,
    reference: nn.Module,
    tokenizer,
    tasks: dict,
    lams: Sequence[float] = (0.0, 0.5, 1.0, 1.25, 1.5, 2.0, 3.0),
    **kwargs,
) -> pd.DataFrame:
    """Accuracy of the target at every λ in ``lams``: the rows of :func:`~gopd_lab.evaluate.evaluate_target`
    with a ``lam`` column (``kwargs`` go to it: ``k``, ``seed``, ``limit``, ``max_new_tokens``, ...).
    Every λ uses the same ``seed``, so the curve compares the targets on the same random stream."""
    from .evaluate import evaluate_target

    frames = [evaluate_target(teacher, reference, tokenizer, tasks, lam=lam, **kwargs) for lam in lams]
    for lam, frame in zip(lams, frames):
        frame.insert(0, "lam", float(lam))
    return pd.concat(frames, ignore_index=True)
