"""Checks of a :class:`~gopd_lab.config.RunConfig` that run before any model loads: every field's type, every
number finite, the ranges the method-specific checks in ``config.py`` do not cover, known task names and a
batch that divides over the launched processes. Each error names the field and what to give instead."""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any

from gopd_lab.errors import ConfigError


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _str_list(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v)


def _str_dict(v: Any, values) -> bool:
    return isinstance(v, dict) and all(isinstance(k, str) and values(x) for k, x in v.items())


_TYPES = {
    "int": (_is_int, "an integer"),
    "float": (_is_number, "a number"),
    "float | None": (lambda v: v is None or _is_number(v), "a number or None"),
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "str | list[str]": (lambda v: isinstance(v, str) or _str_list(v), "a string or a list of strings"),
    "list[str] | str": (lambda v: isinstance(v, str) or _str_list(v), "a string or a list of strings"),
    "str | dict[str, str]": (
        lambda v: isinstance(v, str) or _str_dict(v, lambda x: isinstance(x, str)),
        "a string or a {domain: string} mapping",
    ),
    "float | dict[str, float]": (
        lambda v: _is_number(v) or _str_dict(v, _is_number),
        "a number or a {domain: number} mapping",
    ),
    "dict[str, Any]": (lambda v: isinstance(v, dict), "a mapping"),
}


def _numbers(value: Any) -> list[float]:
    if _is_number(value):
        return [value]
    if isinstance(value, dict):
        return [x for x in value.values() if _is_number(x)]
    return []


def check_types(cfg) -> None:
    """Each field holds its annotated type (``batch_size=2.5``, ``lr="fast"`` are refused) and every number in
    it is finite (NaN / inf would train on garbage or switch a term off)."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        check = _TYPES.get(str(f.type))
        if check is not None and not check[0](value):
            raise ConfigError(f"{f.name} must be {check[1]}, got {value!r} ({type(value).__name__})")
        if any(not math.isfinite(x) for x in _numbers(value)):
            raise ConfigError(f"{f.name} must be finite, got {value!r}")


def check_ranges(cfg) -> None:
    """Ranges of the fields whose own checks in ``RunConfig.__post_init__`` do not bound them."""
    if cfg.max_grad_norm is not None and cfg.max_grad_norm <= 0:
        raise ConfigError(
            f"max_grad_norm must be > 0 or None (no clipping), got {cfg.max_grad_norm}; a limit <= 0 would "
            "flip or zero every gradient"
        )
    if cfg.weight_decay < 0:
        raise ConfigError(f"weight_decay must be >= 0, got {cfg.weight_decay}")
    if cfg.seed < 0:
        raise ConfigError(f"seed must be >= 0, got {cfg.seed}")
    if cfg.lora_alpha <= 0:
        raise ConfigError(f"lora_alpha must be > 0, got {cfg.lora_alpha}")
    if cfg.device != "auto":
        import torch

        try:
            torch.device(cfg.device)
        except (RuntimeError, ValueError):
            raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {cfg.device!r}") from None
    if not str(cfg.out_dir).strip():
        raise ConfigError("out_dir is empty; give the run directory")
    if cfg.resume and getattr(cfg, "overwrite", False):
        raise ConfigError("resume=True and overwrite=True contradict each other: continue the run or replace it")
    try:
        json.dumps(cfg.extra, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise ConfigError(
            f"extra must hold JSON values with finite numbers (it is saved in config.json): {err}"
        ) from None


def check_tasks(cfg) -> None:
    """Every name in ``tasks`` is a registered task, an existing ``.jsonl`` file or a valid ``hf:`` name."""
    from gopd_lab.tasks import check_task_name

    for name in cfg.task_names:
        check_task_name(name)


def check_world(cfg) -> None:
    """Under ``accelerate launch`` (``WORLD_SIZE`` set) the global batch must divide over the processes, and the
    vLLM backend (one engine, whole weights) is refused."""
    world = os.environ.get("WORLD_SIZE", "1")
    world = int(world) if world.isdigit() else 1
    if (
        world > 1 and cfg.rollout_backend == "vllm"
    ):  # also checked where the engine starts (gopd_lab.scale.vllm_rollout)
        raise ConfigError(
            f"rollout_backend='vllm' runs in one process, but {world} were launched (WORLD_SIZE={world}); "
            "launch one process, or use rollout_backend='hf' for data-parallel or FSDP runs"
        )
    if world > 1 and cfg.batch_size % world:
        raise ConfigError(
            f"batch_size={cfg.batch_size} must be divisible by the {world} launched processes "
            f"(e.g. batch_size={max(world, cfg.batch_size // world * world)})"
        )


def check_trackers(cfg) -> None:
    """Each tracker of ``report_to`` is installed (found without importing it), so a missing one stops the run
    before ``overwrite=True`` clears the old run or any model loads."""
    import importlib.util
    import sys

    for name in cfg.report_targets:
        if name not in ("tensorboard", "trackio", "wandb"):
            continue  # an unknown name: RunConfig's own check names the valid ones
        if name in sys.modules:
            found = sys.modules[name] is not None
        else:
            try:
                found = importlib.util.find_spec(name) is not None
            except (ImportError, ValueError):
                found = False
        if not found:
            raise ConfigError(
                f"report_to={name!r} needs the {name} package, which is not installed; "
                f"install it with: pip install 'gopd-lab[{name}]' (or drop it from report_to)"
            )


def check_config(cfg) -> None:
    check_types(cfg)
    check_ranges(cfg)
    check_tasks(cfg)
    check_world(cfg)
    check_trackers(cfg)
