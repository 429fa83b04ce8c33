"""Final answers of math solutions: extraction, normalisation, comparison, and the math verifier.

Pure text functions (no task, no file): ``extract_answer`` reads a completion's final answer,
``reference_answer`` a reference solution's, ``answers_equal`` compares the two after
``normalize_answer``; ``math_verifier`` / ``math_feedback`` are the verifier and feedback of math tasks
(:mod:`gopd_lab.tasks.mathjsonl` for JSONL files, :mod:`gopd_lab.tasks.hfdata` for datasets).
``strip_calculator`` removes GSM8K's calculator annotations (``<<48/2=24>>``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from fractions import Fraction

Verifier = Callable[[str, str], bool]
Feedback = Callable[[str, str], str]

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


def strip_calculator(solution: str) -> str:
    """Return ``solution`` without GSM8K's calculator annotations: ``"48/2 = <<48/2=24>>24"`` → ``"48/2 = 24"``."""
    return _CALCULATOR.sub("", solution)


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


def exact_match(completion: str, answer: str) -> bool:
    """Return whether ``completion`` equals ``answer`` once both are stripped of surrounding whitespace."""
    return completion.strip() == answer.strip()


def shown(completion: str, limit: int = 24) -> str:
    """Return ``completion`` stripped and cut to ``limit`` characters (with ``...``) for feedback texts."""
    text = completion.strip()
    return text if len(text) <= limit else text[:limit] + "..."


def expected_got(completion: str, answer: str) -> str:
    """Default feedback: ``"expected <answer>, got <completion>"`` (``"got nothing"`` when empty)."""
    got = shown(completion) or "nothing"
    return f"expected {answer.strip()}, got {got}"
