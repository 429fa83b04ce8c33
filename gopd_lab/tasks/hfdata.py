"""Hugging Face datasets as task rows, and task names that load them (``hf:openai/gsm8k:main``).

``Task.from_dataset(ds, domain=..., ...)`` (:mod:`gopd_lab.tasks.base`) reads a ``datasets.Dataset`` or
``DatasetDict`` through :func:`dataset_rows`: one row per dataset row (a question listed twice with two
rationales is two rows), prompt/answer columns or chat-format ``messages`` rendered by the tokenizer's chat
template, the dataset's own ``validation`` / ``test`` split for evaluation (a held-out fraction only when it has
neither), GSM8K's calculator notes stripped.

A task name ``hf:<path or hub id>[:config][?key=value&...]`` loads a dataset by name, so it works wherever a
task name does (``--tasks``, a YAML config, a sweep, ``accelerate launch``)::

    hf:openai/gsm8k:main?prompt_field=question&verifier=math
    hf:./my_saved_dataset?domain=mine               (a directory written by Dataset.save_to_disk)
    hf:./my_json_dir?eval_split=test                 (train.jsonl / test.jsonl read by load_dataset)

Keys: ``prompt_field``, ``answer_field``, ``verifier`` (``exact`` / ``math``), ``verifier_field``, ``domain``
(default: the last part of the path), ``eval_split``, ``test_size``, ``seed``, ``revision``. ``datasets`` is an
optional extra (``pip install 'gopd-lab[datasets]'``), imported only when such a name is loaded. This module
imports no other task module but :mod:`gopd_lab.tasks.answers` (``base`` builds the task from its rows).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qsl

from gopd_lab.errors import ConfigError, DataError
from gopd_lab.tasks.answers import (
    Feedback,
    Verifier,
    exact_match,
    expected_got,
    math_feedback,
    math_verifier,
    strip_calculator,
)

VERIFIERS = ("exact", "math")
EVAL_SPLITS = ("validation", "test")
"""The splits a ``DatasetDict`` is evaluated on, in order of preference (the first one it has)."""
SCHEME = "hf:"


class Row(NamedTuple):
    """One dataset row as a task row: the prompt text, the reference answer, the row's verifier name (or None)."""

    prompt: str
    answer: str
    verifier: str | None = None


def resolve_verifier(verifier: Verifier | str | None, feedback: Feedback | None = None) -> tuple[Verifier, Feedback]:
    """``"exact"`` (the default), ``"math"`` (final-answer checking, :mod:`gopd_lab.tasks.answers`) or a
    callable ``(completion, answer) -> bool``, with its feedback."""
    if verifier is None or verifier == "exact":
        return exact_match, feedback or expected_got
    if verifier == "math":
        return math_verifier, feedback or math_feedback
    if callable(verifier):
        return verifier, feedback or expected_got
    raise ValueError(
        f"verifier must be one of {VERIFIERS} or a callable (completion, answer) -> bool, got {verifier!r}"
    )


def _text(value: Any, what: str) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise ValueError(f"{what} must be text or a number, got {type(value).__name__}")
    return value


def _chat(messages: Any, tokenizer, where: str) -> tuple[str, str]:
    """``(prompt, answer)`` of a chat row: every message but the last through the chat template (with the
    generation prompt), the last (the assistant's) message's content."""
    if not (isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages)):
        raise ValueError(f"{where}: 'messages' must be a non-empty list of {{'role', 'content'}} dicts")
    if messages[-1].get("role") != "assistant" or len(messages) < 2:
        raise ValueError(f"{where}: a chat row ends with the assistant's answer after at least one other message")
    if tokenizer is None:
        raise ConfigError(
            f"{where}: chat-format rows ('messages') need a tokenizer for the chat template: pass tokenizer=... "
            "(train and eval pass the student's)"
        )
    if getattr(tokenizer, "chat_template", None) is None:
        raise ConfigError(
            f"{where}: the tokenizer has no chat template; set tokenizer.chat_template or use prompt rows"
        )
    prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    return prompt, _text(messages[-1].get("content"), f"{where}: the assistant's content")


def _rows(
    ds: Any, prompt_field: str, answer_field: str, split: str, tokenizer, verifier_field: str | None
) -> list[Row]:
    """Every row of one split, in order; numbers in the answer field become text (``18`` → ``"18"``)."""
    columns = list(getattr(ds, "column_names", None) or [])
    chat = prompt_field not in columns and "messages" in columns
    needed = ["messages"] if chat else [prompt_field, answer_field]
    missing = [f for f in (*needed, *([verifier_field] if verifier_field else [])) if f not in columns]
    if missing:
        raise ValueError(
            f"the {split} dataset has no column(s) {missing}; its columns are {columns}: "
            "pass prompt_field=... and answer_field=... (or give chat rows a 'messages' column)"
        )
    names = ds[verifier_field] if verifier_field else [None] * len(ds)
    rows = []
    for i, (record, name) in enumerate(zip(ds, names)):
        where = f"{split} row {i}"
        if name is not None and name not in VERIFIERS:
            raise ValueError(f"{where}: {verifier_field!r} must be one of {VERIFIERS}, got {name!r}")
        if chat:
            prompt, answer = _chat(record["messages"], tokenizer, where)
        else:
            prompt = record[prompt_field]
            if not isinstance(prompt, str):
                raise ValueError(f"{where}: {prompt_field!r} must be text, got {type(prompt).__name__}")
            answer = _text(record[answer_field], f"{where}: {answer_field!r}")
        if "####" in answer:  # GSM8K: the calculator notes go, as in the JSONL loader
            answer = strip_calculator(answer)
        rows.append(Row(prompt, answer, name))
    return rows


def dataset_rows(
    ds: Any,
    *,
    prompt_field: str = "prompt",
    answer_field: str = "answer",
    test_size: float | int | None = None,
    seed: int = 0,
    tokenizer=None,
    eval_split: str | None = None,
    verifier_field: str | None = None,
) -> tuple[list[Row], list[Row]]:
    """``(train rows, test rows)`` of a ``Dataset`` / ``DatasetDict`` (see :meth:`Task.from_dataset`)."""

    def rows(part, split: str) -> list[Row]:
        return _rows(part, prompt_field, answer_field, split, tokenizer, verifier_field)

    if isinstance(ds, dict):  # a DatasetDict is a dict of split name → Dataset
        splits = list(ds.keys())
        if "train" not in splits:
            raise ValueError(f"a DatasetDict needs a 'train' split, it has {splits}")
        if eval_split is not None and eval_split not in splits:
            raise ValueError(f"eval_split={eval_split!r} is not a split of the dataset; its splits are {splits}")
        own = eval_split or next((s for s in EVAL_SPLITS if s in splits), None)
        if own is not None and test_size is not None:
            raise ValueError(f"the DatasetDict has its own {own!r} split: leave test_size=None (or drop the split)")
        train = rows(ds["train"], "train")
        if own is not None:
            return train, rows(ds[own], own)
    else:
        if eval_split is not None:
            raise ValueError("eval_split names a split of a DatasetDict; this is a single Dataset")
        train = rows(ds, "train")
    return split_rows(train, 0.1 if test_size is None else test_size, seed, key=lambda r: r.prompt)


def split_rows(items: Sequence, test_size: float | int, seed: int, key: Callable[[Any], str]) -> tuple[list, list]:
    """Shuffle the distinct ``key``s (prompts) with ``seed`` and hold out ``test_size`` of them (a fraction in
    [0, 1), at least one when positive and there are two or more; or a count) with all their items."""
    prompts = list(dict.fromkeys(key(x) for x in items))
    n = len(prompts)
    if isinstance(test_size, float) and not isinstance(test_size, bool):
        if not 0.0 <= test_size < 1.0:
            raise ValueError(f"test_size as a fraction must be in [0, 1), got {test_size}")
        n_test = max(1, round(n * test_size)) if test_size > 0 and n > 1 else 0
    elif isinstance(test_size, int) and not isinstance(test_size, bool) and 0 <= test_size < n:
        n_test = test_size
    else:
        raise ValueError(f"test_size must be a fraction in [0, 1) or a prompt count below {n}, got {test_size!r}")
    random.Random(seed).shuffle(prompts)
    held_out = set(prompts[:n_test])
    order = {p: i for i, p in enumerate(prompts)}
    ranked = sorted(items, key=lambda x: order[key(x)])  # stable: a prompt's rows keep their order
    return [x for x in ranked if key(x) not in held_out], [x for x in ranked if key(x) in held_out]


# ---------------------------------------------------------------------------------------------- task names
_KEYS = ("prompt_field", "answer_field", "verifier", "verifier_field", "domain", "eval_split", "test_size", "seed")
_LOAD_KEYS = ("revision",)


@dataclass
class HfName:
    """A parsed ``hf:`` task name: what to load (``path``, ``config``) and how to read it (``options``)."""

    path: str
    config: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    load: dict[str, str] = field(default_factory=dict)

    @property
    def domain(self) -> str:
        return self.options.get("domain") or Path(self.path.rstrip("/")).name or self.path


def parse_hf_name(name: str) -> HfName:
    """Parse ``hf:<path or id>[:config][?key=value&...]``; one clear error for an unknown key or bad value."""
    if not name.startswith(SCHEME):
        raise ConfigError(f"{name!r} is not an hf: task name")
    body, _, query = name[len(SCHEME) :].partition("?")
    path, config = body, None
    head, sep, tail = body.rpartition(":")
    if sep and head and "/" not in tail:
        path, config = head, tail or None
    if not path:
        raise ConfigError(f"task {name!r}: give a dataset after 'hf:' (a hub id like openai/gsm8k or a directory)")
    options: dict[str, Any] = {}
    load: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query)):
        if key in _LOAD_KEYS:
            load[key] = value
            continue
        if key not in _KEYS:
            raise ConfigError(f"task {name!r}: unknown key {key!r}; the keys are {list(_KEYS + _LOAD_KEYS)}")
        if key == "verifier" and value not in VERIFIERS:
            raise ConfigError(f"task {name!r}: verifier must be one of {list(VERIFIERS)}, got {value!r}")
        if key == "test_size":
            try:
                options[key] = float(value) if "." in value else int(value)
            except ValueError:
                raise ConfigError(f"task {name!r}: test_size must be a fraction or a count, got {value!r}") from None
            continue
        if key == "seed":
            if not value.lstrip("-").isdigit():
                raise ConfigError(f"task {name!r}: seed must be an integer, got {value!r}")
            options[key] = int(value)
            continue
        options[key] = value
    return HfName(path, config, options, load)


def check_hf_name(name: str) -> None:
    """Refuse, before any model loads, an ``hf:`` name that cannot parse or names a missing local directory."""
    spec = parse_hf_name(name)
    if spec.path.startswith((".", "/", "~")) and not Path(spec.path).expanduser().exists():
        raise ConfigError(f"task {name!r}: the dataset directory {spec.path} does not exist")


def load_hf_dataset(spec: HfName):
    """The dataset a name points at: ``datasets.load_from_disk`` for a directory written by ``save_to_disk``,
    else ``datasets.load_dataset(path, config)`` (a hub id, or a directory of data files such as ``train.jsonl``
    and ``test.jsonl``)."""
    try:
        import datasets
    except ImportError:
        raise ConfigError("hf: task names need the datasets extra: pip install 'gopd-lab[datasets]'") from None
    local = Path(spec.path).expanduser()
    saved = local.is_dir() and any((local / f).is_file() for f in ("dataset_dict.json", "state.json"))
    try:
        if saved:
            return datasets.load_from_disk(str(local))
        return datasets.load_dataset(spec.path, spec.config, **spec.load)
    except (OSError, ValueError, datasets.exceptions.DatasetNotFoundError) as err:  # OSError: offline, unreachable
        raise DataError(
            f"hf:{spec.path}: could not load the dataset ({type(err).__name__}: {err}); check the id and the "
            "network, or give a folder written by save_to_disk"
        ) from None
