"""A Hugging Face ``datasets.Dataset`` (or a ``DatasetDict`` with ``train``/``test``) as a :class:`Task`.

``Task.from_dataset(ds, domain="gsm8k", prompt_field="question", answer_field="answer", verifier="math")``
reads one prompt and one reference answer per row. ``datasets`` is an optional extra
(``pip install 'gopd-lab[datasets]'``); this module only calls methods of the object it is given.
"""

from __future__ import annotations

import random
from typing import Any

from gopd_lab.tasks.base import Example, Feedback, Task, Verifier, exact_match, expected_got

VERIFIERS = ("exact", "math")


def _verifier(verifier: Verifier | str | None, feedback: Feedback | None) -> tuple[Verifier, Feedback]:
    """``"exact"`` (the default), ``"math"`` (final-answer checking, :mod:`gopd_lab.tasks.mathjsonl`) or a
    callable ``(completion, answer) -> bool``."""
    if verifier is None or verifier == "exact":
        return exact_match, feedback or expected_got
    if verifier == "math":
        from gopd_lab.tasks.mathjsonl import math_feedback, math_verifier

        return math_verifier, feedback or math_feedback
    if callable(verifier):
        return verifier, feedback or expected_got
    raise ValueError(
        f"verifier must be one of {VERIFIERS} or a callable (completion, answer) -> bool, got {verifier!r}"
    )


def _rows(ds: Any, prompt_field: str, answer_field: str, split: str) -> list[tuple[str, str]]:
    """``(prompt, answer)`` of every row; numbers in the answer field become text (``18`` → ``"18"``)."""
    columns = list(getattr(ds, "column_names", None) or [])
    missing = [f for f in (prompt_field, answer_field) if f not in columns]
    if missing:
        raise ValueError(
            f"the {split} dataset has no column(s) {missing}; its columns are {columns}: "
            "pass prompt_field=... and answer_field=..."
        )
    pairs = []
    for i, (prompt, answer) in enumerate(zip(ds[prompt_field], ds[answer_field])):
        if not isinstance(prompt, str):
            raise ValueError(f"{split} row {i}: {prompt_field!r} must be text, got {type(prompt).__name__}")
        if isinstance(answer, (int, float)) and not isinstance(answer, bool):
            answer = str(answer)
        if not isinstance(answer, str):
            raise ValueError(f"{split} row {i}: {answer_field!r} must be text or a number, got {type(answer).__name__}")
        pairs.append((prompt, answer))
    return pairs


def task_from_dataset(
    ds: Any,
    domain: str,
    *,
    prompt_field: str = "prompt",
    answer_field: str = "answer",
    test_size: float | int | None = None,
    verifier: Verifier | str | None = None,
    feedback: Feedback | None = None,
    seed: int = 0,
) -> Task:
    """See :meth:`Task.from_dataset`."""
    check, explain = _verifier(verifier, feedback)
    if isinstance(ds, dict):  # a DatasetDict is a dict of split name → Dataset
        splits = list(ds.keys())
        if "train" not in splits:
            raise ValueError(f"a DatasetDict needs a 'train' split, it has {splits}")
        if "test" in splits and test_size is not None:
            raise ValueError("the DatasetDict has its own 'test' split: leave test_size=None (or drop the split)")
        train = _rows(ds["train"], prompt_field, answer_field, "train")
        test = _rows(ds["test"], prompt_field, answer_field, "test") if "test" in splits else None
    else:
        train, test = _rows(ds, prompt_field, answer_field, "train"), None
    if test is None:
        train, test = _split(train, 0.1 if test_size is None else test_size, seed)
    examples = [Example(p, a, domain) for p, a in train], [Example(p, a, domain) for p, a in test]
    return Task(domain, *examples, verifier=check, feedback=explain)


def _split(pairs: list[tuple[str, str]], test_size: float | int, seed: int) -> tuple[list, list]:
    """Shuffle with ``seed`` and hold out ``test_size`` rows (a fraction in [0, 1) or a count)."""
    n = len(pairs)
    if isinstance(test_size, float) and not isinstance(test_size, bool):
        if not 0.0 <= test_size < 1.0:
            raise ValueError(f"test_size as a fraction must be in [0, 1), got {test_size}")
        n_test = max(1, round(n * test_size)) if test_size > 0 and n > 1 else 0
    elif isinstance(test_size, int) and not isinstance(test_size, bool) and 0 <= test_size < n:
        n_test = test_size
    else:
        raise ValueError(f"test_size must be a fraction in [0, 1) or a row count below {n}, got {test_size!r}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    return [pairs[i] for i in order[n_test:]], [pairs[i] for i in order[:n_test]]
