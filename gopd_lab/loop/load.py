"""Load a run's models from its config: the student (LoRA adapters when asked), the teachers and references by
domain (a local checkpoint, ``zoo:<name>``, a :class:`~gopd_lab.scorers.remote.RemoteScorer` for an ``http://``
spec, or a registered teacher type ``<type>:<argument>``, :mod:`gopd_lab.teacher_types`), SDPO's self-teacher, and the vocabulary alignment between them."""

from __future__ import annotations

import copy

from torch import nn

from gopd_lab import teacher_types
from gopd_lab.config import ConfigError, RunConfig
from gopd_lab.config_checks import check_tokenizer_fits
from gopd_lab.errors import ModelLoadError
from gopd_lab.lm.models import (
    DEFAULT_DOMAIN,
    AdapterDisabled,
    Models,
    check_tokenizers,
    freeze,
    load_model,
    load_tokenizer,
    resolve_device,
    resolve_dtype,
)
from gopd_lab.lm.precision import student_dtypes
from gopd_lab.lm.vocab import Agreement, align_vocabularies, output_width
from gopd_lab.methods import get_method
from gopd_lab.scorers.openai_logprobs import SCHEME as OPENAI_SCHEME
from gopd_lab.scorers.openai_logprobs import openai_logprobs_teacher
from gopd_lab.scorers.remote import RemoteScorer, is_url
from gopd_lab.scorers.self_teacher import self_teacher


def openai_teacher(argument: str, load) -> object:
    """``openai:http://host:port/v1?model=…&tokenizer=…``: a teacher behind an OpenAI-compatible server (vLLM's),
    scored through its prompt log-probs (sampled and top-k estimators); a ``Scorer``, not a module."""
    return openai_logprobs_teacher(OPENAI_SCHEME + argument)


teacher_types.register_teacher_type("openai", openai_teacher)


def _by_domain(spec: str | dict[str, str]) -> dict[str, str]:
    return dict(spec) if isinstance(spec, dict) else {DEFAULT_DOMAIN: spec}


def load_models(cfg: RunConfig) -> Models:
    """Load every model a run needs. Each distinct path is loaded once and shared across domains; ``zoo:`` names
    resolve in the run's data world (``cfg.world``)."""
    from gopd_lab.tasks.arith import use_world  # here: `python -m gopd_lab.tasks.arith` runs it as __main__

    use_world(cfg.world)
    if not cfg.student:
        raise ConfigError("student is empty: give a hub id or a local checkpoint directory")
    method = get_method(cfg.method)
    needs_teacher = method.needs_teacher or cfg.expert_data == "teacher"
    if not cfg.teacher and needs_teacher:
        raise ConfigError(
            f"method={cfg.method!r} needs a teacher: give a hub id, a local checkpoint directory, or {{domain: path}}"
        )
    if (method.expert_source == "teacher" or cfg.expert_data == "teacher") and any(
        map(is_url, _by_domain(cfg.teacher).values())
    ):
        raise ConfigError(
            "a teacher given as a URL only scores tokens; offpolicy / expert_data='teacher' sample from the "
            "teacher, so give its checkpoint instead"
        )
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    tokenizer = load_tokenizer(cfg.student, trust_remote_code=cfg.trust_remote_code)
    student_dtype, autocast_dtype = student_dtypes(dtype, cfg.mixed_precision)
    student = load_model(
        cfg.student, role="student", device=device, dtype=student_dtype, trust_remote_code=cfg.trust_remote_code
    )
    check_tokenizer_fits(student, tokenizer, cfg.student)
    initial_student: nn.Module | None = None
    if cfg.lora_r > 0:
        student = _add_lora(student, cfg)

    cache: dict[str, nn.Module] = {}
    checked: dict[str, object] = {}  # path → its tokenizer's Agreement with the student's

    def scorer(path: str, role: str) -> nn.Module:
        nonlocal initial_student
        if path == "student":
            if role != "reference":
                raise ConfigError("only the reference may be 'student' (the student's initial weights)")
            if initial_student is None:  # in the student's own storage dtype (float32 under mixed precision) and,
                # like every scorer, run under the student's autocast: at step 0 it scores exactly as the student
                initial_student = AdapterDisabled(student) if cfg.lora_r > 0 else freeze(copy.deepcopy(student))
            return initial_student
        if teacher_types.split_spec(path) is not None:  # "<type>:<argument>": a registered factory builds it
            if path not in cache:
                try:
                    built = teacher_types.build(path, lambda spec: scorer(spec, role))
                except ValueError as err:
                    raise ConfigError(f"{role} {path!r}: {err}") from None
                if built is None:
                    raise ConfigError(teacher_types.unknown_type(path))
                if isinstance(built, nn.Module):
                    built = freeze(built.to(device))
                elif hasattr(built, "check_tokenizer"):  # a Scorer behind a server (openai:…): no weights here
                    built.check_tokenizer(tokenizer, cfg.student)
                cache[path] = built
            return cache[path]
        if is_url(path):  # a teacher/reference served by `python -m gopd_lab.scale.teacher_server`: no weights here
            if path not in cache:
                cache[path] = RemoteScorer(path, role=role)
                cache[path].check_tokenizer(tokenizer, cfg.student)
                cache[path].width = output_width(student)  # its per-state answers on the student's ids
            return cache[path]
        if path not in checked:
            checked[path] = check_tokenizers(
                tokenizer, load_tokenizer(path, trust_remote_code=cfg.trust_remote_code), cfg.student, path
            )
        if path not in cache:
            cache[path] = freeze(
                load_model(path, role=role, device=device, dtype=dtype, trust_remote_code=cfg.trust_remote_code)
            )
        return cache[path]

    if method.self_teacher:
        teachers = {DEFAULT_DOMAIN: self_teacher(student, cfg.sdpo_teacher)}
    elif cfg.teacher and needs_teacher:
        teachers = {d: scorer(p, "teacher") for d, p in _by_domain(cfg.teacher).items()}
    else:
        teachers = {}
    references = (
        {d: scorer(p, "reference") for d, p in _by_domain(cfg.reference).items()} if cfg.needs_reference else {}
    )
    others = {p: (cache[p], checked[p]) for p in checked if p in cache}
    if "student" in _by_domain(cfg.reference).values() and isinstance(initial_student, nn.Module):
        others["reference 'student'"] = (initial_student, Agreement())
    vocab = align_vocabularies(student, tokenizer.get_vocab(), others) if tokenizer is not None else None
    names = {f"teacher/{d}": p for d, p in _by_domain(cfg.teacher).items()}
    names.update({f"reference/{d}": p for d, p in _by_domain(cfg.reference).items()})
    return Models(
        student=student,
        tokenizer=tokenizer,
        teachers=teachers,
        references=references,
        names=names,
        vocab=vocab,
        autocast_dtype=autocast_dtype,
    )


def _add_lora(student: nn.Module, cfg: RunConfig) -> nn.Module:
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as err:  # pragma: no cover - exercised only without peft
        raise ModelLoadError("lora_r > 0 needs peft: pip install 'gopd-lab[lora]'") from err
    lora = LoraConfig(
        r=cfg.lora_r, lora_alpha=cfg.lora_alpha, target_modules=cfg.lora_target_modules, task_type="CAUSAL_LM"
    )
    return get_peft_model(student, lora)
