"""The embedded arithmetic domains: ``add`` and ``mul``, stand-ins for the paper's math and code.

Prompts and answers are plain decimal text for the character tokenizer: ``"47+85="`` → ``"132"``,
``"613*7="`` → ``"4291"``.

- ``add``: ``a+b`` with ``a`` and ``b`` of 1 or 2 digits (3-digit operands were beyond what the zoo's
  tiny student learns in minutes on a CPU: 25 % even on its training prompts).
- ``mul``: ``a*b`` with ``a`` of 2 or 3 digits and ``b`` of 1 digit. (One-digit ``a`` is left out:
  a times-table fact drawn into the test split would never be seen in training.)

Each operand's digit count is drawn uniformly from its range (1-digit numbers include 0), then the
operand uniformly among numbers of that many digits, so every domain mixes easy and hard prompts.

Correctness (``integer_verifier``): the completion, stripped of surrounding whitespace, must be the
answer written as a canonical integer (``0``, or digits without a leading zero after an optional
``-``). ``"432"`` and ``" 432\\n"`` are right; ``"0432"``, ``"+432"``, ``"432."`` and ``"432 because"``
are wrong.

The committed splits in ``data/arith`` are rebuilt with ``python -m gopd_lab.tasks.arith --out
data/arith --seed 0``.
"""

from __future__ import annotations

import argparse
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gopd_lab.tasks.base import Example, Task, data_dir, shown, write_jsonl

N_TRAIN = 4000
N_TEST = 200
_CANONICAL_INT = re.compile(r"0|-?[1-9][0-9]*")


@dataclass(frozen=True)
class ArithDomain:
    """An arithmetic domain: ``a<symbol>b=`` with digit counts in ``a_digits`` / ``b_digits`` (inclusive)."""

    name: str
    symbol: str
    a_digits: tuple[int, int]
    b_digits: tuple[int, int]
    apply: Callable[[int, int], int]

    def example(self, a: int, b: int) -> Example:
        """Return the example for operands ``a`` and ``b``."""
        return Example(f"{a}{self.symbol}{b}=", str(self.apply(a, b)), self.name)

    def sample_operands(self, rng: random.Random) -> tuple[int, int]:
        """Draw ``(a, b)``: each operand's digit count uniformly, then its value uniformly."""
        return _sample_number(rng, self.a_digits), _sample_number(rng, self.b_digits)

    def n_distinct(self) -> int:
        """Return how many different prompts the domain has."""
        return _n_numbers(self.a_digits) * _n_numbers(self.b_digits)


DOMAINS: dict[str, ArithDomain] = {
    "add": ArithDomain("add", "+", (1, 2), (1, 2), lambda a, b: a + b),
    "mul": ArithDomain("mul", "*", (2, 3), (1, 1), lambda a, b: a * b),
}


def _sample_number(rng: random.Random, digit_range: tuple[int, int]) -> int:
    """Draw a digit count in ``digit_range`` uniformly, then a number with that many digits."""
    digits = rng.randint(*digit_range)
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(low, 10**digits - 1)


def _n_numbers(digit_range: tuple[int, int]) -> int:
    """Return how many numbers have a digit count in ``digit_range`` (0 counts as one digit)."""
    low, high = digit_range
    return 10**high - (10 ** (low - 1) if low > 1 else 0)


def generate_domain(
    domain: str, seed: int = 0, n_train: int = N_TRAIN, n_test: int = N_TEST
) -> tuple[list[Example], list[Example]]:
    """Return ``(train, test)`` for one domain, deterministic in ``seed``, with no prompt in both.

    The test prompts are drawn first, then train prompts from those left.
    """
    spec = DOMAINS[domain]
    if n_train + n_test > spec.n_distinct() // 2:
        raise ValueError(f"{domain}: {n_train} + {n_test} prompts is too many for {spec.n_distinct()} distinct ones")
    rng = random.Random(f"{domain}-{seed}")
    seen: set[tuple[int, int]] = set()
    examples: list[Example] = []
    while len(examples) < n_train + n_test:
        operands = spec.sample_operands(rng)
        if operands not in seen:
            seen.add(operands)
            examples.append(spec.example(*operands))
    return examples[n_test:], examples[:n_test]


def generate_splits(
    seed: int = 0, n_train: int = N_TRAIN, n_test: int = N_TEST
) -> dict[str, tuple[list[Example], list[Example]]]:
    """Return ``{domain: (train, test)}`` for every arithmetic domain (see ``generate_domain``)."""
    return {domain: generate_domain(domain, seed, n_train, n_test) for domain in DOMAINS}


def write_splits(out_dir: str | Path, seed: int = 0, n_train: int = N_TRAIN, n_test: int = N_TEST) -> list[Path]:
    """Write ``<domain>_train.jsonl`` and ``<domain>_test.jsonl`` for every domain into ``out_dir``.

    Each row is ``{"prompt", "answer", "domain"}``; each file is written atomically. Returns the paths.
    """
    paths = []
    for domain, (train, test) in generate_splits(seed, n_train, n_test).items():
        for split, examples in (("train", train), ("test", test)):
            rows = ({"prompt": e.prompt, "answer": e.answer, "domain": e.domain} for e in examples)
            paths.append(write_jsonl(rows, Path(out_dir) / f"{domain}_{split}.jsonl"))
    return paths


def integer_verifier(completion: str, answer: str) -> bool:
    """Return whether ``completion`` stripped is ``answer`` written as a canonical integer."""
    text = completion.strip()
    return _CANONICAL_INT.fullmatch(text) is not None and int(text) == int(answer)


def integer_feedback(completion: str, answer: str) -> str:
    """Return ``"expected 46, got 45"``, or ``"expected 46, got no number"`` when no digit was written."""
    if not any(char.isdigit() for char in completion):
        return f"expected {answer}, got no number"
    return f"expected {answer}, got {shown(completion)}"


def load_arith_task(domain: str, directory: str | Path | None = None) -> Task:
    """Load arithmetic domain ``domain`` from ``<directory>/<domain>_{train,test}.jsonl``.

    ``directory`` defaults to ``data_dir() / "arith"``.
    """
    if domain not in DOMAINS:
        raise ValueError(f"unknown arithmetic domain {domain!r}; choose one of {sorted(DOMAINS)}")
    directory = Path(directory) if directory is not None else data_dir() / "arith"
    train_path, test_path = directory / f"{domain}_train.jsonl", directory / f"{domain}_test.jsonl"
    for path in (train_path, test_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: rebuild it with `python -m gopd_lab.tasks.arith --out {directory}` "
                f"or point GOPD_LAB_DATA at a data directory that has arith/"
            )
    return Task.from_jsonl(train_path, domain, test_path, verifier=integer_verifier, feedback=integer_feedback)


def main(argv: list[str] | None = None) -> None:
    """Command line: write the arithmetic splits (``--out DIR --seed N --n-train N --n-test N``)."""
    parser = argparse.ArgumentParser(description="Write the arithmetic train/test splits as JSONL.")
    parser.add_argument("--out", type=Path, default=data_dir() / "arith", help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=N_TRAIN, help="train prompts per domain")
    parser.add_argument("--n-test", type=int, default=N_TEST, help="test prompts per domain")
    args = parser.parse_args(argv)
    for path in write_splits(args.out, args.seed, args.n_train, args.n_test):
        print(path)


if __name__ == "__main__":
    main()


NOISE_MODES = ("last-digit", "random-digit")


def corrupt_answer(answer: str, rng: random.Random, mode: str = "random-digit") -> str:
    """A wrong answer: ``last-digit`` adds 1 to the last digit (mod 10, a systematic slip);
    ``random-digit`` changes one random digit to another (a leading digit never becomes 0)."""
    positions = [i for i, ch in enumerate(answer) if ch.isdigit()]
    if not positions:
        return answer
    if mode == "last-digit":
        i = positions[-1]
        shifted = str((int(answer[i]) + 1) % 10)
        if i == positions[0] and len(positions) > 1 and shifted == "0":
            shifted = "1"
        return answer[:i] + shifted + answer[i + 1 :]
    if mode != "random-digit":
        raise ValueError(f"noise mode must be one of {NOISE_MODES}, got {mode!r}")
    i = rng.choice(positions)
    first = i == positions[0] and len(positions) > 1
    choices = [d for d in "0123456789" if d != answer[i] and not (first and d == "0")]
    return answer[:i] + rng.choice(choices) + answer[i + 1 :]


def with_label_noise(task: Task, rate: float, seed: int = 0, mode: str = "last-digit") -> Task:
    """A copy of ``task`` whose *train* answers are wrong with probability ``rate`` (see
    :func:`corrupt_answer`, drawn once from ``seed``); the test split and the verifier are untouched.

    SFT on such data gives a model that knows the rule but has absorbed a systematic slip: it puts
    much of its mass on a near-miss answer. That is the regime in which RL with a verifier corrects a
    policy, which is how the zoo's teachers gain on their bases, and what ``lp_teacher − lp_reference``
    then shows token by token.
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"label-noise rate must be in [0, 1), got {rate}")
    rng = random.Random(seed)
    train = [
        Example(e.prompt, corrupt_answer(e.answer, rng, mode) if rng.random() < rate else e.answer, e.domain)
        for e in task.train
    ]
    return Task(task.domain, train, task.test, task.verifier, task.feedback_fn)
