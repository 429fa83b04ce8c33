"""examples/opd_single_file.py, G-OPD written out with torch and transformers only, gives the package's numbers:
same zoo models, prompts and seed → the same loss and metrics, step by step, to float tolerance."""

import importlib.util
import sys
from pathlib import Path

import pytest

from gopd_lab import RunConfig, train
from gopd_lab.tasks import data_dir
from gopd_lab.world.zoo import model_path

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("loss", "adv_mean", "lp_student_mean", "lp_teacher_mean", "reverse_kl", "entropy", "grad_norm", "tokens")


def _single_file():
    spec = importlib.util.spec_from_file_location("opd_single_file", ROOT / "examples" / "opd_single_file.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("lam", [1.25])  # λ ≠ 1: the reference runs too (λ = 1 drops its terms)
def test_the_single_file_loop_gives_the_packages_numbers(lam, tmp_path, monkeypatch):
    monkeypatch.setenv("GOPD_LAB_WORLD", "v2")
    knobs = dict(lam=lam, steps=3, batch_size=4, max_new_tokens=6, lr=1e-3, seed=3)
    single = _single_file()
    args = single.Args(
        student=str(model_path("student-base")),
        teacher=str(model_path("teacher-add")),
        prompts=str(data_dir() / "arith" / "v2" / "add_train.jsonl"),
        **knobs,
    )
    mine = single.main(args)
    cfg = RunConfig(
        student="zoo:student-base",
        teacher="zoo:teacher-add",
        tasks="add",
        world="v2",
        eval_k=0,
        eval_limit=1,
        log_samples=0,
        device="cpu",
        dtype="float32",
        out_dir=str(tmp_path / "package"),
        **knobs,
    )
    package = train(cfg, progress=False).to_dict("records")
    assert len(mine) == len(package) == 3
    for ours, theirs in zip(mine, package):
        for name in METRICS:
            assert ours[name] == pytest.approx(theirs[name], rel=1e-4, abs=1e-5), (ours["step"], name)
