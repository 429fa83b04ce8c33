"""The bench scripts of the GPU path on CPU: the offline GPU check's dry run (bench/gpu_smoke.py at tiny shapes, the
151,936-row vocabulary kept), its message without CUDA, and ``bench/step.py --scoring-memory`` (which crashed on a
dense target: ``'Tensor' object has no attribute 'dense'``)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


@pytest.mark.slow
def test_the_offline_gpu_check_dry_run_builds_each_presets_pair_and_prints_its_table(tmp_path, capsys, caplog):
    import gpu_smoke

    presets = [str(ROOT / "configs" / f"{n}.yaml") for n in ("gpu-0.5b", "gpu-1.7b")]  # Qwen2 and Qwen3 pairs
    args = ["--dry-run", "--steps", "2", "--no-trl", "--out", str(tmp_path / "smoke.json")]
    assert gpu_smoke.main([*args, *sum((["--preset", p] for p in presets), [])]) == 0
    out = capsys.readouterr().out
    assert "gpu-0.5b.yaml (tiny (dry run) shapes)" in out and "estimate vs measured" in out
    assert (
        "271 rows beyond its tokenizer" in caplog.text
    )  # the padded 151,936-row vocabulary, masked as in the real one
    result = json.loads((tmp_path / "smoke.json").read_text())
    assert [p["preset"] for p in result["presets"]] == ["gpu-0.5b.yaml", "gpu-1.7b.yaml"]
    for preset in result["presets"]:
        assert [r["step"] for r in preset["rows"]] == [1, 2]
        for row in preset["rows"]:
            assert row["rollout_s"] > 0 and row["update_s"] > 0 and row["tok_per_s"] > 0
            assert 0 <= row["padded_share"] < 1
        assert {m["part"] for m in preset["memory"]} >= {"static", "scoring", "update", "peak"}
        assert not list((tmp_path).glob("**/model.safetensors"))  # no checkpoint written
    assert result["versions"]["torch"] == torch.__version__


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message printed without CUDA")
def test_gpu_smoke_exits_with_a_clear_message_without_cuda():
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_smoke.py")], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "needs a CUDA GPU" in done.stderr and "nothing was run" in done.stderr and "--dry-run" in done.stderr


def test_bench_step_scoring_memory_runs_on_a_target_below_the_lazy_threshold(tmp_path):
    """At the zoo's size the full estimator's target is small enough to be formed dense, which the bench read as
    a lazy one (``.dense()`` on a tensor)."""
    import step

    out = tmp_path / "step.json"
    step.main(["--scoring-memory-only", "--batch", "4", "--new-tokens", "4", "--chunk-tokens", "0", "--out", str(out)])
    rows = json.loads(out.read_text())["scoring_memory"]["rows"]
    lazy = next(r for r in rows if r["method"].startswith("score_rollout (lazy target"))
    dense = next(r for r in rows if r["method"].startswith("the same target materialised"))
    assert lazy["peak_MB"] > 0 and dense["peak_MB"] > 0
    assert all(r["chunk_tokens"] == "-" or "MiB" in str(r["chunk_tokens"]) for r in rows), "each row names its chunk"
