"""Tokenizer agreement by shared ids, and output layers that are wider or narrower than the tokenizer.

On-policy distillation scores the student's own token ids under the teacher, so every id both tokenizers
know must mean the same token. A teacher whose vocabulary *extends* the student's (Qwen3 over Qwen2.5 adds
``<think>``-style tokens) agrees on every shared id and is accepted; a teacher where a shared id means another
token (or a token has another id) is refused, naming the first conflict.

When the vocabularies or the output widths differ, every model's logits are brought onto the student's output
width ``W`` and one set of *allowed* ids: those in the student's tokenizer, in every teacher's / reference's
tokenizer and below every output width. Ids on one side only and the rows an output layer is padded with beyond
its tokenizer (151,936 vs 152,064 between Qwen2.5 sizes; Qwen3's 151,936 rows over ~151,669 tokens, even with
a teacher of the same tokenizer and width) get the logit :data:`MASKED_LOGIT`:
the student never samples them, and each distribution (teacher, reference, target, student) is renormalised
over the allowed ids, so every estimator compares distributions of the same support and width. Models whose
tokenizers and widths agree exactly, with no padded row, are left untouched.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

MASKED_LOGIT = -1e4
"""The logit of a token the student may not emit: ``exp`` of it is exactly 0 in float32, and unlike ``-inf`` it
keeps ``p · log p`` and ``log p − log q`` finite (0 and a number) at those tokens."""


SPECIAL_TOKEN_ATTRS = ("bos_token", "eos_token", "pad_token", "unk_token")
"""The special tokens two tokenizers must agree on (a missing ``pad_token`` on one side is allowed)."""


def vocab_hash(tokenizer) -> str:
    """sha256 of the tokenizer's vocabulary (token → id), the same on every machine."""
    items = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(items, ensure_ascii=False).encode()).hexdigest()


def tokenizer_info(tokenizer) -> dict:
    """What a teacher server says of its tokenizer (``GET /info``): the vocabulary's hash and size, the special
    tokens; :func:`~gopd_lab.lm.models.check_tokenizers` compares it with the student's."""
    return {
        "vocab_hash": vocab_hash(tokenizer),
        "size": len(tokenizer),
        "special_tokens": {a: getattr(tokenizer, a) for a in SPECIAL_TOKEN_ATTRS},
    }


class VocabConflict(ValueError):
    """Two tokenizers that give a shared id (or a shared token) different meanings."""


@dataclass
class Agreement:
    """How another model's tokenizer relates to the student's (no shared id conflicts)."""

    student_only: list[int] = field(default_factory=list)
    """Ids the student's tokenizer has and the other lacks."""
    other_only: list[int] = field(default_factory=list)
    """Ids the other tokenizer has and the student's lacks."""

    @property
    def identical(self) -> bool:
        return not self.student_only and not self.other_only


def compare_vocabularies(student_vocab: dict[str, int], other_vocab: dict[str, int], other: str) -> Agreement:
    """The ids on each side only; raises :class:`VocabConflict` naming the first (lowest id) shared id or token
    whose meaning differs."""
    if student_vocab == other_vocab:
        return Agreement()
    by_id_s = {i: t for t, i in student_vocab.items()}
    by_id_o = {i: t for t, i in other_vocab.items()}
    conflicts = []
    for i in by_id_s.keys() & by_id_o.keys():
        if by_id_s[i] != by_id_o[i]:
            conflicts.append((i, f"id {i} is {by_id_s[i]!r} for the student but {by_id_o[i]!r} for {other}"))
    for t in student_vocab.keys() & other_vocab.keys():
        if student_vocab[t] != other_vocab[t]:
            i = min(student_vocab[t], other_vocab[t])
            conflicts.append(
                (i, f"token {t!r} has id {student_vocab[t]} for the student but {other_vocab[t]} for {other}")
            )
    if conflicts:
        conflicts.sort()
        raise VocabConflict(f"{conflicts[0][1]} (first of {len(conflicts)} conflicts)")
    return Agreement(sorted(by_id_s.keys() - by_id_o.keys()), sorted(by_id_o.keys() - by_id_s.keys()))


def output_width(model: nn.Module) -> int | None:
    """Rows of the model's output layer (None when it has no plain one)."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if get_head is not None else None
    weight = getattr(head, "weight", None)
    return int(weight.shape[0]) if weight is not None else None


@dataclass
class VocabAlignment:
    """The student's output width and the ``(W,)`` bool mask of ids every model may use (see the module doc)."""

    width: int
    allowed: torch.Tensor

    def align(self, logits: torch.Tensor) -> torch.Tensor:
        """``(..., V)`` logits of any model → ``(..., W)`` on the student's ids, disallowed ids masked."""
        v = logits.shape[-1]
        if v > self.width:
            logits = logits[..., : self.width]
        elif v < self.width:
            logits = F.pad(logits, (0, self.width - v), value=MASKED_LOGIT)
        return logits.masked_fill(~self.allowed.to(logits.device), MASKED_LOGIT)


def align_vocabularies(
    student: nn.Module, student_vocab: dict[str, int], others: dict[str, tuple[nn.Module, Agreement]]
) -> VocabAlignment | None:
    """Build the alignment of ``others`` (``{name: (model, agreement)}``, teachers and references) with the
    student and install it as forward hooks on every output layer; None (nothing installed) when all agree and the
    student's output layer has no row beyond its tokenizer (padded rows are masked even with no other model)."""
    width = output_width(student)
    if width is None:
        return None
    widths = {name: output_width(model) for name, (model, _) in others.items()}
    allowed = torch.zeros(width, dtype=torch.bool)
    ids = torch.as_tensor([i for i in student_vocab.values() if i < width], dtype=torch.long)
    allowed[ids] = True
    padded = width - int(allowed.sum())  # rows beyond the tokenizer (Qwen3: 151,936 rows, ~151,669 tokens)
    agree = all(agr.identical for _, agr in others.values()) and all(w in (None, width) for w in widths.values())
    if agree and not padded:
        return None
    for name, (_, agr) in others.items():
        if agr.student_only:
            allowed[torch.as_tensor([i for i in agr.student_only if i < width], dtype=torch.long)] = False
        if widths[name] is not None and widths[name] < width:
            allowed[widths[name] :] = False
        log.warning(
            "%s: %d ids only in its tokenizer (first %s) are dropped from its distributions; %d ids only in the "
            "student's (first %s) are never sampled; output width %s vs the student's %d",
            name,
            len(agr.other_only),
            agr.other_only[:5],
            len(agr.student_only),
            agr.student_only[:5],
            widths[name],
            width,
        )
    if padded:
        log.warning("the student's output layer has %d rows beyond its tokenizer: never sampled", padded)
    alignment = VocabAlignment(width, allowed.to(next(student.parameters()).device))
    _install(student, others, alignment)
    return alignment


def _install(student: nn.Module, others: dict[str, tuple[nn.Module, Agreement]], alignment: VocabAlignment) -> None:
    heads = {id(student.get_output_embeddings()): student.get_output_embeddings()}
    for model, _ in others.values():
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if head is not None:
            heads.setdefault(id(head), head)
    for head in heads.values():
        if getattr(head, "gopd_aligned", False):
            continue  # installed already (a model shared across domains)
        head.register_forward_hook(lambda _m, _i, out: alignment.align(out))
        head.gopd_aligned = True
        if head.weight.shape[0] == alignment.width:  # the fused log-prob paths of lm/logprobs.py read the mask here
            head.gopd_allowed = alignment.allowed
