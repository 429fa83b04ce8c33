"""Stage 1: the student samples completions for a batch of prompts → :class:`Rollout`.

Prompts are tokenised once (:class:`Prompts`) and left-padded per batch. Sampling is a plain
key-value-cached decoding loop over ``model(input_ids, attention_mask, position_ids, cache=DynamicCache)``
(transformers' current cache API; ``past_key_values`` on releases before it) so it works for any causal LM
(and for :mod:`gopd_lab.lm.exact`'s tabular policies, which have no cache). Random numbers are drawn on the
model's device and the loop copies nothing to the host per token on an accelerator.
Tokens are drawn by the exponential race (``argmax p / E``, ``E ~ Exp(1)``), exact for categorical
sampling; ``E = −log U`` from a float32 uniform, which on CPU is about 4× cheaper than both
``Tensor.exponential_`` and ``torch.multinomial`` over a 150k vocabulary (``bench/step.py``).
"""

from __future__ import annotations

import inspect
import json
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from gopd_lab.config import ConfigError
from gopd_lab.errors import DataError
from gopd_lab.lm.models import DEFAULT_DOMAIN
from gopd_lab.runio import read_jsonl


@dataclass
class Prompts:
    """Tokenised prompts: ``ids[i]`` are the token ids of ``texts[i]``; ``domains[i]`` routes its teacher."""

    ids: list[list[int]]
    texts: list[str]
    domains: list[str]
    answers: list[str] | None = None
    """Reference completions (from a task), used by SFT and by verifiers."""

    def __post_init__(self) -> None:
        if not self.ids:
            raise ConfigError("the prompt set is empty; give at least one prompt")
        if not (len(self.ids) == len(self.texts) == len(self.domains)):
            raise ValueError("ids, texts and domains must have the same length")
        if self.answers is not None and len(self.answers) != len(self.ids):
            raise ValueError("answers must have one entry per prompt")

    def __len__(self) -> int:
        return len(self.ids)

    def select(self, index: Sequence[int]) -> Prompts:
        def pick(xs):
            return [xs[i] for i in index]

        return Prompts(
            pick(self.ids), pick(self.texts), pick(self.domains), None if self.answers is None else pick(self.answers)
        )


def read_prompt_rows(path: str | Path, required: tuple[str, ...] = ("prompt",)) -> list[dict]:
    """Rows of a JSONL prompt file, each checked for the ``required`` fields; one clear error otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"prompt file {path} does not exist")
    try:
        rows = read_jsonl(path, strict=True, numbered=True)
    except ValueError as err:
        raise DataError(str(err)) from None
    for n, row in rows:
        missing = [k for k in required if k not in row]
        if missing:
            raise DataError(
                f"{path}:{n} has no {missing} field; each line must be a JSON object with "
                f"{list(required)} (and optionally 'domain')"
            )
        wrong = [k for k in (*required, "domain") if k in row and not isinstance(row[k], str)]
        if wrong:  # {"prompt": null} would otherwise train on the text "None"
            raise DataError(f"{path}:{n}: field {wrong[0]!r} must be a string, got {json.dumps(row[wrong[0]])}")
    return [row for _, row in rows]


def check_known_text(tokenizer, texts: Sequence[str], ids: Sequence[Sequence[int]], what: str = "prompt") -> None:
    """Refuse text whose characters the tokenizer drops or maps to its unknown token (they would be lost without
    a word): the error names the row and the characters."""
    unk = getattr(tokenizer, "unk_token_id", None)
    for i, (text, row) in enumerate(zip(texts, ids)):
        decoded = unicodedata.normalize("NFKC", tokenizer.decode(row))  # as a tokenizer's normaliser may
        lost = sorted(c for c in set(unicodedata.normalize("NFKC", text)) - set(decoded) if not c.isspace())
        if unk is not None and unk in row and str(tokenizer.unk_token) not in text:
            lost = lost or sorted({c for c in text if unk in tokenizer(c, add_special_tokens=False)["input_ids"]})
        if lost:
            raise DataError(
                f"{what} {i} ({text[:60]!r}) holds characters the tokenizer does not know ({lost}): they would be "
                f"dropped or become {tokenizer.unk_token}. Replace them (the embedded character tokenizer knows "
                "printable ASCII only)"
            )


def read_prompt_file(path: str | Path) -> tuple[list[str], list[str]]:
    """Read ``(texts, domains)`` from a JSONL file with a ``prompt`` field and an optional ``domain``."""
    rows = read_prompt_rows(path)
    return [str(r["prompt"]) for r in rows], [str(r.get("domain", DEFAULT_DOMAIN)) for r in rows]


def encode_prompts(
    tokenizer, texts: Sequence[str], domains: Sequence[str] | None = None, *, chat_template: bool = False
) -> Prompts:
    """Tokenise prompts once (optionally through the tokenizer's chat template)."""
    if not texts:
        raise ConfigError("the prompt set is empty; give at least one prompt")
    ids = [
        chat_prompt_ids(tokenizer, t) if chat_template else tokenizer(t, add_special_tokens=True)["input_ids"]
        for t in texts
    ]
    if any(len(x) == 0 for x in ids):
        raise ConfigError("a prompt encodes to zero tokens; remove empty prompts")
    check_known_text(tokenizer, texts, ids)
    return Prompts(ids, list(texts), list(domains) if domains is not None else [DEFAULT_DOMAIN] * len(texts))


def chat_prompt_ids(tokenizer, text: str) -> list[int]:
    """The token ids of ``text`` as one user turn of the tokenizer's chat template, ending with the assistant's
    generation prompt. ``return_dict=True`` gives the same ``{"input_ids": ...}`` mapping on every transformers
    release (5.x returns a mapping from ``tokenize=True`` alone, where 4.x returned the list of ids)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError(
            f"chat_template=True, but the tokenizer {type(tokenizer).__name__} has no chat template; set "
            "chat_template=False (a base model) or use the instruct model's tokenizer"
        )
    encoded = tokenizer.apply_chat_template(
        [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True, return_dict=True
    )
    ids = encoded["input_ids"]
    if ids and isinstance(ids[0], list):  # a batch of one conversation
        ids = ids[0]
    return [int(i) for i in ids]


def prompts_from_tasks(
    tasks: dict, tokenizer, *, split: str = "train", chat_template: bool = False, limit: int = 0
) -> Prompts:
    """All prompts of the tasks' ``split`` (``train`` or ``test``) with their domains and answers,
    interleaved across domains so that any prefix mixes them (``limit`` > 0 keeps that many per task)."""
    per_task = []
    for task in tasks.values():
        examples = list(getattr(task, split))
        per_task.append(examples[:limit] if limit else examples)
    if not any(per_task):
        raise ConfigError(f"the tasks {sorted(tasks)} have no {split} examples")
    ordered = [ex for row in _interleave(per_task) for ex in row]
    prompts = encode_prompts(
        tokenizer, [e.prompt for e in ordered], [e.domain for e in ordered], chat_template=chat_template
    )
    prompts.answers = [e.answer for e in ordered]
    return prompts


def _interleave(lists: list[list]) -> list[list]:
    longest = max(len(x) for x in lists)
    return [[x[i] for x in lists if i < len(x)] for i in range(longest)]


def teacher_forced(
    prompts: Prompts,
    tokenizer,
    completions: Sequence[str] | None = None,
    *,
    pad_token_id: int = 0,
    eos_token_id: int | None = None,
    device: torch.device | str = "cpu",
) -> Rollout:
    """A :class:`Rollout` whose completions are given texts (default: the prompts' answers) followed by
    EOS: the input of SFT and of scoring fixed completions."""
    completions = list(completions if completions is not None else (prompts.answers or []))
    if len(completions) != len(prompts):
        raise ConfigError("teacher_forced needs one completion per prompt (the prompts carry no answers)")
    rows = [
        tokenizer(c, add_special_tokens=False)["input_ids"] + ([eos_token_id] if eos_token_id is not None else [])
        for c in completions
    ]
    width = max(1, max(len(r) for r in rows))
    comp = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    cmask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        comp[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
        cmask[i, : len(r)] = 1
    prompt_ids, prompt_mask = left_pad(prompts.ids, pad_token_id, device)
    return Rollout(
        prompt_ids,
        prompt_mask,
        comp.to(device),
        cmask.to(device),
        list(prompts.texts),
        list(completions),
        list(prompts.domains),
    )


def load_prompts(source: str | Sequence[str], tokenizer, *, chat_template: bool = False) -> Prompts:
    """Prompts from a JSONL path or a list of strings."""
    if isinstance(source, (str, Path)):
        if not str(source):
            raise ConfigError("prompts is empty: give a JSONL file with a 'prompt' field or a list of strings")
        texts, domains = read_prompt_file(source)
    else:
        texts, domains = list(source), None
    return encode_prompts(tokenizer, texts, domains, chat_template=chat_template)


@dataclass
class Rollout:
    """Student samples. The model input is ``cat([prompt_ids, completion_ids], 1)`` with
    ``cat([prompt_mask, completion_mask], 1)`` as attention mask.

    ``prompt_ids`` ``(B, P)`` are left-padded; ``completion_ids`` ``(B, C)`` are right-padded, and
    ``completion_mask`` is 1 on generated tokens up to and including the first EOS.
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    completion_ids: Tensor
    completion_mask: Tensor
    prompts: list[str]
    completions: list[str]
    domains: list[str]
    prompt_index: list[int] = field(default_factory=list)

    @property
    def input_ids(self) -> Tensor:
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)  # (B, P + C)

    @property
    def attention_mask(self) -> Tensor:
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)  # (B, P + C)

    @property
    def num_tokens(self) -> int:
        return int(self.completion_mask.sum())

    def __len__(self) -> int:
        return self.prompt_ids.shape[0]

    def select(self, rows: Sequence[int] | Tensor) -> Rollout:
        rows_t = torch.as_tensor(rows, dtype=torch.long, device=self.prompt_ids.device)

        def pick(xs):
            return [xs[int(i)] for i in rows_t]

        return Rollout(
            self.prompt_ids[rows_t],
            self.prompt_mask[rows_t],
            self.completion_ids[rows_t],
            self.completion_mask[rows_t],
            pick(self.prompts),
            pick(self.completions),
            pick(self.domains),
            pick(self.prompt_index) if self.prompt_index else [],
        )


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """Left-pad token lists → ``(ids, mask)`` each ``(B, max_len)``."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s) :] = torch.as_tensor(list(s), dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)


def position_ids_from_mask(mask: Tensor) -> Tensor:
    """Positions that skip left padding: ``cumsum(mask) - 1`` clamped at 0 (as ``generate`` does)."""
    return (mask.long().cumsum(-1) - 1).clamp(min=0)


SEED_BOUND = 2**63
"""Seeds handed to ``torch.Generator.manual_seed`` (and to vLLM's per-request seeds) lie in ``[0, 2**63)``."""

_MASK64 = 2**64 - 1


def mix_seed(*parts: int) -> int:
    """One seed in ``[0, 2**63)`` from any integers (a run seed, a step, a row, a token position): SplitMix64's
    finaliser over each part in turn, so nearby inputs give unrelated seeds and no input overflows
    ``manual_seed`` (which refuses integers outside 64 bits)."""
    h = 0x9E3779B97F4A7C15
    for part in parts:
        part = int(part)
        words = [part & _MASK64] + [(abs(part) >> shift) & _MASK64 for shift in range(64, abs(part).bit_length(), 64)]
        for word in words:  # a part wider than 64 bits is folded in word by word
            h = ((h ^ word) + 0x9E3779B97F4A7C15) & _MASK64
            h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
            h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK64
            h ^= h >> 31
    return h >> 1


def sample_next(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    row_seeds: Sequence[int] | None = None,
) -> Tensor:
    """Draw one token per row from ``softmax(logits / temperature)`` restricted to the top-p nucleus.

    Uses the exponential race ``argmax(p_i / E_i)`` with ``E_i ~ Exp(1)``, which samples exactly from
    ``p`` without ``torch.multinomial``'s cumulative sums. With ``row_seeds`` each row's noise comes from
    its own seed, so a row's sample does not depend on which other rows share its batch.
    """
    logits = logits.float() / temperature  # (B, V)
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(-1) - probs > top_p  # keep the smallest prefix with mass >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    if row_seeds is None:
        uniform = torch.rand(probs.shape, dtype=probs.dtype, device=probs.device, generator=generator)
    else:
        uniform = torch.stack(
            [
                torch.rand(
                    probs.shape[1],
                    dtype=probs.dtype,
                    device=probs.device,
                    generator=torch.Generator(device=probs.device).manual_seed(int(seed) % SEED_BOUND),
                )
                for seed in row_seeds
            ]
        )  # drawn on the device (CPU streams are those of the earlier CPU-side draws)
    noise = uniform.log_().neg_()  # E = −log U ~ Exp(1); U = 0 gives E = inf, which only removes that token's draw
    return (probs / noise).argmax(dim=-1)  # (B,)


@torch.no_grad()
def sample(
    model: nn.Module,
    prompts: Prompts,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int = 0,
    tokenizer=None,
    generator: torch.Generator | None = None,
    greedy: bool = False,
    max_context: int | None = None,
    row_seeds: Sequence[int] | None = None,
) -> Rollout:
    """Sample one completion per prompt from ``model`` (``greedy=True`` takes the argmax instead); a row ends at
    the first of its ``eos_token_id`` (one id or several, e.g. :attr:`~gopd_lab.lm.models.Models.stop_token_ids`).

    ``row_seeds`` (one int per prompt) make each row's draws a function of its own seed only (used for
    data-parallel runs, whose samples then do not depend on the number of processes)."""
    device = next(model.parameters()).device
    prompt_ids, prompt_mask = left_pad(prompts.ids, pad_token_id, device)
    if max_context is not None and prompt_ids.shape[1] + max_new_tokens > max_context:
        raise ConfigError(
            f"the longest prompt ({prompt_ids.shape[1]} tokens) plus max_new_tokens={max_new_tokens} exceeds the "
            f"model's context of {max_context} tokens; shorten the prompts or lower max_new_tokens"
        )
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():  # lighter than no_grad; the results are cloned out below for autograd's use
            completion_ids, completion_mask = _decode(
                model,
                prompt_ids,
                prompt_mask,
                max_new_tokens,
                temperature,
                top_p,
                eos_token_id,
                pad_token_id,
                generator,
                greedy,
                row_seeds,
            )
    finally:
        if was_training:
            model.train()
    completion_ids, completion_mask = completion_ids.clone(), completion_mask.clone()  # (B, C) each
    return Rollout(
        prompt_ids,
        prompt_mask,
        completion_ids,
        completion_mask,
        list(prompts.texts),
        decode_completions(tokenizer, completion_ids, completion_mask),
        list(prompts.domains),
    )


def stop_ids(eos_token_id: int | Sequence[int] | None) -> list[int]:
    """The ids a completion ends at, as a list: ``eos_token_id`` may be one id, several, or None (none)."""
    if eos_token_id is None:
        return []
    if isinstance(eos_token_id, int) or (isinstance(eos_token_id, Tensor) and eos_token_id.ndim == 0):
        return [int(eos_token_id)]
    return [int(t) for t in eos_token_id]


SYNC_EVERY = {"cpu": 1}
"""Tokens between two checks of "has every row finished?" (a device-to-host copy) per device type; 16 elsewhere.
On CPU the check is free, so the loop stops at exactly the token where the last row ends."""


def cache_argument(model: nn.Module) -> str | None:
    """The keyword under which ``model.forward`` takes its key-value cache: ``cache`` (transformers ≥ 5.x),
    ``past_key_values`` (older releases), or None (a model without a cache, e.g. the tabular policies)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft: the wrapped model's
    params = inspect.signature(base.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def new_cache(model: nn.Module):
    """An empty ``transformers.DynamicCache`` for ``model`` (the decode loop's key-value cache)."""
    from transformers import DynamicCache

    config = getattr(model, "config", None)
    try:
        return DynamicCache(config=config)
    except TypeError:  # releases whose DynamicCache takes no config
        return DynamicCache()


def _decode(
    model,
    prompt_ids,
    prompt_mask,
    max_new_tokens,
    temperature,
    top_p,
    eos_token_id,
    pad_token_id,
    generator,
    greedy,
    row_seeds,
) -> tuple[Tensor, Tensor]:
    """The key-value-cached loop of :func:`sample` → ``(completion_ids, completion_mask)``, each ``(B, C)``.

    Tokens and the attention mask are written into preallocated tensors; the only device-to-host copy is the
    "every row finished" check, made every :data:`SYNC_EVERY` tokens (each token on CPU). Columns after the
    last row's EOS are trimmed, so the result does not depend on how often the check ran."""
    device = prompt_ids.device
    batch, prompt_len = prompt_ids.shape
    tokens = torch.full((batch, max_new_tokens), pad_token_id, dtype=torch.long, device=device)
    mask = torch.zeros((batch, prompt_len + max_new_tokens), dtype=torch.long, device=device)
    mask[:, :prompt_len] = prompt_mask
    count = prompt_mask.long().sum(1)  # (B,) valid tokens so far: the next token's position
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    key = cache_argument(model)
    cache = new_cache(model) if key is not None else None
    step_input, step_pos = prompt_ids, position_ids_from_mask(prompt_mask)
    stops = torch.tensor(stop_ids(eos_token_id), dtype=torch.long, device=device)
    eos_token_id = eos_token_id if len(stops) else None
    every = SYNC_EVERY.get(device.type, 16)
    steps = 0
    for t in range(max_new_tokens):
        kwargs = {key: cache} if key is not None else {}
        out = model(
            input_ids=step_input,
            attention_mask=mask[:, : prompt_len + t],
            position_ids=step_pos,
            use_cache=key is not None,
            logits_to_keep=1,
            **kwargs,
        )
        logits = out.logits[:, -1, :]  # (B, V)
        if greedy:
            token = logits.argmax(-1)
        else:
            seeds = None if row_seeds is None else [mix_seed(s, t) for s in row_seeds]
            token = sample_next(logits, temperature=temperature, top_p=top_p, generator=generator, row_seeds=seeds)
        token = torch.where(done, torch.full_like(token, pad_token_id), token)  # (B,)
        alive = (~done).long()
        tokens[:, t] = token
        mask[:, prompt_len + t] = alive
        count += alive
        steps = t + 1
        if eos_token_id is not None:
            done = done | torch.isin(token, stops)
            if steps % every == 0 and bool(done.all()):
                break
        if key is not None:
            cache = getattr(out, key, None) or cache
            step_input, step_pos = token[:, None], (count - 1).clamp(min=0)[:, None]
        else:  # no cache: the whole sequence again
            step_input = torch.cat([prompt_ids, tokens[:, :steps]], dim=1)
            step_pos = position_ids_from_mask(mask[:, : prompt_len + steps])
    completion_mask = mask[:, prompt_len : prompt_len + steps]
    if every > 1 and eos_token_id is not None:  # drop the columns after every row had finished
        alive_cols = completion_mask.any(0).nonzero()
        steps = int(alive_cols.max()) + 1 if alive_cols.numel() else 1
        completion_mask = completion_mask[:, :steps]
    return tokens[:, :steps], completion_mask


def decode_completions(tokenizer, completion_ids: Tensor, completion_mask: Tensor) -> list[str]:
    """Completion texts without special tokens (token ids joined by spaces when there is no tokenizer)."""
    rows = [ids[m.bool()].tolist() for ids, m in zip(completion_ids.cpu(), completion_mask.cpu())]
    if tokenizer is None:
        return [" ".join(map(str, r)) for r in rows]
    return tokenizer.batch_decode(rows, skip_special_tokens=True)


def token_strings(tokenizer, ids: Sequence[int]) -> list[str]:
    """Readable text of each token (special tokens by name) for per-token views."""
    if tokenizer is None:
        return [str(i) for i in ids]
    return [tokenizer.decode([i], skip_special_tokens=False) for i in ids]
