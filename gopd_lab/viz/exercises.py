"""The course's exercises, each one checked by the package: its expected answer (computed by package code, the
oracle), its solution, the wrong answers it must reject, its hints in levels and a tolerance sized to its answer.

A notebook's check cell is one call, ``course.exercise("01-advantage").check(answer_advantage, record=record)``:
the keyword arguments are the notebook values the exercise is about (its *context*). :meth:`Exercise.check`
returns a :class:`Verdict` (``right``, ``wrong`` or ``unanswered``) and never raises on a bad answer, so a
check cell runs top to bottom before anyone has answered. A wrong answer gets the next hint each time it is
checked; the last hint is the formula, and the reason the answer is right is shown only once it is.

Three kinds of exercise:

- ``value``: a number or a list/tensor of numbers, compared element-wise within ``rtol·|expected| + atol``;
- ``choice``: a prediction, one of ``options``, written before running the cell that shows the outcome; the
  expected option is read off the notebook's own values, not written down;
- ``function``: an implementation (a ``lambda``), called on random trees (:mod:`gopd_lab.lm.exact`) and compared
  with the package's own function there.

Every exercise carries ``sample(seed)``, a context of random values with the shapes of the notebook's, on which
``tests/test_course.py`` runs each check against its solution (must say right) and against every listed wrong
answer (must say wrong).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

__all__ = ["EXERCISES", "Exercise", "Verdict", "check", "exercise"]

_UNANSWERED = "not answered yet: write your answer in the cell above and run this cell again"


@dataclass(frozen=True)
class Verdict:
    """What a check cell shows: ``status`` is ``right``, ``wrong`` or ``unanswered``; ``message`` says why."""

    status: str
    message: str

    @property
    def right(self) -> bool:
        return self.status == "right"

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return self.message

    def _repr_html_(self) -> str:
        colour = {"right": "#1a7f37", "wrong": "#b3261e"}.get(self.status, "#6e5600")
        text = self.message.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return f'<div style="border-left:4px solid {colour};padding:4px 10px;color:{colour}">{text}</div>'


def _numbers(value: Any) -> list[float]:
    """``value`` (a number, a nested list, a tensor or an array) as a flat list of floats."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().tolist()
    elif hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _numbers(v)]
    return [float(value)]


def _compare(answer: Any, expected: Any, rtol: float, atol: float) -> str | None:
    """``None`` when ``answer`` matches ``expected`` element-wise within ``rtol·|expected| + atol``, else why not."""
    try:
        got, want = _numbers(answer), _numbers(expected)
    except (TypeError, ValueError) as err:
        return f"expected a number or a list of numbers, got {answer!r} ({err})."
    if len(got) != len(want):
        return f"expected {len(want)} number(s), got {len(got)}."
    for i, (g, w) in enumerate(zip(got, want)):
        if not (math.isfinite(g) and abs(g - w) <= atol + rtol * abs(w)):
            where = f" at position {i}" if len(want) > 1 else ""
            return f"{g:.6g}{where} is not it (the tolerance is {rtol:.1%} of the answer)."
    return None


def check(answer: Any, expected: Any, *, why: str, rtol: float = 1e-3, atol: float = 1e-9, hint: str = "") -> Verdict:
    """Compare a learner's ``answer`` to ``expected`` and say right or wrong, and why.

    Numbers, lists, tensors and arrays are compared element-wise within ``rtol·|expected| + atol`` (a tolerance
    relative to the answer, so 0 is never "close enough" to a small answer); anything else (a string, a bool) by
    equality. ``None`` (the answer cell as shipped) is "not answered yet". ``why`` is the reason the expected value
    is right, shown once it is; ``hint`` is added when the answer is wrong.
    """
    if answer is None or answer is ...:
        return Verdict("unanswered", _UNANSWERED)
    suffix = f" Hint: {hint}" if hint else ""
    if isinstance(expected, (str, bool)):
        if answer == expected:
            return Verdict("right", f"right: {why}")
        return Verdict("wrong", f"wrong: {answer!r} is not it.{suffix}")
    off = _compare(answer, expected, rtol, atol)
    return Verdict("right", f"right: {why}") if off is None else Verdict("wrong", f"wrong: {off}{suffix}")


@dataclass(frozen=True)
class Exercise:
    """One exercise: how to check it, what it must reject, and a context to test that on.

    ``expected(ctx)`` computes the answer from the context with package code (``value``, ``choice``) or is the
    package function an implementation must match (``function``: ``expected`` and the answer are called on each
    of ``trials(seed)``, tuples of arguments on random trees; with ``judge``, ``judge(answer, *args)`` is what is
    compared, e.g. a loss's gradient). ``solution`` assigns ``answer_name`` in the
    notebook's namespace; ``wrong`` maps what a plausible wrong answer is to an expression computing it there.
    """

    id: str
    answer_name: str
    expected: Callable[..., Any]
    solution: str
    wrong: Mapping[str, str]
    hints: tuple[str, ...]
    why: str
    sample: Callable[[int], dict[str, Any]]
    kind: str = "value"
    rtol: float = 1e-3
    atol: float = 1e-9
    options: tuple[str, ...] = ()
    trials: Callable[[int], list[tuple]] | None = None
    judge: Callable[..., Any] | None = None
    _tries: dict[str, int] = field(default_factory=dict, compare=False, repr=False)

    def hint(self, level: int) -> str:
        """Hint ``level`` (1 = the gentlest; the last one is the formula)."""
        level = max(1, min(level, len(self.hints)))
        return f"Hint {level} of {len(self.hints)}: {self.hints[level - 1]}"

    def reset(self) -> None:
        """Start the hints again from level 1."""
        self._tries.clear()

    def _wrong(self, text: str) -> Verdict:
        tries = self._tries.get("n", 0) + 1
        self._tries["n"] = tries
        more = " (check again after another try for the next hint)" if tries < len(self.hints) else ""
        return Verdict("wrong", f"wrong: {text} {self.hint(tries)}{more}")

    def _known_wrong(self, answer: Any, context: Mapping[str, Any]) -> str | None:
        """The label of a listed wrong answer ``answer`` equals, if any (a targeted message)."""
        if self.kind != "value":
            return None
        for label, source in self.wrong.items():
            try:
                value = eval(source, _namespace(context))  # the exercise's own expression, never user input
            except Exception:  # a wrong answer that cannot be computed in this context is not this one
                continue
            if _compare(answer, value, self.rtol, self.atol) is None:
                return label
        return None

    def check(self, answer: Any, **context: Any) -> Verdict:
        """Say whether ``answer`` is right for the notebook values ``context``; never raises on a bad answer."""
        if answer is None or answer is ...:
            return Verdict("unanswered", _UNANSWERED)
        if self.kind == "choice":
            if answer not in self.options:
                return Verdict("wrong", f"wrong: write one of {list(self.options)}, not {answer!r}.")
            expected = self.expected(**context)
            if answer == expected:
                self._tries.clear()
                return Verdict("right", f"right: {self.why}")
            return self._wrong(f"the cell above shows {expected!r}, not {answer!r}.")
        if self.kind == "function":
            return self._check_function(answer)
        try:
            expected = self.expected(**context)
        except Exception as err:  # the context itself is wrong (a name rebound by a later cell)
            return Verdict("wrong", f"cannot check: {type(err).__name__}: {err}; rerun the cells above this one")
        off = _compare(answer, expected, self.rtol, self.atol)
        if off is None:
            self._tries.clear()
            return Verdict("right", f"right: {self.why}")
        label = self._known_wrong(answer, context)
        return self._wrong(f"{off} It is {label}." if label else off)

    def _check_function(self, answer: Any) -> Verdict:
        if not callable(answer):
            return Verdict("wrong", f"wrong: expected a function (a lambda), got {answer!r}.")
        for n, args in enumerate(self.trials(0)):
            try:
                got = self.judge(answer, *args) if self.judge else answer(*args)
            except Exception as err:
                return self._wrong(f"on random tree {n} it raised {type(err).__name__}: {err}.")
            off = _compare(got, self.expected(*args), self.rtol, self.atol)
            if off is not None:
                return self._wrong(f"on random tree {n}: {off}")
        self._tries.clear()
        return Verdict("right", f"right: {self.why}")


def _namespace(context: Mapping[str, Any]) -> dict[str, Any]:
    """What a wrong answer's expression may use: torch, the exact oracles, token_logprobs and the context."""
    import torch

    from gopd_lab.lm import exact
    from gopd_lab.lm.logprobs import token_logprobs

    return {"torch": torch, "exact": exact, "token_logprobs": token_logprobs, **context}


# ----------------------------------------------------------------------------- random contexts for the tests
def _record(seed: int, lam: float = 1.25) -> dict[str, Any]:
    """A logged sample with random log-probs (the fields notebook 01's exercise reads)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    n = 5
    lp = {k: (-torch.rand(n, generator=g) * 3).tolist() for k in ("lp_student", "lp_teacher", "lp_reference")}
    return {**lp, "lam": lam, "tokens": [str(i) for i in range(n)]}


def _batch(seed: int) -> dict[str, Any]:
    """``lp_student``, ``scored.lp_teacher`` and ``valid`` of a random (B, C) batch, and its λ = 1 advantages."""
    import torch

    g = torch.Generator().manual_seed(seed)
    B, C = 4, 6
    lp_student, lp_teacher = -torch.rand(B, C, generator=g) * 3, -torch.rand(B, C, generator=g) * 3  # (B, C)
    valid = torch.rand(B, C, generator=g) > 0.3  # (B, C)
    valid[:, 0] = True
    return {
        "lp_student": lp_student,
        "scored": SimpleNamespace(lp_teacher=lp_teacher),
        "valid": valid,
        "advantages": lp_teacher - lp_student,  # (B, C) λ = 1
    }


def _tree(seed: int) -> dict[str, Any]:
    """Notebook 03's context on a random tree: ``teacher``, ``reference`` and their sequence log-probs ``seq``."""
    from gopd_lab.lm import exact

    teacher = exact.random_policy(3, 3, seed=2 * seed + 1, scale=1.0)
    reference = exact.random_policy(3, 3, seed=2 * seed + 2, scale=1.0)
    seq = {n: exact.sequence_logprobs(p).detach() for n, p in (("teacher", teacher), ("reference", reference))}
    return {"teacher": teacher, "reference": reference, "seq": seq}


def _three_models(seed: int) -> dict[str, Any]:
    """Notebook 05's context: ``lp`` of three models on a random (B, C) batch and its ``valid`` mask."""
    import torch

    g = torch.Generator().manual_seed(seed)
    names = ("zoo:big-teacher", "zoo:student-base", "zoo:big-base")
    lp = {n: -torch.rand(4, 6, generator=g) * 3 for n in names}  # (B, C) each
    valid = torch.rand(4, 6, generator=g) > 0.3  # (B, C)
    valid[:, 0] = True
    return {"lp": lp, "valid": valid}


def _two_teachers(seed: int) -> dict[str, Any]:
    """Notebook 06's context on a random tree: two tabular teachers, a rollout, its mul rows and their scores."""
    import torch

    from gopd_lab.lm import exact
    from gopd_lab.lm.logprobs import token_logprobs

    teachers = {d: exact.random_policy(3, 2, seed=10 * seed + i, scale=1.5) for i, d in enumerate(("add", "mul"))}
    rollout = exact.enumerated_rollout(3, 2)
    rows = {"add": list(range(0, 9, 2)), "mul": list(range(1, 9, 2))}
    lp_teacher = torch.zeros(9, 2)  # (B, C): each row scored by its own domain's teacher
    for d, r in rows.items():
        lp_teacher[r] = token_logprobs(teachers[d], rollout.select(r))
    return {
        "models": SimpleNamespace(teacher_for=teachers.__getitem__),
        "rollout": rollout,
        "rows": rows,
        "scored": SimpleNamespace(lp_teacher=lp_teacher),
    }


def _tree_trials(seed: int) -> list[tuple]:
    """Arguments ``(teacher, reference, lam)`` on three random trees, λ below, at and above 1."""
    from gopd_lab.lm import exact

    return [
        (exact.random_policy(3, 3, seed=seed + 7 * i, scale=1.5), exact.random_policy(3, 3, seed=seed + 7 * i + 3), lam)
        for i, lam in enumerate((0.5, 1.5, 2.0))
    ]


def _token_trials(seed: int) -> list[tuple]:
    """Arguments ``(lp_student, lp_teacher, lp_reference, lam)``: every token of every completion of a random tree."""
    from gopd_lab.lm import exact
    from gopd_lab.lm.logprobs import token_logprobs

    every = exact.enumerated_rollout(3, 3)
    out = []
    for i, lam in enumerate((0.5, 1.25, 2.0)):
        policies = [exact.random_policy(3, 3, seed=seed + 11 * i + j, scale=1.5) for j in range(3)]
        out.append((*(token_logprobs(p, every) for p in policies), lam))  # (K^H, H) each
    return out


def _loss_trials(seed: int) -> list[tuple]:
    """Arguments ``(lp_student, advantages, mask)`` of the sampled estimator on random (B, C) batches."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(3):
        lp = -torch.rand(4, 5, generator=g) * 3  # (B, C)
        mask = torch.rand(4, 5, generator=g) > 0.3  # (B, C)
        mask[:, 0] = True
        out.append((lp, torch.randn(4, 5, generator=g), mask.float()))
    return out


def _advantage_at(record: Mapping[str, Any], t: int, lam: float) -> float:
    import torch

    from gopd_lab.objectives.advantages import gopd_advantages

    lp = {k: torch.tensor([record[k][t]]) for k in ("lp_student", "lp_teacher", "lp_reference")}
    return float(gopd_advantages(lp["lp_student"], lp["lp_teacher"], lp["lp_reference"], lam=lam)[0])


def _largest_gap(record: Mapping[str, Any]) -> int:
    """The token where the teacher and the reference disagree most (where λ matters most)."""
    gaps = [abs(t - r) for t, r in zip(record["lp_teacher"], record["lp_reference"])]
    return gaps.index(max(gaps))


def _log_z(teacher: Any, reference: Any, lam: float) -> float:
    from gopd_lab.lm import exact

    return exact.gopd_objective(exact.sequence_level_optimum(teacher, reference, lam), teacher, reference, lam)


def _root_optimum(teacher: Any, reference: Any, lam: float) -> Any:
    from gopd_lab.lm import exact

    return exact.token_level_optimum(teacher, reference, lam).log_probs()[0].exp().detach()


def _sequence_optimum(teacher: Any, reference: Any, lam: float) -> Any:
    from gopd_lab.lm import exact

    return exact.sequence_logprobs(exact.sequence_level_optimum(teacher, reference, lam)).detach().exp()


def _gopd_advantages(lp_student: Any, lp_teacher: Any, lp_reference: Any, lam: float) -> Any:
    from gopd_lab.objectives.advantages import gopd_advantages

    return gopd_advantages(lp_student, lp_teacher, lp_reference, lam=lam)


def _sampled_gradient(loss_fn: Callable[..., Any], lp: Any, advantages: Any, mask: Any) -> Any:
    """The gradient of ``loss_fn``'s loss with respect to the student's log-probs (what the update follows)."""
    leaf = lp.clone().requires_grad_(True)
    out = loss_fn(leaf, advantages, mask)
    loss = out[0] if isinstance(out, tuple) else out
    loss.backward()
    return leaf.grad


def _package_sampled_gradient(lp: Any, advantages: Any, mask: Any) -> Any:
    from gopd_lab.objectives.sampled import sampled_loss

    return _sampled_gradient(sampled_loss, lp, advantages, mask)


_EXERCISES = [
    Exercise(
        id="01-advantage",
        answer_name="answer_advantage",
        expected=lambda record, t: _advantage_at(record, t, 2.0),
        solution=(
            'answer_advantage = 2.0 * record["lp_teacher"][t] + (1 - 2.0) * record["lp_reference"][t] '
            '- record["lp_student"][t]'
        ),
        wrong={
            "0": "0.0",
            "the value the run trained with, at its own λ": (
                'record["lam"] * record["lp_teacher"][t] + (1 - record["lam"]) * record["lp_reference"][t] '
                '- record["lp_student"][t]'
            ),
            "the λ = 1 (OPD) value, where the reference cancels": 'record["lp_teacher"][t] - record["lp_student"][t]',
            "the sign-flipped value": (
                '-(2.0 * record["lp_teacher"][t] - record["lp_reference"][t] - record["lp_student"][t])'
            ),
        },
        hints=(
            "A_t is the reward scaled by λ, minus how far the student already moved from the reference.",
            "the reward is ℓ^T − ℓ^R; the student's own term is ℓ^θ − ℓ^R; at λ = 2 the reference does not cancel.",
            "A_t = λ·(ℓ^T_t − ℓ^R_t) − (ℓ^θ_t − ℓ^R_t), with λ = 2 and t = t.",
        ),
        why="A_t = λ·(ℓ^T − ℓ^R) − (ℓ^θ − ℓ^R) = 2·ℓ^T − ℓ^R − ℓ^θ at λ = 2",
        sample=lambda seed: {"record": (r := _record(seed)), "t": _largest_gap(r)},
    ),
    Exercise(
        id="02-reverse-kl",
        answer_name="answer_reverse_kl",
        expected=lambda lp_student, scored, valid: float((lp_student - scored.lp_teacher)[valid].mean()),
        solution="answer_reverse_kl = float((lp_student - scored.lp_teacher)[valid].mean())",
        wrong={
            "0": "0.0",
            "the sign-flipped value, mean(ℓ^T − ℓ^θ)": "float((scored.lp_teacher - lp_student)[valid].mean())",
            "the mean over every position, padding included": "float((lp_student - scored.lp_teacher).mean())",
            "a sum, not a mean": "float((lp_student - scored.lp_teacher)[valid].sum())",
        },
        hints=(
            "the reverse KL is an expectation under the student, and these tokens were sampled by it.",
            "per token it is the student's log-prob minus the teacher's; padding is not a token.",
            "mean over valid tokens of ℓ^θ_t − ℓ^T_t: index both (B, C) tensors with valid, then .mean().",
        ),
        why="on the student's own samples, mean(ℓ^θ − ℓ^T) over valid tokens estimates the reverse KL; "
        "it is −mean(A_t) at λ = 1",
        sample=lambda seed: {k: v for k, v in _batch(seed).items() if k != "advantages"},
    ),
    Exercise(
        id="03-log-z",
        answer_name="answer_log_z",
        expected=lambda teacher, reference, seq: _log_z(teacher, reference, 1.5),
        solution='answer_log_z = float(torch.logsumexp(1.5 * seq["teacher"] + (1 - 1.5) * seq["reference"], 0))',
        wrong={
            "0": "0.0",
            "log Z at λ = 1 (always 0)": 'float(torch.logsumexp(seq["teacher"], 0))',
            "log Z at λ = 2": 'float(torch.logsumexp(2.0 * seq["teacher"] - seq["reference"], 0))',
            "the reference left out": 'float(torch.logsumexp(1.5 * seq["teacher"], 0))',
            "the sign-flipped value": 'float(-torch.logsumexp(1.5 * seq["teacher"] - 0.5 * seq["reference"], 0))',
            "a log of a mean, not of a sum": (
                'float(torch.logsumexp(1.5 * seq["teacher"] - 0.5 * seq["reference"], 0)) '
                '- float(torch.log(torch.tensor(len(seq["teacher"]))))'
            ),
        },
        hints=(
            "Step 4: the objective at its maximiser is the log of the normaliser Z_λ.",
            "Z_λ sums π_R(a)^(1−λ)·π_T(a)^λ over every completion a; work in log space (torch.logsumexp).",
            "log Z_λ = logsumexp over a of λ·log π_T(a) + (1 − λ)·log π_R(a), with λ = 1.5.",
        ),
        why="J at the optimum is log Z_λ = log Σ_a π_R(a)^(1−λ)·π_T(a)^λ (Step 4)",
        sample=_tree,
    ),
    Exercise(
        id="03-token-optimum",
        answer_name="answer_root",
        expected=lambda teacher, reference: _root_optimum(teacher, reference, 2.0),
        solution="answer_root = torch.softmax(2.0 * teacher.log_probs()[0] + (1 - 2.0) * reference.log_probs()[0], -1)",
        wrong={
            "the teacher's own distribution (λ = 1)": "teacher.log_probs()[0].exp()",
            "unnormalised": "(2.0 * teacher.log_probs()[0] - reference.log_probs()[0]).exp()",
            "λ and 1 − λ swapped": "torch.softmax(-teacher.log_probs()[0] + 2.0 * reference.log_probs()[0], -1)",
            "the sequence-level optimum's root": (
                "exact.sequence_level_optimum(teacher, reference, 2.0).log_probs()[0].exp().detach()"
            ),
        },
        hints=(
            "the token-level optimum is normalised at each state on its own, with no look-ahead.",
            "combine the two rows of log-probabilities at state 0 linearly, then normalise (softmax).",
            "softmax(λ·log π_T(·|0) + (1 − λ)·log π_R(·|0)) with λ = 2: row 0 of the (S, K) tables.",
        ),
        why="π_tok(·|s) ∝ π_R(·|s)^(1−λ)·π_T(·|s)^λ, normalised at the state itself (Step 5)",
        rtol=1e-3,
        atol=1e-6,
        sample=lambda seed: {k: v for k, v in _tree(seed).items() if k != "seq"},
    ),
    Exercise(
        id="05-reward",
        answer_name="answer_reward_gap",
        expected=lambda lp, valid: float((lp["zoo:big-base"] - lp["zoo:student-base"])[valid].mean()),
        solution=(
            'answer_reward_gap = float(\n    ((lp["zoo:big-teacher"] - lp["zoo:student-base"]) '
            '- (lp["zoo:big-teacher"] - lp["zoo:big-base"]))[valid].mean()\n)'
        ),
        wrong={
            "0": "0.0",
            "the reward with big-base as reference alone": (
                'float((lp["zoo:big-teacher"] - lp["zoo:big-base"])[valid].mean())'
            ),
            "the sign-flipped value (big-base minus student)": (
                'float((lp["zoo:student-base"] - lp["zoo:big-base"])[valid].mean())'
            ),
            "the mean over every position, padding included": (
                'float((lp["zoo:big-base"] - lp["zoo:student-base"]).mean())'
            ),
        },
        hints=(
            "write both rewards out: what is left of the teacher's term in their difference?",
            "the signed reward is ℓ^T − ℓ^R; the student's reward minus big-base's; only valid tokens count.",
            "mean over valid tokens of (ℓ^T − ℓ^student) − (ℓ^T − ℓ^big-base) = ℓ^big-base − ℓ^student.",
        ),
        why="the teacher terms cancel: the difference of the two rewards is ℓ^base − ℓ^student, the capacity gap "
        "between the big and the small base that reward correction removes",
        sample=_three_models,
    ),
    Exercise(
        id="06-wrong-teacher",
        answer_name="answer_wrong_teacher",
        expected=lambda models, rollout, rows, scored: _wrong_teacher_gap(models, rollout, rows, scored),
        solution=(
            'mul_rows = rollout.select(rows["mul"])\nmul_valid = mul_rows.completion_mask.bool()\n'
            "answer_wrong_teacher = float(\n"
            '    token_logprobs(models.teacher_for("add"), mul_rows)[mul_valid].mean()\n'
            '    - scored.lp_teacher[rows["mul"]][mul_valid].mean()\n)'
        ),
        wrong={
            "0": "0.0",
            "the right teacher's mean alone": 'float(scored.lp_teacher[rows["mul"]].mean())',
            "the sign-flipped value": (
                'float(scored.lp_teacher[rows["mul"]][rollout.select(rows["mul"]).completion_mask.bool()].mean()'
                ' - token_logprobs(models.teacher_for("add"), rollout.select(rows["mul"]))'
                '[rollout.select(rows["mul"]).completion_mask.bool()].mean())'
            ),
        },
        hints=(
            "score the same mul tokens twice: once by the add teacher, once (already done) by the mul teacher.",
            'token_logprobs(models.teacher_for("add"), rollout.select(rows["mul"])) is (rows, C); mask it.',
            "mean of the add teacher's ℓ over the mul rows' real tokens − mean of scored.lp_teacher over the same.",
        ),
        why="each teacher is the expert of its own domain: routing mul rows to teacher-add scores the same tokens "
        "with a model that knows less about them, a different (here lower) signal than the one G-OPD uses",
        sample=_two_teachers,
    ),
    # ---------------------------------------------------------------- implement-the-line, judged on random trees
    Exercise(
        id="03-implement-advantage",
        answer_name="my_advantage",
        kind="function",
        expected=_gopd_advantages,
        solution="my_advantage = lambda lp_student, lp_teacher, lp_reference, lam: (\n"
        "    lam * (lp_teacher - lp_reference) - (lp_student - lp_reference)\n)",
        wrong={
            "the λ = 1 advantage whatever λ": "lambda lp_student, lp_teacher, lp_reference, lam: lp_teacher - lp_student",
            "λ on the whole advantage": (
                "lambda lp_student, lp_teacher, lp_reference, lam: lam * (lp_teacher - lp_student)"
            ),
            "the sign-flipped advantage": (
                "lambda lp_student, lp_teacher, lp_reference, lam: "
                "-(lam * (lp_teacher - lp_reference) - (lp_student - lp_reference))"
            ),
        },
        hints=(
            "the advantage is the integrand of J_λ (Step 2): a scaled reward minus a KL term, per token.",
            "the reward is ℓ^T − ℓ^R, scaled by λ; the KL term is ℓ^θ − ℓ^R, not scaled.",
            "A_t = λ·(ℓ^T_t − ℓ^R_t) − (ℓ^θ_t − ℓ^R_t).",
        ),
        why="your A_t matches gopd_advantages on every token of three random trees (λ = 0.5, 1.25, 2)",
        rtol=1e-4,
        atol=1e-5,
        sample=lambda seed: {},
        trials=_token_trials,
    ),
    Exercise(
        id="03-implement-optimum",
        answer_name="my_optimum",
        kind="function",
        expected=_sequence_optimum,
        solution="my_optimum = lambda teacher, reference, lam: torch.softmax(\n"
        "    lam * exact.sequence_logprobs(teacher) + (1 - lam) * exact.sequence_logprobs(reference), 0\n)",
        wrong={
            "the teacher whatever λ": "lambda teacher, reference, lam: exact.sequence_logprobs(teacher).exp()",
            "unnormalised": (
                "lambda teacher, reference, lam: (lam * exact.sequence_logprobs(teacher) "
                "+ (1 - lam) * exact.sequence_logprobs(reference)).exp()"
            ),
            "the token-level optimum": (
                "lambda teacher, reference, lam: "
                "exact.sequence_logprobs(exact.token_level_optimum(teacher, reference, lam)).exp()"
            ),
            "λ and 1 − λ swapped": (
                "lambda teacher, reference, lam: torch.softmax((1 - lam) * exact.sequence_logprobs(teacher) "
                "+ lam * exact.sequence_logprobs(reference), 0)"
            ),
        },
        hints=(
            "Step 4: the optimum over whole sequences is a geometric mix of two distributions, normalised.",
            "exact.sequence_logprobs(p) gives log p(a) of every completion; mix them linearly, then normalise.",
            "π*_λ(a) = softmax over a of λ·log π_T(a) + (1 − λ)·log π_R(a).",
        ),
        why="your π*_λ = π_R^(1−λ)·π_T^λ / Z_λ matches exact.sequence_level_optimum on three random trees",
        rtol=1e-3,
        atol=1e-6,
        sample=lambda seed: {},
        trials=_tree_trials,
    ),
    Exercise(
        id="02-implement-loss",
        answer_name="my_loss",
        kind="function",
        expected=_package_sampled_gradient,
        solution="my_loss = lambda lp_student, advantages, mask: -(lp_student * advantages * mask).sum() / mask.sum()",
        wrong={
            "the sign-flipped loss (gradient ascent on −J)": (
                "lambda lp_student, advantages, mask: (lp_student * advantages * mask).sum() / mask.sum()"
            ),
            "padding included": "lambda lp_student, advantages, mask: -(lp_student * advantages).mean()",
            "a sum, not a mean over tokens": (
                "lambda lp_student, advantages, mask: -(lp_student * advantages * mask).sum()"
            ),
            "the advantage alone (no gradient through ℓ^θ)": (
                "lambda lp_student, advantages, mask: -(advantages * mask).sum() / mask.sum() + 0 * lp_student.sum()"
            ),
        },
        hints=(
            "the loss is a policy gradient: each sampled token's log-prob, weighted by its (fixed) advantage.",
            "weight ℓ^θ_t by A_t, average over the real tokens only (mask), and minimise: mind the sign.",
            "L = −(1/N)·Σ_t mask_t·A_t·ℓ^θ_t, N = mask.sum().",
        ),
        why="your loss has the gradient of sampled_loss with respect to ℓ^θ on three random batches",
        rtol=1e-4,
        atol=1e-6,
        sample=lambda seed: {},
        trials=_loss_trials,
        judge=_sampled_gradient,
    ),
]


def _wrong_teacher_gap(models: Any, rollout: Any, rows: Mapping[str, Any], scored: Any) -> float:
    from gopd_lab.lm.logprobs import token_logprobs

    mul_rows = rollout.select(rows["mul"])
    mul_valid = mul_rows.completion_mask.bool()
    add_lp = token_logprobs(models.teacher_for("add"), mul_rows)  # (rows, C)
    return float(add_lp[mul_valid].mean() - scored.lp_teacher[rows["mul"]][mul_valid].mean())


EXERCISES: dict[str, Exercise] = {ex.id: ex for ex in _EXERCISES}
"""Every exercise of the course by id (``<notebook>-<name>``)."""


def exercise(ex_id: str) -> Exercise:
    """The exercise ``ex_id`` (a notebook's check cell: ``course.exercise(id).check(answer, **context)``)."""
    if ex_id not in EXERCISES:
        raise KeyError(f"no exercise {ex_id!r}; the course has {sorted(EXERCISES)}")
    return EXERCISES[ex_id]
