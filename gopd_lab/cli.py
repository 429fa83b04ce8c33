"""``gopd-lab train | eval | zoo | demo | sweep`` — the command line over the same functions notebooks call.

``gopd-lab train --config cfg.yaml --lam 1.25 --steps 200``: every :class:`~gopd_lab.config.RunConfig`
field is an option (``--lam``, ``--estimator``, ``--out-dir`` ...); options override the config file.
Dict-valued fields (per-domain teachers or λ) take JSON: ``--teacher '{"add": "zoo:teacher-add"}'``.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any

from .config import ConfigError, RunConfig, config_fields


def _field_docs() -> dict[str, str]:
    """The docstring under each RunConfig field (for --help)."""
    tree = ast.parse(inspect.getsource(RunConfig))
    body, docs = tree.body[0].body, {}
    for a, b in zip(body, body[1:]):
        if (
            isinstance(a, ast.AnnAssign)
            and isinstance(b, ast.Expr)
            and isinstance(getattr(b, "value", None), ast.Constant)
        ):
            docs[a.target.id] = " ".join(str(b.value.value).split())
    return docs


def _parse_value(text: str) -> Any:
    """Numbers, booleans, null, lists and dicts as JSON/YAML; anything else stays a string."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):  # YAML 1.1 reads "1e-3" as text
        try:
            return float(value)
        except ValueError:
            return value
    return value


def add_config_options(parser: argparse.ArgumentParser) -> None:
    docs = _field_docs()
    for f in config_fields():
        parser.add_argument(
            f"--{f.name.replace('_', '-')}",
            dest=f.name,
            default=None,
            metavar="V",
            help=docs.get(f.name, "").replace("%", "%%"),
        )


def config_from_args(args: argparse.Namespace) -> RunConfig:
    base = RunConfig.load(args.config).to_dict() if getattr(args, "config", None) else {}
    for f in config_fields():
        raw = getattr(args, f.name, None)
        if raw is not None:
            value = _parse_value(raw)
            if f.type in ("str", "str | dict[str, str]", "str | list[str]") and not isinstance(value, (dict, list)):
                value = raw  # keep paths like "1e3" or "007" as text
            base[f.name] = value
    return RunConfig.from_dict(base)


def cmd_train(args: argparse.Namespace) -> int:
    from .train import train

    cfg = config_from_args(args)
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
    from .evaluate import evaluate
    from .models import load_model, load_tokenizer, resolve_device
    from .tasks import load_tasks

    device = resolve_device(args.device)
    import torch

    model = load_model(args.model, role="model", device=device, dtype=torch.float32)
    tokenizer = load_tokenizer(args.model)
    table = evaluate(
        model,
        tokenizer,
        load_tasks(args.tasks.split(",")),
        k=args.k,
        max_new_tokens=args.max_new_tokens,
        limit=args.limit,
        seed=args.seed,
    )
    print(table.to_string(index=False))
    if args.out:
        from .runio import atomic_write_text

        atomic_write_text(args.out, table.to_csv(index=False))
    return 0


def cmd_zoo(args: argparse.Namespace) -> int:
    from . import zoo

    if args.action == "build":
        names = set(args.only.split(",")) if args.only else None
        recipes = [r for r in zoo.world_recipes() if names is None or r.name in names]
        zoo.build(
            Path(args.out) if args.out else None,
            recipes=recipes,
            scale=args.scale,
            eval_limit=args.eval_limit,
            workers=args.workers,
        )
    print(zoo.accuracy_table(Path(args.out) if args.out else None).to_string(index=False))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    run_demo(out_dir=args.out_dir, steps=args.steps, domain=args.domain)
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import run_spec
    from .sweep_grid import spec_from_cli

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
        if c in ("final_loss", "final_reverse_kl") or (c.startswith("eval_") and c.endswith("greedy_acc"))
    ]
    print(df[shown].to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    return 1 if (df.status == "failed").any() else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gopd-lab", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="run G-OPD / SFT / GRPO from a config file and options")
    p.add_argument("--config", help="YAML or JSON file of RunConfig fields")
    add_config_options(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="greedy and sampled accuracy per domain on the tasks' test splits")
    p.add_argument("--model", required=True, help="checkpoint directory, hub id or zoo:<name>")
    p.add_argument("--tasks", default="add,mul")
    p.add_argument("--k", type=int, default=4, help="samples per prompt for mean accuracy")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--limit", type=int, default=0, help="test prompts per task (0 = all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="also write the table as CSV")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("zoo", help="build or list the embedded model zoo")
    p.add_argument("action", choices=["build", "list"])
    p.add_argument("--out", help="zoo directory (default data/zoo; data/zoo/v2 with GOPD_LAB_WORLD=v2)")
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
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as err:
        print(f"gopd-lab: configuration error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
