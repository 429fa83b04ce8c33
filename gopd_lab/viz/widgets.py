"""Notebook wiring: a live training plot and the token explorer.

``LivePlot`` is a training callback (``train(cfg, callbacks=[live])``) that redraws a plotly figure
with the metrics while the loop runs. ``explore(records)`` opens a ``TokenExplorer``: pick a
sample, a quantity, λ and the reference, and see A_t recomputed from the stored log-probs.

The state lives in plain classes whose methods work without a browser or kernel (tests drive
them directly); the ipywidgets controls only call those methods. Rendering comes from ``viz``.
"""

from __future__ import annotations

import html
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from gopd_lab.viz.chain_view import Steps, chain_view
from gopd_lab.viz.token_view import format_value
from gopd_lab.viz.tokens import (
    CENTRE,
    LAM_SCALE,
    Record,
    available_quantities,
    lam_range,
    load_samples,
    quantity_color,
    quantity_range,
    references,
    token_values,
    token_view,
)

_NEEDS = "the notebook extras: pip install 'gopd-lab[notebooks]' anywidget"


def bars_html(values: Sequence[float], tokens: Sequence[str], vmax: float, quantity: str) -> str:
    """The explorer's per-position plot as inline-styled HTML: one bar per token, coloured like the token view,
    up from a zero line for positive values and down for negative ones, the token and value on hover.

    Plain HTML in an ``ipywidgets.HTML``: no plotly.js in the widget state and no ``Output`` widget (whose
    capture of display messages hung nbclient/papermill runs now and then).
    """
    scale = vmax if vmax > 0 else 1.0
    centre = 0.0 if quantity == "loss_kind" else CENTRE.get(quantity, 0.0)  # λ_t: bars up/down from 1
    cols = []
    for i, (v, tok) in enumerate(zip(values, tokens)):
        finite = math.isfinite(v)
        d = 1.0 if quantity == "loss_kind" else v - centre
        h = min(1.0, abs(d) / scale) * 60 if finite else 0.0
        up = f"height:{h:.1f}px;align-self:flex-end" if finite and d >= 0 else "height:0"
        down = f"height:{h:.1f}px" if finite and d < 0 else "height:0"
        bar = f"width:14px;background:{quantity_color(quantity, v, scale)};border:1px solid #888;box-sizing:border-box"
        label = html.escape(f"{i}: {tok} · {quantity} = {format_value(quantity, v)}")
        cols.append(
            f'<div title="{label}" style="display:flex;flex-direction:column;align-items:center;margin:0 1px">'
            f'<div style="height:60px;display:flex"><div style="{bar};{up}"></div></div>'
            f'<div style="height:60px;border-top:1px solid #444"><div style="{bar};{down}"></div></div>'
            f'<div style="font-size:10px;color:#555">{i}</div></div>'
        )
    return (
        f'<div class="gopd-bars" style="font-family:system-ui,sans-serif;font-size:11px;color:#333">'
        f"<div>{html.escape(quantity)} per position (±{scale:.3g})</div>"
        f'<div style="display:flex;align-items:flex-start;overflow-x:auto">{"".join(cols)}</div></div>'
    )


class LivePlot:
    """Training callback that plots per-step metrics live, one subplot per metric.

    ``on_step`` only appends to python lists; the figure is redrawn (one ``batch_update`` that
    replaces each trace's data) at most once per ``min_interval`` seconds, and once more at
    ``on_end``. Show it (``live`` as a cell's last line, or ``display(live)``) before calling ``train``:
    each redraw then replaces that cell output in place (a display id; no widget, so the notebook stores one
    figure as plotly's JSON mimetype). Outside a notebook ``fig`` is a plain ``go.Figure`` kept up to date.
    """

    def __init__(self, metrics: Sequence[str] = ("loss", "reverse_kl", "adv_mean"), min_interval: float = 0.25):
        self.metrics = tuple(metrics)
        self.min_interval = min_interval
        self.steps: list[int] = []
        self.history: dict[str, list[float]] = {m: [] for m in self.metrics}
        self.redraws = 0
        self._last_redraw = -math.inf
        grid = make_subplots(
            rows=len(self.metrics), cols=1, shared_xaxes=True, subplot_titles=self.metrics, vertical_spacing=0.08
        )
        for row, metric in enumerate(self.metrics, start=1):
            grid.add_trace(go.Scatter(x=[], y=[], mode="lines", name=metric, showlegend=False), row=row, col=1)
            grid.update_yaxes(title_text=metric, row=row, col=1)
        grid.update_xaxes(title_text="step", row=len(self.metrics), col=1)
        grid.update_layout(height=200 * len(self.metrics) + 60, margin={"t": 40, "b": 40}, template="plotly_white")
        self.fig = grid
        self._handle = None  # the display handle once shown in a notebook; redraws update that output

    def on_step(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Record one step's metrics; redraw if the last redraw is older than ``min_interval``."""
        self.steps.append(step)
        for m in self.metrics:
            value = metrics.get(m)
            self.history[m].append(math.nan if value is None else float(value))
        if time.monotonic() - self._last_redraw >= self.min_interval:
            self.redraw()

    def on_end(self, summary: Mapping[str, Any]) -> None:
        """Draw the points that arrived since the last redraw."""
        self.redraw()

    def redraw(self) -> None:
        """Push all recorded points to the figure in one batched update."""
        with self.fig.batch_update():
            for trace, m in zip(self.fig.data, self.metrics):
                trace.x = list(self.steps)
                trace.y = list(self.history[m])
        if self._handle is not None:
            self._handle.update(self.fig)
        self._last_redraw = time.monotonic()
        self.redraws += 1

    def _ipython_display_(self) -> None:
        """Show the figure as a cell output with a display id: every redraw replaces that output in place
        (``update_display_data``), so the notebook keeps one figure, stored as plotly's JSON mimetype."""
        from IPython.display import display

        self._handle = display(self.fig, display_id=True)


class TokenExplorer:
    """State of the token explorer: which sample, quantity, λ and reference are shown.

    ``current_values()`` are the per-token values displayed; with quantity ``advantage`` they are
    ``gopd_advantages(lp_student, lp_teacher, lp_reference, lam=self.lam)`` of the stored
    log-probs, with ``lp_reference`` the chosen scored reference. ``html`` is the token view,
    ``figure`` the values per position, ``summary()`` one line of text. ``widget`` builds the
    ipywidgets controls, which call the ``set_*`` methods.

    The colour scale: ``vmax`` fixes it for everything; by default (``vmax=None``) it is fixed per sample,
    quantity and reference across the λ of ``scale_lams`` and the sample's own λ (:func:`viz.tokens.lam_range`),
    so moving the λ slider changes the colours, not the scale (λ past that range saturates).
    ``scale_lams=None`` rescales to the values shown at every λ instead. ``steps`` (one
    :class:`viz.chain_view.Steps` or step checker result per record, or a function of the record returning
    one or None) draws the steps, the first wrong step and the Σ of A_t per step in the token view.
    """

    def __init__(
        self,
        records: Sequence[Record],
        *,
        index: int = 0,
        quantity: str = "advantage",
        lam: float | None = None,
        reference: str | None = None,
        vmax: float | None = None,
        scale_lams: Sequence[float] | None = LAM_SCALE,
        steps: Sequence[Any] | Callable[[Record], Any] | None = None,
    ):
        if not records:
            raise ValueError("no token records to explore (is samples.jsonl empty?)")
        self.records = list(records)
        self.vmax = vmax
        self.scale_lams = None if scale_lams is None else tuple(float(x) for x in scale_lams)
        if steps is not None and not callable(steps) and len(steps) != len(self.records):
            raise ValueError(f"steps has {len(steps)} entries for {len(self.records)} records")
        self._steps = steps
        self.quantity, self.reference = "advantage", None
        self.lam = float(self.records[index].get("lam", 1.0)) if 0 <= index < len(self.records) else 1.0
        self._controls: dict[str, Any] | None = None
        self._box = None
        self._syncing = False
        self.figure = go.Figure(
            [
                go.Bar(x=[], y=[], name="shown"),
                go.Scatter(x=[], y=[], name="λ_t", yaxis="y2", mode="lines+markers"),
            ],
            layout={
                "height": 240,
                "margin": {"t": 10, "b": 40, "l": 60, "r": 10},
                "template": "plotly_white",
                "xaxis": {"title": {"text": "position"}},
                "yaxis": {"title": {"text": quantity}},
                "yaxis2": {"title": {"text": "λ_t"}, "overlaying": "y", "side": "right", "showgrid": False},
                "showlegend": False,
            },
        )
        self.set_sample(index)
        if lam is not None:
            self.set_lam(lam)
        if reference is not None:
            self.set_reference(reference)
        self.set_quantity(quantity)

    @property
    def record(self) -> Record:
        """The record shown."""
        return self.records[self.index]

    def references(self) -> list[str]:
        """Names of the references scored for the current sample (``"run"`` is the run's own)."""
        return list(references(self.record))

    def set_sample(self, index: int) -> None:
        """Show record ``index``; λ, reference and quantity stay where the sample has them.

        A sample with no scored reference falls back to λ = 1 (plain OPD, the reference cancels); a sample with
        no teacher (GRPO, SFT) shows its stored A_t at its own λ.
        """
        if not 0 <= index < len(self.records):
            raise IndexError(f"sample {index} out of range (0..{len(self.records) - 1})")
        self.index = index
        names = self.references()
        if self.reference not in names:
            self.reference = names[0] if names else None
        if self.reference is None:
            self.lam = 1.0
        if self.record.get("lp_teacher") is None:
            self.lam = float(self.record.get("lam", 1.0))
        if self.quantity not in available_quantities(self.record):
            self.quantity = "advantage"
        self._render()

    def set_quantity(self, quantity: str) -> None:
        """Colour tokens by ``quantity`` (one of ``available_quantities(record)``)."""
        available = available_quantities(self.record)
        if quantity not in available:
            raise ValueError(f"quantity {quantity!r} is not available for this sample; available: {available}")
        self.quantity = quantity
        self._render()

    def set_lam(self, lam: float) -> None:
        """Recompute A_t with reward scale ``lam`` (λ ≠ 1 needs a scored reference)."""
        if lam <= 0:
            raise ValueError(f"lam must be > 0, got {lam}")
        if lam != 1 and self.reference is None:
            raise ValueError("this sample has no scored reference (lp_reference is null): only λ = 1 can be shown")
        if self.record.get("lp_teacher") is None and lam != self.lam:
            raise ValueError("this sample has no lp_teacher (a teacher-free sample): A_t is shown as stored")
        self.lam = float(lam)
        self._render()

    def set_reference(self, name: str) -> None:
        """Use the scored reference ``name`` (see ``references()``) for A_t, reward and lp_reference."""
        if name not in self.references():
            raise ValueError(f"reference {name!r} was not scored for this sample; scored: {self.references()}")
        self.reference = name
        self._render()

    def current_values(self) -> list[float]:
        """The per-token values shown for the current state."""
        return token_values(self.record, self.quantity, self.lam, self.reference)

    def scale(self) -> float:
        """The colour scale's half-width for the current state (see the class docstring)."""
        if self.vmax:
            return self.vmax
        if self.scale_lams is None or self.quantity != "advantage":
            return quantity_range(self.quantity, [self.current_values()])
        lams = sorted({*self.scale_lams, float(self.record.get("lam", 1.0))})
        return lam_range(self.record, self.quantity, lams, self.reference)

    def steps(self) -> Steps | None:
        """The current sample's steps (from ``steps``), or None."""
        if self._steps is None:
            return None
        found = self._steps(self.record) if callable(self._steps) else self._steps[self.index]
        return None if found is None else Steps.of(found)

    @property
    def bars(self) -> str:
        """The values per position as HTML bars (the widget's plot; ``figure`` is the same as a plotly figure)."""
        values = self.current_values()
        return bars_html(values, [repr(t) for t in self.record["tokens"]], self.scale(), self.quantity)

    @property
    def html(self) -> str:
        """The token view HTML for the current state (a chain view when the sample has steps)."""
        steps = self.steps()
        if steps is None or self.quantity != "advantage":
            return token_view(self.record, self.quantity, self.lam, self.reference, self.scale()).html
        label = f"A_t (λ={self.lam:g}, reference {self.reference or 'none'})"
        credits = {label: self.current_values()}
        return chain_view(
            self.record["tokens"], credits, steps, vmax=self.scale(), prompt=self.record.get("prompt", "")
        ).html

    def summary(self) -> str:
        """One line: sample, domain, verifier score, Σ A_t at the current λ/reference and as stored."""
        r = self.record
        total = sum(token_values(r, "advantage", self.lam, self.reference))
        score = "n/a" if r.get("score") is None else f"{r['score']:g}"
        return (
            f"sample {self.index + 1}/{len(self.records)} · step {r.get('step')} · {r.get('domain')} · "
            f"score {score} · ΣA_t = {total:+.4f} (λ={self.lam:g}, reference {self.reference or 'none'}) · "
            f"stored ΣA_t = {sum(r['advantage']):+.4f} (λ={r.get('lam', 1.0):g})"
        )

    def _render(self) -> None:
        values = self.current_values()
        vmax = self.scale()
        tokens = [repr(t) for t in self.record["tokens"]]
        with self.figure.batch_update():
            bar = self.figure.data[0]
            bar.x, bar.y, bar.hovertext = list(range(len(values))), values, tokens
            bar.marker.color = [quantity_color(self.quantity, v, vmax) for v in values]
            bar.marker.line = {"color": "#888", "width": 0.5}
            lam_t = self.record.get("lam_t")  # λ_t beside A_t (runs with a lam_mode, docs/lineage.md)
            line = self.figure.data[1]
            line.x, line.y = (list(range(len(lam_t))), lam_t) if lam_t and self.quantity != "lam" else ([], [])
            self.figure.layout.yaxis.title.text = self.quantity
            centre = CENTRE.get(self.quantity, 0.0)  # a fixed scale fixes the axis too: λ moves the bars
            fixed = self.quantity != "loss_kind" and (self.vmax or self.scale_lams is not None)
            self.figure.layout.yaxis.range = [centre - 1.05 * vmax, centre + 1.05 * vmax] if fixed else None
        if self._controls is not None:
            self._sync_controls()

    def _sync_controls(self) -> None:
        c = self._controls
        self._syncing = True
        try:
            c["sample"].value = self.index
            c["quantity"].options = available_quantities(self.record)
            c["quantity"].value = self.quantity
            c["reference"].options = self.references()
            c["reference"].value = self.reference
            c["reference"].disabled = not self.references()
            c["lam"].value = self.lam
            no_teacher = self.record.get("lp_teacher") is None
            c["lam"].disabled = self.reference is None or no_teacher or self.quantity != "advantage"
            c["view"].value = self.html
            c["bars"].value = self.bars
            c["summary"].value = self.summary()
        finally:
            self._syncing = False

    def _on(self, setter):
        def handler(change: dict) -> None:
            if not self._syncing:
                setter(change["new"])

        return handler

    @property
    def widget(self):
        """The ipywidgets box: controls, token view, per-position plot, summary line."""
        if self._box is not None:
            return self._box
        try:
            import ipywidgets as w
        except ImportError as e:
            raise ImportError(f"the explorer widget needs {_NEEDS}") from e
        labels = [
            (f"{i}: step {r.get('step')} · {r.get('domain')} · {r.get('completion', '')!r}"[:80], i)
            for i, r in enumerate(self.records)
        ]
        lam_max = max(3.0, 2 * max(float(r.get("lam", 1.0)) for r in self.records))
        self._controls = c = {
            "sample": w.Dropdown(options=labels, description="sample"),
            "quantity": w.Dropdown(description="quantity"),
            "lam": w.FloatSlider(
                min=0.05, max=lam_max, step=0.05, description="λ", continuous_update=True, readout_format=".2f"
            ),
            "reference": w.Dropdown(description="reference"),
            "view": w.HTML(),
            "bars": w.HTML(),
            "summary": w.HTML(),
        }
        for name, setter in (
            ("sample", self.set_sample),
            ("quantity", self.set_quantity),
            ("lam", self.set_lam),
            ("reference", self.set_reference),
        ):
            c[name].observe(self._on(setter), names="value")
        self._sync_controls()
        row = w.HBox([c["sample"], c["quantity"], c["lam"], c["reference"]], layout={"flex_flow": "row wrap"})
        self._box = w.VBox([row, c["view"], c["bars"], c["summary"]])
        return self._box

    def _repr_mimebundle_(self, **kwargs: Any) -> dict:
        return self.widget._repr_mimebundle_(**kwargs)


def explore(records: Sequence[Record] | str | os.PathLike, **kwargs: Any) -> TokenExplorer:
    """A ``TokenExplorer`` of token records (or of a run dir / ``samples.jsonl``), shown as its widget.

    Keyword arguments go to ``TokenExplorer`` (``index``, ``quantity``, ``lam``, ``reference``, ``vmax``,
    ``scale_lams``, ``steps``).
    """
    if isinstance(records, (str, os.PathLike)):
        records = load_samples(records)
    return TokenExplorer(records, **kwargs)
