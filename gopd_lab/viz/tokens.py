"""Per-token views of completions: coloured token HTML and the batch heatmap.

Input is a *token record*, one line of a run's ``samples.jsonl``::

    {"step", "index", "domain", "prompt", "completion", "tokens": [str],
     "lp_student": [float], "lp_teacher": [float], "lp_reference": [float] | None,
     "lp_references": {name: [float]} (optional), "advantage": [float],
     "teacher_rank": [int] | None (optional), "lam": float, "score": float | None}

Quantities a token can be coloured by (``QUANTITIES``):

- ``advantage``: A_t as stored; with ``lam`` or ``reference`` given it is recomputed from the stored
  log-probs as ``gopd_advantages(lp_student, lp_teacher, lp_reference, lam=lam)``;
- ``lp_student``, ``lp_teacher``, ``lp_reference``: the per-token log-probs;
- ``reward``: ``lp_teacher - lp_reference`` (what the teacher adds over the reference);
- ``teacher_rank``: rank of the sampled token under the teacher (0 = top);
- ``lam``: the λ_t each token's G-OPD signal used (``lam_t``, or the record's λ on every token), coloured
  around 1 (white = OPD, red = extrapolation, blue = interpolation);
- ``loss_kind``: which loss each token got (``reverse``, ``forward`` KL or ``gated`` out, ``docs/lineage.md``),
  a categorical colouring.

Everything here computes or renders; nothing displays. Tokens are drawn with ``viz.token_view`` (colours,
span, hover card, legend): inline-styled HTML (no script, no CDN), so it shows in JupyterLab, untrusted
notebooks, nbconvert and offline; one ``<style>`` rule shows a token's hover card (every number of the token,
styled), and where a front end strips it the colours still show. A colour scale is per view by default;
:func:`lam_range` (or ``token_views(..., scale_lams=LAM_SCALE)``) fixes it across λ so that λ changes colours.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import torch

from gopd_lab.objectives import gopd_advantages
from gopd_lab.runio import atomic_write_text, read_jsonl
from gopd_lab.viz.token_view import (
    CARD_CSS,
    CENTRE,
    KIND_COLORS,
    MARKS,
    MONO,
    SANS,
    color,
    display_token,
    fmt,
    format_value,
    legend_html,
    quantity_color,
    quantity_range,
    symmetric_range,
    token_span,
)

__all__ = [
    "CENTRE",
    "KIND_COLORS",
    "LAM_SCALE",
    "QUANTITIES",
    "RUN_REFERENCE",
    "SUMMED",
    "Record",
    "TokenView",
    "advantage_heatmap",
    "available_quantities",
    "color",
    "display_token",
    "lam_range",
    "legend_html",
    "load_samples",
    "quantity_color",
    "quantity_range",
    "references",
    "symmetric_range",
    "token_values",
    "token_view",
    "token_views",
]

Record = Mapping[str, Any]

QUANTITIES = ("advantage", "lp_student", "lp_teacher", "lp_reference", "reward", "teacher_rank", "lam", "loss_kind")
RUN_REFERENCE = "run"
"""Name under which a record's own ``lp_reference`` (the run's reference) is offered."""
SUMMED = ("advantage", "lp_student", "lp_teacher", "lp_reference", "reward")
"""Quantities whose sum over the completion means something (Σ A_t, a sequence log-prob); a panel of any other
(a rank, λ_t, the categorical ``loss_kind``) shows no Σ."""
LAM_SCALE = (1.0, 2.0)
"""The λ values a fixed advantage colour scale covers by default (:func:`lam_range`): OPD and the course's ExOPD."""


def load_samples(path: str | os.PathLike, step: int | None = None) -> list[dict]:
    """Token records from ``samples.jsonl`` (or a run dir holding it), optionally of one step."""
    path = Path(path)
    if path.is_dir():
        path = path / "samples.jsonl"
    return [r for r in read_jsonl(path) if step is None or r.get("step") == step]


def references(record: Record) -> dict[str, list[float]]:
    """Reference log-probs scored for ``record`` by name: the run's own first, then ``lp_references``."""
    own = record.get("lp_reference")
    refs = {} if own is None or all(v is None for v in own) else {RUN_REFERENCE: own}  # all None: not run (λ = 1)
    refs.update(record.get("lp_references") or {})
    return refs


def available_quantities(record: Record) -> list[str]:
    """The quantities of ``QUANTITIES`` that ``record`` holds the data for."""
    has_ref = bool(references(record))
    has_rank = record.get("teacher_rank") is not None
    has_teacher = record.get("lp_teacher") is not None  # GRPO / SFT samples have no teacher
    needs = {
        "lp_reference": has_ref and has_teacher,
        "reward": has_ref and has_teacher,
        "teacher_rank": has_rank,
        "lp_teacher": has_teacher,
        "lam": record.get("lam_t") is not None,
        "loss_kind": record.get("loss_kind") is not None,
    }
    return [q for q in QUANTITIES if needs.get(q, True)]


def _reference_logprobs(record: Record, reference: str | None) -> list[float] | None:
    refs = references(record)
    if reference is None:
        return refs.get(RUN_REFERENCE)
    if reference not in refs:
        raise ValueError(f"reference {reference!r} was not scored for this sample; scored: {sorted(refs) or 'none'}")
    return refs[reference]


def token_values(
    record: Record, quantity: str = "advantage", lam: float | None = None, reference: str | None = None
) -> list[float]:
    """The per-token values of ``quantity`` for ``record`` (one float per completion token).

    ``reference`` names a scored reference (``references(record)``; ``None``: the run's own).
    ``advantage`` is the stored A_t unless ``lam`` or ``reference`` is given; then it is
    recomputed exactly as ``gopd_advantages(lp_student, lp_teacher, lp_reference, lam=lam)``
    with ``lam`` defaulting to the record's λ.
    """
    if quantity not in QUANTITIES:
        raise ValueError(f"unknown quantity {quantity!r}; choose one of {QUANTITIES}")
    if quantity == "advantage" and lam is None and reference is None:
        return [float(v) for v in record["advantage"]]
    if quantity == "advantage" and record.get("lp_teacher") is None:  # GRPO / SFT: the stored A_t is all there is
        if lam is not None and float(lam) != float(record.get("lam", 1.0)):
            raise ValueError(
                f"this sample has no lp_teacher (a {record.get('method', 'teacher-free')} sample): A_t cannot be recomputed at λ = {lam:g}"
            )
        return [float(v) for v in record["advantage"]]
    if quantity in ("lp_student", "lp_teacher"):
        if record.get(quantity) is None:
            raise ValueError(f"this sample has no {quantity} (a {record.get('method', 'teacher-free')} sample)")
        return [float(v) for v in record[quantity]]
    if quantity == "teacher_rank":
        if record.get("teacher_rank") is None:
            raise ValueError("this sample has no teacher_rank (the run did not record it)")
        return [float(v) for v in record["teacher_rank"]]
    if quantity == "lam":
        lam_t = record.get("lam_t")
        return (
            [float(v) for v in lam_t] if lam_t is not None else [float(record.get("lam", 1.0))] * len(record["tokens"])
        )
    if quantity == "loss_kind":
        if record.get("loss_kind") is None:
            raise ValueError("this sample has no loss_kind (logged by runs with a lam_mode, docs/lineage.md)")
        return [float(list(KIND_COLORS).index(k)) for k in record["loss_kind"]]
    lp_ref = _reference_logprobs(record, reference)
    if quantity == "advantage":
        lam = record.get("lam", 1.0) if lam is None else lam
        adv = gopd_advantages(
            torch.tensor([record["lp_student"]], dtype=torch.float32),
            torch.tensor([record["lp_teacher"]], dtype=torch.float32),
            None if lp_ref is None else torch.tensor([lp_ref], dtype=torch.float32),
            lam=float(lam),
        )  # (1, C)
        return adv[0].tolist()
    if lp_ref is None:
        raise ValueError(f"{quantity!r} needs a reference, and this sample has none scored")
    if quantity == "lp_reference":
        return [float(v) for v in lp_ref]
    return [float(t) - float(r) for t, r in zip(record["lp_teacher"], lp_ref)]  # reward


def _at_lams(record: Record, quantity: str, lams: Sequence[float], reference: str | None) -> list[list[float]]:
    """``quantity``'s values at each λ of ``lams`` (one row when it does not depend on λ or cannot be
    recomputed: a sample with no scored reference or no teacher, e.g. GRPO's)."""
    if quantity != "advantage" or not references(record) or record.get("lp_teacher") is None:
        return [token_values(record, quantity, None, reference)]
    return [token_values(record, quantity, lam, reference) for lam in lams]


def lam_range(
    records: Record | Sequence[Record],
    quantity: str = "advantage",
    lams: Sequence[float] = LAM_SCALE,
    reference: str | None = None,
) -> float:
    """A colour scale's half-width fixed across λ: the max |value| of ``quantity`` over ``records`` at every λ
    in ``lams``. A_t is linear in λ, so the scale holds every λ between ``min(lams)`` and ``max(lams)``; views
    drawn on it (``token_views(..., vmax=lam_range(...))``) change colour as λ moves instead of rescaling.
    Quantities that do not depend on λ get their plain range."""
    records = [records] if isinstance(records, Mapping) else list(records)
    return quantity_range(quantity, [row for r in records for row in _at_lams(r, quantity, lams, reference)])


def _hover_rows(record: Record, i: int, quantity: str, shown: float, lp_ref: list[float] | None) -> list[tuple]:
    """(name, value) rows of a token's hover card."""
    rows = [(f"{quantity} (shown)", format_value(quantity, shown)), ("A_t (stored)", fmt(record["advantage"][i]))]
    rows += [(k, fmt(record[k][i])) for k in ("lp_student", "lp_teacher") if record.get(k) is not None]
    if lp_ref is not None and record.get("lp_teacher") is not None and lp_ref[i] is not None:
        rows.append(("lp_reference", fmt(lp_ref[i])))
        rows.append(("reward", fmt(float(record["lp_teacher"][i]) - float(lp_ref[i]))))
    rows += [(f"lp_reference[{n}]", fmt(v[i])) for n, v in (record.get("lp_references") or {}).items()]
    if record.get("teacher_rank") is not None:
        rows.append(("teacher_rank", str(int(record["teacher_rank"][i]))))
    return rows


def _tokens_html(record: Record, values: list[float], vmax: float, quantity: str, lp_ref: list[float] | None) -> str:
    return "".join(
        token_span(token, i, value, vmax, quantity, _hover_rows(record, i, quantity, value, lp_ref))
        for i, (token, value) in enumerate(zip(record["tokens"], values))
    )


def _default_label(record: Record) -> str:
    bits = [f"step {record['step']}" if "step" in record else "", f"#{record['index']}" if "index" in record else ""]
    bits += [str(record.get("domain") or ""), f"score {record['score']}" if record.get("score") is not None else ""]
    return " · ".join(b for b in bits if b)


def _panel_html(
    record: Record,
    values: list[float],
    vmax: float,
    quantity: str,
    lam: float | None,
    reference: str | None,
    label: str | None,
) -> str:
    lp_ref = _reference_logprobs(record, reference) if references(record) else None
    ref_name = reference or (RUN_REFERENCE if lp_ref is not None else "none")
    caption = quantity
    if quantity == "advantage" and (lam is not None or reference is not None):
        caption += f" (λ={record.get('lam', 1.0) if lam is None else lam:g}, reference {ref_name})"
    elif quantity in ("lp_reference", "reward"):
        caption += f" (reference {ref_name})"
    if quantity in SUMMED:
        caption += f" · Σ = {sum(v for v in values if math.isfinite(v)):+.4f}"
    head = html.escape(_default_label(record) if label is None else label)
    prompt = html.escape(str(record.get("prompt", "")))
    return (
        f'<div class="gopd-panel" style="flex:1 1 320px;min-width:0;margin:4px 0">'
        f'<div style="font-weight:600;font-size:12px">{head}</div>'
        f'<div style="font-size:11px;color:#555">{html.escape(caption)}</div>'
        f'<div style="line-height:1.9;font-size:13px;overflow-wrap:break-word;{MONO}">'
        f'<span class="prompt" style="color:#777;white-space:pre-wrap">{prompt}</span>'
        f"{_tokens_html(record, values, vmax, quantity, lp_ref)}</div>{legend_html(quantity, vmax)}</div>"
    )


@dataclass(frozen=True)
class TokenView:
    """A rendered token view: ``html`` (a fragment), the ``values`` shown per panel, the scale ``vmax``."""

    html: str
    values: list[list[float]]
    vmax: list[float]

    def _repr_html_(self) -> str:
        return self.html

    def save(self, path: str | os.PathLike, title: str = "gopd_lab token view") -> Path:
        """Write a standalone HTML page (UTF-8, no external resources) atomically; returns the path."""
        page = (
            f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{html.escape(title)}</title></head>'
            f'<body style="margin:16px;background:#fff">{self.html}</body></html>\n'
        )
        atomic_write_text(path, page)
        return Path(path)


def _per_panel(value: Any, n: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} has {len(value)} entries for {n} records")
        return list(value)
    return [value] * n


def token_views(
    records: Sequence[Record],
    labels: Sequence[str] | None = None,
    *,
    quantity: str | Sequence[str] = "advantage",
    lam: float | None | Sequence[float | None] = None,
    reference: str | None | Sequence[str | None] = None,
    vmax: float | None = None,
    side_by_side: bool = True,
    scale_lams: Sequence[float] | None = None,
) -> TokenView:
    """Several records as labelled panels, side by side (wrapping) or stacked.

    ``quantity``, ``lam`` and ``reference`` are one value for all panels or a list with one per
    record, so the same record can be compared under two references or two λ. Panels showing the
    same quantity share one colour scale: ``vmax`` if given; else, with ``scale_lams`` (e.g. ``LAM_SCALE``),
    the advantage scale is fixed across those λ (:func:`lam_range` of the panels' records), so the same
    records drawn at another λ keep the same scale; else the max |value| among the panels shown.
    """
    n = len(records)
    quantities = _per_panel(quantity, n, "quantity")
    lams, refs = _per_panel(lam, n, "lam"), _per_panel(reference, n, "reference")
    names = [None] * n if labels is None else _per_panel(list(labels), n, "labels")
    values = [token_values(r, q, lm, rf) for r, q, lm, rf in zip(records, quantities, lams, refs)]

    def scale_of(q: str) -> float:
        if vmax:
            return vmax
        if scale_lams is not None and q == "advantage":
            rows = [
                row for r, q2, rf in zip(records, quantities, refs) if q2 == q for row in _at_lams(r, q, scale_lams, rf)
            ]
            return quantity_range(q, rows)
        return quantity_range(q, [v for v, q2 in zip(values, quantities) if q2 == q])

    scale = {q: scale_of(q) for q in set(quantities)}
    panels = [
        _panel_html(r, v, scale[q], q, lm, rf, lb)
        for r, v, q, lm, rf, lb in zip(records, values, quantities, lams, refs, names)
    ]
    flow = "display:flex;flex-wrap:wrap;gap:8px 24px" if side_by_side else "display:block"
    style = f"{flow};color:#111;background:#fff;padding:4px;{SANS}"
    body = f'<div class="gopd-tokens" style="{style}">{"".join(panels)}<style>{CARD_CSS}</style></div>'
    return TokenView(body, values, [scale[q] for q in quantities])


def token_view(
    record: Record | Sequence[Record],
    quantity: str = "advantage",
    lam: float | None = None,
    reference: str | None = None,
    vmax: float | None = None,
) -> TokenView:
    """One completion (or a list, stacked on one colour scale) coloured by a per-token quantity.

    Colours are diverging around 0 (blue negative, white zero, red positive) on the symmetric
    range ``[-vmax, vmax]`` (default: the max |value|); hovering a token shows all its numbers.
    """
    records = [record] if isinstance(record, Mapping) else list(record)
    return token_views(records, quantity=quantity, lam=lam, reference=reference, vmax=vmax, side_by_side=False)


def advantage_heatmap(
    records: Sequence[Record], quantity: str = "advantage", lam: float | None = None, reference: str | None = None
) -> go.Figure:
    """Samples × positions heatmap of a per-token quantity (default A_t), centred at 0, token on hover."""
    values = [token_values(r, quantity, lam, reference) for r in records]
    width = max((len(v) for v in values), default=0)
    z = [v + [None] * (width - len(v)) for v in values]  # (S, width), padded past each completion
    visible = [[html.escape("".join(MARKS.get(ch, ch) for ch in t)) for t in r["tokens"]] for r in records]
    text = [row + [""] * (width - len(row)) for row in visible]
    labels = [f"{i}: {_default_label(r)}" for i, r in enumerate(records)]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(width)),
            y=labels,
            text=text,
            colorscale="RdBu_r",
            zmid=0,
            colorbar={"title": {"text": quantity}},
            hovertemplate="%{y}<br>position %{x}<br>token %{text}<br>" + quantity + " %{z:.4f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"{quantity} per token",
        xaxis_title="position",
        yaxis_title="sample",
        yaxis={"autorange": "reversed"},
        template="plotly_white",
    )
    return fig
