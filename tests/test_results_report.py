"""sweeps/report.py: docs/results.md is exactly what the committed results under results/ give, and the verdict
rule and the template markers behave as documented."""

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("report", ROOT / "sweeps" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_docs_results_is_regenerated_from_the_committed_results(report):
    text = report.render(report.TEMPLATE.read_text(), report.build() | report.v1_blocks())
    assert (ROOT / "docs" / "results.md").read_text() == text, "run `python sweeps/report.py` and commit"
    assert "<!-- @" not in text and "{{" not in text and "@@" not in text, "every marker is filled"


@pytest.mark.parametrize(
    ("low", "high", "expect", "word"),
    [
        (0.001, 0.02, +1, "reproduced"),
        (-0.02, -0.001, +1, "opposite"),
        (-0.01, 0.02, +1, "inconclusive"),
        (-0.02, -0.001, -1, "reproduced"),
        (0.001, 0.02, -1, "opposite"),
        (-0.01, 0.02, -1, "inconclusive"),
        (0.001, 0.02, 0, "differs"),
        (-0.01, 0.02, 0, "no difference detected"),
    ],
)
def test_verdict_follows_the_interval_and_the_predicted_sign(report, low, high, expect, word):
    assert report.verdict(pd.Series({"ci_low": low, "ci_high": high}), expect) == word


def test_render_fills_block_and_inline_markers_and_refuses_unknown_ones(report):
    out = report.render("a {{x}} b\n<!-- @t -->\nend", {"x": "+1.0", "t": "| t |\n|---|"})
    assert out == "a +1.0 b\n| t |\n|---|\nend\n"
    with pytest.raises(KeyError, match="nope"):
        report.render("<!-- @nope -->", {})


def test_versus_teacher_pairs_each_seed_with_the_fixed_teacher(report, monkeypatch):
    """Hand-computed: students 0.90 and 0.94 against a teacher at 0.91 give +1.0 points, 1 of 2 seeds won."""
    ref = pd.DataFrame(
        [{"model": "t", "tasks": "add", "domain": "add", "greedy_acc": 0.91, "mean_acc": 0.6, "pass_acc": 0.9, "n": 1}]
    )
    monkeypatch.setattr(report, "reference_models", lambda: ref)
    df = pd.DataFrame(
        {
            "lam": [1.0, 1.0],
            "seed": [0, 1],
            "status": ["ok", "ok"],
            "tasks": ["add", "add"],
            "eval_add_greedy_acc": [0.90, 0.94],
            "eval_add_mean_acc": [0.6, 0.6],
        }
    )
    d = report.versus_teacher(df, "lam", 1.0, "t", "add").set_index("metric")
    assert d.loc["eval_add_greedy_acc", "diff_mean"] == pytest.approx(0.01)
    assert (d.loc["eval_add_greedy_acc", "wins"], d.loc["eval_add_greedy_acc", "pairs"]) == (1, 2)
    assert d.loc["eval_add_mean_acc", "diff_mean"] == pytest.approx(0.0)
