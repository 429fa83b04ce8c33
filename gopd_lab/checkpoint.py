"""Checkpoints: student weights (safetensors), optimizer, scheduler and RNG state; resume from the newest.

Layout: ``<out_dir>/checkpoints/step_000008/{student.safetensors, optimizer.pt, rng.pt, state.json}``.
A checkpoint directory is written under a temp name and renamed when complete, so a crash never leaves a
half-written checkpoint that resume would pick up. Loading uses ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from .runio import atomic_write_json


def checkpoint_dir(out_dir: str | Path, step: int) -> Path:
    return Path(out_dir) / "checkpoints" / f"step_{step:06d}"


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    """The newest complete checkpoint (``state.json`` present), or None."""
    root = Path(out_dir) / "checkpoints"
    done = sorted(p for p in root.glob("step_*") if (p / "state.json").exists()) if root.exists() else []
    return done[-1] if done else None


def save_checkpoint(out_dir: str | Path, step: int, model: nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler, generators: dict[str, torch.Generator]) -> Path:
    final = checkpoint_dir(out_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "student.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, tmp / "optimizer.pt")
    rng = {name: g.get_state() for name, g in generators.items()}
    rng["torch"] = torch.get_rng_state()
    torch.save(rng, tmp / "rng.pt")
    atomic_write_json(tmp / "state.json", {"step": step})
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    return final


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
                    generators: dict[str, torch.Generator]) -> int:
    """Restore everything saved by :func:`save_checkpoint`; returns the step it was taken at."""
    missing, unexpected = load_model(model, str(path / "student.safetensors"), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise RuntimeError(f"checkpoint {path} does not match the student (missing {missing}, unexpected {unexpected}); "
                           "resume with the same student and LoRA settings, or start a new out_dir")
    opt = torch.load(path / "optimizer.pt", weights_only=True)
    optimizer.load_state_dict(opt["optimizer"])
    scheduler.load_state_dict(opt["scheduler"])
    rng = torch.load(path / "rng.pt", weights_only=True)
    torch.set_rng_state(rng.pop("torch"))
    for name, state in rng.items():
        generators[name].set_state(state)
    return int(json.loads((path / "state.json").read_text())["step"])
