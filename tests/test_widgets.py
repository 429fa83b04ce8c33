"""Widget state without a browser: the explorer's recomputed A_t and the throttled live plot."""

from __future__ import annotations

import json

import pytest
import torch

from gopd_lab.objectives import gopd_advantages
from gopd_lab.viz.widgets import LivePlot, TokenExplorer, explore


def make_record(**overrides) -> dict:
    record = {
        "step": 3,
        "index": 0,
        "domain": "add",
        "prompt": "12+34=",
        "completion": "46",
        "tokens": ["4", "6", "<eos>"],
        "lp_student": [-0.1, -2.0, -0.5],
        "lp_teacher": [-0.05, -3.0, -0.2],
        "lp_reference": [-0.2, -1.5, -0.4],
        "lp_references": {"big-base": [-0.3, -1.0, -0.6]},
        "advantage": [0.1, -1.25, 0.4],
        "teacher_rank": [0, 3, 1],
        "lam": 1.25,
        "score": 1.0,
    }
    record.update(overrides)
    return record


def expected(record: dict, lam: float, reference: list[float]) -> torch.Tensor:
    return gopd_advantages(
        torch.tensor([record["lp_student"]]), torch.tensor([record["lp_teacher"]]), torch.tensor([reference]), lam=lam
    )[0]


def test_lam_slider_recomputes_advantages_exactly():
    r = make_record()
    ex = TokenExplorer([r])
    assert ex.lam == 1.25 and ex.reference == "run"
    assert torch.allclose(torch.tensor(ex.current_values()), expected(r, 1.25, r["lp_reference"]))
    ex.set_lam(1.5)
    shown = torch.tensor(ex.current_values())
    assert torch.allclose(shown, expected(r, 1.5, r["lp_reference"]))
    assert not torch.allclose(shown, expected(r, 1.25, r["lp_reference"]))
    assert torch.allclose(torch.tensor(ex.figure.data[0].y), shown)
    assert "λ=1.5, reference run" in ex.html


def test_switching_reference_changes_advantages_accordingly():
    r = make_record()
    ex = explore([r], lam=0.5)
    ex.set_reference("big-base")
    assert torch.allclose(torch.tensor(ex.current_values()), expected(r, 0.5, r["lp_references"]["big-base"]))
    ex.set_quantity("reward")
    reward = [t - b for t, b in zip(r["lp_teacher"], r["lp_references"]["big-base"])]
    assert ex.current_values() == pytest.approx(reward)
    assert ex.figure.layout.yaxis.title.text == "reward"
    with pytest.raises(ValueError, match="not scored"):
        ex.set_reference("nope")


def test_sample_without_reference_falls_back_to_opd():
    bare = make_record(index=1, lp_reference=None, lp_references=None, teacher_rank=None, lam=1.0)
    ex = TokenExplorer([make_record(), bare], quantity="teacher_rank")
    ex.set_sample(1)
    assert ex.reference is None and ex.lam == 1.0 and ex.quantity == "advantage"
    want = torch.tensor(bare["lp_teacher"]) - torch.tensor(bare["lp_student"])
    assert torch.allclose(torch.tensor(ex.current_values()), want)
    with pytest.raises(ValueError, match="only λ = 1"):
        ex.set_lam(2.0)
    assert "score 1" in ex.summary() and "reference none" in ex.summary()


def test_widget_controls_drive_the_state(tmp_path):
    r = make_record()
    (tmp_path / "samples.jsonl").write_text(json.dumps(r) + "\n" + json.dumps(make_record(index=1)) + "\n")
    ex = explore(tmp_path)
    box = ex.widget
    controls = ex._controls
    controls["lam"].value = 2.0
    assert ex.lam == 2.0 and torch.allclose(torch.tensor(ex.current_values()), expected(r, 2.0, r["lp_reference"]))
    controls["reference"].value = "big-base"
    assert controls["view"].value == ex.html and "reference big-base" in controls["view"].value
    controls["quantity"].value = "lp_teacher"
    assert controls["lam"].disabled
    ex.set_sample(1)  # a programmatic change updates the controls
    assert controls["sample"].value == 1 and controls["summary"].value == ex.summary()
    assert controls["bars"] in box.children and controls["bars"].value == ex.bars and "gopd-bars" in ex.bars
    assert "application/vnd.jupyter.widget-view+json" in ex._repr_mimebundle_()


def test_live_plot_throttles_redraws_and_keeps_every_point():
    live = LivePlot(metrics=("loss", "reverse_kl"), min_interval=3600.0)
    for step in range(200):
        live.on_step(step, {"loss": 1.0 / (step + 1), "reverse_kl": 0.5, "adv_mean": 0.0})
    assert live.redraws == 1 and len(live.fig.data[0].x) == 1  # only the first step was drawn
    live.on_end({})
    assert live.redraws == 2 and list(live.fig.data[0].x) == list(range(200))
    assert live.fig.data[0].y[-1] == pytest.approx(1 / 200) and live.fig.data[1].y[0] == 0.5
    titles = live.fig.to_dict()["layout"]
    assert titles["yaxis"]["title"]["text"] == "loss" and titles["xaxis2"]["title"]["text"] == "step"


def test_live_plot_missing_metric_is_nan():
    live = LivePlot(metrics=("loss",), min_interval=0.0)
    live.on_step(0, {})
    live.on_step(1, {"loss": 2.0})
    assert live.redraws == 2 and live.history["loss"][1] == 2.0 and live.history["loss"][0] != live.history["loss"][0]


def test_lam_slider_changes_the_colours_not_the_scale():
    """Regression (issue 25): the explorer rescaled its colours to every λ, so moving the slider looked the same."""
    from gopd_lab.viz.tokens import LAM_SCALE, lam_range

    r = make_record()
    ex = TokenExplorer([r])
    fixed = lam_range(r, lams=sorted({*LAM_SCALE, r["lam"]}))
    before_html, before_colours = ex.html, list(ex.figure.data[0].marker.color)
    assert ex.scale() == pytest.approx(fixed)
    ex.set_lam(2.0)
    assert ex.scale() == pytest.approx(fixed) and ex.figure.layout.yaxis.range == pytest.approx(
        (-1.05 * fixed, 1.05 * fixed)
    )
    assert list(ex.figure.data[0].marker.color) != before_colours and ex.html != before_html
    assert f"({-fixed:.3g}" not in ex.bars and f"±{fixed:.3g}" in ex.bars  # the bars keep the fixed scale
    rescaled = TokenExplorer([r], scale_lams=None)  # the old behaviour on request: each λ on its own max
    rescaled.set_lam(2.0)
    assert rescaled.scale() == pytest.approx(max(abs(v) for v in expected(r, 2.0, r["lp_reference"]).tolist()))
    assert TokenExplorer([r], vmax=0.5).scale() == 0.5


def test_explorer_draws_steps_when_given():
    from gopd_lab.viz.chain_view import Steps

    steps = Steps(spans=((0, 1), (1, 2)), first_wrong_step=1, first_wrong_token=1)
    ex = TokenExplorer([make_record(), make_record(index=1)], steps=lambda rec: steps if rec["index"] == 0 else None)
    assert 'class="step wrong" data-step="1"' in ex.html and "Σ per step" in ex.html
    ex.set_lam(2.0)
    assert "A_t (λ=2, reference run)" in ex.html
    ex.set_quantity("lp_teacher")  # other quantities: the plain token view
    assert "Σ per step" not in ex.html
    ex.set_sample(1)
    ex.set_quantity("advantage")
    assert "Σ per step" not in ex.html  # this sample has no steps
    with pytest.raises(ValueError, match="steps has 1 entries for 2 records"):
        TokenExplorer([make_record(), make_record()], steps=[steps])


def test_loss_kind_bars_name_the_kind():
    """Regression (issue 26): the per-position bars of a categorical quantity said "loss_kind = +0.0000"."""
    ex = TokenExplorer([make_record(loss_kind=["reverse", "gated", "forward"])], quantity="loss_kind")
    assert "loss_kind = gated" in ex.bars and "loss_kind = +" not in ex.bars


def test_explorer_opens_a_grpo_sample_with_a_reference():
    """Regression: a GRPO sample with a KL reference (lp_reference logged, lp_teacher None) crashed the explorer,
    which recomputed A_t from the missing teacher log-probs."""
    grpo = make_record(lp_teacher=None, lp_references=None, teacher_rank=None, lam=1.0, advantage=[0.5, 0.5, 0.5])
    ex = TokenExplorer([make_record(), grpo], lam=2.0)
    ex.set_sample(1)
    assert ex.lam == 1.0 and ex.current_values() == [0.5, 0.5, 0.5] and ex.scale() == 0.5
    with pytest.raises(ValueError, match="no lp_teacher"):
        ex.set_lam(2.0)
    box = ex.widget
    assert ex._controls["lam"].disabled and box is ex.widget
