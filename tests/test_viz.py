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


# ------------------------------------------------------------------------------------ fixed scales, Σ, chains
def test_categorical_token_view_has_no_sum():
    """Regression: a loss_kind (categorical) panel printed "Σ = +0.0000" and its hover card "+0.0000" for a kind."""
    r = make_record(loss_kind=["reverse", "forward", "gated", "reverse", "reverse"])
    view = token_views([r, r], quantity=["loss_kind", "advantage"])
    kind, adv = view.html.split('class="gopd-panel"')[1:]
    assert "Σ" not in kind and "Σ = +0.0000" in adv  # Σ A_t = 1 - 1 + 0 + 0.5 - 0.5
    assert "loss_kind (shown) = forward" in kind and "+0.0000" not in kind.split("A_t (stored)")[0]
    assert "Σ" not in token_view(r, "teacher_rank").html  # a sum of ranks means nothing either


def test_lam_range_fixes_the_colour_scale_across_lam():
    from gopd_lab.viz.tokens import LAM_SCALE, lam_range

    r = make_record()
    at = {lam: token_values(r, lam=lam) for lam in (1.0, 1.5, 2.0)}
    scale = lam_range(r, lams=LAM_SCALE)
    assert scale == pytest.approx(max(abs(v) for lam in (1.0, 2.0) for v in at[lam]))
    assert all(abs(v) <= scale + 1e-9 for v in at[1.5])  # linear in λ: the ends bound every λ between
    one, two = (token_views([r], lam=lam, scale_lams=LAM_SCALE) for lam in (1.0, 2.0))
    assert one.vmax == two.vmax == [scale]
    assert spans(one.html) != spans(two.html)  # same scale, other colours: λ shows
    auto_one, auto_two = (token_views([r], lam=lam) for lam in (1.0, 2.0))
    assert auto_one.vmax != auto_two.vmax  # without it each λ is rescaled to its own max
    bare = make_record(lp_reference=None, lp_references=None)
    assert lam_range(bare) == 1.0  # no reference: only the stored A_t (max |A| = 1)


def chain_tokens() -> list[str]:
    """``7+5`` then ``=12`` written as two steps and an answer: ``7+5=12;1<eos>``-like, 9 tokens."""
    return ["7", "+", "5", "=", "1", "2", ";", "1", "<eos>"]


def test_chain_view_draws_steps_first_wrong_and_step_sums():
    from gopd_lab.viz.chain_view import ChainView, Steps, chain_view, step_sums

    tokens = chain_tokens()
    opd = [0.1, 0.0, -0.2, 0.0, -0.3, -2.0, 0.0, -0.5, 0.05]
    grpo = [-0.5] * len(tokens)
    steps = Steps(spans=((0, 3), (3, 7), (7, 8)), first_wrong_step=1, first_wrong_token=5)
    view = chain_view(tokens, {"OPD A_t": opd, "GRPO A": grpo}, steps, prompt="7+5=")
    assert isinstance(view, ChainView) and view._repr_html_() == view.html
    assert view.step_sums == [step_sums(opd, steps.spans), [-1.5, -2.0, -0.5]]
    assert view.step_sums[0] == pytest.approx([-0.1, -2.3, -0.5])
    assert view.vmax == [2.0, 2.0]  # one shared scale by default
    panels = view.html.split('class="gopd-panel gopd-chain"')[1:]
    assert len(panels) == 2 and 'data-label="OPD A_t"' in view.html and 'data-label="GRPO A"' in view.html
    for panel in panels:
        assert panel.count('<span class="step') == 3 and panel.count('class="step wrong" data-step="1"') == 1
        assert panel.count('<tr class="step-sum') == 3 and 'class="step-sum wrong" data-step="1"' in panel
        assert len(re.findall(r'<span class="tok" data-i="\d+"', panel)) == len(tokens)
        first = re.findall(r'<span class="tok" data-i="(\d+)" data-first-wrong="1"', panel)
        assert first == ["5"]
    assert f"background-color:{BLUE}" in re.search(r'data-i="5"[^>]*>', panels[0]).group(0)  # -2 = -vmax
    assert "OPD A_t = -2.0000" in panels[1] and "GRPO A = -0.5000" in panels[0]  # every credit in each card
    assert "first wrong step 1 (tokens 3–6, first wrong token #5)" in view.html
    assert "<eos>" not in view.html and "<script" not in view.html
    right = chain_view(tokens, {"A": opd}, {"spans": [(0, 3), (3, 7)], "first_wrong_step": None})
    assert "2 steps, all right" in right.html and 'class="step wrong"' not in right.html
    assert "data-first-wrong" not in right.html and "✗" not in right.html


def test_chain_view_rejects_spans_that_do_not_fit():
    from types import SimpleNamespace

    from gopd_lab.errors import UserError
    from gopd_lab.viz.chain_view import Steps, StepSpanError, chain_view, credit_comparison

    tokens, values = chain_tokens(), [0.0] * 9
    assert Steps.of(SimpleNamespace(spans=[[0, 2]], first_wrong_step=0, first_wrong_token=1)).spans == ((0, 2),)
    check = SimpleNamespace(steps=[(0, 4), (4, 9)], first_wrong_step=1, first_wrong_token=5)  # a checker's `steps`
    named = Steps.of(check, names=["column 1", "answer"])
    assert named == Steps(((0, 4), (4, 9)), 1, 5, ("column 1", "answer"))
    view = chain_view(tokens, {"A": values}, named)
    assert (
        "first wrong step 1 (answer)" in view.html
        and ">column 1</td>" in view.html
        and "step = 1 (answer)" in view.html
    )
    with pytest.raises(StepSpanError, match="1 step names for 2 steps"):
        chain_view(tokens, {"A": values}, Steps.of(check, names=["answer"]))
    bad = [
        ({"spans": [(0, 3), (2, 5)]}, "not overlapping"),
        ({"spans": [(0, 12)]}, "within"),
        ({"spans": [(3, 3)]}, "non-empty"),
        ({"spans": [(0, 3)], "first_wrong_step": 1}, "first_wrong_step 1"),
        ({"spans": [(0, 3)], "first_wrong_token": 9}, "first_wrong_token 9"),
        ({"first_wrong_step": 0}, "needs `spans`"),
    ]
    for steps, message in bad:
        with pytest.raises(StepSpanError, match=message):
            chain_view(tokens, {"A": values}, steps)
    with pytest.raises(StepSpanError, match="8 values for 9 tokens"):
        chain_view(tokens, {"A": values[:8]}, {"spans": [(0, 3)]})
    with pytest.raises(StepSpanError, match="vmax must be > 0"):
        chain_view(tokens, {"A": values}, {"spans": [(0, 3)]}, vmax=0.0)
    with pytest.raises(StepSpanError, match="no credits"):
        chain_view(tokens, {}, {"spans": [(0, 3)]})
    with pytest.raises(StepSpanError, match="no lp_teacher"):
        credit_comparison(make_record(lp_teacher=None), {"spans": [(0, 3)]})
    assert issubclass(StepSpanError, UserError)


def test_grpo_token_advantages_is_what_grpo_trains_on():
    from types import SimpleNamespace

    from gopd_lab.methods.grpo import GRPO
    from gopd_lab.objectives import group_advantages, grpo_token_advantages

    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])  # two groups of 3
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]] * 2)  # (6, 4)
    got = grpo_token_advantages(rewards, 3, mask)  # (6, 4)
    scored = SimpleNamespace(rewards=rewards, rollout=SimpleNamespace(completion_mask=mask))
    settings = SimpleNamespace(samples_per_prompt=3, grpo_scale_std=True)
    assert torch.equal(got, GRPO().advantages(scored, None, settings))
    adv = group_advantages(rewards, 3)
    assert torch.equal(got[1, :2], adv[1].repeat(2)) and got[1, 2:].abs().sum() == 0  # A on every token, 0 past it
    assert got[0, 0] > 0 > got[1, 0] and float(got[3, :3].max()) < 0  # the wrong member of group 2: -A everywhere


def test_credit_comparison_puts_opd_beside_grpo_on_a_fixed_scale():
    from gopd_lab.objectives import group_advantages
    from gopd_lab.viz.chain_view import credit_comparison
    from gopd_lab.viz.tokens import LAM_SCALE, lam_range

    r = make_record(score=0.0)
    steps = {"spans": [(0, 2), (2, 4)], "first_wrong_step": 0, "first_wrong_token": 1}
    view = credit_comparison(r, steps, lams=(1.0, 2.0), group_rewards=[1.0, 0.0, 1.0, 1.0], group_index=1)
    assert view.labels == ["OPD A_t (λ = 1)", "ExOPD A_t (λ = 2)", "GRPO A (reward 0 in a group of 4)"]
    assert view.values[0] == pytest.approx(token_values(r, lam=1.0))
    assert view.values[1] == pytest.approx(token_values(r, lam=2.0))
    grpo = float(group_advantages(torch.tensor([1.0, 0.0, 1.0, 1.0]), 4)[1])
    assert view.values[2] == pytest.approx([grpo] * 5) and grpo < 0
    assert view.vmax[0] == view.vmax[1] == pytest.approx(lam_range(r, lams=(1.0, 2.0)))
    assert view.vmax[2] == pytest.approx(abs(grpo))
    assert "lp_teacher = -3.0000" in view.html  # the record's log-probs are in the hover card
    alone = credit_comparison(r, steps, lams=(1.0,), scale_lams=LAM_SCALE)
    assert alone.vmax == [view.vmax[0]]  # λ = 1 alone on the scale fixed over λ = 1..2: the same scale
    assert credit_comparison(r, steps).vmax == [lam_range(r, lams=(1.0,))]  # default: the λ shown


@pytest.fixture(scope="module")
def add_world_records(tmp_path_factory):
    """One OPD step of the zoo's student-base on teacher-add (λ = 1.25, reference = the student's start):
    16 real token records, 4 completions of each of 4 prompts, each with the verifier's score."""
    from gopd_lab.demo import demo_config
    from gopd_lab.loop.train import train

    out = tmp_path_factory.mktemp("add-world")
    cfg = demo_config("add", lam=1.25, steps=1, out_dir=str(out)).replace(
        batch_size=4, samples_per_prompt=4, log_samples=16, eval_k=0, eval_limit=1
    )
    train(cfg, progress=False)
    return load_samples(cfg.out_dir)


def answer_steps(record: dict) -> dict:
    """A step checker for the add/mul world, where each answer digit is one step: the first wrong step is the
    first digit that differs from the right answer (``<eos>`` or a missing digit counts as wrong there)."""
    a, b = (int(x) for x in re.split(r"[+*]", record["prompt"].rstrip("=")))
    answer = str(a + b if "+" in record["prompt"] else a * b)
    digits = [i for i, t in enumerate(record["tokens"]) if t.isdigit()]
    spans = [(i, i + 1) for i in digits]
    wrong = next((k for k, i in enumerate(digits) if k >= len(answer) or record["tokens"][i] != answer[k]), None)
    if wrong is None and len(digits) < len(answer):
        wrong = len(digits) - 1 if digits else None  # too short: the last digit written is where it went off
    return {"spans": spans, "first_wrong_step": wrong, "first_wrong_token": None if wrong is None else digits[wrong]}


@pytest.mark.slow
def test_credit_comparison_on_the_add_world(add_world_records):
    """Real records of the embedded world: OPD's A_t at λ = 1 and 2 on a fixed scale beside GRPO's credit from
    the group's verifier scores, the answer digits drawn as steps."""
    from gopd_lab.objectives import group_advantages
    from gopd_lab.viz.chain_view import credit_comparison

    records = add_world_records
    assert len(records) == 16 and all(r["score"] in (0.0, 1.0) for r in records)
    for g in range(4):
        group = records[4 * g : 4 * g + 4]
        assert len({r["prompt"] for r in group}) == 1  # the 4 completions of one prompt are adjacent
        rewards = [r["score"] for r in group]
        for k, r in enumerate(group):
            steps = answer_steps(r)
            view = credit_comparison(r, steps, lams=(1.0, 2.0), group_rewards=rewards, group_index=k)
            n = len(r["tokens"])
            assert view.values[0] == pytest.approx(token_values(r, lam=1.0), abs=1e-6)
            assert view.values[1] == pytest.approx(token_values(r, lam=2.0), abs=1e-6)
            grpo = float(group_advantages(torch.tensor(rewards), 4)[k])
            assert view.values[2] == pytest.approx([grpo] * n, abs=1e-6)
            assert view.vmax[0] == view.vmax[1] and len(view.step_sums[0]) == len(steps["spans"])
            assert view.html.count('<span class="tok"') == 3 * n
            assert (steps["first_wrong_step"] is None) == (r["score"] == 1.0)
            assert ("data-first-wrong" in view.html) == (steps["first_wrong_token"] is not None)
