"""Data-parallel training with ``accelerate launch`` (any backend, gloo on CPU).

Each process samples and scores its shard of the global batch (whole prompts, so GRPO groups stay
together), the loss is normalised by the *global* number of tokens, and gradients are all-reduced
(summed) before clipping and the optimizer step: the update equals a one-process run on the global
batch. Only the main process writes run files and evaluates.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


class Distributed:
    """The process group of an ``accelerate launch`` (a no-op single process otherwise)."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        if self.world > 1 and not dist.is_initialized():
            from accelerate import PartialState

            PartialState()  # reads the launcher's environment and initialises the process group
        self.rank = dist.get_rank() if self.world > 1 else 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items: list) -> list:
        """This process's contiguous share of ``items`` (the global batch's prompts)."""
        if self.world == 1:
            return items
        if len(items) % self.world:
            raise ValueError(f"batch_size={len(items)} must be divisible by the {self.world} processes")
        per = len(items) // self.world
        return items[self.rank * per:(self.rank + 1) * per]

    def sum(self, value: float) -> float:
        """Sum of a number over processes."""
        if self.world == 1:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t)

    def all_reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Sum every gradient over processes (the loss is already scaled by local/global tokens)."""
        if self.world == 1:
            return
        for p in params:
            if p.grad is not None:
                dist.all_reduce(p.grad)

    def mean_metrics(self, metrics: dict) -> dict:
        """Average numeric metrics over processes; ``tokens`` and ``loss`` (already each process's share of
        the global token mean) are summed, so both are exact."""
        if self.world == 1:
            return metrics
        keys = [k for k, v in metrics.items() if isinstance(v, (int, float))]
        t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
        dist.all_reduce(t)
        out = dict(metrics)
        for k, v in zip(keys, t.tolist()):
            out[k] = v if k in ("tokens", "loss") else v / self.world
        return out

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()
