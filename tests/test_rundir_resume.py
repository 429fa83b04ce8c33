"""Run directories across overwrite and resume: tracker files, what a resumed config may change, trackers closed."""

import json
import sys
import types
from pathlib import Path

import pytest

from gopd_lab.config import ConfigError, RunConfig
from gopd_lab.errors import RunDirError
from gopd_lab.loop.rundir import config_differences, holds_run, prepare_run_dir
from gopd_lab.loop.train import train


def _cfg(tiny_dirs, out: Path, **kw) -> RunConfig:
    base = dict(
        student=tiny_dirs["student"],
        teacher=tiny_dirs["teacher"],
        lam=1.25,
        prompts=["12+7=", "3*4=", "9+9=", "1+1="],
        batch_size=2,
        max_new_tokens=3,
        steps=2,
        lr=1e-2,
        log_samples=0,
        device="cpu",
        dtype="float32",
        out_dir=str(out),
    )
    base.update(kw)
    return RunConfig(**base)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ------------------------------------------------------------------------------------ overwrite
def test_overwrite_clears_tracker_dirs_and_model_old(tmp_path):
    """tensorboard/, wandb/ and model.old/ were not run files: overwrite kept the old run's event files."""
    out = tmp_path / "run"
    for name in ("tensorboard", "wandb", "model.old"):
        (out / name).mkdir(parents=True)
        (out / name / "f").write_text("old run")
    (out / "notes.txt").write_text("mine")
    assert holds_run(out) == ["model.old", "tensorboard", "wandb"]
    cfg = RunConfig(student="s", out_dir=str(out))
    with pytest.raises(RunDirError, match="already holds a run"):
        prepare_run_dir(cfg, clear=True)
    prepare_run_dir(cfg.replace(overwrite=True), clear=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_overwrite_with_a_missing_tracker_fails_before_clearing(tiny_dirs, tmp_path, monkeypatch):
    """--overwrite --report-to wandb without wandb used to delete the old run, then fail."""
    out = tmp_path / "run"
    train(_cfg(tiny_dirs, out), progress=False)
    before = sorted(p.name for p in out.iterdir())
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(ConfigError, match=r"pip install 'gopd-lab\[wandb\]'"):
        _cfg(tiny_dirs, out, overwrite=True, report_to="wandb")
    assert sorted(p.name for p in out.iterdir()) == before and (out / "model").is_dir()


# ------------------------------------------------------------------------------------ resume: what may differ
def _saved(**kw) -> dict:
    return RunConfig(student="s", **kw).to_dict()


def test_resume_accepts_a_report_to_change():
    assert config_differences(_saved(), _saved(report_to="tensorboard")) == []


def test_resume_compares_tasks_normalised():
    """tasks="add,mul" and ["add", "mul"] are the same tasks."""
    assert config_differences(_saved(tasks="add,mul"), _saved(tasks=["add", "mul"])) == []
    assert config_differences(_saved(tasks="add, mul"), _saved(tasks=["add"])) == ["tasks"]


def test_resume_ignores_lineage_knobs_the_lam_mode_does_not_read():
    assert config_differences(_saved(), _saved(reopd_tau=0.5, agopd_rho=0.1, entropy_threshold=2.0)) == []
    saved = _saved(lam_mode="reopd")
    assert config_differences(saved, _saved(lam_mode="reopd", agopd_rho=0.1)) == []
    assert config_differences(saved, _saved(lam_mode="reopd", reopd_tau=0.5)) == ["reopd_tau"]
    assert config_differences(saved, _saved(lam_mode="agopd")) == ["lam_mode"]


@pytest.mark.parametrize(
    "schedule, refused",
    [
        (dict(), False),
        (dict(warmup_steps=3), False),  # warm-up alone does not depend on the run's length
        (dict(lr_schedule="cosine"), True),
        (dict(lr_schedule="linear"), True),
        (dict(mu=0.5), False),
        (dict(mu=0.5, mu_schedule="warmup_cosine"), True),
    ],
)
def test_resume_refuses_a_steps_change_that_reshapes_the_schedule(schedule, refused):
    saved, longer = _saved(steps=10, **schedule), _saved(steps=20, **schedule)
    assert config_differences(saved, longer) == (["steps"] if refused else [])
    assert config_differences(saved, _saved(steps=10, **schedule)) == []


def test_resume_steps_change_under_cosine_is_refused_naming_steps(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps(_saved(steps=10, lr_schedule="cosine", out_dir=str(out))))
    cfg = RunConfig(student="s", steps=20, lr_schedule="cosine", out_dir=str(out), resume=True)
    with pytest.raises(RunDirError, match=r"steps: saved 10, now 20"):
        prepare_run_dir(cfg, clear=True)


# ------------------------------------------------------------------------------------ trackers on resume / failure
def test_tensorboard_resume_does_not_duplicate_steps(tiny_dirs, tmp_path):
    """metrics.jsonl was cut back to the checkpoint on resume, but the event files kept the later rows."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    cfg = _cfg(tiny_dirs, out, steps=3, save_every=1, report_to="tensorboard")
    train(cfg, progress=False)
    for step in (2, 3):  # as if killed after step 3 was logged but only step 1 was checkpointed
        for f in (out / "checkpoints" / f"step_{step:06d}").iterdir():
            f.unlink()
        (out / "checkpoints" / f"step_{step:06d}").rmdir()
    train(cfg.replace(resume=True), progress=False)
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    metrics = _rows(out / "metrics.jsonl")
    assert [r["step"] for r in metrics] == [1, 2, 3]
    events = acc.Scalars("loss")
    assert [e.step for e in events] == [1, 2, 3]  # each step once: the interrupted run's 2 and 3 purged
    assert [e.value for e in events] == pytest.approx([r["loss"] for r in metrics], rel=1e-6)
    # the resumed writer asks every reader to drop events from step 2 on (purge_step), not only TensorBoard's
    # accumulator, which also drops out-of-order steps by itself
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    starts = [
        e.step
        for f in sorted((out / "tensorboard").iterdir())
        for e in EventFileLoader(str(f)).Load()
        if e.HasField("session_log") and e.session_log.status == e.session_log.START
    ]
    assert starts == [2]


def test_trackers_are_finished_when_the_run_fails(tiny_dirs, tmp_path, monkeypatch):
    calls = []

    class Run:
        def log(self, scalars, step):
            calls.append(("log", step))

        def finish(self):
            calls.append(("finish",))

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: Run()))

    def fail(step, metrics):
        raise RuntimeError("callback failed")

    with pytest.raises(RuntimeError, match="callback failed"):
        train(_cfg(tiny_dirs, tmp_path / "run", report_to="wandb"), callbacks=[fail], progress=False)
    assert calls.count(("finish",)) == 1 and calls[-1] == ("finish",)
