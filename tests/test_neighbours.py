"""SDPO, CHORD and the baselines on the same loop (issue: the neighbours)."""

import json
import math

import pytest
import torch

from gopd_lab import RunConfig, train
from gopd_lab.config import ConfigError
from gopd_lab.errors import RunDirError
from gopd_lab.lm.logprobs import student_forward, token_logprobs
from gopd_lab.lm.rollout import encode_prompts, sample
from gopd_lab.loop.load import load_models
from gopd_lab.loop.schedules import mu_at
from gopd_lab.loop.update import expert_sft_loss, update
from gopd_lab.objectives import chord_phi, group_advantages, sampled_loss, sft_loss
from gopd_lab.scorers.score import Scored
from gopd_lab.scorers.self_teacher import build_self_teacher_view, ema_update, feedback_texts, teacher_prompt
from gopd_lab.tasks import load_tasks

# ------------------------------------------------------------------ CHORD


def test_mu_schedule_values_at_chosen_steps():
    kw = dict(peak=0.5, schedule="warmup_cosine", valley=0.1, warmup=4, total=13)
    assert mu_at(0, **kw) == pytest.approx(0.1 + 0.4 * 1 / 4)
    assert mu_at(3, **kw) == pytest.approx(0.5)  # end of warm-up: the peak
    assert mu_at(4, **kw) == pytest.approx(0.5)  # cosine starts at the peak
    assert mu_at(8, **kw) == pytest.approx(0.3)  # half way down: (peak + valley) / 2
    assert mu_at(12, **kw) == pytest.approx(0.1)  # last step: the valley
    assert mu_at(7, peak=0.2) == 0.2  # constant
    with pytest.raises(ValueError):
        mu_at(0, peak=0.2, schedule="step")


def test_phi_equals_p_times_one_minus_p_and_carries_no_gradient():
    lp = torch.log(torch.tensor([0.5, 0.9, 0.01])).requires_grad_()
    phi = chord_phi(lp)
    assert torch.allclose(phi, torch.tensor([0.25, 0.09, 0.0099]))
    assert not phi.requires_grad
    sft_loss(lp, torch.ones(3), phi)[0].backward()
    assert torch.allclose(lp.grad, -phi / 3)  # d/dlp of -mean(φ·lp) is -φ/N: φ itself is constant


@pytest.fixture(scope="module")
def grpo_batch(tiny_dirs):
    cfg = RunConfig(
        method="chord", student=tiny_dirs["student"], tasks="add", samples_per_prompt=2, mu=0.5, device="cpu"
    )
    models = load_models(cfg)
    tok = models.tokenizer
    prompts = encode_prompts(tok, ["12+3=", "12+3=", "7+8=", "7+8="], ["add"] * 4)
    rollout = sample(
        models.student,
        prompts,
        max_new_tokens=4,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tokenizer=tok,
        generator=torch.Generator().manual_seed(0),
    )
    expert_prompts = encode_prompts(tok, ["1+1=", "2+5="], ["add"] * 2)
    expert_prompts.answers = ["2", "7"]
    from gopd_lab.lm.rollout import teacher_forced

    expert = teacher_forced(expert_prompts, tok, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    scored = Scored(rollout=rollout, lam=torch.ones(4), rewards=torch.tensor([1.0, 0.0, 0.0, 0.0]), expert=expert)
    return models.student, scored


@pytest.mark.parametrize("mu", [0.0, 1.0])
def test_mu_zero_is_grpo_and_mu_one_is_phi_weighted_sft(grpo_batch, mu):
    student, scored = grpo_batch
    cfg = RunConfig(method="grpo", samples_per_prompt=2, mu=mu)
    result = update(student, torch.optim.SGD(student.parameters(), lr=0.0), scored, cfg)
    out = student_forward(student, scored.rollout)
    adv = group_advantages(scored.rewards, 2)[:, None] * scored.rollout.completion_mask
    grpo, _ = sampled_loss(out.lp, adv, scored.rollout.completion_mask.float())  # on-policy: −mean A_t
    sft, _ = expert_sft_loss(student, scored.expert, cfg)
    target = grpo if mu == 0 else sft
    assert result.metrics["loss"] == pytest.approx(target.item(), abs=1e-6)
    assert result.metrics.get("mu", 0.0) == mu
    # the φ-weighted SFT value by hand
    lp = token_logprobs(student, scored.expert)
    mask = scored.expert.completion_mask.float()
    p = lp.exp()
    assert sft.item() == pytest.approx(float(-(p * (1 - p) * lp * mask).sum() / mask.sum()), abs=1e-6)


# ------------------------------------------------------------------ SDPO


class _Cfg:
    samples_per_prompt = 2
    sdpo_feedback = "both"
    sdpo_template = "{feedback} {solution}\n{prompt}"
    sdpo_no_feedback = "mask"


def _rollout_with(tok, prompts, completions):
    from gopd_lab.lm.rollout import teacher_forced

    p = encode_prompts(tok, prompts, ["add"] * len(prompts))
    return teacher_forced(p, tok, completions, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)


def test_self_teacher_prompt_is_built_exactly_as_configured():
    from gopd_lab.world.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer()
    tasks = load_tasks(["add"])
    ex = tasks["add"].train[0]
    right, wrong = ex.answer, str(int(ex.answer) + 1)
    rollout = _rollout_with(tok, [ex.prompt, ex.prompt, ex.prompt, ex.prompt], [right, wrong, wrong, wrong])
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.0])
    feedback, solution = feedback_texts(rollout, rewards, tasks, 2, "both")
    assert feedback == [
        None,
        f"expected {right}, got {wrong}",
        f"expected {right}, got {wrong}",
        f"expected {right}, got {wrong}",
    ]
    assert solution == [None, right, None, None]  # only the group-mate of the right sample has a solution
    assert (
        teacher_prompt(_Cfg.sdpo_template, ex.prompt, feedback[1], solution[1])
        == f"expected {right}, got {wrong} {right}\n{ex.prompt}"
    )
    student_view, teacher_view, extra = build_self_teacher_view(rollout, rewards, tasks, _Cfg, tok, tok.pad_token_id)
    assert teacher_view.prompts[0] == ex.prompt  # no feedback: plain prompt, and masked out of the update
    assert student_view.completion_mask[0].sum() == 0 and student_view.completion_mask[1:].sum() > 0
    assert teacher_view.prompts[2] == f"expected {right}, got {wrong} \n{ex.prompt}"
    assert extra["sdpo_feedback_frac"] == 0.75
    assert torch.equal(teacher_view.completion_ids, rollout.completion_ids)


def test_empty_feedback_template_makes_the_self_teacher_the_student(tiny_dirs, tmp_path):
    cfg = RunConfig(
        method="sdpo",
        student=tiny_dirs["student"],
        tasks="add",
        sdpo_template="{prompt}",
        sdpo_teacher="live",
        sdpo_no_feedback="plain",
        steps=1,
        batch_size=4,
        samples_per_prompt=2,
        max_new_tokens=4,
        eval_limit=2,
        eval_k=0,
        log_samples=8,
        out_dir=str(tmp_path / "sdpo"),
    )
    train(cfg, progress=False)
    records = [json.loads(line) for line in (tmp_path / "sdpo" / "samples.jsonl").read_text().splitlines()]
    for r in records:
        assert r["lp_teacher"] == pytest.approx(r["lp_student"], abs=1e-5)
        assert all(abs(a) < 1e-5 for a in r["advantage"])


def test_ema_teacher_weights_follow_the_configured_rate():
    student, teacher = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    t0 = [p.detach().clone() for p in teacher.parameters()]
    ema_update(teacher, student, 0.9)
    for t, t_old, s in zip(teacher.parameters(), t0, student.parameters()):
        assert torch.allclose(t, 0.9 * t_old + 0.1 * s)


def test_ema_sdpo_run_moves_the_teacher_by_the_rate(tiny_dirs, tmp_path):
    cfg = RunConfig(
        method="sdpo",
        student=tiny_dirs["student"],
        tasks="add",
        sdpo_teacher="ema",
        sdpo_ema_rate=0.5,
        steps=1,
        batch_size=4,
        samples_per_prompt=2,
        max_new_tokens=4,
        lr=1e-2,
        eval_limit=2,
        eval_k=0,
        out_dir=str(tmp_path / "ema"),
    )
    models = load_models(cfg)
    before = [p.detach().clone() for p in models.student.parameters()]
    train(cfg, models=models, progress=False)
    teacher = models.teacher_for("add")
    for t, b, s in zip(teacher.parameters(), before, models.student.parameters()):
        assert torch.allclose(t, 0.5 * b + 0.5 * s.detach(), atol=1e-6)


# ------------------------------------------------------------------ every method end to end


@pytest.mark.parametrize(
    "method,extra",
    [
        ("gopd", {"lam": 1.25}),
        ("gopd", {"estimator": "jsd", "jsd_beta": 0.5}),
        ("gopd", {"mu": 0.3}),  # OPD + expert data
        ("sdpo", {"lam": 1.5}),  # λ-extrapolated SDPO
        ("sdpo", {"estimator": "full", "sdpo_teacher": "initial"}),
        ("sdpo", {"estimator": "topk", "topk": 4}),
        ("chord", {"mu": 0.5, "mu_schedule": "warmup_cosine", "mu_warmup_steps": 1}),
        ("grpo", {}),
        ("offpolicy", {}),
        ("sft", {}),
    ],
)
def test_each_method_runs_and_writes_the_standard_files(method, extra, tiny_dirs, tmp_path):
    cfg = RunConfig(
        method=method,
        student=tiny_dirs["student"],
        teacher=tiny_dirs["teacher"],
        tasks="add,mul",
        steps=2,
        batch_size=4,
        samples_per_prompt=2,
        max_new_tokens=4,
        eval_limit=3,
        eval_k=1,
        out_dir=str(tmp_path / method),
        **extra,
    )
    history = train(cfg, progress=False)
    assert list(history.step) == [1, 2] and history.loss.map(math.isfinite).all()
    for name in ("config.json", "metrics.jsonl", "eval.jsonl", "samples.jsonl", "summary.json"):
        assert (tmp_path / method / name).exists(), name
    if method == "sdpo":
        assert history.sdpo_feedback_frac.between(0, 1).all()
    if cfg.mu > 0:
        assert "mu" in history and history.mu.between(0, cfg.mu).all()
    if method == "offpolicy":
        rows = (tmp_path / method / "teacher_samples.jsonl").read_text().splitlines()
        assert len(rows) == 8000  # the teacher answered every training prompt once


def test_chord_without_mu_is_refused():
    with pytest.raises(ConfigError, match="mu > 0"):
        RunConfig(method="chord", mu=0.0)


def test_offpolicy_regenerates_teacher_samples_left_by_another_run(tiny_dirs, tmp_path):
    """Regression: a fresh off-policy run reused a stale teacher_samples.jsonl from its out_dir."""
    out = tmp_path / "off"
    out.mkdir()
    (out / "teacher_samples.jsonl").write_text('{"prompt": "1+1=", "domain": "add", "answer": "stale"}\n')
    cfg = RunConfig(
        method="offpolicy",
        student=tiny_dirs["student"],
        teacher=tiny_dirs["teacher"],
        tasks="add",
        steps=1,
        batch_size=2,
        max_new_tokens=3,
        eval_limit=2,
        eval_k=0,
        out_dir=str(out),
    )
    with pytest.raises(RunDirError, match="teacher_samples.jsonl"):  # another run's file: refused, not mixed in
        train(cfg, progress=False)
    train(cfg.replace(overwrite=True), progress=False)
    rows = (out / "teacher_samples.jsonl").read_text().splitlines()
    assert len(rows) == 4000 and "stale" not in rows[0]


def test_expert_data_file_feeds_the_sft_term_and_a_bad_row_is_one_clear_error(tiny_dirs, tmp_path):
    good = tmp_path / "expert.jsonl"
    good.write_text('{"prompt": "1+1=", "answer": "2", "domain": "add"}\n{"prompt": "2+2=", "answer": "4"}\n')
    cfg = RunConfig(
        method="gopd",
        student=tiny_dirs["student"],
        teacher=tiny_dirs["teacher"],
        tasks="add",
        mu=0.5,
        expert_data=str(good),
        steps=1,
        batch_size=2,
        max_new_tokens=3,
        eval_limit=2,
        eval_k=0,
        out_dir=str(tmp_path / "run"),
    )
    assert train(cfg, progress=False).mu.iloc[0] == 0.5
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "1+1="}\n')
    with pytest.raises(ConfigError, match=r"bad.jsonl:1 has no \['answer'\] field"):
        train(cfg.replace(expert_data=str(bad), out_dir=str(tmp_path / "bad")), progress=False)
