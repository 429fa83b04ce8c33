"""Figures and HTML views of gopd_lab runs; they return objects and never display.

Token-level views live in ``viz.tokens`` (coloured completions, a colour scale fixed across λ, the batch
heatmap; drawn with the pieces of ``viz.token_view``) and ``viz.chain_view`` (a completion's steps, its first
wrong step, Σ A_t per step, OPD beside GRPO credit); run-level plots in ``viz.runs`` (training and eval curves,
stage timings). Import any from here.
"""

from gopd_lab.viz.chain_view import ChainView, Steps, StepSpanError, chain_view, credit_comparison, step_sums
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
    LAM_SCALE,
    QUANTITIES,
    RUN_REFERENCE,
    TokenView,
    advantage_heatmap,
    available_quantities,
    color,
    lam_range,
    load_samples,
    references,
    token_values,
    token_view,
    token_views,
)

__all__ = [
    "LAM_SCALE",
    "ChainView",
    "StepSpanError",
    "Steps",
    "chain_view",
    "credit_comparison",
    "lam_range",
    "step_sums",
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
