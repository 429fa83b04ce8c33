"""Section 1b of docs/results.md: experiment 1's controls (sweeps/v2/lam_controls*.yaml), every comparison with
per-prompt outcomes on both sides. ``sweeps/report.py`` calls :func:`controls` with ``r``, a namespace of its loaders
and table helpers."""

from __future__ import annotations

import json

import pandas as pd

from gopd_lab.experiments.paired import mcnemar
from gopd_lab.experiments.verdicts import Findings, arm_matrix, bootstrap_pair, prompt_scores


def control_arms(r) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The controls' points as one table with an ``arm`` label, and their per-prompt outcomes (``point_id`` is
    ``<sweep>/<point>`` in both)."""
    frames, outcomes = [], []
    for name in r.CONTROL_SWEEPS:
        if not (r.V2 / name).is_dir():
            continue
        df = r.load(name).assign(sweep=name)
        df["point_id"] = name + "/" + df["point_id"]
        if name == "lam_controls":
            df["arm"] = [f"{agg} λ = {lam:g}" for agg, lam in zip(df.loss_agg, df.lam)]
        elif name == "lam_controls_constant":
            df["arm"] = [f"constant A_t = −{c:g}" for c in df.lam]
        else:
            df["arm"] = [f"reference = teacher, λ = {lam:g}" for lam in df.lam]
        frames.append(df)
        out = pd.read_csv(r.V2 / name / r.SWEEP_OUTCOMES)
        outcomes.append(out.assign(point_id=name + "/" + out["point_id"]))
    return pd.concat(frames, ignore_index=True), pd.concat(outcomes, ignore_index=True)


def controls(f: Findings, r) -> dict[str, str]:
    """Experiment 1's controls (sweeps/v2/lam_controls*.yaml): the official normalisation, the constant advantage,
    reference = teacher; every comparison with per-prompt outcomes on both sides."""
    add = ["eval_add_greedy_acc", "eval_add_mean_acc"]
    arms, outcomes = control_arms(r)
    fixed_out = pd.read_csv(r.V2 / "reference_outcomes.csv.gz")
    blocks = {"controls_arms": r.arms_table(arms, ["arm"], ["add"])}
    const = arms.arm[arms.sweep == "lam_controls_constant"].iloc[0]

    def matrix(arm: str, metric: str) -> pd.DataFrame:
        return arm_matrix(arms, outcomes, arms.arm == arm, metric, "add")

    keys: dict[str, int] = {}  # prose name → index of its greedy row in f.rows (mean@4 follows)

    def compare(finding: str, arm: str, baseline: str, expect: int, key: str) -> None:
        keys[key] = len(f.rows)
        d = r.paired_arms({a: arms[arms.arm == a] for a in (arm, baseline)}, baseline, add)
        boots = {m: bootstrap_pair(matrix(arm, k), matrix(baseline, k)) for m, k in zip(add, ("greedy", "mean"))}
        f.add(finding, f"{arm} − {baseline}", d[d.arm == arm], add, expect, boots)

    def versus_fixed(finding: str, arm: str, model: str, expect: int, key: str) -> None:
        keys[key] = len(f.rows)
        scores = {
            k: prompt_scores(fixed_out[fixed_out.model == model], k, "add").loc[model] for k in ("greedy", "mean")
        }
        d = r.versus_teacher(arms, "arm", arm, model, "add")
        boots = {m: bootstrap_pair(matrix(arm, k), scores[k]) for m, k in zip(add, ("greedy", "mean"))}
        f.add(finding, f"{arm} student − {model}", d, add, expect, boots)

    norm = "1b. the official normalisation (seq-mean-token-mean) against token-mean"
    compare(norm, "seq-mean-token-mean λ = 1", "token-mean λ = 1", 0, "norm1")
    compare(norm, "seq-mean-token-mean λ = 1.25", "token-mean λ = 1.25", 0, "norm125")
    beats = "1b. λ > 1 beats OPD, prompts × seeds"
    compare(beats, "token-mean λ = 1.25", "token-mean λ = 1", +1, "lam_tm")
    compare(beats, "seq-mean-token-mean λ = 1.25", "seq-mean-token-mean λ = 1", +1, "lam_sm")
    compare("1b. the constant advantage does less than OPD", const, "token-mean λ = 1", -1, "const_opd")
    versus_fixed("1b. the constant advantage does less than OPD", const, "student-base", 0, "const_base")
    passes = "1b. the student passes its teacher, prompts × seeds"
    versus_fixed(passes, "token-mean λ = 1", "teacher-add", +1, "teach_tm1")
    versus_fixed(passes, "token-mean λ = 1.25", "teacher-add", +1, "teach_tm125")
    versus_fixed(passes, "seq-mean-token-mean λ = 1.25", "teacher-add", +1, "teach_sm125")
    for key, i in keys.items():  # "−0.9 [−3.6, +1.8] (no difference detected)" for the prose, per metric
        for row, metric in ((f.rows[i], "g"), (f.rows[i + 1], "m")):
            blocks[f"c_{key}_{metric}"] = f"{row['prompts']} ({row['verdict']})"

    lam = r.load("lam")
    rerun = arms[arms.sweep == "lam_controls"]
    rerun = rerun[rerun.loss_agg == "token-mean"].set_index(["lam", "seed"])[add]
    same = rerun == lam.set_index(["lam", "seed"]).loc[rerun.index, add]
    equal = int(same.all(axis=1).sum())
    gap = (rerun - lam.set_index(["lam", "seed"]).loc[rerun.index, add]).abs().to_numpy().max() * 100
    blocks["controls_rerun_same"] = f"{equal} of {len(rerun)} points with both final accuracies equal" + (
        "" if equal == len(rerun) else f", the others within {gap:.1f} points"
    )
    teacher = prompt_scores(fixed_out[fixed_out.model == "teacher-add"], "greedy", "add").loc["teacher-add"]
    students = matrix("token-mean λ = 1.25", "greedy")
    per_seed = [(seed, mcnemar(row.to_numpy(), teacher.loc[row.index].to_numpy())) for seed, row in students.iterrows()]
    blocks["mcnemar_teacher"] = "; ".join(
        f"seed {seed}: {m['b']} vs {m['c']} discordant prompts, p = {m['p']:.2g}" for seed, m in per_seed
    )
    opd = arms[arms.arm == "token-mean λ = 1"].set_index("seed")
    checks = []
    for arm in sorted(a for a in arms.arm.unique() if a.startswith("reference")):
        part = arms[arms.arm == arm].set_index("seed")
        equal = (part[add] == opd.loc[part.index, add]).all(axis=1)
        same_prompts = all(
            outcomes[outcomes.point_id == part.loc[s, "point_id"]]
            .drop(columns="point_id")
            .reset_index(drop=True)
            .equals(
                outcomes[outcomes.point_id == opd.loc[s, "point_id"]].drop(columns="point_id").reset_index(drop=True)
            )
            for s in part.index
        )
        checks.append(
            f"{arm}: final accuracies equal to OPD's in {int(equal.sum())} of {len(equal)} seeds, "
            f"per-prompt outcomes {'identical' if same_prompts else 'NOT identical'}"
        )
    blocks["reference_teacher"] = "; ".join(checks) if checks else "not run (the shared CPU ran out first)"
    seeds = {name: sorted(arms[arms.sweep == name].seed.unique()) for name in r.CONTROL_SWEEPS}
    blocks["controls_seeds"] = "; ".join(f"`{name}`: {len(v)} ({', '.join(map(str, v))})" for name, v in seeds.items())
    pilot = json.loads((r.V2 / "lam_controls_pilot.json").read_text())
    blocks["pilot_c"] = f"{pilot['mean_abs_advantage']:.4f}"
    blocks["pilot_c_per_100"] = ", ".join(f"{x:.4f}" for x in pilot["mean_abs_advantage_per_100_steps"])
    return blocks
