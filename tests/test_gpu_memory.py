"""gopd_lab/scale/gpu_memory.py's rule against what is measured on CPU: a preset's pair at tiny shapes with the real
151,936-row vocabulary (bench/gpu_pairs.py, random weights), float32, the exact peak of live torch allocations
(``bench/_common.peak_alloc``). The held memory (static), scoring's logit chunks and the update's peak each agree with
the rule's float32 / CPU figures within 15 %."""

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


@pytest.mark.slow
@pytest.mark.parametrize("lam", [1.0, 1.25])
def test_the_memory_rule_agrees_with_what_is_measured_on_cpu(tmp_path, monkeypatch, lam):
    from _common import peak_alloc
    from gpu_pairs import random_load_model, write_pair

    from gopd_lab.config import RunConfig
    from gopd_lab.lm.logprobs import CHUNK_BYTES
    from gopd_lab.lm.rollout import prompts_from_tasks, sample
    from gopd_lab.loop import load
    from gopd_lab.loop.update import enable_gradient_checkpointing, update
    from gopd_lab.scale.gpu_memory import GIB, estimate
    from gopd_lab.scorers.score import score_rollout
    from gopd_lab.tasks import load_tasks

    monkeypatch.setattr(load, "load_model", random_load_model)
    s, t, sd, td, _ = write_pair(ROOT / "configs" / "gpu-0.5b.yaml", tmp_path, tiny=True)
    cfg = RunConfig(student=str(s), teacher=str(t), reference="student", lam=lam, dtype="float32", device="cpu")
    models = load.load_models(cfg.replace(mixed_precision=False))
    rows, micro = 8, 4
    prompts = prompts_from_tasks(load_tasks(["add", "mul"]), models.tokenizer, chat_template=True).select(range(rows))
    rollout = sample(
        models.student, prompts, max_new_tokens=16, pad_token_id=models.pad_token_id, generator=torch.Generator()
    )
    scored, scoring = peak_alloc(lambda: score_rollout(models, rollout, lam, estimator="sampled"))
    student = models.student.train()
    enable_gradient_checkpointing(student)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    settings = cfg.replace(estimator="sampled", micro_batch_size=micro)
    update(student, optimizer, scored, settings)  # the AdamW moments exist from the first step on

    def held(tensors):
        return sum(x.numel() * x.element_size() for x in tensors)

    moments = [v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v) and v.ndim]
    static = held(student.parameters()) + held(moments) + held(models.teacher_for("default").parameters())
    static += held(models.reference_for("default").parameters()) if lam != 1 else 0
    assert all(p.grad is None for p in student.parameters())  # freed between steps: not held
    _, update_peak = peak_alloc(lambda: update(student, optimizer, scored, settings))

    positions = rollout.prompt_ids.shape[1] + rollout.completion_ids.shape[1]
    want = estimate(
        sd,
        td,
        rows=rows,
        positions=positions,
        micro_rows=micro,
        chunk_bytes=CHUNK_BYTES,
        mixed_precision=False,
        act_bytes=4,
        teacher_bytes=4,
        reference=lam != 1,
    )
    assert static / GIB == pytest.approx(want["static"], rel=0.02)  # biases and norms are left out of P
    assert scoring / GIB == pytest.approx(want["scoring"], rel=0.15)
    assert update_peak / GIB == pytest.approx(want["update"], rel=0.15)
