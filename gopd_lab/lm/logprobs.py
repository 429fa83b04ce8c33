"""Stage 2: token log-probs of any model on a :class:`~gopd_lab.lm.rollout.Rollout`, memory-lean, float32.

Only completion positions are projected to the vocabulary: the decoder runs over the whole sequence,
its hidden states are gathered at the valid completion positions (no prompt, no padding), and the LM
head is applied chunk by chunk. Each chunk's logits are cast to float32 and reduced at once (gathered
token logit minus logsumexp), so a full ``[B, T, V]`` log-softmax never exists. Models without a
separate decoder/head (e.g. the tabular policies of :mod:`gopd_lab.lm.exact`) fall back to
``logits_to_keep``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from gopd_lab.lm.precision import compute_dtype
from gopd_lab.lm.rollout import Rollout, position_ids_from_mask
from gopd_lab.lm.vocab import MASKED_LOGIT  # the logit of a token the student may not emit

CHUNK_BYTES = 32 * 2**20
"""Float32 logits per chunk on CPU when ``chunk_tokens == 0``: ~55 rows at V = 151,936, so the LM head (``V × H``) is
read once per 55 positions; at V = 151,936 and hidden 64 faster than both 8 MiB (the head is re-read every 13 rows)
and 64 MiB (the chunk no longer fits the last-level cache)."""
CUDA_CHUNK_BYTES = 2**30
"""The same on CUDA: ~1,700 rows at V = 151,936, so the LM head (``V × H``) is read once per ~1,700 positions
instead of once per 13; the chunk's logits are a small share of an accelerator's memory."""


@dataclass
class Positions:
    """The valid completion positions of a rollout, flattened: row ``b[i]``, column ``c[i]``."""

    b: Tensor
    c: Tensor
    shape: tuple[int, int]

    @classmethod
    def of(cls, rollout: Rollout) -> Positions:
        b, c = rollout.completion_mask.bool().nonzero(as_tuple=True)
        return cls(b, c, tuple(rollout.completion_mask.shape))

    def __len__(self) -> int:
        return self.b.numel()

    def scatter(self, values: Tensor, fill: float = 0.0) -> Tensor:
        """``(N, ...)`` values at the valid positions → ``(B, C, ...)`` with ``fill`` elsewhere."""
        out = values.new_full((*self.shape, *values.shape[1:]), fill)
        out[self.b, self.c] = values
        return out


@contextlib.contextmanager
def scoring_view(model: nn.Module) -> Iterator[nn.Module]:
    """The module to run for scoring (unwraps :class:`~gopd_lab.lm.models.AdapterDisabled`)."""
    if hasattr(model, "scoring"):
        with model.scoring() as inner:
            yield inner
    else:
        yield model


def _decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module] | None:
    get_head = getattr(model, "get_output_embeddings", None)
    get_decoder = getattr(model, "get_decoder", None)
    if get_head is None or get_decoder is None:
        return None
    try:
        head, decoder = get_head(), get_decoder()
    except (AttributeError, NotImplementedError, ValueError):
        return None
    if not isinstance(head, nn.Linear) or decoder is None or decoder is model:
        return None
    return decoder, head


def completion_features(
    model: nn.Module, rollout: Rollout, pos: Positions
) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """Features at the valid completion positions and the map from features to logits.

    Returns ``(features (N, H), to_logits)``: hidden states + the LM head when the model exposes them,
    else logits ``(N, V)`` + identity. Position ``P + c - 1`` predicts completion token ``c``.
    """
    ids, mask = rollout.input_ids, rollout.attention_mask  # (B, T)
    prompt_len = rollout.prompt_ids.shape[1]
    cols = prompt_len + pos.c - 1  # (N,)
    kwargs = dict(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask), use_cache=False)
    parts = _decoder_and_head(model)
    if parts is not None:
        decoder, head = parts
        hidden = decoder(**kwargs).last_hidden_state  # (B, T, H)
        cap = getattr(getattr(model, "config", None), "final_logit_softcapping", None)
        if cap:
            return hidden[pos.b, cols], lambda h: torch.tanh(head(h) / cap) * cap
        return hidden[pos.b, cols], head
    keep = rollout.completion_ids.shape[1] + 1
    logits = model(**kwargs, logits_to_keep=keep).logits[:, :-1]  # (B, C, V)
    return logits[pos.b, pos.c], lambda x: x


def chunk_rows(vocab: int, chunk_tokens: int = 0, device: torch.device | str | None = None) -> int:
    """Positions per chunk: ``chunk_tokens``, or about :data:`CHUNK_BYTES` (:data:`CUDA_CHUNK_BYTES` on a CUDA
    ``device``) of float32 logits."""
    if chunk_tokens > 0:
        return chunk_tokens
    budget = CUDA_CHUNK_BYTES if device is not None and torch.device(device).type == "cuda" else CHUNK_BYTES
    return max(1, budget // (4 * vocab))


def allowed_tokens(head) -> Tensor | None:
    """The ``(V,)`` bool mask of tokens the model may emit, set on its LM head by :mod:`gopd_lab.lm.vocab` (None = all)."""
    return getattr(head, "gopd_allowed", None)


def target_rows(target, start: int, stop: int) -> Tensor:
    """Rows ``start:stop`` of a per-state target: a tensor, or a lazy one (``score.LazyTarget``) formed here."""
    return target.rows(start, stop) if hasattr(target, "rows") else target[start:stop]


def _vocab_size(model: nn.Module, to_logits: Callable, features: Tensor) -> int:
    weight = getattr(to_logits, "weight", None)
    return int(weight.shape[0]) if weight is not None else int(features.shape[-1])


def max_context(model: nn.Module) -> int | None:
    """The longest sequence the model takes (its config's ``max_position_embeddings``; None when it has none)."""
    return getattr(getattr(model, "config", None), "max_position_embeddings", None)


def _token_stats(
    logits: Tensor, tokens: Tensor, *, rank: bool = False, entropy: bool = False
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``(lp_token, rank, entropy)`` for one chunk of float32 logits ``(n, V)``."""
    logits = logits.float()
    token_logit = logits.gather(-1, tokens[:, None]).squeeze(-1)  # (n,)
    lse = torch.logsumexp(logits, dim=-1)  # (n,)
    r = (logits > token_logit[:, None]).sum(-1) if rank else None
    ent = None
    if entropy:
        with torch.no_grad():
            logp = logits - lse[:, None]
            ent = -(logp.exp() * logp).sum(-1)
    return token_logit - lse, r, ent


@torch.inference_mode()
def token_logprobs(model: nn.Module, rollout: Rollout, *, chunk_tokens: int = 0, with_rank: bool = False):
    """``log π(a_t | s_t)`` of the sampled completion tokens, float32 ``(B, C)``, 0 where masked.

    With ``with_rank=True`` also returns the rank (0 = most likely) of each sampled token.
    """
    with scoring_view(model) as m:
        pos = Positions.of(rollout)
        feats, to_logits = completion_features(m, rollout, pos)
        tokens = rollout.completion_ids[pos.b, pos.c]
        n = chunk_rows(_vocab_size(m, to_logits, feats), chunk_tokens, feats.device)
        lps, ranks = [], []
        for i in range(0, len(pos), n):
            lp, r, _ = _token_stats(to_logits(feats[i : i + n]), tokens[i : i + n], rank=with_rank)
            lps.append(lp)
            ranks.append(r)
        lp = pos.scatter(torch.cat(lps) if lps else feats.new_zeros(0, dtype=torch.float32))
        if with_rank:
            rank = pos.scatter(
                torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long, device=feats.device), fill=0
            )
            return lp, rank
        return lp


@torch.inference_mode()
def full_logprobs(model: nn.Module, rollout: Rollout, *, chunk_tokens: int = 0) -> Tensor:
    """Full float32 log-distributions at the valid completion positions, ``(N, V)`` in
    :class:`Positions` order (chunked log-softmax; for tiny vocabularies and tests)."""
    with scoring_view(model) as m:
        pos = Positions.of(rollout)
        feats, to_logits = completion_features(m, rollout, pos)
        n = chunk_rows(_vocab_size(m, to_logits, feats), chunk_tokens, feats.device)
        return torch.cat([torch.log_softmax(to_logits(feats[i : i + n]).float(), -1) for i in range(0, len(pos), n)])


@dataclass
class StudentOut:
    """The student's forward pass inside the update: ``lp`` ``(B, C)`` carries the gradient,
    ``logp`` ``(N, V)`` (full distributions at valid positions, with gradient) only when asked,
    ``entropy`` ``(B, C)`` is detached. :func:`student_kl_forward` instead returns the loss itself in
    ``kl_loss`` (with gradient) and a detached ``lp``."""

    lp: Tensor
    logp: Tensor | None
    entropy: Tensor
    positions: Positions
    kl_loss: Tensor | None = None


def student_forward(model: nn.Module, rollout: Rollout, *, full: bool = False, chunk_tokens: int = 0) -> StudentOut:
    """Student log-probs with gradient, chunked. When only token log-probs are needed, a plain bias-free LM
    head goes through :class:`_TokenLogprob` (each chunk's logits formed once in forward and once in
    backward, never kept); other heads recompute each chunk in backward by activation checkpointing."""
    pos = Positions.of(rollout)
    feats, to_logits = completion_features(model, rollout, pos)
    tokens = rollout.completion_ids[pos.b, pos.c]
    vocab = _vocab_size(model, to_logits, feats)
    n = chunk_rows(vocab, chunk_tokens, feats.device)
    if not full and isinstance(to_logits, nn.Linear) and to_logits.bias is None:
        lp, ent = _TokenLogprob.apply(feats, to_logits.weight, tokens, n, allowed_tokens(to_logits))
        return StudentOut(lp=pos.scatter(lp), logp=None, entropy=pos.scatter(ent), positions=pos)
    lps, ents, logps = [], [], []
    for i in range(0, len(pos), n):
        f, t = feats[i : i + n], tokens[i : i + n]
        if full:
            logp = torch.log_softmax(to_logits(f).float(), -1)  # (n, V)
            logps.append(logp)
            lps.append(logp.gather(-1, t[:, None]).squeeze(-1))
            with torch.no_grad():
                ents.append(-(logp.exp() * logp).sum(-1))
        else:
            lp, ent = _lp_entropy(f, t, to_logits, checkpointed=len(pos) > n)
            lps.append(lp)
            ents.append(ent)
    empty = feats.new_zeros(0, dtype=torch.float32)
    lp = pos.scatter(torch.cat(lps) if lps else empty)
    entropy = pos.scatter(torch.cat(ents).detach() if ents else empty)
    logp = (torch.cat(logps) if logps else feats.new_zeros(0, vocab, dtype=torch.float32)) if full else None
    return StudentOut(lp=lp, logp=logp, entropy=entropy, positions=pos)


def _lp_entropy(features: Tensor, tokens: Tensor, to_logits: Callable, *, checkpointed: bool) -> tuple[Tensor, Tensor]:
    def chunk(f: Tensor) -> tuple[Tensor, Tensor]:
        lp, _, ent = _token_stats(to_logits(f), tokens, entropy=True)
        return lp, ent

    if checkpointed and features.requires_grad:
        return checkpoint(chunk, features, use_reentrant=False)
    return chunk(features)


def student_kl_forward(
    model: nn.Module, rollout: Rollout, target: Tensor, *, chunk_tokens: int = 0
) -> StudentOut | None:
    """The ``full`` estimator's loss ``mean_t KL(π_θ(·|s_t) ‖ target(·|s_t))`` fused with the LM head.

    ``target`` ``(N, V)`` holds the detached log-target at the valid positions (:class:`Positions` order), or is a
    lazy target whose rows are formed chunk by chunk here (``score.LazyTarget``: no ``(N, V)`` tensor at all).
    Chunk by chunk the head's logits are formed, reduced to the KL, the token log-prob and the entropy, and
    turned at once into the gradients of the features and of the head weight (``∂KL/∂z = p ⊙ (log p −
    log target − KL)``): no ``(N, V)`` activation outlives its chunk and autograd records one node for the
    whole head. Returns ``None`` when the model has no plain bias-free linear head (the caller then uses
    :func:`student_forward`).
    """
    parts = _decoder_and_head(model)
    if (
        parts is None
        or parts[1].bias is not None
        or getattr(getattr(model, "config", None), "final_logit_softcapping", None)
    ):
        return None
    pos = Positions.of(rollout)
    feats, head = completion_features(model, rollout, pos)
    tokens = rollout.completion_ids[pos.b, pos.c]
    rows = chunk_rows(head.weight.shape[0], chunk_tokens, feats.device)
    target = target.detach() if isinstance(target, Tensor) else target
    loss, lp, ent = _FusedKL.apply(feats, head.weight, target, tokens, rows, allowed_tokens(head))
    return StudentOut(lp=pos.scatter(lp), logp=None, entropy=pos.scatter(ent), positions=pos, kl_loss=loss)


class _FusedKL(torch.autograd.Function):
    """``(features (N, H), weight (V, H), target (N, V)) → (mean KL, lp (N,), entropy (N,))``; the gradients of the
    summed KL are computed in the forward pass (the loss is their mean, so backward only scales them by
    ``incoming gradient / N``). Under autocast the head's matmuls run in autocast's dtype; logits, log-probs and
    the KL are float32, and the weight's gradient is accumulated in the weight's own dtype."""

    @staticmethod
    def forward(ctx, feats: Tensor, weight: Tensor, target, tokens: Tensor, rows: int, allowed: Tensor | None):
        n_all = feats.shape[0]
        cd = compute_dtype(weight)
        grad_f = torch.zeros_like(feats)
        grad_w = torch.zeros_like(weight) if weight.requires_grad else None
        lp = feats.new_zeros(n_all, dtype=torch.float32)
        ent = feats.new_zeros(n_all, dtype=torch.float32)
        total = feats.new_zeros((), dtype=torch.float32)
        width = min(rows, n_all)  # two (rows, V) float32 buffers reused by every chunk (no allocation per chunk)
        buf_z = feats.new_empty((width, weight.shape[0]), dtype=torch.float32)
        buf_p = torch.empty_like(buf_z)
        with torch.autocast(feats.device.type, enabled=False):
            w = weight.to(cd)
            for i in range(0, n_all, rows):
                f = feats[i : i + rows].to(cd)
                n = f.shape[0]
                logp, p = buf_z[:n], buf_p[:n]
                if cd == torch.float32:
                    torch.mm(f, w.T, out=logp)  # (n, V) logits
                else:
                    logp.copy_(torch.nn.functional.linear(f, w))
                _masked(logp, allowed)
                logp -= _logsumexp(logp, p)[:, None]  # log-probs (p is scratch here)
                torch.exp(logp, out=p)
                ent[i : i + rows] = -torch.bmm(p[:, None, :], logp[:, :, None]).view(-1)
                lp[i : i + rows] = logp.gather(-1, tokens[i : i + rows, None]).view(-1)
                diff = logp.sub_(target_rows(target, i, i + rows))  # log p − log target, in place
                kl = torch.bmm(p[:, None, :], diff[:, :, None]).view(-1)  # (n,) without an (n, V) product
                total += kl.sum()
                g = diff.sub_(kl[:, None]).mul_(p).to(cd)  # ∂KL_i/∂logits_i, (n, V); the 1/N is applied in backward
                grad_f[i : i + rows] = g @ w
                if grad_w is not None:
                    _add_outer(grad_w, g, f)
        ctx.grad_f, ctx.grad_w = (
            grad_f,
            grad_w,
        )  # scaled in place in backward (a scaled copy of V × H costs fresh pages)
        ctx.n = max(n_all, 1)
        ctx.mark_non_differentiable(lp, ent)
        return total / ctx.n, lp, ent

    @staticmethod
    def backward(ctx, grad_loss: Tensor, _grad_lp, _grad_ent):
        if ctx.grad_f is None:
            raise RuntimeError("_FusedKL's backward ran twice; its gradients are scaled in place (no retain_graph)")
        grad_f, grad_w, ctx.grad_f, ctx.grad_w = ctx.grad_f, ctx.grad_w, None, None
        scale = grad_loss / ctx.n
        return grad_f.mul_(scale), (grad_w.mul_(scale) if grad_w is not None else None), None, None, None, None


def _logsumexp(x: Tensor, scratch: Tensor) -> Tensor:
    """``torch.logsumexp(x, -1)`` for a 2-D float tensor, computed as ATen does (so bit-identical) but with
    ``scratch`` (same shape) for the ``exp(x − max)`` it would allocate."""
    maxes = x.amax(-1, keepdim=True)  # (n, 1)
    maxes.masked_fill_(maxes.abs() == float("inf"), 0.0)
    torch.sub(x, maxes, out=scratch).exp_()
    return scratch.sum(-1).log_().add_(maxes.squeeze(-1))


def _masked(logits: Tensor, allowed: Tensor | None) -> Tensor:
    """Float32 logits with the tokens outside ``allowed`` set to :data:`MASKED_LOGIT` (in place)."""
    return logits if allowed is None else logits.masked_fill_(~allowed, MASKED_LOGIT)


def _add_outer(grad_w: Tensor, g: Tensor, f: Tensor) -> None:
    """``grad_w += gᵀ f``, in ``grad_w``'s dtype (float32 under autocast, whose ``g``, ``f`` are bf16)."""
    if grad_w.dtype == g.dtype:
        grad_w.addmm_(g.T, f)
    else:
        grad_w += (g.T @ f).to(grad_w.dtype)


class _TokenLogprob(torch.autograd.Function):
    """``(features (N, H), weight (V, H), tokens (N,)) → (lp (N,), entropy (N,))`` of a bias-free LM head, chunk
    by chunk. Forward keeps only each position's log-normaliser; backward forms each chunk's logits once more
    and turns them straight into ``∂lp/∂logits = onehot − p`` (no autograd graph over ``(n, V)`` tensors).
    Under autocast the head's matmuls run in autocast's dtype (both passes); the reductions are float32."""

    @staticmethod
    def forward(ctx, feats: Tensor, weight: Tensor, tokens: Tensor, rows: int, allowed: Tensor | None):
        n_all = feats.shape[0]
        cd = compute_dtype(weight)
        lp = feats.new_zeros(n_all, dtype=torch.float32)
        ent = feats.new_zeros(n_all, dtype=torch.float32)
        lse = feats.new_zeros(n_all, dtype=torch.float32)
        with torch.autocast(feats.device.type, enabled=False):
            w = weight.to(cd)
            for i in range(0, n_all, rows):
                logp = _masked(torch.nn.functional.linear(feats[i : i + rows].to(cd), w).float(), allowed)
                norm = torch.logsumexp(logp, -1)
                logp -= norm[:, None]
                lse[i : i + rows] = norm
                lp[i : i + rows] = logp.gather(-1, tokens[i : i + rows, None]).view(-1)
                ent[i : i + rows] = -torch.bmm(logp.exp()[:, None, :], logp[:, :, None]).view(-1)
        ctx.save_for_backward(feats, weight, tokens, lse)
        ctx.rows, ctx.cd, ctx.allowed = rows, cd, allowed
        ctx.mark_non_differentiable(ent)
        return lp, ent

    @staticmethod
    def backward(ctx, grad_lp: Tensor, _grad_ent):
        feats, weight, tokens, lse = ctx.saved_tensors
        want_f, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_f = torch.zeros_like(feats) if want_f else None
        grad_w = torch.zeros_like(weight) if want_w else None
        grad_lp = grad_lp.float()
        with torch.autocast(feats.device.type, enabled=False):
            w = weight.to(ctx.cd)
            for i in range(0, feats.shape[0], ctx.rows):
                f, g_i = feats[i : i + ctx.rows].to(ctx.cd), grad_lp[i : i + ctx.rows, None]  # (n, H), (n, 1)
                g = _masked(torch.nn.functional.linear(f, w).float(), ctx.allowed)
                g.sub_(lse[i : i + ctx.rows, None]).exp_().mul_(-g_i)  # −grad · p
                g.scatter_add_(-1, tokens[i : i + ctx.rows, None], g_i)  # + grad · onehot(token)
                g = g.to(ctx.cd)
                if want_f:
                    grad_f[i : i + ctx.rows] = (g @ w).to(grad_f.dtype)
                if want_w:
                    _add_outer(grad_w, g, f)
        return grad_f, grad_w, None, None, None
