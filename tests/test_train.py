"""The training loop end to end on tiny checkpoints: run files, estimators, resume, routing, the reference."""

import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from gopd_lab.config import ConfigError, RunConfig
from gopd_lab.lm.logprobs import token_logprobs
from gopd_lab.lm.models import Models, load_tokenizer
from gopd_lab.lm.rollout import Rollout, encode_prompts, left_pad, load_prompts, sample
from gopd_lab.loop.load import load_models
from gopd_lab.loop.train import train
from gopd_lab.scorers.score import score_rollout

PROMPTS = ["12+7=", "3*4=", "9+9=", "100-1=", "7*7="]
METRIC_KEYS = {
    "loss",
    "adv_mean",
    "adv_std",
    "lp_teacher_mean",
    "reverse_kl",
    "entropy",
    "grad_norm",
    "clip_frac",
    "tokens",
    "time_rollout",
    "time_score",
    "time_update",
    "time_step",
}
PER_TOKEN = ("tokens", "lp_student", "lp_teacher", "lp_reference", "advantage")


def _cfg(tiny_dirs, tmp_path, name="run", **kw):
    base = dict(
        student=tiny_dirs["student"],
        teacher=tiny_dirs["teacher"],
        device="cpu",
        dtype="float32",
        prompts=list(PROMPTS),
        batch_size=3,
        max_new_tokens=6,
        lr=1e-2,
        out_dir=str(tmp_path / name),
        log_samples=0,
    )
    base.update(kw)
    return RunConfig(**base)


def _jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def _row_rollout(tok, prompt: str, token_strs: list[str], domain: str = "default") -> Rollout:
    """One sample rebuilt from a samples.jsonl record (char tokenizer: each token string is a vocab entry)."""
    ids = tok.convert_tokens_to_ids(token_strs)
    assert tok.unk_token_id not in ids or "<unk>" in token_strs
    prompt_ids, prompt_mask = left_pad([tok(prompt)["input_ids"]], tok.pad_token_id)
    comp = torch.tensor([ids])
    return Rollout(prompt_ids, prompt_mask, comp, torch.ones_like(comp), [prompt], [""], [domain])


def _load(path):
    return AutoModelForCausalLM.from_pretrained(path).eval()


# ------------------------------------------------------------------------------------ smoke run


def test_end_to_end_smoke_run_writes_every_file(tiny_dirs, tmp_path):
    cfg = _cfg(
        tiny_dirs,
        tmp_path,
        lam=1.25,
        estimator="sampled",
        steps=3,
        save_every=2,
        log_samples=2,
        log_samples_every=1,
        samples_per_prompt=2,
    )
    history = train(cfg, progress=False)
    out = Path(cfg.out_dir)

    assert isinstance(history, pd.DataFrame) and len(history) == 3
    assert history["step"].tolist() == [1, 2, 3]

    saved = json.loads((out / "config.json").read_text())
    assert saved["lam"] == 1.25 and saved["estimator"] == "sampled" and saved["steps"] == 3
    assert RunConfig.from_dict(saved) == cfg

    rows = _jsonl(out / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert METRIC_KEYS <= set(r), METRIC_KEYS - set(r)
        assert all(r[k] is not None for k in METRIC_KEYS)
        assert r["tokens"] > 0 and r["tokens"] <= cfg.batch_size * cfg.samples_per_prompt * cfg.max_new_tokens
        assert r["time_step"] >= r["time_update"] >= 0
        assert r["clip_frac"] == 0.0  # no clipping configured
    assert history["loss"].tolist() == pytest.approx([r["loss"] for r in rows])

    samples = _jsonl(out / "samples.jsonl")
    assert len(samples) == 3 * 2 and {s["step"] for s in samples} == {1, 2, 3}
    tok = load_tokenizer(tiny_dirs["student"])
    teacher = _load(tiny_dirs["teacher"])
    for s in samples:
        lengths = {k: len(s[k]) for k in PER_TOKEN}
        assert len(set(lengths.values())) == 1 and lengths["tokens"] > 0, lengths
        assert s["lam"] == 1.25
        # the logged advantage is G-OPD's, token by token (γ = 0)
        for a, ls, lt, lr in zip(s["advantage"], s["lp_student"], s["lp_teacher"], s["lp_reference"]):
            assert a == pytest.approx(1.25 * (lt - lr) - (ls - lr), abs=1e-4)
    # at step 1 the student has not moved yet, and the reference is the initial student
    for s in (s for s in samples if s["step"] == 1):
        assert s["lp_reference"] == pytest.approx(s["lp_student"], abs=1e-5)
        lp = token_logprobs(teacher, _row_rollout(tok, s["prompt"], s["tokens"]))[0]
        assert lp.tolist() == pytest.approx(s["lp_teacher"], abs=1e-5)

    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["final"]["step"] == 3

    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["step_000002", "step_000003"]
    for c in ckpts:
        assert (out / "checkpoints" / c / "state.json").exists()

    final = _load(out / "model")
    initial = _load(tiny_dirs["student"])
    moved = any(not torch.equal(a, b) for a, b in zip(final.state_dict().values(), initial.state_dict().values()))
    assert moved
    ro = _row_rollout(tok, "1+1=", list("23"))
    assert torch.isfinite(token_logprobs(final, ro)).all()
    assert len(list(out.glob("**/*.tmp"))) == 0  # nothing half-written


@pytest.mark.parametrize("estimator", ["sampled", "full", "topk", "jsd"])
def test_each_estimator_runs(tiny_dirs, tmp_path, estimator):
    extra = {"topk": 8} if estimator == "topk" else {}
    cfg = _cfg(tiny_dirs, tmp_path, lam=1.0, estimator=estimator, steps=2, **extra)
    history = train(cfg, progress=False)
    assert len(history) == 2
    assert history["loss"].notna().all() and history["grad_norm"].gt(0).all()
    if estimator != "sampled":
        assert history["loss"].ge(-1e-6).all()  # all three are divergences


def test_full_and_topk_run_off_lam_1(tiny_dirs, tmp_path):
    for est in ("full", "topk"):
        history = train(_cfg(tiny_dirs, tmp_path, name=est, lam=1.25, estimator=est, steps=2, topk=4), progress=False)
        assert history["loss"].notna().all() and "reward_mean" in history


# --------------------------------------------------------------------------------------- resume


def test_resume_equals_an_uninterrupted_run(tiny_dirs, tmp_path):
    common = dict(lam=1.25, steps=8, save_every=4, log_samples=1, log_samples_every=2)
    straight = _cfg(tiny_dirs, tmp_path, name="straight", **common)
    train(straight, progress=False)

    first = _cfg(tiny_dirs, tmp_path, name="resumed", **{**common, "steps": 4})
    train(first, progress=False)
    assert len(_jsonl(Path(first.out_dir) / "metrics.jsonl")) == 4
    train(first.replace(steps=8, resume=True), progress=False)

    a, b = _load(Path(straight.out_dir) / "model"), _load(Path(first.out_dir) / "model")
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x, y, atol=1e-6), name
    initial = _load(tiny_dirs["student"])
    assert any(not torch.allclose(x, y) for x, y in zip(a.state_dict().values(), initial.state_dict().values()))

    rows_a = _jsonl(Path(straight.out_dir) / "metrics.jsonl")
    rows_b = _jsonl(Path(first.out_dir) / "metrics.jsonl")
    assert [r["step"] for r in rows_b] == list(range(1, 9))
    assert [r["loss"] for r in rows_b] == pytest.approx([r["loss"] for r in rows_a], abs=1e-6)
    assert [r["tokens"] for r in rows_b] == [r["tokens"] for r in rows_a]
    samples_a = _jsonl(Path(straight.out_dir) / "samples.jsonl")
    samples_b = _jsonl(Path(first.out_dir) / "samples.jsonl")
    assert [(s["step"], s["completion"]) for s in samples_b] == [(s["step"], s["completion"]) for s in samples_a]


# ------------------------------------------------------------------------------- multi-teacher


@pytest.fixture()
def domain_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [
        {"prompt": "12+7=", "domain": "a"},
        {"prompt": "3*4=", "domain": "b"},
        {"prompt": "9+9=", "domain": "a"},
        {"prompt": "6*7=", "domain": "b"},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_multi_teacher_routes_each_sample_to_its_domain_teacher(tiny_dirs, tmp_path, domain_file):
    teachers = {"a": tiny_dirs["teacher"], "b": tiny_dirs["reference"]}
    cfg = _cfg(
        tiny_dirs,
        tmp_path,
        teacher=teachers,
        prompts=domain_file,
        lam=1.0,
        batch_size=4,
        steps=2,
        log_samples=4,
        log_samples_every=1,
    )
    models = load_models(cfg)
    assert models.teacher_for("a") is not models.teacher_for("b")

    # directly: score_rollout on a mixed batch
    prompts = load_prompts(domain_file, models.tokenizer)
    ro = sample(
        models.student,
        prompts,
        max_new_tokens=5,
        generator=torch.Generator().manual_seed(0),
        eos_token_id=models.eos_token_id,
        pad_token_id=models.pad_token_id,
    )
    scored = score_rollout(models, ro, 1.0)
    disk = {d: _load(p) for d, p in teachers.items()}
    for i, domain in enumerate(ro.domains):
        own = token_logprobs(disk[domain], ro.select([i]))[0]
        other = token_logprobs(disk["b" if domain == "a" else "a"], ro.select([i]))[0]
        assert torch.allclose(scored.lp_teacher[i], own, atol=1e-5), (i, domain)
        assert (scored.lp_teacher[i] - other).abs().max() > 1e-3  # the two teachers really differ
    assert scored.lp_reference is None

    # through the loop: every logged sample carries its own domain's teacher log-probs
    train(cfg, progress=False)
    samples = _jsonl(Path(cfg.out_dir) / "samples.jsonl")
    assert {s["domain"] for s in samples} == {"a", "b"}
    tok = models.tokenizer
    for s in samples:
        lp = token_logprobs(disk[s["domain"]], _row_rollout(tok, s["prompt"], s["tokens"], s["domain"]))[0]
        assert lp.tolist() == pytest.approx(s["lp_teacher"], abs=1e-5)


def test_per_domain_lam(tiny_dirs, tmp_path, domain_file):
    lam = {"a": 1.0, "b": 1.5}
    cfg = _cfg(
        tiny_dirs,
        tmp_path,
        teacher={"a": tiny_dirs["teacher"], "b": tiny_dirs["teacher"]},
        prompts=domain_file,
        lam=lam,
        batch_size=4,
        steps=2,
        log_samples=4,
        log_samples_every=1,
    )
    history = train(cfg, progress=False)
    assert len(history) == 2
    samples = _jsonl(Path(cfg.out_dir) / "samples.jsonl")
    assert {s["domain"] for s in samples} == {"a", "b"}
    for s in samples:
        lam_d = lam[s["domain"]]
        assert s["lam"] == lam_d
        for a, ls, lt, lr in zip(s["advantage"], s["lp_student"], s["lp_teacher"], s["lp_reference"]):
            if lam_d == 1:  # the reference cancels and is not run for this domain
                assert lr is None and a == pytest.approx(lt - ls, abs=1e-4)
            else:
                assert a == pytest.approx(lam_d * (lt - lr) - (ls - lr), abs=1e-4)
    # and directly: the per-sample λ reaches the scorer
    models = load_models(cfg)
    prompts = load_prompts(domain_file, models.tokenizer)
    ro = sample(models.student, prompts, max_new_tokens=3, greedy=True, pad_token_id=models.pad_token_id)
    scored = score_rollout(models, ro, {d: cfg.lam_for(d) for d in set(prompts.domains)})
    assert scored.lam.tolist() == [lam[d] for d in ro.domains]


def test_missing_domain_teacher_is_a_config_error(tiny_dirs, tmp_path, domain_file):
    cfg = _cfg(tiny_dirs, tmp_path, teacher={"a": tiny_dirs["teacher"]}, prompts=domain_file, steps=1)
    with pytest.raises(ConfigError, match="'b'"):
        train(cfg, progress=False)


# --------------------------------------------------------------------- reference: correction / λ=1


def test_reward_correction_reference_is_scored_with_that_model(tiny_dirs, tmp_path):
    cfg = _cfg(
        tiny_dirs, tmp_path, lam=1.25, reference=tiny_dirs["reference"], steps=2, log_samples=3, log_samples_every=1
    )
    models = load_models(cfg)
    ref = models.reference_for("default")
    assert ref is not models.student and ref is not models.teacher_for("default")
    prompts = encode_prompts(models.tokenizer, PROMPTS)
    ro = sample(
        models.student,
        prompts,
        max_new_tokens=5,
        generator=torch.Generator().manual_seed(1),
        pad_token_id=models.pad_token_id,
    )
    scored = score_rollout(models, ro, 1.25)
    disk = _load(tiny_dirs["reference"])
    assert torch.allclose(scored.lp_reference, token_logprobs(disk, ro), atol=1e-5)
    assert (scored.lp_reference - token_logprobs(models.student, ro)).abs().max() > 1e-3
    assert (scored.lp_reference - scored.lp_teacher).abs().max() > 1e-3

    history = train(cfg, models=models, progress=False)
    assert len(history) == 2 and history["loss"].notna().all()
    for s in _jsonl(Path(cfg.out_dir) / "samples.jsonl"):
        lp = token_logprobs(disk, _row_rollout(models.tokenizer, s["prompt"], s["tokens"]))[0]
        assert lp.tolist() == pytest.approx(s["lp_reference"], abs=1e-5)


class _CountCalls:
    """Counts forward calls of a model and of each of its submodules (scoring may run the decoder alone)."""

    def __init__(self, model: nn.Module):
        self.calls = 0
        for m in model.modules():
            m.register_forward_pre_hook(self._hit)

    def _hit(self, *_):
        self.calls += 1


def test_lam_1_never_runs_the_reference(tiny_dirs, tmp_path):
    cfg = _cfg(tiny_dirs, tmp_path, lam=1.0, steps=2, log_samples=2, log_samples_every=1)
    loaded = load_models(cfg)
    assert loaded.references == {}
    reference = _load(tiny_dirs["reference"])
    counter = _CountCalls(reference)
    models = Models(
        student=loaded.student, tokenizer=loaded.tokenizer, teachers=loaded.teachers, references={"default": reference}
    )

    ro = sample(models.student, encode_prompts(models.tokenizer, PROMPTS), max_new_tokens=4, greedy=True)
    for est in ("sampled", "full", "topk"):
        scored = score_rollout(models, ro, 1.0, estimator=est, topk=4)
        assert scored.lp_reference is None and scored.lp_reference_topk is None
    assert counter.calls == 0

    train(cfg, models=models, progress=False)
    assert counter.calls == 0
    for s in _jsonl(Path(cfg.out_dir) / "samples.jsonl"):
        assert s["lp_reference"] is None
        assert s["advantage"] == pytest.approx([t - st for t, st in zip(s["lp_teacher"], s["lp_student"])], abs=1e-5)

    # the counter works: off λ = 1 the same reference is run
    score_rollout(models, ro, 1.25)
    assert counter.calls > 0


# ---------------------------------------------------------------------------------- bad prompts


def test_prompt_file_without_prompt_field_raises(tiny_dirs, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"question": "1+1=", "domain": "a"}) + "\n")
    with pytest.raises(ConfigError, match="prompt"):
        train(_cfg(tiny_dirs, tmp_path, prompts=str(path), steps=1), progress=False)


@pytest.mark.parametrize("prompts", [[], "", "EMPTY_FILE"])
def test_empty_prompts_raise(tiny_dirs, tmp_path, prompts):
    if prompts == "EMPTY_FILE":
        path = tmp_path / "empty.jsonl"
        path.write_text("\n")
        prompts = str(path)
    with pytest.raises(ConfigError):
        train(_cfg(tiny_dirs, tmp_path, prompts=prompts, steps=1), progress=False)


# ------------------------------------------------------------------ regressions


def test_lam_1_domain_needs_no_reference(tiny_dirs, tmp_path, domain_file):
    """Regression: a domain at λ = 1 was routed to a reference (and failed without one)."""
    cfg = _cfg(
        tiny_dirs,
        tmp_path,
        teacher={"a": tiny_dirs["teacher"], "b": tiny_dirs["teacher"]},
        reference={"b": tiny_dirs["reference"]},
        lam={"a": 1.0, "b": 1.5},
        prompts=domain_file,
        batch_size=4,
        steps=1,
        log_samples=4,
    )
    history = train(cfg, progress=False)
    assert len(history) == 1
    records = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    for r in records:
        assert all(v is None for v in r["lp_reference"]) == (r["domain"] == "a")
    assert all(math.isfinite(x) for r in records for x in r["advantage"])


def test_clip_frac_reports_batch_reuse(tiny_dirs, tmp_path):
    """Regression: clip_frac and approx_kl_old came from the first epoch, where ρ = 1, so were always 0."""
    cfg = _cfg(tiny_dirs, tmp_path, lam=1.25, steps=1, epochs_per_batch=4, clip_eps=0.01, lr=0.1, max_grad_norm=None)
    row = train(cfg, progress=False).iloc[0]
    assert row["clip_frac"] > 0 and row["approx_kl_old"] != 0


def test_log_samples_every_0_logs_only_the_first_and_last_step(tiny_dirs, tmp_path):
    cfg = _cfg(tiny_dirs, tmp_path, steps=3, log_samples=2, log_samples_every=0)
    train(cfg, progress=False)
    steps = sorted({r["step"] for r in _jsonl(Path(cfg.out_dir) / "samples.jsonl")})
    assert steps == [1, 3]
