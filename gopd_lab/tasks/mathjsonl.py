"""Real math data in the common JSONL layouts, with final-answer checking.

Row layouts ``load_math_jsonl`` reads (one per row, mixed freely):

- GSM8K: ``{"question": ..., "answer": "... reasoning ...\\n#### 18"}``
- MATH: ``{"problem": ..., "solution": "... $\\boxed{\\frac{1}{2}}$."}``
- plain: ``{"prompt": ..., "answer": "18"}``

The example's ``answer`` is the whole reference solution (what SFT or CHORD would imitate), with
GSM8K's calculator annotations ``<<48/2=24>>`` removed. Its final answer is read by
``reference_answer``; a completion's by ``extract_answer``; ``answers_equal`` compares the two
after ``normalize_answer``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from gopd_lab.errors import DataError
from gopd_lab.runio import read_jsonl
from gopd_lab.tasks.answers import (  # re-exported: the math functions' home before tasks/answers.py
    answers_equal,
    extract_answer,
    extract_boxed,
    extract_hashes,
    math_feedback,
    math_verifier,
    normalize_answer,
    reference_answer,
    strip_calculator,
    to_number,
)
from gopd_lab.tasks.base import Example, Task, split_by_prompt

__all__ = [
    "NoFinalAnswer",
    "answers_equal",
    "extract_answer",
    "extract_boxed",
    "extract_hashes",
    "is_plain_layout",
    "load_math_jsonl",
    "math_feedback",
    "math_verifier",
    "normalize_answer",
    "parse_math_row",
    "reference_answer",
    "to_number",
]

_LAYOUTS = (("question", "answer"), ("problem", "solution"), ("prompt", "answer"))
_FIELDS = "expected fields 'question'+'answer' (GSM8K), 'problem'+'solution' (MATH) or 'prompt'+'answer'"


def parse_math_row(row: dict, path: str | Path, line_number: int) -> tuple[str, str]:
    """Return ``(question, reference solution)`` of one row in any supported layout."""
    for question_field, answer_field in _LAYOUTS:
        question, solution = row.get(question_field), row.get(answer_field)
        if isinstance(question, str) and isinstance(solution, str):
            solution = strip_calculator(solution) if question_field == "question" else solution
            if question_field != "prompt" and reference_answer(solution) == solution.strip():
                raise NoFinalAnswer(
                    f"{path}, line {line_number}: the {answer_field!r} field has no final answer "
                    f"(a '#### n' line or a \\boxed{{...}})"
                )
            return question, solution
    raise DataError(f"{path}, line {line_number}: {_FIELDS}; found fields {sorted(row)}")


class NoFinalAnswer(DataError):
    """A GSM8K/MATH row whose solution has no final answer (``load_math_jsonl`` skips it with a warning)."""


def _few(numbers: list[int], limit: int = 10) -> str:
    shown = ", ".join(map(str, numbers[:limit]))
    return shown + (f" and {len(numbers) - limit} more" if len(numbers) > limit else "")


def is_plain_layout(path: str | Path) -> bool:
    """Whether every row of a JSONL file is the plain ``prompt``/``answer`` layout (no GSM8K/MATH row)."""
    rows = read_jsonl(path, strict=True)
    return all(isinstance(r.get("prompt"), str) and isinstance(r.get("answer"), str) for r in rows) and not any(
        ("question" in r or "problem" in r) for r in rows
    )


def load_math_jsonl(
    path: str | Path,
    domain: str = "math",
    test_fraction: float = 0.1,
    seed: int = 0,
    template: str = "{question}",
    verifier=None,
    feedback=None,
) -> Task:
    """Load a math JSONL file as a ``Task`` checked by ``math_verifier`` (or the ``verifier`` given).

    The prompt of a row is ``template.format(question=...)`` (e.g. ``"{question}\\nPut the final
    answer in \\\\boxed{{}}."``). Every row is kept (a prompt with two solutions is two rows; an exact repeat is
    dropped with a warning). Distinct prompts are shuffled with ``seed`` and a ``test_fraction`` of them (at
    least one when the fraction is positive) becomes the test split with all their rows.

    Raises ``ValueError`` naming the file and line for a row in no supported layout or without a
    final answer, and for an empty file.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    examples: list[Example] = []
    seen: set[tuple[str, str]] = set()
    unanswered, duplicates = [], []
    for line_number, row in read_jsonl(path, strict=True, numbered=True):
        try:
            question, solution = parse_math_row(row, path, line_number)
        except NoFinalAnswer as err:
            unanswered.append((line_number, str(err)))
            continue
        prompt = template.format(question=question)
        if (prompt, solution) in seen:
            duplicates.append(line_number)
            continue
        seen.add((prompt, solution))
        examples.append(Example(prompt, solution, domain))  # a prompt with another solution is another row
    if not examples:
        raise DataError(unanswered[0][1] + "; no row of the file has one")
    if unanswered:
        lines = [n for n, _ in unanswered]
        warnings.warn(
            f"{path}: skipped {len(lines)} row(s) without a final answer (a '#### n' line or a \\boxed{{...}}), "
            f"line(s) {_few(lines)}",
            stacklevel=2,
        )
    if duplicates:
        warnings.warn(
            f"{path}: {len(duplicates)} row(s) repeat an earlier prompt with the same solution and were dropped "
            f"(the first one is kept), line(s) {_few(duplicates)}",
            stacklevel=2,
        )
    train, test = split_by_prompt(examples, test_fraction, seed)
    return Task(
        domain,
        train,
        test,
        verifier=verifier or math_verifier,
        feedback=feedback or (None if verifier else math_feedback),
    )
