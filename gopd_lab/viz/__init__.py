"""Figures and HTML views of gopd_lab runs; they return objects and never display.

Token-level views live in ``viz_tokens`` (coloured completions, the batch heatmap), run-level plots
in ``viz_runs`` (training and eval curves, stage timings). Import either from here.
"""

from gopd_lab.viz.runs import (
    PALETTE,
    eval_curves,
    load_runs,
    run_colors,
    run_name,
    save_html,
    stage_timings,
    training_curves,
)
from gopd_lab.viz.tokens import (
    QUANTITIES,
    RUN_REFERENCE,
    TokenView,
    advantage_heatmap,
    available_quantities,
    color,
    load_samples,
    references,
    token_values,
    token_view,
    token_views,
)

__all__ = [
    "PALETTE",
    "QUANTITIES",
    "RUN_REFERENCE",
    "TokenView",
    "advantage_heatmap",
    "available_quantities",
    "color",
    "eval_curves",
    "load_runs",
    "load_samples",
    "references",
    "run_colors",
    "run_name",
    "save_html",
    "stage_timings",
    "token_values",
    "token_view",
    "token_views",
    "training_curves",
]
