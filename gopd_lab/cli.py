"""``gopd-lab train | eval | zoo | demo | sweep | push`` — the command line over the same functions notebooks call.

``gopd-lab train --config cfg.yaml --lam 1.25 --steps 200``: every :class:`~gopd_lab.config.RunConfig`
field is an option (``--lam``, ``--estimator``, ``--out-dir`` ...), grouped, its docstring the help
(:mod:`gopd_lab.cli_options`); options override the config file. Dict- and list-valued fields take JSON/YAML
(``--teacher '{"add": "zoo:teacher-add"}'``); booleans are flags that also take a value (``--resume``,
``--resume false``); TRL's names of the same fields are accepted (``--learning-rate`` for ``--lr``, see
``TRL_ALIASES``). Everything heavy (torch, the config's registries) is imported by the command that needs it,
so ``gopd-lab --help`` answers at once; a user error is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from gopd_lab.errors import UserError

EXAMPLES = """examples:
  gopd-lab demo                                     distil a zoo student with λ = 1 and 1.25 (a few minutes, CPU)
  gopd-lab train --student zoo:student-base --teacher zoo:teacher-add --tasks add --lam 1.25 --steps 200
  gopd-lab train --config configs/gpu-0.5b.yaml --lr 3e-4
  gopd-lab eval --model zoo:teacher-add --tasks add,mul
  gopd-lab sweep --spec sweeps/v2/lam.yaml --workers 2
  gopd-lab push runs/exopd you/student-exopd

gopd-lab train --help lists the training options, grouped."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gopd-lab")
    except PackageNotFoundError:  # the source tree on sys.path without an install
        from gopd_lab import __version__

        return __version__


def config_from_argv(argv: list[str], prog: str = "gopd-lab train"):
    """A :class:`~gopd_lab.config.RunConfig` from ``--config FILE`` and field options (:mod:`gopd_lab.cli_options`)."""
    from gopd_lab.cli_options import config_from_argv as parse

    return parse(argv, prog)


def cmd_train(args: argparse.Namespace) -> int:
    cfg = config_from_argv(args.options)  # --help and option errors before torch is imported
    from gopd_lab.loop.train import train

    history = train(cfg)
    if int(os.environ.get("RANK", "0")) != 0:  # under `accelerate launch` the main process reports
        return 0
    last = history.iloc[-1]
    from gopd_lab.viz.runs import run_report

    report = run_report(cfg.out_dir)  # curves + before/after table beside the run (plotly.js from its CDN)
    print(f"done: {len(history)} steps → {cfg.out_dir} (final loss {last['loss']:.4f}); report: {report}")
    summary = json.loads((Path(cfg.out_dir) / "summary.json").read_text())
    if summary.get("eval_final"):
        import pandas as pd

        print(pd.DataFrame(summary["eval_final"]).to_string(index=False))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from gopd_lab.config_checks import check_tokenizer_fits
    from gopd_lab.lm.models import load_model, load_tokenizer, resolve_device
    from gopd_lab.loop.evaluate import evaluate
    from gopd_lab.tasks import load_tasks

    device = resolve_device(args.device)
    import torch

    model = load_model(args.model, role="model", device=device, dtype=torch.float32)
    tokenizer = load_tokenizer(args.model)
    check_tokenizer_fits(model, tokenizer, args.model)  # a larger tokenizer was an IndexError mid-evaluation
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


class _OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one :class:`~gopd_lab.errors.UserError` line (exit 2), like every other one."""

    def error(self, message: str):
        from gopd_lab.config import ConfigError

        raise ConfigError(f"{message} ({self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(
        prog="gopd-lab",
        description=__doc__.splitlines()[0],
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"gopd-lab {_version()}")
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
    try:
        if argv[:1] == ["train"]:  # cli_options parses the options (argparse would take `--help` for itself)
            args = argparse.Namespace(options=argv[1:], func=cmd_train)
        else:
            args = build_parser().parse_args(argv)
        return args.func(args)
    except UserError as err:  # a cause the user can fix: one line, no traceback
        print(f"gopd-lab: {err.label}: {' '.join(str(err).split())}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
