"""Method recipes on the step API: ``ctx.sample(batch, policy=...)``, ``ctx.score(rollout, lam=...)``,
``ctx.update(scored, objective)``; a method writes its own step (there is no flag-dispatch route), λ follows
``lam_schedule`` and is applied when the batch is scored, and the λ rule's state between batches is an object the
G-OPD recipe owns (``LamState``)."""

import json
from pathlib import Path

import pytest
import torch

from gopd_lab.config import ConfigError, RunConfig
from gopd_lab.lm.rollout import encode_prompts
from gopd_lab.loop.collect import Collector
from gopd_lab.loop.load import load_models
from gopd_lab.loop.schedules import lam_at
from gopd_lab.loop.step import Batch, StepContext
from gopd_lab.loop.train import row_seed, train
from gopd_lab.methods import GOPD, GRPO, METHODS, LamState, Method, get_method, register_method
from gopd_lab.scorers.score import score_rollout

PROMPTS = ["12+7=", "3*4=", "9+9=", "100-1=", "7*7="]


def _metrics(out_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]


def _cfg(tiny_dirs, tmp_path, **kw) -> RunConfig:
    base = dict(student=tiny_dirs["student"], teacher=tiny_dirs["teacher"], device="cpu", dtype="float32")
    base.update(batch_size=3, max_new_tokens=5, lr=1e-2, steps=3, log_samples=0, prompts=PROMPTS)
    return RunConfig(**{**base, **kw, "out_dir": str(tmp_path / "run")})


def test_a_method_that_writes_no_step_is_a_clear_error(tiny_dirs, tmp_path):
    @register_method
    class NoStep(Method):
        name = "test-no-step"

    try:
        with pytest.raises(NotImplementedError, match="writes no step.*docs/extending.md"):
            train(_cfg(tiny_dirs, tmp_path, method="test-no-step"), progress=False)
    finally:
        METHODS.pop("test-no-step")


def test_the_flag_dispatch_route_is_gone():
    from gopd_lab.loop import collect, step

    assert not hasattr(step.StepContext, "rollout") and not hasattr(step.StepContext, "collect_scores")
    assert not hasattr(collect.Collector, "rollout") and not hasattr(collect.Collector, "score")
    assert not hasattr(Method, "update_rule")


def _context(tiny_dirs, tmp_path, **kw):
    cfg = _cfg(tiny_dirs, tmp_path, row_seeded_sampling=True, **kw)
    models = load_models(cfg)
    prompts = encode_prompts(models.tokenizer, PROMPTS)
    collector = Collector(cfg, models, {}, prompts, torch.Generator().manual_seed(0), tmp_path)
    student = models.student
    optimizer = torch.optim.SGD(student.parameters(), lr=0.0)
    from gopd_lab.scale.distributed import Distributed

    return StepContext(cfg, collector, student, optimizer, Distributed(cfg), tmp_path), models


def test_a_mixed_batch_has_each_row_from_the_model_that_sampled_it(tiny_dirs, tmp_path):
    """Row-seeded sampling makes a row's draw its own: a mixed batch's teacher rows are the all-teacher batch's, its
    student rows the all-student batch's (the merge re-pads prompts and completions correctly)."""
    ctx, _ = _context(tiny_dirs, tmp_path)
    index = [0, 1, 2, 3, 4]
    batch = Batch(0, index, [row_seed(0, 0, i, 0) for i in range(len(index))])
    student, teacher = ctx.sample(batch), ctx.sample(batch, policy="teacher")
    assert student.completions != teacher.completions
    mixed = ctx.sample(batch, policy=0.5)
    draw = torch.rand(len(index), generator=torch.Generator().manual_seed(104_729)) < 0.5
    assert 0 < int(draw.sum()) < len(index)
    for row, by_teacher in enumerate(draw.tolist()):
        want = teacher if by_teacher else student
        assert mixed.completions[row] == want.completions[row] and mixed.prompts[row] == want.prompts[row]
        ids = mixed.input_ids[row][mixed.attention_mask[row].bool()]
        assert ids.tolist() == want.input_ids[row][want.attention_mask[row].bool()].tolist()
    assert set(ctx.times) == {"start", "rollout"}
    with pytest.raises(ConfigError, match="policy must be one of"):
        ctx.sample(batch, policy="reference")


def test_score_applies_lam_before_the_full_target_is_formed(tiny_dirs, tmp_path):
    ctx, models = _context(tiny_dirs, tmp_path, estimator="full", lam=1.5)
    rollout = ctx.sample(Batch(0, [0, 1, 2], None))
    scored = ctx.score(rollout, lam=2.0)
    want = score_rollout(models, rollout, 2.0, estimator="full")
    assert scored.lam.tolist() == [2.0, 2.0, 2.0]

    def dense(t):
        return t.dense() if hasattr(t, "dense") else t

    torch.testing.assert_close(dense(scored.target), dense(want.target))
    assert not torch.allclose(dense(scored.target), dense(ctx.score(rollout).target))  # the config's λ = 1.5
    ctx_opd, _ = _context(tiny_dirs, tmp_path / "opd", estimator="full")
    with pytest.raises(ConfigError, match="needs the reference"):
        ctx_opd.score(rollout, lam=2.0)  # λ = 1 everywhere in the config: no reference was loaded


def test_lam_schedule_ramps_lam_step_by_step(tiny_dirs, tmp_path):
    assert [lam_at(k, 2.0, schedule="linear", start=1.0, warmup=2) for k in range(4)] == [1.0, 1.5, 2.0, 2.0]
    assert lam_at(1, {"add": 3.0}, schedule="linear", start=1.0, warmup=2) == {"add": 2.0}
    cfg = _cfg(tiny_dirs, tmp_path, lam=2.0, lam_schedule="linear", lam_start=1.0, lam_warmup_steps=2, steps=3)
    train(cfg, progress=False)
    assert [r["lam_mean"] for r in _metrics(cfg.out_dir)] == [1.0, 1.5, 2.0]
    with pytest.raises(ConfigError, match="lam_warmup_steps >= 1"):
        cfg.replace(lam_warmup_steps=0)
    with pytest.raises(ConfigError, match="lam_mode='fixed'"):
        cfg.replace(lam=1.0, lam_mode="reopd")


def test_a_recipe_of_its_own_reads_like_the_built_in_one(tiny_dirs, tmp_path):
    """A user's recipe written with the public step API gives G-OPD's numbers exactly."""

    @register_method
    class MyOPD(GOPD):
        name = "test-my-opd"

        def step(self, ctx, batch):
            rollout = ctx.sample(batch, policy="student")
            scored = ctx.score(rollout, lam=ctx.lam())
            return ctx.update(scored, self.objective(scored, ctx.cfg, ctx.dist, ctx.state))

    try:
        built_in = _cfg(tiny_dirs, tmp_path / "a", lam=1.25)
        train(built_in, progress=False)
        mine = _cfg(tiny_dirs, tmp_path / "b", lam=1.25, method="test-my-opd")
        train(mine, progress=False)
        strip = [{k: v for k, v in r.items() if not k.startswith("time_")} for r in _metrics(built_in.out_dir)]
        assert strip == [{k: v for k, v in r.items() if not k.startswith("time_")} for r in _metrics(mine.out_dir)]
    finally:
        METHODS.pop("test-my-opd")


def test_a_recipe_without_ctx_sample_does_not_fail_with_keyerror_rollout(tiny_dirs, tmp_path):
    """Regression: a recipe that built its batch without ``ctx.sample`` (so no ``rollout`` time mark) made train()
    fail with ``KeyError: 'rollout'``; its stage times now count toward the next stage."""

    @register_method
    class OwnBatch(GOPD):
        name = "test-own-batch"

        def step(self, ctx, batch):
            rollout = ctx.collector.sample(batch.index, batch.row_seeds)  # no ctx.sample: no rollout mark
            ctx.times.clear()
            scored = ctx.score(rollout)
            return ctx.update(scored, self.objective(scored, ctx.cfg, ctx.dist, ctx.state))

    try:
        history = train(_cfg(tiny_dirs, tmp_path, method="test-own-batch", steps=2), progress=False)
        assert len(history) == 2 and (history["time_rollout"] == 0).all()
    finally:
        METHODS.pop("test-own-batch")


def test_batch_objective_does_not_pass_the_completion_mask_as_lp_student(tiny_dirs, tmp_path):
    """Regression: ``BatchObjective`` handed the completion mask to ``advantages(scored, lp_student, cfg)`` where the
    docs promise the student's log-probs; a batch-level A_t now gets None (it is formed before any forward)."""
    seen = []

    @register_method
    class Spy(GRPO):
        name = "test-spy"

        def advantages(self, scored, lp_student, cfg):
            seen.append(lp_student)
            return super().advantages(scored, lp_student, cfg)

    try:
        train(
            _cfg(tiny_dirs, tmp_path, method="test-spy", tasks="add", prompts="", steps=1, samples_per_prompt=2),
            progress=False,
        )
        assert seen == [None]
    finally:
        METHODS.pop("test-spy")


def test_the_reopd_budget_is_the_recipes_state():
    gopd = get_method("gopd")
    cfg = RunConfig(student="s", teacher="t", lam_mode="reopd")
    assert gopd.new_state(cfg, []) == LamState(reopd_gamma=None)
    assert gopd.new_state(cfg, [{"reopd_gamma_b": 0.2}, {"reopd_gamma_b": 0.4}]).reopd_gamma == 0.4
    assert gopd.new_state(cfg.replace(lam_mode="fixed"), [{"reopd_gamma_b": 0.4}]).reopd_gamma is None
    assert get_method("grpo").new_state(cfg, []) is None
