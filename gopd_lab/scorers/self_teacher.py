"""SDPO's self-teacher: the student itself, re-prompted with feedback from the environment.

Self-Distillation Policy Optimization (Hübotter et al., arXiv 2601.20802): ``lp_T = log π_θ'(a_t | s ⊕
feedback, a_<t)`` on the student's *own* completion tokens, with ``θ'`` the live weights, the initial
weights, or an EMA of the weights. Everything downstream (λ, the reference, the estimators) is G-OPD
unchanged, so λ-extrapolated SDPO is a setting.

The feedback of a sample is the task's textual feedback for a wrong answer ("expected 46, got 45")
and/or a correct answer found by another sample of the same prompt, inserted in the prompt through a
template with the fields ``{prompt}``, ``{feedback}`` and ``{solution}``.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn

from gopd_lab.lm.models import freeze
from gopd_lab.lm.rollout import Prompts, Rollout, left_pad


class LiveTeacher(nn.Module):
    """The live student used as a scorer: eval mode for the call, train mode restored after."""

    def __init__(self, student: nn.Module):
        super().__init__()
        self._student = [student]  # not registered: its parameters belong to the student

    @property
    def config(self):
        return self._student[0].config

    @contextlib.contextmanager
    def scoring(self) -> Iterator[nn.Module]:
        model = self._student[0]
        modes = {m: m.training for m in model.modules()}
        model.eval()
        try:
            yield model
        finally:
            for m, mode in modes.items():
                m.training = mode


def self_teacher(student: nn.Module, kind: str) -> nn.Module:
    """``live`` (the current weights), ``initial`` (a frozen copy) or ``ema`` (a frozen copy updated by
    :func:`ema_update` after every step)."""
    if kind == "live":
        return LiveTeacher(student)
    if kind in ("initial", "ema"):
        return freeze(copy.deepcopy(student))
    raise ValueError(f"sdpo_teacher must be live, initial or ema, got {kind!r}")


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, rate: float) -> None:
    """``θ' ← rate·θ' + (1 − rate)·θ`` for every parameter."""
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(rate).add_(s.detach(), alpha=1.0 - rate)


def feedback_texts(
    rollout: Rollout, rewards: torch.Tensor, tasks: dict, group_size: int, mode: str
) -> tuple[list[str | None], list[str | None]]:
    """``(feedback, solution)`` per sample: the task's feedback when wrong (``mode`` ``verifier`` or
    ``both``) and a correct completion from another sample of the same prompt (``solution`` or ``both``)."""
    feedback: list[str | None] = [None] * len(rollout)
    solution: list[str | None] = [None] * len(rollout)
    for i, (prompt, completion, domain) in enumerate(zip(rollout.prompts, rollout.completions, rollout.domains)):
        if mode in ("verifier", "both") and domain in tasks:
            feedback[i] = tasks[domain].feedback(prompt, completion)
        if mode in ("solution", "both"):
            start = (i // group_size) * group_size
            for j in range(start, start + group_size):
                if j != i and j < len(rollout) and float(rewards[j]) > 0:
                    solution[i] = rollout.completions[j]
                    break
    return feedback, solution


def teacher_prompt(template: str, prompt: str, feedback: str | None, solution: str | None) -> str:
    """Fill the template; an absent field becomes the empty string."""
    return template.format(prompt=prompt, feedback=feedback or "", solution=solution or "")


def self_teacher_rollout(rollout: Rollout, texts: list[str], tokenizer, pad_token_id: int) -> Rollout:
    """The same completion tokens behind new prompts (the self-teacher's view of each sample)."""
    ids = [tokenizer(t, add_special_tokens=True)["input_ids"] for t in texts]
    prompt_ids, prompt_mask = left_pad(ids, pad_token_id, rollout.prompt_ids.device)
    return Rollout(
        prompt_ids,
        prompt_mask,
        rollout.completion_ids,
        rollout.completion_mask,
        texts,
        list(rollout.completions),
        list(rollout.domains),
        list(rollout.prompt_index),
    )


def build_self_teacher_view(
    rollout: Rollout, rewards: torch.Tensor, tasks: dict, cfg, tokenizer, pad_token_id: int
) -> tuple[Rollout, Rollout, dict[str, float]]:
    """``(student_rollout, teacher_rollout, metrics)``. Samples with no feedback are masked out of the
    update (``sdpo_no_feedback="mask"``) or scored under the plain prompt (``"plain"``)."""
    feedback, solution = feedback_texts(rollout, rewards, tasks, cfg.samples_per_prompt, cfg.sdpo_feedback)
    has = [f is not None or s is not None for f, s in zip(feedback, solution)]
    texts = [
        teacher_prompt(cfg.sdpo_template, p, f, s) if h else p
        for p, f, s, h in zip(rollout.prompts, feedback, solution, has)
    ]
    student_view = rollout
    if cfg.sdpo_no_feedback == "mask" and not all(has):
        keep = torch.tensor(has, dtype=rollout.completion_mask.dtype, device=rollout.completion_mask.device)
        student_view = Rollout(
            rollout.prompt_ids,
            rollout.prompt_mask,
            rollout.completion_ids,
            rollout.completion_mask * keep[:, None],
            rollout.prompts,
            rollout.completions,
            rollout.domains,
            rollout.prompt_index,
        )
    teacher_view = self_teacher_rollout(student_view, texts, tokenizer, pad_token_id)
    return student_view, teacher_view, {"sdpo_feedback_frac": sum(has) / max(1, len(has))}


def prompts_of(rollout: Rollout) -> Prompts:
    """The prompts of a rollout (token ids without padding), e.g. to inspect the self-teacher's view."""
    ids = [row[m.bool()].tolist() for row, m in zip(rollout.prompt_ids, rollout.prompt_mask)]
    return Prompts(ids, list(rollout.prompts), list(rollout.domains))
