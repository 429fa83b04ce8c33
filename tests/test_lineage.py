"""The G-OPD lineage (λ per token / per batch): each rule against hand-computed values, then the wiring."""

import json
import math
from pathlib import Path

import pytest
import torch

from gopd_lab.config import ConfigError, RunConfig
from gopd_lab.lm.rollout import Rollout
from gopd_lab.loop.train import train
from gopd_lab.methods import LamState, lineage_signal
from gopd_lab.objectives import (
    agopd_lambda,
    entropy_split,
    forward_kl,
    gopd_advantages,
    jsd_loss,
    reopd_budget,
    reopd_lambda,
    reward_gate,
)
from gopd_lab.objectives.lineage import LOSS_KINDS
from gopd_lab.scorers.score import Scored

# ------------------------------------------------------------------------------------ REOPD

# x = lp_T − lp_S = 0, 0.1, −0.1 → δ = e^x − x − 1 = 0, 0.005170918, 0.004837418;
# q = exp(−δ / 0.007) = 1, 0.4777333, 0.5010448 (worked out from the formula, 7 digits).
Q_HAND = [1.0, 0.4777333, 0.5010448]


def test_reopd_lambda_matches_hand_values_and_is_one_off_mask():
    lp_s = torch.tensor([[-1.0, -1.0, -1.0, -1.0]])
    lp_t = torch.tensor([[-1.0, -0.9, -1.1, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    lam = reopd_lambda(lp_t, lp_s, gamma=0.5, tau=0.007, mask=mask)
    want = torch.tensor([[1 + 0.5 * q for q in Q_HAND] + [1.0]])
    assert torch.allclose(lam, want, atol=1e-6)
    assert torch.equal(reopd_lambda(lp_t, lp_s, gamma=0.0, tau=0.007, mask=mask), torch.ones(1, 4))
    with pytest.raises(ValueError, match="tau"):
        reopd_lambda(lp_t, lp_s, gamma=0.5, tau=0.0)
    with pytest.raises(ValueError, match="gamma"):
        reopd_lambda(lp_t, lp_s, gamma=-1.0, tau=0.007)


def test_reopd_budget_aims_the_mean_extrapolation_clips_and_smooths():
    q = torch.tensor([[1.0, 0.0], [0.5, 9.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])  # valid q: 1, 0, 0.5 → mean 0.5
    assert reopd_budget(q, mask, target=0.25, gamma_max=1.0, ema=0.9, previous=None) == (0.5, 0.5)
    gamma, raw = reopd_budget(q, mask, target=0.25, gamma_max=1.0, ema=0.9, previous=1.0)
    assert raw == 0.5 and gamma == pytest.approx(0.9 * 1.0 + 0.1 * 0.5)
    assert reopd_budget(q, mask, target=1.0, gamma_max=1.0, ema=0.0, previous=0.3) == (1.0, 1.0)  # 2 → clip
    assert reopd_budget(torch.zeros(2, 2), None, target=0.25, gamma_max=0.7, ema=0.0, previous=None)[1] == 0.7


def test_gopd_advantages_takes_a_per_token_lam():
    lp_s = torch.tensor([[-1.0, -2.0, -0.5]])
    lp_t = torch.tensor([[-0.5, -1.0, -0.25]])
    lp_r = torch.tensor([[float("nan"), -3.0, -1.0]])  # NaN where λ_t = 1: cancels, never read
    lam = torch.tensor([[1.0, 2.0, 1.5]])
    adv = gopd_advantages(lp_s, lp_t, lp_r, lam=lam, mask=torch.ones(1, 3))
    # token 0: −0.5 + 1 = 0.5; token 1: 2·(−1 + 3) − (−2 + 3) = 3; token 2: 1.5·0.75 − 0.5 = 0.625
    assert torch.allclose(adv, torch.tensor([[0.5, 3.0, 0.625]]))


# ------------------------------------------------------------------------------------ A-G-OPD


def test_agopd_lambda_matches_hand_values():
    lp_s = torch.tensor([[-1.3, -0.6, 0.0]])
    lp_t = torch.tensor([[-1.0, -1.0, 100.0]])
    lp_r = torch.tensor([[-1.6, -1.8, -100.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    # A_opd = (0.3, −0.4): RMS √0.125; A_extra = (0.6, 0.8): RMS √0.5; ratio 0.5 → λ = 1 + 0.25·0.5
    lam = agopd_lambda(lp_t, lp_s, lp_r, rho=0.25, lam_max=1.25, mask=mask)
    assert lam.ndim == 0 and float(lam) == pytest.approx(1.125, abs=1e-6)
    assert float(agopd_lambda(lp_t, lp_s, lp_r, rho=0.25, lam_max=1.1, mask=mask)) == pytest.approx(1.1)
    assert float(agopd_lambda(lp_t, lp_s, lp_t, rho=0.25, lam_max=1.25, mask=mask)) == 1.0  # A_extra = 0
    # at the first step the student is the reference: the ratio is 1, λ = min(1 + ρ, λ_max)
    assert float(agopd_lambda(lp_t, lp_r, lp_r, rho=0.25, lam_max=2.0, mask=mask)) == pytest.approx(1.25)


# ------------------------------------------------------------------------------------ entropy-aware OPD


def test_entropy_split_and_forward_kl_hand_values():
    ent = torch.tensor([[0.2, 0.5, 0.9, 3.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    assert entropy_split(ent, threshold=0.5, mask=mask).tolist() == [[False, False, True, False]]
    logp_t = torch.tensor([[0.5, 0.5]]).log()
    logp_s = torch.tensor([[0.25, 0.75]]).log().requires_grad_()
    kl = forward_kl(logp_t, logp_s)  # 0.5·ln 2 + 0.5·ln(2/3)
    assert float(kl.detach()) == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), abs=1e-6)
    kl.sum().backward()
    assert torch.allclose(logp_s.grad, torch.tensor([[-0.5, -0.5]]))  # ∂/∂ log π_θ = −π_T


# ------------------------------------------------------------------------------------ reward-gated OPD


def test_reward_gate_opens_only_where_teacher_and_verifier_agree():
    # per-sample preference Δ = Σ_t (lp_T − lp_S) over valid tokens
    lp_s = torch.zeros(6, 2)
    lp_t = torch.tensor([[0.5, 0.5], [0.5, 0.5], [-0.5, 0.0], [-0.5, 0.0], [0.0, 0.0], [1.0, 0.0]])
    mask = torch.ones(6, 2)
    mask[4, 1] = 0
    lp_t[4, 1] = 9.0  # masked: must not count
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, float("nan")])
    gate, pref = reward_gate(lp_t, lp_s, rewards, mask=mask)
    assert pref.tolist() == [1.0, 1.0, -0.5, -0.5, 0.0, 1.0]
    assert gate.tolist() == [True, False, True, False, False, False]


# ------------------------------------------------------------------------------------ wiring


def _scored(b=2, c=3, **kw) -> Scored:
    ids = torch.ones(b, c, dtype=torch.long)
    rollout = Rollout(ids[:, :1], torch.ones(b, 1), ids, torch.ones(b, c), ["p"] * b, ["x"] * b, ["default"] * b)
    gen = torch.Generator().manual_seed(0)
    base = dict(
        rollout=rollout,
        lam=torch.ones(b),
        lp_teacher=-torch.rand(b, c, generator=gen),
        lp_reference=-torch.rand(b, c, generator=gen),
    )
    base.update(kw)
    return Scored(**base)


def _settings(mode: str, **knobs) -> RunConfig:
    """A config with ``lam_mode`` and knobs set after validation (the rule's math alone, e.g. a fixed ``mode`` on
    a config without the method it would need)."""
    cfg = RunConfig(tasks="add")
    cfg.lam_mode = mode
    for name, value in knobs.items():
        setattr(cfg, name, value)
    return cfg


def test_lineage_signal_fixed_equals_plain_gopd_advantages():
    scored = _scored(lam=torch.tensor([1.25, 1.5]))
    lp_s = -torch.rand(2, 3)
    out = lineage_signal(scored, lp_s, _settings("fixed"))
    want = gopd_advantages(lp_s, scored.lp_teacher, scored.lp_reference, lam=scored.lam, mask=torch.ones(2, 3))
    assert torch.equal(out.advantages, want)
    assert out.lam_t.tolist() == [[1.25] * 3, [1.5] * 3] and out.metrics["lam_max"] == 1.5
    assert not out.kind.any()


def test_lineage_signal_reopd_steps_the_budget_once_per_batch():
    scored = _scored()
    lp_s = scored.lp_teacher.clone()  # full agreement: q = 1 everywhere → raw = target
    s = _settings("reopd", reopd_target=0.3, reopd_ema=0.5)
    state = LamState(reopd_gamma=1.0)
    out = lineage_signal(scored, lp_s, s, state=state)
    assert state.reopd_gamma == pytest.approx(0.65) and out.metrics["reopd_gamma_raw"] == pytest.approx(0.3)
    assert torch.allclose(out.lam_t, torch.full((2, 3), 1.65))


def test_lineage_signal_gated_and_entropy_mark_their_tokens():
    scored = _scored(rewards=torch.tensor([1.0, 1.0]), teacher_entropy=torch.tensor([[0.1, 2.0, 0.1], [0.1] * 3]))
    lp_s = scored.lp_teacher.clone()
    lp_s[0] -= 1.0  # sample 0: teacher prefers it (Δ = 3 > 0, correct) → open; sample 1: Δ = 0 → closed
    gated = lineage_signal(scored, lp_s, _settings("gated"))
    assert gated.metrics["gate_rate"] == 0.5
    assert gated.kind[1].tolist() == [LOSS_KINDS.index("gated")] * 3 and not gated.advantages[1].any()
    assert torch.allclose(gated.advantages[0], torch.ones(3))
    ent = lineage_signal(scored, lp_s, _settings("entropy", entropy_threshold=0.5))
    assert ent.kind.tolist() == [[0, 1, 0], [0, 0, 0]] and ent.advantages[0, 1] == 0
    assert ent.metrics["entropy_high_frac"] == pytest.approx(1 / 6)


# ------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(lam_mode="adaptive"), "lam_mode must be one of"),
        (dict(lam_mode="reopd", lam=1.25), "leave lam=1"),
        (dict(lam_mode="gated"), "needs a verifier"),
        (dict(lam_mode="entropy", estimator="full"), "estimator='sampled'"),
        (dict(lam_mode="entropy", gamma=1.0), "gamma=0"),
        (dict(lam_mode="agopd", agopd_lam_max=0.5), "agopd_lam_max"),
    ],
)
def test_config_refuses_bad_lineage_settings(kw, match):
    with pytest.raises(ConfigError, match=match):
        RunConfig(**kw)


# ------------------------------------------------------------------------------------ the loop


def _jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


@pytest.mark.parametrize(
    "mode, key",
    [("reopd", "reopd_gamma_b"), ("agopd", "lam_mean"), ("entropy", "entropy_high_frac"), ("gated", "gate_rate")],
)
def test_each_lam_mode_trains_and_logs_what_it_chose(tiny_dirs, tmp_path, mode, key):
    cfg = RunConfig(
        student=tiny_dirs["student"],
        teacher=tiny_dirs["teacher"],
        device="cpu",
        dtype="float32",
        tasks="add",
        batch_size=3,
        steps=2,
        max_new_tokens=4,
        lr=1e-2,
        lam_mode=mode,
        entropy_threshold=4.0,
        eval_limit=2,
        eval_k=0,
        log_samples=2,
        out_dir=str(tmp_path / mode),
    )
    train(cfg, progress=False)
    rows = _jsonl(tmp_path / mode / "metrics.jsonl")
    assert all(math.isfinite(r[key]) for r in rows) and all(math.isfinite(r["lam_mean"]) for r in rows)
    for rec in _jsonl(tmp_path / mode / "samples.jsonl"):
        assert len(rec["lam_t"]) == len(rec["loss_kind"]) == len(rec["tokens"])
        assert set(rec["loss_kind"]) <= set(LOSS_KINDS)
    if mode == "agopd":  # step 1: the student is its reference (initial weights), so λ = min(1 + ρ, λ_max) = 1.25
        assert rows[0]["lam_min"] == rows[0]["lam_max"] == pytest.approx(1.25, abs=1e-4)
    if mode == "entropy":
        assert len(_jsonl(tmp_path / mode / "samples.jsonl")[0]["teacher_entropy"]) > 0


def test_entropy_mode_loss_is_forward_kl_above_and_opd_below_the_threshold(tiny_dirs, tmp_path):
    """All states above the threshold: the loss is the mean forward KL (jsd β = 0); none: it is OPD's loss."""
    from gopd_lab.lm.logprobs import full_logprobs
    from gopd_lab.lm.rollout import encode_prompts, sample
    from gopd_lab.loop.load import load_models
    from gopd_lab.loop.update import update
    from gopd_lab.scorers.score import score_rollout

    cfg = RunConfig(student=tiny_dirs["student"], teacher=tiny_dirs["teacher"], device="cpu", dtype="float32")
    models = load_models(cfg)
    prompts = encode_prompts(models.tokenizer, ["12+7=", "3*4=", "9+9="], ["default"] * 3)
    rollout = sample(
        models.student,
        prompts,
        max_new_tokens=5,
        eos_token_id=models.eos_token_id,
        pad_token_id=models.pad_token_id,
        tokenizer=models.tokenizer,
        generator=torch.Generator().manual_seed(0),
    )
    mask = rollout.completion_mask.float()
    opt = torch.optim.SGD(models.student.parameters(), lr=0.0)
    losses = {}
    for name, threshold in (("all", -1.0), ("none", 1e9)):
        scored = score_rollout(models, rollout, 1.0, entropy_threshold=threshold)
        s = cfg.replace(lam_mode="entropy")
        s.entropy_threshold = threshold  # -1: every state is above it (a value validation refuses)
        losses[name] = update(models.student, opt, scored, s).metrics
    with torch.no_grad():
        want, _ = jsd_loss(
            full_logprobs(models.student, rollout),
            full_logprobs(models.teacher_for("default"), rollout),
            torch.ones(int(mask.sum())),
            beta=0.0,
        )
    assert losses["all"]["entropy_high_frac"] == 1.0 and losses["none"]["entropy_high_frac"] == 0.0
    assert losses["all"]["loss"] == pytest.approx(float(want), rel=1e-5)
    fixed = update(models.student, opt, score_rollout(models, rollout, 1.0), cfg)
    assert losses["none"]["loss"] == pytest.approx(fixed.metrics["loss"], rel=1e-6)


# ------------------------------------------------------------------------------------ token view, explorer


def _record(**kw):
    rec = {
        "tokens": ["1", "2", "<eos>"],
        "lp_student": [-0.1, -0.2, -0.3],
        "lp_teacher": [-0.2, -0.1, -0.3],
        "lp_reference": [-0.3, -0.3, -0.3],
        "advantage": [0.1, 0.2, 0.0],
        "lam": 1.0,
        "lam_t": [1.0, 1.5, 1.25],
        "loss_kind": ["reverse", "forward", "gated"],
    }
    rec.update(kw)
    return rec


def test_token_view_shows_lam_around_one_and_which_loss_by_kind():
    from gopd_lab.viz.tokens import KIND_COLORS, available_quantities, token_values, token_view

    rec = _record()
    assert {"lam", "loss_kind"} <= set(available_quantities(rec))
    assert token_values(rec, "lam") == [1.0, 1.5, 1.25]
    assert token_values(rec, "loss_kind") == [0.0, 1.0, 2.0]
    lam_view = token_view(rec, "lam")
    assert lam_view.vmax == [0.5]  # centred on 1: max |λ_t − 1|
    assert "background-color:rgb(255, 255, 255)" in lam_view.html  # λ_t = 1 is white (OPD)
    kind_view = token_view(rec, "loss_kind").html
    for rgb in KIND_COLORS.values():
        assert "background-color:rgb({}, {}, {})".format(*rgb) in kind_view
    old = _record(lam=1.25)
    del old["lam_t"], old["loss_kind"]  # a record from a run before lam_mode: λ on every token, no kinds
    assert token_values(old, "lam") == [1.25] * 3
    assert not {"lam", "loss_kind"} & set(available_quantities(old))  # offered only where the run logged them


def test_explorer_plots_lam_t_beside_the_advantage():
    from gopd_lab.viz.widgets import TokenExplorer

    ex = TokenExplorer([_record()])
    assert list(ex.figure.data[1].y) == [1.0, 1.5, 1.25] and list(ex.figure.data[0].y) == ex.current_values()
    ex.set_quantity("loss_kind")
    assert ex.current_values() == [0.0, 1.0, 2.0]
    ex.set_quantity("lam")
    assert list(ex.figure.data[1].y) == []  # λ_t is then the bars themselves


def test_entropy_scoring_keeps_the_teacher_distribution_exactly_at_high_entropy_states(tiny_dirs, tmp_path):
    """Two domains with two teachers (two scoring groups): ``fkl_index`` / ``fkl_logp_teacher`` are the states
    above the threshold in Positions order, each with its own domain teacher's full log-distribution."""
    from gopd_lab.lm.logprobs import Positions, full_logprobs
    from gopd_lab.lm.rollout import load_prompts, sample
    from gopd_lab.loop.load import load_models
    from gopd_lab.scorers.score import score_rollout

    path = tmp_path / "prompts.jsonl"
    rows = [{"prompt": p, "domain": d} for p, d in (("12+7=", "a"), ("3*4=", "b"), ("9+9=", "a"), ("6*7=", "b"))]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    teachers = {"a": tiny_dirs["teacher"], "b": tiny_dirs["reference"]}
    cfg = RunConfig(student=tiny_dirs["student"], teacher=teachers, device="cpu", dtype="float32")
    models = load_models(cfg)
    prompts = load_prompts(str(path), models.tokenizer)
    rollout = sample(
        models.student,
        prompts,
        max_new_tokens=5,
        eos_token_id=models.eos_token_id,
        pad_token_id=models.pad_token_id,
        generator=torch.Generator().manual_seed(0),
    )
    pos = Positions.of(rollout)
    want = torch.zeros(len(pos), full_logprobs(models.student, rollout).shape[-1])
    for d in ("a", "b"):
        rows_d = torch.tensor([i for i, dom in enumerate(rollout.domains) if dom == d])
        in_d = torch.isin(pos.b, rows_d)
        want[in_d] = full_logprobs(models.teacher_for(d), rollout)[in_d]
    entropy = -(want.exp() * want).sum(-1)  # (N,)
    threshold = float(entropy.median())
    scored = score_rollout(models, rollout, 1.0, entropy_threshold=threshold)
    assert torch.allclose(scored.teacher_entropy[pos.b, pos.c], entropy, atol=1e-5)
    high = torch.nonzero(entropy > threshold).squeeze(-1)
    assert 0 < len(high) < len(pos) and torch.equal(scored.fkl_index, high)
    assert torch.allclose(scored.fkl_logp_teacher, want[high], atol=1e-5)


def test_reopd_budget_resumes_from_the_last_logged_value(tiny_dirs, tmp_path):
    common = dict(
        student=tiny_dirs["student"],
        teacher=tiny_dirs["teacher"],
        device="cpu",
        dtype="float32",
        prompts=["12+7=", "3*4=", "9+9=", "100-1=", "7*7="],
        batch_size=3,
        max_new_tokens=5,
        lr=1e-2,
        lam_mode="reopd",
        reopd_ema=0.5,
        log_samples=0,
        save_every=2,
    )
    straight = RunConfig(**common, steps=4, out_dir=str(tmp_path / "straight"))
    train(straight, progress=False)
    first = RunConfig(**common, steps=2, out_dir=str(tmp_path / "resumed"))
    train(first, progress=False)
    train(first.replace(steps=4, resume=True), progress=False)
    a = [r["reopd_gamma_b"] for r in _jsonl(tmp_path / "straight" / "metrics.jsonl")]
    b = [r["reopd_gamma_b"] for r in _jsonl(tmp_path / "resumed" / "metrics.jsonl")]
    assert b == pytest.approx(a, abs=1e-6) and len(set(a)) > 1
