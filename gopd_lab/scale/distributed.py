"""Data-parallel and sharded (FSDP2) training with ``accelerate launch`` (any backend, gloo on CPU).

Each process samples and scores its shard of the global batch (whole prompts, so GRPO groups stay
together), the loss is normalised by the *global* number of tokens, and gradients are summed over
processes before clipping and the optimizer step: the update equals a one-process run on the global
batch. Only the main process writes run files and evaluates.

Under ``accelerate launch --use_fsdp`` the student is sharded with torch's FSDP2 (``fully_shard``): one
group per decoder layer plus the root (embeddings, final norm, LM head), so each process holds 1/N of
the student's parameters, gradients and optimizer state. Gradients are reduce-scattered as a sum (the
loss is already each process's share of the global token mean); ``clip_grad_norm_`` on the sharded
gradients gives the global norm. Rollouts and evaluation run on the gathered student
(:meth:`Distributed.full_params`: their number of forward calls differs between processes, which
per-layer all-gathers cannot follow). Teachers and references stay full copies in every process.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch import nn

from gopd_lab.config import ConfigError
from gopd_lab.methods import get_method

_UNSUPPORTED_LAUNCH_OPTIONS = {
    "FSDP_OFFLOAD_PARAMS": "--fsdp_offload_params",
    "FSDP_ACTIVATION_CHECKPOINTING": "--fsdp_activation_checkpointing",
}


def _flag(name: str) -> bool:
    return os.environ.get(name, "false").strip().lower() in ("1", "true", "yes")


def _check_fsdp(world: int, cfg) -> None:
    """Refuse an FSDP run that cannot work, saying what to do instead."""
    if world < 2:
        raise ConfigError(
            "FSDP (accelerate launch --use_fsdp) shards the student across processes and needs at least "
            f"2 of them, got {world}: launch with --num_processes N (N >= 2), or drop --use_fsdp for a "
            "one-process run"
        )
    for env, option in _UNSUPPORTED_LAUNCH_OPTIONS.items():
        if _flag(env):
            raise ConfigError(
                f"gopd-lab's FSDP does not support {option}; drop it (each process keeps its shard on its own device)"
            )
    if cfg is not None and cfg.lora_r > 0:
        raise ConfigError(
            "FSDP with LoRA (lora_r > 0) is not supported: LoRA's trainable state is already small and "
            "its reference runs the student's own base weights. Launch with --multi_gpu (data parallel) "
            "for LoRA, or set lora_r=0 to shard full fine-tuning"
        )
    if cfg is not None and get_method(cfg.method).self_teacher:
        raise ConfigError(
            "FSDP with method='sdpo' is not supported: its self-teacher is the student itself. Launch "
            "with --multi_gpu (data parallel) for SDPO"
        )


def reduce_device() -> torch.device:
    """Where a collective's tensor must live: the process's CUDA device under NCCL (it reduces CUDA tensors only),
    else the CPU (gloo)."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class Distributed:
    """The process group of an ``accelerate launch`` (a no-op single process otherwise).

    ``fsdp`` is True under ``accelerate launch --use_fsdp`` (the launcher sets ``ACCELERATE_USE_FSDP``);
    :meth:`shard_student` then applies FSDP2 to the student. With ``cfg`` an FSDP run that cannot work is
    refused here, before any model is loaded."""

    def __init__(self, cfg=None) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.fsdp = _flag("ACCELERATE_USE_FSDP")
        if self.fsdp:
            _check_fsdp(self.world, cfg)
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
        return items[self.rank * per : (self.rank + 1) * per]

    def sum(self, value: float) -> float:
        """Sum of a number over processes."""
        if self.world == 1:
            return value
        t = torch.tensor([float(value)], dtype=torch.float64, device=reduce_device())
        dist.all_reduce(t)
        return float(t)

    def sum_stats(self, stats: torch.Tensor) -> torch.Tensor:
        """Sum a 1-D tensor of batch statistics over processes (``lineage.Reduce``: REOPD's γ_b, A-G-OPD's λ)."""
        if self.world == 1:
            return stats
        t = stats.detach().to(device=reduce_device(), dtype=torch.float64).clone()
        dist.all_reduce(t)
        return t.cpu()

    def all_reduce_grads(self, params: list[torch.nn.Parameter]) -> None:
        """Sum every gradient over processes (the loss is already scaled by local/global tokens). Under FSDP
        the gradients are already summed (reduce-scattered) shards."""
        if self.world == 1 or self.fsdp:
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
        t = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64, device=reduce_device())
        dist.all_reduce(t)
        out = dict(metrics)
        for k, v in zip(keys, t.tolist()):
            out[k] = v if k in ("tokens", "loss") else v / self.world
        return out

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    # ------------------------------------------------------------------ FSDP
    def shard_student(self, student: nn.Module, cfg) -> None:
        """Apply FSDP2 in place: ``fully_shard`` on each decoder layer, then on the root (the rest: embeddings,
        final norm, LM head, tied or not). Gradients are reduced as a plain sum. A forward pre-hook on the
        decoder all-gathers the root group, because scoring runs the decoder and the LM head separately (not
        through the root's forward); FSDP reduce-scatters and reshards it after backward."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import FSDPModule, fully_shard

        _check_fsdp(self.world, cfg)
        decoder = getattr(student, "get_decoder", lambda: None)()
        layers = getattr(decoder, "layers", None)
        if not isinstance(layers, nn.ModuleList) or not len(layers):
            raise ConfigError(
                f"FSDP needs a Hugging Face decoder-only student (decoder layers at .model.layers); "
                f"{type(student).__name__} has none. Launch with --multi_gpu (data parallel) instead"
            )
        device = next(student.parameters()).device
        mesh = init_device_mesh(device.type, (self.world,))
        for layer in layers:
            fully_shard(layer, mesh=mesh)
        fully_shard(student, mesh=mesh)
        for module in student.modules():
            if isinstance(module, FSDPModule):
                module.set_gradient_divide_factor(1.0)  # a sum, not FSDP's default mean over processes
                module.set_force_sum_reduction_for_comms(True)  # plain SUM collectives (gloo has no PREMUL_SUM)
        # Make the CausalLM the root now (FSDP picks the first module to run forward), since the update's first
        # call may be the decoder alone.
        fully_shard.state(student)._lazy_init()
        decoder.register_forward_pre_hook(lambda *_: student.unshard())  # a no-op when already gathered
        local, total = self.param_numel(student)
        print(
            f"gopd-lab fsdp: process {self.rank}/{self.world} holds {local} of {total} student parameter elements",
            file=sys.stderr,
            flush=True,
        )

    @staticmethod
    def param_numel(model: nn.Module) -> tuple[int, int]:
        """``(elements this process holds, elements of the whole model)`` of the model's parameters."""
        local = total = 0
        for p in model.parameters():
            total += p.numel()
            local += p.to_local().numel() if hasattr(p, "to_local") else p.numel()
        return local, total

    @contextlib.contextmanager
    def full_params(self, model: nn.Module, when: bool = True) -> Iterator[None]:
        """Under FSDP (and ``when``): every group all-gathered (each process takes part) and kept so inside the
        block, then resharded. For sampling and evaluation, whose number of forward calls differs between
        processes (a batch stops at EOS; only the main process evaluates). A no-op otherwise."""
        if not (self.fsdp and when):
            yield
            return
        from torch.distributed.fsdp import FSDPModule

        groups = [m for m in model.modules() if isinstance(m, FSDPModule)]
        for m in groups:
            m.unshard()
        model.set_reshard_after_forward(False)
        try:
            yield
        finally:
            model.set_reshard_after_forward(True)  # the layers' default
            model.set_reshard_after_forward(False, recurse=False)  # the root's default
            for m in groups:
                m.reshard()

    def full_state(self, model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict] | None:
        """Under FSDP: the full model and optimizer state dicts on CPU, gathered with every process taking part
        (only the main process gets them filled; keys are parameter names; a tied weight appears once, under its
        first name, as ``save_pretrained`` writes it). None otherwise."""
        if not self.fsdp:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        weights, optim = get_state_dict(
            model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        tied = set(dict(model.named_parameters(remove_duplicate=False))) - set(dict(model.named_parameters()))
        return {k: v for k, v in weights.items() if k not in tied}, optim
