"""What only a CUDA machine can check (``pytest -m gpu``; skipped without CUDA). Not run where this was written:
the development machine had no GPU."""

import copy

import pytest
import torch

from gopd_lab.config import RunConfig
from gopd_lab.lm.models import Models, freeze
from gopd_lab.lm.rollout import encode_prompts, sample
from gopd_lab.loop.update import update
from gopd_lab.scorers.score import score_rollout
from gopd_lab.world.tiny import tiny_model
from gopd_lab.world.tokenizer import build_char_tokenizer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(scope="module")
def world():
    tok = build_char_tokenizer()
    student = tiny_model(seed=0, tokenizer=tok).cuda()
    teacher = freeze(tiny_model(seed=1, tokenizer=tok)).cuda()
    prompts = encode_prompts(tok, ["12+7=", "x", "hello, 3*4=", "ab"] * 4)
    return tok, student, teacher, prompts


def test_cuda_sampling_uses_device_generators_and_large_chunks(world):
    from gopd_lab.lm.logprobs import chunk_rows

    tok, student, _, prompts = world
    assert chunk_rows(151_936, 0, "cuda") > 1000 and chunk_rows(151_936, 0, "cpu") < 100
    gen = torch.Generator(device="cuda").manual_seed(0)
    a = sample(student, prompts, max_new_tokens=20, eos_token_id=tok.eos_token_id, pad_token_id=0, generator=gen)
    gen = torch.Generator(device="cuda").manual_seed(0)
    b = sample(student, prompts, max_new_tokens=20, eos_token_id=tok.eos_token_id, pad_token_id=0, generator=gen)
    assert a.completion_ids.is_cuda and torch.equal(a.completion_ids, b.completion_ids)
    seeds = list(range(len(prompts)))
    c = sample(student, prompts, max_new_tokens=20, eos_token_id=tok.eos_token_id, pad_token_id=0, row_seeds=seeds)
    d = sample(
        student, prompts.select([3]), max_new_tokens=20, eos_token_id=tok.eos_token_id, pad_token_id=0, row_seeds=[3]
    )
    n = int(d.completion_mask.sum())
    assert torch.equal(c.completion_ids[3, :n], d.completion_ids[0, :n])  # a row's draw depends on its seed only


@pytest.mark.parametrize("estimator", ["sampled", "full"])
def test_micro_batched_bf16_autocast_step_on_cuda_matches_the_whole_batch(world, estimator):
    tok, student, teacher, prompts = world
    ro = sample(
        student,
        prompts,
        max_new_tokens=12,
        eos_token_id=tok.eos_token_id,
        pad_token_id=0,
        generator=torch.Generator(device="cuda").manual_seed(1),
    )
    scored = score_rollout(Models(student, tok, {"default": teacher}), ro, 1.0, estimator=estimator)
    out = []
    for micro in (0, 4):
        s = copy.deepcopy(student)
        cfg = RunConfig(estimator=estimator, micro_batch_size=micro)
        update(s, torch.optim.SGD(s.parameters(), lr=1.0), scored, cfg, autocast_dtype=torch.bfloat16)
        out.append(torch.cat([p.detach().flatten() for p in s.parameters()]))
    assert torch.allclose(out[0], out[1], atol=1e-3)  # bf16 matmuls: equal up to bf16 rounding of the sums


def test_vllm_backend_samples_and_follows_weight_updates(tmp_path):
    pytest.importorskip("vllm")
    from gopd_lab.config import RunConfig
    from gopd_lab.loop.load import load_models
    from gopd_lab.scale.vllm_rollout import VllmRollout
    from gopd_lab.world.tiny import save_tiny_model

    path = save_tiny_model(tmp_path / "student", seed=0)
    cfg = RunConfig(
        student=str(path),
        teacher=str(path),
        device="cuda",
        dtype="float32",
        rollout_backend="vllm",
        temperature=1e-4,
        vllm_gpu_memory_utilization=0.2,
    )
    models = load_models(cfg)
    engine = VllmRollout(cfg, models)
    tok = models.tokenizer
    prompts = encode_prompts(tok, ["12+7=", "ab"])

    def greedy_hf():
        return sample(
            models.student,
            prompts,
            max_new_tokens=8,
            greedy=True,
            eos_token_id=models.stop_token_ids,
            pad_token_id=tok.pad_token_id,
        )

    got = engine.sample(prompts, max_new_tokens=8, temperature=1e-4, top_p=1.0, row_seeds=[1, 2])
    want = greedy_hf()
    assert torch.equal(got.completion_ids[:, :4], want.completion_ids[:, :4])
    with torch.no_grad():
        for p in models.student.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    engine.sync(models.student)
    got = engine.sample(prompts, max_new_tokens=8, temperature=1e-4, top_p=1.0, row_seeds=[1, 2])
    want = greedy_hf()
    assert torch.equal(got.completion_ids[:, :4], want.completion_ids[:, :4])  # vLLM samples from the new weights
