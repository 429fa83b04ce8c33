"""The chain view: one completion that writes its work out, its steps drawn, the first wrong step marked, and
several per-token credits of it side by side (OPD's A_t, GRPO's sequence-level advantage), each with the sum
of its credit per step beside its token row.

The input is generic: the completion's token strings, one list of per-token values per credit, and what a step
checker says about the completion (:class:`Steps`: step spans as ``[start, end)`` completion-token index
ranges, the first wrong step and its first wrong token, or None). ``credit_comparison`` builds the credits of a
token record (a line of ``samples.jsonl``); ``chain_view`` draws any credits. Compute (``step_sums``,
``Steps.check``), render (``chain_view``) and wiring (``viz.widgets``) stay apart; nothing here displays.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from gopd_lab.errors import UserError
from gopd_lab.objectives import grpo_token_advantages
from gopd_lab.viz.token_view import CARD_CSS, MONO, SANS, color, fmt, legend_html, symmetric_range, token_span
from gopd_lab.viz.tokens import Record, TokenView, lam_range, references, token_values

WRONG = "#e66101"
"""The first wrong step's frame and its first wrong token's underline (orange: off the blue–red credit scale)."""


class StepSpanError(UserError, ValueError):
    """Step spans or a first-wrong index that do not fit the completion; the message says which and why."""


@dataclass(frozen=True)
class Steps:
    """A step checker's answer for one completion: ``spans`` (``[start, end)`` completion-token ranges, in
    order, not overlapping), the index of the first wrong step in ``spans`` and of its first wrong token (a
    completion-token index), or None when every step is right."""

    spans: tuple[tuple[int, int], ...]
    first_wrong_step: int | None = None
    first_wrong_token: int | None = None
    names: tuple[str, ...] = ()
    """Optional step names for the per-step summary (e.g. ``column 1`` … ``answer``); ``step k`` without."""

    @classmethod
    def of(cls, check: Steps | Mapping[str, Any] | Any, names: Sequence[str] = ()) -> Steps:
        """``Steps`` from a checker's result: a ``Steps``, a mapping or an object with ``spans`` (or ``steps``),
        ``first_wrong_step`` and ``first_wrong_token``; ``names`` name the steps."""
        if isinstance(check, Steps):
            return (
                check if not names else cls(check.spans, check.first_wrong_step, check.first_wrong_token, tuple(names))
            )
        get = check.get if isinstance(check, Mapping) else lambda k, d=None: getattr(check, k, d)
        spans = get("spans", None)
        spans = get("steps", None) if spans is None else spans
        if spans is None:
            raise StepSpanError(f"a step checker's result needs `spans` ([start, end) token ranges), got {check!r}")
        wrong, token = get("first_wrong_step", None), get("first_wrong_token", None)
        return cls(tuple((int(a), int(b)) for a, b in spans), wrong, token, tuple(names or get("names", ()) or ()))

    def name(self, k: int) -> str:
        """Step ``k``'s name."""
        return self.names[k] if k < len(self.names) else f"step {k}"

    def check(self, n_tokens: int) -> Steps:
        """Raise :class:`StepSpanError` unless the spans and indices fit a completion of ``n_tokens``; returns self."""
        end = 0
        for k, (a, b) in enumerate(self.spans):
            if not end <= a < b <= n_tokens:
                raise StepSpanError(
                    f"step {k} spans tokens [{a}, {b}) of a {n_tokens}-token completion: spans must be non-empty, in "
                    f"order, not overlapping and within [0, {n_tokens}) (are they token indices of this completion?)"
                )
            end = b
        if self.names and len(self.names) != len(self.spans):
            raise StepSpanError(f"{len(self.names)} step names for {len(self.spans)} steps")
        wrong, tok = self.first_wrong_step, self.first_wrong_token
        if wrong is not None and not 0 <= wrong < len(self.spans):
            raise StepSpanError(f"first_wrong_step {wrong} is not one of the {len(self.spans)} steps")
        if tok is not None and not 0 <= tok < n_tokens:
            raise StepSpanError(f"first_wrong_token {tok} is outside the {n_tokens}-token completion")
        return self

    def step_of(self, n_tokens: int) -> list[int | None]:
        """The step index of every token (None for tokens outside every step, e.g. ``<eos>``)."""
        of: list[int | None] = [None] * n_tokens
        for k, (a, b) in enumerate(self.spans):
            of[a:b] = [k] * (b - a)
        return of


def step_sums(values: Sequence[float], spans: Sequence[tuple[int, int]]) -> list[float]:
    """Σ of ``values`` over each step span (non-finite values left out)."""
    return [sum(v for v in values[a:b] if math.isfinite(v)) for a, b in spans]


@dataclass(frozen=True)
class ChainView(TokenView):
    """A rendered chain view: ``html``, per panel its ``labels``, ``values``, ``vmax`` and ``step_sums``
    (one per step), and the ``steps`` drawn. ``save`` writes a standalone page like :class:`TokenView`."""

    labels: list[str]
    step_sums: list[list[float]]
    steps: Steps


def _per_panel(vmax: float | Sequence[float] | None, values: list[list[float]]) -> list[float]:
    if vmax is None:
        return [symmetric_range(values)] * len(values)
    scales = [float(vmax)] * len(values) if isinstance(vmax, (int, float)) else [float(v) for v in vmax]
    if len(scales) != len(values):
        raise StepSpanError(f"vmax has {len(scales)} entries for {len(values)} credits (give one or one per credit)")
    if not all(v > 0 for v in scales):
        raise StepSpanError(f"vmax must be > 0 (the colour scale's half-width), got {vmax}")
    return scales


def _sums_table(sums: list[float], steps: Steps, vmax: float) -> str:
    cell = "padding:1px 6px;border:none;font-size:11px;text-align:right"
    rows = []
    for k, total in enumerate(sums):
        wrong = k == steps.first_wrong_step
        mark = f'<span style="color:{WRONG};font-weight:700">✗ </span>' if wrong else ""
        shade = f"background-color:{color(total, vmax)};color:{'#fff' if abs(total) / vmax > 0.55 else '#111'}"
        rows.append(
            f'<tr class="step-sum{" wrong" if wrong else ""}" data-step="{k}"><td style="{cell};color:#555">'
            f'{mark}{html.escape(steps.name(k))}</td><td style="{cell};{shade}">{total:+.3f}</td></tr>'
        )
    head = f'<tr><td colspan="2" style="{cell};color:#555;text-align:left">Σ per step</td></tr>'
    return (
        f'<table class="step-sums" style="border-collapse:collapse;flex:0 0 auto;{MONO}">{head}{"".join(rows)}</table>'
    )


def _panel(
    label: str,
    tokens: Sequence[str],
    values: list[float],
    rows: list[list[tuple[str, str]]],
    steps: Steps,
    sums: list[float],
    vmax: float,
    sums_vmax: float,
    prompt: str,
) -> str:
    of = steps.step_of(len(tokens))
    parts, open_step = [], None
    for i, (token, value) in enumerate(zip(tokens, values)):
        if of[i] != open_step:
            if open_step is not None:
                parts.append("</span>")
            if of[i] is not None:
                k = of[i]
                wrong = k == steps.first_wrong_step
                frame = f"2px solid {WRONG}" if wrong else "1px solid #999"
                badge = (
                    f'<span class="wrong-mark" style="color:{WRONG};font-weight:700;font-size:11px">✗</span>'
                    if wrong
                    else ""
                )
                parts.append(
                    f'<span class="step{" wrong" if wrong else ""}" data-step="{k}" style="border:{frame};'
                    f'border-radius:3px;padding:1px 2px;margin:0 2px;box-decoration-break:clone">{badge}'
                )
            open_step = of[i]
        first = i == steps.first_wrong_token
        parts.append(
            token_span(
                token,
                i,
                value,
                vmax,
                "advantage",
                rows[i],
                attrs=' data-first-wrong="1"' if first else "",
                style=f"box-shadow:inset 0 -3px 0 {WRONG};" if first else "",
            )
        )
    if open_step is not None:
        parts.append("</span>")
    total = sum(v for v in values if math.isfinite(v))
    return (
        f'<div class="gopd-panel gopd-chain" data-label="{html.escape(label)}" style="flex:1 1 420px;min-width:0;margin:4px 0">'
        f'<div style="font-weight:600;font-size:12px">{html.escape(label)}</div>'
        f'<div style="font-size:11px;color:#555">Σ = {total:+.4f} over {len(tokens)} tokens</div>'
        f'<div style="display:flex;gap:14px;align-items:flex-start">'
        f'<div class="chain-tokens" style="flex:1 1 auto;min-width:0;line-height:2.2;font-size:13px;overflow-wrap:break-word;{MONO}">'
        f'<span class="prompt" style="color:#777;white-space:pre-wrap">{html.escape(prompt)}</span>{"".join(parts)}</div>'
        f"{_sums_table(sums, steps, sums_vmax)}</div>{legend_html(label, vmax)}</div>"
    )


def _step_label(steps: Steps, k: int | None) -> str:
    if k is None:
        return "none"
    return f"{k} ({steps.names[k]})" if steps.names else str(k)


def _verdict(steps: Steps) -> str:
    if steps.first_wrong_step is None:
        return f"{len(steps.spans)} steps, all right"
    a, b = steps.spans[steps.first_wrong_step]
    tok = "" if steps.first_wrong_token is None else f", first wrong token #{steps.first_wrong_token}"
    named = f" ({steps.names[steps.first_wrong_step]})" if steps.names else ""
    return f"{len(steps.spans)} steps; first wrong step {steps.first_wrong_step}{named} (tokens {a}–{b - 1}{tok})"


def chain_view(
    tokens: Sequence[str],
    credits: Mapping[str, Sequence[float]],
    steps: Steps | Mapping[str, Any] | Any,
    *,
    vmax: float | Sequence[float] | None = None,
    prompt: str = "",
    title: str | None = None,
    details: Mapping[str, Sequence[float | None]] | None = None,
    side_by_side: bool = True,
) -> ChainView:
    """One completion's ``credits`` (label → one value per token) as panels side by side (wrapping) or stacked.

    Every panel draws the ``steps`` (:class:`Steps` or a step checker's result) as framed groups, the first
    wrong step framed in orange with a ✗ and its first wrong token underlined, and beside its token row the
    Σ of its credit per step. Colours are diverging around 0 on ``[-vmax, vmax]``: ``vmax`` one float for all
    panels (a fixed scale), one per panel, or None (one scale, the max |value| over all panels). The per-step
    sums are coloured on their own scale, shared by the panels that share a token scale. A token's hover card
    lists every credit's value there, its step, and each of ``details`` (e.g. ``lp_student``).
    """
    steps = Steps.of(steps).check(len(tokens))
    if not credits:
        raise StepSpanError("no credits to show: give at least one label → per-token values")
    labels = list(credits)
    values = [[float(v) for v in credits[name]] for name in labels]
    for name, row in zip(labels, values):
        if len(row) != len(tokens):
            raise StepSpanError(f"credit {name!r} has {len(row)} values for {len(tokens)} tokens")
    scales = _per_panel(vmax, values)
    sums = [step_sums(row, steps.spans) for row in values]
    sums_scale = [symmetric_range([s for s, v2 in zip(sums, scales) if v2 == v]) for v in scales]
    of = steps.step_of(len(tokens))
    extra = dict(details or {})
    rows = [
        [(name, fmt(row[i])) for name, row in zip(labels, values)]
        + [("step", _step_label(steps, of[i]))]
        + ([("first wrong token", "yes")] if i == steps.first_wrong_token else [])
        + [(name, fmt(col[i])) for name, col in extra.items() if col is not None]
        for i in range(len(tokens))
    ]
    panels = [
        _panel(name, tokens, row, rows, steps, sm, vm, sv, prompt)
        for name, row, sm, vm, sv in zip(labels, values, sums, scales, sums_scale)
    ]
    flow = "display:flex;flex-wrap:wrap;gap:8px 28px" if side_by_side else "display:block"
    head = f'<div class="chain-title" style="flex:1 1 100%;font-size:12px;color:#333">{html.escape(title or "")}'
    head += f"{' · ' if title else ''}{html.escape(_verdict(steps))}</div>"
    style = f"{flow};color:#111;background:#fff;padding:4px;{SANS}"
    body = (
        f'<div class="gopd-tokens gopd-chains" style="{style}">{head}{"".join(panels)}<style>{CARD_CSS}</style></div>'
    )
    return ChainView(body, values, scales, labels, sums, steps)


def _method(lam: float) -> str:
    return "OPD" if lam == 1 else ("ExOPD" if lam > 1 else "G-OPD")


def credit_comparison(
    record: Record,
    steps: Steps | Mapping[str, Any] | Any,
    *,
    lams: Sequence[float] = (1.0,),
    group_rewards: Sequence[float] | None = None,
    group_index: int = 0,
    scale_std: bool = True,
    reference: str | None = None,
    scale_lams: Sequence[float] = (),
    side_by_side: bool = True,
) -> ChainView:
    """A token record's OPD credit beside GRPO's credit on the same completion, its steps drawn.

    One panel per λ in ``lams``: ``A_t = gopd_advantages(lp_student, lp_teacher, lp_reference, lam=λ)`` of the
    stored log-probs, on one colour scale fixed across ``lams`` and ``scale_lams`` (:func:`lam_range`); give
    ``scale_lams=LAM_SCALE`` to views drawn one λ at a time, so that λ changes their colours, not their scale.
    With ``group_rewards`` (the verifier rewards of the group of completions of this prompt, the record being
    member ``group_index``), one more panel: GRPO's credit, ``grpo_token_advantages`` — the same group-relative
    advantage on every token — on its own scale.
    """
    tokens = list(record["tokens"])
    if record.get("lp_teacher") is None:
        raise StepSpanError(
            "this sample has no lp_teacher (a GRPO or SFT sample): OPD's A_t needs a teacher's log-probs"
        )
    if any(lam != 1 for lam in lams) and not references(record):
        raise StepSpanError("this sample has no scored reference (lp_reference is null): only λ = 1 can be shown")
    credits = {f"{_method(lam)} A_t (λ = {lam:g})": token_values(record, "advantage", lam, reference) for lam in lams}
    scale = lam_range(record, "advantage", sorted({*lams, *scale_lams}), reference)
    vmax = [scale] * len(credits)
    if group_rewards is not None:
        group = torch.tensor([float(r) for r in group_rewards])  # (G,)
        if not 0 <= group_index < len(group):
            raise StepSpanError(f"group_index {group_index} is not one of the {len(group)} group members")
        mask = torch.ones(len(group), len(tokens))  # (G, C): only this member's row is shown
        grpo = grpo_token_advantages(group, len(group), mask, scale_std=scale_std)[group_index]  # (C,)
        credits[f"GRPO A (reward {group[group_index]:g} in a group of {len(group)})"] = grpo.tolist()
        vmax.append(symmetric_range([grpo.tolist()]))
    details = {k: record.get(k) for k in ("lp_student", "lp_teacher")}
    bits = [str(record.get("domain") or ""), f"step {record['step']}" if "step" in record else ""]
    bits += [f"score {record['score']:g}" if record.get("score") is not None else ""]
    title = " · ".join(b for b in bits if b) or None
    return chain_view(
        tokens,
        credits,
        steps,
        vmax=vmax,
        prompt=str(record.get("prompt", "")),
        title=title,
        details=details,
        side_by_side=side_by_side,
    )
