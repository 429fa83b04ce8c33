"""Wall time of a papermill sweep with 1 worker against the same sweep with N workers, on this machine.

The sweep is 4 points of ``notebooks/experiment_point.ipynb`` (λ ∈ {1, 1.25} × seed ∈ {0, 1}, G-OPD on the zoo,
``--steps`` steps each, evaluation on ``--eval-limit`` test prompts), run by :func:`gopd_lab.experiments.sweep.run_sweep`
exactly as ``gopd-lab sweep`` runs it: each point is a ``python -m papermill`` subprocess whose kernel gets
``cores // workers`` threads. The 1-worker and N-worker sweeps alternate ``--repeats`` times, each into a fresh
directory, and the script prints the wall time of each and the ratio ``N workers / 1 worker`` per pair
(min / median / max). It also prints the largest difference between the two sweeps' evaluation results (the points are seeded;
the thread counts differ, so float rounding may differ).

    python bench/sweep.py --repeats 2 --out bench/results/sweep.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, stats, write_json  # noqa: E402

from gopd_lab.experiments.sweep import run_sweep  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2, help="the parallel sweep's workers (compared with 1)")
    p.add_argument("--steps", type=int, default=60, help="training steps per point")
    p.add_argument("--eval-limit", type=int, default=100, help="test prompts per domain in each evaluation")
    p.add_argument("--repeats", type=int, default=2, help="alternating (1 worker, N workers) pairs")
    p.add_argument("--out", default="bench/results/sweep.json")
    return p.parse_args(argv)


def one_sweep(workers: int, args, where: Path):
    grid = {"lam": [1.0, 1.25], "seed": [0, 1]}
    fixed = {"steps": args.steps, "eval_limit": args.eval_limit, "log_samples_every": 0}
    t0 = time.perf_counter()
    df = run_sweep(
        ROOT / "notebooks" / "experiment_point.ipynb",
        grid,
        fixed,
        sweep_dir=where,
        workers=workers,
        progress=False,
        cwd=ROOT,
    )
    wall = time.perf_counter() - t0
    if (df["status"] != "ok").any():
        raise SystemExit(f"a point failed in {where}: {df[df['status'] != 'ok'].to_dict('records')}")
    return wall, df


def main(argv=None) -> None:
    args = parse(argv)
    cores = os.cpu_count()
    print(
        f"4-point sweep, {args.steps} steps/point, eval on {args.eval_limit} prompts; {cores} cores; "
        f"1 worker ({cores} threads) vs {args.workers} workers ({max(1, cores // args.workers)} thread(s) each); "
        f"{args.repeats} alternating pairs",
        flush=True,
    )
    rows, ratios, same = [], [], []
    with tempfile.TemporaryDirectory(prefix="gopd_bench_sweep_") as tmp:
        for rep in range(args.repeats):
            walls, frames = {}, {}
            for workers in (1, args.workers):
                where = Path(tmp) / f"rep{rep}_w{workers}"
                walls[workers], frames[workers] = one_sweep(workers, args, where)
                shutil.rmtree(where, ignore_errors=True)
                print(f"  rep {rep}: {workers} worker(s) {walls[workers]:.1f} s", flush=True)
                rows.append({"rep": rep, "workers": workers, "wall_s": walls[workers]})
            ratios.append(walls[args.workers] / walls[1])
            key = [c for c in frames[1].columns if c.startswith("eval_") and frames[1][c].dtype.kind == "f"]
            a = frames[1].sort_values("point_id")[key].to_numpy()
            b = frames[args.workers].sort_values("point_id")[key].to_numpy()
            same.append(
                float(abs(a - b).max()) if key else None
            )  # thread counts differ, so tiny float drift is possible
    print_table(rows, ["rep", "workers", "wall_s"], title="sweep wall time")
    r = stats(ratios)
    print(
        f"\n{args.workers} workers / 1 worker wall time ({len(ratios)} pairs): median {r['median']:.2f}  "
        f"min {r['min']:.2f}  max {r['max']:.2f}; max |Δ| of the evaluation columns between the two: {same}"
    )
    write_json(
        args.out,
        {
            "args": vars(args),
            "cores": cores,
            "rows": rows,
            "ratios": ratios,
            "ratio": r,
            "max_abs_diff_eval": same,
            "median_wall_s": {
                w: statistics.median(x["wall_s"] for x in rows if x["workers"] == w) for w in (1, args.workers)
            },
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
