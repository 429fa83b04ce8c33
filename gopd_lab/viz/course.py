"""Helpers the course notebooks call: paths that work wherever a kernel starts, committed sweep results,
and the exercise checker.

A notebook's kernel starts in ``notebooks/`` under JupyterLab, ``make lab`` and nbval, and in the repository
root under ``papermill --cwd .`` or a sweep. ``repo_path`` makes a relative path mean the same file in both:
it is read against the repository checkout (:func:`find_repo`: ``$GOPD_LAB_REPO``, the checkout this package
was installed from, or the one the kernel started in), so ``repo_path("sweeps/v2/lam.yaml")`` is found from
either folder; from an installed wheel with no checkout, reading ``sweeps/`` or ``results/`` is one clear error.

The paper's sweeps ship their results in ``results/<world>/<name>/`` (written by :func:`publish_sweep` from a
finished ``gopd-lab sweep`` dir): ``sweep.json`` (the plan), one folder per point with ``params.json``,
``point.json``, ``config.json``, ``metrics.jsonl``, ``eval.jsonl`` and ``summary.json``. ``load_sweep`` reads
such a folder like any sweep dir; the executed point notebooks, logs, samples and weights are left out.

``exercise(id)`` is one of the course's exercises and ``check`` the plain checker, both from
:mod:`gopd_lab.viz.exercises`: they return a :class:`Verdict` that says ``right``, ``wrong`` (and why) or
``not answered yet``, and never raise on a bad answer, so a check cell runs top to bottom before anyone has
answered.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

from gopd_lab.checkout import (
    REPO,
    SWEEP_RESULTS,
    NeedsCheckoutError,
    committed_sweep,
    display_path,
    find_repo,
    repo_path,
)
from gopd_lab.runio import atomic_write_json
from gopd_lab.viz.effects import headroom_delta, headroom_delta_plot, paired_delta_plot, smoothed_curves
from gopd_lab.viz.exercise_bank import EXERCISES, exercise
from gopd_lab.viz.exercises import Verdict, check
from gopd_lab.viz.explorable import state_explorer, tree_explorer
from gopd_lab.viz.session import setup_notebook, setup_plotting, tensor_table

__all__ = [
    "EXERCISES",
    "GPU_PRESETS",
    "MATH_TASK",
    "NeedsCheckoutError",
    "REPO",
    "find_repo",
    "add_reference_lines",
    "setup_plotting",
    "SWEEP_RESULTS",
    "Verdict",
    "check",
    "exercise",
    "headroom_delta",
    "headroom_delta_plot",
    "paired_delta_plot",
    "smoothed_curves",
    "committed_band",
    "committed_headroom",
    "committed_sweep",
    "display_path",
    "publish_sweep",
    "repo_path",
    "setup_notebook",
    "state_explorer",
    "tree_explorer",
    "tensor_table",
    "measured_cost",
    "pick_gpu_preset",
    "preset_table",
    "preset_notes",
    "sweep_plan",
    "training_config",
    "zoo_models_in",
]

POINT_FILES = ("params.json", "point.json", "config.json", "metrics.jsonl", "eval.jsonl", "summary.json")
"""What :func:`publish_sweep` keeps of each point."""


def add_reference_lines(fig: Any, lines: list[dict], *, value: str, cols: dict[str, int] | None = None) -> Any:
    """Draw each ``{"model", "domain", value}`` row as a dotted horizontal line in its domain's subplot.

    The lines are legend entries (one per model, grey dash styles), not text annotations, so labels never
    overlap; the legend goes below the plot so that long run names are not cut off. ``cols`` maps a domain to
    its subplot column (default: one subplot).
    """
    import plotly.graph_objects as go

    dashes = ["dot", "dash", "dashdot", "longdash", "longdashdot"]
    models = list(dict.fromkeys(row["model"] for row in lines))
    for row in lines:
        dash = dashes[models.index(row["model"]) % len(dashes)]
        fig.add_hline(
            y=row[value],
            line_dash=dash,
            line_color="#666",
            line_width=1.5,
            row=1,
            col=(cols or {}).get(row["domain"], 1),
        )
    for k, model in enumerate(models):  # one legend entry per model (a shape has none)
        line = {"dash": dashes[k % len(dashes)], "color": "#666", "width": 1.5}
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", line=line, name=f"{model} (zoo)"))
    fig.update_layout(legend={"orientation": "h", "yanchor": "top", "y": -0.2, "x": 0}, margin={"b": 120})
    return fig


def committed_headroom(folder: str | Path = "results/v2/headroom") -> Any:
    """The committed headroom curves, one CSV per teacher in ``folder`` (written by ``sweeps/headroom.py`` from
    :func:`gopd_lab.loop.headroom.headroom_curve`), as one pandas table: ``teacher``, ``lam``, ``domain``,
    ``greedy_acc``, ``mean_acc``, ``pass_acc``, ``n``."""
    import pandas as pd

    root = repo_path(folder)
    paths = sorted(root.glob("*.csv"))
    if not paths:
        raise FileNotFoundError(f"no headroom curves in {root}: run `python sweeps/headroom.py --out {folder}`")
    return pd.concat([pd.read_csv(p).assign(teacher=p.stem) for p in paths], ignore_index=True)


def committed_band(name: str = "v2/lam", *, lam: float = 1.0, names: tuple[str, ...] = ("reverse_kl", "adv_mean")):
    """The range (lowest to highest over seeds, per logged step) of ``names`` in the committed sweep ``name``'s
    points at ``lam``: what a healthy run of that setting looks like (``viz.effects.smoothed_curves``'s band).
    The published metrics keep the first 10 steps and every 20th, so the band is drawn through those."""
    from gopd_lab.viz.effects import run_band
    from gopd_lab.viz.runs import load_runs

    root = committed_sweep(name)
    points = [p for p in sweep_plan(root)["points"] if json.loads((root / p / "params.json").read_text())["lam"] == lam]
    if not points:
        raise ValueError(f"the committed sweep {name!r} has no point at lam = {lam}")
    return run_band(load_runs([root / p for p in points])[0], names)


def sweep_plan(sweep_dir: str | Path) -> dict[str, Any]:
    """The plan a sweep dir was run with, from its ``sweep.json``: ``notebook``, ``grid``, ``fixed``, ``points``.
    A notebook path of another machine's checkout (``/…/notebooks/x.ipynb``) is shown as ``notebooks/x.ipynb``."""
    path = repo_path(sweep_dir) / "sweep.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {sweep_dir} a sweep dir (written by gopd-lab sweep)?")
    plan = json.loads(path.read_text())
    notebook = plan.get("notebook")
    if notebook and Path(notebook).is_absolute() and "notebooks" in Path(notebook).parts:
        # published from another checkout before publish_sweep made it relative: name it as in this repository
        parts = Path(notebook).parts
        notebook = str(Path(*parts[len(parts) - 1 - parts[::-1].index("notebooks") :]))
    return {"notebook": notebook, **{k: plan.get(k) for k in ("grid", "fixed", "points")}}


def _rounded(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value


def publish_sweep(sweep_dir: str | Path, dest: str | Path, *, metrics_every: int = 1, metrics_head: int = 10) -> Path:
    """Copy a finished sweep dir's plan and run files (``POINT_FILES``) to ``dest``, small enough to commit.

    Paths inside the repository are written relative to it; ``metrics.jsonl`` values are rounded to 6
    significant digits and, with ``metrics_every`` = n > 1, only the first ``metrics_head`` steps, every n-th
    step and the last are kept
    (``eval.jsonl`` and ``summary.json`` are copied as they are); every point must be ``ok``. The points'
    per-prompt outcomes (``outcomes.csv``) become one table, ``outcomes.csv.gz``.
    ``dest`` is written to a temporary sibling and renamed into place, so it is never half-written.
    """
    from gopd_lab.experiments.sweep import SWEEP_OUTCOMES, load_outcomes, write_outcomes

    if metrics_every < 1:
        raise ValueError(f"metrics_every must be a positive number of steps, got {metrics_every}")
    src, dest = repo_path(sweep_dir), repo_path(dest)
    plan = json.loads((src / "sweep.json").read_text())
    bad = [p for p in plan["points"] if json.loads((src / p / "point.json").read_text()).get("status") != "ok"]
    if bad:
        raise ValueError(f"points {bad} of {src} did not finish ok: rerun the sweep before publishing it")
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    notebook = Path(plan["notebook"])
    if notebook.is_absolute() and notebook.is_relative_to(REPO):
        plan["notebook"] = str(notebook.relative_to(REPO))
    atomic_write_json(tmp / "sweep.json", plan)
    for pid in plan["points"]:
        (tmp / pid).mkdir(parents=True)
        for name in POINT_FILES:
            if (src / pid / name).is_file():
                text = (src / pid / name).read_text().replace(f"{REPO}/", "")  # paths relative to the repository
                if name == "metrics.jsonl":  # 6 significant digits: a third of the size, far below seed noise
                    rows = [json.loads(line) for line in text.splitlines() if line]
                    last = len(rows) - 1
                    rows = [
                        r
                        for i, r in enumerate(rows)
                        if i == last or r["step"] <= metrics_head or r["step"] % metrics_every == 0
                    ]
                    text = "".join(json.dumps(_rounded(r)) + "\n" for r in rows)
                (tmp / pid / name).write_text(text)
        info = json.loads((tmp / pid / "point.json").read_text())
        info["notebook"] = None  # the executed notebook is not published
        atomic_write_json(tmp / pid / "point.json", info)
    outcomes = load_outcomes(src)  # every point's per-prompt outcomes, one table (None for older sweeps)
    if outcomes is not None:
        write_outcomes(outcomes, tmp / SWEEP_OUTCOMES)
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest


def zoo_models_in(plan: dict[str, Any]) -> list[str]:
    """The zoo models a sweep plan names (``zoo:<name>`` in its fixed or grid values), in order of mention."""
    text = json.dumps([plan.get("fixed") or {}, plan.get("grid") or {}])
    return list(dict.fromkeys(re.findall(r"zoo:([A-Za-z0-9_.\-]+)", text)))


# ----------------------------------------------------------------------------- GPU presets (notebook 04)
GPU_PRESETS = {
    "configs/gpu-0.5b.yaml": 24,
    "configs/gpu-1.5b.yaml": 40,
    "configs/gpu-1.7b.yaml": 80,
}
"""The GPU presets (``RunConfig`` YAML files) by the GPU memory in GiB each is sized for, smallest first."""
MATH_TASK = "data/math/word_problems.jsonl"
"""The math task the repository ships (``data/math/README.md``)."""


def pick_gpu_preset(memory_gib: float) -> str:
    """The largest preset of ``GPU_PRESETS`` whose memory fits ``memory_gib``."""
    fitting = [p for p, need in GPU_PRESETS.items() if need <= memory_gib]
    if not fitting:
        smallest = min(GPU_PRESETS.values())
        raise ValueError(
            f"a {memory_gib:.0f} GiB GPU is below the smallest preset ({smallest} GiB): set preset = None and "
            "pick smaller models, max_new_tokens or batch_size in the parameters cell"
        )
    return fitting[-1]


def preset_notes(path: str | Path) -> str:
    """The comment lines at the top of a preset file (what it trains, its expected memory and time per step)."""
    lines = []
    for line in repo_path(path).read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("# ").rstrip())
    return "\n".join(lines)


def preset_table() -> Any:
    """One row per GPU preset: its file, the GPU memory it is sized for, whether it exists, its header notes."""
    import pandas as pd

    rows = [
        {
            "preset": name,
            "GPU memory (GiB)": need,
            "present": repo_path(name).is_file(),
            "notes": preset_notes(name) if repo_path(name).is_file() else "",
        }
        for name, need in GPU_PRESETS.items()
    ]
    return pd.DataFrame(rows)


def measured_cost(history: Any) -> dict[str, Any]:
    """What a run cost, measured: mean seconds per step (``time_step`` of ``metrics.jsonl``, first step left out
    when there are more) and, on CUDA, the peak GPU memory allocated in this process."""
    import torch

    times = history["time_step"]
    cost: dict[str, Any] = {"seconds per step": float(times.iloc[1:].mean() if len(times) > 1 else times.mean())}
    if torch.cuda.is_available():
        cost["peak GPU memory (GiB)"] = torch.cuda.max_memory_allocated() / 2**30
    return cost


def training_config(preset: str | None, fallback: Any) -> tuple[Any, str]:
    """The ``RunConfig`` notebook 04 trains and a line saying why.

    ``preset = "auto"``: on a CUDA GPU the preset of :func:`pick_gpu_preset` for its memory, on a CPU
    ``fallback`` (the zoo settings); a path: that preset; ``None``: ``fallback``. A preset keeps ``fallback``'s
    ``out_dir``; its ``tasks``, when a relative ``.jsonl`` path, is read against the repository.
    """
    import torch

    from gopd_lab.config import RunConfig

    if preset == "auto":
        if not torch.cuda.is_available():
            return fallback, "no CUDA device: the embedded zoo on the CPU"
        memory = torch.cuda.get_device_properties(0).total_memory / 2**30
        preset, why = pick_gpu_preset(memory), f"{torch.cuda.get_device_name(0)} with {memory:.0f} GiB"
    elif preset is None:
        return fallback, "preset = None: the parameters cell"
    else:
        why = "preset named in the parameters cell"
    path = repo_path(preset)
    if not path.is_file():
        raise FileNotFoundError(f"GPU preset {path} does not exist; presets: {sorted(GPU_PRESETS)} (or preset = None)")
    cfg = RunConfig.load(path)
    tasks = [repo_path(t) if t.endswith(".jsonl") and not Path(t).is_absolute() else t for t in cfg.task_names]
    cfg = cfg.replace(tasks=",".join(str(t) for t in tasks), out_dir=fallback.out_dir)
    return cfg, f"{preset} ({why})"
