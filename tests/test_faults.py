"""The fault suite: what a user can get wrong, and what gopd_lab does about it (docs/reliability.md lists each
case). Run config, run directory, non-finite training, SFT's expert data, error messages and the CLI.
The teacher server, the sweep driver and the math verifier are in ``test_faults_services.py``."""

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from gopd_lab.cli import main
from gopd_lab.config import ConfigError, RunConfig
from gopd_lab.errors import DataError, DiskFullError, ModelLoadError, NonFiniteError, RunDirError, UserError
from gopd_lab.lm.models import load_model, load_tokenizer
from gopd_lab.lm.rollout import encode_prompts, load_prompts
from gopd_lab.loop.checkpoint import latest_checkpoint, save_checkpoint
from gopd_lab.loop.load import load_models
from gopd_lab.loop.train import train
from gopd_lab.runio import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl

PROMPTS = ["12+7=", "3*4=", "9+9=", "100-1=", "7*7="]


def _cfg(tiny_dirs, tmp_path, name="run", **kw):
    base = dict(
        student=tiny_dirs["student"],
        teacher=tiny_dirs["teacher"],
        device="cpu",
        dtype="float32",
        prompts=list(PROMPTS),
        batch_size=2,
        max_new_tokens=4,
        steps=2,
        lr=1e-2,
        out_dir=str(tmp_path / name),
        log_samples=0,
    )
    base.update(kw)
    if base.get("tasks"):
        base.pop("prompts")  # the tasks are the prompts (both given is refused)
    return RunConfig(**base)


def _weights(path) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in load_file(str(Path(path) / "model.safetensors")).items()}


def _nan_copy(src: str, dest: Path) -> str:
    """A copy of a tiny checkpoint with one NaN weight."""
    shutil.copytree(src, dest)
    weights = _weights(dest)
    name = next(k for k in weights if k.endswith("mlp.up_proj.weight"))
    weights[name][0, 0] = float("nan")
    save_file(weights, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return str(dest)


def _one_line(err: str) -> str:
    """The CLI's report of a user error: exactly one line (progress bars aside)."""
    (line,) = [x for x in err.splitlines() if x.startswith("gopd-lab:")]
    return line


# ------------------------------------------------------------------------------------ run config
@pytest.mark.parametrize(
    "field, value",
    [
        ("lr", float("nan")),
        ("lr", float("inf")),
        ("max_grad_norm", float("nan")),
        ("max_grad_norm", -1.0),
        ("max_grad_norm", 0.0),
        ("temperature", float("nan")),
        ("kl_coef", float("nan")),
        ("weight_decay", -1.0),
        ("batch_size", 2.5),
        ("steps", True),
        ("gamma", float("nan")),
        ("top_p", float("nan")),
        ("mu", float("inf")),
        ("lam", {"add": float("nan")}),
        ("seed", -1),
        ("tasks", "nosuch"),
        ("tasks", "missing_file.jsonl"),
        ("teacher", 3),
        ("extra", {"note": float("nan")}),
        ("device", "gpu"),
        ("out_dir", " "),
    ],
)
def test_bad_field_is_refused_at_construction_naming_it(field, value):
    with pytest.raises(ConfigError, match=field):
        RunConfig(student="never/loaded/model", **{field: value})


def test_batch_not_divisible_by_process_count_is_refused_before_loading(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ConfigError, match=r"batch_size=3 must be divisible by the 2"):
        RunConfig(student="never/loaded/model", batch_size=3)


def test_config_json_never_turns_nonfinite_into_null(tmp_path):
    """max_grad_norm=nan used to be saved as null, which reads back as "no clipping"."""
    path = tmp_path / "config.json"
    path.write_text('{"student": "s", "max_grad_norm": NaN}')
    with pytest.raises(ConfigError, match="max_grad_norm must be finite"):
        RunConfig.load(path)
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "c.json", {"max_grad_norm": float("nan")}, strict=True)
    cfg = RunConfig(student="s", max_grad_norm=None, lam={"add": 1.25})
    atomic_write_json(path, cfg.to_dict(), strict=True)
    assert RunConfig.load(path) == cfg


# ------------------------------------------------------------------------------------ run directory
def test_fresh_run_into_existing_run_dir_is_refused_unless_overwrite(tiny_dirs, tmp_path):
    first = _cfg(tiny_dirs, tmp_path, save_every=1)
    train(first, progress=False)
    with pytest.raises(RunDirError, match=r"already holds a run .*overwrite=True"):
        train(_cfg(tiny_dirs, tmp_path, lr=5e-3), progress=False)
    keep = Path(first.out_dir) / "notes.txt"
    keep.write_text("mine")
    train(_cfg(tiny_dirs, tmp_path, lr=5e-3, steps=1, overwrite=True), progress=False)
    out = Path(first.out_dir)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_000001"]  # the old run's are gone
    assert json.loads((out / "config.json").read_text())["lr"] == 5e-3
    assert keep.read_text() == "mine"  # files that are not run files are kept


def test_out_dir_that_is_a_file_is_refused(tiny_dirs, tmp_path):
    (tmp_path / "run").write_text("not a directory")
    with pytest.raises(RunDirError, match="is a file"):
        train(_cfg(tiny_dirs, tmp_path), progress=False)


def test_resume_with_a_changed_trajectory_field_is_refused_naming_it(tiny_dirs, tmp_path):
    cfg = _cfg(tiny_dirs, tmp_path, save_every=1)
    train(cfg, progress=False)
    with pytest.raises(RunDirError, match=r"lr: saved 0.01, now 0.5"):
        train(cfg.replace(lr=0.5, steps=3, resume=True), progress=False)
    history = train(cfg.replace(steps=3, eval_every=1, log_samples=1, resume=True), progress=False)
    assert list(history.step) == [1, 2, 3]  # length and logging cadence may change


def test_resume_finishes_a_final_save_cut_short(tiny_dirs, tmp_path):
    """kill -9 during the final save left model.tmp/ and no model/; resume reported the run finished."""
    cfg = _cfg(tiny_dirs, tmp_path)
    train(cfg, progress=False)
    out = Path(cfg.out_dir)
    expected = _weights(out / "model")
    (out / "model").rename(out / "model.tmp")
    (out / "model.tmp" / "model.safetensors").write_bytes(b"torn")
    train(cfg.replace(resume=True), progress=False)
    assert not (out / "model.tmp").exists()
    got = _weights(out / "model")
    assert all(torch.equal(expected[k], got[k]) for k in expected)


# ------------------------------------------------------------------------------------ non-finite
def test_nan_teacher_weight_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_dirs, tmp_path):
    cfg = _cfg(tiny_dirs, tmp_path, steps=4, save_every=1)
    models = load_models(cfg)
    student_before = {}

    def poison(step, metrics):
        if step == 2:  # after step 2's checkpoint: one NaN weight in the teacher
            student_before.update({k: v.clone() for k, v in models.student.state_dict().items()})
            models.teacher_for("default").model.layers[0].mlp.up_proj.weight.data[0, 0] = float("nan")

    with pytest.raises(NonFiniteError, match=r"step 3: non-finite loss .*step_000002 is kept"):
        train(cfg, models=models, callbacks=[poison], progress=False)
    out = Path(cfg.out_dir)
    assert latest_checkpoint(out).name == "step_000002" and not (out / "model").exists()
    for name, value in models.student.state_dict().items():  # the failing step was never taken
        assert torch.isfinite(value).all() and torch.equal(value, student_before[name])


def test_cli_exits_nonzero_on_a_nan_student_and_writes_no_model(tiny_dirs, tmp_path, capsys):
    student = _nan_copy(tiny_dirs["student"], tmp_path / "nan-student")
    out = tmp_path / "run"
    args = ["train", "--student", student, "--teacher", tiny_dirs["teacher"], "--prompts", '["1+1="]']
    args += ["--batch-size", "1", "--steps", "2", "--device", "cpu", "--out-dir", str(out), "--max-new-tokens", "3"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and [x for x in err.splitlines() if "non-finite loss" in x] == [_one_line(err)]
    assert not (out / "model").exists() and latest_checkpoint(out) is None


def test_checkpoint_of_nonfinite_weights_is_refused(tiny_dirs, tmp_path):
    model = load_model(tiny_dirs["student"], role="student", device=torch.device("cpu"), dtype=torch.float32)
    next(model.parameters()).data[0, 0] = float("inf")
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    with pytest.raises(NonFiniteError, match="refusing to write"):
        save_checkpoint(tmp_path, 1, model, opt, sched, {})
    assert latest_checkpoint(tmp_path) is None


# ------------------------------------------------------------------------------------ SFT expert data
def test_sft_expert_data_batches_are_drawn_over_the_expert_file(tiny_dirs, tmp_path):
    """Batches drawn over the task's prompts indexed the expert file: a short one crashed, a long one was cut."""
    expert = tmp_path / "expert.jsonl"
    rows = [{"prompt": "2+2=", "answer": "4"}, {"prompt": "3+3=", "answer": "6"}]
    expert.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _cfg(tiny_dirs, tmp_path, method="sft", tasks="add", expert_data=str(expert), batch_size=4)
    cfg = cfg.replace(log_samples=4, eval_k=0, eval_limit=1)
    train(cfg, progress=False)
    samples = [json.loads(x) for x in (Path(cfg.out_dir) / "samples.jsonl").read_text().splitlines()]
    assert {s["prompt"] for s in samples} == {"2+2=", "3+3="}


# ------------------------------------------------------------------------------------ messages
def test_missing_local_model_path_names_it_not_repo_id_rules(tiny_dirs, tmp_path):
    missing = str(tmp_path / "runs" / "x" / "model")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_models(_cfg(tiny_dirs, tmp_path, student=missing))
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_tokenizer("student-dir/")


def test_truncated_safetensors_names_the_file(tiny_dirs, tmp_path):
    broken = Path(shutil.copytree(tiny_dirs["student"], tmp_path / "broken"))
    data = (broken / "model.safetensors").read_bytes()
    (broken / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=r"broken/model\.safetensors is (damaged or )?truncated"):
        load_model(str(broken), role="student", device=torch.device("cpu"), dtype=torch.float32)


def test_truncated_checkpoint_names_the_file(tiny_dirs, tmp_path):
    cfg = _cfg(tiny_dirs, tmp_path, save_every=1)
    train(cfg, progress=False)
    ckpt = latest_checkpoint(cfg.out_dir) / "student.safetensors"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(ModelLoadError, match=str(ckpt)):
        train(cfg.replace(resume=True, steps=3), progress=False)


def test_full_disk_names_the_file(tmp_path, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("gopd_lab.runio.tempfile.mkstemp", no_space)
    with pytest.raises(DiskFullError, match=r"no space left .*summary\.json"):
        atomic_write_text(tmp_path / "summary.json", "{}")
    monkeypatch.setattr("gopd_lab.runio.open", no_space, raising=False)
    with pytest.raises(DiskFullError, match=r"metrics\.jsonl"):
        append_jsonl(tmp_path / "metrics.jsonl", [{"step": 1}])


def test_full_disk_during_a_checkpoint_names_it(tiny_dirs, tmp_path, monkeypatch):
    """torch.save wraps the failed write in a RuntimeError without errno: the free space decides."""
    model = load_model(tiny_dirs["student"], role="student", device=torch.device("cpu"), dtype=torch.float32)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)

    def torn(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file")

    monkeypatch.setattr("gopd_lab.loop.checkpoint.torch.save", torn)
    with pytest.raises(RuntimeError, match="PytorchStreamWriter"):  # space left: not a full disk
        save_checkpoint(tmp_path, 1, model, opt, sched, {})
    monkeypatch.setattr("gopd_lab.errors.shutil.disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 0))
    with pytest.raises(DiskFullError, match=r"checkpoints/step_000001\.tmp"):
        save_checkpoint(tmp_path, 1, model, opt, sched, {})
    assert latest_checkpoint(tmp_path) is None


def test_non_utf8_input_names_file_and_line(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_bytes(b'{"prompt": "1+1="}\n{"prompt": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"prompts\.jsonl, line 2: not UTF-8"):
        read_jsonl(path, strict=True)


def test_null_prompt_is_refused_not_trained_as_none(tiny_dirs, tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "1+1="}\n{"prompt": null}\n')
    with pytest.raises(DataError, match=r"prompts\.jsonl:2: field 'prompt' must be a string, got null"):
        load_prompts(str(path), load_tokenizer(tiny_dirs["student"]))


def test_non_ascii_prompt_is_refused_not_silently_unk(tiny_dirs):
    tok = load_tokenizer(tiny_dirs["student"])
    with pytest.raises(DataError, match=r"prompt 1 .*\['é'\].*<unk>"):
        encode_prompts(tok, ["1+1=", "café="])


def test_run_files_are_not_private(tmp_path, monkeypatch):
    """mkstemp made every atomically written run file mode 0600. The umask is set here (022): under a umask of
    077 the mode ``0666 & ~umask`` is 0600 too, and the test could not fail."""
    from gopd_lab import runio

    old = os.umask(0o022)
    try:
        monkeypatch.setattr(runio, "_UMASK", None)  # runio reads the umask once; read it under this one
        atomic_write_text(tmp_path / "summary.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "summary.json").stat().st_mode & 0o777 == 0o644


def test_cli_prints_user_errors_in_one_line_and_exits_2(tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    args = ["train", "--student", str(tmp_path / "no-model"), "--teacher", "t", "--prompts", str(missing)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "no-model" in _one_line(err)
    assert main(["train", "--student", "s", "--lr", "nan"]) == 2
    assert "lr must be finite" in capsys.readouterr().err


def test_cli_eval_unknown_task_is_one_line_not_a_keyerror_traceback(tiny_dirs, capsys):
    assert main(["eval", "--model", tiny_dirs["student"], "--tasks", "nosuch", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "unknown task 'nosuch'" in _one_line(err)


def test_user_errors_keep_their_builtin_bases():
    assert issubclass(ConfigError, ValueError) and issubclass(DataError, ConfigError)
    assert issubclass(ModelLoadError, RuntimeError) and issubclass(DiskFullError, OSError)
    assert all(issubclass(e, UserError) for e in (ConfigError, ModelLoadError, RunDirError, NonFiniteError))
