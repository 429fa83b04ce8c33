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
  expected option (and the evidence the verdict shows) is read off the notebook's own values, never written
  down, so a rerun with other parameters is judged by what it shows;
- ``function``: an implementation (a ``lambda``), called on random trees (:mod:`gopd_lab.lm.exact`) and compared
  with the package's own function there.

The course's exercises are in :mod:`gopd_lab.viz.exercise_bank` (``EXERCISES``), the oracles and random contexts
they use in :mod:`gopd_lab.viz.exercise_oracles`. Every exercise carries ``sample(seed)``, a context of random values with the shapes of the notebook's, on which
``tests/test_course.py`` runs each check against its solution (must say right) and against every listed wrong
answer (must say wrong).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Exercise", "Verdict", "check"]

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
            try:
                expected, evidence = self.expected(**context)
            except Exception as err:  # the context itself is wrong (a name rebound by a later cell)
                return Verdict("wrong", f"cannot check: {type(err).__name__}: {err}; rerun the cells above this one")
            if answer == expected:
                self._tries.clear()
                return Verdict("right", f"right: {evidence}. {self.why}")
            return self._wrong(f"{evidence}: {expected!r}, not {answer!r}.")
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
