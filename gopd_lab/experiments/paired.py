"""Paired comparisons of sweep arms over shared training seeds.

Two arms of an experiment run with the same training seeds (and one evaluation seed) differ, seed by
seed, by ``d_s = metric(arm, s) - metric(baseline, s)``. The paired difference removes the noise that
both arms share (the seed's prompts, initial sampling stream, evaluation draw), so its interval is much
tighter than comparing two ``mean ± std``. We report the mean of ``d_s``, a two-sided Student-t
interval (``scipy.stats.ttest_rel``), and the number of seeds in which the arm won, lost or tied.

That interval covers the seeds only: the test prompts are the same in every run, so their own sampling error is
not in it. Where every point recorded its per-prompt outcomes (``outcomes.csv`` of a run, one table per published
sweep), :func:`prompt_seed_interval` puts the prompts' variance and the seeds' into one interval, also against a
fixed model (the teacher, scored once); :func:`prompt_seed_bootstrap` resamples prompts and seeds together (with
few seeds it is too narrow: a check, not the verdict's interval). :func:`holm` corrects a family of comparisons; :func:`tost_p` tests equivalence within a
stated margin; :func:`mcnemar` compares two models prompt by prompt on one seed.
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
    margin: float | None = None,
) -> pd.DataFrame:
    """One row per (group, arm, metric): ``arm - baseline`` paired on ``pair_on``.

    ``results`` is a sweep's results table (one row per point; rows whose ``status`` is not ``"ok"``
    are left out). ``arm`` names the column(s) that tell arms apart (``"lam"``, or
    ``["lam", "reference"]`` with a tuple ``baseline``); ``by`` splits the table into independent
    comparisons first (e.g. the teacher). Seeds present in only one of the two arms are not paired.

    Columns: the ``by`` and ``arm`` columns, ``metric``, ``pairs``, ``diff_mean``, ``ci_low``,
    ``ci_high`` (NaN with fewer than two pairs), ``p`` (two-sided paired t, :func:`paired_t_p`), ``wins``,
    ``losses``, ``ties``, ``baseline_mean``, ``arm_mean``; with ``margin``, ``tost_p`` (equivalence within
    ``±margin``, :func:`tost_p`).
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
            joined = base.merge(other, left_index=True, right_index=True, how="inner", suffixes=("_base", "_arm"))
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
                        "p": paired_t_p(diff),
                        **({} if margin is None else {"tost_p": tost_p(diff, margin)}),
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


# ----------------------------------------------------------------------------- prompts × seeds, multiplicity
def prompt_seed_bootstrap(
    arm: np.ndarray,
    baseline: np.ndarray,
    *,
    confidence: float = 0.95,
    n_boot: int = 4000,
    seed: int = 0,
) -> dict[str, float]:
    """``arm − baseline`` on the same test prompts, with an interval over prompts and seeds together.

    ``arm`` is ``(seeds, prompts)``: one score per training seed and test prompt (0/1 for greedy, the fraction of
    correct samples for mean@k); ``baseline`` is the same shape (a paired arm: the same seeds) or ``(prompts,)``
    (a fixed model, e.g. the teacher, scored once). The difference ``D[s, i]`` is resampled twice independently
    with replacement, seeds and prompts (the same prompts for both arms: the pairing), and each draw's mean
    ``Σ_s Σ_i w_s v_i D[s, i] / (S·P)`` (``w``, ``v`` multinomial counts) gives the percentile interval. With one
    seed only prompts are resampled. ``p`` is the two-sided bootstrap p-value of "no difference",
    ``min(1, 2·min(#{D* ≤ 0} + 1, #{D* ≥ 0} + 1) / (n_boot + 1))``.

    Returns ``diff_mean``, ``ci_low``, ``ci_high``, ``p``, ``seeds``, ``prompts``.
    """
    arm = np.asarray(arm, dtype=float)
    base = np.asarray(baseline, dtype=float)
    if arm.ndim != 2:
        raise ValueError(f"arm must be (seeds, prompts), got shape {arm.shape}")
    if base.shape not in (arm.shape, arm.shape[1:]):
        raise ValueError(f"baseline must be {arm.shape} or {arm.shape[1:]}, got {base.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    diff = arm - base  # (S, P), a fixed baseline broadcast over seeds
    n_seeds, n_prompts = diff.shape
    rng = np.random.default_rng(seed)
    stats_ = np.empty(n_boot)
    for start in range(0, n_boot, 500):  # chunks keep the (draws, prompts) matrices small
        n = min(500, n_boot - start)
        w = rng.multinomial(n_seeds, np.full(n_seeds, 1 / n_seeds), size=n) if n_seeds > 1 else np.ones((n, 1))
        v = rng.multinomial(n_prompts, np.full(n_prompts, 1 / n_prompts), size=n)  # (n, P)
        stats_[start : start + n] = ((w @ diff) * v).sum(axis=1) / (n_seeds * n_prompts)
    alpha = 1 - confidence
    low, high = np.quantile(stats_, [alpha / 2, 1 - alpha / 2])
    below, above = int((stats_ <= 0).sum()), int((stats_ >= 0).sum())
    p = min(1.0, 2 * min(below + 1, above + 1) / (n_boot + 1))
    return {
        "diff_mean": float(diff.mean()),
        "ci_low": float(low),
        "ci_high": float(high),
        "p": p,
        "seeds": n_seeds,
        "prompts": n_prompts,
    }


def prompt_seed_interval(arm: np.ndarray, baseline: np.ndarray, *, confidence: float = 0.95) -> dict[str, float]:
    """``arm − baseline`` on the same test prompts with a t interval whose variance has a seed term and a prompt
    term: ``SE² = var_s(d̄_s)/S + var_i(d̄_i)/P``, where ``d̄_s`` is seed ``s``'s mean difference over the prompts and
    ``d̄_i`` prompt ``i``'s mean difference over the seeds, and the t quantile of the seed term's ``S − 1`` degrees
    of freedom (``P − 1`` with one seed). That keeps the interval at least as wide as the seed-level one of
    :func:`paired_differences` (a pooled Welch–Satterthwaite count would narrow it below that when seeds dominate).

    The two-way random-effects view of ``D[s, i]``: the grand mean's variance is ``σ²_seed/S + σ²_prompt/P +
    σ²_rest/(S·P)``; the spread of ``d̄_s`` estimates ``σ²_seed + σ²_rest/P`` and that of ``d̄_i``
    ``σ²_prompt + σ²_rest/S``, so the sum counts the last term twice (slightly conservative). Unlike
    :func:`prompt_seed_bootstrap`, whose resampling of 3–6 seeds understates the seed term, this never comes out
    narrower than the seeds-only interval. ``arm`` is
    ``(seeds, prompts)``, ``baseline`` the same shape or ``(prompts,)`` (a fixed model); with one seed only the prompt
    term remains.

    Returns ``diff_mean``, ``ci_low``, ``ci_high``, ``p`` (two-sided), ``se``, ``df``, ``seeds``, ``prompts``.
    """
    arm = np.asarray(arm, dtype=float)
    base = np.asarray(baseline, dtype=float)
    if arm.ndim != 2:
        raise ValueError(f"arm must be (seeds, prompts), got shape {arm.shape}")
    if base.shape not in (arm.shape, arm.shape[1:]):
        raise ValueError(f"baseline must be {arm.shape} or {arm.shape[1:]}, got {base.shape}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    diff = arm - base  # (S, P)
    n_seeds, n_prompts = diff.shape
    mean = float(diff.mean())
    a = float(diff.mean(axis=1).var(ddof=1)) / n_seeds if n_seeds > 1 else 0.0  # seed term
    b = float(diff.mean(axis=0).var(ddof=1)) / n_prompts  # prompt term
    se = (a + b) ** 0.5
    if se == 0:
        return {
            "diff_mean": mean,
            "ci_low": mean,
            "ci_high": mean,
            "p": 1.0 if mean == 0 else 0.0,
            "se": 0.0,
            "df": float("nan"),
            "seeds": n_seeds,
            "prompts": n_prompts,
        }
    df = n_seeds - 1 if n_seeds > 1 else n_prompts - 1
    half = float(stats.t.ppf(0.5 + confidence / 2, df)) * se
    p = float(2 * stats.t.sf(abs(mean) / se, df))
    return {
        "diff_mean": mean,
        "ci_low": mean - half,
        "ci_high": mean + half,
        "p": p,
        "se": se,
        "df": float(df),
        "seeds": n_seeds,
        "prompts": n_prompts,
    }


def mcnemar(arm: Sequence[int], baseline: Sequence[int]) -> dict[str, float]:
    """Exact McNemar test of two 0/1 outcome vectors on the same prompts: ``b`` prompts only the arm gets right,
    ``c`` only the baseline, and the two-sided binomial p-value of ``b`` among ``b + c`` at one half (1 without
    discordant prompts)."""
    a, z = np.asarray(arm, dtype=int), np.asarray(baseline, dtype=int)
    if a.shape != z.shape:
        raise ValueError(f"arm and baseline must score the same prompts, got {a.shape} and {z.shape}")
    b, c = int(((a == 1) & (z == 0)).sum()), int(((a == 0) & (z == 1)).sum())
    p = 1.0 if b + c == 0 else float(stats.binomtest(b, b + c, 0.5).pvalue)
    return {"b": b, "c": c, "p": p}


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error), in the order given; NaN stays NaN and does not
    count towards the family's size. The ``i``-th smallest of ``m`` p-values becomes
    ``max_{j ≤ i} min(1, (m − j + 1)·p_(j))``; a hypothesis is rejected at level α when its adjusted p ≤ α."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    m = len(ok)
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, idx in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[idx]))
        out[idx] = running
    return out


def paired_t_p(diff: Sequence[float]) -> float:
    """Two-sided p-value of the paired Student-t test of ``diff`` (``arm − baseline`` per seed) against 0; NaN with
    fewer than two pairs, 0 or 1 when every difference is the same (non-zero or zero)."""
    d = np.asarray(diff, dtype=float)
    if len(d) < 2:
        return float("nan")
    if np.all(d == d[0]):
        return 1.0 if d[0] == 0 else 0.0
    return float(stats.ttest_1samp(d, 0.0).pvalue)


def tost_p(diff: Sequence[float], margin: float) -> float:
    """Equivalence (two one-sided t-tests) of the per-seed differences within ``±margin``: the larger of the two
    one-sided p-values of ``mean < margin`` and ``mean > −margin``; equivalence is shown at level α when it is
    ≤ α (the 1 − 2α interval lies inside ``±margin``). NaN with fewer than two pairs."""
    d = np.asarray(diff, dtype=float)
    if len(d) < 2:
        return float("nan")
    if np.all(d == d[0]):
        return 0.0 if abs(d[0]) < margin else 1.0
    upper = stats.ttest_1samp(d, margin, alternative="less").pvalue
    lower = stats.ttest_1samp(d, -margin, alternative="greater").pvalue
    return float(max(upper, lower))
