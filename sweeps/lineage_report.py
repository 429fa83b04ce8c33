"""The lineage sweeps (sweeps/v1/lineage.yaml, sweeps/v2/lineage.yaml): collect its points into a small committed table, and print the
markdown of docs/results.md's lineage section (every arm against λ = 1, paired over training seeds).

    python sweeps/lineage_report.py --collect   # runs/sweeps/v1/lineage → results/v1/lineage.csv (committed)
    python sweeps/lineage_report.py             # results/v1/lineage.csv → markdown tables on stdout
    python sweeps/lineage_report.py --world v2 --collect   # the same for sweeps/v2/lineage.yaml (results/v2)

The table has one row per point: ``arm``, ``seed``, ``status``, ``wall_seconds``, the final test accuracies
(``eval_add_greedy_acc``, ``eval_add_mean_acc``) and, averaged over the run's steps, what the arm's rule chose
(``lam_mean``, ``lam_std``, ``lam_max``, ``reopd_gamma_b``, ``gate_rate``, ``entropy_high_frac``; NaN where the
rule does not log it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from gopd_lab.experiments.paired import format_interval, holm, paired_differences
from gopd_lab.experiments.sweep import load_sweep
from gopd_lab.runio import atomic_write_text, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
SWEEP_DIR = ROOT / "runs" / "sweeps" / "v1" / "lineage"
TABLE = ROOT / "results" / "v1" / "lineage.csv"
ARMS = ["fixed-1", "fixed-1.25", "fixed-1.5", "reopd", "agopd", "entropy", "gated"]
BASELINE = "fixed-1"
METRICS = {"eval_add_greedy_acc": "add greedy", "eval_add_mean_acc": "add mean@4"}
CHOSEN = ["lam_mean", "lam_std", "lam_max", "reopd_gamma_b", "gate_rate", "entropy_high_frac"]


def collect(sweep_dir: Path = SWEEP_DIR, table: Path = TABLE) -> pd.DataFrame:
    """One row per point of the sweep dir, written atomically to ``table``."""
    df = load_sweep(sweep_dir)
    rows = []
    for _, r in df.iterrows():
        steps = pd.DataFrame(read_jsonl(sweep_dir / r["point_id"] / "metrics.jsonl"))
        chosen = {c: float(steps[c].mean()) if c in steps else float("nan") for c in CHOSEN}
        rows.append(
            {
                "arm": r["arm"],
                "seed": int(r["seed"]),
                "status": r["status"],
                "wall_seconds": round(float(r["wall_seconds"]), 1),
                **{m: r[m] for m in METRICS},
                **chosen,
            }
        )
    out = pd.DataFrame(rows)
    table.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(table, out.to_csv(index=False, float_format="%.6g"))
    return out


def paired_table(results: pd.DataFrame) -> pd.DataFrame:
    """Every arm against ``fixed-1`` (λ = 1, OPD), paired on the training seed."""
    diff = paired_differences(results, arm="arm", baseline=BASELINE, metrics=list(METRICS))
    diff["order"] = diff["arm"].map(ARMS.index)
    diff["holm"] = holm(diff["p"].to_numpy())  # one family: every arm on both metrics
    return diff.sort_values(["metric", "order"]).drop(columns="order")


def markdown(results: pd.DataFrame) -> str:
    ok = results[results.status == "ok"]
    head = "| arm | " + " | ".join(METRICS.values()) + " | mean λ_t | gate rate | forward-KL share | seeds |"
    lines = [head, "|" + "---|" * (len(METRICS) + 5)]
    for arm in ARMS:
        a = ok[ok.arm == arm]
        cells = [f"{a[m].mean():.3f} ± {a[m].std():.3f}" for m in METRICS]
        extra = [f"{a[c].mean():.3f}" if a[c].notna().any() else "–" for c in ("lam_mean", "gate_rate")]
        extra.append(f"{a['entropy_high_frac'].mean():.3f}" if a["entropy_high_frac"].notna().any() else "–")
        lines.append(f"| {arm} | " + " | ".join(cells + extra) + f" | {len(a)} |")
    diff = paired_table(results)
    lines += [
        "",
        "| arm − fixed-1 (points, 95 % interval, seeds won; Holm p over the 12) | "
        + " | ".join(METRICS.values())
        + " |",
    ]
    lines.append("|" + "---|" * (len(METRICS) + 1))
    for arm in ARMS[1:]:
        rows = [diff[(diff.arm == arm) & (diff.metric == m)].iloc[0] for m in METRICS]
        cells = [f"{format_interval(r)}; Holm p {r['holm']:.2g}" for r in rows]
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    failed = int((results.status != "ok").sum())
    minutes = results.wall_seconds.sum() / 60
    lines += ["", f"{len(results)} points, {failed} failed, {minutes:.1f} point-minutes of wall time (2 workers)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--world", choices=["v1", "v2"], default="v1", help="which world's sweep (sweeps/<world>/lineage.yaml)"
    )
    parser.add_argument(
        "--collect", action="store_true", help="read runs/sweeps/<world>/lineage, write the table first"
    )
    args = parser.parse_args(argv)
    sweep_dir, table = ROOT / "runs" / "sweeps" / args.world / "lineage", ROOT / "results" / args.world / "lineage.csv"
    if args.collect:
        collect(sweep_dir, table)
    if not table.is_file():
        sys.exit(
            f"{table} does not exist: run the sweep, then `python sweeps/lineage_report.py --world {args.world} --collect`"
        )
    print(markdown(pd.read_csv(table)))


if __name__ == "__main__":
    main()
