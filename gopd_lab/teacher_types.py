"""The teacher-type registry: a teacher (or reference) spec ``"<type>:<argument>"`` names a registered factory
that builds the scoring model from its argument, e.g. ``teacher="ensemble:zoo:teacher-add,zoo:teacher-mul"``.

A factory is ``factory(argument, load) -> nn.Module``: ``load(spec)`` loads another spec the ordinary way
(a checkpoint, ``zoo:<name>``, a URL or another registered type; tokenizer-checked and cached by the run's
loader, ``gopd_lab.loop.load``). The module it returns is scored like a Hugging Face model: its forward takes
``input_ids``, ``attention_mask``, ``position_ids``, ``use_cache``, ``logits_to_keep`` and returns an object with
``.logits`` ``(B, T, V)``. ``RunConfig`` validation refuses an unregistered ``<type>:`` (the message names the
registered ones and ``plugins``, the way a user's module registers its own type before validation).

Specs without a registered type are left to the loader: ``zoo:<name>``, ``http(s)://…``, ``student`` (the
reference), hub ids and local directories.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from types import SimpleNamespace

import torch
from torch import nn

Loader = Callable[[str], nn.Module]
TeacherFactory = Callable[[str, Loader], nn.Module]

TEACHER_TYPES: dict[str, TeacherFactory] = {}
"""Every registered teacher type by name (the ``<type>`` before the first ``:``), in registration order."""

BUILT_IN_SCHEMES = ("zoo", "http", "https")
"""Prefixes the loader itself resolves (the zoo, a teacher server); not teacher types."""

LOADER_TYPES = ("openai",)
"""Teacher types the run's loader registers when it is imported (``gopd_lab.loop.load``: ``openai:<url>`` is a
teacher behind an OpenAI-compatible server, :mod:`gopd_lab.scorers.openai_logprobs`, which this module, below the
scorers, cannot import); a config naming them is valid before the loader is imported."""

_TYPE = re.compile(r"^([A-Za-z][A-Za-z0-9_\-]*):(?!//)(.*)$", re.S)


def register_teacher_type(name: str, factory: TeacherFactory | None = None):
    """Register ``factory`` under ``name`` (``register_teacher_type("ensemble", make)``, or as a decorator
    ``@register_teacher_type("ensemble")``). The same factory again is a no-op; another under a taken name
    (or a built-in scheme) is refused."""

    def add(fn: TeacherFactory) -> TeacherFactory:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_\-]*", name) or name in BUILT_IN_SCHEMES:
            raise ValueError(f"a teacher type needs a name like 'ensemble' (not {BUILT_IN_SCHEMES}), got {name!r}")
        old = TEACHER_TYPES.get(name)
        if old is not None and getattr(old, "__qualname__", old) != getattr(fn, "__qualname__", fn):
            raise ValueError(f"teacher type {name!r} is already registered by {old!r}")
        TEACHER_TYPES[name] = fn
        return fn

    return add if factory is None else add(factory)


def split_spec(spec: str) -> tuple[str, str] | None:
    """``(type, argument)`` of a spec ``"<type>:<argument>"`` whose prefix is not a built-in scheme, else None
    (the type may be unregistered: :func:`unknown_type` says so)."""
    match = _TYPE.match(spec) if isinstance(spec, str) else None
    if match is None or match.group(1) in BUILT_IN_SCHEMES:
        return None
    return match.group(1), match.group(2)


def unknown_type(spec: str) -> str | None:
    """A reason ``spec`` names a teacher type nobody registered, or None."""
    parts = split_spec(spec)
    if parts is None or parts[0] in TEACHER_TYPES or parts[0] in LOADER_TYPES:
        return None
    return (
        f"teacher type {parts[0]!r} (in {spec!r}) is not registered; registered: {tuple(TEACHER_TYPES)}. "
        "Register it with gopd_lab.teacher_types.register_teacher_type in a module named in plugins=[...]"
    )


def build(spec: str, load: Loader) -> nn.Module | None:
    """The model of a registered-type spec (its factory's), or None when ``spec`` has no registered type."""
    parts = split_spec(spec)
    if parts is None or parts[0] not in TEACHER_TYPES:
        return None
    return TEACHER_TYPES[parts[0]](parts[1], load)


class Ensemble(nn.Module):
    """The mixture of teachers ``π(y|s) = (1/n) Σ_i π_i(y|s)``: its logits are ``logsumexp_i log π_i − log n``
    (log-probabilities, so its own log-softmax is the mixture's). The teachers must share the vocabulary."""

    def __init__(self, teachers: list[nn.Module]):
        super().__init__()
        self.teachers = nn.ModuleList(teachers)

    @property
    def config(self):
        return getattr(self.teachers[0], "config", None)

    def forward(self, input_ids, attention_mask=None, logits_to_keep=0, **kwargs):
        logps = [
            torch.log_softmax(
                t(
                    input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=logits_to_keep, **kwargs
                ).logits.float(),
                dim=-1,
            )  # (B, T', V)
            for t in self.teachers
        ]
        widths = {lp.shape[-1] for lp in logps}
        if len(widths) > 1:
            raise ValueError(f"an ensemble's teachers must share one vocabulary, got output widths {sorted(widths)}")
        logits = torch.logsumexp(torch.stack(logps), dim=0) - math.log(len(logps))  # (B, T', V)
        return SimpleNamespace(logits=logits)


def ensemble(argument: str, load: Loader) -> nn.Module:
    """``ensemble:<spec>,<spec>,…``: the mixture (:class:`Ensemble`) of the comma-separated teachers."""
    specs = [s.strip() for s in argument.split(",") if s.strip()]
    if len(specs) < 2:
        raise ValueError(f"ensemble: needs two or more comma-separated teachers, got {argument!r}")
    return Ensemble([load(s) for s in specs])


register_teacher_type("ensemble", ensemble)
