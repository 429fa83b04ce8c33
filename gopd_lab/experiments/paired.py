"""Paired comparisons of sweep arms over shared training seeds.

Two arms of an experiment run with the same training seeds (and one evaluation seed) differ, seed by
seed, by ``d_s = metric(arm, s) - metric(baseline, s)``. The paired difference removes the noise that
both arms share (the seed's prompts, initial sampling stream, evaluation draw), so its interval is much
tighter than comparing two ``mean ± std``. We report the mean of ``d_s``, a two-sided Student-t
interval (``scipy.stats.ttest_rel``), and the number of seeds in which the arm won, lost or tied.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats


def paired_differences(
    results: pd.DataFrame,
    *,
    arm: str | Sequence[str],
    baseline: object,
    metrics: Sequence[str] | None = None,
    pair_on: str = "seed",
    by: Sequence[str] = (),
    confidence: float = 0.95,
) -> pd.DataFrame:
    """One row per (group, arm, metric): ``arm - baseline`` paired on ``pair_on``.

    ``results`` is a sweep's results table (one row per point; rows whose ``status`` is not ``"ok"``
    are left out). ``arm`` names the column(s) that tell arms apart (``"lam"``, or
    ``["lam", "reference"]`` with a tuple ``baseline``); ``by`` splits the table into independent
    comparisons first (e.g. the teacher). Seeds present in only one of the two arms are not paired.

    Columns: the ``by`` and ``arm`` columns, ``metric``, ``pairs``, ``diff_mean``, ``ci_low``,
    ``ci_high`` (NaN with fewer than two pairs), ``wins``, ``losses``, ``ties``, ``baseline_mean``,
    ``arm_mean``.
    """
    arm_cols = [arm] if isinstance(arm, str) else list(arm)
    base_key = baseline if isinstance(baseline, tuple) else (baseline,)
    if len(base_key) != len(arm_cols):
        raise ValueError(f"baseline {baseline!r} must give one value per arm column {arm_cols}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    ok = results[results["status"] == "ok"] if "status" in results else results
    metrics = list(metrics or [c for c in ok.columns if c.startswith("eval_") and c.endswith("_acc")])
    missing = [c for c in [*arm_cols, pair_on, *by, *metrics] if c not in ok.columns]
    if missing:
        raise ValueError(f"results have no column(s) {missing}; columns are {list(ok.columns)}")

    rows = []
    groups = ok.groupby(list(by), dropna=False) if by else [((), ok)]
    for group_key, group in groups:
        group_key = group_key if isinstance(group_key, tuple) else (group_key,)
        keys = list(dict.fromkeys(map(tuple, group[arm_cols].itertuples(index=False, name=None))))
        if base_key not in keys:
            continue
        base = _by_seed(_select(group, arm_cols, base_key), pair_on, metrics)
        for key in keys:
            if key == base_key:
                continue
            other = _by_seed(_select(group, arm_cols, key), pair_on, metrics)
            joined = base.join(other, lsuffix="_base", rsuffix="_arm", how="inner")
            for metric in metrics:
                pair = joined[[f"{metric}_base", f"{metric}_arm"]].dropna()
                diff = (pair[f"{metric}_arm"] - pair[f"{metric}_base"]).to_numpy()
                low, high = _interval(pair[f"{metric}_arm"].to_numpy(), pair[f"{metric}_base"].to_numpy(), confidence)
                rows.append(
                    {
                        **dict(zip(by, group_key)),
                        **dict(zip(arm_cols, key)),
                        "metric": metric,
                        "pairs": len(diff),
                        "diff_mean": float(diff.mean()) if len(diff) else float("nan"),
                        "ci_low": low,
                        "ci_high": high,
                        "wins": int((diff > 0).sum()),
                        "losses": int((diff < 0).sum()),
                        "ties": int((diff == 0).sum()),
                        "baseline_mean": float(pair[f"{metric}_base"].mean()) if len(diff) else float("nan"),
                        "arm_mean": float(pair[f"{metric}_arm"].mean()) if len(diff) else float("nan"),
                    }
                )
    return pd.DataFrame(rows)


def format_interval(row: pd.Series | dict, scale: float = 100.0, digits: int = 1) -> str:
    """``"+2.6 [+1.0, +4.2] (5/5)"``: the mean paired difference and its interval (in points when
    ``scale=100``) and the seeds won out of those paired."""
    mean, low, high = (row[k] * scale for k in ("diff_mean", "ci_low", "ci_high"))
    span = "" if np.isnan(low) else f" [{low:+.{digits}f}, {high:+.{digits}f}]"
    return f"{mean:+.{digits}f}{span} ({row['wins']}/{row['pairs']})"


def _select(frame: pd.DataFrame, cols: list[str], key: tuple) -> pd.DataFrame:
    return frame[(frame[cols] == pd.Series(key, index=cols)).all(axis=1)]


def _by_seed(frame: pd.DataFrame, pair_on: str, metrics: list[str]) -> pd.DataFrame:
    if frame[pair_on].duplicated().any():
        dup = frame[pair_on][frame[pair_on].duplicated()].tolist()
        raise ValueError(
            f"an arm has several points with the same {pair_on} {dup}: add the column that tells them apart to `arm` or `by`"
        )
    return frame.set_index(pair_on)[metrics]


def _interval(arm: np.ndarray, base: np.ndarray, confidence: float) -> tuple[float, float]:
    if len(arm) < 2:
        return float("nan"), float("nan")
    diff = arm - base
    if np.all(diff == diff[0]):  # zero variance: the interval collapses to the point
        return float(diff[0]), float(diff[0])
    ci = stats.ttest_rel(arm, base).confidence_interval(confidence)
    return float(ci.low), float(ci.high)
