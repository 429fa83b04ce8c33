"""Paired differences over shared seeds, checked against hand-computed values."""

import math

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
