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
from fractions import Fraction
from pathlib import Path

from gopd_lab.tasks.base import Example, Task, read_jsonl

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
_REMOVED = ("\\left", "\\right", "\\!", "\\,", "\\;", "\\:", "\\ ", "$", "^{\\circ}", "^\\circ", "\\%", "%")
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
    """Return what follows the last ``#### `` marker (GSM8K's final-answer line), or ``None``."""
    matches = _HASHES.findall(text)
    return matches[-1].strip() if matches and matches[-1].strip() else None


def extract_answer(completion: str) -> str | None:
    """Return a completion's final answer: the last ``\\boxed{}``, else ``#### n``, else the last number."""
    for found in (extract_boxed(completion), extract_hashes(completion)):
        if found is not None:
            return found
    numbers = _NUMBER.findall(completion)
    return numbers[-1] if numbers else None


def reference_answer(solution: str) -> str:
    """Return a reference solution's final answer: ``\\boxed{}``, else ``#### n``, else the whole text."""
    for found in (extract_boxed(solution), extract_hashes(solution)):
        if found is not None:
            return found
    return solution.strip()


def normalize_answer(answer: str) -> str:
    """Return ``answer`` in a canonical form for string comparison.

    Removes ``$``, ``\\left``/``\\right``, LaTeX spacing (``\\!``, ``\\,``, ...), degrees and
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
                raise ValueError(
                    f"{path}, line {line_number}: the {answer_field!r} field has no final answer "
                    f"(a '#### n' line or a \\boxed{{...}})"
                )
            return question, solution
    raise ValueError(f"{path}, line {line_number}: {_FIELDS}; found fields {sorted(row)}")


def load_math_jsonl(
    path: str | Path,
    domain: str = "math",
    test_fraction: float = 0.1,
    seed: int = 0,
    template: str = "{question}",
) -> Task:
    """Load a math JSONL file as a ``Task`` checked by ``math_verifier``.

    The prompt of a row is ``template.format(question=...)`` (e.g. ``"{question}\\nPut the final
    answer in \\\\boxed{{}}."``). Distinct prompts are shuffled with ``seed`` and a
    ``test_fraction`` of them (at least one when the fraction is positive) becomes the test split.

    Raises ``ValueError`` naming the file and line for a row in no supported layout or without a
    final answer, and for an empty file.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    pairs: dict[str, str] = {}
    for line_number, row in read_jsonl(path):
        question, solution = parse_math_row(row, path, line_number)
        pairs.setdefault(template.format(question=question), solution)
    examples = [Example(prompt, solution, domain) for prompt, solution in pairs.items()]
    random.Random(seed).shuffle(examples)
    n_test = max(1, round(len(examples) * test_fraction)) if test_fraction > 0 and len(examples) > 1 else 0
    return Task(domain, examples[n_test:], examples[:n_test], verifier=math_verifier, feedback=math_feedback)
