"""Chain metrics of a model on the chain test set: the step checker applied to its greedy completions.

:func:`chain_metrics` decodes every test prompt greedily and returns the final-answer accuracy, the mean
completion length in tokens (``<eos>`` included) and, per step position (``column 1`` = units … ``answer``), the
error rate: the share of the completions that reached that step with everything before it right whose first
mistake is in it.
"""

from __future__ import annotations

from torch import nn

from gopd_lab.lm.rollout import prompts_from_tasks
from gopd_lab.loop.evaluate import generate
from gopd_lab.tasks.base import Task
from gopd_lab.tasks.chain import check_steps, n_columns

POSITIONS = ("column 1", "column 2", "column 3", "column 4", "answer")


def position_name(step: int, columns: int) -> str:
    """The name of step ``step`` of a prompt with ``columns`` columns (``answer`` after the last column)."""
    return f"column {step + 1}" if step < columns else "answer"


def chain_metrics(
    model: nn.Module, tokenizer, task: Task, *, limit: int = 0, max_new_tokens: int = 42, batch_size: int = 256
) -> dict:
    """``{"greedy_acc", "mean_len", "n", "error_rate": {position: rate}, "reached": {position: count}}`` of the
    greedy completions of ``task``'s test prompts (``limit`` > 0: the first ``limit``)."""
    prompts = prompts_from_tasks({task.domain: task}, tokenizer, split="test", limit=limit)
    completions = generate(model, tokenizer, prompts, max_new_tokens=max_new_tokens, greedy=True, batch_size=batch_size)
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
        "mean_len": length / n,
        "n": n,
        "error_rate": {p: (wrong[p] / reached[p] if reached[p] else None) for p in POSITIONS},
        "reached": reached,
    }
