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
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from gopd_lab.errors import DataError
from gopd_lab.runio import read_jsonl

Verifier = Callable[[str, str], bool]
Feedback = Callable[[str, str], str]


@dataclass(frozen=True)
class Example:
    """One prompt with its reference completion.

    ``answer`` is the text a perfect student would generate after ``prompt``, without ``<eos>``
    (``"46"`` for ``"12+34="``; the whole worked solution for a math problem).
    """

    prompt: str
    answer: str
    domain: str


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


class Task:
    """A domain's prompts, reference answers, verifier and feedback.

    Prompts are unique within a task: a prompt listed twice with the same answer is kept where it
    first appears (so a test prompt already in train is dropped from test), and ``answer(prompt)``
    finds the reference of any train or test prompt.

    Raises ``ValueError`` for an empty task, an example of another domain, or a prompt given two
    different answers.
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
        self._answers: dict[str, str] = {}
        self.train: list[Example] = self._add_all(train, "train")
        self.test: list[Example] = self._add_all(test, "test")
        if not self._answers:
            raise ValueError(f"task {domain!r} has no examples: give at least one train or test prompt")

    def _add_all(self, examples: Iterable[Example], split: str) -> list[Example]:
        """Register ``examples`` in the answer table and return the new ones, duplicates dropped."""
        kept = []
        for example in examples:
            if example.domain != self.domain:
                raise ValueError(
                    f"{split} example {example.prompt!r} has domain {example.domain!r}, but task is {self.domain!r}"
                )
            previous = self._answers.get(example.prompt)
            if previous is None:
                self._answers[example.prompt] = example.answer
                kept.append(example)
            elif previous != example.answer:
                raise ValueError(
                    f"task {self.domain!r}: prompt {example.prompt!r} has two answers, "
                    f"{previous!r} and {example.answer!r}"
                )
        return kept

    def __repr__(self) -> str:
        return f"Task({self.domain!r}, train={len(self.train)}, test={len(self.test)})"

    def answer(self, prompt: str) -> str:
        """Return the reference answer of ``prompt`` (a train or test prompt of this task)."""
        try:
            return self._answers[prompt]
        except KeyError:
            raise KeyError(f"prompt {prompt!r} is not a prompt of task {self.domain!r}") from None

    def score(self, prompt: str, completion: str) -> float:
        """Return the reward of ``completion`` for ``prompt``: 1.0 if the verifier accepts it, else 0.0."""
        return 1.0 if self.verifier(completion, self.answer(prompt)) else 0.0

    def feedback(self, prompt: str, completion: str) -> str | None:
        """Return ``None`` for a correct completion, else a short text saying what is wrong."""
        answer = self.answer(prompt)
        if self.verifier(completion, answer):
            return None
        return self.feedback_fn(completion, answer)

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
    ) -> Task:
        """A task from a ``datasets.Dataset`` or a ``DatasetDict`` (``pip install 'gopd-lab[datasets]'``).

        Each row gives ``row[prompt_field]`` and ``row[answer_field]`` (a number becomes text). A
        ``DatasetDict`` uses its ``train`` and ``test`` splits; a ``Dataset`` (or a dict without ``test``)
        is shuffled with ``seed`` and ``test_size`` of it (a fraction, default 0.1, or a row count) held out
        as the test split. ``verifier``: ``"exact"`` (default), ``"math"`` (final-answer checking with its
        feedback) or a callable ``(completion, answer) -> bool``::

            ds = Dataset.from_dict({"question": ["2+2=", "3+4="], "answer": [4, 7]})
            task = Task.from_dataset(ds, domain="sums", prompt_field="question", test_size=1)
        """
        from gopd_lab.tasks.hfdata import task_from_dataset

        return task_from_dataset(
            ds,
            domain,
            prompt_field=prompt_field,
            answer_field=answer_field,
            test_size=test_size,
            verifier=verifier,
            feedback=feedback,
            seed=seed,
        )


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
