"""The fault suite, round 3 (issue 22): runs that mixed, configs that trained nothing, files that crashed.
docs/reliability.md lists each case. The teacher server, push, the port and the sweep are in
``test_faults_server.py``."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gopd_lab.cli import main
from gopd_lab.config import ConfigError, RunConfig
from gopd_lab.errors import DataError, ModelLoadError, RunDirError
from gopd_lab.loop.rundir import LOCK_NAME, RunLock
from gopd_lab.loop.train import train
from gopd_lab.runio import MAX_LINE_BYTES
from gopd_lab.world.tiny import save_tiny_model
from gopd_lab.world.tokenizer import build_char_tokenizer

PROMPTS = ["12+7=", "3*4=", "9+9=", "100-1="]


def _cfg(tiny_dirs, out, **kw) -> RunConfig:
    base = dict(
        student=tiny_dirs["student"],
        teacher=tiny_dirs["teacher"],
        device="cpu",
        dtype="float32",
        prompts=list(PROMPTS),
        batch_size=2,
        max_new_tokens=3,
        steps=2,
        lr=1e-2,
        out_dir=str(out),
        log_samples=0,
    )
    base.update(kw)
    if base.get("tasks"):
        base.pop("prompts")
    return RunConfig(**base)


def _one_line(err: str) -> str:
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ------------------------------------------------------------------------------------ one run per directory
@pytest.mark.slow
def test_two_train_processes_into_one_out_dir_second_is_refused_naming_the_pid(tiny_dirs, tmp_path):
    """Two `gopd-lab train` started half a second apart into one out_dir both exited 0, their metrics interleaved."""
    out = tmp_path / "run"
    args = ["--student", tiny_dirs["student"], "--teacher", tiny_dirs["teacher"], "--device", "cpu"]
    args += ["--prompts", "[12+7=, 3*4=]", "--batch-size", "2", "--max-new-tokens", "2", "--log-samples", "0"]
    cli = [sys.executable, "-m", "gopd_lab.cli", "train", *args, "--out-dir", str(out), "--steps", "100000"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = {}
    for lam in (1.0, 2.0):
        runs[lam] = subprocess.Popen([*cli, "--lam", str(lam)], env=env, stderr=subprocess.PIPE, text=True)
        time.sleep(0.5)
    try:
        for _ in range(2400):  # whichever comes second to the lock is refused; the other trains on
            if any(p.poll() is not None for p in runs.values()):
                break
            time.sleep(0.05)
        (lost,) = [lam for lam, p in runs.items() if p.poll() is not None]
        won = 3.0 - lost
        assert runs[lost].returncode == 2
        line = _one_line(runs[lost].stderr.read())
        assert f"process {runs[won].pid}" in line and "in use by another run" in line
        for _ in range(1200):
            if (out / "config.json").exists():
                break
            time.sleep(0.05)
        time.sleep(0.5)
        assert runs[won].poll() is None
        assert json.loads((out / "config.json").read_text())["lam"] == won  # only the winner's files
    finally:
        for p in runs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)  # a killed run: its flock goes with it, the lock file stays
            p.wait(timeout=30)
    assert (out / LOCK_NAME).exists()
    with RunLock(out) as lock:  # the stale lock file is taken over
        assert (out / LOCK_NAME).read_text().split()[0] == str(os.getpid()) and lock.fd is not None
    assert not (out / LOCK_NAME).exists()  # released on exit


def test_a_second_run_in_the_same_process_is_refused_while_the_first_holds_the_lock(tiny_dirs, tmp_path):
    out = tmp_path / "run"
    with RunLock(out):
        with pytest.raises(RunDirError, match=rf"process {os.getpid()} on .* holds .*{LOCK_NAME}"):
            train(_cfg(tiny_dirs, out), progress=False)
        assert not (out / "config.json").exists()
    train(_cfg(tiny_dirs, out, steps=1), progress=False)  # released: the next run goes
    assert not (out / LOCK_NAME).exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tiny_dirs, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / LOCK_NAME).write_text(f"{dead.stdout.strip()} {os.uname().nodename} 2026-01-01T00:00:00\n")
    train(_cfg(tiny_dirs, out, steps=1), progress=False)
    assert (out / "model").is_dir() and not (out / LOCK_NAME).exists()


def test_the_lock_is_released_when_the_run_fails(tiny_dirs, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ModelLoadError):
        train(_cfg(tiny_dirs, out, student=str(tmp_path / "no-model")), progress=False)
    assert not (out / LOCK_NAME).exists()
    with RunLock(out):
        pass


# ------------------------------------------------------------------------------------ out_dir on the file system
def test_out_dir_that_is_a_dangling_symlink_names_its_target(tiny_dirs, tmp_path):
    link = tmp_path / "run"
    link.symlink_to(tmp_path / "gone" / "run")
    with pytest.raises(RunDirError, match=r"symlink to .*gone/run, which does not exist"):
        train(_cfg(tiny_dirs, link), progress=False)


def test_read_only_out_dir_names_it_and_the_fix(tiny_dirs, tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    out.chmod(0o555)
    if os.geteuid() == 0:  # root writes into a 0555 folder anyway: the file system's answer is simulated
        real_open = os.open

        def refusing(path, *a, **k):
            if str(path).startswith(str(out)):
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *a, **k)

        monkeypatch.setattr(os, "open", refusing)
    try:
        with pytest.raises(RunDirError, match=rf"cannot write in {out} \(Permission denied\): make it writable"):
            train(_cfg(tiny_dirs, out), progress=False)
    finally:
        out.chmod(0o755)


def test_unwritable_tensorboard_folder_is_refused_before_the_run(tiny_dirs, tmp_path):
    pytest.importorskip("tensorboard")
    out = tmp_path / "run"
    out.mkdir()
    (out / "tensorboard").write_text("not a folder")  # and kept: overwrite clears run folders, not this file
    cfg = _cfg(tiny_dirs, out, report_to="tensorboard")
    with pytest.raises(RunDirError, match=r"tensorboard.* writes into .*tensorboard, which is a file"):
        train(cfg.replace(overwrite=True), progress=False)
    assert not (out / "config.json").exists()


# ------------------------------------------------------------------------------------ configs that cannot train
@pytest.mark.parametrize("method", ["grpo", "chord"])
def test_grpo_group_of_one_is_refused_naming_samples_per_prompt(method):
    """GRPO with the default samples_per_prompt=1 trained nothing (advantage 0 every step) and looked normal."""
    with pytest.raises(ConfigError, match=r"samples_per_prompt=1: .* trains nothing"):
        RunConfig(method=method, tasks="add", mu=0.5 if method == "chord" else 0.0)
    RunConfig(method=method, tasks="add", samples_per_prompt=2, mu=0.5 if method == "chord" else 0.0)


def test_prompts_with_tasks_is_refused_not_ignored():
    with pytest.raises(ConfigError, match="prompts and tasks are both given"):
        RunConfig(tasks="add", prompts=["1+1="])
    with pytest.raises(ConfigError, match="prompts and tasks are both given"):
        RunConfig(tasks="add", prompts="data/prompts.jsonl")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_on_a_cpu_torch_is_refused_before_any_model_loads(tmp_path):
    cfg = RunConfig(student=str(tmp_path / "no-model"), device="cuda", out_dir=str(tmp_path / "r"))
    with pytest.raises(ConfigError, match=r"device='cuda', but .*(without CUDA|no CUDA GPU)"):
        train(cfg, progress=False)  # not the ModelLoadError of the missing student: nothing was loaded
    with pytest.raises(ConfigError, match="device must be auto, cpu, cuda, cuda:N or mps, got 'meta'"):
        train(RunConfig(student=str(tmp_path / "no-model"), device="meta", out_dir=str(tmp_path / "m")), progress=False)


def test_prompt_plus_max_new_tokens_beyond_the_context_is_refused_before_step_0(tiny_dirs, tmp_path):
    cfg = _cfg(tiny_dirs, tmp_path / "run", max_new_tokens=125)  # a 6-token prompt + 125 > 128 positions
    with pytest.raises(ConfigError, match=r"max_new_tokens=125 .* beyond the student's context of 128"):
        train(cfg, progress=False)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_sft_target_beyond_the_context_is_refused_not_trained(tiny_dirs, tmp_path):
    """SFT on a 301-token answer trained it on a 128-position model without a word."""
    expert = tmp_path / "expert.jsonl"
    rows = [{"prompt": "1+1=", "answer": "2"}, {"prompt": "2+2=", "answer": "4" * 300}]
    expert.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = _cfg(tiny_dirs, tmp_path / "run", method="sft", tasks="add", expert_data=str(expert), eval_k=0)
    with pytest.raises(ConfigError, match=r"SFT example 1 of .*expert.jsonl .* 30\d tokens .* context of 128"):
        train(cfg, progress=False)


def test_enormous_single_prompt_line_is_refused_naming_the_line(tiny_dirs, tmp_path):
    """A single multi-megabyte prompt line took the tokenizer minutes and gigabytes, then aborted the process."""
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": "1+1="}) + "\n" + json.dumps({"prompt": "1+" * MAX_LINE_BYTES}) + "\n")
    t0 = time.perf_counter()
    with pytest.raises(DataError, match=r"prompts.jsonl, line 2: 2,097,16\d bytes in one row"):
        train(_cfg(tiny_dirs, tmp_path / "run", prompts=str(path)), progress=False)
    assert time.perf_counter() - t0 < 60  # refused before tokenizing (which took minutes)


# ------------------------------------------------------------------------------------ models
def test_eval_with_a_tokenizer_larger_than_the_embedding_is_one_line(tmp_path, capsys):
    """`gopd-lab eval` of a model whose tokenizer has more tokens than embedding rows was an IndexError."""
    tok = build_char_tokenizer()
    path = save_tiny_model(tmp_path / "m", tokenizer=tok)
    tok.add_tokens([f"<extra{i}>" for i in range(8)])
    tok.save_pretrained(path)
    assert main(["eval", "--model", str(path), "--tasks", "add", "--limit", "2", "--device", "cpu"]) == 2
    err = capsys.readouterr().err  # (the loading bars of transformers come before it)
    (line,) = [x for x in err.splitlines() if x.startswith("gopd-lab:")]
    assert "Traceback" not in err and "embedding has 104 rows" in line and "resize_token_embeddings" in line


def test_checkpoint_from_another_architecture_names_it(tiny_dirs, tmp_path):
    """A resumed run whose checkpoint holds another architecture's weights: a torch size-mismatch traceback."""
    student = Path(shutil.copytree(tiny_dirs["student"], tmp_path / "student"))
    cfg = _cfg(tiny_dirs, tmp_path / "run", student=str(student), save_every=1, steps=2)
    train(cfg, progress=False)
    shutil.rmtree(student)
    save_tiny_model(student, hidden=48)  # the same path now holds a wider model
    with pytest.raises(ModelLoadError, match=r"checkpoint .*step_000002 holds weights of another architecture"):
        train(cfg.replace(resume=True, steps=3), progress=False)


# ------------------------------------------------------------------------------------ found by the probes
@pytest.mark.parametrize("name", ["optimizer.pt", "rng.pt", "state.json"])
def test_damaged_checkpoint_file_names_it_not_a_traceback(tiny_dirs, tmp_path, name):
    """An empty optimizer.pt / rng.pt / state.json was an EOFError, miniz RuntimeError or JSONDecodeError."""
    cfg = _cfg(tiny_dirs, tmp_path / "run", save_every=1, steps=1)
    train(cfg, progress=False)
    (tmp_path / "run" / "checkpoints" / "step_000001" / name).write_bytes(b"")
    with pytest.raises(ModelLoadError, match=rf"step_000001/{name} cannot be read .* delete .*step_000001 to resume"):
        train(cfg.replace(resume=True, steps=2), progress=False)


def test_a_sweep_given_a_yaml_or_empty_file_as_its_notebook_is_one_line(tmp_path, capsys):
    spec = tmp_path / "spec.yaml"
    spec.write_text("notebook: x.ipynb\ngrid:\n  lam: [1,")
    assert main(["sweep", str(spec), "--grid", "lam=1", "--sweep-dir", str(tmp_path / "s")]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "is not a readable notebook" in line and "--spec" in line


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(expert_data="e.jsonl"), "expert_data='e.jsonl' is not read by method='gopd' with mu=0"),
        (dict(method="offpolicy", tasks="add", expert_data="e.jsonl"), "is not read by method='offpolicy'"),
        (dict(reference={}), "reference is an empty dict"),
        (dict(lora_r=4, lora_target_modules=[]), "lora_r > 0 with no lora_target_modules"),
        (dict(mu_valley=-1.0), r"mu_valley must be in \[0, 1\]"),
        (dict(eval_seed=-1), "eval_seed must be >= 0"),
    ],
)
def test_fields_that_were_silently_ignored_or_out_of_range_are_refused(fields, message):
    with pytest.raises(ConfigError, match=message):
        RunConfig(**fields)
