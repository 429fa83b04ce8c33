"""Checkpoints: student weights (safetensors), optimizer, scheduler and RNG state; resume from the newest.

Layout: ``<out_dir>/checkpoints/step_000008/{student.safetensors, optimizer.pt, rng.pt, state.json}``.
A checkpoint directory is written under a temp name and renamed when complete, so a crash never leaves a
half-written checkpoint that resume would pick up. Loading uses ``torch.load(weights_only=True)``.

A sharded (FSDP) student is saved from its gathered full state dicts (the same full-weight file; the
optimizer state keyed by parameter name rather than position) and loaded into its shards; checkpoints
move between one-process, data-parallel and FSDP runs.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from gopd_lab.errors import ModelLoadError, NonFiniteError, writing
from gopd_lab.runio import atomic_write_json


def check_finite(weights: dict[str, torch.Tensor], where: str | Path) -> None:
    """Refuse to write non-finite weights (a NaN model must never look like a result)."""
    bad = [name for name, t in weights.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise NonFiniteError(
            f"refusing to write {where}: {len(bad)} weight tensor(s) hold NaN/inf (first: {bad[0]}); "
            "the last checkpoint written before is kept"
        )


def checkpoint_dir(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"step_{step:06d}"


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint (``state.json`` present), or None."""
    root = Path(out_dir) / "checkpoints"
    done = sorted(p for p in root.glob("step_*[0-9]") if (p / "state.json").exists()) if root.exists() else []
    return done[-1] if done else None


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler,
    generators: dict[str, torch.Generator],
    *,
    state: tuple[dict, dict] | None = None,
) -> Path:
    """``state``: the full ``(model, optimizer)`` state dicts of a sharded student
    (:meth:`~gopd_lab.scale.distributed.Distributed.full_state`), written instead of ``model`` / ``optimizer``'s own."""
    final = checkpoint_dir(out_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    check_finite(model.state_dict() if state is None else state[0], final)
    shutil.rmtree(tmp, ignore_errors=True)
    with writing(tmp):
        tmp.mkdir(parents=True)
        if state is None:
            save_model(model, str(tmp / "student.safetensors"))
            optimizer_state = optimizer.state_dict()
        else:
            weights, optimizer_state = state
            save_file(weights, str(tmp / "student.safetensors"))
        torch.save({"optimizer": optimizer_state, "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
        rng = {name: g.get_state() for name, g in generators.items()}
        rng["torch"] = torch.get_rng_state()
        torch.save(rng, tmp / "rng.pt")
        atomic_write_json(tmp / "state.json", {"step": step})
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, generators: dict[str, torch.Generator]
) -> int:
    """Restore everything saved by :func:`save_checkpoint`; returns the step it was taken at."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_optimizer_state_dict
    from torch.distributed.fsdp import FSDPModule

    sharded = isinstance(model, FSDPModule)
    full = StateDictOptions(full_state_dict=True, strict=False)
    file = path / "student.safetensors"
    try:
        if sharded:  # every process reads the full weights and keeps its shard
            weights = load_file(str(file))
            for names in _tied_names(model):  # a tied weight is stored under one of its names
                saved = [n for n in names if n in weights]
                weights.update({n: weights[saved[0]] for n in names if saved and n not in weights})
            missing, unexpected = set_model_state_dict(model, weights, options=full)
        else:
            missing, unexpected = load_model(model, str(file), strict=False)
    except (OSError, SafetensorError) as err:
        raise ModelLoadError(
            f"checkpoint file {file} cannot be read ({err}); it is damaged or truncated: delete {path} to resume "
            "from the checkpoint before it"
        ) from None
    except RuntimeError as err:  # torch's "size mismatch for ...": weights of another architecture
        if "size mismatch" not in str(err):
            raise
        first = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err))
        raise ModelLoadError(
            f"checkpoint {path} holds weights of another architecture than the student ({first}); resume with "
            "the student it was made with, or start a new out_dir"
        ) from None
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise ModelLoadError(
            f"checkpoint {path} does not match the student (missing {missing}, unexpected {unexpected}); "
            "resume with the same student and LoRA settings, or start a new out_dir"
        )
    opt = _read(path, "optimizer.pt")
    optimizer_state = opt["optimizer"]
    by_position = all(isinstance(p, int) for g in optimizer_state["param_groups"] for p in g["params"])
    if by_position and not sharded:
        optimizer.load_state_dict(optimizer_state)
    elif not optimizer_state["state"]:  # a stateless optimizer (plain SGD): its groups' settings are all there is
        for group, saved in zip(optimizer.param_groups, optimizer_state["param_groups"]):
            group.update({k: v for k, v in saved.items() if k != "params"})
    else:  # keyed by parameter name (written by an FSDP run), or loaded into one
        if by_position:
            optimizer_state = _keyed_by_name(optimizer_state, model)
        set_optimizer_state_dict(model, optimizer, optimizer_state, options=full)
    scheduler.load_state_dict(opt["scheduler"])
    rng = _read(path, "rng.pt")
    torch.set_rng_state(rng.pop("torch"))
    for name, state in rng.items():
        generators[name].set_state(state)
    return int(_read(path, "state.json")["step"])


def _read(path: Path, name: str):
    """One file of a checkpoint (``torch.load`` of tensors only, or JSON); a damaged one is a ModelLoadError
    naming it (an empty or truncated ``optimizer.pt`` was an ``EOFError`` / miniz traceback)."""
    file = path / name
    try:
        if name.endswith(".json"):
            data = json.loads(file.read_text(encoding="utf-8"))
            if not isinstance(data, dict) or "step" not in data:
                raise ValueError("no step")
            return data
        return torch.load(file, weights_only=True)
    except (OSError, EOFError, RuntimeError, ValueError, pickle.UnpicklingError) as err:
        raise ModelLoadError(
            f"checkpoint file {file} cannot be read ({type(err).__name__}: {str(err)[:120] or 'empty'}); it is damaged "
            f"or truncated: delete {path} to resume from the checkpoint before it"
        ) from None


def _tied_names(model: nn.Module) -> list[list[str]]:
    """Groups of parameter names that share one tensor (tied embeddings)."""
    by_param: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_param.setdefault(id(p), []).append(name)
    return [names for names in by_param.values() if len(names) > 1]


def _keyed_by_name(state: dict, model: nn.Module) -> dict:
    """``optimizer.state_dict()`` (parameters by position) → keyed by parameter name, as
    ``torch.distributed.checkpoint``'s full optimizer state dict is. The optimizer was built on the trainable
    parameters in ``model.parameters()`` order (see :func:`gopd_lab.loop.train.train`)."""
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    name = dict(enumerate(names))
    groups = [{**g, "params": [name[i] for i in g["params"]]} for g in state["param_groups"]]
    return {"state": {name[i]: v for i, v in state["state"].items()}, "param_groups": groups}
