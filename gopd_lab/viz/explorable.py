"""Explorables of notebook 03: one state with sliders, and a two-step tree.

:class:`OneState` is one state with ``K`` next tokens: sliders for λ and for the logits of the reference π_R and
the teacher π_T move π_R, π_T, the optimum π*_λ ∝ π_R^(1−λ)·π_T^λ and the advantage A_t each token would get
if the student (here still the reference, as at the start of a run with ``reference="student"``) sampled it.
:class:`TwoStepTree` is a ``K = 2``, ``H = 2`` tree (:mod:`gopd_lab.lm.exact`) with a λ slider: the token-level
and the sequence-level optima side by side, equal at the last depth and apart at the root unless λ = 1.

Both compute with plain methods (``set_lam``, ``set_logits``, ``html``) that the tests call; ``widget()`` only
wires ipywidgets sliders to them and renders into an ``ipywidgets.HTML`` (no plotly.js in the widget state).
"""

from __future__ import annotations

import html as html_lib
from collections.abc import Sequence

import torch

__all__ = ["OneState", "TwoStepTree", "state_explorer", "tree_explorer"]

_COLOURS = {"π_R": "#7f7f7f", "π_T": "#1f77b4", "π*_λ": "#d62728"}


def _bar(value: float, colour: str, scale: float = 1.0) -> str:
    width = max(0.0, min(1.0, abs(value) / scale)) * 140
    return (
        f'<div style="display:inline-block;width:{width:.0f}px;height:10px;background:{colour};'
        f'vertical-align:middle"></div> {value:.3f}'
    )


class OneState:
    """One state: logits of π_R and π_T over ``K`` tokens and λ; everything else follows."""

    def __init__(
        self,
        reference_logits: Sequence[float] = (1.0, 0.5, 0.0, -0.5),
        teacher_logits: Sequence[float] = (0.0, 1.5, 0.5, -1.0),
        lam: float = 1.0,
        tokens: Sequence[str] | None = None,
    ):
        if len(reference_logits) != len(teacher_logits):
            raise ValueError("π_R and π_T need one logit per token each")
        self.reference_logits = torch.tensor(reference_logits, dtype=torch.float64)  # (K,)
        self.teacher_logits = torch.tensor(teacher_logits, dtype=torch.float64)  # (K,)
        self.lam = float(lam)
        self.tokens = list(tokens) if tokens else [f"token {k}" for k in range(len(reference_logits))]

    def set_lam(self, lam: float) -> None:
        self.lam = float(lam)

    def set_logits(self, role: str, k: int, value: float) -> None:
        """Set token ``k``'s logit of ``role`` (``"reference"`` or ``"teacher"``)."""
        getattr(self, f"{role}_logits")[k] = float(value)

    @property
    def log_reference(self) -> torch.Tensor:
        return torch.log_softmax(self.reference_logits, -1)  # (K,)

    @property
    def log_teacher(self) -> torch.Tensor:
        return torch.log_softmax(self.teacher_logits, -1)  # (K,)

    @property
    def log_optimum(self) -> torch.Tensor:
        """log π*_λ = log softmax((1 − λ)·log π_R + λ·log π_T)."""
        return torch.log_softmax((1 - self.lam) * self.log_reference + self.lam * self.log_teacher, -1)  # (K,)

    @property
    def advantages(self) -> torch.Tensor:
        """A_t of each token sampled by a student equal to the reference: λ·(ℓ^T − ℓ^R) − (ℓ^θ − ℓ^R) with ℓ^θ = ℓ^R."""
        return self.lam * (self.log_teacher - self.log_reference)  # (K,)

    def html(self) -> str:
        rows = []
        scale = max(1e-9, float(self.advantages.abs().max()))
        dists = {"π_R": self.log_reference.exp(), "π_T": self.log_teacher.exp(), "π*_λ": self.log_optimum.exp()}
        for k, token in enumerate(self.tokens):
            cells = "".join(f"<td>{_bar(float(p[k]), _COLOURS[name])}</td>" for name, p in dists.items())
            a = float(self.advantages[k])
            colour = "#d62728" if a > 0 else "#1f77b4"
            rows.append(f"<tr><td>{html_lib.escape(token)}</td>{cells}<td>{_bar(a, colour, scale)}</td></tr>")
        head = "".join(f"<th>{h}</th>" for h in ("", *dists, "A_t (student = π_R)"))
        return (
            f"<div><b>λ = {self.lam:g}</b>: π*_λ ∝ π_R^(1−λ)·π_T^λ</div>"
            f'<table style="font-size:13px"><tr>{head}</tr>{"".join(rows)}</table>'
        )

    def widget(self):
        """Sliders for λ and for every logit of π_R and π_T, above the live table."""
        import ipywidgets as w

        out = w.HTML(self.html())
        lam = w.FloatSlider(value=self.lam, min=0.0, max=3.0, step=0.05, description="λ")
        lam.observe(lambda change: (self.set_lam(change["new"]), setattr(out, "value", self.html())), "value")
        columns = []
        for role, label in (("reference", "π_R logits"), ("teacher", "π_T logits")):
            sliders = []
            for k, token in enumerate(self.tokens):
                slider = w.FloatSlider(
                    value=float(getattr(self, f"{role}_logits")[k]), min=-3, max=3, step=0.1, description=token
                )
                slider.observe(
                    lambda change, role=role, k=k: (
                        self.set_logits(role, k, change["new"]),
                        setattr(out, "value", self.html()),
                    ),
                    "value",
                )
                sliders.append(slider)
            columns.append(w.VBox([w.HTML(f"<b>{label}</b>"), *sliders]))
        return w.VBox([lam, w.HBox(columns), out])


class TwoStepTree:
    """A two-token tree (``K = 2``, ``H = 2``): the token-level and the sequence-level optimum at λ."""

    def __init__(self, teacher_seed: int = 1, reference_seed: int = 2, lam: float = 2.0):
        from gopd_lab.lm import exact

        self.teacher = exact.random_policy(2, 2, seed=teacher_seed, scale=1.5)
        self.reference = exact.random_policy(2, 2, seed=reference_seed, scale=1.5)
        self.lam = float(lam)

    def set_lam(self, lam: float) -> None:
        self.lam = float(lam)

    def optima(self) -> dict[str, torch.Tensor]:
        """``(S, K)`` next-token probabilities of each optimum (state 0 the root, 1–2 after the first token)."""
        from gopd_lab.lm import exact

        with torch.no_grad():
            token = exact.token_level_optimum(self.teacher, self.reference, self.lam).log_probs().exp()
            sequence = exact.sequence_level_optimum(self.teacher, self.reference, self.lam).log_probs().exp()
        return {"token-level": token, "sequence-level": sequence}  # (S, K) each

    def html(self) -> str:
        opt = self.optima()
        names = ["root", "after a₁ = 0", "after a₁ = 1"]
        rows = []
        for s, name in enumerate(names):
            cells = "".join(
                f"<td>{_bar(float(p[s, 0]), colour)}</td>"
                for p, colour in ((opt["token-level"], "#ff7f0e"), (opt["sequence-level"], "#d62728"))
            )
            gap = abs(float(opt["token-level"][s, 0] - opt["sequence-level"][s, 0]))
            rows.append(f"<tr><td>{name}</td>{cells}<td>{gap:.4f}</td></tr>")
        head = "<tr><th>state</th><th>π_tok(0 | s)</th><th>π*(0 | s)</th><th>|difference|</th></tr>"
        return (
            f"<div><b>λ = {self.lam:g}</b>: the probability of token 0 at each state of a two-step tree</div>"
            f'<table style="font-size:13px">{head}{"".join(rows)}</table>'
        )

    def widget(self):
        import ipywidgets as w

        out = w.HTML(self.html())
        lam = w.FloatSlider(value=self.lam, min=0.0, max=3.0, step=0.05, description="λ")
        lam.observe(lambda change: (self.set_lam(change["new"]), setattr(out, "value", self.html())), "value")
        return w.VBox([lam, out])


def state_explorer(**kwargs):
    """The one-state explorable as a widget (:class:`OneState`'s arguments)."""
    return OneState(**kwargs).widget()


def tree_explorer(**kwargs):
    """The two-step tree explorable as a widget (:class:`TwoStepTree`'s arguments)."""
    return TwoStepTree(**kwargs).widget()
