"""The per-state ``(N, V)`` targets of ``full`` and ``jsd`` kept lazy: formed chunk by chunk in the update from the
teacher's (and reference's) final hidden states and frozen LM heads, never as one ``(N, V)`` float32 tensor
(:data:`gopd_lab.scorers.score.LAZY_TARGET_BYTES` decides when)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gopd_lab.lm.logprobs import chunk_rows
from gopd_lab.objectives import target_logprobs


@dataclass
class LazyTarget:
    """The ``full`` estimator's log-target ``normalise(π_R^(1−λ)·π_T^λ)`` at ``N`` states, ``(N, V)``, formed on
    demand from the teacher's (and reference's) final hidden states ``(N, H)`` and their frozen LM heads.

    The update reads it chunk by chunk inside :func:`~gopd_lab.lm.logprobs.student_kl_forward`, so the scoring
    stage keeps ``N × H`` features instead of an ``N × V`` float32 target (at V = 151,936 and H = 2,048, 74×
    less); the teacher's head then runs once more, in the update."""

    feats_t: Tensor
    head_t: nn.Module
    lam: Tensor
    """``(N, 1)`` λ of each state's sample."""
    feats_r: Tensor | None
    head_r: nn.Module | None
    width: int

    @property
    def shape(self) -> tuple[int, int]:
        return (self.feats_t.shape[0], self.width)

    @property
    def device(self) -> torch.device:
        return self.feats_t.device

    def __len__(self) -> int:
        return self.feats_t.shape[0]

    def rows_per_chunk(self, chunk_tokens: int = 0) -> int:
        """States per chunk when read chunk by chunk: as in scoring (``chunk_rows``)."""
        return chunk_rows(self.width, chunk_tokens, self.device)

    def __getitem__(self, index: slice) -> LazyTarget:
        r = None if self.feats_r is None else self.feats_r[index]
        return LazyTarget(self.feats_t[index], self.head_t, self.lam[index], r, self.head_r, self.width)

    def rows(self, start: int, stop: int) -> Tensor:
        """The float32 log-target of states ``start:stop``, ``(stop − start, V)``."""
        return self.take(slice(start, stop))

    @torch.no_grad()
    def take(self, index: slice | Tensor) -> Tensor:
        """The float32 log-target of the states ``index`` (a slice or a ``(n,)`` index tensor), ``(n, V)``."""
        logp_t = torch.log_softmax(self.head_t(self.feats_t[index]).float(), -1)
        logp_r = None
        if self.head_r is not None:
            logp_r = torch.log_softmax(self.head_r(self.feats_r[index]).float(), -1)
        return target_logprobs(logp_t, logp_r, self.lam[index])

    def dense(self, chunk_tokens: int = 0) -> Tensor:
        """The whole ``(N, V)`` float32 target (for paths that cannot read it chunk by chunk), written chunk by
        chunk into one preallocated tensor."""
        out = self.feats_t.new_empty(len(self), self.width, dtype=torch.float32)
        n = chunk_rows(self.width, chunk_tokens, self.feats_t.device)
        for i in range(0, len(self), n):
            out[i : i + n] = self.rows(i, min(i + n, len(self)))
        return out


@dataclass
class GroupedTarget:
    """A per-state target ``(N, V)`` whose rows come from several parts (one per teacher/reference pair of the
    batch, each a :class:`LazyTarget` or a dense tensor): state ``i`` is row ``local[i]`` of part ``group[i]``.
    Read chunk by chunk like a :class:`LazyTarget` (``rows``), so no ``(N, V)`` tensor is formed."""

    parts: list
    group: Tensor
    """``(N,)`` the part of each state."""
    local: Tensor
    """``(N,)`` its row in that part."""
    width: int

    @classmethod
    def of(cls, lazy_parts: list[tuple[LazyTarget, Tensor]], dense: Tensor | None, n: int) -> GroupedTarget:
        """From ``[(part, dest)]`` (``dest`` ``(n_g,)``: where the part's rows go in ``N``) and the dense rows the
        other groups wrote into ``dense`` ``(N, V)`` (None when every group stayed lazy)."""
        device = lazy_parts[0][1].device
        group = torch.full((n,), -1, dtype=torch.long, device=device)
        local = torch.arange(n, device=device)
        parts: list = []
        if dense is not None:
            group.zero_()  # part 0: the dense rows, at their own index (rows of lazy groups are overwritten)
            parts.append(dense)
        for part, dest in lazy_parts:
            group[dest] = len(parts)
            local[dest] = torch.arange(len(dest), device=device)
            parts.append(part)
        return cls(parts, group, local, lazy_parts[0][0].width)

    @property
    def shape(self) -> tuple[int, int]:
        return (len(self.group), self.width)

    @property
    def device(self) -> torch.device:
        return self.group.device

    def __len__(self) -> int:
        return len(self.group)

    def rows_per_chunk(self, chunk_tokens: int = 0) -> int:
        """States per chunk when read chunk by chunk: as in scoring (``chunk_rows``)."""
        return chunk_rows(self.width, chunk_tokens, self.device)

    def __getitem__(self, index: slice) -> GroupedTarget:
        return GroupedTarget(self.parts, self.group[index], self.local[index], self.width)

    @torch.no_grad()
    def rows(self, start: int, stop: int) -> Tensor:
        """The float32 log-target of states ``start:stop``, ``(stop − start, V)``."""
        group, local = self.group[start:stop], self.local[start:stop]
        out = torch.empty((len(group), self.width), dtype=torch.float32, device=group.device)
        for g, part in enumerate(self.parts):
            sel = (group == g).nonzero().flatten()  # (n_g,) rows of this chunk in part g
            if sel.numel():
                idx = local[sel]
                out[sel] = part.take(idx) if isinstance(part, LazyTarget) else part[idx].float()
        return out

    def dense(self, chunk_tokens: int = 0) -> Tensor:
        """The whole ``(N, V)`` float32 target, written chunk by chunk into one preallocated tensor."""
        out = torch.empty(self.shape, dtype=torch.float32, device=self.group.device)
        n = chunk_rows(self.width, chunk_tokens, self.group.device)
        for i in range(0, len(self), n):
            out[i : i + n] = self.rows(i, min(i + n, len(self)))
        return out
