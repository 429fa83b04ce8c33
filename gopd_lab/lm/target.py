"""The G-OPD target as a decodable model: :class:`TargetModel` wraps a teacher and a reference so that each
decoding step returns ``λ·log π_T + (1 − λ)·log π_R`` as its logits, whose softmax is the token-level target
``π_λ(·|s) ∝ π_R(·|s)^(1−λ) · π_T(·|s)^λ`` (docs/metrics.md, "The target's headroom"). The ordinary sampler and
:func:`gopd_lab.loop.evaluate.evaluate` decode and score it like any model; each wrapped model keeps its own
key-value cache. At ``λ = 1`` only the teacher runs and at ``λ = 0`` only the reference, with their own logits,
so decoding is bit-for-bit that model's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gopd_lab.lm.rollout import cache_argument, new_cache


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
        """One decoding step of both models. ``past_key_values`` is the pair of caches this method returned
        (anything else, e.g. the empty cache a decode loop starts with, starts both models afresh)."""
        cache_t, cache_r = past_key_values if isinstance(past_key_values, tuple) else (None, None)
        if self.lam == 1.0:  # π_R^0 · π_T: the teacher alone, its own logits
            logits, cache = _step(self.teacher, cache_t, kwargs)
            return _TargetOutput(logits, None if cache is None else (cache, None))
        if self.lam == 0.0:  # the reference alone
            logits, cache = _step(self.reference, cache_r, kwargs)
            return _TargetOutput(logits, None if cache is None else (None, cache))
        logits_t, cache_t = _step(self.teacher, cache_t, kwargs)
        logits_r, cache_r = _step(self.reference, cache_r, kwargs)
        lp_t = torch.log_softmax(logits_t.float(), dim=-1)  # (B, T, V)
        lp_r = torch.log_softmax(logits_r.float(), dim=-1)
        logits = self.lam * lp_t + (1.0 - self.lam) * lp_r  # log of π_R^(1-λ)·π_T^λ, unnormalised
        caches = None if cache_t is None or cache_r is None else (cache_t, cache_r)  # None: re-feed the sequence
        return _TargetOutput(logits, caches)


def _step(model: nn.Module, cache, kwargs: dict) -> tuple[torch.Tensor, Any]:
    """``model``'s logits for one decoding step and its key-value cache (None for a model without one), passed
    under the keyword its ``forward`` takes (``cache`` or ``past_key_values``, :func:`~gopd_lab.lm.rollout.cache_argument`)."""
    key = cache_argument(model)
    if key is None or not kwargs.get("use_cache", False):
        return model(**{k: v for k, v in kwargs.items() if k != "use_cache"}).logits, None
    cache = cache if cache is not None else new_cache(model)
    out = model(**{key: cache}, **kwargs)
    return out.logits, getattr(out, key, None) or cache  # the output field has the argument's name


def _vocab(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "vocab_size", None)
