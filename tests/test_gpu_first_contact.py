"""What broke when the GPU path met real models (issue 23), each reproduced on CPU: chat-templated prompts under
transformers 5, evaluation formatting prompts as training does, per-row seeds that overflowed ``manual_seed``, the
dense ``(N, V)`` targets of ``jsd`` and of ``full`` over several teacher/reference groups."""

import copy

import pytest
import torch

from gopd_lab import RunConfig
from gopd_lab.config import ConfigError
from gopd_lab.lm.rollout import SEED_BOUND, encode_prompts, mix_seed, prompts_from_tasks, sample
from gopd_lab.loop.train import row_seed
from gopd_lab.world.tiny import save_tiny_model, tiny_model
from gopd_lab.world.tokenizer import build_char_tokenizer

# one user turn after <bos>, the assistant's turn opened by "A:" (characters of the char tokenizer)
CHAT_TEMPLATE = (
    "{% for m in messages %}<bos>{{ m['role'][0] | upper }}:{{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}A:{% endif %}"
)


def chat_tokenizer():
    tok = build_char_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    return tok


def test_chat_templated_prompts_encode_to_token_ids_under_transformers_5():
    """transformers 5's ``apply_chat_template(tokenize=True)`` returns a mapping: the ids were its keys (TypeError)."""
    tok = chat_tokenizer()
    prompts = encode_prompts(tok, ["12+7=", "ab"], chat_template=True)
    want = [[tok.bos_token_id, *tok(f"U:{t} A:")["input_ids"]] for t in ("12+7=", "ab")]
    assert prompts.ids == want
    assert prompts.texts == ["12+7=", "ab"]


def test_a_chat_template_request_without_a_template_is_one_clear_error():
    with pytest.raises(ConfigError, match="no chat template"):
        encode_prompts(build_char_tokenizer(), ["12+7="], chat_template=True)


def _tasks():
    from gopd_lab.tasks import load_tasks

    return load_tasks(["add"])


def test_evaluation_formats_prompts_with_the_chat_template_as_training_does(tmp_path, monkeypatch):
    """A run with ``chat_template=True`` trains on templated prompts; its evaluation scored the raw text."""
    from gopd_lab.loop import evaluate as evaluate_mod
    from gopd_lab.loop.train import train

    tok = chat_tokenizer()
    student = save_tiny_model(tmp_path / "student", seed=0)
    tok.save_pretrained(student)  # the checkpoint's tokenizer carries the template
    seen: list[list[list[int]]] = []
    real_sample = evaluate_mod.sample

    def spy(model, prompts, **kw):
        seen.append(list(prompts.ids))
        return real_sample(model, prompts, **kw)

    monkeypatch.setattr(evaluate_mod, "sample", spy)
    cfg = RunConfig(
        student=str(student),
        teacher=str(student),
        tasks="add",
        chat_template=True,
        batch_size=2,
        max_new_tokens=3,
        steps=1,
        eval_every=1,
        eval_k=0,
        eval_limit=2,
        dtype="float32",
        log_samples=0,
        out_dir=str(tmp_path / "run"),
    )
    train(cfg, progress=False)
    from gopd_lab.lm.models import load_tokenizer

    want = prompts_from_tasks(_tasks(), load_tokenizer(str(student)), split="test", limit=2, chat_template=True).ids
    assert seen and all(ids == want for ids in seen)
    assert all(ids[0] == tok.bos_token_id for ids in want)  # templated, not the raw prompt


def test_row_seeds_of_a_run_seed_of_5_or_more_do_not_overflow_manual_seed():
    """Row seeds × 1,000,003 + t passed 2**64 for run seeds ≥ 5: ``manual_seed`` raised ValueError."""
    tok = build_char_tokenizer()
    model = tiny_model(seed=0, tokenizer=tok)
    prompts = encode_prompts(tok, ["12+7=", "ab", "12+7="])
    for seed in (5, 1234, 2**40):
        seeds = [row_seed(seed, step=9_999, position=p, sample=0) for p in range(3)]
        r = sample(model, prompts, max_new_tokens=4, pad_token_id=tok.pad_token_id, row_seeds=seeds)
        assert r.completion_ids.shape == (3, 4)
    alone = sample(model, prompts.select([2]), max_new_tokens=4, pad_token_id=tok.pad_token_id, row_seeds=seeds[2:])
    assert torch.equal(alone.completion_ids[0], r.completion_ids[2])  # a row's draw is its own seed's only


def test_mixed_seeds_lie_below_2_to_the_63_and_differ_for_nearby_inputs():
    values = [mix_seed(s, t) for s in (0, 1, 5, 2**64 + 3, -7) for t in range(50)]
    assert all(0 <= v < SEED_BOUND for v in values)
    assert len(set(values)) == len(values)
    assert mix_seed(3, 4) == mix_seed(3, 4) and mix_seed(3, 4) != mix_seed(4, 3)
    assert mix_seed(2**64 + 3) != mix_seed(3)  # wide parts are folded in, not truncated


# ---- the dense (N, V) targets, now formed chunk by chunk: the same losses and gradients as the dense ones ----


def _zoo_models(teachers, lam):
    from gopd_lab.loop.load import load_models

    cfg = RunConfig(
        student="zoo:student-base", teacher=teachers, reference="zoo:student-base", lam=lam, dtype="float32"
    )
    return load_models(cfg)


def _rollout(models, domains):
    from gopd_lab.lm.rollout import sample as draw

    texts = {"add": ["12+7=", "3+45="], "mul": ["3*4=", "6*7="]}
    prompts = encode_prompts(
        models.tokenizer, [t for d in domains for t in texts[d]], [d for d in domains for _ in texts[d]]
    )
    return draw(
        models.student,
        prompts,
        max_new_tokens=6,
        eos_token_id=models.stop_token_ids,
        pad_token_id=models.pad_token_id,
        generator=torch.Generator().manual_seed(0),
    )


def _update(models, scored, estimator, micro):
    from gopd_lab.config import RunConfig
    from gopd_lab.loop.update import update

    student = copy.deepcopy(models.student)
    settings = RunConfig(
        student="s", teacher="t", estimator=estimator, micro_batch_size=micro, score_chunk_tokens=3, jsd_beta=0.5
    )
    metrics = update(student, torch.optim.SGD(student.parameters(), lr=1.0), scored, settings)
    return torch.cat([p.detach().flatten() for p in student.parameters()]), metrics.metrics


@pytest.mark.parametrize(
    ("estimator", "lam", "teachers"),
    [
        ("jsd", 1.0, "zoo:teacher-add"),
        ("jsd", 1.0, {"add": "zoo:teacher-add", "mul": "zoo:teacher-mul"}),  # two teachers: two groups
        ("full", {"add": 1.0, "mul": 1.5}, "zoo:teacher-add"),  # λ = 1 rows skip the reference: two groups
    ],
)
def test_the_dense_targets_of_jsd_and_of_full_over_several_groups_are_formed_chunk_by_chunk(
    monkeypatch, estimator, lam, teachers
):
    from gopd_lab.scorers import score as score_mod

    models = _zoo_models(teachers, lam)
    rollout = _rollout(models, ["add", "mul"])
    monkeypatch.setattr(score_mod, "LAZY_TARGET_BYTES", 2**62)  # every target dense: the result before
    dense = score_mod.score_rollout(models, rollout, lam, estimator=estimator)
    assert isinstance(dense.target, torch.Tensor)
    monkeypatch.setattr(score_mod, "LAZY_TARGET_BYTES", 0)  # every target lazy: the preset-size path
    lazy = score_mod.score_rollout(models, rollout, lam, estimator=estimator)
    assert not isinstance(lazy.target, torch.Tensor) and hasattr(lazy.target, "rows")  # no (N, V) tensor kept
    assert lazy.target.shape == dense.target.shape
    torch.testing.assert_close(lazy.target.dense(chunk_tokens=3), dense.target, rtol=0, atol=1e-5)
    for micro in (0, 1):
        want, m_want = _update(models, dense, estimator, micro)
        got, m_got = _update(models, lazy, estimator, micro)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        assert m_got["loss"] == pytest.approx(m_want["loss"], rel=1e-5, abs=1e-7)
