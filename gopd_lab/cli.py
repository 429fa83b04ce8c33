"""``gopd-lab train | eval | zoo | demo | sweep | push`` — the command line over the same functions notebooks call.

``gopd-lab train --config cfg.yaml --lam 1.25 --steps 200``: every :class:`~gopd_lab.config.RunConfig`
field is an option (``--lam``, ``--estimator``, ``--out-dir`` ...) built by tyro from the dataclass, its
docstrings the help; options override the config file. Dict- and list-valued fields take JSON/YAML
(``--teacher '{"add": "zoo:teacher-add"}'``); booleans are flags that also take a value (``--resume``,
``--resume false``); TRL's names of the same fields are accepted (``--learning-rate`` for ``--lr``, see
``TRL_ALIASES``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any

from gopd_lab.config import TRL_ALIASES, ConfigError, RunConfig, load_yaml
from gopd_lab.errors import UserError

TRAIN_HELP = """Train with G-OPD / SDPO / SFT / GRPO / CHORD from a config file and options.

--config FILE: a YAML or JSON file of RunConfig fields (the options below override it; the merged
config is validated once).
TRL names accepted for the same fields: {aliases}. batch_size is the global number of prompts per step
(TRL's per_device_train_batch_size is per process)."""


def _yaml_rule(info) -> Any:
    """tyro: a field whose type holds a dict or a list beside other types (``str | dict[str, str]``,
    ``float | dict[str, float]``, ``dict[str, Any]``) or ``None`` takes one value read as YAML/JSON
    (``{"add": 1.5}``, ``[a, b]``, ``null``); a text that is not YAML flow syntax stays text (``007``)."""
    from tyro.constructors import PrimitiveConstructorSpec

    tp = info.type
    members = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    origins = [typing.get_origin(m) or m for m in members]
    if not ({dict, list} & set(origins) or (type(None) in origins and len(origins) > 1)):
        return None
    scalars = [o for o in origins if o in (str, int, float)]

    def parse(args: list[str]) -> Any:
        text = args[0]
        if text.lstrip()[:1] in ("{", "[") or text in ("null", "None", "~") and type(None) in origins:
            try:
                return None if text == "None" else load_yaml(text)
            except Exception as err:
                raise ValueError(f"could not read {text!r} as JSON/YAML: {err}") from None
        if str in scalars:
            return text
        if float in scalars or int in scalars:
            return float(text) if float in scalars else int(text)
        raise ValueError(f"expected JSON/YAML such as {{...}} or [...], got {text!r}")

    names = "|".join(["JSON"] + [o.__name__.upper() for o in scalars] + (["null"] if type(None) in origins else []))
    return PrimitiveConstructorSpec(
        nargs=1,
        metavar=names,
        instance_from_str=parse,
        is_instance=lambda value: True,
        str_from_instance=lambda value: [value if isinstance(value, str) else json.dumps(value)],
    )


def _bool_rule(info) -> Any:
    """tyro: a boolean is a flag that also takes a value: ``--resume``, ``--resume true``, ``--resume false``."""
    from tyro.constructors import PrimitiveConstructorSpec

    if info.type is not bool:
        return None
    words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}

    def parse(args: list[str]) -> bool:
        if not args:
            return True
        if len(args) > 1 or args[0].lower() not in words:
            raise ValueError(f"expected one of true or false (or the bare flag), got {' '.join(args)!r}")
        return words[args[0].lower()]

    return PrimitiveConstructorSpec(
        nargs="*",
        metavar="[true|false]",
        instance_from_str=parse,
        is_instance=lambda value: isinstance(value, bool),
        str_from_instance=lambda value: [str(value).lower()],
    )


def _with_canonical_names(argv: list[str]) -> list[str]:
    """``--learning-rate 1e-3`` / ``--learning_rate=1e-3`` → ``--lr ...`` (TRL's names, :data:`TRL_ALIASES`)."""
    keys = [a.partition("=")[0][2:].replace("-", "_") if a.startswith("--") else None for a in argv]
    out = []
    for arg, key in zip(argv, keys):
        if key in TRL_ALIASES:
            name = TRL_ALIASES[key]
            if name in keys:
                raise ConfigError(f"both --{key} and --{name} given; --{key} is TRL's name for --{name}: keep one")
            arg = f"--{name}" + arg[len(arg.partition("=")[0]) :]
        out.append(arg)
    return out


@dataclasses.dataclass
class _Options(RunConfig):
    """RunConfig's fields, unvalidated: tyro fills them, then :meth:`RunConfig.from_dict` validates once, so a
    bad value is one :class:`ConfigError` line (tyro would print its own box for an error in a constructor)."""

    def __post_init__(self) -> None:
        pass


def config_from_argv(argv: list[str], prog: str = "gopd-lab train") -> RunConfig:
    """A :class:`RunConfig` from ``--config FILE`` (optional) and field options; ``--help`` prints every field."""
    import tyro

    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, rest = pre.parse_known_args(argv)
    # the file's fields and the options are merged first and validated once: an option may fix the file
    base = {**RunConfig().to_dict(), **(RunConfig.read_file(known.config) if known.config else {})}
    registry = tyro.constructors.ConstructorRegistry()
    registry.primitive_rule(_yaml_rule)
    registry.primitive_rule(_bool_rule)
    aliases = ", ".join(f"{a} (= {n})" for a, n in TRL_ALIASES.items())
    options = tyro.cli(
        _Options,
        args=_with_canonical_names(rest),
        default=_Options(**base),
        prog=prog,
        description=TRAIN_HELP.format(aliases=aliases),
        registry=registry,
        config=(tyro.conf.FlagConversionOff,),  # booleans through _bool_rule: a bare flag or a value
    )
    return RunConfig.from_dict(options.to_dict())


def cmd_train(args: argparse.Namespace) -> int:
    from gopd_lab.loop.train import train

    cfg = config_from_argv(args.options)
    history = train(cfg)
    if int(os.environ.get("RANK", "0")) != 0:  # under `accelerate launch` the main process reports
        return 0
    last = history.iloc[-1]
    print(f"done: {len(history)} steps → {cfg.out_dir} (final loss {last['loss']:.4f})")
    summary = json.loads((Path(cfg.out_dir) / "summary.json").read_text())
    if summary.get("eval_final"):
        import pandas as pd

        print(pd.DataFrame(summary["eval_final"]).to_string(index=False))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from gopd_lab.lm.models import load_model, load_tokenizer, resolve_device
    from gopd_lab.loop.evaluate import evaluate
    from gopd_lab.tasks import load_tasks

    device = resolve_device(args.device)
    import torch

    model = load_model(args.model, role="model", device=device, dtype=torch.float32)
    tokenizer = load_tokenizer(args.model)
    table = evaluate(
        model,
        tokenizer,
        load_tasks(args.tasks.split(","), tokenizer=tokenizer),
        k=args.k,
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
        seed=args.seed,
    )
    print(table.to_string(index=False))
    if args.out:
        from gopd_lab.runio import atomic_write_text

        atomic_write_text(args.out, table.to_csv(index=False))
    return 0


def cmd_zoo(args: argparse.Namespace) -> int:
    from gopd_lab.experiments import zoo_build
    from gopd_lab.world import zoo

    if args.action == "build":
        names = set(args.only.split(",")) if args.only else None
        recipes = [r for r in zoo.world_recipes() if names is None or r.name in names]
        zoo_build.build(
            Path(args.out) if args.out else None,
            recipes=recipes,
            scale=args.scale,
            eval_limit=args.eval_limit,
            workers=args.workers,
        )
    print(zoo.accuracy_table(Path(args.out) if args.out else None).to_string(index=False))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from gopd_lab.demo import run_demo

    run_demo(out_dir=args.out_dir, steps=args.steps, domain=args.domain)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from gopd_lab.experiments.sweep import run_spec
    from gopd_lab.experiments.sweep_grid import spec_from_cli

    gpus = None if args.gpus is None else [g for g in args.gpus.split(",") if g.strip()]
    spec = spec_from_cli(args.notebook, args.spec, args.grid, args.set)
    try:
        df = run_spec(
            spec,
            sweep_dir=args.sweep_dir,
            workers=args.workers,
            kernel_name=args.kernel,
            timeout=args.timeout,
            gpus=gpus,
            rerun=args.rerun or None,
        )
    except KeyboardInterrupt:
        print("gopd-lab sweep: interrupted; run the same command again to finish the missing points", file=sys.stderr)
        return 130
    shown = ["point_id", "status", "wall_seconds"] + [
        c
        for c in df.columns
        if c in ("final_loss", "final_reverse_kl")
        or (c.startswith("eval_") and c.endswith(("greedy_acc", "mean_acc", "pass_acc")))
    ]
    print(df[shown].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    return 1 if (df.status == "failed").any() else 0


def cmd_push(args: argparse.Namespace) -> int:
    from gopd_lab.scale.hub import push_to_hub

    where = push_to_hub(args.run_dir, args.repo_id, private=args.private, token=args.token, local_dir=args.local_dir)
    print(f"{'wrote' if args.local_dir else 'pushed'} {args.run_dir} → {where}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gopd-lab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train",
        help="run G-OPD / SDPO / SFT / GRPO / CHORD from --config FILE and options (gopd-lab train --help)",
        add_help=False,
    )
    p.add_argument("options", nargs=argparse.REMAINDER, help="--config FILE and RunConfig fields as options")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="greedy and sampled accuracy per domain on the tasks' test splits")
    p.add_argument("--model", required=True, help="checkpoint directory, hub id or zoo:<name>")
    p.add_argument("--tasks", default="add,mul")
    p.add_argument("--k", type=int, default=4, help="samples per prompt for mean@k and pass@k")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--limit", type=int, default=0, help="test prompts per task (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="also write the table as CSV")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("zoo", help="build or list the embedded model zoo")
    p.add_argument("action", choices=["build", "list"])
    p.add_argument("--out", help="zoo directory (default data/zoo/v2; data/zoo with GOPD_LAB_WORLD=v1)")
    p.add_argument("--only", help="comma-separated model names to (re)build")
    p.add_argument(
        "--scale", type=float, default=1.0, help="multiply every training length (e.g. 0.05 for a quick check)"
    )
    p.add_argument("--eval-limit", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, help="independent chains (base + its teachers) built at once")
    p.set_defaults(func=cmd_zoo)

    p = sub.add_parser(
        "demo", help="distil student-base from a domain teacher with λ = 1 and λ = 1.25; before/after table"
    )
    p.add_argument("--out-dir", default="runs/demo")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--domain", default="add")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "sweep", help="run a parameterised notebook over a grid with papermill (parallel, resumable) → results.parquet"
    )
    p.add_argument(
        "notebook", nargs="?", help="notebook with a cell tagged 'parameters' that has out_dir (or give --spec)"
    )
    p.add_argument(
        "--spec", help="YAML sweep file: notebook, grid, fixed, sweep_dir, workers, kernel_name, timeout, gpus"
    )
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="NAME=V1,V2",
        help="a swept parameter (repeatable; values are YAML scalars, or a YAML list [..])",
    )
    p.add_argument("--set", action="append", default=[], metavar="NAME=V", help="a fixed parameter (repeatable)")
    p.add_argument("--sweep-dir", help="where point dirs and results go (default runs/sweeps/<spec or notebook name>)")
    p.add_argument("--workers", type=int, default=None, help="points run at once (default 1 or the spec's)")
    p.add_argument("--kernel", default=None, help="Jupyter kernel name (default: this Python interpreter)")
    p.add_argument("--timeout", type=float, default=None, help="seconds before a point is stopped and marked failed")
    p.add_argument("--gpus", default=None, help="comma-separated CUDA devices for the workers (default: all visible)")
    p.add_argument("--rerun", action="store_true", help="run finished points again")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser("push", help="upload a run's student with a model card to the Hugging Face Hub")
    p.add_argument("run_dir", help="out_dir of a finished run (its model/ is uploaded)")
    p.add_argument("repo_id", help="Hub repo, e.g. you/student-opd (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.add_argument("--token", default=None, help="Hub token (default: the one `hf auth login` saved)")
    p.add_argument("--local-dir", default=None, help="write the card and files to this folder; no upload")
    p.set_defaults(func=cmd_push)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["train"]:  # tyro parses the options (argparse would take `--help` for itself)
        args = argparse.Namespace(options=argv[1:], func=cmd_train)
    else:
        args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as err:  # a cause the user can fix: one line, no traceback
        print(f"gopd-lab: {err.label}: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
