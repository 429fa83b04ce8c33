"""Data-parallel and sharded (FSDP) training with `accelerate launch` on CPU (gloo): 2 processes equal 1 process."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gopd_lab.config import ConfigError, RunConfig
from gopd_lab.scale.distributed import Distributed

ARGS = [
    "--prompts",
    '["12+3=", "7*8=", "1+1=", "99+1="]',
    "--batch-size",
    "4",
    "--samples-per-prompt",
    "2",
    "--steps",
    "3",
    "--lam",
    "1.25",
    "--max-new-tokens",
    "4",
    "--device",
    "cpu",
    "--optimizer",
    "sgd",
    "--lr",
    "0.5",
]
LAUNCH = ["launch", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]


def _run(cmd, out, tiny_dirs, *extra):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    full = [
        *cmd,
        "--student",
        tiny_dirs["student"],
        "--teacher",
        tiny_dirs["teacher"],
        *ARGS,
        *extra,
        "--out-dir",
        str(out),
    ]
    proc = subprocess.run(full, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _accelerate() -> str:
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if accelerate is None:
        pytest.skip("the accelerate launcher is not installed next to this interpreter")
    return accelerate


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(out: Path) -> dict:
    return load_file(str(out / "model" / "model.safetensors"))


@pytest.fixture(scope="module")
def one_process(tiny_dirs, tmp_path_factory):
    """The reference: one process on the whole global batch (samples from per-row seeds, as N processes draw them)."""
    out = tmp_path_factory.mktemp("one") / "run"
    _run([sys.executable, "-m", "gopd_lab.cli", "train", "--row-seeded-sampling", "true"], out, tiny_dirs)
    return out


def _assert_same_run(one: Path, other: Path, tiny_dirs) -> None:
    m1, m2 = _metrics(one), _metrics(other)
    assert len(m1) == len(m2) == 3  # only the main process writes
    for a, b in zip(m1, m2):
        assert a["tokens"] == b["tokens"]  # the same samples were drawn, split over two processes
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], abs=1e-5)  # the global norm, before clipping
    w1, w2 = _weights(one), _weights(other)
    w0 = load_file(str(Path(tiny_dirs["student"]) / "model.safetensors"))
    moved = max((w1[k] - w0[k]).abs().max().item() for k in w1)
    assert moved > 1e-3  # training changed the weights ...
    assert sorted(w1) == sorted(w2)  # ... both runs wrote the same save_pretrained files ...
    for k in w1:  # ... and changed them identically
        assert torch.allclose(w1[k], w2[k], atol=1e-5), k


@pytest.mark.slow
def test_two_cpu_processes_equal_one_process(tiny_dirs, one_process, tmp_path):
    two = tmp_path / "two"
    _run([_accelerate(), *LAUNCH, "--multi_gpu", "-m", "gopd_lab.cli", "train"], two, tiny_dirs)
    _assert_same_run(one_process, two, tiny_dirs)


@pytest.mark.slow
def test_fsdp_two_cpu_processes_equal_one_process_each_holding_half(tiny_dirs, one_process, tmp_path):
    fsdp = tmp_path / "fsdp"
    launch = [_accelerate(), *LAUNCH, "--use_fsdp", "-m", "gopd_lab.cli", "train"]
    proc = _run(launch, fsdp, tiny_dirs, "--save-every", "2")
    _assert_same_run(one_process, fsdp, tiny_dirs)

    # Each process held about half of the student's parameter elements (its shards of FSDP's DTensors) ...
    total = sum(t.numel() for t in load_file(str(Path(tiny_dirs["student"]) / "model.safetensors")).values())
    held = re.findall(r"gopd-lab fsdp: process (\d)/2 holds (\d+) of (\d+) student parameter elements", proc.stderr)
    assert sorted(rank for rank, _, _ in held) == ["0", "1"], proc.stderr[-3000:]
    assert sum(int(local) for _, local, _ in held) == total  # disjoint shards that together make the student
    for _, local, whole in held:
        assert int(whole) == total and 0.4 < int(local) / total < 0.6
    for row in _metrics(fsdp):  # ... and still does after every step (sharded parameters, not gathered copies)
        assert row["param_numel"] == total and 0.4 < row["local_param_numel"] / total < 0.6

    # Resume from the step-2 checkpoint (written from the gathered shards, loaded back into them): the same run.
    resumed = tmp_path / "resumed"
    shutil.copytree(fsdp, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_000003")
    shutil.rmtree(resumed / "model")
    _run(launch, resumed, tiny_dirs, "--save-every", "2", "--resume", "true")
    w_fsdp, w_resumed = _weights(fsdp), _weights(resumed)
    for k in w_fsdp:
        assert torch.allclose(w_fsdp[k], w_resumed[k], atol=1e-6), k
    assert [r["loss"] for r in _metrics(resumed)] == [r["loss"] for r in _metrics(fsdp)]


@pytest.mark.slow
def test_reopd_budget_two_cpu_processes_equal_one_process(tiny_dirs, tmp_path):
    """γ_b was formed from each process's shard alone; its statistics are now all-reduced: the same run as one
    process (reopd_tau = 1 so that q_t varies between the shards and the budget is not clipped at γ_max)."""
    reopd = ["--lam", "1", "--lam-mode", "reopd", "--reopd-tau", "1.0", "--reopd-gamma-max", "50"]
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, "-m", "gopd_lab.cli", "train", "--row-seeded-sampling", "true"], one, tiny_dirs, *reopd)
    _run([_accelerate(), *LAUNCH, "--multi_gpu", "-m", "gopd_lab.cli", "train"], two, tiny_dirs, *reopd)
    _assert_same_run(one, two, tiny_dirs)
    g1, g2 = [r["reopd_gamma_b"] for r in _metrics(one)], [r["reopd_gamma_b"] for r in _metrics(two)]
    assert all(0 < g < 50 for g in g1)  # neither zero nor clipped: the budget depends on mean q
    assert g2 == pytest.approx(g1, rel=1e-6)


def test_fsdp_refuses_what_it_cannot_run(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch --use_fsdp` sets
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ConfigError, match="needs at least 2"):
        Distributed(RunConfig())
    monkeypatch.setenv("WORLD_SIZE", "2")  # refused before any process group is joined
    with pytest.raises(ConfigError, match="LoRA"):
        Distributed(RunConfig(lora_r=4))
    with pytest.raises(ConfigError, match="sdpo"):
        Distributed(RunConfig(method="sdpo"))
    monkeypatch.setenv("FSDP_OFFLOAD_PARAMS", "true")
    with pytest.raises(ConfigError, match="--fsdp_offload_params"):
        Distributed(RunConfig())


def test_nccl_collectives_get_tensors_on_the_process_device_not_the_cpu(monkeypatch):
    """NCCL reduces CUDA tensors only: the token count of the update (``_global_tokens``), the metrics, and the
    lineage statistics all go through ``reduce_device`` (the CUDA device under NCCL, the CPU under gloo)."""
    from gopd_lab.loop.update import _global_tokens
    from gopd_lab.scale import distributed as D

    monkeypatch.setattr(D.dist, "get_backend", lambda: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert D.reduce_device() == torch.device("cuda", 3)
    monkeypatch.setattr(D.dist, "get_backend", lambda: "gloo")
    assert D.reduce_device() == torch.device("cpu")

    asked, reduced = [], []
    monkeypatch.setattr(D, "reduce_device", lambda: asked.append(1) or torch.device("cpu"))
    monkeypatch.setattr(D.dist, "all_reduce", lambda t: reduced.append(t.device) or t.mul_(2))
    d = Distributed.__new__(Distributed)
    d.world, d.rank, d.fsdp = 2, 0, False
    assert _global_tokens(torch.ones(2, 3), d) == 12.0  # both processes' 6 tokens
    assert d.mean_metrics({"loss": 1.5, "kl": 0.25, "name": "x"}) == {"loss": 3.0, "kl": 0.25, "name": "x"}
    assert torch.equal(d.sum_stats(torch.tensor([1.0, 2.0])), torch.tensor([2.0, 4.0], dtype=torch.float64))
    assert len(asked) == len(reduced) == 3
