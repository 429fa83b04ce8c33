"""``gopd-lab train``'s options: every :class:`~gopd_lab.config.RunConfig` field, grouped, typed and checked.

An ``argparse`` parser built from the dataclass: one option per field (``--out-dir``; ``--out_dir`` is read as the
same), its help the field's docstring (the first sentence; ``--help-full`` prints all of it), grouped as run,
models, λ and estimator, method-specific, evaluation and scale, the common options first. Fields with a fixed set
of values list them and refuse others (method and estimator names come from their registries, so plugins add
theirs). A bad option is one line: the closest option name (``difflib``), or for TRL's names that mean something
else here the explanation (:data:`~gopd_lab.config.TRL_NOT_ALIASES`).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import re
import textwrap
import types
import typing
from typing import Any

from gopd_lab.config import (
    LOSS_AGGS,
    TRL_ALIASES,
    ConfigError,
    RunConfig,
    config_fields,
    load_yaml,
    unknown_fields_error,
)

GROUPS: dict[str, tuple[str, ...]] = {
    "run": (
        "method", "tasks", "prompts", "steps", "lr", "batch_size", "samples_per_prompt", "max_new_tokens",
        "temperature", "top_p", "seed", "out_dir", "resume", "overwrite", "chat_template", "optimizer",
        "weight_decay", "warmup_steps", "lr_schedule", "max_grad_norm", "row_seeded_sampling", "loss_agg",
        "save_every", "log_samples_every", "log_samples", "report_to", "report_samples", "extra",
    ),
    "models": (
        "student", "teacher", "reference", "device", "dtype", "trust_remote_code", "lora_r", "lora_alpha",
        "lora_target_modules",
    ),
    "λ and estimator": (
        "lam", "estimator", "topk", "lam_mode", "gamma", "clip_eps", "epochs_per_batch", "always_reference",
        "reopd_tau", "reopd_gamma_max", "reopd_target", "reopd_ema", "agopd_rho", "agopd_lam_max",
        "entropy_threshold",
    ),
    "method-specific (sdpo, grpo, chord, sft)": (
        "kl_coef", "grpo_scale_std", "jsd_beta", "sdpo_teacher", "sdpo_ema_rate", "sdpo_feedback", "sdpo_template",
        "sdpo_no_feedback", "mu", "mu_schedule", "mu_valley", "mu_warmup_steps", "phi_weighting", "expert_data",
    ),
    "evaluation": ("eval_every", "eval_k", "eval_limit", "eval_seed"),
    "scale": (
        "micro_batch_size", "gradient_checkpointing", "mixed_precision", "score_chunk_tokens", "rollout_backend",
        "vllm_gpu_memory_utilization",
    ),
}  # fmt: skip
"""Option groups in the order ``--help`` prints them; a field no group names (a new one) goes under ``other``."""

EXAMPLES = """examples:
  gopd-lab train --student zoo:student-base --teacher zoo:teacher-add --tasks add --lam 1.25 --steps 200
  gopd-lab train --config configs/gpu-0.5b.yaml --lr 3e-4 --out-dir runs/qwen-0.5b
  gopd-lab train --method grpo --student zoo:student-base --tasks add --kl-coef 0.05
  gopd-lab train --tasks 'hf:openai/gsm8k:main?prompt_field=question&verifier=math' --student Qwen/Qwen3-0.6B ...
  accelerate launch --num_processes 8 -m gopd_lab.cli train --config cfg.yaml   (the same options, 8 processes)"""

DESCRIPTION = """Train with G-OPD / SDPO / SFT / GRPO / CHORD from a config file and options.

--config FILE: a YAML or JSON file of RunConfig fields; the options below override it, and the merged config is
validated once. Booleans are flags that also take a value (--resume, --resume false); dict and list fields take
JSON or YAML (--lam '{{"add": 1.5}}'). TRL's names are accepted where they mean the same:
{aliases}.
Not aliases: per_device_train_batch_size (batch_size is global prompts per step), max_steps (steps counts rollout
batches), beta (jsd_beta for GKD's JSD, kl_coef for GRPO's KL) and lmbda (not λ)."""

_WORDS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def field_choices() -> dict[str, tuple[str, ...]]:
    """``{field: allowed values}`` for the fields with a fixed set (method / estimator from their registries)."""
    from gopd_lab.methods import METHODS
    from gopd_lab.objectives import ESTIMATORS
    from gopd_lab.objectives.lineage import LAM_MODES

    return {
        "method": tuple(METHODS),
        "estimator": tuple(ESTIMATORS),
        "lam_mode": tuple(LAM_MODES),
        "loss_agg": tuple(LOSS_AGGS),
        "optimizer": ("adamw", "sgd"),
        "lr_schedule": ("constant", "linear", "cosine"),
        "dtype": ("auto", "float32", "bfloat16", "float16"),
        "rollout_backend": ("hf", "vllm"),
        "sdpo_teacher": ("live", "initial", "ema"),
        "sdpo_feedback": ("verifier", "solution", "both"),
        "sdpo_no_feedback": ("mask", "plain"),
        "mu_schedule": ("constant", "warmup_cosine"),
    }


def field_docs() -> dict[str, str]:
    """Each field's docstring (the string literal after it in ``RunConfig``'s source), whitespace collapsed."""
    body = ast.parse(inspect.getsource(RunConfig)).body[0].body
    docs = {}
    for a, b in zip(body, body[1:]):
        if isinstance(a, ast.AnnAssign) and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant):
            docs[a.target.id] = " ".join(str(b.value.value).split())
    return docs


def plain(text: str) -> str:
    """Docstring markup as plain text: ``x`` → x, :class:`~a.b.C` → C, doubled backslashes single."""
    text = re.sub(r":\w+:`~?(?:[\w.]*\.)?([^`]+)`", r"\1", text)
    return text.replace("``", "").replace("\\\\", "\\")


def first_sentence(text: str) -> str:
    match = re.search(r"(?<=[a-z0-9)`'\"])[.;:] (?=[A-Z`(])", text)
    return text[: match.start() + 1] if match else text


def _union_members(tp) -> tuple:
    return typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)


def _converter(name: str, tp) -> tuple[Any, str, dict]:
    """``(type function, metavar, extra add_argument kwargs)`` for one field's annotated type."""
    if tp is bool:

        def boolean(text: str) -> bool:
            if text.lower() not in _WORDS:
                raise argparse.ArgumentTypeError(f"expected true or false (or the bare flag), got {text!r}")
            return _WORDS[text.lower()]

        return boolean, "true|false", {"nargs": "?", "const": "true"}
    members = _union_members(tp)
    origins = [typing.get_origin(m) or m for m in members]
    if {dict, list} & set(origins) or (type(None) in origins and len(origins) > 1) or tp is Any:
        scalars = [o for o in origins if o in (str, int, float)]

        def structured(text: str) -> Any:
            if text.lstrip()[:1] in ("{", "[") or text in ("null", "None", "~") and type(None) in origins:
                try:
                    return None if text == "None" else load_yaml(text)
                except Exception as err:
                    raise argparse.ArgumentTypeError(f"could not read {text!r} as JSON/YAML: {err}") from None
            if str in scalars:
                return text
            try:
                return float(text) if float in scalars else int(text) if int in scalars else load_yaml(text)
            except ValueError:
                raise argparse.ArgumentTypeError(f"expected a number or JSON/YAML, got {text!r}") from None

        names = ["JSON"] + [o.__name__.upper() for o in scalars] + (["null"] if type(None) in origins else [])
        return structured, "|".join(names), {}
    if tp in (int, float):

        def number(text: str):
            try:
                return tp(text) if tp is float else int(text)
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f"expected {'a number' if tp is float else 'an integer'}, got {text!r}"
                ) from None

        return number, tp.__name__.upper(), {}
    return str, "TEXT", {}


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one :class:`ConfigError` line (the CLI prints it and exits 2), not usage + exit."""

    def error(self, message: str) -> typing.NoReturn:
        raise ConfigError(f"{message} (gopd-lab train --help lists the options)")


def build_train_parser(prog: str = "gopd-lab train", full: bool = False) -> argparse.ArgumentParser:
    """The ``train`` parser: ``--config``, ``--help`` / ``--help-full`` and one option per RunConfig field."""
    aliases = textwrap.fill(
        ", ".join(f"{a} (= {n})" for a, n in TRL_ALIASES.items()), 110, initial_indent="  ", subsequent_indent="  "
    )
    parser = _Parser(
        prog=prog,
        usage=f"{prog} [--config FILE] [options]   (options by group below; --help-full for whole docstrings)",
        description=DESCRIPTION.format(aliases=aliases),
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
        add_help=False,
        argument_default=argparse.SUPPRESS,
    )
    top = parser.add_argument_group("config")
    top.add_argument("-h", "--help", action="help", help="show this help (first sentence of each option) and exit")
    top.add_argument("--help-full", action="store_true", help="show every option's whole docstring and exit")
    top.add_argument("--config", metavar="FILE", help="a YAML or JSON file of RunConfig fields")
    hints = typing.get_type_hints(RunConfig)
    docs, choices = field_docs(), field_choices()
    fields = [f.name for f in config_fields()]
    grouped = {name for names in GROUPS.values() for name in names}
    layout = [(title, [n for n in names if n in fields]) for title, names in GROUPS.items()]
    layout.append(("other", [n for n in fields if n not in grouped]))
    for title, names in layout:
        if not names:
            continue
        group = parser.add_argument_group(title)
        for name in names:
            convert, metavar, extra = _converter(name, hints[name])
            doc = plain(docs.get(name, ""))
            text = (doc if full else first_sentence(doc)).replace("%", "%%")
            kwargs: dict[str, Any] = {"type": convert, "metavar": metavar, "help": text, **extra}
            if name in choices:
                kwargs.update(choices=choices[name], metavar="{" + ",".join(choices[name]) + "}")
            group.add_argument(f"--{name.replace('_', '-')}", dest=name, **kwargs)
    return parser


def canonical_argv(argv: list[str]) -> list[str]:
    """``--out_dir`` → ``--out-dir``; TRL's names (``--learning-rate``) → the field's option; an option that is
    neither a field nor an alias → one line naming the closest option or, for a TRL name that is not an alias,
    what to use instead."""
    fields = {f.name for f in config_fields()}
    own = {"help", "help_full", "config", "h"}
    keys = [a.partition("=")[0][2:].replace("-", "_") if a.startswith("--") else None for a in argv]
    unknown = [k for k in keys if k is not None and k and k not in fields | own | set(TRL_ALIASES)]
    if unknown:
        raise unknown_fields_error(unknown, sorted(fields | set(TRL_ALIASES)), prefix="--")
    out = []
    for arg, key in zip(argv, keys):
        if key in TRL_ALIASES:
            name = TRL_ALIASES[key]
            if name in keys:
                raise ConfigError(f"both --{key} and --{name} given; --{key} is TRL's name for --{name}: keep one")
            key = name
        if key is not None and key:
            arg = f"--{key.replace('_', '-')}" + arg[len(arg.partition("=")[0]) :]
        out.append(arg)
    return out


def _option_values(argv: list[str], option: str) -> list[str]:
    """The values of ``--option VALUE`` and ``--option=VALUE`` in ``argv``."""
    values = []
    for i, arg in enumerate(argv):
        if arg.startswith(option + "="):
            values.append(arg[len(option) + 1 :])
        elif arg == option and i + 1 < len(argv):
            values.append(argv[i + 1])
    return values


def preload_plugins(argv: list[str]) -> None:
    """Import the plugins named by ``--plugins`` or by the ``--config`` file, so the parser's choices (the
    method and estimator registries) include what they register."""
    from gopd_lab.plugins import load_plugins, resolve_plugin

    names: list[str] = []
    for path in _option_values(argv, "--config"):
        given = RunConfig.read_file(path).get("plugins") or []
        names += given.split(",") if isinstance(given, str) else list(given)
    for value in _option_values(argv, "--plugins"):
        names += value.strip("[]").replace('"', "").replace("'", "").split(",")
    load_plugins([resolve_plugin(n.strip()) for n in names if isinstance(n, str) and n.strip()])


def config_from_argv(argv: list[str], prog: str = "gopd-lab train") -> RunConfig:
    """A :class:`RunConfig` from ``--config FILE`` (optional) and field options, merged and validated once."""
    argv = canonical_argv(list(argv))
    preload_plugins(argv)  # before the parser lists the registries' names: a plugin may add a method or estimator
    full = "--help-full" in argv
    parser = build_train_parser(prog, full=full)
    if full:
        parser.print_help()
        raise SystemExit(0)
    given = vars(parser.parse_args(argv))
    path = given.pop("config", None)
    given.pop("help_full", None)
    base = {**RunConfig().to_dict(), **(RunConfig.read_file(path) if path else {})}
    return RunConfig.from_dict({**base, **given})
