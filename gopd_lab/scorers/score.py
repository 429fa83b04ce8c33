"""Stage 2 wiring: route each sample to its domain's teacher and reference and compute exactly what
the estimator needs → :class:`Scored`.

Rows that share a (teacher, reference) pair are scored in one pass; each model runs its decoder once
and its LM head chunk by chunk over the valid completion positions. With λ = 1 the reference is never
run. For ``full`` the per-state target ``normalise(π_R^(1−λ)·π_T^λ)`` is formed chunk by chunk; for
``topk`` only the teacher's top-k ids and the two models' log-probs on them are kept.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from gopd_lab.config import lam_for
from gopd_lab.lm.logprobs import (
    Positions,
    _vocab_size,
    chunk_rows,
    completion_features,
    scoring_view,
    token_logprobs,
)
from gopd_lab.lm.models import Models
from gopd_lab.lm.rollout import Rollout
from gopd_lab.objectives import (
    MIXED_TARGET,
    TEACHER_DISTRIBUTION,
    TEACHER_TOPK,
    entropy_from_logp,
    get_estimator,
    target_logprobs,
)
from gopd_lab.scorers.lazy_target import GroupedTarget, LazyTarget
from gopd_lab.scorers.scorer import is_scorer, score_pair

LAZY_TARGET_BYTES = 64 * 2**20
"""The ``full`` and ``jsd`` estimators' target is kept lazy (:class:`LazyTarget`, or :class:`GroupedTarget` when
the batch's rows go to several teacher/reference pairs, e.g. λ = 1 on one domain and λ ≠ 1 on another) when the
dense ``(N, V)`` float32 target would be larger than this; a smaller one is formed once during scoring, which
saves the second pass of the teacher's (and reference's) LM head that the lazy target costs in the update."""


@dataclass
class Scored:
    """A rollout with the teacher's (and reference's) view of every sampled token.

    Per-token tensors are ``(B, C)`` float32 with 0 where ``rollout.completion_mask`` is 0. Per-state
    tensors are ``(N, ·)`` over the valid completion positions in :class:`~gopd_lab.lm.logprobs.Positions`
    order (row-major), present only when the estimator needs them.
    """

    rollout: Rollout
    lam: Tensor
    """``(B,)`` λ of each sample (its domain's)."""
    lp_teacher: Tensor | None = None
    teacher_rank: Tensor | None = None
    """``(B, C)`` rank of the sampled token under the teacher (0 = its top choice)."""
    lp_reference: Tensor | None = None
    rewards: Tensor | None = None
    """``(B,)`` verifier rewards (GRPO) or None."""
    expert: Rollout | None = None
    """Teacher-forced expert batch for the μ-weighted SFT term (CHORD, OPD + expert data)."""
    extra: dict = field(default_factory=dict)
    """Metrics of the scoring stage (e.g. SDPO's ``sdpo_feedback_frac``)."""
    target: Tensor | None = None
    """``full``: ``(N, V)`` log-target; ``jsd``: ``(N, V)`` teacher log-probs."""
    topk_index: Tensor | None = None
    lp_teacher_topk: Tensor | None = None
    lp_reference_topk: Tensor | None = None
    teacher_entropy: Tensor | None = None
    """``lam_mode='entropy'``: ``(B, C)`` entropy (nats) of the teacher's next-token distribution at each state."""
    fkl_index: Tensor | None = None
    """``lam_mode='entropy'``: ``(M,)`` indices into the ``N`` valid positions whose teacher entropy is above the
    threshold (they get the forward KL)."""
    fkl_logp_teacher: Tensor | None = None
    """``lam_mode='entropy'``: ``(M, V)`` the teacher's full log-distribution at those ``M`` states only."""

    def rows(self, start: int, stop: int) -> Scored:
        """Rows ``start:stop`` (a micro-batch): per-token tensors sliced by row, per-state tensors cut to those
        rows' states (contiguous, as :class:`~gopd_lab.lm.logprobs.Positions` is row-major), the entropy-aware
        forward-KL states re-indexed into them. No expert batch."""
        counts = (self.rollout.completion_mask != 0).sum(1)  # (B,)
        n0, n1 = int(counts[:start].sum()), int(counts[:stop].sum())

        def row(x):
            return None if x is None else x[start:stop]

        def state(x):
            return None if x is None else x[n0:n1]

        keep = None if self.fkl_index is None else (self.fkl_index >= n0) & (self.fkl_index < n1)  # (M,)

        return Scored(
            rollout=self.rollout.select(range(start, stop)),
            lam=self.lam[start:stop],
            lp_teacher=row(self.lp_teacher),
            teacher_rank=row(self.teacher_rank),
            lp_reference=row(self.lp_reference),
            rewards=row(self.rewards),
            target=state(self.target),
            topk_index=state(self.topk_index),
            lp_teacher_topk=state(self.lp_teacher_topk),
            lp_reference_topk=state(self.lp_reference_topk),
            teacher_entropy=row(self.teacher_entropy),
            fkl_index=None if self.fkl_index is None else self.fkl_index[keep] - n0,
            fkl_logp_teacher=None if self.fkl_logp_teacher is None else self.fkl_logp_teacher[keep],
        )


def score_rollout(
    models: Models,
    rollout: Rollout,
    lam_of: dict[str, float] | float,
    *,
    estimator: str = "sampled",
    topk: int = 16,
    chunk_tokens: int = 0,
    teacher_rollout: Rollout | None = None,
    always_reference: bool = False,
    entropy_threshold: float | None = None,
) -> Scored:
    """Score a rollout with each sample's teacher, and with its reference only where its λ ≠ 1.

    ``lp_reference`` is None when every λ is 1; otherwise rows at λ = 1 hold NaN there (not run).
    ``teacher_rollout`` (same completions, other prompts) is what the teacher sees instead of
    ``rollout``: SDPO's self-teacher reads the feedback-augmented prompts. ``always_reference`` runs the
    reference on every row (REOPD / A-G-OPD choose λ after scoring). ``entropy_threshold`` (entropy-aware
    OPD) adds the teacher's entropy at every state and its full log-distribution at the states above it.
    """
    teacher_rollout = teacher_rollout if teacher_rollout is not None else rollout
    needs = get_estimator(estimator).needs  # what the estimator needs from scoring
    lam = torch.tensor(
        [lam_for(lam_of, d) for d in rollout.domains], dtype=torch.float32, device=rollout.prompt_ids.device
    )
    need_reference = always_reference or bool((lam != 1).any())
    groups: dict[tuple[int, int], tuple[nn.Module, nn.Module | None, list[int]]] = {}
    for row, domain in enumerate(rollout.domains):
        teacher = models.teacher_for(domain)
        reference = models.reference_for(domain) if (lam[row] != 1 or always_reference) else None
        key = (id(teacher), id(reference))
        groups.setdefault(key, (teacher, reference, []))[2].append(row)

    pos_all = Positions.of(rollout)
    shape = rollout.completion_mask.shape
    lp_t = torch.zeros(shape, dtype=torch.float32, device=rollout.prompt_ids.device)
    rank = torch.zeros(shape, dtype=torch.long, device=lp_t.device)
    lp_r = torch.full_like(lp_t, float("nan")) if need_reference else None
    per_state: dict[str, Tensor] = {}
    flat = torch.full(shape, -1, dtype=torch.long, device=lp_t.device)  # (B, C) → index into N
    flat[pos_all.b, pos_all.c] = torch.arange(len(pos_all), device=lp_t.device)

    lazy = needs in (MIXED_TARGET, TEACHER_DISTRIBUTION)  # the target may stay lazy (one part per group)
    parts: list = []  # per group: its target (lazy or dense) and where its states go in N
    for teacher, reference, rows in groups.values():
        whole = len(rows) == len(rollout)
        sub = rollout if whole else rollout.select(rows)
        sub_t = teacher_rollout if whole else teacher_rollout.select(rows)
        out = _score_pair(
            teacher,
            reference,
            sub,
            lam[rows],
            estimator=estimator,
            topk=topk,
            chunk_tokens=chunk_tokens,
            teacher_rollout=sub_t,
            entropy_threshold=entropy_threshold,
            lazy_target=lazy,
            vocab=models.vocab,
            total_states=len(pos_all),
        )
        rows_t = torch.as_tensor(rows, device=lp_t.device)
        lp_t[rows_t] = out["lp_teacher"]
        rank[rows_t] = out["rank"]
        if lp_r is not None and "lp_reference" in out:
            lp_r[rows_t] = out["lp_reference"]
        if "teacher_entropy" in out:
            per_state.setdefault("teacher_entropy", torch.zeros_like(lp_t))[rows_t] = out["teacher_entropy"]
        if "fkl_local" in out:
            sub_pos = Positions.of(sub)
            dest = flat[rows_t[sub_pos.b], sub_pos.c]  # (n,) where this group's states go in N
            per_state.setdefault("fkl_index", []).append(dest[out["fkl_local"]])
            per_state.setdefault("fkl_logp_teacher", []).append(out["fkl_logp_teacher"])
        for name in ("target", "topk_index", "lp_teacher_topk", "lp_reference_topk"):
            if name not in out:
                continue
            if whole:  # the group's states are all the states, in order: no copy
                per_state[name] = out[name]
                continue
            sub_pos = Positions.of(sub)
            dest = flat[rows_t[sub_pos.b], sub_pos.c]  # (n,) where this group's states go in N
            if name == "target" and isinstance(out[name], LazyTarget):
                parts.append((out[name], dest))  # stays lazy: GroupedTarget below
                continue
            if name not in per_state:
                per_state[name] = out[name].new_zeros((len(pos_all), *out[name].shape[1:]))
            per_state[name][dest] = out[name]
    if parts:
        per_state["target"] = GroupedTarget.of(parts, per_state.pop("target", None), len(pos_all))
    if "fkl_index" in per_state:  # (M,) / (M, V), ordered by position
        index, logp = torch.cat(per_state["fkl_index"]), torch.cat(per_state["fkl_logp_teacher"])
        order = index.argsort()
        per_state["fkl_index"], per_state["fkl_logp_teacher"] = index[order], logp[order]
    return Scored(rollout=rollout, lam=lam, lp_teacher=lp_t, teacher_rank=rank, lp_reference=lp_r, **per_state)


def reference_logprobs(models: Models, rollout: Rollout, *, chunk_tokens: int = 0) -> Tensor:
    """``(B, C)`` log-probs of each sample's own domain reference (rows grouped by reference model)."""
    out = torch.zeros(rollout.completion_mask.shape, dtype=torch.float32, device=rollout.prompt_ids.device)
    groups: dict[int, tuple[nn.Module, list[int]]] = {}
    for row, domain in enumerate(rollout.domains):
        ref = models.reference_for(domain)
        groups.setdefault(id(ref), (ref, []))[1].append(row)
    for ref, rows in groups.values():
        sub = rollout.select(rows) if len(rows) < len(rollout) else rollout
        lp = (
            ref.score(sub, chunk_tokens=chunk_tokens)["lp"]
            if is_scorer(ref)
            else token_logprobs(ref, sub, chunk_tokens=chunk_tokens)
        )
        out[torch.as_tensor(rows, device=out.device)] = lp
    return out


@torch.no_grad()  # not inference_mode: per-state outputs are read by the update's autograd graph without a copy
def _score_pair(
    teacher: nn.Module,
    reference: nn.Module | None,
    rollout: Rollout,
    lam: Tensor,
    *,
    estimator: str,
    topk: int,
    chunk_tokens: int,
    teacher_rollout: Rollout,
    entropy_threshold: float | None = None,
    lazy_target: bool = False,
    vocab=None,
    total_states: int = 0,
) -> dict[str, Tensor]:
    """One pass of the teacher (and the reference) over a rollout; chunked per-state reductions.

    ``full`` and ``jsd`` with ``lazy_target`` (frozen LM heads, a dense target of the whole batch's
    ``max(N, total_states)`` states above :data:`LAZY_TARGET_BYTES`) return a :class:`LazyTarget` instead of an
    ``(N, V)`` tensor; other per-state ``(N, V)`` outputs are written into one preallocated tensor (no
    concatenation)."""
    needs = get_estimator(estimator).needs
    if is_scorer(teacher) or is_scorer(reference):  # a Scorer (e.g. a model served over HTTP)
        if entropy_threshold is not None:
            raise ValueError("lam_mode='entropy' needs the teacher's full distribution: load the teacher locally")
        return score_pair(
            teacher,
            reference,
            rollout,
            lam,
            estimator=estimator,
            topk=topk,
            chunk_tokens=chunk_tokens,
            teacher_rollout=teacher_rollout,
        )
    pos = Positions.of(rollout)
    tokens = rollout.completion_ids[pos.b, pos.c]  # (N,)
    lam_n = lam[pos.b][:, None]  # (N, 1)
    with scoring_view(teacher) as t:
        feats_t, head_t = completion_features(t, teacher_rollout, pos)
        width = _vocab_size(t, head_t, feats_t) if vocab is None else vocab.width
    feats_r = head_r = None
    if reference is not None:
        with scoring_view(reference) as r:
            feats_r, head_r = completion_features(r, rollout, pos)
    n = chunk_rows(width, chunk_tokens, feats_t.device)
    lazy = lazy_target and needs in (MIXED_TARGET, TEACHER_DISTRIBUTION) and _frozen(head_t)
    lazy = lazy and (needs == TEACHER_DISTRIBUTION or head_r is None or _frozen(head_r))
    lazy = lazy and max(len(pos), total_states) * width * 4 > LAZY_TARGET_BYTES
    acc: dict[str, list[Tensor]] = {}
    dense: Tensor | None = None  # (N, V) per-state output, written chunk by chunk
    want_dense = needs in (MIXED_TARGET, TEACHER_DISTRIBUTION) and not lazy
    # the dense output is the teacher's log-probs themselves (jsd, or full at λ = 1): log_softmax writes into it
    direct = want_dense and (needs == TEACHER_DISTRIBUTION or (head_r is None and bool((lam_n == 1).all())))
    for i in range(0, len(pos), n):
        tok = tokens[i : i + n, None]
        logits_t = head_t(feats_t[i : i + n]).float()
        if direct:
            if dense is None:
                dense = logits_t.new_empty(len(pos), logits_t.shape[-1])
            logp_t = torch.log_softmax(logits_t, -1, out=dense[i : i + n])  # (n, V), no copy
        else:
            logp_t = torch.log_softmax(logits_t, -1)  # (n, V)
        lp_tok = logp_t.gather(-1, tok).squeeze(-1)
        _add(acc, "lp_teacher", lp_tok)
        _add(acc, "rank", (logp_t > lp_tok[:, None]).sum(-1, dtype=torch.int32).long())
        if entropy_threshold is not None:
            ent = entropy_from_logp(logp_t)  # (n,)
            high = ent > entropy_threshold
            _add(acc, "teacher_entropy", ent)
            _add(acc, "fkl_local", torch.arange(i, i + len(ent), device=ent.device)[high])
            _add(acc, "fkl_logp_teacher", logp_t[high])
        logp_r = None
        if head_r is not None:
            logp_r = torch.log_softmax(head_r(feats_r[i : i + n]).float(), -1)  # (n, V)
            _add(acc, "lp_reference", logp_r.gather(-1, tok).squeeze(-1))
        if want_dense and not direct:
            if dense is None:
                dense = logp_t.new_empty(len(pos), logp_t.shape[-1])
            dense[i : i + n] = target_logprobs(logp_t, logp_r, lam_n[i : i + n]) if needs == MIXED_TARGET else logp_t
        elif needs == TEACHER_TOPK:
            values, index = logp_t.topk(min(topk, logp_t.shape[-1]), dim=-1)  # (n, k)
            _add(acc, "topk_index", index)
            _add(acc, "lp_teacher_topk", values)
            if logp_r is not None:
                _add(acc, "lp_reference_topk", logp_r.gather(-1, index))
    out = {}
    for name, parts in acc.items():
        cat = torch.cat(parts)
        out[name] = pos.scatter(cat) if name in ("lp_teacher", "rank", "lp_reference", "teacher_entropy") else cat
    if dense is not None:
        out["target"] = dense
    elif lazy and needs == TEACHER_DISTRIBUTION:  # jsd: the teacher's own log-probs (λ = 1, no reference)
        out["target"] = LazyTarget(feats_t, head_t, torch.ones_like(lam_n), None, None, width)
    elif lazy:
        out["target"] = LazyTarget(feats_t, head_t, lam_n, feats_r, head_r, width)
    if not acc:  # a rollout with no valid token at all
        out["lp_teacher"] = pos.scatter(feats_t.new_zeros(0, dtype=torch.float32))
        out["rank"] = pos.scatter(torch.zeros(0, dtype=torch.long, device=feats_t.device))
        if reference is not None:
            out["lp_reference"] = out["lp_teacher"].clone()
        if needs in (MIXED_TARGET, TEACHER_DISTRIBUTION) and "target" not in out:
            out["target"] = feats_t.new_zeros(0, width, dtype=torch.float32)
    return out


def _frozen(head) -> bool:
    """An LM head that will not change before the update reads the target (not the live SDPO self-teacher)."""
    weight = getattr(head, "weight", None)
    return isinstance(head, nn.Module) and weight is not None and not weight.requires_grad


def _add(acc: dict[str, list[Tensor]], name: str, value: Tensor) -> None:
    acc.setdefault(name, []).append(value)
