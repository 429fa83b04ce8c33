"""Batched evaluation on tasks' test splits: greedy accuracy, mean accuracy and pass@k over k samples, of a
model or of the G-OPD target of a teacher and a reference (`evaluate_target`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from gopd_lab.lm.logprobs import max_context
from gopd_lab.lm.rollout import Prompts, prompts_from_tasks, sample
from gopd_lab.lm.target import TargetModel
from gopd_lab.runio import atomic_write_text


def generate(
    model: nn.Module,
    tokenizer,
    prompts: Prompts,
    *,
    max_new_tokens: int,
    greedy: bool,
    temperature: float = 1.0,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
) -> list[str]:
    """Completions for every prompt, in batches."""
    out: list[str] = []
    context = max_context(model)
    for i in range(0, len(prompts), batch_size):
        part = prompts.select(range(i, min(i + batch_size, len(prompts))))
        r = sample(
            model,
            part,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            greedy=greedy,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tokenizer=tokenizer,
            generator=generator,
            max_context=context,  # a prompt too long for the model is refused, never scored
        )
        out.extend(r.completions)
    return out


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of pass@k from ``n`` samples of which ``c`` are correct (Chen et al., 2021):

    ``pass@k = 1 − C(n − c, k) / C(n, k)``, the probability that ``k`` samples drawn without replacement from
    the ``n`` include a correct one. With ``k == n`` it is 1 when any sample is correct, else 0.
    """
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def evaluate(
    model: nn.Module,
    tokenizer,
    tasks: dict,
    *,
    k: int = 4,
    max_new_tokens: int = 8,
    temperature: float = 1.0,
    batch_size: int = 256,
    limit: int = 0,
    seed: int = 0,
    pass_k: int | None = None,
    chat_template: bool = False,
    outcomes: list | None = None,
) -> pd.DataFrame:
    """Per-domain accuracy on each task's test split.

    Columns: ``domain``, ``greedy_acc`` (argmax decoding), ``mean_acc`` (mean over ``k`` samples at
    ``temperature``), ``pass_acc`` (mean over prompts of :func:`pass_at_k` with ``pass_k`` ≤ ``k``, default
    ``k``, estimated from the same ``k`` samples; both omitted when ``k == 0``), ``n`` (test prompts;
    ``limit`` > 0 caps it per task). ``chat_template`` formats the prompts as training does
    (``RunConfig.chat_template``: one user turn of the tokenizer's chat template). ``outcomes``: a list that gets one record per test prompt, so that two models
    can be compared prompt by prompt: ``domain``, ``prompt`` (its position in that domain's test split),
    ``greedy`` (1 if the greedy completion is correct, else 0) and ``s0`` … ``s{k-1}`` (each sample's).
    """
    pass_k = k if pass_k is None else pass_k
    if k and not 1 <= pass_k <= k:
        raise ValueError(f"pass_k must be in [1, k={k}], got {pass_k}")
    prompts = prompts_from_tasks(tasks, tokenizer, split="test", limit=limit, chat_template=chat_template)
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    greedy = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, greedy=True, batch_size=batch_size)
    sampled = [
        generate(
            model,
            tokenizer,
            prompts,
            max_new_tokens=max_new_tokens,
            greedy=False,
            temperature=temperature,
            batch_size=batch_size,
            generator=gen,
        )
        for _ in range(k)
    ]
    rows = []
    for domain, task in tasks.items():
        idx = [i for i, d in enumerate(prompts.domains) if d == domain]
        row = {"domain": domain, "greedy_acc": _accuracy(task, prompts, greedy, idx), "n": len(idx)}
        if k:
            correct = [sum(_score(task, prompts, s, i) for s in sampled) for i in idx]  # (prompts,)
            row["mean_acc"] = sum(correct) / (k * max(1, len(idx)))
            row["pass_acc"] = sum(pass_at_k(k, int(c), pass_k) for c in correct) / max(1, len(idx))
        rows.append(row)
        if outcomes is not None:
            outcomes.extend(_prompt_outcomes(task, prompts, greedy, sampled, domain, idx))
    return pd.DataFrame(rows)


def _prompt_outcomes(task, prompts: Prompts, greedy, sampled, domain: str, idx: list[int]) -> list[dict]:
    out = []
    for j, i in enumerate(idx):
        record = {"domain": domain, "prompt": j, "greedy": int(_score(task, prompts, greedy, i))}
        record.update({f"s{n}": int(_score(task, prompts, s, i)) for n, s in enumerate(sampled)})
        out.append(record)
    return out


def _accuracy(task, prompts: Prompts, completions: Sequence[str], idx: list[int]) -> float:
    return sum(_score(task, prompts, completions, i) for i in idx) / max(1, len(idx))


def _score(task, prompts: Prompts, completions: Sequence[str], i: int) -> float:
    """Row ``i``'s reward, against its own reference answer (a prompt may have several rows)."""
    return task.score(prompts.texts[i], completions[i], prompts.answers[i] if prompts.answers else None)


def task_evaluator(tasks: dict, tokenizer, *, outcomes_path: str | Path | None = None, **kwargs):
    """An ``evaluate(student, step) -> rows`` callback for :func:`gopd_lab.loop.train.train`. With
    ``outcomes_path`` every evaluation also writes its per-prompt outcomes there (CSV, a ``step`` column first,
    replaced each time: after a run it holds the final evaluation's)."""

    def run(model: nn.Module, step: int) -> list[dict]:
        records: list[dict] | None = [] if outcomes_path is not None else None
        rows = evaluate(model, tokenizer, tasks, outcomes=records, **kwargs).to_dict("records")
        if outcomes_path is not None:
            atomic_write_text(
                outcomes_path, pd.DataFrame(records).assign(step=step).pipe(_step_first).to_csv(index=False)
            )
        return rows

    run.settings = {"tasks": sorted(tasks), **kwargs}  # what config.json's run record says of the evaluation
    return run


def _step_first(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[["step", *[c for c in frame.columns if c != "step"]]]


def evaluate_target(
    teacher: nn.Module,
    reference: nn.Module,
    tokenizer,
    tasks: dict,
    *,
    lam: float,
    **kwargs,
) -> pd.DataFrame:
    """:func:`evaluate` of the token-level G-OPD target ``π_R^(1−λ)·π_T^λ`` (log-probs combined at every
    decoding step, see :class:`gopd_lab.lm.target.TargetModel`): the same arguments (``k``, ``seed``,
    ``limit``, ``temperature``, ...), prompts and columns. ``lam = 1`` is exactly ``evaluate(teacher)``,
    ``lam = 0`` exactly ``evaluate(reference)``, with the same seed."""
    return evaluate(TargetModel(teacher, reference, lam), tokenizer, tasks, **kwargs)
