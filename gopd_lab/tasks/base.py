"""Tasks: prompts with reference answers, a verifier, and textual feedback.

A ``Task`` is one domain (``"add"``, ``"math"``, ...): a train and a test list of ``Example`` and two
functions of a completion and the reference answer:

- ``verifier(completion, answer) -> bool``: is the completion correct? ``Task.score`` turns it into
  a reward of 1.0 or 0.0.
- ``feedback(completion, answer) -> str``: a short text saying what went wrong (called only for
  wrong completions), used as environment feedback by self-distillation (SDPO).

A completion is the generated text decoded without special tokens (everything up to ``<eos>``).
What counts as correct is the verifier's decision and is documented with each verifier; the default
(``exact_match``) accepts the completion when, stripped of surrounding whitespace, it equals the
stripped answer.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from gopd_lab.errors import DataError
from gopd_lab.runio import read_jsonl
from gopd_lab.tasks.answers import Feedback, Verifier, exact_match, expected_got, shown
from gopd_lab.tasks.hfdata import dataset_rows, resolve_verifier, split_rows

__all__ = ["Example", "Feedback", "Task", "Verifier", "data_dir", "exact_match", "expected_got", "make_task", "shown"]


@dataclass(frozen=True)
class Example:
    """One row: a prompt with its reference completion (and, optionally, the row's own verifier).

    ``answer`` is the text a perfect student would generate after ``prompt``, without ``<eos>``
    (``"46"`` for ``"12+34="``; the whole worked solution for a math problem). ``verifier``, when set,
    checks this row instead of the task's verifier (a dataset mixing exact and math rows).
    """

    prompt: str
    answer: str
    domain: str
    verifier: Verifier | None = None


class Task:
    """A domain's rows (prompt, reference answer, optional per-row verifier), verifier and feedback.

    A task is a list of rows, not a prompt → answer map: one prompt may come with several reference
    answers (MetaMathQA / NuminaMath list one question with several rationales), each kept as its own
    row. A row repeating an earlier row exactly (same prompt and answer) is dropped, and so is a test row
    whose prompt is a train prompt (the test split never holds a prompt trained on).

    ``score(prompt, completion, answer)`` checks a completion against the row with that answer;
    without ``answer`` it counts as correct when the verifier accepts it for any row of the prompt.

    Raises ``ValueError`` for an empty task or an example of another domain.
    """

    def __init__(
        self,
        domain: str,
        train: Iterable[Example],
        test: Iterable[Example],
        verifier: Verifier | None = None,
        feedback: Feedback | None = None,
    ) -> None:
        self.domain = domain
        self.verifier: Verifier = verifier or exact_match
        self.feedback_fn: Feedback = feedback or expected_got
        self._rows: dict[str, list[Example]] = {}
        self.train: list[Example] = self._add_all(train, "train")
        train_prompts = set(self._rows)
        self.test: list[Example] = self._add_all((e for e in test if e.prompt not in train_prompts), "test")
        if not self._rows:
            raise ValueError(f"task {domain!r} has no examples: give at least one train or test prompt")

    def _add_all(self, examples: Iterable[Example], split: str) -> list[Example]:
        """Register ``examples`` under their prompts and return the new ones, exact repeats dropped."""
        kept = []
        for example in examples:
            if example.domain != self.domain:
                raise ValueError(
                    f"{split} example {example.prompt!r} has domain {example.domain!r}, but task is {self.domain!r}"
                )
            rows = self._rows.setdefault(example.prompt, [])
            if all(row.answer != example.answer for row in rows):
                rows.append(example)
                kept.append(example)
        return kept

    def __repr__(self) -> str:
        return f"Task({self.domain!r}, train={len(self.train)}, test={len(self.test)})"

    def rows(self, prompt: str) -> list[Example]:
        """Every row (train or test) of ``prompt``, in the order given."""
        try:
            return self._rows[prompt]
        except KeyError:
            raise KeyError(f"prompt {prompt!r} is not a prompt of task {self.domain!r}") from None

    def answer(self, prompt: str) -> str:
        """Return the reference answer of ``prompt``'s first row (see :meth:`answers` for all of them)."""
        return self.rows(prompt)[0].answer

    def answers(self, prompt: str) -> list[str]:
        """Return the reference answers of every row of ``prompt``."""
        return [row.answer for row in self.rows(prompt)]

    def _candidates(self, prompt: str, answer: str | None) -> list[Example]:
        rows = self.rows(prompt)
        if answer is None:
            return rows
        picked = [row for row in rows if row.answer == answer]
        if not picked:
            raise KeyError(f"task {self.domain!r}: prompt {prompt!r} has no row with the answer {answer!r}")
        return picked

    def check(self, row: Example, completion: str) -> bool:
        """Whether ``row``'s verifier (the task's unless the row has its own) accepts ``completion``."""
        return (row.verifier or self.verifier)(completion, row.answer)

    def score(self, prompt: str, completion: str, answer: str | None = None) -> float:
        """Return the reward of ``completion`` for ``prompt``: 1.0 if the verifier accepts it, else 0.0.

        ``answer`` names the row (a prompt with several rows); without it any row of the prompt counts."""
        return 1.0 if any(self.check(row, completion) for row in self._candidates(prompt, answer)) else 0.0

    def feedback(self, prompt: str, completion: str, answer: str | None = None) -> str | None:
        """Return ``None`` for a correct completion, else a short text saying what is wrong (against the row
        with ``answer``, or the prompt's first row)."""
        rows = self._candidates(prompt, answer)
        if any(self.check(row, completion) for row in rows):
            return None
        return self.feedback_fn(completion, rows[0].answer)

    @classmethod
    def from_jsonl(
        cls,
        train_path: str | Path,
        domain: str | None = None,
        test_path: str | Path | None = None,
        verifier: Verifier | None = None,
        feedback: Feedback | None = None,
    ) -> Task:
        """Load a task from JSONL files whose rows have ``prompt`` and ``answer`` fields.

        ``domain`` defaults to the rows' ``domain`` field (which must then be present and the same
        on every row); when given, it overrides that field. Without ``test_path`` the test split is
        empty.
        """
        train_rows = read_prompt_answer_jsonl(train_path)
        test_rows = read_prompt_answer_jsonl(test_path) if test_path is not None else []
        if domain is None:
            domains = {row.get("domain") for row in train_rows + test_rows}
            if len(domains) != 1 or None in domains:
                raise ValueError(
                    f"{train_path}: rows carry domains {sorted(map(str, domains))}; "
                    f"give every row the same 'domain' field or pass domain=..."
                )
            domain = domains.pop()

        def examples(rows: list[dict]) -> list[Example]:
            return [Example(row["prompt"], row["answer"], domain) for row in rows]

        return cls(domain, examples(train_rows), examples(test_rows), verifier, feedback)

    @classmethod
    def from_dataset(
        cls,
        ds,
        domain: str,
        *,
        prompt_field: str = "prompt",
        answer_field: str = "answer",
        test_size: float | int | None = None,
        verifier: Verifier | str | None = None,
        feedback: Feedback | None = None,
        seed: int = 0,
        tokenizer=None,
        eval_split: str | None = None,
        verifier_field: str | None = None,
    ) -> Task:
        """A task from a ``datasets.Dataset`` or a ``DatasetDict`` (``pip install 'gopd-lab[datasets]'``).

        Each row gives ``row[prompt_field]`` and ``row[answer_field]`` (a number becomes text), or, in chat
        format, a ``messages`` list whose last message is the assistant's answer and whose earlier messages
        become the prompt through ``tokenizer``'s chat template. GSM8K's calculator notes ``<<48/2=24>>``
        are removed from answers with a ``#### n`` line (as :func:`~gopd_lab.tasks.load_math_jsonl` does).

        A ``DatasetDict`` trains on ``train`` and evaluates on its own ``eval_split`` (default:
        ``validation``, else ``test``); only a ``Dataset`` or a dict without either is shuffled with ``seed``
        and ``test_size`` of its prompts (a fraction, default 0.1, or a count) held out. ``verifier``:
        ``"exact"`` (default), ``"math"`` (final-answer checking with its feedback) or a callable
        ``(completion, answer) -> bool``; ``verifier_field`` names a column giving each row's own
        verifier (``"exact"`` / ``"math"``)::

            ds = Dataset.from_dict({"question": ["2+2=", "3+4="], "answer": [4, 7]})
            task = Task.from_dataset(ds, domain="sums", prompt_field="question", test_size=1)
        """
        check, explain = resolve_verifier(verifier, feedback)
        train_rows, test_rows = dataset_rows(
            ds,
            prompt_field=prompt_field,
            answer_field=answer_field,
            test_size=test_size,
            seed=seed,
            tokenizer=tokenizer,
            eval_split=eval_split,
            verifier_field=verifier_field,
        )

        def examples(rows) -> list[Example]:
            return [
                Example(r.prompt, r.answer, domain, resolve_verifier(r.verifier)[0] if r.verifier else None)
                for r in rows
            ]

        return cls(domain, examples(train_rows), examples(test_rows), verifier=check, feedback=explain)


def split_by_prompt(examples: list[Example], fraction_or_count: float | int, seed: int) -> tuple[list, list]:
    """Shuffle the distinct prompts with ``seed`` and hold out ``fraction_or_count`` of them (a fraction in
    [0, 1), at least one prompt when positive and there are two or more; or a count of prompts) with all their
    rows: ``(train, test)``. Rows of one prompt never straddle the two splits."""
    return split_rows(examples, fraction_or_count, seed, key=lambda e: e.prompt)


def make_task(
    domain: str,
    train: Iterable[tuple[str, str]],
    test: Iterable[tuple[str, str]] = (),
    verifier: Verifier | None = None,
    feedback: Feedback | None = None,
) -> Task:
    """Build a task from ``(prompt, answer)`` pairs and an optional verifier and feedback.

    Example — a parity task where any answer that ends with the right word counts::

        def ends_with(completion: str, answer: str) -> bool:
            return completion.strip().endswith(answer)


        parity = make_task(
            "parity",
            train=[("0110 is ", "even"), ("111 is ", "odd")],
            test=[("10101 is ", "odd")],
            verifier=ends_with,
        )
        parity.score("111 is ", "surely odd")  # 1.0
        parity.feedback("10101 is ", "even")  # "expected odd, got even"
    """
    return Task(
        domain,
        [Example(prompt, answer, domain) for prompt, answer in train],
        [Example(prompt, answer, domain) for prompt, answer in test],
        verifier,
        feedback,
    )


def read_prompt_answer_jsonl(path: str | Path) -> list[dict]:
    """Read a JSONL file whose rows must have string fields ``prompt`` and ``answer``."""
    rows = []
    for line_number, row in read_jsonl(path, strict=True, numbered=True):
        if not (isinstance(row.get("prompt"), str) and isinstance(row.get("answer"), str)):
            raise DataError(
                f"{path}, line {line_number}: expected string fields 'prompt' and 'answer', found fields {sorted(row)}"
            )
        rows.append(row)
    return rows


def write_jsonl(rows: Iterable[dict], path: str | Path) -> Path:
    """Write ``rows`` as JSONL to ``path`` atomically (a temporary file, then ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def data_dir() -> Path:
    """Return the directory of embedded data: ``$GOPD_LAB_DATA`` if set, else the package data
    ``gopd_lab.data`` found through ``importlib.resources`` (``<repo>/data`` in a checkout, ``site-packages/
    gopd_lab/data`` in an installed wheel)."""
    override = os.environ.get("GOPD_LAB_DATA")
    if override:
        return Path(override)
    try:
        root = resources.files("gopd_lab.data")
    except ModuleNotFoundError:  # the source tree on sys.path without an install
        return Path(__file__).resolve().parents[2] / "data"
    if not isinstance(root, Path):
        raise RuntimeError(f"gopd_lab's data is not on the file system ({root!r}): install gopd-lab unzipped")
    return root
