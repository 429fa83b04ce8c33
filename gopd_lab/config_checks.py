"""Checks of a :class:`~gopd_lab.config.RunConfig` that run before any model loads: every field's type, every
number finite, the ranges the method-specific checks in ``config.py`` do not cover, known task names, a batch
that divides over the launched processes and combinations that cannot train (:func:`check_combinations`). Two
checks need more than the config: :func:`check_device` (the device exists on this machine; run by ``train``
before any model loads, not at construction, so a GPU run's ``config.json`` still loads on a laptop) and
:func:`check_context` (every prompt plus ``max_new_tokens``, and every SFT target, fits the models' context;
run once the models are loaded). Each error names the field and what to give instead."""

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


def check_combinations(cfg) -> None:
    """Fields that are each valid but together train nothing or silently ignore one another (run after the
    method's own checks in ``RunConfig.__post_init__``)."""
    from gopd_lab.methods import get_method

    method = get_method(cfg.method)
    if cfg.samples_per_prompt < method.min_group:
        raise ConfigError(
            f"method={cfg.method!r} with samples_per_prompt={cfg.samples_per_prompt}: GRPO's advantage is a "
            "sample's reward minus its group's mean, so a group of one has advantage 0 and trains nothing; set "
            f"samples_per_prompt >= {method.min_group} (e.g. 4)"
        )
    if cfg.expert_data and (
        (method.samples_student and cfg.mu == 0) or (method.expert_source and cfg.expert_data != method.expert_source)
    ):
        raise ConfigError(
            f"expert_data={cfg.expert_data!r} is not read by method={cfg.method!r}"
            + (" with mu=0" if method.samples_student else f" (it trains on the {method.expert_source}'s samples)")
            + ": expert answers feed sft, or the SFT term of mu > 0 (chord); drop expert_data or change the method"
        )
    if isinstance(cfg.reference, dict) and not cfg.reference:
        raise ConfigError("reference is an empty dict; give {domain: path} or one path")
    if cfg.lora_r > 0 and not (
        cfg.lora_target_modules if isinstance(cfg.lora_target_modules, str) else list(cfg.lora_target_modules)
    ):
        raise ConfigError("lora_r > 0 with no lora_target_modules; give module names or 'all-linear'")
    if not 0.0 <= cfg.mu_valley <= 1.0:
        raise ConfigError(f"mu_valley must be in [0, 1] (a weight like mu), got {cfg.mu_valley}")
    if cfg.eval_seed < 0:
        raise ConfigError(f"eval_seed must be >= 0, got {cfg.eval_seed}")
    if cfg.task_names and (cfg.prompts if isinstance(cfg.prompts, str) else list(cfg.prompts)):
        raise ConfigError(
            "prompts and tasks are both given: with tasks the training prompts are the tasks' train splits and "
            "prompts would be ignored; give tasks (prompts with verifiers) or prompts, not both"
        )


def check_device(cfg) -> None:
    """``device`` names a device this torch can use (``cuda`` on a CPU-only torch is refused before any model
    loads, naming the field)."""
    import torch

    if cfg.device == "auto":
        return
    dev = torch.device(cfg.device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            why = (
                f"this torch ({torch.__version__}) is built without CUDA"
                if torch.version.cuda is None
                else "no CUDA GPU is visible (CUDA_VISIBLE_DEVICES, driver)"
            )
            raise ConfigError(
                f"device={cfg.device!r}, but {why}; use device='auto' or 'cpu' (or install a CUDA build of torch)"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"device={cfg.device!r}, but only {torch.cuda.device_count()} CUDA device(s) are visible "
                f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})"
            )
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ConfigError(f"device={cfg.device!r}, but MPS is not available here; use device='auto' or 'cpu'")
    elif dev.type != "cpu":
        raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, got {cfg.device!r}")


def _context_of(models) -> tuple[int | None, str]:
    """The smallest context (``max_position_embeddings``, as ``gopd_lab.lm.logprobs.max_context`` reads it) among
    the student and its local teachers/references (a served one checks its own)."""

    def max_context(model):
        return getattr(getattr(model, "config", None), "max_position_embeddings", None)

    named = [("the student", models.student)]
    for role, table in (("teacher", models.teachers), ("reference", models.references)):
        named += [(f"the {role} ({domain})", m) for domain, m in (table or {}).items()]
    known = [(c, who) for who, m in named if (c := max_context(m)) is not None]
    return min(known, key=lambda x: x[0]) if known else (None, "")


def check_context(cfg, collector) -> None:
    """Every training prompt plus ``max_new_tokens`` (methods that sample) and every SFT example (prompt plus
    answer plus EOS: ``sft``/``offpolicy`` batches, CHORD's μ term) fits the smallest context of the loaded models;
    a model given more positions than it has computes garbage without an error."""
    context, who = _context_of(collector.models)
    if context is None:
        return
    if collector.method.samples_student and len(collector.prompts):
        lengths = [len(ids) for ids in collector.prompts.ids]
        i = max(range(len(lengths)), key=lengths.__getitem__)
        if lengths[i] + cfg.max_new_tokens > context:
            raise ConfigError(
                f"prompt {i} ({collector.prompts.texts[i][:40]!r}...) is {lengths[i]} tokens; with "
                f"max_new_tokens={cfg.max_new_tokens} that is {lengths[i] + cfg.max_new_tokens} positions, beyond "
                f"{who}'s context of {context}; lower max_new_tokens or shorten/drop that prompt"
            )
    expert = collector.expert
    if expert is not None and expert.answers is not None and len(expert):
        tok = collector.models.tokenizer
        for i, (ids, answer) in enumerate(zip(expert.ids, expert.answers)):
            n = len(ids) + len(tok(answer, add_special_tokens=False)["input_ids"]) + 1  # + EOS
            if n > context:
                source = cfg.expert_data or ("the teacher's samples" if collector.method.expert_source else "tasks")
                raise ConfigError(
                    f"SFT example {i} of {source} (prompt {expert.texts[i][:40]!r}...) is {n} tokens with its "
                    f"answer, beyond {who}'s context of {context}; shorten or drop the example (the answer would be "
                    "trained past the positions the model has)"
                )


def check_tokenizer_fits(model, tokenizer, name: str) -> None:
    """Every id of ``tokenizer`` has a row in ``model``'s input embedding (a tokenizer with added tokens over an
    embedding that was not resized fails with an ``IndexError`` on the first such token, or silently on CUDA)."""
    get = getattr(model, "get_input_embeddings", None)
    weight = getattr(get() if get is not None else None, "weight", None)
    if weight is None or tokenizer is None:
        return
    rows = int(weight.shape[0])
    top = max(tokenizer.get_vocab().values(), default=-1)
    if top >= rows:
        raise ConfigError(
            f"the tokenizer of {name} has ids up to {top} ({len(tokenizer)} tokens), but the model's embedding has "
            f"{rows} rows: ids >= {rows} cannot be embedded. Use the tokenizer saved with this model, or resize the "
            "embedding (model.resize_token_embeddings(len(tokenizer))) and save both"
        )
