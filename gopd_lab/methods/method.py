"""The method registry: every training method (``RunConfig.method``) is one :class:`Method` subclass in one file
of ``gopd_lab.methods``, registered under its name with :func:`register_method`.

A method declares what its step is made of (who samples the batch, whether it needs tasks, a teacher, expert
answers, SDPO's self-teacher, G-OPD's λ and reference rule) and its update rule: the per-token advantages
``A_t`` and the loss from one student forward. ``RunConfig`` validation, model loading, the collector, the
training loop, FSDP and the update ask this registry; none of them compares method names.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor


class Method:
    """One training method. Subclasses set :attr:`name` and override :meth:`advantages` and :meth:`loss`."""

    name: ClassVar[str] = ""
    update_rule: ClassVar[str] = ""
    """The registered method whose :meth:`advantages` and :meth:`loss` the update runs (``sdpo`` → ``gopd``)."""
    samples_student: ClassVar[bool] = True
    """A step's batch is sampled from the student (on-policy); False: the batch is expert answers (SFT)."""
    needs_tasks: ClassVar[bool] = False
    """The method reads answers, a verifier or feedback, so it needs ``tasks``."""
    needs_teacher: ClassVar[bool] = False
    """The method needs a teacher model (``RunConfig.teacher``)."""
    expert_source: ClassVar[str | None] = None
    """Where the expert answers of an SFT batch come from: ``"teacher"`` (its samples), or None (``expert_data``,
    else the tasks' answers)."""
    uses_lam: ClassVar[bool] = False
    """G-OPD's λ, its reference rule and ``lam_mode`` apply (the teacher and reference score every rollout)."""
    self_teacher: ClassVar[bool] = False
    """The teacher is the student itself, re-prompted with feedback (SDPO's ``sdpo_teacher``)."""

    def check(self, cfg) -> str | None:
        """A reason ``cfg`` (a ``RunConfig``) cannot run with this method, or None."""
        return None

    def needs_reference(self, cfg) -> bool:
        """Whether a step runs the reference model (``lam_mode`` reopd / agopd: on every row)."""
        return bool(cfg.always_reference)

    def advantages(self, scored, lp_student: Tensor, settings) -> Tensor:
        """Per-token advantages ``(B, C)``, detached, from the scores and the student's log-probs ``(B, C)``."""
        return scored.rollout.completion_mask.float().new_zeros(scored.rollout.completion_mask.shape)

    def loss(self, scored, out, advantages: Tensor, weights: Tensor, settings, lp_old: Tensor | None):
        """``(loss, metrics)`` from the student's forward ``out`` and the token weights ``(B, C)``."""
        raise NotImplementedError


METHODS: dict[str, Method] = {}
"""Every registered method by name, in registration order."""


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register one instance of ``cls`` under ``cls.name`` (its own update rule by default)."""
    if not cls.name:
        raise ValueError(f"a method needs a name, {cls.__qualname__} has none")
    old = METHODS.get(cls.name)
    if old is not None and type(old).__qualname__ != cls.__qualname__:
        raise ValueError(f"method {cls.name!r} is already registered by {type(old).__qualname__}")
    if not cls.__dict__.get("update_rule"):
        cls.update_rule = cls.name
    METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> Method:
    """The registered method ``name``; ``KeyError`` naming the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; registered: {tuple(METHODS)}") from None
