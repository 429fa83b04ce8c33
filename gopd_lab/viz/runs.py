"""Plots of training runs read back from their run dirs (``metrics.jsonl``, ``eval.jsonl``).

``runs`` arguments accept a run dir, a list of run dirs, or the DataFrames of ``load_runs``. Each
run keeps one colour in every figure: colours come from a fixed palette in the order the runs were
given (``run_colors``), which ``load_runs`` records as the categories of its ``run`` column.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from html import escape
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gopd_lab.runio import atomic_write_text, read_jsonl

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
TRAINING_METRICS = ("loss", "reverse_kl", "adv_mean", "entropy")
STAGES = ("time_rollout", "time_score", "time_update")
_STAGE_PATTERNS = ("", "/", ".", "x")

RunsLike = str | os.PathLike | Sequence[str | os.PathLike] | pd.DataFrame


def run_name(run_dir: str | os.PathLike) -> str:
    """A run's name: ``name`` in its ``config.json`` if set, else the dir name."""
    config = Path(run_dir) / "config.json"
    name = json.loads(config.read_text()).get("name") if config.exists() else None
    return str(name) if name else Path(run_dir).name


def load_runs(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(metrics_df, eval_df)`` of one or several run dirs, each with a categorical ``run`` column.

    The categories keep the order of ``paths``, so every figure colours a run the same way even when
    it has no rows in one of the frames.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise ValueError("load_runs needs at least one run dir")
    for p in paths:
        if not Path(p).is_dir():
            raise FileNotFoundError(f"run dir not found: {p}")
    names = [run_name(p) for p in paths]
    if len(set(names)) != len(names):
        raise ValueError(f"two runs share a name: {names}; give them distinct dirs or config names")
    frames = []
    for filename in ("metrics.jsonl", "eval.jsonl"):
        df = pd.DataFrame([{"run": n, **row} for p, n in zip(paths, names) for row in read_jsonl(Path(p) / filename)])
        if df.empty:
            df = pd.DataFrame({"run": [], "step": []})
        df["run"] = pd.Categorical(df["run"], categories=names)
        frames.append(df)
    return frames[0], frames[1]


def run_colors(names: Sequence[str]) -> dict[str, str]:
    """The fixed palette keyed by run name, in the given order (cycling past 10 runs)."""
    return {n: PALETTE[i % len(PALETTE)] for i, n in enumerate(names)}


def _frame(runs: RunsLike, which: int) -> pd.DataFrame:
    if isinstance(runs, pd.DataFrame):
        return runs if "run" in runs else runs.assign(run="run")
    return load_runs(runs)[which]


def _run_order(df: pd.DataFrame) -> list[str]:
    if isinstance(df["run"].dtype, pd.CategoricalDtype):
        return list(df["run"].cat.categories)
    return list(dict.fromkeys(df["run"]))


def training_curves(runs: RunsLike, metrics: Sequence[str] = TRAINING_METRICS) -> go.Figure:
    """One subplot per metric (default loss, reverse_kl, adv_mean, entropy) vs step, a line per run."""
    df = _frame(runs, 0)
    order = _run_order(df)
    colors = run_colors(order)
    cols = 2 if len(metrics) > 1 else 1
    rows = -(-len(metrics) // cols)
    fig = make_subplots(
        rows=rows, cols=cols, subplot_titles=list(metrics), horizontal_spacing=0.1, vertical_spacing=0.18
    )
    for k, metric in enumerate(metrics):
        row, col = k // cols + 1, k % cols + 1
        for name in order:
            part = df[df["run"] == name]
            if metric not in part or part[metric].isna().all():
                continue
            fig.add_trace(
                go.Scatter(
                    x=part["step"].tolist(),
                    y=part[metric].tolist(),
                    mode="lines",
                    name=name,
                    legendgroup=name,
                    showlegend=k == 0,
                    line={"color": colors[name]},
                ),
                row=row,
                col=col,
            )
        fig.update_xaxes(title_text="step", row=row, col=col)
        fig.update_yaxes(title_text=metric, row=row, col=col)
    fig.update_layout(title="training", template="plotly_white", height=320 * rows)
    return fig


def eval_curves(runs: RunsLike, metric: str = "greedy_acc") -> go.Figure:
    """Accuracy (``greedy_acc`` or ``mean_acc``) vs step, one subplot per domain, a line per run."""
    df = _frame(runs, 1)
    order = _run_order(df)
    colors = run_colors(order)
    domains = sorted(df["domain"].dropna().unique()) if "domain" in df else []
    fig = make_subplots(rows=1, cols=max(1, len(domains)), subplot_titles=domains or None, shared_yaxes=True)
    for c, domain in enumerate(domains, start=1):
        for name in order:
            part = df[(df["run"] == name) & (df["domain"] == domain)].sort_values("step")
            if part.empty:
                continue
            fig.add_trace(
                go.Scatter(
                    x=part["step"].tolist(),
                    y=part[metric].tolist(),
                    mode="lines+markers",
                    name=name,
                    legendgroup=name,
                    showlegend=c == 1,
                    line={"color": colors[name]},
                ),
                row=1,
                col=c,
            )
        fig.update_xaxes(title_text="step", row=1, col=c)
    fig.update_yaxes(title_text=metric, range=[0, 1.02], row=1, col=1)
    fig.update_layout(title=f"evaluation ({metric})", template="plotly_white")
    return fig


def stage_timings(runs: RunsLike) -> go.Figure:
    """Stacked bars of the mean seconds per step spent in each stage, one bar per run.

    Bars take their run's colour; stages are told apart by pattern. ``other`` is what
    ``time_step`` holds beyond the three stages (logging, checkpoints).
    """
    df = _frame(runs, 0)
    order = [n for n in _run_order(df) if (df["run"] == n).any()]
    colors = run_colors(_run_order(df))
    means = df.groupby("run", observed=True).mean(numeric_only=True).reindex(order)
    stages = [s for s in STAGES if s in means]
    if "time_step" in means and stages:
        means["time_other"] = (means["time_step"] - means[stages].sum(axis=1)).clip(lower=0)
        stages.append("time_other")
    fig = go.Figure()
    for stage, pattern in zip(stages, _STAGE_PATTERNS):
        fig.add_trace(
            go.Bar(
                x=order,
                y=means[stage].tolist(),
                name=stage.removeprefix("time_"),
                marker={
                    "color": [colors[n] for n in order],
                    "pattern": {"shape": pattern, "fgcolor": "#fff"},
                    "line": {"color": "#fff", "width": 1},
                },
                hovertemplate="%{x}<br>" + stage + " %{y:.3f} s<extra></extra>",
            )
        )
    fig.update_layout(
        barmode="stack",
        title="mean time per step by stage",
        xaxis_title="run",
        yaxis_title="seconds per step",
        template="plotly_white",
    )
    return fig


def save_html(fig: go.Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as a self-contained HTML file (plotly.js inlined) atomically; returns the path."""
    atomic_write_text(path, fig.to_html(include_plotlyjs=True, full_html=True))
    return Path(path)


REPORT_FILE = "report.html"


def final_table(run_dir: str | os.PathLike) -> pd.DataFrame:
    """One row per domain: each evaluation metric at step 0 and at the last evaluated step (``eval.jsonl``)."""
    evals = pd.DataFrame(read_jsonl(Path(run_dir) / "eval.jsonl"))
    if evals.empty:
        return pd.DataFrame()
    last = int(evals["step"].max())
    metrics = [m for m in ("greedy_acc", "mean_acc", "pass_acc") if m in evals]
    rows = []
    for domain, part in evals.groupby("domain", sort=True):
        first, final = part[part.step == part.step.min()].iloc[-1], part[part.step == last]
        row = {"domain": domain, "n": int(first.get("n", 0))}
        for m in metrics:
            row[f"{m} @ step {int(first.step)}"] = first[m]
            row[f"{m} @ step {last}"] = final[m].iloc[-1] if not final.empty else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def run_report(run_dir: str | os.PathLike, path: str | os.PathLike | None = None, *, inline: bool = False) -> Path:
    """Write a run's story as one small HTML page (default ``<run_dir>/report.html``): its configuration's
    headline, the training curves, the evaluation curves and the before/after table. plotly.js is referenced
    from its CDN (19 kB for a 3-step run; it needs a network to draw) unless ``inline=True`` puts it in the page
    (4.8 MB, works offline)."""
    run = Path(run_dir)
    cfg = json.loads((run / "config.json").read_text()) if (run / "config.json").is_file() else {}
    metrics, evals = load_runs(run)
    parts = [training_curves(run)] if not metrics.empty else []
    if not evals.empty and "greedy_acc" in evals:
        parts.append(eval_curves(run))
    include: str | bool = True if inline else "cdn"
    figures = [
        fig.to_html(full_html=False, include_plotlyjs=include if k == 0 else False) for k, fig in enumerate(parts)
    ]
    headline = {k: cfg.get(k) for k in ("method", "student", "teacher", "lam", "estimator", "tasks", "steps", "lr")}
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{escape(json.dumps(v))}</td></tr>" for k, v in headline.items() if v)
    table = final_table(run)
    final = table.to_html(index=False, float_format=lambda x: f"{x:.3f}", border=0) if not table.empty else ""
    last = metrics.iloc[-1] if not metrics.empty else None
    summary = (
        f"<p>{len(metrics)} steps; final loss {last['loss']:.4f}</p>" if last is not None and "loss" in last else ""
    )
    html = "\n".join(
        [
            "<!DOCTYPE html>",
            f"<html><head><meta charset='utf-8'><title>{escape(run_name(run))}</title>",
            "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
            "td,th{padding:2px 10px;text-align:left}</style></head><body>",
            f"<h1>{escape(run_name(run))}</h1>",
            f"<table>{rows}</table>",
            summary,
            "<h2>Accuracy on the test splits, first and last evaluation</h2>" if final else "",
            final,
            *figures,
            "</body></html>",
        ]
    )
    out = Path(path) if path is not None else run / REPORT_FILE
    atomic_write_text(out, html)
    return out
