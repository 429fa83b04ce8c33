"""Exact oracles on a small tree: tabular autoregressive policies and the closed-form G-OPD optima.

The tree: one prompt token, then ``H`` completion tokens from a vocabulary of ``K`` (no EOS; every
completion has length ``H``). A state is the prefix of completion tokens; there are
``1 + K + ... + K^(H-1)`` of them. :class:`TabularPolicy` stores one row of logits per state and
answers ``model(input_ids).logits`` like a causal LM, so the package's own rollout, scoring and update
code trains it unchanged.

Closed forms (docs/math.md, steps 4–5), with ``g(s, a) = π_R(a|s)^(1−λ) · π_T(a|s)^λ``:

- token level: ``π(a|s) ∝ g(s, a)`` at every state (what γ = 0 estimators converge to);
- sequence level: ``π*(a) ∝ Π_t g(s_t, a_t)`` over whole sequences; its conditionals are
  ``π*(a|s) = g(s, a)·Z(s·a) / Z(s)`` with ``Z(leaf) = 1`` and ``Z(s) = Σ_a g(s, a)·Z(s·a)``.

They coincide at λ = 1 (both are the teacher).
"""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import torch
from torch import Tensor, nn

from gopd_lab.lm.rollout import Prompts, Rollout

PROMPT_TOKEN = 0


def num_states(K: int, H: int) -> int:
    """Internal states of the tree: ``sum_{d<H} K^d``."""
    return sum(K**d for d in range(H))


def depth_offset(K: int, d: int) -> int:
    """Index of the first state at depth ``d``."""
    return sum(K**i for i in range(d))


class TabularPolicy(nn.Module):
    """A causal-LM-shaped tabular policy: ``logits (S, K)``, one row per tree state."""

    def __init__(self, K: int, H: int, logits: Tensor | None = None, prompt_len: int = 1):
        super().__init__()
        self.K, self.H, self.prompt_len = K, H, prompt_len
        init = torch.zeros(num_states(K, H), K) if logits is None else logits.detach().clone().float()
        if init.shape != (num_states(K, H), K):
            raise ValueError(f"logits must be ({num_states(K, H)}, {K}), got {tuple(init.shape)}")
        self.table = nn.Parameter(init)
        self.config = SimpleNamespace(vocab_size=K, max_position_embeddings=prompt_len + H)

    def log_probs(self) -> Tensor:
        """``(S, K)`` log-probabilities of each state's next token."""
        return torch.log_softmax(self.table, dim=-1)

    def state_index(self, input_ids: Tensor) -> Tensor:
        """``(B, T)`` state index of the prefix ending at each position (−1 where none: prompt / leaves)."""
        B, T = input_ids.shape
        out = torch.full((B, T), -1, dtype=torch.long, device=input_ids.device)
        within = torch.zeros(B, dtype=torch.long, device=input_ids.device)
        for j in range(self.prompt_len - 1, T):
            depth = j + 1 - self.prompt_len
            if depth >= self.H:
                break
            if depth > 0:
                within = within * self.K + input_ids[:, j]
            out[:, j] = depth_offset(self.K, depth) + within
        return out

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, logits_to_keep: int = 0, **_: object):
        states = self.state_index(input_ids)  # (B, T)
        logits = self.table[states.clamp(min=0)] * (states >= 0)[..., None]  # (B, T, K); 0 off the tree
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return SimpleNamespace(logits=logits, past_key_values=None)


def random_policy(K: int, H: int, *, seed: int, scale: float = 1.5) -> TabularPolicy:
    """A tabular policy with Gaussian logits of standard deviation ``scale``."""
    g = torch.Generator().manual_seed(seed)
    return TabularPolicy(K, H, torch.randn(num_states(K, H), K, generator=g) * scale)


def all_sequences(K: int, H: int) -> Tensor:
    """Every completion, ``(K^H, H)``, in lexicographic order."""
    return torch.tensor(list(itertools.product(range(K), repeat=H)), dtype=torch.long)


def sequence_states(K: int, H: int) -> Tensor:
    """``(K^H, H)`` index of the state in which each token of each completion is chosen."""
    seqs = all_sequences(K, H)
    ids = torch.cat([torch.full((len(seqs), 1), PROMPT_TOKEN), seqs], dim=1)
    return TabularPolicy(K, H).state_index(ids)[:, :H]


def sequence_logprobs(policy: TabularPolicy) -> Tensor:
    """``log π(a)`` of every complete sequence, ``(K^H,)``."""
    logp = policy.log_probs()
    seqs, states = all_sequences(policy.K, policy.H), sequence_states(policy.K, policy.H)
    return logp[states, seqs].sum(-1)


def token_level_optimum(teacher: TabularPolicy, reference: TabularPolicy, lam: float) -> TabularPolicy:
    """``π(·|s) ∝ π_R(·|s)^(1−λ) · π_T(·|s)^λ`` at every state."""
    mixed = lam * teacher.log_probs() + (1 - lam) * reference.log_probs()
    return TabularPolicy(teacher.K, teacher.H, torch.log_softmax(mixed, -1))


def sequence_level_optimum(teacher: TabularPolicy, reference: TabularPolicy, lam: float) -> TabularPolicy:
    """The optimum of the sequence-level objective, ``π*(a) ∝ π_R(a)^(1−λ)·π_T(a)^λ``, as conditionals."""
    K, H = teacher.K, teacher.H
    log_g = (lam * teacher.log_probs() + (1 - lam) * reference.log_probs()).detach()  # (S, K)
    log_z_child = torch.zeros(num_states(K, H), K)  # log Z of the state reached by (s, a)
    for d in range(H - 1, -1, -1):
        lo, hi = depth_offset(K, d), depth_offset(K, d + 1)
        if d < H - 1:
            lo_c = depth_offset(K, d + 1)
            log_z_next = torch.logsumexp(
                log_g[lo_c : lo_c + K ** (d + 1)] + log_z_child[lo_c : lo_c + K ** (d + 1)], -1
            )
            log_z_child[lo:hi] = log_z_next.view(K**d, K)
    return TabularPolicy(K, H, torch.log_softmax(log_g + log_z_child, -1))


def sequence_kl(p: TabularPolicy, q: TabularPolicy) -> float:
    """``KL(p ‖ q)`` over complete sequences (exact, by enumeration)."""
    with torch.no_grad():
        lp, lq = sequence_logprobs(p), sequence_logprobs(q)
        return float((lp.exp() * (lp - lq)).sum())


def gopd_objective(student: TabularPolicy, teacher: TabularPolicy, reference: TabularPolicy, lam: float) -> float:
    """``J = E_{a~π_θ}[Σ_t λ·(lp_T − lp_R) − Σ_t (lp_θ − lp_R)]``, exactly, by enumeration."""
    with torch.no_grad():
        ls, lt, lr = sequence_logprobs(student), sequence_logprobs(teacher), sequence_logprobs(reference)
        return float((ls.exp() * (lam * (lt - lr) - (ls - lr))).sum())


def tree_prompts(n: int = 1) -> Prompts:
    """The tree's prompt (one token), repeated ``n`` times."""
    return Prompts([[PROMPT_TOKEN]] * n, ["<s>"] * n, ["default"] * n)


def enumerated_rollout(K: int, H: int) -> Rollout:
    """A :class:`Rollout` holding every completion once (for expectations by enumeration)."""
    seqs = all_sequences(K, H)
    n = len(seqs)
    ones = torch.ones(n, 1, dtype=torch.long)
    return Rollout(
        ones * PROMPT_TOKEN,
        ones,
        seqs,
        torch.ones_like(seqs),
        ["<s>"] * n,
        [" ".join(map(str, s.tolist())) for s in seqs],
        ["default"] * n,
    )
