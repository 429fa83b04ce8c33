"""Teacher types: ``"<type>:<argument>"`` specs built by registered factories (gopd_lab.teacher_types)."""

import math

import pytest
import torch

from gopd_lab import RunConfig
from gopd_lab.config import ConfigError
from gopd_lab.loop.load import load_models
from gopd_lab.teacher_types import TEACHER_TYPES, Ensemble, register_teacher_type, split_spec

ZOO = dict(student="zoo:student-base", tasks="add", device="cpu", steps=1, batch_size=2, max_new_tokens=4)


def test_specs_split_into_type_and_argument_but_not_the_loaders_own_schemes():
    assert split_spec("ensemble:zoo:a,zoo:b") == ("ensemble", "zoo:a,zoo:b")
    assert split_spec("zoo:teacher-add") is None
    assert split_spec("http://host:8765") is None
    assert split_spec("Qwen/Qwen3-0.6B") is None and split_spec("student") is None


def test_an_unregistered_teacher_type_is_one_clear_config_error():
    with pytest.raises(ConfigError, match=r"teacher type 'nosuch'.*not registered.*plugins"):
        RunConfig(**ZOO, teacher="nosuch:zoo:teacher-add")
    with pytest.raises(ConfigError, match="reference: teacher type 'nosuch'"):
        RunConfig(**ZOO, teacher="zoo:teacher-add", reference="nosuch:x", lam=1.5)


def test_a_taken_name_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_teacher_type("ensemble", lambda arg, load: None)
    with pytest.raises(ValueError, match="needs a name"):
        register_teacher_type("zoo", lambda arg, load: None)


def test_the_ensemble_is_the_mixture_of_its_teachers_distributions():
    cfg = RunConfig(**ZOO, teacher="ensemble:zoo:teacher-add, zoo:teacher-mul")
    models = load_models(cfg)
    teacher = models.teacher_for("add")
    assert isinstance(teacher, Ensemble) and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        mixed = teacher(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.softmax(-1)  # (1, T, V)
        each = [t(input_ids=ids).logits.float().softmax(-1) for t in teacher.teachers]
    torch.testing.assert_close(mixed, (each[0] + each[1]) / 2)
    assert math.isclose(float(mixed[0, -1].sum()), 1.0, rel_tol=1e-5)
    assert models.names["teacher/default"] == "ensemble:zoo:teacher-add, zoo:teacher-mul"


def test_an_ensemble_of_one_is_a_clear_config_error():
    with pytest.raises(ConfigError, match="two or more"):
        load_models(RunConfig(**ZOO, teacher="ensemble:zoo:teacher-add"))


def test_a_registered_type_builds_through_the_loader(tmp_path):
    calls = []

    def halved(argument, load):
        calls.append(argument)
        return Ensemble([load(argument), load(argument)])

    register_teacher_type("test-twice", halved)
    try:
        models = load_models(RunConfig(**ZOO, teacher="test-twice:zoo:teacher-add"))
        assert calls == ["zoo:teacher-add"]
        inner = models.teacher_for("add").teachers
        assert inner[0] is inner[1]  # the loader's cache: one copy of zoo:teacher-add
    finally:
        TEACHER_TYPES.pop("test-twice")
