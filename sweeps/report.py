"""Write the results tables of the experiment sweeps as markdown (the tables of docs/results.md).

    python sweeps/report.py > docs/results_tables.md

Each table is mean ± std over seeds of the final test accuracy (greedy, mean@4 and pass@4), from the sweep
directories under runs/sweeps/ (run them with `gopd-lab sweep --spec sweeps/<name>.yaml`).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from gopd_lab.experiments.sweep import load_sweep, summarise
from gopd_lab.world.zoo import read_manifest

SWEEPS = {
    "lam_single_teacher": ["lam"],
    "multi_teacher_merge": ["lam"],
    "strong_to_weak": ["lam", "reference"],
    "estimators": ["estimator"],
    "estimators_gamma1": ["gamma"],
}


def table(name: str, by: list[str], root: Path = Path("runs/sweeps")) -> str:
    df = load_sweep(root / name)
    acc = sorted(c for c in df.columns if c.startswith("eval_") and c.endswith("_acc"))
    s = summarise(df, by, acc)
    rows = []
    for _, r in s.iterrows():
        cells = [str(r[b]) for b in by]
        cells += [f"{r[f'{m}_mean']:.3f} ± {r[f'{m}_std']:.3f}" for m in acc]
        cells.append(str(int(r["points"])))
        rows.append("| " + " | ".join(cells) + " |")
    names = [
        m.removeprefix("eval_")
        .replace("_greedy_acc", " greedy")
        .replace("_mean_acc", " mean@4")
        .replace("_pass_acc", " pass@4")
        for m in acc
    ]
    head = "| " + " | ".join(by + names + ["seeds"]) + " |"
    sep = "|" + "---|" * (len(by) + len(names) + 1)
    failed = int((df.status != "ok").sum())
    wall = df.wall_seconds.sum()
    foot = f"\n{len(df)} points, {failed} failed, {wall / 60:.1f} point-minutes of wall time (2 workers)."
    return "\n".join([f"### {name}", "", head, sep, *rows]) + "\n" + foot + "\n"


def zoo_table() -> str:
    rows = [
        "| model | " + " | ".join(["add greedy", "add mean@4", "mul greedy", "mul mean@4"]) + " |",
        "|---|---|---|---|---|",
    ]
    for name, entry in read_manifest()["models"].items():
        a = entry["accuracy"]
        rows.append(
            f"| {name} | {a['add']['greedy']:.3f} | {a['add']['mean@4']:.3f} | {a['mul']['greedy']:.3f} | {a['mul']['mean@4']:.3f} |"
        )
    return "### zoo (reference lines)\n\n" + "\n".join(rows) + "\n"


def main() -> None:
    out = [zoo_table()]
    for name, by in SWEEPS.items():
        if (Path("runs/sweeps") / name).exists():
            out.append(table(name, by))
        else:
            print(f"(skipping {name}: runs/sweeps/{name} does not exist)", file=sys.stderr)
    print("\n".join(out))


if __name__ == "__main__":
    pd.set_option("display.width", 200)
    main()
