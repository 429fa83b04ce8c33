"""Tokenizer agreement by shared ids; output layers padded beyond the tokenizer, for every estimator (issue 14)."""

import pytest
import torch
from transformers import Qwen2ForCausalLM

from gopd_lab import RunConfig
from gopd_lab.lm.logprobs import MASKED_LOGIT, student_forward, token_logprobs
from gopd_lab.lm.models import ModelLoadError
from gopd_lab.lm.rollout import encode_prompts, sample
from gopd_lab.lm.vocab import VocabConflict, compare_vocabularies
from gopd_lab.loop.load import load_models
from gopd_lab.loop.update import update
from gopd_lab.scorers.score import score_rollout
from gopd_lab.world.tiny import tiny_config
from gopd_lab.world.tokenizer import build_char_tokenizer

N_CHAR = 104  # the character tokenizer


def _save(path, tok, width, seed):
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(tiny_config(width, tokenizer=tok))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def _think_tokenizer():
    tok = build_char_tokenizer()
    tok.add_tokens(["<think>", "</think>"])  # ids 104, 105: a teacher vocabulary extending the student's
    return tok


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab")
    return {
        "student": _save(root / "student", build_char_tokenizer(), N_CHAR + 4, 0),  # padded by 4 rows
        "teacher": _save(root / "teacher", _think_tokenizer(), N_CHAR + 2 + 6, 1),  # superset, padded wider
        "reference": _save(root / "reference", build_char_tokenizer(), N_CHAR, 2),  # narrower than the student
    }


def test_a_superset_vocabulary_is_accepted_and_reports_the_ids_on_each_side():
    student, teacher = build_char_tokenizer().get_vocab(), _think_tokenizer().get_vocab()
    agreement = compare_vocabularies(student, teacher, "teacher")
    assert agreement.other_only == [104, 105] and agreement.student_only == []
    assert compare_vocabularies(teacher, student, "t").student_only == [104, 105]
    assert compare_vocabularies(student, dict(student), "t").identical


def test_a_shared_id_with_another_token_is_refused_naming_the_first_conflict():
    student = build_char_tokenizer().get_vocab()
    other = dict(student)
    other["a"], other["b"] = student["b"], student["a"]  # two ids swapped
    other["z"], other["y"] = student["y"], student["z"]
    first = min(student["a"], student["b"], student["y"], student["z"])
    with pytest.raises(VocabConflict, match=rf"^(id|token) .*{first}.* \(first of \d+ conflicts\)"):
        compare_vocabularies(student, other, "teacher")


def test_load_models_refuses_a_conflicting_tokenizer_and_names_it(dirs, tmp_path):
    tok = build_char_tokenizer()
    vocab = tok.get_vocab()
    from tokenizers import Tokenizer, models

    swapped = dict(vocab)
    swapped["a"], swapped["b"] = vocab["b"], vocab["a"]
    backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    backend.model = models.WordLevel(swapped, unk_token="<unk>")
    from transformers import PreTrainedTokenizerFast

    bad = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )
    assert bad.get_vocab()["a"] == vocab["b"]
    path = _save(tmp_path / "bad", bad, N_CHAR, 3)
    with pytest.raises(ModelLoadError, match=rf"id {min(vocab['a'], vocab['b'])} is"):
        load_models(RunConfig(student=dirs["student"], teacher=path, device="cpu"))


@pytest.fixture(scope="module")
def models(dirs):
    cfg = RunConfig(
        student=dirs["student"], teacher=dirs["teacher"], reference=dirs["reference"], lam=1.25, device="cpu"
    )
    return load_models(cfg)


def _rollout(models, seed=0, n=8, tokens=12):
    tok = models.tokenizer
    prompts = encode_prompts(tok, ["12+7=", "x", "ab", "9-2="] * (n // 4))
    return sample(
        models.student,
        prompts,
        max_new_tokens=tokens,
        pad_token_id=tok.pad_token_id,
        generator=torch.Generator().manual_seed(seed),
    )


def test_the_student_never_samples_an_id_outside_the_shared_vocabulary(models):
    assert models.vocab is not None and models.vocab.width == N_CHAR + 4
    allowed = models.vocab.allowed
    assert allowed[:N_CHAR].all() and not allowed[N_CHAR:].any()  # padded rows and teacher-only ids masked
    ro = _rollout(models, n=16, tokens=24)
    assert int(ro.completion_ids.max()) < N_CHAR  # test_unmasked_...: without the mask it does not hold
    head = models.student.get_output_embeddings()
    logits = head(torch.randn(3, head.weight.shape[1]))
    assert logits.shape == (3, N_CHAR + 4) and (logits[:, N_CHAR:] == MASKED_LOGIT).all()


def test_unmasked_the_padded_student_would_sample_padded_rows(dirs):
    student = Qwen2ForCausalLM.from_pretrained(dirs["student"])
    tok = build_char_tokenizer()
    ro = sample(
        student,
        encode_prompts(tok, ["12+7=", "x", "ab", "9-2="] * 4),
        max_new_tokens=24,
        pad_token_id=tok.pad_token_id,
        generator=torch.Generator().manual_seed(0),
    )
    assert int(ro.completion_ids.max()) >= N_CHAR  # what the mask prevents


def test_teacher_log_probs_are_renormalised_over_the_shared_ids(models):
    ro = _rollout(models)
    teacher = models.teacher_for("x")
    got = token_logprobs(teacher, ro)
    pos = ro.completion_mask.bool()
    ids = torch.cat([ro.prompt_ids, ro.completion_ids], 1)
    from gopd_lab.lm.rollout import position_ids_from_mask

    with torch.no_grad():
        raw = teacher.model(
            input_ids=ids, attention_mask=ro.attention_mask, position_ids=position_ids_from_mask(ro.attention_mask)
        ).last_hidden_state
        logits = torch.nn.functional.linear(raw, teacher.get_output_embeddings().weight)[
            :, ro.prompt_ids.shape[1] - 1 : -1
        ]
        want = torch.log_softmax(logits[..., :N_CHAR].float(), -1).gather(-1, ro.completion_ids[..., None]).squeeze(-1)
    assert torch.allclose(got[pos], want[pos], atol=1e-5)


def test_the_fused_student_log_probs_use_the_mask(models):
    ro = _rollout(models, seed=1)
    out = student_forward(models.student, ro)  # the fused _TokenLogprob path
    full = student_forward(models.student, ro, full=True)  # through the head module and its hook
    assert torch.allclose(out.lp, full.lp, atol=1e-5)
    assert full.logp.shape[-1] == N_CHAR + 4 and torch.allclose(full.logp.exp().sum(-1), torch.ones(1), atol=1e-5)
    assert float(full.logp.detach()[:, N_CHAR:].exp().max()) == 0.0


@pytest.mark.parametrize("estimator", ["sampled", "full", "topk", "jsd"])
def test_every_estimator_runs_with_padded_and_extended_vocabularies(models, estimator):
    import copy

    ro = _rollout(models, seed=2)
    lam = 1.0 if estimator == "jsd" else 1.25
    scored = score_rollout(models, ro, lam, estimator=estimator, topk=5)
    if estimator in ("full", "jsd"):
        assert scored.target.shape == (int(ro.completion_mask.sum()), N_CHAR + 4)
    student = copy.deepcopy(models.student)
    before = [p.detach().clone() for p in student.parameters()]
    result = update(student, torch.optim.SGD(student.parameters(), lr=0.1), scored, RunConfig(estimator=estimator))
    assert all(torch.isfinite(torch.tensor(float(v))) for v in result.metrics.values())
    assert any(not torch.equal(p, q) for p, q in zip(student.parameters(), before))
    assert all(torch.isfinite(p).all() for p in student.parameters())


@pytest.mark.parametrize("with_teacher", [True, False])
def test_padded_rows_are_masked_when_tokenizers_and_widths_agree(tmp_path, with_teacher):
    """Qwen3's case: student and teacher share the tokenizer and the width (151,936 rows over ~151,669 tokens). No
    tokenizer differs, yet the padded rows must still never be sampled (with a teacher, or with none at all)."""
    student = _save(tmp_path / "student", build_char_tokenizer(), N_CHAR + 4, 0)
    teacher = _save(tmp_path / "teacher", build_char_tokenizer(), N_CHAR + 4, 1)
    cfg = RunConfig(student=student, teacher=teacher if with_teacher else "", lam=1.25, device="cpu")
    if not with_teacher:
        cfg = cfg.replace(method="grpo", tasks=["add"], teacher="", samples_per_prompt=2)
    m = load_models(cfg)
    assert m.vocab is not None and m.vocab.width == N_CHAR + 4
    assert m.vocab.allowed[:N_CHAR].all() and not m.vocab.allowed[N_CHAR:].any()
    ro = _rollout(m, n=16, tokens=24)
    assert int(ro.completion_ids.max()) < N_CHAR  # test_unmasked_...: the same padded student samples them unmasked
