"""Data-parallel training with `accelerate launch` on CPU (gloo): 2 processes equal 1 process."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ARGS = ["--prompts", '["12+3=", "7*8=", "1+1=", "99+1="]', "--batch-size", "4", "--samples-per-prompt", "2",
        "--steps", "3", "--lam", "1.25", "--max-new-tokens", "4", "--device", "cpu", "--optimizer", "sgd", "--lr", "0.5"]


def _run(cmd, out, tiny_dirs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    full = [*cmd, "--student", tiny_dirs["student"], "--teacher", tiny_dirs["teacher"], *ARGS, "--out-dir", str(out)]
    proc = subprocess.run(full, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_two_cpu_processes_equal_one_process(tiny_dirs, tmp_path):
    accelerate = shutil.which("accelerate", path=str(Path(sys.executable).parent))
    if accelerate is None:
        pytest.skip("the accelerate launcher is not installed next to this interpreter")
    one, two = tmp_path / "one", tmp_path / "two"
    _run([sys.executable, "-m", "gopd_lab.cli", "train", "--row-seeded-sampling", "true"], one, tiny_dirs)
    _run([accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
          "--dynamo_backend", "no", "-m", "gopd_lab.cli", "train"], two, tiny_dirs)
    m1 = [json.loads(line) for line in (one / "metrics.jsonl").read_text().splitlines()]
    m2 = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert len(m1) == len(m2) == 3  # only the main process writes
    for a, b in zip(m1, m2):
        assert a["tokens"] == b["tokens"]  # the same samples were drawn, split over two processes
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-5)
    w1, w2 = load_file(str(one / "model" / "model.safetensors")), load_file(str(two / "model" / "model.safetensors"))
    w0 = load_file(str(Path(tiny_dirs["student"]) / "model.safetensors"))
    moved = max((w1[k] - w0[k]).abs().max().item() for k in w1)
    assert moved > 1e-3  # training changed the weights ...
    for k in w1:  # ... identically in both runs
        assert torch.allclose(w1[k], w2[k], atol=1e-5), k
