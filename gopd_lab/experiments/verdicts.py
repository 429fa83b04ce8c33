"""Verdicts of a results page (sweeps/report.py writes docs/results.md with them): paired comparisons with their
family-wise correction and the verdict rule, per-prompt intervals where the sweeps recorded per-prompt outcomes,
and convergence slopes.

The verdict rule. Every row has the seed-level paired interval and its two-sided p (``paired_differences``). Where
both sides have per-prompt outcomes, the row also gets the interval over prompts and seeds together
(``prompt_seed_interval``) and its p replaces the seed-level one; elsewhere the row says *seeds only*. Inside each
finding (one family: the arms and metrics it tests together) the p-values are Holm-corrected, and the verdict
follows the corrected p: **reproduced** when it is ≤ 0.05 and Δ has the predicted sign, **opposite** when it is
≤ 0.05 with the other sign, **inconclusive** otherwise. Where nothing is predicted: **differs** (corrected p ≤ 0.05),
**equivalent (±1 point)** (the two one-sided tests of ``tost_p`` within ±``MARGIN``, Holm-corrected over the
family's rows of that kind, ≤ 0.05), else **no difference detected** (neither shown).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gopd_lab.experiments.paired import format_interval, holm, paired_differences, prompt_seed_interval
from gopd_lab.runio import read_jsonl

ALPHA = 0.05
MARGIN = 0.01
"""Equivalence margin of the comparisons without a predicted sign: ±1 accuracy point (about the test split's own
standard error for one model at 0.9, so a smaller difference could not be told from a resampled test set)."""
SLOPE_THRESHOLD = 0.5
"""A slope that matters, in accuracy points per 100 steps: at that rate 400 more steps would add 2 points, more than
most effects in these tables."""
METRIC_NAMES = {"greedy_acc": "greedy", "mean_acc": "mean@4", "pass_acc": "pass@4"}


def metric_label(column: str) -> str:
    """``eval_add_greedy_acc`` → ``add greedy``."""
    body = column.removeprefix("eval_")
    for key, label in METRIC_NAMES.items():
        if body.endswith(key):
            return f"{body.removesuffix('_' + key)} {label}"
    return body


def verdict(row: pd.Series, expect: int) -> str:
    """From the (uncorrected) interval of ``row`` and the predicted sign ``expect`` (+1 or −1; 0 = no prediction)."""
    low, high = row["ci_low"] * expect, row["ci_high"] * expect
    if expect == 0:
        return "differs" if row["ci_low"] > 0 or row["ci_high"] < 0 else "no difference detected"
    if expect < 0:
        low, high = high, low
    return "reproduced" if low > 0 else "opposite" if high < 0 else "inconclusive"


def corrected_verdict(diff: float, p_holm: float, expect: int, tost_holm: float = float("nan")) -> str:
    """The verdict word from the Holm-corrected p (and, without a predicted sign, the corrected equivalence p)."""
    if expect == 0:
        if p_holm <= ALPHA:
            return "differs"
        return f"equivalent (±{MARGIN * 100:g} point)" if tost_holm <= ALPHA else "no difference detected"
    if not p_holm <= ALPHA:
        return "inconclusive"
    return "reproduced" if diff * expect > 0 else "opposite"


def _fmt_p(p: float) -> str:
    if np.isnan(p):
        return "–"
    return f"{p:.2g}" if p >= 0.001 else "<0.001"


class Findings:
    """Rows of the findings table: one paired comparison each, with the prediction it tests."""

    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(
        self,
        finding: str,
        comparison: str,
        diffs: pd.DataFrame,
        metrics: list[str],
        expect: int,
        prompts: dict[str, dict] | None = None,
    ) -> None:
        """``diffs``: ``paired_differences`` rows (with ``p``, and ``tost_p`` where ``expect`` is 0); ``prompts``: per
        metric the ``prompt_seed_interval`` result, where both sides recorded per-prompt outcomes."""
        for metric in metrics:
            row = diffs[diffs.metric == metric].iloc[0]
            boot = (prompts or {}).get(metric)
            self.rows.append(
                {
                    "finding": finding,
                    "comparison": comparison,
                    "metric": metric_label(metric),
                    "delta": format_interval(row),
                    "p_seeds": float(row["p"]),
                    "prompts": "seeds only" if boot is None else _boot_interval(boot),
                    "p": float(row["p"]) if boot is None else boot["p"],
                    "diff": float(row["diff_mean"]),
                    "tost_p": float(row.get("tost_p", float("nan"))),
                    "expect": expect,
                    "raw_verdict": verdict(row, expect),
                }
            )
        self._correct()

    def _correct(self) -> None:
        """Holm inside each finding; equivalence p-values corrected over the finding's rows without a prediction."""
        frame = pd.DataFrame(self.rows)
        for _, fam in frame.groupby("finding", sort=False):
            adjusted = holm(fam.p.to_numpy())
            tost = np.full(len(fam), np.nan)
            free = (fam.expect == 0).to_numpy()
            if free.any():
                tost[free] = holm(fam.tost_p.to_numpy()[free])
            for i, idx in enumerate(fam.index):
                r = self.rows[idx]
                r["holm"] = float(adjusted[i])
                r["verdict"] = corrected_verdict(r["diff"], r["holm"], r["expect"], tost[i])

    def markdown(self, number: str | None = None) -> str:
        """All rows, or the rows of the findings numbered ``number`` (without the finding column)."""
        rows = [r for r in self.rows if number is None or r["finding"].startswith(f"{number}.")]
        cols = ["comparison", "metric", "delta", "p_seeds", "prompts", "holm", "verdict"]
        cols = cols if number else ["finding", *cols]
        names = {
            "delta": "Δ points [95 %, seeds] (seeds won)",
            "p_seeds": "p (seeds)",
            "prompts": "Δ [95 %, prompts × seeds]",
            "holm": "Holm p",
            "verdict": "verdict (Holm)",
        }
        lines = ["| " + " | ".join(names.get(c, c) for c in cols) + " |", "|" + "---|" * len(cols)]
        for r in rows:
            cells = [_fmt_p(r[c]) if c in ("p_seeds", "holm") else str(r[c]) for c in cols]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def changed(self) -> list[dict]:
        """Rows whose corrected verdict differs from the uncorrected interval's."""
        return [r for r in self.rows if r["verdict"] != r["raw_verdict"]]


def _boot_interval(boot: dict) -> str:
    mean, low, high = (boot[k] * 100 for k in ("diff_mean", "ci_low", "ci_high"))
    return f"{mean:+.1f} [{low:+.1f}, {high:+.1f}]"


# ----------------------------------------------------------------------------- per-prompt outcomes
def prompt_scores(outcomes: pd.DataFrame, metric: str, domain: str) -> pd.DataFrame:
    """Per (point or model, prompt) score of ``metric`` (``greedy`` or ``mean``: the fraction of correct samples)
    on ``domain``, prompts as columns."""
    rows = outcomes[outcomes.domain == domain]
    samples = [c for c in rows.columns if c.startswith("s") and c[1:].isdigit()]
    score = rows["greedy"].astype(float) if metric == "greedy" else rows[samples].mean(axis=1)
    key = "point_id" if "point_id" in rows else "model"
    return rows.assign(score=score).pivot(index=key, columns="prompt", values="score")


def arm_matrix(df: pd.DataFrame, outcomes: pd.DataFrame, select: pd.Series, metric: str, domain: str) -> pd.DataFrame:
    """``(seeds, prompts)`` scores of the ``ok`` points of ``df`` where ``select`` holds, indexed by seed."""
    points = df[select & (df.status == "ok")].set_index("point_id")["seed"]
    scores = prompt_scores(outcomes[outcomes.point_id.isin(points.index)], metric, domain)
    return scores.set_axis(points.loc[scores.index].to_numpy(), axis=0).sort_index()


def bootstrap_pair(arm: pd.DataFrame, baseline: pd.DataFrame | pd.Series) -> dict:
    """``prompt_seed_interval`` of two ``arm_matrix`` tables on their shared seeds (or one against a fixed model's
    ``(prompts,)`` scores)."""
    if isinstance(baseline, pd.Series):
        return prompt_seed_interval(arm.to_numpy(), baseline.loc[arm.columns].to_numpy())
    seeds = arm.index.intersection(baseline.index)
    return prompt_seed_interval(arm.loc[seeds].to_numpy(), baseline.loc[seeds, arm.columns].to_numpy())


# ----------------------------------------------------------------------------- convergence
def _slope(steps: np.ndarray, values: np.ndarray) -> float:
    """Least-squares slope of ``values`` against ``steps``, in points per 100 steps (values are fractions)."""
    return float(np.polyfit(steps, values, 1)[0] * 100 * 100)


def convergence(df: pd.DataFrame, sweep_dir, arm: str, domain: str, *, last: int = 100) -> pd.DataFrame:
    """Per arm: the slope over the last ``last`` steps of greedy and mean@4 (the evaluations in that stretch) and of
    the training reward (``score_mean`` of the logged steps), per seed, then mean over seeds with its 95 % t interval
    (``paired_differences`` of the slope against 0). Columns: ``arm``, ``signal``, ``diff_mean``, ``ci_low``,
    ``ci_high``, ``wins``, ``pairs``, ``state``."""
    rows = []
    for _, r in df[df.status == "ok"].iterrows():
        run = sweep_dir / r["point_id"]
        evals = pd.DataFrame([e for e in read_jsonl(run / "eval.jsonl") if e["domain"] == domain])
        end = int(evals.step.max())
        tail = evals[evals.step >= end - last]
        steps = pd.DataFrame(read_jsonl(run / "metrics.jsonl"))
        steps = steps[steps.step >= end - last]
        for signal, frame, column in (
            ("greedy", tail, "greedy_acc"),
            ("mean@4", tail, "mean_acc"),
            ("training reward", steps, "score_mean"),
        ):
            slope = _slope(frame.step.to_numpy(float), frame[column].to_numpy(float))
            rows += [
                {"arm": r[arm], "signal": signal, "seed": r["seed"], "who": "slope", "value": slope},
                {"arm": r[arm], "signal": signal, "seed": r["seed"], "who": "zero", "value": 0.0},
            ]
    table = pd.DataFrame(rows)
    out = paired_differences(table, arm="who", baseline="zero", metrics=["value"], by=["arm", "signal"])
    out["state"] = [slope_state(low, high) for low, high in zip(out.ci_low, out.ci_high)]
    return out


def slope_state(low: float, high: float, threshold: float = SLOPE_THRESHOLD) -> str:
    """``flattened`` only when the interval lies inside ±threshold; ``rising`` / ``falling`` when it excludes 0."""
    if -threshold < low and high < threshold:
        return "flattened"
    if low > 0:
        return "rising"
    if high < 0:
        return "falling"
    return "not shown flat"


def convergence_table(frames: list[tuple[str, pd.DataFrame]]) -> str:
    """Markdown: one row per (sweep label, arm), the three slopes with interval and state."""
    head = "| arm | greedy (points / 100 steps) | mean@4 | training reward (score_mean) |"
    lines = [head, "|---|---|---|---|"]
    for label, conv in frames:
        for key, part in conv.groupby("arm", sort=False):
            cells = []
            for signal in ("greedy", "mean@4", "training reward"):
                r = part[part.signal == signal].iloc[0]
                cells.append(f"{r.diff_mean:+.2f} [{r.ci_low:+.2f}, {r.ci_high:+.2f}] {r.state}")
            lines.append(
                f"| {label} {key:g} | " + " | ".join(cells) + " |"
                if isinstance(key, float)
                else f"| {label} {key} | " + " | ".join(cells) + " |"
            )
    return "\n".join(lines)
