"""The vLLM backend on CPU against a stand-in ``vllm`` module: what :class:`VllmRollout` asks the engine for (one
seed per row, derived from the step; the stop ids the built-in loop uses; the allowed ids) and what it syncs
(every weight under its checkpoint name, after every update and on resume). The stand-in samples uniformly from
the allowed ids with each request's own seed, so it shows which seeds reach the engine, not vLLM's numerics
(``tests/test_gpu.py`` runs the real engine)."""

import sys
import types

import pytest
import torch

from gopd_lab.config import ConfigError, RunConfig
from gopd_lab.lm.rollout import encode_prompts
from gopd_lab.loop.train import row_seed, train


class _Model:
    def __init__(self):
        self.loads: list[dict[str, torch.Tensor]] = []

    def load_weights(self, weights):
        self.loads.append({name: t.detach().clone() for name, t in weights})


class _LLM:
    made: list["_LLM"] = []

    def __init__(self, **kw):
        self.kw, self.calls, self.model = kw, [], _Model()
        runner = types.SimpleNamespace(model=self.model)
        worker = types.SimpleNamespace(worker=types.SimpleNamespace(model_runner=runner))
        self.llm_engine = types.SimpleNamespace(model_executor=types.SimpleNamespace(driver_worker=worker))
        _LLM.made.append(self)

    def generate(self, prompts, params, use_tqdm=True):
        assert isinstance(params, list) and len(params) == len(prompts)  # one SamplingParams per row
        self.calls.append(params)
        outs = []
        for p in params:
            g = torch.Generator().manual_seed(p.seed)
            pool = torch.as_tensor(p.allowed_token_ids if p.allowed_token_ids is not None else range(64))
            ids = []
            for _ in range(p.max_tokens):
                ids.append(int(pool[torch.randint(len(pool), (1,), generator=g)]))
                if ids[-1] in (p.stop_token_ids or []):
                    break
            outs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=ids)]))
        return outs


@pytest.fixture
def fake_vllm(monkeypatch):
    """``import vllm`` finds the stand-in; the CUDA check passes on CPU (the only thing patched in the backend)."""
    from gopd_lab.scale import vllm_rollout

    mod = types.ModuleType("vllm")
    mod.__version__ = "stub"
    mod.LLM = _LLM
    mod.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setattr(vllm_rollout, "check_device", lambda device: None)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    _LLM.made.clear()
    return _LLM.made


def _cfg(tiny_dirs, out, **kw) -> RunConfig:
    base = dict(
        student=tiny_dirs["student"],
        teacher=tiny_dirs["teacher"],
        prompts=["12+7=", "3*4="],
        batch_size=2,
        samples_per_prompt=2,
        max_new_tokens=6,
        steps=2,
        lr=1e-2,
        log_samples=0,
        dtype="float32",
        rollout_backend="vllm",
        out_dir=str(out),
    )
    base.update(kw)
    return RunConfig(**base)


def test_vllm_rows_of_repeated_prompts_get_distinct_seeds_and_completions(tiny_dirs, tmp_path, fake_vllm):
    from gopd_lab.loop.load import load_models
    from gopd_lab.scale.vllm_rollout import VllmRollout

    cfg = _cfg(tiny_dirs, tmp_path)
    models = load_models(cfg)
    engine = VllmRollout(cfg, models)
    prompts = encode_prompts(models.tokenizer, ["12+7="] * 4)
    r = engine.sample(prompts, max_new_tokens=6, temperature=1.0, top_p=1.0, row_seeds=[11, 12, 13, 14])
    params = fake_vllm[0].calls[-1]
    assert [p.seed for p in params] == [11, 12, 13, 14]
    assert len({tuple(row.tolist()) for row in r.completion_ids}) > 1  # not one draw copied to every row
    stops = models.stop_token_ids
    assert stops and all(p.stop_token_ids == stops for p in params)
    assert all(not p.ignore_eos for p in params)


def test_vllm_seeds_follow_the_step_and_weights_sync_after_every_step_and_on_resume(tiny_dirs, tmp_path, fake_vllm):
    cfg = _cfg(tiny_dirs, tmp_path / "run", save_every=1)
    train(cfg, progress=False)
    (llm,) = fake_vllm
    seeds = [[p.seed for p in call] for call in llm.calls]
    want = [[row_seed(cfg.seed, step, pos, k) for pos in range(2) for k in range(2)] for step in range(2)]
    assert seeds == want  # one seed per row, from the step: no two rows or steps share one
    assert len({s for row in seeds for s in row}) == 4 * 2
    # the engine gets every weight under its Hugging Face name: at the start and after each of the 2 updates
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    assert len(llm.model.loads) == 3
    assert set(llm.model.loads[-1]) == set(saved.state_dict())
    for name, t in saved.state_dict().items():
        torch.testing.assert_close(llm.model.loads[-1][name], t)  # the last sync holds the trained weights
    assert not all(torch.equal(llm.model.loads[0][n], llm.model.loads[-1][n]) for n in llm.model.loads[0])

    # resume to step 3: the step-3 seeds are those of an uninterrupted run; the resumed weights are synced first
    train(cfg.replace(resume=True, steps=3), progress=False)
    resumed = fake_vllm[-1]
    assert [p.seed for p in resumed.calls[0]] == [row_seed(cfg.seed, 2, pos, k) for pos in range(2) for k in range(2)]
    assert len(resumed.model.loads) == 3  # construction, after loading the checkpoint, after step 3
    for name, t in llm.model.loads[-1].items():
        torch.testing.assert_close(resumed.model.loads[1][name], t)  # the checkpoint's weights, not the initial ones


def test_vllm_allowed_ids_exclude_rows_the_student_must_never_sample(tiny_dirs, tmp_path, fake_vllm):
    from gopd_lab.loop.load import load_models
    from gopd_lab.scale.vllm_rollout import VllmRollout

    cfg = _cfg(tiny_dirs, tmp_path)
    models = load_models(cfg)
    width = models.student.get_output_embeddings().weight.shape[0]
    allowed = torch.ones(width, dtype=torch.bool)
    allowed[5] = allowed[-1] = False
    models.vocab = types.SimpleNamespace(allowed=allowed)
    engine = VllmRollout(cfg, models)
    r = engine.sample(
        encode_prompts(models.tokenizer, ["ab"] * 3), max_new_tokens=6, temperature=1.0, top_p=1.0, row_seeds=[1, 2, 3]
    )
    (params,) = fake_vllm[0].calls
    assert params[0].allowed_token_ids == allowed.nonzero().flatten().tolist()
    assert not torch.isin(r.completion_ids[r.completion_mask.bool()], torch.tensor([5, width - 1])).any()


def test_vllm_refuses_more_than_one_process(tiny_dirs, tmp_path, fake_vllm, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match="one process"):
        _cfg(tiny_dirs, tmp_path)
    from gopd_lab.scale.vllm_rollout import check_single_process

    with pytest.raises(ConfigError, match="rollout_backend='hf'"):
        check_single_process()


def test_both_backends_stop_at_the_generation_configs_eos_ids_too(tiny_dirs):
    """A chat model ends turns with ``generation_config.eos_token_id`` (e.g. Qwen's ``<|im_end|>``), which vLLM
    stops at on its own: the built-in loop and the rollout built from vLLM's ids stop at the same set."""
    from gopd_lab.lm.rollout import sample
    from gopd_lab.loop.load import load_models
    from gopd_lab.scale.vllm_rollout import completions_to_rollout

    models = load_models(RunConfig(student=tiny_dirs["student"], teacher=tiny_dirs["teacher"], dtype="float32"))
    tok = models.tokenizer
    prompts = encode_prompts(tok, ["12+7=", "ab", "x"])
    free = sample(
        models.student,
        prompts,
        max_new_tokens=12,
        pad_token_id=tok.pad_token_id,
        generator=torch.Generator().manual_seed(0),
    )
    other = int(free.completion_ids[0, 2])  # a token row 0 samples at its 3rd position
    models.student.generation_config.eos_token_id = [tok.eos_token_id, other]
    assert models.stop_token_ids == [tok.eos_token_id, other]
    hf = sample(
        models.student,
        prompts,
        max_new_tokens=12,
        eos_token_id=models.stop_token_ids,
        pad_token_id=tok.pad_token_id,
        generator=torch.Generator().manual_seed(0),
    )
    row0 = free.completion_ids[0].tolist()
    assert hf.completion_mask[0].sum() == row0.index(other) + 1  # stopped at the extra id, kept it
    via_vllm = completions_to_rollout(
        prompts, free.completion_ids.tolist(), eos_token_id=models.stop_token_ids, pad_token_id=tok.pad_token_id
    )
    assert torch.equal(via_vllm.completion_mask.sum(1), hf.completion_mask.sum(1))
