"""Chain metrics of a model on the chain test set: the step checker applied to its greedy completions.

:func:`chain_metrics` decodes every test prompt greedily and returns the final-answer accuracy, the mean
completion length in tokens (``<eos>`` included) and, per step position (``column 1`` = units … ``answer``), the
error rate: the share of the completions that reached that step with everything before it right whose first
mistake is in it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from gopd_lab.lm.rollout import prompts_from_tasks
from gopd_lab.loop.evaluate import generate, pass_at_k
from gopd_lab.runio import atomic_write_json, read_jsonl
from gopd_lab.tasks.base import Task
from gopd_lab.tasks.chain import check_steps, n_columns

POSITIONS = ("column 1", "column 2", "column 3", "column 4", "answer")


def position_name(step: int, columns: int) -> str:
    """The name of step ``step`` of a prompt with ``columns`` columns (``answer`` after the last column)."""
    return f"column {step + 1}" if step < columns else "answer"


def chain_metrics(
    model: nn.Module, tokenizer, task: Task, *, limit: int = 0, max_new_tokens: int = 42, batch_size: int = 256,
    k: int = 4, seed: int = 0, temperature: float = 1.0,
) -> dict:  # fmt: skip
    """``{"greedy_acc", "mean_len", "n", "error_rate": {position: rate}, "reached": {position: count}}`` of the
    greedy completions of ``task``'s test prompts (``limit`` > 0: the first ``limit``), and with ``k`` > 0 also
    ``mean_acc`` (mean@k), ``pass_acc`` (pass@k) and ``sampled_len`` (mean length) of ``k`` samples per prompt at
    ``temperature`` (generator seeded with ``seed``, as :func:`gopd_lab.loop.evaluate.evaluate` draws them)."""
    prompts = prompts_from_tasks({task.domain: task}, tokenizer, split="test", limit=limit)
    completions = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, greedy=True, batch_size=batch_size)
    sampled = {}
    if k:
        gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
        draws = [
            generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, greedy=False, temperature=temperature,
                     batch_size=batch_size, generator=gen)
            for _ in range(k)
        ]  # fmt: skip
        right = [sum(task.score(p, d[i]) for d in draws) for i, p in enumerate(prompts.texts)]  # (prompts,)
        sampled = {
            "mean_acc": sum(right) / (k * len(right)),
            "pass_acc": sum(pass_at_k(k, int(c), k) for c in right) / len(right),
            "sampled_len": sum(len(c) + (len(c) < max_new_tokens) for d in draws for c in d) / (k * len(right)),
        }
    reached = dict.fromkeys(POSITIONS, 0)
    wrong = dict.fromkeys(POSITIONS, 0)
    correct, length = 0, 0
    for prompt, completion in zip(prompts.texts, completions):
        correct += task.score(prompt, completion) > 0
        ended = len(completion) < max_new_tokens  # stopped at <eos> (one token per character)
        length += len(completion) + ended
        check = check_steps(prompt, completion, eos=ended)
        columns = n_columns(prompt)
        last = check.first_wrong_step if check.first_wrong_step is not None else columns
        for step in range(min(last, columns) + 1):
            name = position_name(step, columns)
            reached[name] += 1
            if step == check.first_wrong_step:
                wrong[name] += 1
    n = len(completions)
    return {
        "greedy_acc": correct / n,
        **sampled,
        "mean_len": length / n,
        "n": n,
        "error_rate": {p: (wrong[p] / reached[p] if reached[p] else None) for p in POSITIONS},
        "reached": reached,
    }


def add_chain_metrics(
    out_dir: str | Path, *, limit: int = 0, max_new_tokens: int = 42, k: int = 4, seed: int = 0
) -> dict:
    """Compute :func:`chain_metrics` of a finished run's final student (``<out_dir>/model``) and store them under
    ``"chain"`` in its ``summary.json`` (rewritten atomically); returns them."""
    from transformers import AutoModelForCausalLM

    from gopd_lab.tasks import get_task
    from gopd_lab.world.tokenizer import build_char_tokenizer

    out = Path(out_dir)
    model = AutoModelForCausalLM.from_pretrained(out / "model", dtype=torch.float32).eval()
    metrics = chain_metrics(model, build_char_tokenizer(), get_task("chain"), limit=limit, max_new_tokens=max_new_tokens,
                            k=k, seed=seed)  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    summary["chain"] = metrics
    atomic_write_json(out / "summary.json", summary)
    return metrics


def sweep_table(folder: Path) -> pd.DataFrame:
    """One row per point of a published chain sweep: its parameters, chain metrics and OPD's curve ends."""
    rows = []
    plan = json.loads((folder / "sweep.json").read_text())
    for pid in plan["points"]:
        point = folder / pid
        params = json.loads((point / "params.json").read_text())
        summary = json.loads((point / "summary.json").read_text())
        chain = summary.get("chain") or {}
        metrics = read_jsonl(point / "metrics.jsonl")
        kl = np.array([m["reverse_kl"] for m in metrics if "reverse_kl" in m])
        steps = np.array([m["step"] for m in metrics if "reverse_kl" in m])
        tail = steps >= steps.max() - 100 if len(steps) else steps
        slope = float(np.polyfit(steps[tail], kl[tail], 1)[0]) if tail.sum() >= 2 else float("nan")
        rows.append(
            {
                "point": pid,
                "lam": float(params.get("lam", 1.0)),
                "loss_agg": params.get("loss_agg", "token-mean"),
                "seed": params["seed"],
                "status": "ok",
                **{
                    m: chain.get(m, float("nan"))
                    for m in (*("greedy_acc", "mean_acc", "pass_acc"), "mean_len", "sampled_len")
                },
                **{f"err {p}": (chain.get("error_rate") or {}).get(p) for p in POSITIONS},
                "reverse_kl_first": float(kl[:10].mean()) if len(kl) else float("nan"),
                "reverse_kl_last": float(kl[-10:].mean()) if len(kl) else float("nan"),
                "kl_slope_last100": slope,
            }
        )
    return pd.DataFrame(rows)
