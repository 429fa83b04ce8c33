"""Stages 1–2 for every method: build a step's batch → :class:`~gopd_lab.scorers.score.Scored`.

- ``gopd``: the student samples, each sample's teacher (and reference) scores it.
- ``sdpo``: the student samples, the verifier gives feedback, the self-teacher scores the same tokens
  under the feedback-augmented prompt.
- ``grpo`` / ``chord``: the student samples, the verifier rewards it (reference log-probs for a KL term).
- ``sft`` / ``offpolicy``: teacher-forced batches of expert answers (the tasks', or the teacher's own
  completions generated once at the start).
- A recipe may also have the teacher sample some or all rows (``ctx.sample(batch, policy=...)``).
- Any method with ``mu > 0`` also carries an expert batch for the μ-weighted SFT term.
"""

from __future__ import annotations

from pathlib import Path

import torch

from gopd_lab.config import ConfigError, RunConfig
from gopd_lab.lm.logprobs import max_context
from gopd_lab.lm.models import DEFAULT_DOMAIN, Models
from gopd_lab.lm.precision import autocast
from gopd_lab.lm.rollout import (
    Prompts,
    Rollout,
    check_known_text,
    encode_prompts,
    read_prompt_rows,
    sample,
    teacher_forced,
)
from gopd_lab.methods import get_method
from gopd_lab.runio import append_jsonl, read_jsonl
from gopd_lab.scorers.score import Scored, reference_logprobs, score_rollout
from gopd_lab.scorers.self_teacher import build_self_teacher_view


def rewards_of(tasks: dict, rollout: Rollout, answers: list[str] | None = None) -> torch.Tensor:
    """Verifier reward of each sample (NaN for a domain without a task), against its own row's answer when
    ``answers`` (one per sample) are given: a prompt listed with several answers is several rows."""
    answers = answers if answers is not None else [None] * len(rollout)
    values = [
        tasks[d].score(p, c, a) if d in tasks else float("nan")
        for p, c, d, a in zip(rollout.prompts, rollout.completions, rollout.domains, answers)
    ]
    return torch.tensor(values, dtype=torch.float32)


class Collector:
    """Makes each step's :class:`Scored` batch for ``cfg.method``."""

    def __init__(
        self, cfg: RunConfig, models: Models, tasks: dict, prompts: Prompts, generator: torch.Generator, out_dir: Path
    ):
        self.cfg, self.models, self.tasks, self.prompts, self.gen = cfg, models, tasks, prompts, generator
        student = models.student
        self.max_context = max_context(student)
        self.method = method = get_method(cfg.method)
        if method.needs_tasks and not tasks:
            raise ConfigError(f"method={cfg.method!r} needs tasks (answers, a verifier or feedback); set tasks=...")
        self.engine = None
        if cfg.rollout_backend == "vllm":  # imported only when selected
            from gopd_lab.scale.vllm_rollout import VllmRollout

            self.engine = VllmRollout(cfg, models, prompt_len=max(len(ids) for ids in prompts.ids))
        needs_expert = not method.samples_student or cfg.mu > 0
        self.expert = self._expert_prompts(out_dir) if needs_expert else None
        if self.expert is not None and self.expert.answers is None:
            raise ConfigError("expert data has no answers")

    @property
    def num_examples(self) -> int:
        """What a step's batch indexes: the expert examples for ``sft`` / ``offpolicy``, else the prompts."""
        return len(self.prompts) if self.method.samples_student else len(self.expert)

    # ------------------------------------------------------------------ expert data
    def _expert_prompts(self, out_dir: Path) -> Prompts:
        cfg, tok = self.cfg, self.models.tokenizer
        source = self.method.expert_source or cfg.expert_data
        if source == "teacher":
            path = out_dir / "teacher_samples.jsonl"
            if not cfg.resume:  # a fresh run never trains on samples another run left behind
                path.unlink(missing_ok=True)
            return self._teacher_samples(path)
        if source:
            rows = read_prompt_rows(source, ("prompt", "answer"))
            prompts = encode_prompts(
                tok,
                [r["prompt"] for r in rows],
                [r.get("domain", DEFAULT_DOMAIN) for r in rows],
                chat_template=cfg.chat_template,
            )
            prompts.answers = [r["answer"] for r in rows]
            answer_ids = [tok(a, add_special_tokens=False)["input_ids"] for a in prompts.answers]
            check_known_text(tok, prompts.answers, answer_ids, what=f"{source}: answer")
            return prompts
        if self.prompts.answers is None:
            raise ConfigError(f"method={cfg.method!r} / mu > 0 needs expert answers: use tasks=..., or expert_data=")
        return self.prompts

    def _teacher_samples(self, path: Path) -> Prompts:
        """Completions the teacher samples once for every training prompt (kept in the run dir, reused on resume)."""
        if not path.exists():
            from gopd_lab.loop.evaluate import generate

            rows = []
            for domain in sorted(set(self.prompts.domains)):
                idx = [i for i, d in enumerate(self.prompts.domains) if d == domain]
                part = self.prompts.select(idx)
                completions = generate(
                    self.models.teacher_for(domain),
                    self.models.tokenizer,
                    part,
                    max_new_tokens=self.cfg.max_new_tokens,
                    greedy=False,
                    temperature=self.cfg.temperature,
                    generator=self.gen,
                )
                rows += [{"prompt": p, "domain": domain, "answer": c} for p, c in zip(part.texts, completions)]
            tmp = path.with_suffix(".tmp")
            tmp.unlink(missing_ok=True)
            append_jsonl(tmp, rows)
            tmp.rename(path)
        rows = read_jsonl(path)
        prompts = encode_prompts(
            self.models.tokenizer,
            [r["prompt"] for r in rows],
            [r["domain"] for r in rows],
            chat_template=self.cfg.chat_template,
        )
        prompts.answers = [r["answer"] for r in rows]
        return prompts

    def expert_batch(self, index: list[int]) -> Rollout:
        m = self.models
        return teacher_forced(
            self.expert.select(index),
            m.tokenizer,
            pad_token_id=m.pad_token_id,
            eos_token_id=m.eos_token_id,
            device=m.device,
        )

    # ------------------------------------------------------------------ one step
    def sample(
        self, index: list[int], row_seeds: list[int] | None = None, *, teacher_rows: list[bool] | None = None
    ) -> Rollout:
        """Stage 1: the student samples a completion of each prompt ``index`` (vLLM when it is the backend); the
        rows marked in ``teacher_rows`` are sampled by their domain's teacher instead (off-policy)."""
        if teacher_rows is not None and any(teacher_rows):
            return self._sample_mixed(index, row_seeds, teacher_rows)
        cfg, m = self.cfg, self.models
        if self.engine is not None:
            if row_seeds is None:
                raise ValueError("rollout_backend='vllm' samples every row with its own seed: pass row_seeds")
            r = self.engine.sample(
                self.prompts.select(index),
                max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                row_seeds=row_seeds,
            )
            r.prompt_index = list(index)
            return r
        r = sample(
            m.student,
            self.prompts.select(index),
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            eos_token_id=m.stop_token_ids,  # the ids the vLLM backend stops at too
            pad_token_id=m.pad_token_id,
            tokenizer=m.tokenizer,
            generator=self.gen,
            max_context=self.max_context,
            row_seeds=row_seeds,
        )
        r.prompt_index = list(index)
        return r

    def _sample_mixed(self, index: list[int], row_seeds: list[int] | None, teacher_rows: list[bool]) -> Rollout:
        """Rows sampled by their domain's teacher (``teacher_rows``) and by the student (the others), one
        :func:`~gopd_lab.lm.rollout.sample` per model, merged back into the batch's row order."""
        cfg, m = self.cfg, self.models
        groups: dict[int, tuple[torch.nn.Module, list[int]]] = {}  # model id → (model, rows)
        for row, (i, by_teacher) in enumerate(zip(index, teacher_rows)):
            model = m.teacher_for(self.prompts.domains[i]) if by_teacher else None
            if model is not None and not isinstance(model, torch.nn.Module):  # a RemoteScorer
                raise ConfigError("a teacher given as a URL only scores tokens; sampling from it needs its weights")
            groups.setdefault(id(model), (model, []))[1].append(row)
        parts = []
        for model, rows in groups.values():
            if model is None:  # the student's rows, its own sampler (vLLM when it is the backend)
                seeds = None if row_seeds is None else [row_seeds[r] for r in rows]
                parts.append((rows, self.sample([index[r] for r in rows], seeds)))
                continue
            part = sample(
                model,
                self.prompts.select([index[r] for r in rows]),
                max_new_tokens=cfg.max_new_tokens,
                temperature=cfg.temperature,
                top_p=cfg.top_p,
                eos_token_id=m.stop_token_ids,
                pad_token_id=m.pad_token_id,
                tokenizer=m.tokenizer,
                generator=self.gen,
                max_context=max_context(model) or self.max_context,
                row_seeds=None if row_seeds is None else [row_seeds[r] for r in rows],
            )
            part.prompt_index = [index[r] for r in rows]
            parts.append((rows, part))
        return merge_rollouts(parts, len(index), m.pad_token_id)

    def _answers(self, rollout: Rollout) -> list[str] | None:
        """The reference answer of each sample's row (its prompt index into the task prompts), when known."""
        answers = self.prompts.answers
        if answers is None or len(rollout.prompt_index) != len(rollout):
            return None
        return [answers[i] for i in rollout.prompt_index]

    def after_update(self, student: torch.nn.Module) -> None:
        """After each optimizer step: copy the student's new weights into the vLLM engine (when one samples)."""
        if self.engine is not None:
            self.engine.sync(student)

    def teacher_scores(self, rollout: Rollout, lam: float | dict[str, float], *, self_teacher: bool = False) -> Scored:
        """G-OPD's stage 2: each row's teacher and (where its λ ≠ 1) reference score the rollout's tokens at ``lam``
        (one float or ``{domain: λ}``, applied before any target is formed), the verifier its answer (when there
        are tasks); ``self_teacher``: SDPO's teacher reads the feedback-augmented prompts.
        Under the student's autocast (mixed precision), so that ``reference: student`` scores exactly as the
        student's own forward does (its reward term is 0 at step 0)."""
        cfg, m = self.cfg, self.models
        with autocast(m.autocast_dtype, m.device):
            rewards = rewards_of(self.tasks, rollout, self._answers(rollout)) if self.tasks else None
            teacher_view, extra = None, {}
            if self_teacher:
                rollout, teacher_view, extra = build_self_teacher_view(
                    rollout, rewards, self.tasks, cfg, m.tokenizer, m.pad_token_id
                )
            scored = score_rollout(
                m,
                rollout,
                lam,
                estimator=cfg.estimator,
                topk=cfg.topk,
                chunk_tokens=cfg.score_chunk_tokens,
                teacher_rollout=teacher_view,
                always_reference=cfg.always_reference,
                entropy_threshold=cfg.entropy_threshold if cfg.lam_mode == "entropy" else None,
            )
        scored.rewards, scored.extra = rewards, extra
        return scored

    def verifier_scores(self, rollout: Rollout) -> Scored:
        """GRPO's stage 2: the verifier's reward of each sample, the reference's log-probs when a step needs them
        (``kl_coef > 0``)."""
        cfg, m = self.cfg, self.models
        with autocast(m.autocast_dtype, m.device):
            rewards = rewards_of(self.tasks, rollout, self._answers(rollout)) if self.tasks else None
            lp_ref = (
                reference_logprobs(m, rollout, chunk_tokens=cfg.score_chunk_tokens) if cfg.needs_reference else None
            )
        return Scored(rollout=rollout, lam=torch.ones(len(rollout)), lp_reference=lp_ref, rewards=rewards)

    def expert_scores(self, rollout: Rollout) -> Scored:
        """An expert batch (SFT, off-policy) as the update reads it: no reward, λ = 1, no teacher score (the
        reference's log-probs only if a step needs them)."""
        cfg, m = self.cfg, self.models
        with autocast(m.autocast_dtype, m.device):
            lp_ref = (
                reference_logprobs(m, rollout, chunk_tokens=cfg.score_chunk_tokens) if cfg.needs_reference else None
            )
        return Scored(rollout=rollout, lam=torch.ones(len(rollout)), lp_reference=lp_ref)

    def expert_index(self, step: int) -> list[int]:
        """The expert examples of a step's SFT term (their own permutation stream)."""
        return batch_indices(len(self.expert), self.cfg.batch_size, step, self.cfg.seed + 7919)


def merge_rollouts(parts: list[tuple[list[int], Rollout]], n: int, pad_token_id: int) -> Rollout:
    """One :class:`Rollout` of ``n`` rows from ``parts`` ``[(rows, rollout)]`` (each part's rows in batch order):
    prompts re-padded on the left and completions on the right to the widest part."""
    if len(parts) == 1 and parts[0][0] == list(range(n)):
        return parts[0][1]
    ref = parts[0][1]
    width_p = max(r.prompt_ids.shape[1] for _, r in parts)
    width_c = max(r.completion_ids.shape[1] for _, r in parts)
    prompt_ids = ref.prompt_ids.new_full((n, width_p), pad_token_id)  # (B, P)
    prompt_mask = ref.prompt_mask.new_zeros((n, width_p))  # (B, P)
    completion_ids = ref.completion_ids.new_full((n, width_c), pad_token_id)  # (B, C)
    completion_mask = ref.completion_mask.new_zeros((n, width_c))  # (B, C)
    texts, completions, domains, prompt_index = [None] * n, [None] * n, [None] * n, [None] * n
    for rows, r in parts:
        at = torch.as_tensor(rows, dtype=torch.long, device=prompt_ids.device)
        p, c = r.prompt_ids.shape[1], r.completion_ids.shape[1]
        prompt_ids[at, width_p - p :], prompt_mask[at, width_p - p :] = r.prompt_ids, r.prompt_mask
        completion_ids[at, :c], completion_mask[at, :c] = r.completion_ids, r.completion_mask
        for j, row in enumerate(rows):
            texts[row], completions[row], domains[row] = r.prompts[j], r.completions[j], r.domains[j]
            prompt_index[row] = r.prompt_index[j] if r.prompt_index else row
    return Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, texts, completions, domains, prompt_index)


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """Prompt indices of a step: consecutive slices of per-epoch permutations, a pure function of
    ``(seed, step)`` so that a resumed run draws exactly the prompts it would have drawn."""
    start, out = step * batch_size, []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.extend(perm[offset : offset + batch_size - len(out)].tolist())
    return out
