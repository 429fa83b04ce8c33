"""Mixed precision: float32 master weights under bf16 autocast keep the small updates bf16 AdamW drops (issue 14)."""

import copy

import pytest
import torch

from gopd_lab import RunConfig
from gopd_lab.lm.models import Models, freeze
from gopd_lab.lm.rollout import encode_prompts, sample
from gopd_lab.loop.load import load_models
from gopd_lab.loop.update import update
from gopd_lab.scorers.score import score_rollout
from gopd_lab.world.tiny import tiny_model
from gopd_lab.world.tokenizer import build_char_tokenizer


@pytest.fixture(scope="module")
def world():
    tok = build_char_tokenizer()
    student = tiny_model(seed=0, tokenizer=tok)
    teacher = freeze(tiny_model(seed=1, tokenizer=tok))
    prompts = encode_prompts(tok, ["12+7=", "x", "ab", "9-2="])
    rollout = sample(
        student, prompts, max_new_tokens=5, pad_token_id=tok.pad_token_id, generator=torch.Generator().manual_seed(1)
    )
    return student, teacher, rollout


def _matrices(model):
    return {n: p.detach().float().clone() for n, p in model.named_parameters() if p.ndim == 2}


def _step(student, teacher, rollout, estimator, autocast_dtype, lr):
    scored = score_rollout(Models(student, None, {"default": teacher}), rollout, 1.0, estimator=estimator)
    before = _matrices(student)
    optimizer = torch.optim.AdamW(student.parameters(), lr=lr)
    result = update(student, optimizer, scored, RunConfig(estimator=estimator), autocast_dtype=autocast_dtype)
    after = _matrices(student)
    changed = sum(int((after[n] != before[n]).sum()) for n in before) / sum(v.numel() for v in before.values())
    return result, changed


@pytest.mark.parametrize("estimator", ["sampled", "full"])
def test_fp32_master_weights_keep_updates_that_bf16_adamw_drops(world, estimator):
    student, teacher, rollout = world
    naive, dropped = _step(copy.deepcopy(student).to(torch.bfloat16), teacher, rollout, estimator, None, lr=1e-6)
    assert dropped < 0.05  # bf16 AdamW: |Δw| ≈ 1e-6 is below half a bf16 ulp except for the entries nearest 0
    mixed, kept = _step(copy.deepcopy(student), teacher, rollout, estimator, torch.bfloat16, lr=1e-6)
    assert kept > 0.9  # the float32 master weights moved
    for result in (naive, mixed):
        assert result.lp_student.dtype == torch.float32 and result.advantages.dtype == torch.float32
        assert all(isinstance(v, (float, int)) for v in result.metrics.values())
        assert all(torch.isfinite(torch.tensor(float(v))) for v in result.metrics.values())


@pytest.mark.parametrize("estimator", ["sampled", "full"])
def test_the_autocast_step_is_close_to_the_float32_step(world, estimator):
    student, teacher, rollout = world
    deltas = {}
    for amp in (None, torch.bfloat16):
        s = copy.deepcopy(student)
        scored = score_rollout(Models(s, None, {"default": teacher}), rollout, 1.0, estimator=estimator)
        before = _matrices(s)
        update(s, torch.optim.SGD(s.parameters(), lr=1.0), scored, RunConfig(estimator=estimator), autocast_dtype=amp)
        after = _matrices(s)
        deltas[amp] = torch.cat([(after[n] - before[n]).flatten() for n in before])
    cos = torch.nn.functional.cosine_similarity(deltas[None], deltas[torch.bfloat16], dim=0)
    assert cos > 0.99  # bf16 matmuls, float32 reductions: the same gradient up to bf16 rounding
    assert not torch.equal(deltas[None], deltas[torch.bfloat16])  # autocast really ran in bf16


def test_load_models_keeps_a_float32_student_under_bf16_autocast(tiny_dirs):
    cfg = RunConfig(
        student=tiny_dirs["student"], teacher=tiny_dirs["teacher"], lam=1.25, device="cpu", dtype="bfloat16"
    )
    models = load_models(cfg)
    assert models.autocast_dtype == torch.bfloat16
    assert next(models.student.parameters()).dtype == torch.float32
    assert next(models.teacher_for("x").parameters()).dtype == torch.bfloat16
    assert next(models.reference_for("x").parameters()).dtype == torch.float32  # the student copy: its storage dtype
    naive = load_models(cfg.replace(mixed_precision=False))
    assert naive.autocast_dtype is None and next(naive.student.parameters()).dtype == torch.bfloat16


def test_float16_autocast_without_a_grad_scaler_is_refused():
    """fp16 autocast needs loss scaling (small gradients underflow); there is none, so the config refuses it."""
    from gopd_lab.config import ConfigError, RunConfig
    from gopd_lab.lm.precision import student_dtypes

    with pytest.raises(ConfigError, match="bfloat16.*mixed_precision=False"):
        RunConfig(dtype="float16")
    assert RunConfig(dtype="float16", mixed_precision=False).dtype == "float16"
    with pytest.raises(ConfigError, match="loss scaling"):
        student_dtypes(torch.float16, True)
    assert student_dtypes(torch.float16, False) == (torch.float16, None)
    assert student_dtypes(torch.bfloat16, True) == (torch.float32, torch.bfloat16)


def test_final_model_is_saved_in_the_run_dtype_under_mixed_precision(tiny_dirs, tmp_path):
    """The float32 master weights are for training: ``model/`` holds them in the run's dtype (bf16) and loads as
    such; the checkpoint keeps float32 (the optimizer's state refers to those)."""
    import json

    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from gopd_lab.loop.train import train

    out = tmp_path / "run"
    cfg = RunConfig(
        student=tiny_dirs["student"],
        teacher=tiny_dirs["teacher"],
        lam=1.25,
        device="cpu",
        dtype="bfloat16",
        prompts=["12+7=", "3*4="],
        batch_size=2,
        max_new_tokens=3,
        steps=1,
        lr=1e-2,
        log_samples=0,
        out_dir=str(out),
    )
    train(cfg, progress=False)
    with safe_open(str(out / "model" / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    assert json.loads((out / "model" / "config.json").read_text())["dtype"] == "bfloat16"
    (ckpt,) = (out / "checkpoints").iterdir()
    with safe_open(str(ckpt / "student.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float32}
        master = {k: f.get_tensor(k) for k in f.keys()}
    loaded = AutoModelForCausalLM.from_pretrained(out / "model")
    assert next(loaded.parameters()).dtype == torch.bfloat16
    for name, p in loaded.state_dict().items():
        tied = ("lm_head.weight", "model.embed_tokens.weight")  # stored once by whichever name
        key = name if name in master else next(k for k in tied if k in master)
        assert torch.equal(p, master[key].to(torch.bfloat16)), name


def test_reference_student_scores_like_the_student_at_step_0_under_bf16(tiny_dirs, tmp_path):
    """G-OPD's reward term ``lp_student − lp_reference`` is 0 at step 0 when the reference is the student: the copy
    keeps the student's float32 storage and the collector scores under the student's autocast. (Stored in bf16 and
    scored without autocast, as before: up to 1.6e-3 nats per token on this tiny model; now 4.8e-7.)"""
    from gopd_lab.loop.collect import Collector
    from gopd_lab.loop.update import _rollout_logprobs

    cfg = RunConfig(
        student=tiny_dirs["student"],
        teacher=tiny_dirs["teacher"],
        reference="student",
        lam=2.0,
        device="cpu",
        dtype="bfloat16",
    )
    models = load_models(cfg)
    assert next(models.reference_for("x").parameters()).dtype == torch.float32
    prompts = encode_prompts(models.tokenizer, ["12+7=", "ab", "x", "9-2="])
    collector = Collector(cfg, models, {}, prompts, torch.Generator().manual_seed(0), tmp_path)
    rollout = collector.sample([0, 1, 2, 3])
    scored = collector.teacher_scores(rollout, cfg.lam)
    lp_student = _rollout_logprobs(models.student, scored, [(0, len(rollout))], cfg, models.autocast_dtype)
    mask = rollout.completion_mask.bool()
    gap = (lp_student - scored.lp_reference)[mask].abs().max()
    assert gap < 1e-5, gap
    bf16_copy = copy.deepcopy(models.student).to(torch.bfloat16)  # the old reference: bf16 storage, no autocast
    from gopd_lab.lm.logprobs import token_logprobs

    old_gap = (lp_student - token_logprobs(bf16_copy, rollout))[mask].abs().max()
    assert old_gap > 1e-3, old_gap  # the bug this guards against: visible at bf16 resolution
