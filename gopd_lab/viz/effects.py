"""Plots that show an effect at its own scale: paired differences against a baseline with their 95 % intervals,
a headroom curve as the gain over λ = 1, and training curves smoothed over their raw points beside a reference
band from committed runs ("a healthy run looks like this").

A 1–2 point effect drawn on a 0–1 accuracy axis is a flat line; drawn as the difference to the baseline, with
its interval and a zero line, it is the plot's subject.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

__all__ = ["headroom_delta", "headroom_delta_plot", "paired_delta_plot", "run_band", "smoothed_curves"]

Z95 = 1.959964
"""The two-sided 95 % quantile of the standard normal."""
_LEGEND_BELOW = {"orientation": "h", "yanchor": "top", "y": -0.22, "x": 0}
_COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def paired_delta_plot(diffs: pd.DataFrame, *, x: str = "lam", title: str = "", baseline: str = "λ = 1") -> go.Figure:
    """The rows of :func:`gopd_lab.experiments.paired.paired_differences` as points with 95 % intervals, in
    accuracy points against ``x`` (``lam``: a line over λ; an arm name: a dot per arm), one colour per metric,
    and a zero line: the baseline ``baseline``. Markers filled where the interval excludes 0."""
    fig = go.Figure()
    for k, (metric, rows) in enumerate(diffs.groupby("metric", sort=False)):
        rows = rows.sort_values(x) if x == "lam" else rows
        excludes = (rows.ci_low > 0) | (rows.ci_high < 0)
        fig.add_trace(
            go.Scatter(
                x=rows[x],
                y=100 * rows.diff_mean,
                mode="lines+markers" if x == "lam" else "markers",
                name=metric.removeprefix("eval_"),
                line={"color": _COLOURS[k % len(_COLOURS)]},
                marker={"size": 10, "symbol": ["circle" if e else "circle-open" for e in excludes]},
                error_y={
                    "type": "data",
                    "symmetric": False,
                    "array": 100 * (rows.ci_high - rows.diff_mean),
                    "arrayminus": 100 * (rows.diff_mean - rows.ci_low),
                },
            )
        )
    fig.add_hline(y=0, line_dash="dash", line_color="#666", annotation_text=baseline, annotation_position="top left")
    fig.update_layout(
        title=title or f"paired difference to {baseline} (95 % interval; filled: the interval excludes 0)",
        xaxis_title="λ" if x == "lam" else x,
        yaxis_title="Δ accuracy (points)",
        template="plotly_white",
        height=400,
        legend=_LEGEND_BELOW,
        margin={"b": 110},
    )
    return fig


def headroom_delta(headroom: pd.DataFrame, *, baseline_lam: float = 1.0) -> pd.DataFrame:
    """Each headroom point's gain over the teacher itself (λ = ``baseline_lam``), in accuracy points, per
    teacher, domain and metric (``greedy_acc``, ``mean_acc``, ``pass_acc``), with a 95 % interval.

    The committed curves hold accuracies, not per-prompt results, so the interval is the one for two
    independent binomial proportions on ``n`` prompts each; both points are measured on the same prompts, whose
    positive correlation makes the true interval narrower: this one is conservative.
    """
    metrics = [m for m in ("greedy_acc", "mean_acc", "pass_acc") if m in headroom.columns]
    long = headroom.melt(id_vars=["teacher", "domain", "lam", "n"], value_vars=metrics, var_name="metric")
    base = long[long.lam == baseline_lam].set_index(["teacher", "domain", "metric"]).value.rename("base")
    long = long.join(base, on=["teacher", "domain", "metric"]).dropna(subset=["base"])
    samples = long.n * long.metric.map({"mean_acc": 4}).fillna(1)  # mean@4 averages 4 samples per prompt
    se = ((long.value * (1 - long.value) + long.base * (1 - long.base)) / samples).pow(0.5)
    long["delta"] = 100 * (long.value - long.base)
    long["half_width"] = 100 * Z95 * se
    return long[["teacher", "domain", "metric", "lam", "delta", "half_width"]].reset_index(drop=True)


def headroom_delta_plot(delta: pd.DataFrame, *, metric: str = "mean_acc", title: str = "") -> go.Figure:
    """:func:`headroom_delta` for one ``metric``: Δ against λ, one line per teacher, one subplot per domain, a zero
    line at the teacher's own accuracy."""
    rows = delta[delta.metric == metric]
    domains = list(dict.fromkeys(rows.domain))
    fig = make_subplots(rows=1, cols=len(domains), subplot_titles=domains, shared_yaxes=True)
    for k, (teacher, group) in enumerate(rows.groupby("teacher", sort=True)):
        for col, domain in enumerate(domains, 1):
            part = group[group.domain == domain].sort_values("lam")
            if part.empty:
                continue
            fig.add_trace(
                go.Scatter(
                    x=part.lam,
                    y=part.delta,
                    error_y={"type": "data", "array": part.half_width, "thickness": 1},
                    mode="lines+markers",
                    name=teacher,
                    legendgroup=teacher,
                    showlegend=col == next(c for c, d in enumerate(domains, 1) if d in set(group.domain)),
                    line={"color": _COLOURS[k % len(_COLOURS)]},
                ),
                row=1,
                col=col,
            )
        for col in range(1, len(domains) + 1):
            fig.add_hline(y=0, line_dash="dash", line_color="#666", row=1, col=col)
    fig.update_xaxes(title_text="λ")
    fig.update_yaxes(title_text=f"Δ {metric} vs λ = 1 (points)", col=1)
    fig.update_layout(
        title=title or f"the λ-target's gain over the teacher itself (λ = 1), {metric}, 95 % interval",
        template="plotly_white",
        height=420,
        legend=_LEGEND_BELOW,
        margin={"b": 110},
    )
    return fig


def run_band(metrics: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """Per step, the lowest and highest value over runs of each metric in ``names`` (``metrics`` as
    :func:`gopd_lab.viz.load_runs` returns it): ``step``, ``metric``, ``low``, ``high``, ``runs``."""
    rows = []
    for name in names:
        grouped = metrics.groupby("step")[name]
        rows.append(
            pd.DataFrame({"step": grouped.min().index, "metric": name, "low": grouped.min().values})
            .assign(high=grouped.max().values, runs=grouped.count().values)
            .dropna()
        )
    return pd.concat(rows, ignore_index=True)


def smoothed_curves(
    metrics: pd.DataFrame,
    names: Sequence[str] = ("reverse_kl", "adv_mean"),
    *,
    window: int = 25,
    band: pd.DataFrame | None = None,
    band_label: str = "reference runs",
    title: str = "training, smoothed (raw steps faint)",
) -> go.Figure:
    """One subplot per metric in ``names``: each run's raw per-step values as faint points and their centred
    rolling mean over ``window`` steps as a line; with ``band`` (:func:`run_band` of committed runs) the
    range those runs covered, in grey behind."""
    fig = make_subplots(rows=1, cols=len(names), subplot_titles=list(names))
    runs = list(dict.fromkeys(metrics.run.astype(str)))
    for col, name in enumerate(names, 1):
        if band is not None and not band[band.metric == name].empty:
            part = band[band.metric == name].sort_values("step")
            fig.add_trace(
                go.Scatter(
                    x=list(part.step) + list(part.step[::-1]),
                    y=list(part.high) + list(part.low[::-1]),
                    fill="toself",
                    fillcolor="rgba(120,120,120,0.18)",
                    line={"width": 0},
                    hoverinfo="skip",
                    name=band_label,
                    legendgroup="band",
                    showlegend=col == 1,
                ),
                row=1,
                col=col,
            )
        for k, run in enumerate(runs):
            rows = metrics[metrics.run.astype(str) == run].sort_values("step")
            colour = _COLOURS[k % len(_COLOURS)]
            smooth = rows[name].rolling(max(1, min(window, len(rows))), center=True, min_periods=1).mean()
            fig.add_trace(
                go.Scatter(
                    x=rows.step,
                    y=rows[name],
                    mode="markers",
                    marker={"size": 3, "color": colour, "opacity": 0.25},
                    name=f"{run} (raw)",
                    legendgroup=run,
                    showlegend=False,
                    hoverinfo="skip",
                ),
                row=1,
                col=col,
            )
            fig.add_trace(
                go.Scatter(
                    x=rows.step,
                    y=smooth,
                    mode="lines",
                    line={"color": colour, "width": 2.5},
                    name=run,
                    legendgroup=run,
                    showlegend=col == 1,
                ),
                row=1,
                col=col,
            )
    fig.update_xaxes(title_text="step")
    fig.update_layout(title=title, template="plotly_white", height=380, legend=_LEGEND_BELOW, margin={"b": 110})
    return fig
