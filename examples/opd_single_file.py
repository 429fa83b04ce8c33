"""G-OPD in one file: on-policy distillation with reward scale λ, written out with torch and transformers only.

The file to read end to end and to fork (CleanRL style: every knob in one ``Args`` dataclass, the loop in
``main``). Each step:

1. the student samples one completion per prompt (a KV-cached loop; the exponential race draws each token);
2. the teacher, and the reference where λ ≠ 1 (the student's initial weights), score the sampled tokens;
3. the per-token advantage ``A_t = λ·(log π_T − log π_R) − (log π_θ − log π_R)`` (detached; at λ = 1 it is
   ``log π_T − log π_θ``, OPD's negative reverse KL per token);
4. the policy-gradient loss ``−Σ_t ρ_t·A_t / Σ_t m_t`` with ``ρ_t = exp(log π_θ − log π_θ.detach())`` (= 1: its
   gradient is ``A_t·∇ log π_θ``), clipped gradients, one AdamW step.

On the embedded zoo it gives gopd_lab's numbers (``tests/test_single_file.py``: same seed, same loss and metrics to
float tolerance for a few steps, ``RunConfig(method="gopd", estimator="sampled", gamma=0, lam=...)``)::

    python examples/opd_single_file.py --student data/zoo/v2/student-base --teacher data/zoo/v2/teacher-add \\
        --prompts data/arith/v2/add_train.jsonl --lam 1.25 --steps 20
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import inspect
import json
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


@dataclass
class Args:
    student: str = "data/zoo/v2/student-base"
    """The student's checkpoint directory (or hub id)."""
    teacher: str = "data/zoo/v2/teacher-add"
    """The teacher's checkpoint directory (same tokenizer as the student)."""
    prompts: str = "data/arith/v2/add_train.jsonl"
    """A JSONL file with a ``prompt`` field per line."""
    lam: float = 1.0
    """Reward scale λ: 1 = OPD, > 1 ExOPD. The reference (the student's initial weights) runs only when λ ≠ 1."""
    steps: int = 3
    """Training steps, one batch of rollouts each."""
    batch_size: int = 4
    """Prompts per step."""
    max_new_tokens: int = 6
    """Longest completion (sampling stops at EOS)."""
    lr: float = 1e-4
    """AdamW's learning rate (constant)."""
    max_grad_norm: float = 1.0
    """Gradient-norm clip."""
    seed: int = 0
    """Seed of the prompt order and of sampling."""


def batch_indices(n: int, batch_size: int, step: int, seed: int) -> list[int]:
    """The step's prompts: consecutive slices of per-epoch permutations, a pure function of (seed, step)."""
    start, out = step * batch_size, []
    while len(out) < batch_size:
        epoch, offset = divmod(start + len(out), n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.extend(perm[offset : offset + batch_size - len(out)].tolist())
    return out


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, P)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, P)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r)
        mask[i, width - len(r) :] = 1
    return ids, mask


def positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T) positions that skip the left padding


@torch.no_grad()
def sample(model, prompt_ids, prompt_mask, max_new_tokens: int, stop_ids: list[int], pad_id: int, gen):
    """One completion per prompt at temperature 1 → ``(completion_ids, completion_mask)``, each ``(B, C)``; the
    mask is 1 on the tokens up to and including the first stop token."""
    from transformers import DynamicCache

    model.eval()
    batch, prompt_len = prompt_ids.shape
    tokens = torch.full((batch, max_new_tokens), pad_id, dtype=torch.long)  # (B, C)
    mask = torch.cat([prompt_mask, torch.zeros((batch, max_new_tokens), dtype=torch.long)], 1)  # (B, P + C)
    count = prompt_mask.sum(1)  # (B,) the next token's position
    done = torch.zeros(batch, dtype=torch.bool)  # (B,)
    stops = torch.tensor(stop_ids)
    cache, step_input, step_pos = DynamicCache(config=model.config), prompt_ids, positions(prompt_mask)
    # the cache keyword: `cache` in current transformers, `past_key_values` before it (5.17 still takes that one)
    key = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    steps = 0
    for t in range(max_new_tokens):
        out = model(
            input_ids=step_input,
            attention_mask=mask[:, : prompt_len + t],
            position_ids=step_pos,
            use_cache=True,
            logits_to_keep=1,
            **{key: cache},
        )
        probs = torch.softmax(out.logits[:, -1, :].float(), dim=-1)  # (B, V)
        noise = torch.rand(probs.shape, generator=gen).log_().neg_()  # (B, V) Exp(1): argmax(p / E) ~ p
        token = torch.where(done, pad_id, (probs / noise).argmax(-1))  # (B,)
        alive = (~done).long()  # (B,)
        tokens[:, t], mask[:, prompt_len + t] = token, alive
        count, steps = count + alive, t + 1
        done = done | torch.isin(token, stops)
        if bool(done.all()):
            break
        cache = getattr(out, key, None) or cache  # the output field is named like the argument
        step_input, step_pos = token[:, None], (count - 1).clamp(min=0)[:, None]  # (B, 1) each
    model.train()
    return tokens[:, :steps], mask[:, prompt_len : prompt_len + steps]


def token_logprobs(model, input_ids, attention_mask, prompt_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log π(y_t | s_t), H(π(·|s_t)))`` of every completion token, each ``(B, C)``, in float32."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions(attention_mask)).logits
    logp = torch.log_softmax(logits[:, prompt_len - 1 : -1].float(), dim=-1)  # (B, C, V) position t predicts y_t
    lp = logp.gather(-1, input_ids[:, prompt_len:, None]).squeeze(-1)  # (B, C)
    entropy = -(logp.exp() * logp).sum(-1)  # (B, C)
    return lp, entropy


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def main(args: Args) -> list[dict]:
    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.student)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    student = AutoModelForCausalLM.from_pretrained(args.student, dtype=torch.float32)
    teacher = AutoModelForCausalLM.from_pretrained(args.teacher, dtype=torch.float32).eval().requires_grad_(False)
    reference = copy.deepcopy(student).eval().requires_grad_(False) if args.lam != 1 else None  # π_R = initial π_θ
    stop_ids = [tokenizer.eos_token_id]
    extra = student.generation_config.eos_token_id
    stop_ids += [t for t in ([extra] if isinstance(extra, int) else extra or []) if t not in stop_ids]
    with open(args.prompts) as f:
        prompts = [tokenizer(json.loads(line)["prompt"])["input_ids"] for line in f if line.strip()]
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0, fused=True)
    gen = torch.Generator().manual_seed(args.seed)  # the sampling stream
    history = []
    for step in range(args.steps):
        # 1. rollout: the student samples
        prompt_ids, prompt_mask = left_pad(
            [prompts[i] for i in batch_indices(len(prompts), args.batch_size, step, args.seed)], pad_id
        )
        completion_ids, mask = sample(student, prompt_ids, prompt_mask, args.max_new_tokens, stop_ids, pad_id, gen)
        input_ids = torch.cat([prompt_ids, completion_ids], 1)  # (B, P + C)
        attention_mask = torch.cat([prompt_mask, mask], 1)  # (B, P + C)
        P, m = prompt_ids.shape[1], mask.float()  # m: (B, C)
        # 2. score: the teacher (and the reference where λ ≠ 1) on the sampled tokens
        with torch.inference_mode():
            lp_teacher, _ = token_logprobs(teacher, input_ids, attention_mask, P)  # (B, C)
            lp_reference = token_logprobs(reference, input_ids, attention_mask, P)[0] if reference is not None else None
        lp_teacher = lp_teacher.clone()
        lp_reference = lp_reference.clone() if lp_reference is not None else None
        # 3. the student's forward: log-probs with gradient, and the detached advantage
        student.train()
        lp_student, entropy = token_logprobs(student, input_ids, attention_mask, P)  # (B, C)
        lp_old = lp_student.detach()  # strictly on-policy: the rollout policy is the current one
        if lp_reference is None:  # λ = 1: A_t = log π_T − log π_θ (the reference cancels)
            advantages = (lp_teacher - lp_old) * m  # (B, C)
        else:
            advantages = (args.lam * (lp_teacher - lp_reference) - (lp_old - lp_reference)) * m  # (B, C)
        # 4. the policy-gradient loss and the step
        ratio = torch.exp(lp_student - lp_old)  # (B, C), = 1
        pg_obj = ratio * advantages  # (B, C)
        loss = -masked_mean(pg_obj, m)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
        optimizer.step()
        with torch.no_grad():  # diagnostics under the metric names of docs/metrics.md
            row = {
                "step": step + 1,
                "loss": float(loss),
                "adv_mean": float(masked_mean(advantages, m)),
                "lp_student_mean": float(masked_mean(lp_old, m)),
                "lp_teacher_mean": float(masked_mean(lp_teacher, m)),
                "reverse_kl": float(masked_mean(lp_old - lp_teacher, m)),
                "entropy": float(masked_mean(entropy, m)),
                "grad_norm": float(grad_norm),
                "tokens": int(m.sum()),
            }
        history.append(row)
        print(json.dumps(row))
    return history


def parse_args(argv: list[str] | None = None) -> Args:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for f in dataclasses.fields(Args):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default)
    return Args(**vars(parser.parse_args(argv)))


if __name__ == "__main__":
    main(parse_args())
