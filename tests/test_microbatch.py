"""Micro-batching, gradient checkpointing and mixed precision leave the update's step unchanged (issue 14)."""

import copy

import pytest
import torch

from gopd_lab.config import RunConfig
from gopd_lab.lm.models import Models, freeze
from gopd_lab.lm.rollout import encode_prompts, sample, teacher_forced
from gopd_lab.loop.update import enable_gradient_checkpointing, micro_batches, update
from gopd_lab.scorers.score import Scored, score_rollout
from gopd_lab.world.tiny import tiny_model
from gopd_lab.world.tokenizer import build_char_tokenizer

PROMPTS = ["12+7=", "x", "hello, 3*4=", "ab", "9-2=", "7"]


@pytest.fixture(scope="module")
def world():
    tok = build_char_tokenizer()
    student = tiny_model(seed=0, tokenizer=tok)
    teacher = freeze(tiny_model(seed=1, tokenizer=tok, hidden=48))  # frozen heads: `full` keeps a lazy target
    reference = freeze(tiny_model(seed=2, tokenizer=tok))
    prompts = encode_prompts(tok, PROMPTS, ["add"] * len(PROMPTS))
    rollout = sample(
        student,
        prompts,
        max_new_tokens=6,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        generator=torch.Generator().manual_seed(3),
    )
    assert len(set(rollout.completion_mask.sum(1).tolist())) > 1  # rows of different lengths
    expert_prompts = encode_prompts(tok, ["1+1=", "2+5=", "3+3="], ["add"] * 3)
    expert = teacher_forced(
        expert_prompts, tok, ["2", "7", "6"], pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id
    )
    models = Models(student, tok, {"default": teacher}, {"default": reference})
    return models, rollout, expert


def _scored(world, method: str, estimator: str) -> Scored:
    models, rollout, expert = world
    lam = 1.0 if estimator == "jsd" else 1.25
    if method == "gopd":
        return score_rollout(models, rollout, lam, estimator=estimator, topk=4)
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    from gopd_lab.lm.logprobs import token_logprobs

    lp_ref = token_logprobs(models.references["default"], rollout)
    scored = Scored(rollout=rollout, lam=torch.ones(len(rollout)), lp_reference=lp_ref, rewards=rewards)
    if method == "chord":
        scored.expert = expert
    return scored


CASES = [
    ("gopd", "sampled", {}),
    ("gopd", "sampled", {"epochs_per_batch": 2, "clip_eps": 0.2}),
    ("gopd", "full", {}),
    ("gopd", "full", {"lazy": True}),  # the target formed chunk by chunk in the update (forced at this size)
    ("gopd", "topk", {}),
    ("gopd", "jsd", {"jsd_beta": 0.5}),
    ("sft", "sampled", {}),
    ("grpo", "sampled", {"samples_per_prompt": 2, "kl_coef": 0.1}),
    ("chord", "sampled", {"samples_per_prompt": 2, "mu": 0.3}),
    ("gopd", "sampled", {"loss_agg": "seq-mean-token-mean"}),
    ("gopd", "full", {"loss_agg": "seq-mean-token-mean"}),
    ("chord", "sampled", {"samples_per_prompt": 2, "mu": 0.3, "loss_agg": "seq-mean-token-mean"}),
]


def _step(world, method, estimator, kw, micro: int, checkpointing: bool = False):
    models, _, _ = world
    student = copy.deepcopy(models.student)
    if checkpointing:
        enable_gradient_checkpointing(student)
    optimizer = torch.optim.SGD(student.parameters(), lr=1.0)  # weight change = the (clipped) gradient itself
    s = RunConfig(method=method, estimator=estimator, micro_batch_size=micro, **kw)
    result = update(student, optimizer, _scored(world, method, estimator), s)
    return student, result


@pytest.mark.parametrize("method,estimator,kw", CASES)
def test_micro_batches_and_checkpointing_leave_the_step_unchanged(world, method, estimator, kw, monkeypatch):
    from gopd_lab.scorers.score import LazyTarget

    kw = dict(kw)
    lazy = kw.pop("lazy", False)
    if lazy:
        monkeypatch.setattr("gopd_lab.scorers.score.LAZY_TARGET_BYTES", 0)
    assert isinstance(_scored(world, method, estimator).target, LazyTarget) == lazy
    whole, r0 = _step(world, method, estimator, kw, micro=0)
    moved = max(float((p - q).detach().abs().max()) for p, q in zip(whole.parameters(), world[0].student.parameters()))
    assert moved > 1e-3  # the step did something
    for micro, ckpt in ((1, False), (4, False), (2, True)):  # 4 rows: uneven split of 6 rows
        student, r = _step(world, method, estimator, kw, micro=micro, checkpointing=ckpt)
        for (name, p), q in zip(student.named_parameters(), whole.parameters()):
            assert torch.allclose(p, q, atol=1e-5, rtol=0), (micro, ckpt, name, float((p - q).abs().max()))
        for key in ("loss", "grad_norm", "entropy", "adv_mean", "lp_student_mean"):
            assert r.metrics[key] == pytest.approx(r0.metrics[key], rel=1e-5, abs=1e-6), key
        extra = set(r0.metrics) - {"loss", "grad_norm"}
        for key in extra:
            assert r.metrics[key] == pytest.approx(r0.metrics[key], rel=1e-4, abs=1e-6), key
        assert torch.allclose(r.lp_student, r0.lp_student, atol=1e-5)
        assert torch.allclose(r.advantages, r0.advantages, atol=1e-5)


def test_the_lazy_full_target_equals_the_dense_one(world, monkeypatch):
    monkeypatch.setattr("gopd_lab.scorers.score.LAZY_TARGET_BYTES", 0)
    from gopd_lab.lm.logprobs import full_logprobs
    from gopd_lab.objectives import target_logprobs
    from gopd_lab.scorers.score import LazyTarget

    models, rollout, _ = world
    lazy = score_rollout(models, rollout, 1.25, estimator="full").target
    assert isinstance(lazy, LazyTarget) and lazy.shape == (int(rollout.completion_mask.sum()), len(models.tokenizer))
    teacher = full_logprobs(models.teachers["default"], rollout)
    reference = full_logprobs(models.references["default"], rollout)
    dense = target_logprobs(teacher, reference, 1.25)  # (N, V)
    assert torch.allclose(lazy.dense(), dense, atol=1e-6)
    assert torch.allclose(lazy[3:9].rows(1, 4), dense[4:7], atol=1e-6)


def test_micro_batches_cover_every_row_once():
    assert micro_batches(6, 4) == [(0, 4), (4, 6)]
    assert micro_batches(6, 0) == [(0, 6)]
    assert micro_batches(3, 8) == [(0, 3)]


def test_gradient_checkpointing_is_refused_for_a_model_without_it():
    from gopd_lab.config import ConfigError

    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        enable_gradient_checkpointing(torch.nn.Linear(2, 2))


def test_train_runs_with_micro_batches_checkpointing_and_bf16_autocast(tiny_dirs, tmp_path):
    """The config path end to end: micro_batch_size, gradient_checkpointing and dtype=bfloat16 (autocast on CPU)."""
    import json

    from gopd_lab import RunConfig, train

    cfg = RunConfig(
        student=tiny_dirs["student"],
        teacher=tiny_dirs["teacher"],
        lam=1.25,
        estimator="full",
        prompts=["1+1=", "2+2=", "12+7=", "3*3="],
        batch_size=4,
        steps=2,
        max_new_tokens=4,
        micro_batch_size=3,
        gradient_checkpointing=True,
        dtype="bfloat16",
        device="cpu",
        out_dir=str(tmp_path / "run"),
    )
    history = train(cfg, progress=False)
    assert len(history) == 2 and history["loss"].notna().all() and (history["tokens"] > 0).all()
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["micro_batch_size"] == 3 and saved["gradient_checkpointing"] and saved["mixed_precision"]


LINEAGE_KNOBS = dict(
    reopd_tau=0.5, reopd_gamma_max=1.0, reopd_target=0.25, reopd_ema=0.0, agopd_rho=0.25, agopd_lam_max=1.5
)


@pytest.mark.parametrize(
    "lam_mode, epochs",
    [("fixed", 1), ("reopd", 1), ("agopd", 1), ("entropy", 1), ("gated", 1), ("reopd", 2), ("agopd", 2)],
)
def test_micro_batches_leave_every_lam_mode_unchanged(world, lam_mode, epochs):
    """λ rules that read the whole batch (REOPD's budget, A-G-OPD's RMS ratio, the reward gate) see the whole
    batch under micro-batching too, and the entropy split's forward-KL states follow their rows; with two epochs
    over the batch (PPO-style, clipped) as well. Every metric, ``loss`` and ``grad_norm`` included, is unchanged."""
    models, rollout, _ = world
    lam = 1.0 if lam_mode in ("reopd", "agopd") else 1.25
    threshold = None
    if lam_mode == "entropy":  # the median state entropy of this (near-uniform) random teacher: states on each side
        ent = score_rollout(models, rollout, lam, entropy_threshold=float("inf")).teacher_entropy
        threshold = float(ent[rollout.completion_mask.bool()].median())
    scored = score_rollout(models, rollout, lam, always_reference=True, entropy_threshold=threshold)
    scored.rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0])
    if lam_mode == "entropy":
        assert 0 < len(scored.fkl_index) < int(rollout.completion_mask.sum())  # some states on each side
    knobs = dict(LINEAGE_KNOBS, entropy_threshold=threshold or 0.0)

    def step(micro):
        student = copy.deepcopy(models.student)
        optimizer = torch.optim.SGD(student.parameters(), lr=1.0)
        s = RunConfig(
            method="gopd",
            estimator="sampled",
            micro_batch_size=micro,
            lam_mode=lam_mode,
            tasks="add" if lam_mode == "gated" else "",
            **knobs,
            epochs_per_batch=epochs,
            clip_eps=0.2 if epochs > 1 else None,
        )
        return student, update(student, optimizer, scored, s)

    whole, r0 = step(0)
    for micro in (1, 4):
        student, r = step(micro)
        for (name, p), q in zip(student.named_parameters(), whole.parameters()):
            assert torch.allclose(p, q, atol=1e-5, rtol=0), (lam_mode, micro, name, float((p - q).abs().max()))
        assert {"loss", "grad_norm"} <= set(r0.metrics)
        for key in r0.metrics:
            assert r.metrics[key] == pytest.approx(r0.metrics[key], rel=1e-4, abs=1e-6), (lam_mode, key)
        assert torch.equal(r.loss_kind, r0.loss_kind) and torch.allclose(r.lam_t, r0.lam_t, atol=1e-6)
