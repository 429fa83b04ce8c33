"""The method registry: every training method (``RunConfig.method``) is one :class:`Method` subclass in one file
of ``gopd_lab.methods``, registered under its name with :func:`register_method`.

A method declares what its step is made of (who samples the batch, whether it needs tasks, a teacher, expert
answers, SDPO's self-teacher, G-OPD's λ and reference rule), its recipe :meth:`Method.step` (sample → score →
update, in named lines, on a step context of ``gopd_lab.loop.step``) and its loss: an :class:`Objective`, the
per-token advantages ``A_t`` and the loss of each micro-batch from one student forward, through
``loss(x: LossInput)`` (the estimators' signature too). ``RunConfig`` validation, model loading, the collector,
the training loop, FSDP and the update ask this registry; none of them compares method names.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from gopd_lab.objectives.estimator import LossInput


class Method:
    """One training method. Subclasses set :attr:`name`, write :meth:`step` and override :meth:`advantages` and
    :meth:`loss` (or :meth:`objective`); a subclass inherits its parent's (SDPO is G-OPD's, CHORD GRPO's)."""

    name: ClassVar[str] = ""
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
    min_group: ClassVar[int] = 1
    """The fewest ``samples_per_prompt`` that train anything (GRPO's group-relative advantage needs 2)."""

    def check(self, cfg) -> str | None:
        """A reason ``cfg`` (a ``RunConfig``) cannot run with this method, or None."""
        return None

    def needs_reference(self, cfg) -> bool:
        """Whether a step runs the reference model (``lam_mode`` reopd / agopd: on every row)."""
        return bool(cfg.always_reference)

    def step(self, ctx, batch):
        """One training step on ``ctx`` (:class:`~gopd_lab.loop.step.StepContext`) → ``UpdateResult``: the recipe,
        ``ctx.sample`` → ``ctx.score`` / ``ctx.reward`` / ``ctx.unscored`` → ``ctx.update(scored, objective)``."""
        raise NotImplementedError(
            f"method {self.name!r} writes no step(ctx, batch); write its recipe as the built-in methods do "
            "(docs/extending.md, 'A new method')"
        )

    def new_state(self, cfg, metrics_rows: list[dict]):
        """What the method carries from one step to the next (None: nothing), kept by the step context
        (``ctx.state``); ``metrics_rows`` are the logged steps a resumed run continues from (empty when fresh)."""
        return None

    def objective(self, scored, cfg, dist=None, state=None) -> Objective:
        """The loss of the batch ``scored``, micro-batch by micro-batch (the update calls it), for the run's config
        ``cfg``; ``state`` is :meth:`new_state`'s object."""
        return BatchObjective(self, scored, cfg)

    def advantages(self, scored, lp_student: Tensor | None, cfg) -> Tensor:
        """Per-token advantages ``(B, C)``, detached, from the scores and the student's detached log-probs
        ``(B, C)`` (None where :class:`BatchObjective` forms them from the scores alone, before any forward)."""
        return scored.rollout.completion_mask.float().new_zeros(scored.rollout.completion_mask.shape)

    def loss(self, x: LossInput) -> tuple[Tensor, dict[str, float]]:
        """``(loss, metrics)`` of one micro-batch (:class:`~gopd_lab.objectives.estimator.LossInput`)."""
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
    """A_t of the whole batch at once from the scores alone (GRPO's group baseline, SFT's zeros: they do not read
    the student's log-probs), then :meth:`Method.loss` per part."""

    def __init__(self, method: Method, scored, cfg):
        self.method, self.cfg = method, cfg
        self.advantages = method.advantages(scored, None, cfg)  # (B, C) detached

    def __call__(self, part, rows, out, lp_student, lp_old, weights):
        A_t = self.advantages[rows]  # (b, C)
        loss, metrics = self.method.loss(LossInput(out, part, A_t, weights, self.cfg, lp_old))
        return loss, A_t, metrics


METHODS: dict[str, Method] = {}
"""Every registered method by name, in registration order."""


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register one instance of ``cls`` under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"a method needs a name, {cls.__qualname__} has none")
    old = METHODS.get(cls.name)
    if old is not None and type(old).__qualname__ != cls.__qualname__:
        raise ValueError(f"method {cls.name!r} is already registered by {type(old).__qualname__}")
    METHODS[cls.name] = cls()
    return cls


def get_method(name: str) -> Method:
    """The registered method ``name``; ``KeyError`` naming the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; registered: {tuple(METHODS)}") from None
