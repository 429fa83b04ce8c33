"""Credit assignment on chains: how much of a wrong completion's negative advantage falls on its first mistake?

On a base's wrong chain completions (:mod:`gopd_lab.tasks.chain`, whose step checker knows the first wrong
token exactly), three per-token advantages of the same tokens:

- **OPD** (λ = 1): ``A_t = lp_T − lp_θ``, dense, from the teacher's log-probs;
- **ExOPD** (λ = 2): ``A_t = 2·(lp_T − lp_R) − (lp_θ − lp_R)``; with the reference = the student's initial
  weights (the default) and the student = the base, ``lp_R = lp_θ`` and this is exactly ``2·(lp_T − lp_θ)``,
  so its *share* equals OPD's at the start of training (λ scales the signal, it does not move it);
- **GRPO**: the group-relative sequence advantage ``(r − mean_g) / std_g`` of the completion (k samples per
  prompt), the same on every token, so its share is the window's length over the completion's by construction.

The **share** of a completion is ``Σ_{t∈W} max(−A_t, 0) / Σ_t max(−A_t, 0)`` with the window ``W`` the first
wrong step's token span widened by one token each side (``"step"``) or the first wrong token ± 1 (``"token"``).
:func:`summarise` gives its mean over completions with a percentile bootstrap interval over completions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from gopd_lab.lm.logprobs import token_logprobs
from gopd_lab.lm.rollout import Rollout, encode_prompts, sample
from gopd_lab.objectives.advantages import group_advantages
from gopd_lab.tasks.base import Task
from gopd_lab.tasks.chain import check_steps

METHODS = ("opd", "exopd", "grpo")
LAMS = {"opd": 1.0, "exopd": 2.0}


@dataclass
class CreditSample:
    """One sampled completion of the base with its per-token advantages (over its completion tokens, ``<eos>``
    included) under each method and the step checker's verdict."""

    prompt: str
    completion: str
    tokens: list[str]
    correct: bool
    steps: list[tuple[int, int]]
    first_wrong_step: int | None
    first_wrong_token: int | None
    advantages: dict[str, list[float]]
    lp_student: list[float]
    lp_teacher: list[float]

    def record(self, method: str = "opd") -> dict:
        """A token record (the format of a run's ``samples.jsonl``, :mod:`gopd_lab.viz.tokens`) whose ``advantage``
        is ``method``'s, for the token views."""
        return {
            "prompt": self.prompt, "completion": self.completion, "domain": "chain", "tokens": self.tokens,
            "lp_student": self.lp_student, "lp_teacher": self.lp_teacher, "lp_reference": self.lp_student,
            "advantage": self.advantages[method], "lam": LAMS.get(method, 1.0), "score": float(self.correct),
        }  # fmt: skip


def window(steps: list[tuple[int, int]], step: int, token: int, n: int, kind: str = "step") -> range:
    """The token positions credited to the first mistake: its step's span ± 1 token (``"step"``) or the first
    wrong token ± 1 (``"token"``), clipped to ``[0, n)``."""
    if kind == "step":
        start, end = steps[step]
    elif kind == "token":
        start, end = token, token + 1
    else:
        raise ValueError(f"window kind must be 'step' or 'token', got {kind!r}")
    return range(max(0, start - 1), min(n, end + 1))


def negative_share(values: list[float], positions: range) -> float | None:
    """``Σ_{t∈positions} max(−A_t, 0) / Σ_t max(−A_t, 0)``; ``None`` when no token has a negative advantage."""
    neg = np.clip(-np.asarray(values, dtype=float), 0.0, None)  # (L,)
    total = neg.sum()
    return None if total <= 0 else float(neg[list(positions)].sum() / total)


def sample_groups(
    model: nn.Module, tokenizer, task: Task, *, k: int = 4, limit: int = 0, seed: int = 0, max_new_tokens: int = 42,
    temperature: float = 1.0, batch_size: int = 256,
) -> list[Rollout]:  # fmt: skip
    """``k`` samples of each test prompt (``limit`` > 0: the first ``limit``), the ``k`` of a prompt adjacent, as
    rollouts of ``batch_size`` rows (a multiple of ``k``)."""
    batch_size -= batch_size % k
    examples = task.test[:limit] if limit else task.test
    texts = [e.prompt for e in examples for _ in range(k)]
    prompts = encode_prompts(tokenizer, texts, [task.domain] * len(texts))
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for i in range(0, len(texts), batch_size):
        parts.append(
            sample(
                model,
                prompts.select(range(i, min(i + batch_size, len(texts)))),
                max_new_tokens=max_new_tokens,
                temperature=temperature,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
                tokenizer=tokenizer,
                generator=gen,
            )
        )
    return parts


@torch.inference_mode()
def credit_samples(
    base: nn.Module, teacher: nn.Module, tokenizer, task: Task, *, k: int = 4, limit: int = 0, seed: int = 0,
    max_new_tokens: int = 42,
) -> list[CreditSample]:  # fmt: skip
    """Sample ``k`` completions per test prompt from ``base`` and give every one its advantages under each
    method (the student and the reference are ``base``; the GRPO groups are each prompt's ``k`` samples)."""
    out: list[CreditSample] = []
    eos = tokenizer.eos_token_id
    for r in sample_groups(base, tokenizer, task, k=k, limit=limit, seed=seed, max_new_tokens=max_new_tokens):
        lp_student = token_logprobs(base, r)  # (B, C)
        lp_teacher = token_logprobs(teacher, r)  # (B, C)
        rewards = torch.tensor([task.score(p, c) for p, c in zip(r.prompts, r.completions)])  # (B,)
        seq_adv = group_advantages(rewards, k)  # (B,)
        lp_reference = lp_student  # reference = the student's initial weights = the base
        for i in range(len(r)):
            n = int(r.completion_mask[i].sum())
            ids = r.completion_ids[i, :n].tolist()
            ended = bool(n and ids[-1] == eos)
            check = check_steps(r.prompts[i], r.completions[i], eos=ended)
            adv = {}
            for name, lam in LAMS.items():
                a = lam * (lp_teacher[i, :n] - lp_reference[i, :n]) - (lp_student[i, :n] - lp_reference[i, :n])
                adv[name] = a.tolist()  # (n,)
            adv["grpo"] = [float(seq_adv[i])] * n
            out.append(
                CreditSample(
                    r.prompts[i],
                    r.completions[i],
                    [tokenizer.decode([t]) if t != eos else "<eos>" for t in ids],
                    bool(rewards[i]),
                    check.steps,
                    check.first_wrong_step,
                    check.first_wrong_token,
                    adv,
                    lp_student[i, :n].tolist(),
                    lp_teacher[i, :n].tolist(),
                )
            )
    return out


def shares(samples: list[CreditSample], kind: str = "step") -> pd.DataFrame:
    """One row per wrong completion (final answer wrong) and method: ``share`` of its negative advantage in the
    first mistake's window (rows where a method gives no token a negative advantage are left out, e.g. GRPO on a
    group with no right sample), with ``window`` (tokens) and ``length`` (tokens)."""
    rows = []
    for j, s in enumerate(samples):
        if s.correct or s.first_wrong_token is None:
            continue
        n = len(s.tokens)
        w = window(s.steps, s.first_wrong_step, s.first_wrong_token, n, kind)
        for method in METHODS:
            share = negative_share(s.advantages[method], w)
            if share is not None:
                rows.append({"sample": j, "method": method, "share": share, "window": len(w), "length": n,
                             "first_wrong_step": s.first_wrong_step})  # fmt: skip
    return pd.DataFrame(rows)


def bootstrap_mean(x: np.ndarray, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``x`` (resampling its entries)."""
    rng = np.random.default_rng(seed)
    means = rng.choice(x, size=(n_boot, len(x)), replace=True).mean(axis=1)  # (n_boot,)
    tail = (1 - level) / 2
    return float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def summarise(table: pd.DataFrame, *, n_boot: int = 2000, seed: int = 0) -> pd.DataFrame:
    """Per method: ``n`` completions, mean ``share`` with its 95 % bootstrap interval (``lo``, ``hi``), and the mean
    share a uniform spread would give (``uniform`` = window / length, GRPO's by construction)."""
    rows = []
    for method in METHODS:
        part = table[table.method == method]
        if not len(part):
            continue
        x = part.share.to_numpy()
        lo, hi = bootstrap_mean(x, n_boot=n_boot, seed=seed)
        uniform = float((part.window / part.length).mean())
        rows.append({"method": method, "n": len(part), "share": float(x.mean()), "lo": lo, "hi": hi,
                     "uniform": uniform})  # fmt: skip
    return pd.DataFrame(rows)


def load_zoo_model(name: str) -> nn.Module:
    """The zoo model ``name`` (hash-checked, float32, in eval mode)."""
    from transformers import AutoModelForCausalLM

    from gopd_lab.world.zoo import model_path

    return AutoModelForCausalLM.from_pretrained(model_path(name), dtype=torch.float32).eval()


def committed(folder: str = "results/chain", kind: str = "step") -> tuple[dict, pd.DataFrame]:
    """The committed ``credit.json`` of ``folder`` (repository-relative; written by ``sweeps/chain_credit.py``) and its
    per-method table for window ``kind``."""
    import json

    from gopd_lab.checkout import repo_path

    data = json.loads((repo_path(folder) / "credit.json").read_text())
    return data, pd.DataFrame(data["windows"][kind])
