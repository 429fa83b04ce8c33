"""The method registry: every training method (``RunConfig.method``) is one :class:`Method` subclass in one file
of ``gopd_lab.methods``, registered under its name with :func:`register_method`.

A method declares what its step is made of (who samples the batch, whether it needs tasks, a teacher, expert
answers, SDPO's self-teacher, G-OPD's λ and reference rule), its :meth:`Method.step` (rollout → score → update,
in named lines, on a step context of ``gopd_lab.loop.step``) and its update rule: an :class:`Objective`, the
per-token advantages ``A_t`` and the loss of each micro-batch from one student forward. ``RunConfig``
validation, model loading, the collector, the training loop, FSDP and the update ask this registry; none of
them compares method names.
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

    def step(self, ctx, batch):
        """One training step on ``ctx`` (:class:`~gopd_lab.loop.step.StepContext`) → ``UpdateResult``. The shared
        path: the collector builds the batch by this method's flags, the update asks :meth:`objective`."""
        rollout = ctx.rollout(batch)  # stage 1: the student's samples, or expert answers (samples_student)
        scored = ctx.collect_scores(rollout)  # stage 2: what the flags say (teacher, verifier, reference)
        return ctx.update(scored)  # stages 3-4: A_t and the loss per micro-batch (self.objective); one step

    def new_state(self, cfg, metrics_rows: list[dict]):
        """What the method carries from one step to the next (None: nothing), kept by the step context
        (``ctx.state``); ``metrics_rows`` are the logged steps a resumed run continues from (empty when fresh)."""
        return None

    def objective(self, scored, settings, dist=None, state=None) -> Objective:
        """The loss of the batch ``scored``, micro-batch by micro-batch (the update calls it); ``state`` is
        :meth:`new_state`'s object."""
        return BatchObjective(self, scored, settings)

    def advantages(self, scored, lp_student: Tensor, settings) -> Tensor:
        """Per-token advantages ``(B, C)``, detached, from the scores and the student's log-probs ``(B, C)``."""
        return scored.rollout.completion_mask.float().new_zeros(scored.rollout.completion_mask.shape)

    def loss(self, scored, out, advantages: Tensor, weights: Tensor, settings, lp_old: Tensor | None):
        """``(loss, metrics)`` from the student's forward ``out`` and the token weights ``(B, C)``."""
        raise NotImplementedError


class Objective:
    """A batch's loss, micro-batch by micro-batch: what :func:`gopd_lab.loop.update.update` asks a method for.

    The update runs the student forward on rows ``rows`` of the batch (``part``) and calls the objective with it;
    the objective returns ``(loss, A_t (b, C), metrics)``. The update owns the plumbing: micro-batches, epochs,
    token weights, the SFT term, gradient all-reduce, clipping and the optimizer step."""

    whole_batch: bool = False
    """A_t needs every row's log-probs before the first backward (:meth:`prepare` is called when the batch is split)."""

    def prepare(self, lp_student: Tensor) -> None:
        """Batch-level statistics from the student's detached log-probs ``(B, C)`` of every row."""

    def __call__(self, part, rows: slice, out, lp_student: Tensor, lp_old: Tensor | None, weights: Tensor):
        """``(loss, A_t, metrics)`` of one micro-batch: ``out`` its forward, ``lp_student`` ``(b, C)`` detached,
        ``lp_old`` the rollout policy's log-probs after the first epoch (None in it), ``weights`` ``(b, C)``."""
        raise NotImplementedError

    def end_epoch(self) -> dict[str, float]:
        """After an epoch's micro-batches: metrics of the whole epoch."""
        return {}

    def record(self):
        """What the step records per token beyond A_t (G-OPD: a :class:`~gopd_lab.methods.gopd.Lineage`), or None."""
        return None


class BatchObjective(Objective):
    """A_t of the whole batch at once (GRPO's group baseline, SFT's zeros), then :meth:`Method.loss` per part."""

    def __init__(self, method: Method, scored, settings):
        self.method, self.settings = method, settings
        mask = scored.rollout.completion_mask.float()  # (B, C)
        self.advantages = method.advantages(scored, mask, settings)  # (B, C) detached; does not read lp_student

    def __call__(self, part, rows, out, lp_student, lp_old, weights):
        A_t = self.advantages[rows]  # (b, C)
        loss, metrics = self.method.loss(part, out, A_t, weights, self.settings, lp_old)
        return loss, A_t, metrics


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
