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
def test_verdict_follows_the_interval_and_the_predicted_sign(low, high, expect, word):
    from gopd_lab.experiments.verdicts import verdict

    assert verdict(pd.Series({"ci_low": low, "ci_high": high}), expect) == word


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


# ----------------------------------------------------------------------------- the corrected verdict rule
@pytest.mark.parametrize(
    ("diff", "p_holm", "expect", "tost", "word"),
    [
        (0.01, 0.04, +1, float("nan"), "reproduced"),
        (0.01, 0.06, +1, float("nan"), "inconclusive"),
        (-0.01, 0.01, +1, float("nan"), "opposite"),
        (-0.01, 0.01, -1, float("nan"), "reproduced"),
        (0.01, 0.01, 0, float("nan"), "differs"),
        (0.001, 0.7, 0, 0.01, "equivalent (±1 point)"),
        (0.001, 0.7, 0, 0.2, "no difference detected"),
    ],
)
def test_corrected_verdict_follows_the_holm_p(diff, p_holm, expect, tost, word):
    from gopd_lab.experiments.verdicts import corrected_verdict

    assert corrected_verdict(diff, p_holm, expect, tost) == word


def _diffs(p, diff=0.01, low=0.001, high=0.02, tost=float("nan")):
    return pd.DataFrame(
        [
            {
                "metric": "eval_add_greedy_acc",
                "diff_mean": diff,
                "ci_low": low,
                "ci_high": high,
                "p": p,
                "tost_p": tost,
                "wins": 3,
                "pairs": 3,
            }
        ]
    )


def test_findings_correct_inside_each_finding_and_prefer_the_prompt_level_p():
    """Finding A: raw p 0.04 and 0.02 → Holm 0.04 and 0.04 (both reproduced); finding B: 0.04, 0.01, 0.03 →
    0.06, 0.03, 0.06: the raw-significant 0.04 row becomes inconclusive. A prompt-level p replaces the seed one."""
    from gopd_lab.experiments.verdicts import Findings

    f = Findings()
    greedy = ["eval_add_greedy_acc"]
    f.add("A.", "a1", _diffs(0.04), greedy, +1)
    f.add("A.", "a2", _diffs(0.02), greedy, +1)
    f.add("B.", "b1", _diffs(0.04), greedy, +1)
    f.add("B.", "b2", _diffs(0.01), greedy, +1)
    f.add(
        "B.",
        "b3",
        _diffs(0.5),
        greedy,
        +1,
        {"eval_add_greedy_acc": {"diff_mean": 0.01, "ci_low": 0.0, "ci_high": 0.02, "p": 0.03}},
    )
    holm = {r["comparison"]: r["holm"] for r in f.rows}
    assert holm == pytest.approx({"a1": 0.04, "a2": 0.04, "b1": 0.06, "b2": 0.03, "b3": 0.06})
    words = {r["comparison"]: r["verdict"] for r in f.rows}
    assert words == {
        "a1": "reproduced",
        "a2": "reproduced",
        "b1": "inconclusive",
        "b2": "reproduced",
        "b3": "inconclusive",
    }
    assert [r["comparison"] for r in f.changed()] == ["b1", "b3"]  # raw seed intervals exclude 0 in both
    rows = {r["comparison"]: r for r in f.rows}
    assert rows["a1"]["prompts"] == "seeds only" and rows["b3"]["prompts"] == "+1.0 [+0.0, +2.0]"
    assert "Holm p" in f.markdown("A") and "seeds only" in f.markdown("A")


def test_slope_state_and_the_least_squares_slope():
    from gopd_lab.experiments.verdicts import _slope, slope_state

    # accuracies 0.80, 0.81, 0.82 at steps 300, 350, 400: 1 point per 50 steps = 2 points per 100 steps
    assert _slope(
        pd.Series([300, 350, 400]).to_numpy(float), pd.Series([0.80, 0.81, 0.82]).to_numpy()
    ) == pytest.approx(2.0)
    assert slope_state(-0.2, 0.3) == "flattened"
    assert slope_state(0.1, 1.2) == "rising"
    assert slope_state(-1.0, -0.1) == "falling"
    assert slope_state(-0.9, 1.5) == "not shown flat"


def test_every_v2_sweep_file_preregisters_its_verdict_metric(report, tmp_path, monkeypatch):
    table = report.verdict_metric_table()
    files = sorted((ROOT / "sweeps" / "v2").glob("*.yaml"))
    assert len(table.splitlines()) == 2 + len(files)
    (tmp_path / "sweeps" / "v2").mkdir(parents=True)
    (tmp_path / "sweeps" / "v2" / "x.yaml").write_text("notebook: n.ipynb\n")
    monkeypatch.setattr(report, "ROOT", tmp_path)
    with pytest.raises(ValueError, match="verdict_metric"):
        report.verdict_metric_table()


def test_sweep_outcomes_gather_every_point_and_write_the_same_bytes(tmp_path):
    import json

    from gopd_lab.experiments.sweep import SweepError, load_outcomes, write_outcomes

    for seed in (0, 1):
        d = tmp_path / f"seed={seed}"
        d.mkdir()
        (d / "params.json").write_text(json.dumps({"seed": seed}))
        (d / "point.json").write_text(json.dumps({"status": "ok", "params": {"seed": seed}}))
        (d / "summary.json").write_text(json.dumps({"steps": 4, "final": {}}))
        (d / "outcomes.csv").write_text(f"step,domain,prompt,greedy,s0,s1\n4,add,0,1,0,1\n4,add,1,{seed},1,1\n")
    table = load_outcomes(tmp_path)
    assert list(table.columns) == ["point_id", "step", "domain", "prompt", "greedy", "s0", "s1"]
    assert table.groupby("point_id").greedy.sum().to_dict() == {"seed=0": 1, "seed=1": 2}
    write_outcomes(table, tmp_path / "a.csv.gz")
    write_outcomes(table, tmp_path / "b.csv.gz")
    assert (tmp_path / "a.csv.gz").read_bytes() == (tmp_path / "b.csv.gz").read_bytes()
    assert pd.read_csv(tmp_path / "a.csv.gz").equals(table)
    (tmp_path / "seed=1" / "outcomes.csv").unlink()
    with pytest.raises(SweepError, match="no outcomes.csv"):
        load_outcomes(tmp_path)


def test_sweep_files_point_to_scripts_that_exist():
    """Regression: sweeps/v2/lam.yaml told readers to run a sweeps/v2/report.py that never existed."""
    import re

    for path in sorted((ROOT / "sweeps").glob("v*/*.yaml")):
        for script in re.findall(r"python (\S+\.py)", path.read_text()):
            assert (ROOT / script).is_file(), f"{path.name} names {script}, which does not exist"
