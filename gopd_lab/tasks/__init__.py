"""Prompt sources with verifiers and feedback, looked up by name.

``get_task("add")`` and ``get_task("mul")`` load the embedded arithmetic domains (train = the
distillation prompts); ``get_task("add-rl")`` has the teachers' RL prompts as its train split; a path to a
``.jsonl`` file loads real math data with ``load_math_jsonl`` (domain = the file's stem); a name
``hf:<path or hub id>[:config][?prompt_field=...&answer_field=...&verifier=math]`` loads a Hugging Face dataset
(:mod:`gopd_lab.tasks.hfdata`); your own tasks join the registry with ``register_task`` and whole families of
names with ``register_task_scheme``::

    register_task("parity", lambda: make_task("parity", train=[("0110 is ", "even")]))
    tasks = load_tasks(["add", "mul", "parity"])  # {"add": Task, "mul": Task, "parity": Task}
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path

from gopd_lab.errors import ConfigError, UserError
from gopd_lab.tasks.base import Example, Task, data_dir, exact_match, make_task
from gopd_lab.tasks.hfdata import SCHEME as HF_SCHEME
from gopd_lab.tasks.hfdata import check_hf_name, load_hf_dataset, parse_hf_name
from gopd_lab.tasks.mathjsonl import (
    extract_answer,
    is_plain_layout,
    load_math_jsonl,
    math_verifier,
    normalize_answer,
)

__all__ = [
    "ARITH_TASKS",
    "Example",
    "Task",
    "available_tasks",
    "check_task_name",
    "data_dir",
    "exact_match",
    "extract_answer",
    "get_task",
    "load_math_jsonl",
    "load_tasks",
    "make_task",
    "math_verifier",
    "normalize_answer",
    "register_task",
    "register_task_scheme",
]

ARITH_TASKS = ("add", "mul")


class UnknownTaskError(ConfigError, KeyError):
    """A task name that is neither registered nor a ``.jsonl`` file (a ``KeyError`` too, for older callers)."""

    __str__ = Exception.__str__  # the message as written, not KeyError's quoted repr


def _load_arith(domain: str, train_split: str = "train") -> Task:
    """Load an embedded arithmetic domain.

    ``arith`` is imported here rather than at the top so that ``python -m gopd_lab.tasks.arith``
    does not find its own module already imported by this package.
    """
    from gopd_lab.tasks.arith import load_arith_task

    return load_arith_task(domain, train_split=train_split)


_REGISTRY: dict[str, Callable[[], Task]] = {name: partial(_load_arith, name) for name in ARITH_TASKS}
_REGISTRY.update({f"{name}-rl": partial(_load_arith, name, "rl") for name in ARITH_TASKS})  # teachers' RL prompts


def register_task(name: str, factory: Callable[[], Task]) -> None:
    """Make ``get_task(name)`` return ``factory()``; replaces an earlier task of the same name."""
    _REGISTRY[name] = factory


def _hf_task(name: str, tokenizer=None) -> Task:
    """The task an ``hf:`` name points at (see :mod:`gopd_lab.tasks.hfdata`)."""
    spec = parse_hf_name(name)
    options = {k: v for k, v in spec.options.items() if k != "domain"}
    dataset = load_hf_dataset(spec)  # its errors name the dataset already
    try:
        return Task.from_dataset(dataset, domain=spec.domain, tokenizer=tokenizer, **options)
    except ValueError as err:
        if isinstance(err, UserError):
            raise
        raise ConfigError(f"task {name!r}: {err}") from None


_SCHEMES: dict[str, tuple[Callable[..., Task], Callable[[str], None] | None]] = {HF_SCHEME: (_hf_task, check_hf_name)}


def register_task_scheme(prefix: str, factory: Callable[..., Task], check: Callable[[str], None] | None = None) -> None:
    """Make every name starting with ``prefix`` a task: ``get_task(name)`` returns ``factory(name, tokenizer=...)``
    (the tokenizer is the student's when train or eval loads it, for chat templates; ``None`` otherwise).
    ``check(name)``, when given, refuses a bad name before any model loads (a ``ConfigError``)."""
    _SCHEMES[prefix] = (factory, check)


def _scheme(name: str):
    return next((entry for prefix, entry in _SCHEMES.items() if name.startswith(prefix)), None)


def check_task_name(name: str) -> None:
    """Refuse a task name that is neither registered, nor an existing ``.jsonl`` file, nor a valid scheme name
    (``hf:...``), with one clear error; loads nothing."""
    if name in _REGISTRY:
        return
    scheme = _scheme(name)
    if scheme is not None:
        if scheme[1] is not None:
            scheme[1](name)
        return
    path = Path(name)
    if path.suffix == ".jsonl":
        if not path.is_file():
            raise ConfigError(f"tasks: the task file {name} does not exist")
        return
    raise UnknownTaskError(
        f"tasks: unknown task {name!r}; registered tasks are {available_tasks()} (or give a .jsonl path, an "
        f"hf:<dataset> name, or register_task({name!r}, factory) in a module named in plugins=[...])"
    )


def available_tasks() -> list[str]:
    """Return the registered task names, sorted."""
    return sorted(_REGISTRY)


def get_task(name: str, *, tokenizer=None) -> Task:
    """Return the task registered as ``name``, the task of a scheme name (``hf:...``; ``tokenizer`` renders
    chat-format rows), or load ``name`` as a math JSONL file path.

    GSM8K / MATH rows are checked by ``math_verifier``; a file of plain ``prompt``/``answer`` rows only is
    checked by ``exact_match`` (for the lenient final-answer check on such a file, register
    ``load_math_jsonl(path)`` under a name).

    Raises ``KeyError`` listing the known names when ``name`` is neither.
    """
    if name in _REGISTRY:
        return _REGISTRY[name]()
    scheme = _scheme(name)
    if scheme is not None:
        return scheme[0](name, tokenizer=tokenizer)
    path = Path(name)
    if path.suffix == ".jsonl" and path.is_file():
        if is_plain_layout(path):  # prompt/answer rows: exact match, as for any prompt/answer task
            return load_math_jsonl(path, domain=path.stem, verifier=exact_match)
        return load_math_jsonl(path, domain=path.stem)
    raise UnknownTaskError(
        f"unknown task {name!r}: registered tasks are {available_tasks()}; "
        f"pass an existing .jsonl path or call register_task({name!r}, factory) first"
    )


def load_tasks(names: Iterable[str], *, tokenizer=None) -> dict[str, Task]:
    """Return ``{task.domain: task}`` for ``names`` (see ``get_task``); domains must be distinct."""
    tasks: dict[str, Task] = {}
    for name in names:
        task = get_task(name, tokenizer=tokenizer)
        if task.domain in tasks:
            raise ConfigError(f"two tasks share the domain {task.domain!r}; give each a distinct name")
        tasks[task.domain] = task
    return tasks


def _load_chain(train_split: str = "train") -> Task:
    from gopd_lab.tasks.chain import load_chain_task

    return load_chain_task(train_split)


_REGISTRY["chain"] = _load_chain  # the chain domain (gopd_lab.tasks.chain): addition with its work written out
_REGISTRY["chain-rl"] = partial(_load_chain, "rl")
