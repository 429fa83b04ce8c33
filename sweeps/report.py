"""docs/results.md from the committed results under results/, with one command.

    python sweeps/report.py --collect   # after the sweeps of sweeps/v2/: publish each runs/sweeps/v2/<name> as the small
                                        # results/v2/<name> (plan, final metrics, evaluation curve, metrics every 20th
                                        # step; no weights) and evaluate the zoo models with the same protocol
    python sweeps/report.py             # results/ → docs/results.md (prose: sweeps/results_template.md)
    python sweeps/report.py --check     # exit 1 when docs/results.md is not what the committed results give

Every comparison is paired on the training seed (``gopd_lab.experiments.paired``): the arms of one experiment share the
seeds and the evaluation seed, so ``Δ`` is the mean over seeds of ``arm − baseline`` with a 95 % Student-t
interval and the number of seeds the arm won. A finding's verdict follows from its interval and the sign the
paper (or the theory) predicts: *reproduced* when the interval excludes 0 on the predicted side, *opposite*
when it excludes 0 on the other side, *inconclusive* when it contains 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace

import pandas as pd

from gopd_lab.experiments.paired import format_interval, paired_differences
from gopd_lab.experiments.sweep import SWEEP_OUTCOMES, load_sweep, summarise, write_outcomes
from gopd_lab.experiments.verdicts import (
    MARGIN,
    SLOPE_THRESHOLD,
    Findings,
    convergence,
    convergence_table,
    metric_label,
)
from gopd_lab.runio import atomic_write_text, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
V2 = RESULTS / "v2"
TEMPLATE = Path(__file__).with_name("results_template.md")
DOC = ROOT / "docs" / "results.md"
V2_SWEEPS = ["lam", "lam_siblings", "lam_nokl", "merge", "strong_to_weak", "estimators", "estimators_gamma1"]
CONTROL_SWEEPS = ["lam_controls", "lam_controls_constant", "lam_controls_reference"]
"""Experiment 1's controls (section 1b), run later, one worker."""
REFERENCE_MODELS = [
    "student-base",
    "teacher-add",
    "teacher-add-kl-over-1.25",
    "teacher-add-kl-over-1.5",
    "teacher-add-nokl",
    "teacher-mul",
    "big-base",
    "big-teacher",
]
EVAL = {"k": 4, "seed": 1234, "max_new_tokens": 6, "temperature": 1.0}
"""The evaluation protocol of every sweep in sweeps/v2 (their ``eval_*`` settings), used for the zoo models too."""
METRIC_NAMES = {"greedy_acc": "greedy", "mean_acc": "mean@4", "pass_acc": "pass@4"}


# ----------------------------------------------------------------------------- collect (runs → results)
def collect(names: list[str] = V2_SWEEPS + CONTROL_SWEEPS) -> None:
    """Publish each finished v2 sweep dir into results/v2 and evaluate the reference models."""
    from gopd_lab.config import load_yaml
    from gopd_lab.viz.course import publish_sweep

    for name in names:
        spec = load_yaml((ROOT / "sweeps" / "v2" / f"{name}.yaml").read_text())
        dest = publish_sweep(ROOT / spec["sweep_dir"], V2 / name, metrics_every=20)
        print(f"{ROOT / spec['sweep_dir']} → {dest.relative_to(ROOT)}")
    if set(names) != set(V2_SWEEPS + CONTROL_SWEEPS):  # only some: the zoo models' evaluation stays as committed
        return
    frame = evaluate_reference_models()
    atomic_write_text(V2 / "reference_models.csv", frame.to_csv(index=False, float_format="%.6g"))
    print(f"→ {(V2 / 'reference_models.csv').relative_to(ROOT)}")
    write_outcomes(reference_outcomes(), V2 / "reference_outcomes.csv.gz")
    print(f"→ {(V2 / 'reference_outcomes.csv.gz').relative_to(ROOT)}")


OUTCOME_MODELS = ["student-base", "teacher-add"]
"""The zoo models whose per-prompt outcomes on ``add`` are committed (``results/v2/reference_outcomes.csv.gz``): the
fixed models the controls' students are compared with prompt by prompt."""


def reference_outcomes() -> pd.DataFrame:
    """Per-prompt outcomes of ``OUTCOME_MODELS`` on ``add`` with the students' protocol; their accuracies must be the
    committed ``reference_models.csv`` ones exactly (the same evaluation, recorded prompt by prompt)."""
    import torch
    from transformers import AutoModelForCausalLM

    from gopd_lab.loop.evaluate import evaluate
    from gopd_lab.tasks import load_tasks
    from gopd_lab.tasks.arith import use_world
    from gopd_lab.world.tokenizer import build_char_tokenizer
    from gopd_lab.world.zoo import zoo_dir

    use_world("v2")
    torch.set_num_threads(1)
    tokenizer, frames = build_char_tokenizer(), []
    for name in OUTCOME_MODELS:
        model = AutoModelForCausalLM.from_pretrained(zoo_dir() / name).eval()
        records: list[dict] = []
        table = evaluate(model, tokenizer, load_tasks(["add"]), outcomes=records, **EVAL)
        for metric in ("greedy_acc", "mean_acc"):
            if float(table[metric].iloc[0]) != reference_acc(name, "add", metric, "add"):
                raise RuntimeError(f"{name}: {metric} {table[metric].iloc[0]} is not reference_models.csv's")
        frames.append(pd.DataFrame(records).assign(model=name, tasks="add"))
    out = pd.concat(frames, ignore_index=True)
    return out[["model", "tasks", *[c for c in out.columns if c not in ("model", "tasks")]]]


def evaluate_reference_models() -> pd.DataFrame:
    """The zoo models evaluated exactly as the students are at the end of their runs: on the task set of each
    experiment (``add`` alone, or ``add,mul``: the sampled completions of a domain depend on which prompts
    share the batch), with the same evaluation seed."""
    import torch
    from transformers import AutoModelForCausalLM

    from gopd_lab.loop.evaluate import evaluate
    from gopd_lab.tasks import load_tasks
    from gopd_lab.tasks.arith import use_world
    from gopd_lab.world.tokenizer import build_char_tokenizer
    from gopd_lab.world.zoo import zoo_dir

    use_world("v2")
    torch.set_num_threads(1)
    tokenizer, frames = build_char_tokenizer(), []
    for name in REFERENCE_MODELS:
        model = AutoModelForCausalLM.from_pretrained(zoo_dir() / name).eval()
        for tasks in ("add", "add,mul"):
            frame = evaluate(model, tokenizer, load_tasks(tasks.split(",")), **EVAL)
            frames.append(frame.assign(model=name, tasks=tasks))
    return pd.concat(frames)[["model", "tasks", "domain", "greedy_acc", "mean_acc", "pass_acc", "n"]]


# ----------------------------------------------------------------------------- tables
def table(name: str, by: list[str], root: Path = RESULTS / "v1") -> str:
    """Mean ± std over seeds of every final test accuracy of the sweep ``root/name``, one row per ``by`` value."""
    df = load_sweep(root / name)
    acc = sorted(c for c in df.columns if c.startswith("eval_") and c.endswith("_acc"))
    s = summarise(df, by, acc)
    rows = []
    for _, r in s.iterrows():
        cells = [str(r[b]) for b in by]
        cells += [f"{r[f'{m}_mean']:.3f} ± {r[f'{m}_std']:.3f}" for m in acc]
        cells.append(str(int(r["points"])))
        rows.append("| " + " | ".join(cells) + " |")
    head = "| " + " | ".join(by + [metric_label(m) for m in acc] + ["seeds"]) + " |"
    sep = "|" + "---|" * (len(by) + len(acc) + 1)
    failed = int((df.status != "ok").sum())
    wall = df.wall_seconds.sum()
    foot = f"\n{len(df)} points, {failed} failed, {wall / 60:.1f} point-minutes of wall time (2 workers)."
    return "\n".join([f"### {name}", "", head, sep, *rows]) + "\n" + foot + "\n"


def load(name: str) -> pd.DataFrame:
    """A committed v2 sweep as a table; the teacher spec shortened to the zoo name."""
    df = load_sweep(V2 / name)
    if "teacher" in df:
        df["teacher"] = df["teacher"].str.removeprefix("zoo:")
    if "reference" in df:
        df["reference"] = df["reference"].str.removeprefix("zoo:")
    return df


def reference_models() -> pd.DataFrame:
    return pd.read_csv(V2 / "reference_models.csv")


def reference_acc(model: str, domain: str, metric: str, tasks: str) -> float:
    ref = reference_models()
    return float(ref[(ref.model == model) & (ref.domain == domain) & (ref.tasks == tasks)][metric].iloc[0])


def arms_table(df: pd.DataFrame, arm: list[str], domains: list[str]) -> str:
    """Mean ± std over seeds of greedy / mean@4 / pass@4 per domain, one row per arm."""
    metrics = [f"eval_{d}_{m}" for d in domains for m in METRIC_NAMES]
    s = summarise(df, arm, metrics)
    head = "| " + " | ".join(arm + [metric_label(m) for m in metrics] + ["seeds"]) + " |"
    lines = [head, "|" + "---|" * (len(arm) + len(metrics) + 1)]
    for _, r in s.iterrows():
        cells = [_fmt(r[a]) for a in arm] + [f"{r[f'{m}_mean']:.3f} ± {r[f'{m}_std']:.3f}" for m in metrics]
        lines.append("| " + " | ".join(cells + [str(int(r["points"]))]) + " |")
    return "\n".join(lines)


def _fmt(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def curve_table(df: pd.DataFrame, arm: str, domain: str, sweep: str) -> str:
    """Greedy test accuracy every 50 steps, mean over seeds, one row per arm (the evaluation curve)."""
    rows = []
    for _, r in df[df.status == "ok"].iterrows():
        for e in read_jsonl(V2 / sweep / r["point_id"] / "eval.jsonl"):
            if e["domain"] == domain:
                rows.append({"arm": r[arm], "seed": r["seed"], "step": e["step"], "acc": e["greedy_acc"]})
    curve = pd.DataFrame(rows).groupby(["arm", "step"]).acc.mean().unstack("step")
    steps = list(curve.columns)
    lines = [f"| {arm} \\ step | " + " | ".join(str(s) for s in steps) + " |", "|" + "---|" * (len(steps) + 1)]
    for key, values in curve.iterrows():
        lines.append(f"| {_fmt(key)} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    return "\n".join(lines)


def last_stretch(df: pd.DataFrame, sweep: str, domain: str, *, start: int, end: int) -> pd.Series:
    """Paired over seeds: greedy accuracy at step ``end`` minus at step ``start`` (has the arm flattened?)."""
    rows = []
    for _, r in df[df.status == "ok"].iterrows():
        evals = {
            e["step"]: e["greedy_acc"]
            for e in read_jsonl(V2 / sweep / r["point_id"] / "eval.jsonl")
            if e["domain"] == domain
        }
        rows.append({"arm": "end", "seed": r["seed"], "acc": evals[end]})
        rows.append({"arm": "start", "seed": r["seed"], "acc": evals[start]})
    return paired_differences(pd.DataFrame(rows), arm="arm", baseline="start", metrics=["acc"]).iloc[0]


# ----------------------------------------------------------------------------- findings
def versus_teacher(df: pd.DataFrame, arm: str, value, teacher: str, domain: str) -> pd.DataFrame:
    """Students of one arm against a fixed model (the teacher, evaluated with the same protocol), per seed."""
    metrics = [f"eval_{domain}_greedy_acc", f"eval_{domain}_mean_acc"]
    students = df[(df[arm] == value) & (df.status == "ok")][["seed", *metrics]].assign(who="student")
    tasks = df["tasks"].iloc[0]
    fixed = {m: reference_acc(teacher, domain, m.removeprefix(f"eval_{domain}_"), tasks) for m in metrics}
    teachers = students.assign(who="teacher", **fixed)
    table = pd.concat([students, teachers])
    return paired_differences(table, arm="who", baseline="teacher", metrics=metrics, margin=MARGIN)


def paired_arms(frames: dict[str, pd.DataFrame], baseline: str, metrics: list[str]) -> pd.DataFrame:
    """Arms taken from different sweeps (same seeds, same evaluation seed), each named by its key."""
    table = pd.concat([f.assign(arm=name)[["arm", "seed", "status", *metrics]] for name, f in frames.items()])
    return paired_differences(table, arm="arm", baseline=baseline, metrics=metrics, margin=MARGIN)


def headroom_table(teacher: str, lams: list[float]) -> str:
    """The λ-target's accuracy minus the teacher's (λ = 1), from results/v2/headroom/<teacher>.csv."""
    curve = pd.read_csv(V2 / "headroom" / f"{teacher}.csv")
    lines = ["| domain | λ | target greedy (Δ vs λ = 1) | target mean@4 (Δ vs λ = 1) |", "|---|---|---|---|"]
    for domain, c in curve.groupby("domain", sort=False):
        one = c[c.lam == 1.0].iloc[0]
        for lam in lams:
            r = c[c.lam == lam].iloc[0]
            g, m = (r.greedy_acc - one.greedy_acc) * 100, (r.mean_acc - one.mean_acc) * 100
            lines.append(f"| {domain} | {lam:g} | {r.greedy_acc:.3f} ({g:+.1f}) | {r.mean_acc:.3f} ({m:+.1f}) |")
    return "\n".join(lines)


def changed_table(f: Findings) -> str:
    """Rows whose verdict under the Holm / prompt-level rule differs from the uncorrected seed interval's."""
    rows = [r for r in f.changed() if not r["finding"].startswith("1b.")]  # 1b's rows are new: no old wording
    lines = ["| finding | comparison | metric | uncorrected (seeds) | now |", "|---|---|---|---|---|"]
    lines += [
        f"| {r['finding']} | {r['comparison']} | {r['metric']} | {r['raw_verdict']} | {r['verdict']} |" for r in rows
    ]
    return "\n".join(lines) if rows else "none"


def verdict_metric_table() -> str:
    """The ``# verdict_metric:`` line of every sweeps/v2/*.yaml (a comment: SweepSpec reads no such key)."""
    lines = ["| sweep file | verdict metric |", "|---|---|"]
    for path in sorted((ROOT / "sweeps" / "v2").glob("*.yaml")):
        found = [
            line.partition(":")[2].strip()
            for line in path.read_text().splitlines()
            if line.startswith("# verdict_metric:")
        ]
        if len(found) != 1:
            raise ValueError(f"{path} must pre-register one `# verdict_metric:` line, has {len(found)}")
        lines.append(f"| `sweeps/v2/{path.name}` | {found[0]} |")
    return "\n".join(lines)


def controls_blocks(f: Findings) -> dict[str, str]:
    """Section 1b (sweeps/report_controls.py), given this module's loaders and table helpers."""
    sys.path.insert(0, str(Path(__file__).parent))
    import report_controls

    helpers = SimpleNamespace(
        V2=V2,
        CONTROL_SWEEPS=CONTROL_SWEEPS,
        SWEEP_OUTCOMES=SWEEP_OUTCOMES,
        load=load,
        arms_table=arms_table,
        paired_arms=paired_arms,
        versus_teacher=versus_teacher,
    )
    return report_controls.controls(f, helpers)


def build() -> dict[str, str]:
    """Every generated block of docs/results.md, by the name its marker uses in the template."""

    def pdiff(*args, **kwargs):
        return paired_differences(*args, margin=MARGIN, **kwargs)

    add = ["eval_add_greedy_acc", "eval_add_mean_acc"]
    both = add + ["eval_mul_greedy_acc", "eval_mul_mean_acc"]
    f = Findings()
    blocks: dict[str, str] = {}

    lam, sib, nokl = load("lam"), load("lam_siblings"), load("lam_nokl")
    d = pdiff(lam, arm="lam", baseline=1.0, metrics=add)
    for value in (1.25, 1.5, 2.0, 3.0):
        f.add("1. λ > 1 beats OPD (one teacher, β = 0.8)", f"λ = {value:g} − λ = 1", d[d.lam == value], add, +1)
    for value in (1.0, 1.25, 1.5, 2.0, 3.0):
        f.add(
            "1. the student passes its teacher",
            f"λ = {value:g} student − teacher-add",
            versus_teacher(lam, "lam", value, "teacher-add", "add"),
            add,
            +1,
        )
    for value, sibling in ((1.25, "teacher-add-kl-over-1.25"), (1.5, "teacher-add-kl-over-1.5")):
        frames = {"lam": lam[lam.lam == value], "sibling": sib[sib.teacher == sibling]}
        f.add(
            "1. the λ-student vs OPD from the β/λ teacher",
            f"λ = {value:g} ← teacher-add − OPD ← {sibling}",
            paired_arms(frames, "sibling", add),
            add,
            0,
        )
    d = pdiff(nokl, arm="lam", baseline=1.0, metrics=add)
    for value in (1.25, 2.0):
        f.add(
            "1. counter-example: KL-free teacher",
            f"λ = {value:g} − λ = 1 (teacher-add-nokl)",
            d[d.lam == value],
            add,
            -1,
        )
    for value in (2.0, 3.0):
        f.add(
            "1. counter-example: KL-free teacher",
            f"λ = {value:g} ← teacher-add − OPD ← teacher-add-nokl",
            paired_arms({"lam": lam[lam.lam == value], "nokl": nokl[nokl.lam == 1.0]}, "nokl", add),
            add,
            0,
        )
    past = pdiff(lam[lam.lam.isin([2.0, 3.0])], arm="lam", baseline=2.0, metrics=add)  # not a planned comparison
    blocks["lam3_greedy"], blocks["lam3_mean"] = (format_interval(past[past.metric == m].iloc[0]) for m in add)
    blocks["lam_arms"] = arms_table(pd.concat([lam, sib, nokl]), ["teacher", "lam"], ["add"])
    blocks["lam_curve"] = curve_table(lam, "lam", "add", "lam")
    blocks["lam_headroom"] = headroom_table("teacher-add", [1.25, 1.5, 2.0, 3.0])
    blocks["nokl_headroom"] = headroom_table("teacher-add-nokl", [1.25, 2.0])
    flat = last_stretch(lam[lam.lam == 1.0], "lam", "add", start=300, end=400)
    blocks["opd_flat"] = format_interval(flat)
    conv = convergence(lam, V2 / "lam", "lam", "add")
    blocks["convergence"] = convergence_table(
        [("λ =", conv), ("merge λ =", convergence(load("merge"), V2 / "merge", "lam", "add"))]
    )
    opd = conv[(conv.arm == 1.0) & (conv.signal == "mean@4")].iloc[0]
    blocks["opd_mean_slope"] = f"{opd.diff_mean:+.2f} [{opd.ci_low:+.2f}, {opd.ci_high:+.2f}]"
    blocks["slope_threshold"] = f"{SLOPE_THRESHOLD:g}"
    blocks.update(controls_blocks(f))

    merge = load("merge")
    d = pdiff(merge, arm="lam", baseline=1.0, metrics=both)
    for value in (1.25, 1.5, 2.0):
        f.add("2. merge: λ > 1 beats OPD", f"λ = {value:g} − λ = 1", d[d.lam == value], both, +1)
    for value in (1.0, 1.25, 1.5, 2.0):
        for domain, teacher in (("add", "teacher-add"), ("mul", "teacher-mul")):
            f.add(
                "2. merge: the student passes each teacher on its domain",
                f"λ = {value:g} student − {teacher} on {domain}",
                versus_teacher(merge, "lam", value, teacher, domain),
                [f"eval_{domain}_greedy_acc", f"eval_{domain}_mean_acc"],
                +1,
            )
    blocks["merge_arms"] = arms_table(merge, ["lam"], ["add", "mul"])
    blocks["merge_curve_add"] = curve_table(merge, "lam", "add", "merge")
    blocks["merge_curve_mul"] = curve_table(merge, "lam", "mul", "merge")

    s2w = load("strong_to_weak")
    d = pdiff(s2w, arm=["lam", "reference"], baseline=(1.0, "student"), metrics=both)
    same = d[(d.lam == 1.0) & (d.reference == "big-base")]
    blocks["s2w_same"] = "yes" if (same.diff_mean == 0).all() and (same.ties == same.pairs).all() else "NO"
    for value in (1.25, 2.0):
        f.add(
            "3. strong-to-weak: reward correction",
            f"λ = {value:g}: reference big-base − reference student",
            pdiff(s2w[s2w.lam == value], arm="reference", baseline="student", metrics=both),
            both,
            +1,
        )
    for value in (1.25, 2.0):
        for ref in ("student", "big-base"):
            row = d[(d.lam == value) & (d.reference == ref)]
            f.add("3. strong-to-weak: λ > 1 beats OPD", f"λ = {value:g}, reference {ref} − λ = 1", row, both, +1)
    blocks["s2w_arms"] = arms_table(s2w, ["lam", "reference"], ["add", "mul"])
    blocks["s2w_headroom"] = headroom_table("big-teacher", [1.25, 2.0])

    est, g1 = load("estimators"), load("estimators_gamma1")
    frames = {e: est[est.estimator == e] for e in ("sampled", "full", "topk")} | {"sampled γ = 1": g1}
    d = paired_arms(frames, "sampled", add)
    for name in ("full", "topk"):
        f.add("4. estimators at λ = 1.25", f"{name} − sampled", d[d.arm == name], add, +1)
    f.add("4. estimators at λ = 1.25", "sampled γ = 1 − sampled γ = 0", d[d.arm == "sampled γ = 1"], add, 0)
    for name in ("sampled", "full", "topk"):
        f.add(
            "4. estimators at λ = 1.25",
            f"{name} student − teacher-add",
            versus_teacher(est, "estimator", name, "teacher-add", "add"),
            add,
            +1,
        )
    same = est[est.estimator == "sampled"].set_index("seed")[add] == lam[lam.lam == 1.25].set_index("seed")[add]
    blocks["est_rerun_same"] = "yes" if same.all().all() else "NO"
    table = pd.concat([f_.assign(arm=k) for k, f_ in frames.items()])
    blocks["est_arms"] = arms_table(table, ["arm"], ["add"])
    blocks["est_curve"] = curve_table(table, "arm", "add", "estimators").replace("| arm \\ step", "| estimator \\ step")

    blocks["findings"] = f.markdown()
    for number in ("1", "1b", "2", "3", "4"):
        blocks[f"findings_{number}"] = f.markdown(number)
    blocks["changed_verdicts"] = changed_table(f)
    blocks["verdict_metrics"] = verdict_metric_table()
    blocks["margin"] = f"{MARGIN * 100:g}"
    blocks["reference_models"] = reference_table()
    blocks["headroom"] = headroom_curves()
    blocks["zoo"] = zoo_table()
    blocks["chain"] = (RESULTS / "chain" / "report.md").read_text().rstrip()  # python sweeps/chain_report.py
    wall = sum(load(n).wall_seconds.sum() for n in V2_SWEEPS)
    points = sum(len(load(n)) for n in V2_SWEEPS)
    failed = sum(int((load(n).status != "ok").sum()) for n in V2_SWEEPS)
    blocks["v2_cost"] = f"{points} points, {failed} failed, {wall / 60:.0f} point-minutes of wall time"
    return blocks


HEADROOM_TEACHERS = {
    "teacher-add": "teacher-add (β = 0.8)",
    "teacher-add-kl-over-1.25": "teacher-add-kl-over-1.25 (β = 0.64)",
    "teacher-add-kl-over-1.5": "teacher-add-kl-over-1.5 (β = 0.533)",
    "teacher-add-nokl": "teacher-add-nokl (no KL)",
    "teacher-mul": "teacher-mul (β = 0.2)",
    "big-teacher": "big-teacher (β = 0.8; reference big-base)",
}


def headroom_curves() -> str:
    """Every teacher's headroom curve (results/v2/headroom/<teacher>.csv): greedy / mean@4 / pass@4 of the λ-target."""
    rows, lams = [], None
    for teacher, label in HEADROOM_TEACHERS.items():
        curve = pd.read_csv(V2 / "headroom" / f"{teacher}.csv")
        lams = sorted(curve.lam.unique())
        for domain, c in curve.groupby("domain", sort=False):
            cells = [
                f"{r.greedy_acc:.3f} / {r.mean_acc:.3f} / {r.pass_acc:.3f}" for r in c.sort_values("lam").itertuples()
            ]
            rows.append(f"| {label} | {domain} | " + " | ".join(cells) + " |")
    names = {0.0: "λ = 0 (reference)", 1.0: "λ = 1 (teacher)"}
    head = "| teacher | domain | " + " | ".join(names.get(x, f"λ = {x:g}") for x in lams) + " |"
    return "\n".join([head, "|" + "---|" * (len(lams) + 2), *rows])


def zoo_table() -> str:
    """The v2 zoo from its manifest: recipe, accuracies (1,000 test prompts, seed 0) and build seconds."""
    from gopd_lab.world.zoo import read_manifest

    lines = ["| model | recipe | add greedy / mean@4 | mul greedy / mean@4 | build s |", "|---|---|---|---|---|"]
    for name, entry in read_manifest(ROOT / "data" / "zoo" / "v2")["models"].items():
        r, acc = entry["recipe"], entry["accuracy"]
        recipe = f"{r['method'].upper()} {r['tasks']}, {r['steps']:,} steps"
        if r.get("label_noise"):
            recipe += f", {r['label_noise']:.0%} label noise"
        if r.get("feedback_views"):
            recipe += f", {r['feedback_views']:.0%} self-teacher views"
        if r["method"] == "grpo":
            recipe += f", β = {r['kl_coef']:g}" if r.get("kl_coef") else ", no KL"
        if r.get("init"):
            recipe += f", from {r['init']}"
        cells = [f"{acc[d]['greedy']:.3f} / {acc[d]['mean@4']:.3f}" if d in acc else "—" for d in ("add", "mul")]
        lines.append(f"| {name} | {recipe} | " + " | ".join(cells) + f" | {entry['train_seconds']:,.0f} |")
    return "\n".join(lines)


def reference_table() -> str:
    ref = reference_models()
    ref = ref[ref.tasks == "add,mul"]
    lines = [
        "| model | add greedy | add mean@4 | add pass@4 | mul greedy | mul mean@4 | mul pass@4 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in REFERENCE_MODELS:
        cells = []
        for domain in ("add", "mul"):
            r = ref[(ref.model == name) & (ref.domain == domain)].iloc[0]
            cells += [f"{r.greedy_acc:.3f}", f"{r.mean_acc:.3f}", f"{r.pass_acc:.3f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def v1_blocks() -> dict[str, str]:
    """The superseded world-v1 sweeps (results/v1) and the lineage comparisons (results/<world>/lineage.csv)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import lineage_report

    blocks = {
        "v1_lam_single_teacher": table("lam_single_teacher", ["lam"]),
        "v1_multi_teacher_merge": table("multi_teacher_merge", ["lam"]),
        "lineage": lineage_report.markdown(pd.read_csv(lineage_report.TABLE)),
        "lineage_v2": lineage_report.markdown(pd.read_csv(V2 / "lineage.csv")),
    }
    return blocks


def render(template: str, blocks: dict[str, str]) -> str:
    """Replace every ``<!-- @name -->`` line of the template by its block (an unknown name is an error)."""
    out = []
    for line in template.splitlines():
        stripped = line.strip()
        if stripped.startswith("<!-- @") and stripped.endswith("-->"):
            name = stripped.removeprefix("<!-- @").removesuffix("-->").strip()
            if name not in blocks:
                raise KeyError(f"{TEMPLATE} asks for block {name!r}; sweeps/report.py makes {sorted(blocks)}")
            out.append(blocks[name])
        else:
            out.append(_inline(line, blocks))
    return "\n".join(out).rstrip() + "\n"


def _inline(line: str, blocks: dict[str, str]) -> str:
    """``{{name}}`` inside a line of prose becomes that (one-line) block."""
    while "{{" in line:
        head, _, rest = line.partition("{{")
        name, _, tail = rest.partition("}}")
        line = head + blocks[name.strip()] + tail
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--collect",
        nargs="*",
        metavar="SWEEP",
        help="publish runs/sweeps/v2/<SWEEP> into results/v2 first (no name: every v2 sweep, and the zoo models)",
    )
    parser.add_argument("--check", action="store_true", help="only compare docs/results.md with what it would be")
    args = parser.parse_args(argv)
    if args.collect is not None:
        collect(args.collect or V2_SWEEPS + CONTROL_SWEEPS)
    text = render(TEMPLATE.read_text(), build() | v1_blocks())
    if args.check:
        if DOC.read_text() != text:
            print(f"{DOC} is out of date: run `python sweeps/report.py`", file=sys.stderr)
            return 1
        print(f"{DOC} is what the committed results give")
        return 0
    atomic_write_text(DOC, text)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
