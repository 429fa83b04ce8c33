"""The Scorer protocol: what scores a rollout for a teacher or a reference without being a local model.

A teacher or reference in :class:`~gopd_lab.lm.models.Models` is either a local model (an ``nn.Module``, scored by
the fused chunked pass of :mod:`gopd_lab.scorers.score`) or a :class:`Scorer`: any object with
``score(rollout, *, rank, topk, full, gather, chunk_tokens) -> dict`` — the HTTP client
(:class:`~gopd_lab.scorers.remote.RemoteScorer`), or one of your own. :func:`score_tokens` is the same computation
for one local model: the teacher server runs it, and so does a local model scored next to a :class:`Scorer`.
What a step asks a scorer for follows the estimator's ``needs`` (:func:`score_pair`).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from gopd_lab.lm.logprobs import Positions, _vocab_size, chunk_rows, completion_features, scoring_view
from gopd_lab.lm.rollout import Rollout
from gopd_lab.objectives import MIXED_TARGET, TEACHER_DISTRIBUTION, TEACHER_TOPK, get_estimator, target_logprobs


@runtime_checkable
class Scorer(Protocol):
    """Scores a rollout. Returns ``lp`` ``(B, C)`` (0 where masked) and, when asked, ``rank`` ``(B, C)``,
    ``topk_index`` / ``topk_logp`` ``(N, k)``, ``full`` ``(N, V)`` log-distributions and ``gather`` ``(N, k)``
    log-probs at the given ids, per-state tensors in :class:`~gopd_lab.lm.logprobs.Positions` order."""

    def score(
        self,
        rollout: Rollout,
        *,
        rank: bool = False,
        topk: int = 0,
        full: bool = False,
        gather: Tensor | None = None,
        chunk_tokens: int = 0,
    ) -> dict[str, Tensor]: ...


def is_scorer(obj: object) -> bool:
    """True for a :class:`Scorer` that is not a local model (a model with a ``score`` head stays a model)."""
    return not isinstance(obj, nn.Module) and isinstance(obj, Scorer)


@torch.inference_mode()
def score_tokens(
    model: nn.Module,
    rollout: Rollout,
    *,
    rank: bool = False,
    topk: int = 0,
    full: bool = False,
    gather: Tensor | None = None,
    chunk_tokens: int = 0,
) -> dict[str, Tensor]:
    """One model's view of a rollout, chunk by chunk, as ``score._score_pair`` computes it for a teacher.

    Returns ``lp`` ``(B, C)`` (0 where masked) and, when asked, ``rank`` ``(B, C)``, ``topk_index`` /
    ``topk_logp`` ``(N, k)``, ``full`` ``(N, V)`` log-distributions, ``gather`` ``(N, k)`` log-probs at the
    given ids; per-state tensors follow :class:`~gopd_lab.lm.logprobs.Positions` order.
    """
    pos = Positions.of(rollout)
    tokens = rollout.completion_ids[pos.b, pos.c]  # (N,)
    with scoring_view(model) as m:
        feats, head = completion_features(m, rollout, pos)
        vocab = _vocab_size(m, head, feats)
    n = chunk_rows(vocab, chunk_tokens, feats.device)
    k = min(topk, vocab)
    acc: dict[str, list[Tensor]] = {}
    for i in range(0, len(pos), n):
        logp = torch.log_softmax(head(feats[i : i + n]).float(), -1)  # (n, V)
        lp = logp.gather(-1, tokens[i : i + n, None]).squeeze(-1)  # (n,)
        acc.setdefault("lp", []).append(lp)
        if rank:
            acc.setdefault("rank", []).append((logp > lp[:, None]).sum(-1))
        if k:
            values, index = logp.topk(k, dim=-1)  # (n, k)
            acc.setdefault("topk_index", []).append(index)
            acc.setdefault("topk_logp", []).append(values)
        if full:
            acc.setdefault("full", []).append(logp)
        if gather is not None:
            acc.setdefault("gather", []).append(logp.gather(-1, gather[i : i + n]))
    dev = feats.device
    empty = {
        "lp": torch.zeros(0, device=dev),
        "rank": torch.zeros(0, dtype=torch.long, device=dev),
        "topk_index": torch.zeros(0, k, dtype=torch.long, device=dev),
        "topk_logp": torch.zeros(0, k, device=dev),
        "full": torch.zeros(0, vocab, device=dev),
        "gather": torch.zeros(0, 0 if gather is None else gather.shape[-1], device=dev),
    }
    wanted = (
        ["lp"]
        + ["rank"] * rank
        + ["topk_index", "topk_logp"] * bool(k)
        + ["full"] * full
        + ["gather"] * (gather is not None)
    )
    out = {name: torch.cat(acc[name]) if name in acc else empty[name] for name in wanted}
    out["lp"] = pos.scatter(out["lp"])
    if rank:
        out["rank"] = pos.scatter(out["rank"], fill=0)
    return out


def score_pair(
    teacher,
    reference,
    rollout: Rollout,
    lam: Tensor,
    *,
    estimator: str,
    topk: int,
    chunk_tokens: int,
    teacher_rollout: Rollout,
) -> dict[str, Tensor]:
    """``score._score_pair`` when the teacher or the reference is a :class:`Scorer` (the other may be a local
    model): ask each for what the estimator needs and assemble the same outputs."""
    needs = get_estimator(estimator).needs
    want_full = needs in (MIXED_TARGET, TEACHER_DISTRIBUTION)
    k = topk if needs == TEACHER_TOPK else 0
    t = ask(teacher, teacher_rollout, rank=True, topk=k, full=want_full, chunk_tokens=chunk_tokens)
    out = {"lp_teacher": t["lp"], "rank": t["rank"]}
    r = None
    if reference is not None:
        r = ask(
            reference,
            rollout,
            full=needs == MIXED_TARGET,
            gather=t["topk_index"] if k else None,
            chunk_tokens=chunk_tokens,
        )
        out["lp_reference"] = r["lp"]
    if needs == MIXED_TARGET:
        lam_n = lam[Positions.of(rollout).b][:, None]  # (N, 1)
        out["target"] = target_logprobs(t["full"], None if r is None else r["full"], lam_n)
    elif needs == TEACHER_DISTRIBUTION:
        out["target"] = t["full"]
    elif needs == TEACHER_TOPK:
        out["topk_index"], out["lp_teacher_topk"] = t["topk_index"], t["topk_logp"]
        if r is not None:
            out["lp_reference_topk"] = r["gather"]
    return out


def ask(scorer, rollout: Rollout, **want) -> dict[str, Tensor]:
    """``scorer.score(rollout, **want)`` for a :class:`Scorer`; :func:`score_tokens` for a local model."""
    if is_scorer(scorer):
        return scorer.score(rollout, **want)
    return score_tokens(scorer, rollout, **want)


# ---------------------------------------------------------------------------------------------- wire format
