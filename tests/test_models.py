"""Loading the three roles: validation, freezing, the reference, LoRA without a second copy."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from gopd_lab.config import ConfigError, RunConfig
from gopd_lab.lm.logprobs import token_logprobs
from gopd_lab.lm.models import AdapterDisabled, ModelLoadError, check_tokenizers
from gopd_lab.lm.rollout import encode_prompts, sample
from gopd_lab.loop.load import load_models
from gopd_lab.loop.train import train
from gopd_lab.world.tiny import save_tiny_model
from gopd_lab.world.tokenizer import build_char_tokenizer

PROMPTS = ["12+7=", "3*4=", "9+9="]


def _cfg(tiny_dirs, tmp_path=None, **kw):
    base = dict(
        student=tiny_dirs["student"],
        teacher=tiny_dirs["teacher"],
        device="cpu",
        dtype="float32",
        prompts=list(PROMPTS),
        batch_size=2,
        max_new_tokens=4,
        log_samples=0,
    )
    if tmp_path is not None:
        base["out_dir"] = str(tmp_path / "run")
    base.update(kw)
    return RunConfig(**base)


def _rollout(models, seed=0):
    prompts = encode_prompts(models.tokenizer, PROMPTS)
    return sample(
        models.student,
        prompts,
        max_new_tokens=5,
        generator=torch.Generator().manual_seed(seed),
        eos_token_id=models.eos_token_id,
        pad_token_id=models.pad_token_id,
    )


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same_weights(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "lam", [0, 0.0, -1.0, -0.25, float("nan"), float("inf"), {"math": 1.0, "code": 0.0}, {"math": float("nan")}]
)
def test_bad_lam_raises_config_error(lam):
    with pytest.raises(ConfigError, match="lam"):
        RunConfig(lam=lam)


@pytest.mark.parametrize("lam", [1.0, 0.5, 1.25, {"math": 1.25, "code": 1.0}])
def test_good_lam_accepted(lam):
    assert RunConfig(lam=lam).lam == lam


def test_unknown_config_field_raises_config_error(tmp_path):
    with pytest.raises(ConfigError, match="lamda"):
        RunConfig.from_dict({"lamda": 1.25})
    path = tmp_path / "cfg.yaml"
    path.write_text("lam: 1.25\nreward_scale: 2\n")
    with pytest.raises(ConfigError, match="reward_scale"):
        RunConfig.load(path)
    path.write_text("lam: 1.25\nestimator: full\n")
    cfg = RunConfig.load(path)
    assert cfg.lam == 1.25 and cfg.estimator == "full"


def test_needs_reference_only_off_lam_1():
    assert not RunConfig(lam=1.0).needs_reference
    assert RunConfig(lam=1.25).needs_reference
    assert RunConfig(lam={"a": 1.0, "b": 0.5}).needs_reference
    assert not RunConfig(lam={"a": 1.0, "b": 1.0}).needs_reference


# ------------------------------------------------------------------------------------- loading


@pytest.fixture(scope="module")
def mismatched_dir(tmp_path_factory):
    """A tokenizer whose ids for "a" and "b" are swapped: a shared id that means another token (a teacher that
    only *adds* tokens is accepted, see tests/test_vocab.py)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = build_char_tokenizer().get_vocab()
    vocab["a"], vocab["b"] = vocab["b"], vocab["a"]
    backend = Tokenizer.from_str(build_char_tokenizer().backend_tokenizer.to_str())
    backend.model = models.WordLevel(vocab, unk_token="<unk>")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )
    return str(save_tiny_model(tmp_path_factory.mktemp("mismatch") / "teacher_swapped", seed=5, tokenizer=tok))


def test_mismatched_tokenizers_raise_naming_both_models(tiny_dirs, mismatched_dir):
    with pytest.raises(ModelLoadError) as err:
        load_models(_cfg(tiny_dirs, teacher=mismatched_dir))
    msg = str(err.value)
    assert tiny_dirs["student"] in msg and mismatched_dir in msg
    # the same for a reference that does not match
    with pytest.raises(ModelLoadError) as err:
        load_models(_cfg(tiny_dirs, lam=1.25, reference=mismatched_dir))
    assert tiny_dirs["student"] in str(err.value) and mismatched_dir in str(err.value)


def test_check_tokenizers_accepts_equal_and_rejects_different_special_tokens():
    a, b = build_char_tokenizer(), build_char_tokenizer()
    check_tokenizers(a, b, "s", "t")  # no error
    b.eos_token = "<unk>"
    with pytest.raises(ModelLoadError, match="eos_token"):
        check_tokenizers(a, b, "s", "t")


@pytest.mark.parametrize("role", ["student", "teacher", "reference"])
def test_missing_model_path_raises_with_the_path(tiny_dirs, tmp_path, role):
    missing = str(tmp_path / "no_such_model")
    cfg = _cfg(tiny_dirs, lam=1.25, **{role: missing})
    with pytest.raises(ModelLoadError) as err:
        load_models(cfg)
    assert missing in str(err.value)


def test_teachers_are_frozen_eval_and_lam_1_loads_no_reference(tiny_dirs):
    # the reference path does not exist: at λ = 1 it must never even be opened
    models = load_models(_cfg(tiny_dirs, lam=1.0, reference="/no/such/reference/dir"))
    assert models.references == {}
    teacher = models.teacher_for("default")
    assert teacher is models.teachers["default"]
    assert not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert all(p.requires_grad for p in models.student.parameters())
    # the teacher is the checkpoint on disk (hidden size 48, not the student's 32)
    assert teacher.config.hidden_size == 48
    with pytest.raises(ConfigError):
        models.reference_for("default")


def test_reference_path_is_loaded_frozen(tiny_dirs):
    models = load_models(_cfg(tiny_dirs, lam=1.25, reference=tiny_dirs["reference"]))
    ref = models.reference_for("default")
    assert not ref.training and all(not p.requires_grad for p in ref.parameters())
    disk = AutoModelForCausalLM.from_pretrained(tiny_dirs["reference"])
    assert _same_weights(_state(ref), _state(disk))


def test_shared_path_is_loaded_once(tiny_dirs):
    models = load_models(
        _cfg(
            tiny_dirs,
            teacher={"a": tiny_dirs["teacher"], "b": tiny_dirs["teacher"]},
            lam=1.25,
            reference=tiny_dirs["teacher"],
        )
    )
    assert models.teachers["a"] is models.teachers["b"] is models.references["default"]


def test_reference_student_is_a_frozen_copy_that_stays_fixed(tiny_dirs, tmp_path):
    cfg = _cfg(tiny_dirs, tmp_path, lam=1.25, reference="student", steps=2, lr=1e-2, max_grad_norm=None)
    models = load_models(cfg)
    ref = models.reference_for("default")
    assert ref is not models.student
    assert not ref.training and all(not p.requires_grad for p in ref.parameters())
    initial = _state(AutoModelForCausalLM.from_pretrained(tiny_dirs["student"]))
    assert _same_weights(_state(ref), initial)
    # no parameter storage is shared with the student
    student_ptrs = {p.data_ptr() for p in models.student.parameters()}
    assert not student_ptrs & {p.data_ptr() for p in ref.parameters()}

    train(cfg, models=models, progress=False)
    assert not _same_weights(_state(models.student), initial)  # the student moved
    assert _same_weights(_state(ref), initial)  # the reference did not
    ro = _rollout(models)
    base = AutoModelForCausalLM.from_pretrained(tiny_dirs["student"]).eval()
    assert torch.allclose(token_logprobs(ref, ro), token_logprobs(base, ro), atol=1e-6)


# ------------------------------------------------------------------------------------------ LoRA


def test_lora_reference_is_adapter_disabled_base_without_a_second_copy(tiny_dirs):
    pytest.importorskip("peft")
    models = load_models(_cfg(tiny_dirs, lam=1.25, reference="student", lora_r=4))
    ref = models.reference_for("default")
    assert isinstance(ref, AdapterDisabled)
    assert list(ref.parameters()) == []  # owns no weights of its own

    trainable = [n for n, p in models.student.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)

    # make the adapters matter (LoRA B starts at 0, which would make the test trivially pass)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in models.student.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)

    ro = _rollout(models)
    base = AutoModelForCausalLM.from_pretrained(tiny_dirs["student"]).eval()
    lp_base = token_logprobs(base, ro)
    lp_ref = token_logprobs(ref, ro)
    lp_student = token_logprobs(models.student, ro)
    assert torch.allclose(lp_ref, lp_base, atol=1e-5)
    assert (lp_student - lp_base).abs().max() > 1e-3  # the adapters are on for the student
    # disabling adapters for the reference left them on afterwards
    assert torch.allclose(token_logprobs(models.student, ro), lp_student)

    # memory: the student's base weights, the teacher's, and the LoRA adapters; nothing else
    def storage(modules):
        seen = {}
        for m in modules:
            for p in m.parameters():
                seen[p.data_ptr()] = p.numel()
        return sum(seen.values())

    teacher = models.teacher_for("default")
    base_numel = sum(p.numel() for p in base.parameters())
    lora_numel = sum(p.numel() for n, p in models.student.named_parameters() if "lora_" in n)
    total = storage([models.student, teacher, ref])
    assert total == base_numel + lora_numel + sum(p.numel() for p in teacher.parameters())
    assert storage([models.student, ref]) == storage([models.student])


def test_lora_training_keeps_the_reference_at_the_base(tiny_dirs, tmp_path):
    pytest.importorskip("peft")
    cfg = _cfg(tiny_dirs, tmp_path, lam=1.25, reference="student", lora_r=4, steps=2, lr=5e-2, max_grad_norm=None)
    models = load_models(cfg)
    ref = models.reference_for("default")
    train(cfg, models=models, progress=False)
    ro = _rollout(models)
    base = AutoModelForCausalLM.from_pretrained(tiny_dirs["student"]).eval()
    assert torch.allclose(token_logprobs(ref, ro), token_logprobs(base, ro), atol=1e-5)
    assert (token_logprobs(models.student, ro) - token_logprobs(base, ro)).abs().max() > 1e-4
    assert not math.isnan(float(token_logprobs(models.student, ro).sum()))


@pytest.fixture(scope="module")
def dropout_student_dir(tmp_path_factory):
    """A tiny student whose attention has dropout, so train/eval mode changes its outputs."""
    from gopd_lab.world.tiny import tiny_model

    tok = build_char_tokenizer()
    model = tiny_model(seed=0, tokenizer=tok)
    model.config.attention_dropout = 0.5
    path = tmp_path_factory.mktemp("dropout") / "student"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def test_lora_reference_runs_without_dropout_while_student_trains(tiny_dirs, dropout_student_dir):
    """Regression: ``AdapterDisabled`` scored the base model in the student's mode, so after ``update()`` put
    the student in train mode the reference's log-probs carried dropout noise (a reference runs in eval)."""
    pytest.importorskip("peft")
    cfg = RunConfig(
        student=dropout_student_dir,
        teacher=tiny_dirs["teacher"],
        lam=1.25,
        reference="student",
        lora_r=4,
        device="cpu",
        dtype="float32",
    )
    models = load_models(cfg)
    ref = models.reference_for("default")
    ro = _rollout(models)
    base = AutoModelForCausalLM.from_pretrained(dropout_student_dir).eval()
    lp_base = token_logprobs(base, ro)

    models.student.train()  # what update() leaves behind
    assert torch.allclose(token_logprobs(ref, ro), lp_base, atol=1e-5)
    with torch.no_grad():
        assert torch.allclose(
            ref(input_ids=ro.input_ids, attention_mask=ro.attention_mask).logits,
            base(input_ids=ro.input_ids, attention_mask=ro.attention_mask).logits,
            atol=1e-5,
        )
    # the student's own mode is left as it was, module by module
    assert all(m.training for m in models.student.modules())
    models.student.eval()
    token_logprobs(ref, ro)
    assert not any(m.training for m in models.student.modules())
