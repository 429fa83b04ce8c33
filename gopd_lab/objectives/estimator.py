"""The estimator registry: every estimator of the update is one :class:`Estimator` subclass in one file of
``gopd_lab.objectives``, registered under its name with :func:`register_estimator`.

An estimator declares what it needs from scoring (:attr:`Estimator.needs`, one of :data:`NEEDS`) and computes its
loss from the student's forward. ``RunConfig`` validation, the scoring pass (``gopd_lab.scorers``), the HTTP
teacher client and the update ask this registry; none of them lists estimator names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from torch import Tensor

SAMPLED_TOKENS = "sampled-tokens"
"""Only the log-probs of the sampled tokens (``Scored.lp_teacher``/``lp_reference``, ``(B, C)``)."""
MIXED_TARGET = "mixed-target"
"""Also the per-state log-target ``normalise(π_R^(1−λ)·π_T^λ)`` over the full vocabulary (``Scored.target``)."""
TEACHER_DISTRIBUTION = "teacher-distribution"
"""Also the teacher's per-state full log-distribution (``Scored.target``)."""
TEACHER_TOPK = "teacher-topk"
"""Also the teacher's top-k token ids and log-probs per state, and the reference's log-probs at those ids."""
NEEDS = (SAMPLED_TOKENS, MIXED_TARGET, TEACHER_DISTRIBUTION, TEACHER_TOPK)


@dataclass
class LossInput:
    """What a loss reads for one micro-batch: the one signature of :meth:`Estimator.loss` and of
    ``Method.loss`` (``gopd_lab.methods``), ``loss(x: LossInput) -> (loss, metrics)``."""

    out: Any
    """The student's forward (:class:`~gopd_lab.lm.logprobs.StudentOut`): ``lp`` ``(b, C)`` of the sampled tokens
    (carries the gradient), ``entropy`` ``(b, C)``; ``logp`` ``(N, V)`` at ``positions`` when the estimator needs
    the full distribution; ``kl_loss`` when the ``full`` KL was fused with the LM head."""
    scored: Any
    """The micro-batch's scores (:class:`~gopd_lab.scorers.score.Scored`): ``rollout``, ``lam`` ``(b,)``,
    ``lp_teacher`` / ``lp_reference`` ``(b, C)``, ``target`` (per state), ``rewards`` ``(b,)``."""
    advantages: Tensor
    """``(b, C)`` the detached per-token advantages ``A_t`` (zeros for a method without any)."""
    weights: Tensor
    """``(b, C)`` each token's weight in the loss (the completion mask, or per-sequence weights by ``loss_agg``)."""
    cfg: Any
    """The run's :class:`~gopd_lab.config.RunConfig` (``clip_eps``, ``jsd_beta``, ``kl_coef``, ...)."""
    lp_old: Tensor | None = None
    """``(b, C)`` the rollout policy's log-probs, after the first of ``epochs_per_batch`` epochs (None in it)."""


class Estimator:
    """One estimator of the G-OPD update (docs/math.md).

    Subclasses set :attr:`name` and :attr:`needs`, override :meth:`loss`, and may refine the flags below."""

    name: ClassVar[str] = ""
    needs: ClassVar[str] = SAMPLED_TOKENS
    uses_advantages: ClassVar[bool] = False
    """True when the loss consumes the per-token advantage ``A_t`` (then γ > 0 return-to-go and the λ rules of
    ``lam_mode`` apply); False for the per-state estimators (γ = 0)."""
    fused_kl: ClassVar[bool] = False
    """True when the loss is ``mean_t KL(π_θ ‖ Scored.target)`` and may be fused with the LM head
    (:func:`~gopd_lab.lm.logprobs.student_kl_forward`, which sets ``out.kl_loss``)."""

    @property
    def student_full(self) -> bool:
        """Whether the student's forward must return full per-state log-distributions (``out.logp``)."""
        return self.needs != SAMPLED_TOKENS

    def check(self, cfg) -> str | None:
        """A reason ``cfg`` (a ``RunConfig``) cannot run with this estimator, or None."""
        return None

    def loss(self, x: LossInput) -> tuple[Tensor, dict[str, float]]:
        """``(loss, metrics)`` of one micro-batch (:class:`LossInput`: the student's forward, the scores, the
        detached advantages, the token weights, the run's config)."""
        raise NotImplementedError


ESTIMATORS: dict[str, Estimator] = {}
"""Every registered estimator by name, in registration order."""


def register_estimator(cls: type[Estimator]) -> type[Estimator]:
    """Class decorator: register one instance of ``cls`` under ``cls.name`` (a new name, or the same class again)."""
    if not cls.name or cls.needs not in NEEDS:
        raise ValueError(f"an estimator needs a name and needs in {NEEDS}, got {cls.name!r}, {cls.needs!r}")
    old = ESTIMATORS.get(cls.name)
    if old is not None and type(old).__qualname__ != cls.__qualname__:
        raise ValueError(f"estimator {cls.name!r} is already registered by {type(old).__qualname__}")
    ESTIMATORS[cls.name] = cls()
    return cls


def get_estimator(name: str) -> Estimator:
    """The registered estimator ``name``; ``KeyError`` naming the known ones."""
    try:
        return ESTIMATORS[name]
    except KeyError:
        raise KeyError(f"unknown estimator {name!r}; registered: {tuple(ESTIMATORS)}") from None
