"""The embedded arithmetic domains: ``add`` and ``mul``, stand-ins for the paper's math and code.

Prompts and answers are plain decimal text for the character tokenizer: ``"47+85="`` → ``"132"``,
``"613*7="`` → ``"4291"``.

- ``add``: ``a+b`` with ``a`` and ``b`` of 1 or 2 digits (3-digit operands were beyond what the zoo's
  tiny student learns in minutes on a CPU: 25 % even on its training prompts).
- ``mul``: ``a*b`` with ``a`` of 2 or 3 digits and ``b`` of 1 digit. (One-digit ``a`` is left out:
  a times-table fact drawn into the test split would never be seen in training.)

1-digit numbers include 0.

Correctness (``integer_verifier``): the completion, stripped of surrounding whitespace, must be the
answer written as a canonical integer (``0``, or digits without a leading zero after an optional
``-``). ``"432"`` and ``" 432\\n"`` are right; ``"0432"``, ``"+432"``, ``"432."`` and ``"432 because"``
are wrong.

Three disjoint prompt sets per domain (world v2), written to ``data/arith`` and hashed in the zoo manifest:

- ``<domain>_train.jsonl`` (``N_TRAIN`` = 4,000): the **distillation** prompts, ``get_task(d).train``
  (also the bases' SFT data, with label noise), drawn uniformly among the domain's distinct prompts.
- ``<domain>_test.jsonl`` (``N_TEST`` = 1,000): the **test** set, ``get_task(d).test``, drawn from the other
  prompts, stratified by digit counts ``(digits of a, digits of b)`` so that each stratum's count is the
  distillation set's share of 1,000 (largest-remainder rounding; the counts are in docs/results.md).
- ``<domain>_rl.jsonl`` (up to ``N_RL`` = 4,000): the **teachers' RL** prompts (GRPO in the zoo), the
  train split of ``get_task("<domain>-rl")``: prompts in neither of the other sets, in random order.

Uniform over distinct prompts means uniform over operand pairs: ``add`` is 81 % two-digit + two-digit and
1 % one-digit + one-digit (there are only 100 such prompts, so a digit-count-uniform draw cannot fill
three disjoint sets); ``mul`` is 91 % three-digit × one-digit. With seed 0 (digits of a, digits of b):

=====  ========  ==============================================  ==============================
set    prompts   add (1,1) / (1,2) / (2,1) / (2,2)               mul (2,1) / (3,1)
=====  ========  ==============================================  ==============================
train  4,000     49 / 336 / 357 / 3,258                          353 / 3,647
test   1,000     12 / 84 / 89 / 815                              88 / 912
rl     4,000     30 / 400 / 363 / 3,207                          379 / 3,621
=====  ========  ==============================================  ==============================

They live in ``data/arith/v2``; the world-v1 splits (4,000 train + 200 test per domain, digit counts drawn
uniformly, which made a quarter of ``add``'s test set one-digit + one-digit prompts) stay in ``data/arith``
for the world-v1 zoo. ``GOPD_LAB_WORLD`` (``v2`` by default, or ``v1``) picks the files ``get_task`` loads.
The v2 files are rebuilt with ``python -m gopd_lab.tasks.arith --out data/arith/v2 --seed 0``.
"""

from __future__ import annotations

import argparse
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gopd_lab.tasks.base import Example, Task, data_dir, shown, write_jsonl

WORLDS = {"v1": "arith", "v2": "arith/v2"}
"""The arithmetic data of each world, relative to the data directory."""
N_TRAIN = 4000
N_TEST = 1000
N_RL = 4000
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

    def n_distinct(self) -> int:
        """Return how many different prompts the domain has."""
        return _n_numbers(self.a_digits) * _n_numbers(self.b_digits)


DOMAINS: dict[str, ArithDomain] = {
    "add": ArithDomain("add", "+", (1, 2), (1, 2), lambda a, b: a + b),
    "mul": ArithDomain("mul", "*", (2, 3), (1, 1), lambda a, b: a * b),
}


def _n_numbers(digit_range: tuple[int, int]) -> int:
    """Return how many numbers have a digit count in ``digit_range`` (0 counts as one digit)."""
    low, high = digit_range
    return 10**high - (10 ** (low - 1) if low > 1 else 0)


def generate_domain(
    domain: str, seed: int = 0, n_train: int = N_TRAIN, n_test: int = N_TEST
) -> tuple[list[Example], list[Example]]:
    """Return ``(train, test)`` for one domain, deterministic in ``seed``, with no prompt in both
    (the first two of :func:`generate_sets`)."""
    sets = generate_sets(domain, seed, n_train, n_test, n_rl=0)
    return sets["train"], sets["test"]


def digit_counts(domain: str, prompt: str) -> tuple[int, int]:
    """``(digits of a, digits of b)`` of a prompt ``a<symbol>b=``: its stratum."""
    a, b = prompt.removesuffix("=").split(DOMAINS[domain].symbol)
    return len(a), len(b)


def all_examples(domain: str) -> list[Example]:
    """Every prompt of the domain, in a fixed order."""
    spec = DOMAINS[domain]
    a_values = [n for d in range(spec.a_digits[0], spec.a_digits[1] + 1) for n in _numbers_with(d)]
    b_values = [n for d in range(spec.b_digits[0], spec.b_digits[1] + 1) for n in _numbers_with(d)]
    return [spec.example(a, b) for a in a_values for b in b_values]


def _numbers_with(digits: int) -> range:
    return range(0 if digits == 1 else 10 ** (digits - 1), 10**digits)


def stratum_quota(shares: dict[tuple[int, int], int], total: int) -> dict[tuple[int, int], int]:
    """Split ``total`` over strata in proportion to ``shares`` (counts), by largest remainder (ties: stratum
    order). The quotas sum to ``total``."""
    n = sum(shares.values())
    exact = {k: total * v / n for k, v in shares.items()}
    quota = {k: int(x) for k, x in exact.items()}
    for k in sorted(exact, key=lambda k: (-(exact[k] - quota[k]), k))[: total - sum(quota.values())]:
        quota[k] += 1
    return quota


def generate_sets(
    domain: str, seed: int = 0, n_train: int = N_TRAIN, n_test: int = N_TEST, n_rl: int = N_RL
) -> dict[str, list[Example]]:
    """``{"train", "test", "rl"}``: the three disjoint prompt sets of a domain, deterministic in ``seed``.

    ``train`` is drawn uniformly among the domain's distinct prompts; ``test`` is drawn from the other prompts with each digit-count
    stratum's quota in proportion to its count in ``train`` (:func:`stratum_quota`); ``rl`` is up to
    ``n_rl`` of the prompts left, in random order. Raises ``ValueError`` when a stratum has too few prompts.
    """
    everything = all_examples(domain)
    if n_train + n_test > len(everything):
        raise ValueError(f"{domain}: {n_train} + {n_test} prompts is too many for {len(everything)} distinct ones")
    rng = random.Random(f"{domain}-{seed}")
    rng.shuffle(everything)
    train, pool = everything[:n_train], everything[n_train:]
    shares: dict[tuple[int, int], int] = {}
    for e in train:
        key = digit_counts(domain, e.prompt)
        shares[key] = shares.get(key, 0) + 1
    quota = stratum_quota(shares, n_test)
    test: list[Example] = []
    for e in pool:
        key = digit_counts(domain, e.prompt)
        if quota.get(key, 0) > 0:
            quota[key] -= 1
            test.append(e)
    short = {k: v for k, v in quota.items() if v > 0}
    if short:
        raise ValueError(f"{domain}: too few prompts outside the training set for the test quota; missing {short}")
    in_test = {e.prompt for e in test}
    rl = [e for e in pool if e.prompt not in in_test][:n_rl]
    return {"train": train, "test": test, "rl": rl}


def generate_splits(
    seed: int = 0, n_train: int = N_TRAIN, n_test: int = N_TEST, n_rl: int = N_RL
) -> dict[str, dict[str, list[Example]]]:
    """Return ``{domain: {"train", "test", "rl"}}`` for every arithmetic domain (see ``generate_sets``)."""
    return {domain: generate_sets(domain, seed, n_train, n_test, n_rl) for domain in DOMAINS}


def write_splits(
    out_dir: str | Path, seed: int = 0, n_train: int = N_TRAIN, n_test: int = N_TEST, n_rl: int = N_RL
) -> list[Path]:
    """Write ``<domain>_{train,test,rl}.jsonl`` for every domain into ``out_dir``.

    Each row is ``{"prompt", "answer", "domain"}``; each file is written atomically. Returns the paths.
    """
    paths = []
    for domain, sets in generate_splits(seed, n_train, n_test, n_rl).items():
        for split, examples in sets.items():
            rows = ({"prompt": e.prompt, "answer": e.answer, "domain": e.domain} for e in examples)
            paths.append(write_jsonl(rows, Path(out_dir) / f"{domain}_{split}.jsonl"))
    return paths


def world() -> str:
    """The data world ``get_task`` loads: ``$GOPD_LAB_WORLD`` (``v2`` when unset or empty)."""
    name = os.environ.get("GOPD_LAB_WORLD") or "v2"
    if name not in WORLDS:
        raise ValueError(f"GOPD_LAB_WORLD must be one of {sorted(WORLDS)}, got {name!r}")
    return name


def use_world(name: str) -> str:
    """Make ``name`` (``v1`` or ``v2``) the data world of this process and of the processes it starts
    (``$GOPD_LAB_WORLD``); returns it. A notebook or script calls it before it loads tasks or the zoo."""
    if name not in WORLDS:
        raise ValueError(f"world must be one of {sorted(WORLDS)}, got {name!r}")
    os.environ["GOPD_LAB_WORLD"] = name
    return name


def world_dir() -> Path:
    """``data_dir() / "arith"`` (v1) or ``data_dir() / "arith/v2"`` (v2), after :func:`world`."""
    return data_dir() / WORLDS[world()]


def integer_verifier(completion: str, answer: str) -> bool:
    """Return whether ``completion`` stripped is ``answer`` written as a canonical integer."""
    text = completion.strip()
    return _CANONICAL_INT.fullmatch(text) is not None and int(text) == int(answer)


def integer_feedback(completion: str, answer: str) -> str:
    """Return ``"expected 46, got 45"``, or ``"expected 46, got no number"`` when no digit was written."""
    if not any(char.isdigit() for char in completion):
        return f"expected {answer}, got no number"
    return f"expected {answer}, got {shown(completion)}"


def load_arith_task(domain: str, directory: str | Path | None = None, *, train_split: str = "train") -> Task:
    """Load arithmetic domain ``domain`` from ``<directory>/<domain>_{train,test}.jsonl``.

    ``directory`` defaults to :func:`world_dir`. ``train_split="rl"`` makes the teachers' RL prompts
    (``<domain>_rl.jsonl``) the task's train split (the task ``"<domain>-rl"``); the test split is the same.
    """
    if domain not in DOMAINS:
        raise ValueError(f"unknown arithmetic domain {domain!r}; choose one of {sorted(DOMAINS)}")
    if train_split not in ("train", "rl"):
        raise ValueError(f"train_split must be 'train' or 'rl', got {train_split!r}")
    if directory is None and train_split == "rl" and world() == "v1":
        raise FileNotFoundError(
            f"the teachers' RL prompts ({domain}-rl) exist in world v2 only: unset GOPD_LAB_WORLD or set it to v2"
        )
    directory = Path(directory) if directory is not None else world_dir()
    train_path, test_path = directory / f"{domain}_{train_split}.jsonl", directory / f"{domain}_test.jsonl"
    for path in (train_path, test_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} is missing: rebuild it with `python -m gopd_lab.tasks.arith --out {directory}` "
                f"or point GOPD_LAB_DATA at a data directory that has arith/"
            )
    return Task.from_jsonl(train_path, domain, test_path, verifier=integer_verifier, feedback=integer_feedback)


def main(argv: list[str] | None = None) -> None:
    """Command line: write the three prompt sets (``--out DIR --seed N --n-train N --n-test N --n-rl N``)."""
    parser = argparse.ArgumentParser(description="Write the arithmetic distillation / test / RL prompt sets as JSONL.")
    parser.add_argument("--out", type=Path, default=data_dir() / WORLDS["v2"], help="output directory")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=N_TRAIN, help="distillation prompts per domain")
    parser.add_argument("--n-test", type=int, default=N_TEST, help="test prompts per domain")
    parser.add_argument("--n-rl", type=int, default=N_RL, help="teachers' RL prompts per domain (at most)")
    args = parser.parse_args(argv)
    for path in write_splits(args.out, args.seed, args.n_train, args.n_test, args.n_rl):
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


SDPO_TEMPLATE = "{feedback} {solution}\n{prompt}"
"""The self-teacher prompt of SDPO's default ``sdpo_template`` (RunConfig)."""


def feedback_views(task: Task, rate: float, seed: int = 0, template: str = SDPO_TEMPLATE) -> list[Example]:
    """SFT examples in SDPO's self-teacher view: for a ``rate`` share of ``task``'s train prompts (drawn from
    ``seed``), the prompt re-written with feedback on a wrong previous attempt (``"expected 46, got 45"``), a
    correct solution, or both (one of the three, uniformly) → the correct answer. A base that has seen them can
    read feedback in its context, which SDPO's self-teacher needs."""
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"feedback-view rate must be in [0, 1], got {rate}")
    rng = random.Random(f"views-{seed}")
    views = []
    for e in task.train:
        if rng.random() >= rate:
            continue
        kind = rng.choice(("feedback", "solution", "both"))
        wrong = corrupt_answer(e.answer, rng, "random-digit")
        fb = integer_feedback(wrong, e.answer) if kind != "solution" else ""
        solution = e.answer if kind != "feedback" else ""
        views.append(Example(template.format(prompt=e.prompt, feedback=fb, solution=solution), e.answer, e.domain))
    return views


def with_feedback_views(task: Task, clean: Task, rate: float, seed: int = 0) -> Task:
    """``task`` (e.g. a label-noise copy) with :func:`feedback_views` of ``clean`` (true answers) added to its
    train split."""
    return Task(task.domain, task.train + feedback_views(clean, rate, seed), task.test, task.verifier, task.feedback_fn)
