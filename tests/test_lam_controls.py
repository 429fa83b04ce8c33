"""The λ experiment's falsifying controls (sweeps/v2/lam_controls*.yaml): reference = teacher is plain OPD bit for bit,
the constant-advantage method gives every token A_t = −lam, and every run writes its per-prompt outcomes."""

import json

import pandas as pd
import pytest
import torch

from gopd_lab import RunConfig, train
from gopd_lab.config import ConfigError
from gopd_lab.methods import get_method
from gopd_lab.tasks.arith import use_world


@pytest.fixture
def world_v2(monkeypatch):
    monkeypatch.setenv("GOPD_LAB_WORLD", use_world("v2"))


def _cfg(tmp_path, name, **kw):
    base = dict(
        student="zoo:student-base",
        teacher="zoo:teacher-add",
        tasks="add",
        steps=3,
        batch_size=16,
        lr=1e-4,
        max_new_tokens=6,
        eval_k=2,
        eval_limit=40,
        eval_seed=7,
        device="cpu",
        dtype="float32",
        mixed_precision=False,
        out_dir=str(tmp_path / name),
    )
    return RunConfig(**(base | kw))


def _metrics(run):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time_")} for r in rows]


def _weights(run):
    from safetensors.torch import load_file

    return load_file(run / "model" / "model.safetensors")


@pytest.mark.slow
def test_reference_teacher_is_plain_opd_bit_for_bit(tmp_path, world_v2):
    """λ = 1 never reads the reference; at λ = 2 with reference = teacher, λ·(log π_T − log π_R) is exactly 0 and
    A_t = log π_T − log π_θ again: both runs are OPD, metric for metric and weight for weight."""
    torch.set_num_threads(1)
    train(_cfg(tmp_path, "opd", lam=1.0), progress=False)
    for name, lam in (("ref1", 1.0), ("ref2", 2.0)):
        train(_cfg(tmp_path, name, lam=lam, reference="zoo:teacher-add"), progress=False)
        rows = _metrics(tmp_path / name)
        assert all(r.pop("reward_mean", 0.0) == 0.0 for r in rows), "the teacher's reward over itself is exactly 0"
        assert rows == [r | {"lam_mean": lam, "lam_min": lam, "lam_max": lam} for r in _metrics(tmp_path / "opd")]
        a, b = _weights(tmp_path / "opd"), _weights(tmp_path / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert (tmp_path / name / "outcomes.csv").read_text() == (tmp_path / "opd" / "outcomes.csv").read_text()


@pytest.mark.slow
def test_constant_advantage_gives_every_token_minus_lam_and_writes_outcomes(tmp_path, world_v2):
    torch.set_num_threads(1)
    train(_cfg(tmp_path, "const", method="constant", lam=0.25, steps=2), progress=False)
    rows = _metrics(tmp_path / "const")
    assert all(r["adv_mean"] == pytest.approx(-0.25) and r["adv_std"] == pytest.approx(0.0, abs=1e-7) for r in rows)
    assert all(r["lam_mean"] == pytest.approx(0.25) for r in rows)
    assert all("reverse_kl" in r for r in rows), "the teacher still scores the rollout (logged, not used)"
    outcomes = pd.read_csv(tmp_path / "const" / "outcomes.csv")
    assert list(outcomes.columns) == ["step", "domain", "prompt", "greedy", "s0", "s1"]
    assert len(outcomes) == 40 and set(outcomes.step) == {2}
    final = [json.loads(line) for line in (tmp_path / "const" / "eval.jsonl").read_text().splitlines()][-1]
    assert outcomes.greedy.mean() == pytest.approx(final["greedy_acc"])
    assert outcomes[["s0", "s1"]].to_numpy().mean() == pytest.approx(final["mean_acc"])


def test_constant_advantage_refuses_other_estimators_and_lam_modes(tmp_path):
    assert get_method("constant").name == "constant"
    with pytest.raises(ConfigError, match="estimator='sampled'"):
        _cfg(tmp_path, "x", method="constant", estimator="full")
    with pytest.raises(ConfigError, match="lam_mode='fixed'"):
        _cfg(tmp_path, "x", method="constant", lam_mode="reopd")
