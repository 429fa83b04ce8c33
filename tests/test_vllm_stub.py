"""The vLLM backend on CPU against a stand-in ``vllm`` module: what :class:`VllmRollout` asks the engine for (one
seed per row, derived from the step; the stop ids the built-in loop uses; the masked ids as a logit bias) and what it
syncs (every weight under its checkpoint name, through ``reload_weights``, after every update and on resume). The
stand-in takes only keywords the real API has (``LLM_PARAMETERS``, ``SAMPLING_FIELDS``, ``RPC_METHODS``: the names
``tests/test_vllm_engine.py`` checks against the installed vLLM) and raises ``TypeError`` on any other, as the real
one would; it samples uniformly from the ids without a −inf bias with each request's own seed, so it shows which
seeds reach the engine, not vLLM's numerics (``make test-vllm`` runs the real engine)."""

import sys
import types

import pytest
import torch

from gopd_lab.config import ConfigError, RunConfig
from gopd_lab.lm.rollout import encode_prompts, mix_seed
from gopd_lab.loop.train import row_seed, train

LLM_PARAMETERS = {
    "model",
    "dtype",
    "seed",
    "trust_remote_code",
    "enable_prefix_caching",
    "max_model_len",
    "max_num_seqs",
    "kv_cache_memory_bytes",
    "enable_sleep_mode",
    "gpu_memory_utilization",
}
"""Keywords of ``vllm.LLM(...)`` the backend may pass (each one a parameter of the real ``LLM.__init__``)."""
SAMPLING_FIELDS = {
    "n",
    "temperature",
    "top_p",
    "max_tokens",
    "seed",
    "stop_token_ids",
    "ignore_eos",
    "logit_bias",
    "allowed_token_ids",
    "detokenize",
}
"""Fields of ``vllm.SamplingParams`` the backend may set."""
RPC_METHODS = {"reload_weights": {"weights_iterator", "weights_path", "is_checkpoint_format"}}
"""Worker methods reached by ``LLM.collective_rpc`` and their keywords."""


def _sampling_params(**kw):
    unknown = set(kw) - SAMPLING_FIELDS
    if unknown:
        raise TypeError(f"SamplingParams got unexpected keyword arguments {sorted(unknown)}")
    if kw.get("seed") is not None and not 0 <= kw["seed"] < 2**63:
        raise ValueError(f"seed {kw['seed']} outside a torch.Generator's range")
    return types.SimpleNamespace(**{**dict.fromkeys(SAMPLING_FIELDS), **kw})


class _LLM:
    made: list["_LLM"] = []

    def __init__(self, **kw):
        unknown = set(kw) - LLM_PARAMETERS
        if unknown:
            raise TypeError(f"LLM.__init__() got unexpected keyword arguments {sorted(unknown)}")
        self.kw, self.calls, self.loads, self.sleeps = kw, [], [], []
        _LLM.made.append(self)

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        kwargs = kwargs or {}
        if method not in RPC_METHODS or set(kwargs) - RPC_METHODS[method] or args:
            raise TypeError(f"no worker method {method}({args}, {sorted(kwargs)})")
        self.loads.append({name: t.detach().clone() for name, t in kwargs["weights_iterator"]})
        return [None]

    def sleep(self, level=1, mode="abort"):
        self.sleeps.append(("sleep", level))

    def wake_up(self, tags=None):
        self.sleeps.append(("wake_up", tuple(tags or ())))
        return True

    def generate(self, prompts, sampling_params=None, use_tqdm=True):
        params = sampling_params
        assert isinstance(params, list) and len(params) == len(prompts)  # one SamplingParams per row
        assert all(set(p) == {"prompt_token_ids"} for p in prompts)
        self.calls.append(params)
        outs = []
        for p in params:
            g = torch.Generator().manual_seed(p.seed)
            banned = {i for i, b in (p.logit_bias or {}).items() if b == float("-inf")}
            pool = torch.as_tensor([i for i in range(64) if i not in banned])
            ids = []
            for _ in range(p.max_tokens):
                ids.append(int(pool[torch.randint(len(pool), (1,), generator=g)]))
                if ids[-1] in (p.stop_token_ids or []):
                    break
            outs.append(types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=ids)]))
        return outs


@pytest.fixture
def fake_vllm(monkeypatch):
    """``import vllm`` finds the stand-in (it has no ``vllm.platforms``: no platform check against the device)."""
    mod = types.ModuleType("vllm")
    mod.__version__ = "stub"
    mod.LLM = _LLM
    mod.SamplingParams = _sampling_params
    monkeypatch.setitem(sys.modules, "vllm", mod)
    monkeypatch.setitem(sys.modules, "vllm.platforms", None)  # `from vllm.platforms import ...` raises ImportError
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
    assert [p.seed for p in params] == [mix_seed(s) for s in (11, 12, 13, 14)]
    assert len({tuple(row.tolist()) for row in r.completion_ids}) > 1  # not one draw copied to every row
    stops = models.stop_token_ids
    assert stops and all(p.stop_token_ids == stops for p in params)
    assert all(not p.ignore_eos for p in params)


def test_vllm_seeds_follow_the_step_and_weights_sync_after_every_step_and_on_resume(tiny_dirs, tmp_path, fake_vllm):
    cfg = _cfg(tiny_dirs, tmp_path / "run", save_every=1)
    train(cfg, progress=False)
    (llm,) = fake_vllm
    seeds = [[p.seed for p in call] for call in llm.calls]
    want = [[mix_seed(row_seed(cfg.seed, step, pos, k)) for pos in range(2) for k in range(2)] for step in range(2)]
    assert seeds == want  # one seed per row, from the step: no two rows or steps share one
    assert len({s for row in seeds for s in row}) == 4 * 2
    # the engine gets every weight under its Hugging Face name: at the start and after each of the 2 updates
    from transformers import AutoModelForCausalLM

    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model")
    assert len(llm.loads) == 3
    assert set(llm.loads[-1]) == set(saved.state_dict())
    for name, t in saved.state_dict().items():
        torch.testing.assert_close(llm.loads[-1][name], t)  # the last sync holds the trained weights
    assert not all(torch.equal(llm.loads[0][n], llm.loads[-1][n]) for n in llm.loads[0])
    assert llm.sleeps == []  # no sleep mode on CPU

    # resume to step 3: the step-3 seeds are those of an uninterrupted run; the resumed weights are synced first
    train(cfg.replace(resume=True, steps=3), progress=False)
    resumed = fake_vllm[-1]
    want = [mix_seed(row_seed(cfg.seed, 2, pos, k)) for pos in range(2) for k in range(2)]
    assert [p.seed for p in resumed.calls[0]] == want
    assert len(resumed.loads) == 3  # construction, after loading the checkpoint, after step 3
    for name, t in llm.loads[-1].items():
        torch.testing.assert_close(resumed.loads[1][name], t)  # the checkpoint's weights, not the initial ones


def test_vllm_masked_ids_are_a_logit_bias_on_those_ids_not_an_allow_list(tiny_dirs, tmp_path, fake_vllm):
    """The masked rows go as ``{id: -inf}`` (a few ids per request); an allow-list sent ~151k ids per request."""
    from gopd_lab.loop.load import load_models
    from gopd_lab.scale.vllm_rollout import VllmRollout

    cfg = _cfg(tiny_dirs, tmp_path)
    models = load_models(cfg)
    width = models.student.get_output_embeddings().weight.shape[0]
    allowed = torch.ones(width + 3, dtype=torch.bool)  # an alignment wider than the student (a bigger teacher)
    allowed[5] = allowed[width - 1] = allowed[width + 1] = False
    models.vocab = types.SimpleNamespace(allowed=allowed)
    engine = VllmRollout(cfg, models)
    r = engine.sample(
        encode_prompts(models.tokenizer, ["ab"] * 3), max_new_tokens=6, temperature=1.0, top_p=1.0, row_seeds=[1, 2, 3]
    )
    (params,) = fake_vllm[0].calls
    assert all(p.allowed_token_ids is None for p in params)
    assert params[0].logit_bias == {5: float("-inf"), width - 1: float("-inf")}  # ids the student has rows for
    assert not torch.isin(r.completion_ids[r.completion_mask.bool()], torch.tensor([5, width - 1])).any()


def test_vllm_engine_gets_a_kv_budget_from_the_batch_and_the_model(tiny_dirs, tmp_path, fake_vllm):
    from gopd_lab.loop.load import load_models
    from gopd_lab.scale.vllm_rollout import VllmRollout, kv_cache_bytes

    cfg = _cfg(tiny_dirs, tmp_path, batch_size=4, samples_per_prompt=2, max_new_tokens=20)
    models = load_models(cfg)
    VllmRollout(cfg, models, prompt_len=10)
    kw = fake_vllm[0].kw
    c = models.student.config
    assert kw["max_model_len"] == 30 and kw["max_num_seqs"] == 8
    per_token = c.num_hidden_layers * 2 * c.num_key_value_heads * (c.hidden_size // c.num_attention_heads) * 4
    assert kw["kv_cache_memory_bytes"] == max(2**20, 8 * (2 + 1) * 16 * per_token)  # 30 tokens: 2 pages + 1
    assert kv_cache_bytes(c, rows=64, positions=1280, dtype=torch.bfloat16) == 64 * 81 * 16 * per_token // 2
    assert "enable_sleep_mode" not in kw  # CPU: no sleep mode


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
