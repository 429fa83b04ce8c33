"""The chain domain: multi-digit addition with the work written out, column by column, right to left.

A prompt is ``a+b=`` with ``a`` and ``b`` of 2 to 4 digits; the completion writes one step per column, from
the units up, each step ``x+y+c=s`` (the column's digits, the carry coming in, the column sum), the steps
separated by ``,``, then ``>`` and the answer::

    "347+85="  →  "7+5+0=12,4+8+1=13,3+0+1=4>432"

A column past the end of the shorter operand reads 0. The carry into a column is the tens digit of the sum
before it (the units column's carry is 0), and the answer is the units digits of the sums read from the last
column back, after the last sum's carry. Completions are 18 to 41 characters (plus ``<eos>``), one token each
with the character tokenizer (no new character is needed). Because the chain of a prompt is unique, the
first character where a completion departs from it *is* its first mistake: :func:`check_steps` returns the
completion's step spans, the step that holds the first wrong token and that token's index.

Correctness (``chain_verifier``) looks at the final answer only: the digits after the last ``>`` must be the
sum as a canonical integer (a wrong step with a right answer counts as right, as a final-answer verifier
would; :func:`check_steps` is the step-level view).

Three disjoint prompt sets, written to ``data/chain`` and hashed in the zoo manifest (``train_data``):

- ``chain_train.jsonl`` (4,000): the **distillation** prompts, ``get_task("chain").train`` (also the chain
  base's SFT data, with the carry slip of :func:`with_carry_slip`);
- ``chain_test.jsonl`` (1,008): the **test** set, 112 prompts in each of the 9 digit-count strata
  ``(digits of a, digits of b)``;
- ``chain_rl.jsonl`` (4,000): the **teachers' RL** prompts (``get_task("chain-rl").train``).

Each set draws its stratum uniformly, then the operands uniformly within it, without a prompt in two sets.
Rebuilt with ``python -m gopd_lab.tasks.chain --out data/chain --seed 0``.
"""

from __future__ import annotations

import argparse
import random
import re
from dataclasses import dataclass
from pathlib import Path

from gopd_lab.tasks.base import Example, Task, data_dir, shown, write_jsonl

DOMAIN = "chain"
DIGITS = (2, 3, 4)
N_TRAIN = 4000
N_TEST_PER_STRATUM = 112
N_RL = 4000
STEP_SEP, ANSWER_SEP = ",", ">"
_CANONICAL_INT = re.compile(r"0|[1-9][0-9]*")


@dataclass(frozen=True)
class StepCheck:
    """Where a completion's mistake is, over its token positions (one token per character, then ``<eos>``).

    ``steps``: the completion's steps as ``[start, end)`` token ranges that tile it (a column step owns its
    trailing ``,``; the answer step is ``>`` with the answer digits and the ``<eos>`` token).
    ``first_wrong_token``: the first position whose token differs from the prompt's unique correct chain
    (``None`` when the whole completion is right). ``first_wrong_step``: the index in ``steps`` of the step
    that holds it (``None`` likewise)."""

    steps: list[tuple[int, int]]
    first_wrong_step: int | None
    first_wrong_token: int | None

    def step_kind(self, index: int, n_columns: int) -> str:
        """``"column 1"`` … ``"column n"`` (units first) or ``"answer"`` for step ``index`` of a prompt with
        ``n_columns`` columns (a completion with more steps than columns calls the extra ones ``"extra"``)."""
        if index < n_columns:
            return f"column {index + 1}"
        return "answer" if index == n_columns else "extra"


def operands(prompt: str) -> tuple[int, int]:
    """``(a, b)`` of a prompt ``"a+b="``; ``ValueError`` for anything else."""
    match = re.fullmatch(r"([0-9]+)\+([0-9]+)=", prompt)
    if match is None:
        raise ValueError(f"{prompt!r} is not a chain prompt of the form 'a+b='")
    return int(match.group(1)), int(match.group(2))


def chain(a: int, b: int, *, drop_carry: bool = False) -> str:
    """The worked completion of ``a+b`` (see the module docstring). ``drop_carry=True`` writes the *first*
    carry of 1 as 0 and goes on consistently from there (the chain base's slip): ``38+45`` → ``8+5+0=13,
    3+4+0=7>73`` instead of ``…,3+4+1=8>83``. Without a carry the chain is unchanged."""
    xs, ys = str(a)[::-1], str(b)[::-1]
    steps, digits, carry, dropped = [], [], 0, False
    for i in range(max(len(xs), len(ys))):
        x = int(xs[i]) if i < len(xs) else 0
        y = int(ys[i]) if i < len(ys) else 0
        if drop_carry and carry and not dropped:
            carry, dropped = 0, True
        s = x + y + carry
        steps.append(f"{x}+{y}+{carry}={s}")
        digits.append(s % 10)
        carry = s // 10
    answer = str(carry or "") + "".join(str(d) for d in reversed(digits))
    return STEP_SEP.join(steps) + ANSWER_SEP + str(int(answer))


def has_carry(a: int, b: int) -> bool:
    """Whether some column of ``a+b`` carries into the next one (so :func:`chain`'s slip changes it)."""
    return chain(a, b) != chain(a, b, drop_carry=True)


def n_columns(prompt: str) -> int:
    """The number of column steps of ``prompt``'s chain."""
    a, b = operands(prompt)
    return max(len(str(a)), len(str(b)))


def step_spans(completion: str, *, eos: bool = True) -> list[tuple[int, int]]:
    """``[start, end)`` token ranges of the steps of ``completion`` as written: each column step ends after its
    ``,``; the answer step starts at the last ``>`` and, with ``eos``, takes the ``<eos>`` token (position
    ``len(completion)``). A completion without ``>`` ends in one step that runs to its end."""
    n = len(completion) + (1 if eos else 0)
    cut = completion.rfind(ANSWER_SEP)
    head_end = cut if cut >= 0 else len(completion)
    spans, start = [], 0
    for i, ch in enumerate(completion[:head_end]):
        if ch == STEP_SEP:
            spans.append((start, i + 1))
            start = i + 1
    if cut < 0:
        if start < n:
            spans.append((start, n))
        return spans
    if start < cut:  # text between the last ',' and the '>' (a malformed last column)
        spans.append((start, cut))
    spans.append((cut, n))
    return spans


def check_steps(prompt: str, completion: str, *, eos: bool = True) -> StepCheck:
    """The step spans of ``completion`` and where it first departs from ``prompt``'s correct chain.

    Tokens are the completion's characters, then ``<eos>`` when ``eos`` (the rollout stopped there); the
    correct chain's tokens are its characters then ``<eos>``. A completion that stopped too early is wrong at
    its ``<eos>``; one that runs on is wrong at the first token after the correct chain's end. Without
    ``eos`` a completion that is a prefix of the correct chain has no wrong token yet (``None``)."""
    a, b = operands(prompt)
    ref = list(chain(a, b)) + ["<eos>"]
    toks = list(completion) + (["<eos>"] if eos else [])
    spans = step_spans(completion, eos=eos)
    wrong = next((i for i, (t, r) in enumerate(zip(toks, ref, strict=False)) if t != r), None)
    if wrong is None and len(toks) > len(ref):
        wrong = len(ref)
    if wrong is None:
        return StepCheck(spans, None, None)
    step = next(k for k, (s, e) in enumerate(spans) if s <= wrong < e)
    return StepCheck(spans, step, wrong)


def mistake_kind(prompt: str, completion: str, *, eos: bool = True) -> str | None:
    """What the first mistake of ``completion`` is: ``"dropped carry"`` (a carry of 1 written as 0, the chain base's
    slip), ``"carry"`` (another wrong carry digit), ``"column"`` (another wrong token in a column step),
    ``"answer"`` (in the answer step) or ``None`` (no mistake)."""
    check = check_steps(prompt, completion, eos=eos)
    if check.first_wrong_token is None:
        return None
    ref = chain(*operands(prompt))
    i = check.first_wrong_token
    if check.first_wrong_step >= n_columns(prompt):
        return "answer"
    start = check.steps[check.first_wrong_step][0]
    carry_at = start + 4  # "x+y+c=s": the carry is the step's fifth token
    if i == carry_at:
        return "dropped carry" if ref[i] == "1" and completion[i : i + 1] == "0" else "carry"
    return "column"


def final_answer(completion: str) -> str | None:
    """The text after the last ``>``, stripped (``None`` without a ``>``)."""
    cut = completion.rfind(ANSWER_SEP)
    return None if cut < 0 else completion[cut + 1 :].strip()


def chain_verifier(completion: str, answer: str) -> bool:
    """Whether the completion's final answer (after its last ``>``) is the reference's, as a canonical integer.
    ``answer`` is the reference completion (a whole chain)."""
    got, want = final_answer(completion), final_answer(answer)
    return got is not None and want is not None and _CANONICAL_INT.fullmatch(got) is not None and got == want


def chain_feedback(completion: str, answer: str) -> str:
    """``"expected 432, got 422"`` (the final answers), or ``"… got no answer"`` without a ``>``."""
    got = final_answer(completion)
    return f"expected {final_answer(answer)}, got " + (shown(got) if got else "no answer")


def _draw(rng: random.Random, da: int, db: int) -> tuple[int, int]:
    return rng.randrange(10 ** (da - 1), 10**da), rng.randrange(10 ** (db - 1), 10**db)


def strata() -> list[tuple[int, int]]:
    """The 9 digit-count strata ``(digits of a, digits of b)``."""
    return [(da, db) for da in DIGITS for db in DIGITS]


def stratum(prompt: str) -> tuple[int, int]:
    """``(digits of a, digits of b)`` of a chain prompt."""
    a, b = operands(prompt)
    return len(str(a)), len(str(b))


def generate_sets(
    seed: int = 0, n_train: int = N_TRAIN, n_test_per_stratum: int = N_TEST_PER_STRATUM, n_rl: int = N_RL
) -> dict[str, list[Example]]:
    """``{"test", "train", "rl"}``: disjoint prompt sets, deterministic in ``seed``. The test set has
    ``n_test_per_stratum`` prompts in each stratum; train and rl draw a stratum uniformly for each prompt."""
    rng = random.Random(f"chain-{seed}")
    seen: set[tuple[int, int]] = set()

    def fresh(da: int, db: int) -> Example:
        while True:
            a, b = _draw(rng, da, db)
            if (a, b) not in seen:
                seen.add((a, b))
                return Example(f"{a}+{b}=", chain(a, b), DOMAIN)

    test = [fresh(da, db) for da, db in strata() for _ in range(n_test_per_stratum)]
    rng.shuffle(test)
    train = [fresh(*rng.choice(strata())) for _ in range(n_train)]
    rl = [fresh(*rng.choice(strata())) for _ in range(n_rl)]
    return {"train": train, "test": test, "rl": rl}


def write_sets(out_dir: str | Path, seed: int = 0) -> list[Path]:
    """Write ``chain_{train,test,rl}.jsonl`` (rows ``{"prompt", "answer", "domain"}``) atomically."""
    paths = []
    for split, examples in generate_sets(seed).items():
        rows = ({"prompt": e.prompt, "answer": e.answer, "domain": e.domain} for e in examples)
        paths.append(write_jsonl(rows, Path(out_dir) / f"{DOMAIN}_{split}.jsonl"))
    return paths


def chain_dir() -> Path:
    """``data_dir() / "chain"``."""
    return data_dir() / "chain"


def load_chain_task(train_split: str = "train", directory: str | Path | None = None) -> Task:
    """The chain task from ``<directory>/chain_{train|rl,test}.jsonl`` (default :func:`chain_dir`)."""
    if train_split not in ("train", "rl"):
        raise ValueError(f"train_split must be 'train' or 'rl', got {train_split!r}")
    directory = Path(directory or chain_dir())
    return Task.from_jsonl(
        directory / f"{DOMAIN}_{train_split}.jsonl",
        DOMAIN,
        directory / f"{DOMAIN}_test.jsonl",
        verifier=chain_verifier,
        feedback=chain_feedback,
    )


def with_carry_slip(task: Task, rate: float, seed: int = 0) -> Task:
    """A copy of ``task`` whose *train* chains drop their first carry (``chain(..., drop_carry=True)``) in a
    ``rate`` share of the prompts that have a carry (drawn once from ``seed``); test and verifier untouched.

    SFT on it gives a base whose mistakes are predictable: where a carry of 1 should come in, it writes
    ``+0`` with probability about ``rate``, and every later digit follows from that slip."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"carry-slip rate must be in [0, 1), got {rate}")
    rng = random.Random(f"slip-{seed}")
    train = []
    for e in task.train:
        a, b = operands(e.prompt)
        slip = has_carry(a, b) and rng.random() < rate
        train.append(Example(e.prompt, chain(a, b, drop_carry=True) if slip else e.answer, e.domain))
    return Task(task.domain, train, task.test, task.verifier, task.feedback_fn)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Write the chain domain's prompt sets.")
    parser.add_argument("--out", default=str(chain_dir()))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for path in write_sets(args.out, args.seed):
        print(path)


if __name__ == "__main__":
    main()
