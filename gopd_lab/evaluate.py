"""Batched evaluation on tasks' test splits: greedy accuracy and mean accuracy over k samples, of a model
or of the G-OPD target of a teacher and a reference (`evaluate_target`)."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from torch import nn

from .rollout import Prompts, prompts_from_tasks, sample


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
        )
        out.extend(r.completions)
    return out


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
) -> pd.DataFrame:
    """Per-domain accuracy on each task's test split.

    Columns: ``domain``, ``greedy_acc`` (argmax decoding), ``mean_acc`` (mean over ``k`` samples at
    ``temperature``; omitted when ``k == 0``), ``n`` (test prompts; ``limit`` > 0 caps it per task).
    """
    prompts = prompts_from_tasks(tasks, tokenizer, split="test", limit=limit)
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
            row["mean_acc"] = sum(_accuracy(task, prompts, s, idx) for s in sampled) / k
        rows.append(row)
    return pd.DataFrame(rows)


def _accuracy(task, prompts: Prompts, completions: Sequence[str], idx: list[int]) -> float:
    return sum(task.score(prompts.texts[i], completions[i]) for i in idx) / max(1, len(idx))


def task_evaluator(tasks: dict, tokenizer, **kwargs):
    """An ``evaluate(student, step) -> rows`` callback for :func:`gopd_lab.train.train`."""

    def run(model: nn.Module, step: int) -> list[dict]:
        return evaluate(model, tokenizer, tasks, **kwargs).to_dict("records")

    return run


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
    decoding step, see :class:`gopd_lab.headroom.TargetModel`): the same arguments (``k``, ``seed``,
    ``limit``, ``temperature``, ...), prompts and columns. ``lam = 1`` is exactly ``evaluate(teacher)``,
    ``lam = 0`` exactly ``evaluate(reference)``, with the same seed."""
    from .headroom import TargetModel

    return evaluate(TargetModel(teacher, reference, lam), tokenizer, tasks, **kwargs)
