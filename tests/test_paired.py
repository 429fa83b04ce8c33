"""Paired differences over shared seeds, checked against hand-computed values."""

import math

import numpy as np
import pandas as pd
import pytest

from gopd_lab.experiments.paired import format_interval, paired_differences


def _results():
    # two arms over seeds 0..2; the arm wins by 0.02, 0.04, 0.00
    return pd.DataFrame(
        {
            "lam": [1.0, 1.0, 1.0, 1.25, 1.25, 1.25, 1.5],
            "seed": [0, 1, 2, 0, 1, 2, 0],
            "status": ["ok"] * 7,
            "eval_add_acc": [0.50, 0.60, 0.70, 0.52, 0.64, 0.70, 0.40],
        }
    )


def test_paired_difference_hand_computed():
    out = paired_differences(_results(), arm="lam", baseline=1.0).set_index("lam")
    row = out.loc[1.25]
    assert row["pairs"] == 3 and row["wins"] == 2 and row["ties"] == 1 and row["losses"] == 0
    assert row["diff_mean"] == pytest.approx(0.02)
    # t interval: mean 0.02, sd 0.02, n 3 -> half-width t_{0.975,2} * 0.02 / sqrt(3), t = 4.302653
    half = 4.302653 * 0.02 / math.sqrt(3)
    assert row["ci_low"] == pytest.approx(0.02 - half, abs=1e-6)
    assert row["ci_high"] == pytest.approx(0.02 + half, abs=1e-6)
    # a single pair has no interval
    one = out.loc[1.5]
    assert one["pairs"] == 1 and math.isnan(one["ci_low"]) and one["diff_mean"] == pytest.approx(-0.10)
    assert format_interval(row).startswith("+2.0 [")


def test_failed_points_and_missing_seeds_are_not_paired():
    df = _results()
    df.loc[4, "status"] = "failed"  # lam 1.25, seed 1
    row = paired_differences(df, arm="lam", baseline=1.0).set_index("lam").loc[1.25]
    assert row["pairs"] == 2 and row["diff_mean"] == pytest.approx(0.01)


def test_duplicate_seeds_in_an_arm_are_refused():
    df = pd.concat([_results(), _results().assign(reference="other")])
    with pytest.raises(ValueError, match="same seed"):
        paired_differences(df, arm="lam", baseline=1.0)
    out = paired_differences(df.fillna({"reference": "student"}), arm="lam", baseline=1.0, by=["reference"])
    assert set(out.reference) == {"student", "other"}


# ----------------------------------------------------------------------------- prompts × seeds, Holm, TOST, McNemar
def test_prompt_seed_bootstrap_matches_the_exact_bootstrap_distribution_of_a_two_by_two_case():
    """D = [[1, 0], [0, 0]]: a draw's mean is w₀·v₀/4 with w₀, v₀ ~ Binomial(2, ½) independent, so it is 0 with
    probability 7/16, 1/4 and 1/2 with 1/4 each, and 1 with 1/16: the 95 % percentile interval is [0, 1] and the
    two-sided p is 2·P(D* ≤ 0) = 7/8."""
    from gopd_lab.experiments.paired import prompt_seed_bootstrap

    arm = np.array([[1.0, 0.0], [0.0, 0.0]])
    out = prompt_seed_bootstrap(arm, np.zeros((2, 2)), n_boot=20000, seed=1)
    assert out["diff_mean"] == pytest.approx(0.25)
    assert (out["ci_low"], out["ci_high"]) == (0.0, 1.0)
    assert out["p"] == pytest.approx(7 / 8, abs=0.02)
    assert (out["seeds"], out["prompts"]) == (2, 2)


def test_prompt_seed_bootstrap_against_a_fixed_model_and_degenerate_cases():
    from gopd_lab.experiments.paired import prompt_seed_bootstrap

    rng = np.random.default_rng(0)
    students = (rng.random((3, 50)) < 0.8).astype(float)  # (seeds, prompts)
    teacher = (rng.random(50) < 0.7).astype(float)  # (prompts,), scored once
    a = prompt_seed_bootstrap(students, teacher, seed=3)
    b = prompt_seed_bootstrap(students, np.tile(teacher, (3, 1)), seed=3)
    assert a == b, "a fixed model is the same baseline in every seed"
    assert a["diff_mean"] == pytest.approx(students.mean() - teacher.mean())
    same = prompt_seed_bootstrap(np.full((2, 4), 0.5), np.full(4, 0.25), n_boot=99)
    assert (same["ci_low"], same["ci_high"], same["p"]) == (0.25, 0.25, 0.02)  # 2·(0 + 1)/(99 + 1)
    one_seed = prompt_seed_bootstrap(students[:1], teacher, seed=3)
    assert one_seed["seeds"] == 1 and one_seed["ci_low"] < one_seed["diff_mean"] < one_seed["ci_high"]
    with pytest.raises(ValueError, match="baseline must be"):
        prompt_seed_bootstrap(students, teacher[:10])


def test_mcnemar_hand_computed():
    """25 prompts only the arm gets right, 31 only the baseline: p = 2·P(Binomial(56, ½) ≤ 25) = 0.5044."""
    from math import comb

    from gopd_lab.experiments.paired import mcnemar

    arm = [1] * 25 + [0] * 31 + [1] * 10 + [0] * 4
    base = [0] * 25 + [1] * 31 + [1] * 10 + [0] * 4
    out = mcnemar(arm, base)
    assert (out["b"], out["c"]) == (25, 31)
    assert out["p"] == pytest.approx(2 * sum(comb(56, k) for k in range(26)) / 2**56)
    assert out["p"] == pytest.approx(0.5044, abs=1e-4)
    assert mcnemar([1, 0], [1, 0])["p"] == 1.0


def test_holm_hand_computed():
    """p = (0.01, 0.04, 0.03, 0.005): sorted 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 → 0.06 (monotone)."""
    from gopd_lab.experiments.paired import holm

    out = holm([0.01, 0.04, 0.03, 0.005])
    assert out == pytest.approx([0.03, 0.06, 0.06, 0.02])
    with_nan = holm([0.02, float("nan"), 0.6])  # NaN is not part of the family: m = 2
    assert with_nan[0] == pytest.approx(0.04) and math.isnan(with_nan[1]) and with_nan[2] == pytest.approx(0.6)
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_tost_and_paired_t_hand_computed():
    """d = (0.004, −0.002, 0.001, 0.001): mean 0.001, sd √(18e-6/3), se = sd/2 = 0.0012247; margin 0.01 gives
    t = (0.001 − 0.01)/se = −7.348 and (0.001 + 0.01)/se = 8.981 on 3 degrees of freedom."""
    from scipy import stats

    from gopd_lab.experiments.paired import paired_t_p, tost_p

    d = [0.004, -0.002, 0.001, 0.001]
    se = math.sqrt(18e-6 / 3) / 2
    expect = max(stats.t.cdf((0.001 - 0.01) / se, 3), stats.t.sf((0.001 + 0.01) / se, 3))
    assert tost_p(d, 0.01) == pytest.approx(expect) and tost_p(d, 0.01) < 0.01
    assert tost_p(d, 0.001) == pytest.approx(0.5)  # the mean sits on the margin: not shown equivalent
    assert paired_t_p(d) == pytest.approx(2 * stats.t.sf(0.001 / se, 3))
    assert math.isnan(paired_t_p([0.1])) and paired_t_p([0.0, 0.0]) == 1.0


def test_prompt_seed_interval_hand_computed_and_never_narrower_than_the_seeds_alone():
    """D = [[1, 0], [0, 0]]: seed means (½, 0) and prompt means (½, 0) each have variance ⅛, so SE² = ⅛/2 + ⅛/2 = ⅛;
    one degree of freedom: half-width t_{0.975,1}·√⅛ = 12.7062·0.35355 and p = 1 − 2·atan(0.25/√⅛)/π."""
    from scipy import stats

    from gopd_lab.experiments.paired import prompt_seed_interval

    out = prompt_seed_interval(np.array([[1.0, 0.0], [0.0, 0.0]]), np.zeros(2))
    se = math.sqrt(1 / 8)
    assert out["diff_mean"] == pytest.approx(0.25) and out["se"] == pytest.approx(se) and out["df"] == 1
    assert out["ci_high"] - out["diff_mean"] == pytest.approx(12.7062 * se, rel=1e-4)
    assert out["p"] == pytest.approx(1 - 2 * math.atan(0.25 / se) / math.pi)
    rng = np.random.default_rng(0)
    students = (rng.random((4, 300)) < 0.85).astype(float)
    teacher = (rng.random(300) < 0.8).astype(float)
    both = prompt_seed_interval(students, teacher)
    seeds_only = stats.ttest_1samp(students.mean(axis=1) - teacher.mean(), 0.0).confidence_interval(0.95)
    assert both["ci_high"] - both["ci_low"] >= seeds_only.high - seeds_only.low
    one = prompt_seed_interval(students[:1], teacher)  # one seed: the prompts' term alone, P − 1 degrees of freedom
    assert one["df"] == 299 and one["ci_low"] < one["diff_mean"] < one["ci_high"]
    flat = prompt_seed_interval(np.full((2, 3), 0.5), np.full(3, 0.25))
    assert (flat["ci_low"], flat["ci_high"], flat["p"]) == (0.25, 0.25, 0.0)
