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

import random
import re
import warnings
from fractions import Fraction
from pathlib import Path

from gopd_lab.errors import DataError
from gopd_lab.runio import read_jsonl
from gopd_lab.tasks.base import Example, Task

_BOXED = re.compile(r"\\(?:boxed|fbox)")
_HASHES = re.compile(r"####\s*([^\n]*)")
_CALCULATOR = re.compile(r"<<[^<>]*>>")
_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|[-+]?\.\d+")
_THOUSANDS = re.compile(r"[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_DECIMAL = re.compile(r"-?\d+\.\d*")
_TEXT_GROUP = re.compile(r"\\(?:text|textbf|mbox|mathrm)\{([^{}]*)\}")
_ASSIGNMENT = re.compile(r"^[a-zA-Z]{1,2}=(?!=)")
_FRAC_SHORT = re.compile(r"\\frac(\d)(\d)")
_FRAC_HALF_SHORT = re.compile(r"\\frac\{([^{}]*)\}(\d)")
_SQRT_SHORT = re.compile(r"\\sqrt(\d+)")
_LATEX_FRAC = re.compile(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}")
_SLASH_FRAC = re.compile(r"-?\d+/\d+")
_LAST_NUMBER = re.compile(r"[-+]?\d+/\d+(?![\d/])|" + _NUMBER.pattern)
_NUMBER_THEN_WORDS = re.compile(r"\$?\s*(" + _NUMBER.pattern + r"|-?\d+/\d+)\s*\$?\s+[A-Za-z][A-Za-z .]*\.?")
_REMOVED = ("\\$", "\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\ ", "$", "^{\\circ}", "^\\circ", "\\%", "%")
_LAYOUTS = (("question", "answer"), ("problem", "solution"), ("prompt", "answer"))
_FIELDS = "expected fields 'question'+'answer' (GSM8K), 'problem'+'solution' (MATH) or 'prompt'+'answer'"


def extract_boxed(text: str) -> str | None:
    """Return the content of the last ``\\boxed{...}`` or ``\\fbox{...}`` in ``text``, or ``None``.

    Nested braces are matched (``\\boxed{\\frac{1}{2}}`` → ``\\frac{1}{2}``), spaces before the
    brace are allowed, and the brace-less form ``\\boxed 5`` gives ``5``. An unclosed brace gives
    ``None``.
    """
    matches = list(_BOXED.finditer(text))
    if not matches:
        return None
    rest = text[matches[-1].end() :]
    body = rest.lstrip()
    if not body.startswith("{"):
        if rest[:1] != " ":
            return None
        return re.split(r"[\s$]", body, maxsplit=1)[0] or None
    depth = 0
    for i, char in enumerate(body):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == 0:
            return body[1:i]
    return None


def extract_hashes(text: str) -> str | None:
    """Return what follows the last ``#### `` marker (GSM8K's final-answer line), or ``None``.

    A number followed by words is the number (``#### 18 dollars`` → ``18``; a unit is not part of the answer).
    """
    matches = _HASHES.findall(text)
    found = matches[-1].strip() if matches and matches[-1].strip() else None
    unit = _NUMBER_THEN_WORDS.fullmatch(found) if found else None
    return unit.group(1) if unit else found


def extract_answer(completion: str) -> str | None:
    """Return a completion's final answer: the last ``\\boxed{}``, else ``#### n``, else the last number (a
    plain-text fraction ``3/4`` counts as one number, not as its denominator)."""
    for found in (extract_boxed(completion), extract_hashes(completion)):
        if found is not None:
            return found
    numbers = _LAST_NUMBER.findall(completion)
    return numbers[-1] if numbers else None


def reference_answer(solution: str) -> str:
    """Return a reference solution's final answer: ``\\boxed{}``, else ``#### n``, else the whole text."""
    for found in (extract_boxed(solution), extract_hashes(solution)):
        if found is not None:
            return found
    return solution.strip()


def normalize_answer(answer: str) -> str:
    """Return ``answer`` in a canonical form for string comparison.

    Removes ``$`` (also escaped, ``\\$``), ``\\left``/``\\right``, LaTeX spacing (``\\!``, ``\\,``, ...), degrees and
    percent signs, ``\\text{...}`` units after a value (a lone ``\\text{A}`` becomes ``A``), all
    whitespace, a trailing ``.``, a leading ``x =`` and a leading ``+``; writes ``\\dfrac`` and
    ``\\tfrac`` as ``\\frac`` and ``\\frac12`` as ``\\frac{1}{2}``; writes decimals without
    thousands separators or trailing zeros (``"1,000.50"`` → ``"1000.5"``).
    """
    text = answer.strip()
    for token in _REMOVED:
        text = text.replace(token, "")
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    without_units = _TEXT_GROUP.sub("", text).strip()
    text = without_units if without_units else _TEXT_GROUP.sub(r"\1", text)
    text = re.sub(r"\s+", "", text).rstrip(".")
    text = _ASSIGNMENT.sub("", text)
    text = _FRAC_SHORT.sub(r"\\frac{\1}{\2}", text)
    text = _FRAC_HALF_SHORT.sub(r"\\frac{\1}{\2}", text)
    text = _SQRT_SHORT.sub(r"\\sqrt{\1}", text)
    if text.startswith("+"):
        text = text[1:]
    if _THOUSANDS.fullmatch(text):
        text = text.replace(",", "")
    if _DECIMAL.fullmatch(text):
        text = text.rstrip("0").rstrip(".")
        text = "0" if text in ("", "-", "-0") else text
    return text


def to_number(answer: str) -> Fraction | None:
    """Return the exact value of a normalised answer that is a number or a fraction, else ``None``.

    Accepts integers, decimals, ``a/b`` and ``\\frac{a}{b}`` with an optional leading ``-``.
    """
    match = _LATEX_FRAC.fullmatch(answer)
    try:
        if match:
            sign, numerator, denominator = match.groups()
            value = Fraction(int(numerator), int(denominator))
            return -value if sign else value
        if _NUMBER.fullmatch(answer) or _SLASH_FRAC.fullmatch(answer):
            return Fraction(answer.replace(",", ""))
    except ZeroDivisionError:
        return None
    return None


def answers_equal(predicted: str, reference: str) -> bool:
    """Return whether two final answers agree: equal once normalised, or equal as exact numbers."""
    predicted, reference = normalize_answer(predicted), normalize_answer(reference)
    if predicted == reference:
        return True
    a, b = to_number(predicted), to_number(reference)
    return a is not None and b is not None and a == b


def math_verifier(completion: str, answer: str) -> bool:
    """Return whether the final answer of ``completion`` matches the reference solution ``answer``."""
    predicted = extract_answer(completion)
    return predicted is not None and answers_equal(predicted, reference_answer(answer))


def math_feedback(completion: str, answer: str) -> str:
    """Return ``"expected 18, got 20"``, or ``"expected 18, got no answer"`` when none was found."""
    predicted = extract_answer(completion)
    got = normalize_answer(predicted) if predicted is not None else "no answer"
    return f"expected {normalize_answer(reference_answer(answer))}, got {got}"


def parse_math_row(row: dict, path: str | Path, line_number: int) -> tuple[str, str]:
    """Return ``(question, reference solution)`` of one row in any supported layout."""
    for question_field, answer_field in _LAYOUTS:
        question, solution = row.get(question_field), row.get(answer_field)
        if isinstance(question, str) and isinstance(solution, str):
            solution = _CALCULATOR.sub("", solution) if question_field == "question" else solution
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
    answer in \\\\boxed{{}}."``). Distinct prompts are shuffled with ``seed`` and a
    ``test_fraction`` of them (at least one when the fraction is positive) becomes the test split.

    Raises ``ValueError`` naming the file and line for a row in no supported layout or without a
    final answer, and for an empty file.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    pairs: dict[str, str] = {}
    unanswered, duplicates = [], []
    for line_number, row in read_jsonl(path, strict=True, numbered=True):
        try:
            question, solution = parse_math_row(row, path, line_number)
        except NoFinalAnswer as err:
            unanswered.append((line_number, str(err)))
            continue
        prompt = template.format(question=question)
        if prompt in pairs:
            duplicates.append(line_number)
        pairs.setdefault(prompt, solution)
    if not pairs:
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
            f"{path}: {len(duplicates)} row(s) repeat an earlier prompt and were dropped (the first one is kept), "
            f"line(s) {_few(duplicates)}",
            stacklevel=2,
        )
    examples = [Example(prompt, solution, domain) for prompt, solution in pairs.items()]
    random.Random(seed).shuffle(examples)
    n_test = max(1, round(len(examples) * test_fraction)) if test_fraction > 0 and len(examples) > 1 else 0
    return Task(
        domain,
        examples[n_test:],
        examples[:n_test],
        verifier=verifier or math_verifier,
        feedback=feedback or (None if verifier else math_feedback),
    )
