"""The chain section of the results: credit assignment, the chain teachers' headroom and the chain λ × loss_agg sweep.

    python sweeps/chain_report.py [--results results/chain] [--out results/chain/report.md] [--check]

Reads only committed files: ``credit.json`` (sweeps/chain_credit.py), ``headroom/*.csv`` (sweeps/headroom.py on the
chain teachers) and the published sweep ``lam_agg/`` (publish_sweep of sweeps/chain/lam_agg.yaml; each point's
``summary.json`` carries the chain metrics under ``"chain"``) with its breaking arm ``break/`` (sweeps/chain/break.yaml). Every arm is paired seed by seed against OPD
(λ = 1, token-mean) with a 95 % Student-t interval (gopd_lab.experiments.paired). ``--check`` fails when the
written section differs from what the files give now.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from gopd_lab.experiments.chain_eval import POSITIONS, sweep_table
from gopd_lab.experiments.paired import format_interval, paired_differences
from gopd_lab.runio import atomic_write_text

METRICS = {"greedy_acc": "greedy", "mean_acc": "mean@4", "pass_acc": "pass@4"}
BASELINE = (1.0, "token-mean")


def credit_section(results: Path) -> list[str]:
    path = results / "credit.json"
    if not path.exists():
        return ["(no credit.json: run `python sweeps/chain_credit.py`)", ""]
    c = json.loads(path.read_text())
    lines = [
        f"On {c['wrong']} wrong completions of `{c['base']}` ({c['k']} samples of each of {c['test_prompts']} test "
        f"prompts, {c['completions']} in all; teacher `{c['teacher']}`): the share of each completion's negative "
        "advantage that falls on its first mistake, mean over completions with a 95 % bootstrap interval, beside the "
        "share an even spread would give.",
        "",
        "| window | method | n | share [95 % CI] | even spread |",
        "|---|---|---|---|---|",
    ]
    names = {"step": "first wrong step ± 1 token", "token": "first wrong token ± 1"}
    labels = {"opd": "OPD (λ = 1)", "exopd": "ExOPD (λ = 2)", "grpo": "GRPO (sequence advantage)"}
    for kind, rows in c["windows"].items():
        for r in rows:
            lines.append(
                f"| {names[kind]} | {labels[r['method']]} | {r['n']} | {r['share']:.3f} [{r['lo']:.3f}, "
                f"{r['hi']:.3f}] | {r['uniform']:.3f} |"
            )
    return lines + [""]


def headroom_section(results: Path) -> list[str]:
    files = sorted((results / "headroom").glob("*.csv"))
    if not files:
        return ["(no headroom curves: run `python sweeps/headroom.py --only chain-teacher,chain-teacher-nokl`)", ""]
    lines = ["| teacher | λ | greedy | mean@4 | pass@4 | n |", "|---|---|---|---|---|---|"]
    for f in files:
        for r in pd.read_csv(f).itertuples():
            lines.append(f"| {f.stem} | {r.lam:g} | {r.greedy_acc:.3f} | {r.mean_acc:.3f} | {r.pass_acc:.3f} | {r.n} |")
    return lines + [""]


def sweep_section(results: Path) -> list[str]:
    folder = results / "lam_agg"
    if not (folder / "sweep.json").exists():
        return ["(the chain sweep is not published yet: sweeps/chain/lam_agg.yaml)", ""]
    parts = [sweep_table(folder)]
    if (results / "break" / "sweep.json").exists():  # the breaking arm (sweeps/chain/break.yaml), same seeds
        parts.append(sweep_table(results / "break"))
    table = pd.concat(parts, ignore_index=True)
    arms = table.groupby(["lam", "loss_agg"], sort=True)
    lines = [
        "Means over seeds (greedy / mean@4 / pass@4 on the chain test set; lengths in tokens; the last columns are "
        "the reverse KL to the teacher over the first and last 10 logged steps and its slope over the last 100).",
        "",
        "| λ | loss_agg | seeds | greedy | mean@4 | pass@4 | greedy len | sampled len | KL first → last | KL slope |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (lam, agg), part in arms:
        lines.append(
            f"| {lam:g} | {agg} | {len(part)} | {part.greedy_acc.mean():.3f} | {part.mean_acc.mean():.3f} | "
            f"{part.pass_acc.mean():.3f} | {part.mean_len.mean():.1f} | {part.sampled_len.mean():.1f} | "
            f"{part.reverse_kl_first.mean():.4f} → {part.reverse_kl_last.mean():.4f} | "
            f"{part.kl_slope_last100.mean():+.2e} |"
        )
    lines += ["", "Error rate of each step position (greedy; share of the completions that reached it):", ""]
    lines += ["| λ | loss_agg | " + " | ".join(POSITIONS) + " |", "|---|---|" + "---|" * len(POSITIONS)]
    for (lam, agg), part in arms:
        cells = [f"{part[f'err {p}'].astype(float).mean():.3f}" for p in POSITIONS]
        lines.append(f"| {lam:g} | {agg} | " + " | ".join(cells) + " |")
    diffs = paired_differences(
        table, arm=["lam", "loss_agg"], baseline=BASELINE, metrics=[*METRICS, "mean_len"], pair_on="seed"
    )
    lines += ["", "Paired against OPD (λ = 1, token-mean), points: mean difference [95 % CI] (seeds won / pairs):", ""]
    lines += ["| λ | loss_agg | greedy | mean@4 | pass@4 | greedy len (tokens) |", "|---|---|---|---|---|---|"]
    for (lam, agg), part in diffs.groupby(["lam", "loss_agg"], sort=True):
        cells = []
        for m in (*METRICS, "mean_len"):
            row = part[part.metric == m].iloc[0]
            cells.append(format_interval(row, scale=1.0 if m == "mean_len" else 100.0))
        lines.append(f"| {lam:g} | {agg} | " + " | ".join(cells) + " |")
    return lines + [""]


def render(results: Path) -> str:
    lines = ["## Chains: credit assignment token by token", ""]
    lines += ["### Where the negative advantage falls", "", *credit_section(results)]
    lines += ["### The chain teachers' headroom", "", *headroom_section(results)]
    lines += ["### λ × loss_agg on chains", "", *sweep_section(results)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=Path("results/chain"))
    p.add_argument("--out", type=Path, default=None, help="default: <results>/report.md")
    p.add_argument("--check", action="store_true")
    args = p.parse_args(argv)
    out = args.out or args.results / "report.md"
    text = render(args.results)
    if args.check:
        if not out.exists() or out.read_text() != text:
            print(f"{out} is out of date: run python sweeps/chain_report.py", file=sys.stderr)
            return 1
        return 0
    atomic_write_text(out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
