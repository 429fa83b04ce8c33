"""Token views, the batch heatmap and run plots: asserted on HTML text and ``fig.to_dict()``."""

from __future__ import annotations

import json
import re

import pytest
import torch

from gopd_lab.objectives import gopd_advantages
from gopd_lab.viz import (
    PALETTE,
    advantage_heatmap,
    available_quantities,
    color,
    eval_curves,
    load_runs,
    load_samples,
    save_html,
    stage_timings,
    token_values,
    token_view,
    token_views,
    training_curves,
)

RED, BLUE, WHITE = "rgb(178, 24, 43)", "rgb(33, 102, 172)", "rgb(255, 255, 255)"


def make_record(**overrides) -> dict:
    """Five tokens covering a plain char, an HTML-special char, a space, a newline and <eos>."""
    record = {
        "step": 3,
        "index": 0,
        "domain": "add",
        "prompt": "12+34=",
        "completion": "4< \n",
        "tokens": ["4", "<", " ", "\n", "<eos>"],
        "lp_student": [-0.1, -2.0, -0.5, -1.0, -0.2],
        "lp_teacher": [-0.05, -3.0, -0.5, -0.5, -0.1],
        "lp_reference": [-0.2, -1.5, -0.4, -0.9, -0.3],
        "lp_references": {"big-base": [-0.3, -1.0, -0.6, -0.8, -0.25]},
        "advantage": [1.0, -1.0, 0.0, 0.5, -0.5],
        "teacher_rank": [0, 3, 1, 0, 0],
        "lam": 1.25,
        "score": 1.0,
    }
    record.update(overrides)
    return record


def spans(html: str) -> list[str]:
    return re.findall(r'<span class="tok"[^>]*>.*?</span>(?=<wbr>|<br>)', html)


def test_token_view_html_has_every_token_escaped_with_colours_and_hover():
    html = token_view(make_record(), vmax=1.0).html
    toks = spans(html)
    assert len(toks) == 5
    assert '>4<span class="gopd-card"' in toks[0] and '>&lt;<span class="gopd-card"' in toks[1]
    assert "·" in toks[2] and "↵" in toks[3] and "&lt;eos&gt;" in toks[4]
    assert "<eos>" not in html and "outline:1px solid" in toks[4]  # special token boxed
    assert html.count("<br>") == 1  # the newline token breaks the line
    assert f"background-color:{RED}" in toks[0]  # A = +1 = +vmax
    assert f"background-color:{BLUE}" in toks[1]  # A = -1 = -vmax
    assert f"background-color:{WHITE}" in toks[2]  # A = 0
    assert "lp_teacher = -3.0000" in toks[1] and "A_t (stored) = -1.0000" in toks[1]
    assert "teacher_rank = 3" in toks[1] and "lp_reference[big-base] = -1.0000" in toks[1]
    card = re.search(r'<span class="gopd-card"[^>]*>(.*)</span>', toks[1]).group(0)  # the styled hover card
    assert "display:none" in card and ">lp_teacher</td>" in card and ">-3.0000</td>" in card
    assert ".tok:hover>.gopd-card{display:block!important}" in html, "the card shows on hover"
    assert "<script" not in html and 'class="legend"' in html


def test_colour_scale_is_symmetric_and_diverging():
    assert color(0.0, 2.0) == WHITE and color(5.0, 2.0) == RED and color(-2.0, 2.0) == BLUE
    assert color(float("-inf"), 1.0) == "rgb(221, 221, 221)"
    assert token_view(make_record()).vmax == [1.0]  # default range: max |A_t|


def test_recomputed_advantage_matches_gopd_advantages():
    r = make_record()
    got = torch.tensor(token_values(r, lam=1.5, reference="big-base"))
    want = gopd_advantages(
        torch.tensor([r["lp_student"]]),
        torch.tensor([r["lp_teacher"]]),
        torch.tensor([r["lp_references"]["big-base"]]),
        lam=1.5,
    )[0]
    assert torch.allclose(got, want)
    own = gopd_advantages(
        torch.tensor([r["lp_student"]]), torch.tensor([r["lp_teacher"]]), torch.tensor([r["lp_reference"]]), lam=1.25
    )[0]
    assert torch.allclose(torch.tensor(token_values(r, reference="run")), own)


def test_quantities_reward_rank_and_missing_data():
    r = make_record()
    assert token_values(r, "reward") == pytest.approx([t - f for t, f in zip(r["lp_teacher"], r["lp_reference"])])
    assert token_values(r, "teacher_rank") == [0, 3, 1, 0, 0]
    bare = make_record(lp_reference=None, lp_references=None, teacher_rank=None, lam=1.0)
    assert available_quantities(bare) == ["advantage", "lp_student", "lp_teacher"]
    with pytest.raises(ValueError, match="needs a reference"):
        token_values(bare, "reward")
    with pytest.raises(ValueError, match="not scored"):
        token_values(r, reference="nope")
    with pytest.raises(ValueError, match="unknown quantity"):
        token_values(r, "logits")


def test_token_views_labels_shared_scale_and_standalone_page(tmp_path):
    r = make_record()
    view = token_views([r, r], labels=["run reference", "big-base"], reference=["run", "big-base"], lam=1.5)
    assert "run reference" in view.html and "big-base" in view.html and "display:flex" in view.html
    assert len(spans(view.html)) == 10 and view.vmax[0] == view.vmax[1]
    path = view.save(tmp_path / "sub" / "view.html")
    page = path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and '<meta charset="utf-8">' in page and view.html in page
    assert "http" not in page and list(path.parent.iterdir()) == [path]  # no temp file left
    stacked = token_view([r, make_record(index=1)])
    assert len(spans(stacked.html)) == 10 and "display:block" in stacked.html


def test_load_samples_filters_by_step(tmp_path):
    lines = [make_record(step=s, index=i) for s in (1, 2) for i in range(2)]
    (tmp_path / "samples.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert len(load_samples(tmp_path)) == 4 and [x["index"] for x in load_samples(tmp_path, step=2)] == [0, 1]


def test_advantage_heatmap_pads_and_centres_at_zero():
    short = make_record(
        tokens=["7", "<eos>"],
        advantage=[0.3, -0.2],
        lp_student=[-1, -1],
        lp_teacher=[-1, -1],
        lp_reference=[-1, -1],
        lp_references=None,
        teacher_rank=None,
    )
    fig = advantage_heatmap([make_record(), short]).to_dict()
    (trace,) = fig["data"]
    assert trace["type"] == "heatmap" and trace["zmid"] == 0
    assert len(trace["z"]) == 2 and [len(row) for row in trace["z"]] == [5, 5]
    assert list(trace["z"][1]) == [0.3, -0.2, None, None, None]
    assert list(trace["text"][0]) == ["4", "&lt;", "·", "↵", "&lt;eos&gt;"]
    assert fig["layout"]["xaxis"]["title"]["text"] == "position"


def write_run(root, name, steps, domains=("add", "mul"), evals=True):
    run = root / name
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"lam": 1.0, "estimator": "sampled", "out_dir": str(run)}))
    rows = [
        {
            "step": s,
            "loss": 1.0 / (s + 1),
            "reverse_kl": 0.5 - 0.01 * s,
            "adv_mean": -0.1,
            "entropy": 1.2,
            "time_rollout": 0.5,
            "time_score": 0.2,
            "time_update": 0.3,
            "time_step": 1.1,
        }
        for s in range(steps)
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 99, "lo')
    if evals:
        ev = [
            {"step": s, "domain": d, "greedy_acc": 0.1 * s, "mean_acc": 0.05 * s, "n": 16}
            for s in range(0, steps, 2)
            for d in domains
        ]
        (run / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ev))
    return run


def test_load_runs_names_runs_and_skips_truncated_last_line(tmp_path):
    a, b = write_run(tmp_path, "a", 4), write_run(tmp_path, "b", 6, evals=False)
    metrics, evals = load_runs([a, b])
    assert list(metrics["run"].cat.categories) == ["a", "b"] and len(metrics) == 10
    assert len(evals) == 4 and set(evals["run"]) == {"a"}


def test_run_plots_share_colours_and_have_titles(tmp_path):
    b, a = write_run(tmp_path, "b", 4), write_run(tmp_path, "a", 6, evals=False)
    c = write_run(tmp_path, "c", 4)
    metrics, evals = load_runs([b, a, c])

    train = training_curves(metrics).to_dict()
    assert len(train["data"]) == 3 * 4
    assert [t["name"] for t in train["data"][:3]] == ["b", "a", "c"]
    assert [len(t["x"]) for t in train["data"][:3]] == [4, 6, 4]
    titles = {train["layout"][k]["title"]["text"] for k in train["layout"] if k.startswith("yaxis")}
    assert titles == {"loss", "reverse_kl", "adv_mean", "entropy"}
    assert train["layout"]["xaxis"]["title"]["text"] == "step"

    ev = eval_curves(evals).to_dict()
    assert len(ev["data"]) == 2 * 2  # runs b and c (a has no evals) × domains add, mul
    assert [a["text"] for a in ev["layout"]["annotations"]] == ["add", "mul"]
    assert ev["layout"]["yaxis"]["title"]["text"] == "greedy_acc"

    timing = stage_timings([b, a, c]).to_dict()
    assert [t["name"] for t in timing["data"]] == ["rollout", "score", "update", "other"]
    assert timing["layout"]["barmode"] == "stack" and list(timing["data"][0]["x"]) == ["b", "a", "c"]
    assert timing["data"][3]["y"] == pytest.approx([0.1, 0.1, 0.1])

    colour = {t["name"]: t["line"]["color"] for t in train["data"]}
    assert colour == {"b": PALETTE[0], "a": PALETTE[1], "c": PALETTE[2]}
    assert {t["name"]: t["line"]["color"] for t in ev["data"]} == {"b": PALETTE[0], "c": PALETTE[2]}
    assert list(timing["data"][0]["marker"]["color"]) == [PALETTE[0], PALETTE[1], PALETTE[2]]


def test_save_html_is_self_contained_and_atomic(tmp_path):
    run = write_run(tmp_path, "r", 3)
    path = save_html(training_curves(run), tmp_path / "out" / "train.html")
    text = path.read_text(encoding="utf-8")
    assert "Plotly" in text and not re.search(r"<script[^>]*\bsrc=", text) and len(text) > 1_000_000
    assert [p.name for p in path.parent.iterdir()] == ["train.html"]


def test_token_view_of_a_teacher_free_sample_renders():
    """Regression: GRPO / SFT samples (lp_teacher None) crashed the token view."""
    from gopd_lab.viz import available_quantities, token_view

    record = {
        "tokens": ["4", "6", "<eos>"],
        "lp_student": [-0.1, -0.2, -0.3],
        "lp_teacher": None,
        "lp_reference": None,
        "advantage": [0.5, 0.5, 0.5],
        "teacher_rank": None,
        "lam": 1.0,
        "score": 1.0,
    }
    html = token_view(record)._repr_html_()
    assert html.count('class="gopd-card"') == 3 and "lp_teacher" not in html
    assert available_quantities(record) == ["advantage", "lp_student"]


def test_lam_one_rows_without_reference_are_not_offered_a_reference():
    from gopd_lab.viz import references

    record = {
        "tokens": ["1"],
        "lp_student": [-0.1],
        "lp_teacher": [-0.2],
        "lp_reference": [None],
        "advantage": [-0.1],
        "lam": 1.0,
    }
    assert references(record) == {}
