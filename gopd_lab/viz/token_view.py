"""The pieces every token view is drawn with, record-free: colour scales, one token's span and hover card, the
legend.

Inputs are plain token strings and per-token numbers, so the record view (``viz.tokens``) and the chain view
(``viz.chain_view``) draw tokens the same way. The HTML is inline-styled (no script, no CDN); one ``<style>``
rule (``CARD_CSS``) shows a token's hover card, and where a front end strips it the colours still show.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Sequence

NEGATIVE = (33, 102, 172)  # blue, value = -vmax
ZERO = (255, 255, 255)  # white, value = 0
POSITIVE = (178, 24, 43)  # red, value = +vmax
MISSING = (221, 221, 221)  # grey, non-finite value (e.g. a teacher log-prob of -inf)
KIND_COLORS = {"reverse": (198, 219, 239), "forward": (253, 174, 107), "gated": (189, 189, 189)}
"""``loss_kind`` colours: light blue = reverse KL (the G-OPD sampled signal), orange = forward KL, grey = no signal."""
CATEGORICAL = ("loss_kind",)
"""Quantities whose values are category codes (coloured by ``KIND_COLORS``; a sum over tokens means nothing)."""
CENTRE = {"lam": 1.0}
"""The value a quantity's diverging colour scale is centred on (0 unless listed)."""
_SPECIAL = re.compile(r"^<[|/]?[A-Za-z0-9_.\-]+\|?>$")
MARKS = {" ": "·", "\t": "⇥", "\n": "↵", "\r": "␍"}
SANS = "font-family:system-ui,-apple-system,'Segoe UI','DejaVu Sans',sans-serif"
MONO = "font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,'DejaVu Sans Mono',monospace"


def color(value: float, vmax: float) -> str:
    """CSS colour of ``value`` on the diverging scale blue (-vmax) / white (0) / red (+vmax)."""
    if not math.isfinite(value):
        return "rgb({}, {}, {})".format(*MISSING)
    t = 0.0 if vmax <= 0 else max(-1.0, min(1.0, value / vmax))
    end = POSITIVE if t > 0 else NEGATIVE
    r, g, b = (round(z + abs(t) * (e - z)) for z, e in zip(ZERO, end))
    return f"rgb({r}, {g}, {b})"


def quantity_color(quantity: str, value: float, vmax: float) -> str:
    """CSS colour of a token's ``value`` of ``quantity``: categorical for ``loss_kind``, else :func:`color` of
    ``value − CENTRE[quantity]``."""
    if quantity in CATEGORICAL:
        return "rgb({}, {}, {})".format(*list(KIND_COLORS.values())[int(value)])
    return color(value - CENTRE.get(quantity, 0.0), vmax)


def text_color(quantity: str, value: float, vmax: float) -> str:
    """White text on the darkest colours, near-black elsewhere."""
    if quantity in CATEGORICAL:
        return "#111"
    value -= CENTRE.get(quantity, 0.0)
    return "#fff" if vmax > 0 and math.isfinite(value) and abs(value) / vmax > 0.55 else "#111"


def symmetric_range(values: Sequence[Sequence[float]]) -> float:
    """Max |value| over the finite values (1.0 when there are none or all are 0)."""
    finite = [abs(v) for row in values for v in row if math.isfinite(v)]
    return max(finite, default=0.0) or 1.0


def quantity_range(quantity: str, values: Sequence[Sequence[float]]) -> float:
    """The colour scale's half-width for ``quantity``: :func:`symmetric_range` around its centre."""
    centre = CENTRE.get(quantity, 0.0)
    return symmetric_range([[v - centre for v in row] for row in values])


def format_value(quantity: str, value: float | None) -> str:
    """A token's value as text: the kind's name for a categorical quantity, else :func:`fmt`."""
    if quantity in CATEGORICAL and value is not None and math.isfinite(value):
        return list(KIND_COLORS)[int(value)]
    return fmt(value)


def fmt(value: float | None) -> str:
    """``+0.1234``; ``n/a`` for None; ``-inf`` / ``nan`` as such."""
    if value is None:
        return "n/a"
    value = float(value)
    return f"{value:+.4f}" if math.isfinite(value) else str(value)


def display_token(token: str) -> tuple[str, bool]:
    """(escaped HTML for ``token`` with whitespace made visible, whether it is a special token).

    Space → ``·``, tab → ``⇥``, newline → ``↵`` (the caller breaks the line), empty → ``∅``; the
    markers are dimmed. Special tokens (``<eos>``, ``<|im_end|>``, ``</s>``) are returned as is.
    """
    if _SPECIAL.match(token):
        return html.escape(token), True
    if token == "":
        return '<span class="ws" style="opacity:0.55">∅</span>', False
    dim = '<span class="ws" style="opacity:0.55">{}</span>'
    return "".join(dim.format(MARKS[ch]) if ch in MARKS else html.escape(ch) for ch in token), False


CARD_CSS = (
    ".gopd-tokens .tok{position:relative}"
    ".gopd-tokens .tok:hover{outline:2px solid #222;outline-offset:0;z-index:3}"
    ".gopd-tokens .tok:hover>.gopd-card{display:block!important}"
)
"""The rules the hover card needs (one ``<style>`` per view, inside a ``.gopd-tokens`` element); where a front
end strips ``<style>`` (an untrusted notebook), the cards stay hidden and the colours still show."""
_CARD_STYLE = (
    "display:none;position:absolute;left:0;top:calc(100% + 4px);z-index:20;min-width:190px;padding:6px 8px;"
    "background:#fff;color:#111;border:1px solid #bbb;border-radius:6px;box-shadow:0 4px 14px rgba(0,0,0,.18);"
    f"font-size:11px;line-height:1.45;white-space:nowrap;text-align:left;font-weight:normal;{MONO}"
)


def hover_card(token: str, i: int, rows: Iterable[tuple[str, str]], swatch: str) -> str:
    """A styled card shown while the pointer is on token ``i``: the token, then one ``(name, value)`` per row."""
    box = f"display:inline-block;width:10px;height:10px;margin-right:6px;border:1px solid #999;background:{swatch}"
    head = (
        f'<div style="font-weight:600;margin-bottom:3px;{SANS}"><span style="{box}"></span>'
        f'#{i} <span style="{MONO}">{html.escape(repr(token))}</span></div>'
    )
    body = "".join(
        f'<tr><td style="padding:0 10px 0 0;color:#555;border:none;background:none">{html.escape(name)}</td>'
        f'<td style="padding:0;text-align:right;border:none;background:none">{html.escape(value)}</td></tr>'
        for name, value in rows
    )
    table = f'<table style="border-collapse:collapse;margin:0;font-size:11px">{body}</table>'
    return f'<span class="gopd-card" role="tooltip" style="{_CARD_STYLE}">{head}{table}</span>'


def token_span(
    token: str,
    i: int,
    value: float,
    vmax: float,
    quantity: str,
    rows: Sequence[tuple[str, str]],
    *,
    attrs: str = "",
    style: str = "",
) -> str:
    """One token as a coloured ``span.tok`` with its hover card, then ``<br>`` after a newline token, else
    ``<wbr>``. ``rows`` are the card's ``(name, value)`` rows (also its ``aria-label``); ``attrs`` are added to
    the span's attributes (e.g. `` data-first-wrong="1"``), ``style`` before its inline style."""
    text, special = display_token(token)
    box = "outline:1px solid #777;outline-offset:-1px;font-size:0.85em;" if special else ""
    label = html.escape(f"#{i} {token!r}; " + "; ".join(f"{k} = {v}" for k, v in rows))
    bg = quantity_color(quantity, value, vmax)
    return (
        f'<span class="tok" data-i="{i}"{attrs} aria-label="{label}" '
        f'style="{style}background-color:{bg};color:{text_color(quantity, value, vmax)};{box}'
        f'padding:1px 1px;margin:0 0.5px;border-radius:2px;white-space:pre">{text}'
        f"{hover_card(token, i, rows, color(value, vmax))}</span>" + ("<br>" if "\n" in token else "<wbr>")
    )


def legend_html(quantity: str, vmax: float, cells: int = 21) -> str:
    """A small gradient bar (inline-coloured cells) with the -vmax / 0 / +vmax numbers beneath (centred on
    ``CENTRE[quantity]``); for ``loss_kind`` one swatch per kind."""
    if quantity in CATEGORICAL:
        swatches = "".join(
            f'<span style="background-color:rgb({r}, {g}, {b});padding:0 4px;margin-right:6px">{k}</span>'
            for k, (r, g, b) in KIND_COLORS.items()
        )
        return f'<div class="legend" style="margin-top:6px;font-size:11px;color:#111;{MONO}">{swatches} loss</div>'
    centre = CENTRE.get(quantity, 0.0)
    steps = [vmax * (2 * k / (cells - 1) - 1) for k in range(cells)]
    bar = "".join(f'<span style="background-color:{color(v, vmax)}">&nbsp;</span>' for v in steps)
    cell = "padding:0;font-size:11px;color:#555;background:#fff"
    num = f"{cell};border:none;text-align"
    return (
        f'<table class="legend" style="border-collapse:collapse;margin-top:6px;{MONO}">'
        f'<tr><td colspan="3" style="{cell};border:1px solid #ccc;line-height:1;white-space:nowrap">{bar}</td>'
        f'<td rowspan="2" style="{cell};border:none;padding-left:6px;vertical-align:top">{html.escape(quantity)}</td>'
        f'</tr><tr><td style="{num}:left">{centre - vmax:.3g}</td><td style="{num}:center">{centre:g}</td>'
        f'<td style="{num}:right">{centre + vmax:+.3g}</td></tr></table>'
    )
