"""The README's main job: distil ``student-base`` from a domain teacher with λ = 1 (OPD) and λ = 1.25
(ExOPD) on the embedded zoo, then print a before/after accuracy table and write the training curves."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from gopd_lab.config import RunConfig
from gopd_lab.loop.train import train


def demo_config(domain: str = "add", lam: float = 1.0, steps: int = 60, out_dir: str = "runs/demo") -> RunConfig:
    """The demo's run: zoo student-base ← zoo teacher-<domain>, reference = the student's initial weights."""
    return RunConfig(
        student="zoo:student-base",
        teacher=f"zoo:teacher-{domain}",
        reference="student",
        lam=lam,
        tasks=domain,
        estimator="sampled",
        steps=steps,
        batch_size=32,
        samples_per_prompt=1,
        lr=1e-4,
        max_new_tokens=6,
        temperature=1.0,
        eval_k=4,
        log_samples_every=10,
        device="cpu",
        dtype="float32",
        out_dir=str(Path(out_dir) / f"{domain}-lam{lam:g}"),
        overwrite=True,  # running the demo again replaces its own earlier runs
    )


def run_demo(
    out_dir: str = "runs/demo", steps: int = 60, domain: str = "add", lams: tuple[float, ...] = (1.0, 1.25)
) -> pd.DataFrame:
    """Train one run per λ and return the before/after table (also written to ``<out_dir>/results.csv``)."""
    from gopd_lab.runio import atomic_write_text
    from gopd_lab.viz import save_html, training_curves
    from gopd_lab.world.zoo import read_manifest

    rows, run_dirs = [], []
    teacher_acc = read_manifest()["models"][f"teacher-{domain}"]["accuracy"][domain]
    for lam in lams:
        cfg = demo_config(domain, lam, steps, out_dir)
        train(cfg)
        run_dirs.append(cfg.out_dir)
        evals = pd.read_json(Path(cfg.out_dir) / "eval.jsonl", lines=True)
        before, after = evals[evals.step == 0].iloc[0], evals[evals.step == steps].iloc[0]
        rows.append(
            {
                "run": Path(cfg.out_dir).name,
                "lam": lam,
                "greedy_before": before.greedy_acc,
                "greedy_after": after.greedy_acc,
                "mean@4_before": before.mean_acc,
                "mean@4_after": after.mean_acc,
                "teacher_greedy": teacher_acc["greedy"],
            }
        )
    table = pd.DataFrame(rows)
    atomic_write_text(Path(out_dir) / "results.csv", table.to_csv(index=False))
    save_html(training_curves(run_dirs), Path(out_dir) / "training_curves.html")
    print(f"\nG-OPD demo: student-base ← teacher-{domain}, {steps} steps, {domain} test split")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"\nrun dirs: {', '.join(run_dirs)}\ncurves:   {Path(out_dir) / 'training_curves.html'}")
    return table
