"""A 20-step smoke run of a GPU preset on one GPU: per-step stage times, tokens and peak memory, as a table.

    python bench/gpu_smoke.py                                   # configs/gpu-0.5b.yaml, 20 steps
    python bench/gpu_smoke.py --config configs/gpu-1.7b.yaml --steps 20
    python bench/gpu_smoke.py --config configs/gpu-1.5b.yaml --set micro_batch_size=4 rollout_backend=vllm

It downloads the preset's checkpoints from the Hugging Face hub unless they are cached (or the preset names local
directories). Evaluation and checkpoints are off; the run directory is a temporary one. Peak memory is
``torch.cuda.max_memory_allocated`` over each step (reset after every step), so it can be set against the
estimates written in the preset. Without CUDA it exits at once with a message and status 2.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from _common import print_table, write_json  # noqa: E402

from gopd_lab.config import RunConfig  # noqa: E402


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(ROOT / "configs" / "gpu-0.5b.yaml"))
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="RunConfig overrides (YAML values)")
    p.add_argument("--out", default="bench/results/gpu_smoke.json")
    return p.parse_args(argv)


def overrides(items: list[str]) -> dict:
    from gopd_lab.config import parse_value

    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--set takes FIELD=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key] = parse_value(value)  # `lr=1e-3` is a number, as in config files
    return out


class StepRecorder:
    """``on_step`` callback: the step's metrics plus the peak CUDA allocation since the previous step."""

    def __init__(self):
        self.rows: list[dict] = []
        torch.cuda.reset_peak_memory_stats()

    def on_step(self, step: int, metrics: dict) -> None:
        peak = torch.cuda.max_memory_allocated() / 2**30
        torch.cuda.reset_peak_memory_stats()
        self.rows.append(
            {
                "step": step,
                "loss": metrics.get("loss"),
                "tokens": metrics.get("tokens"),
                "completion_len": metrics.get("completion_len"),
                "rollout_s": metrics.get("time_rollout"),
                "score_s": metrics.get("time_score"),
                "update_s": metrics.get("time_update"),
                "step_s": metrics.get("time_step"),
                "peak_GiB": peak,
            }
        )


def main(argv=None) -> int:
    args = parse(argv)
    if not torch.cuda.is_available():
        print(
            "bench/gpu_smoke.py needs a CUDA GPU and torch.cuda.is_available() is False here; nothing was run. "
            "Run it on a GPU machine (a CUDA build of torch: `make setup TORCH=torch`).",
            file=sys.stderr,
        )
        return 2
    from gopd_lab.loop.train import train

    cfg = RunConfig.load(args.config)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = cfg.replace(
            **{
                "steps": args.steps,
                "out_dir": str(Path(tmp) / "run"),
                "save_every": 0,
                "eval_every": 0,
                "resume": False,
                **overrides(args.set),
            }
        )
        recorder = StepRecorder()
        t0 = time.perf_counter()
        train(cfg, evaluate=lambda student, step: [], callbacks=[recorder], progress=False)
        wall = time.perf_counter() - t0
    rows = recorder.rows
    print_table(
        rows, list(rows[0]), title=f"{Path(args.config).name}: {args.steps} steps on {torch.cuda.get_device_name()}"
    )
    steady = rows[1:] or rows  # step 1 includes CUDA warm-up
    summary = {
        "median_step_s": statistics.median(r["step_s"] for r in steady),
        "median_rollout_s": statistics.median(r["rollout_s"] for r in steady),
        "median_score_s": statistics.median(r["score_s"] for r in steady),
        "median_update_s": statistics.median(r["update_s"] for r in steady),
        "completion_tokens_per_s": sum(r["tokens"] for r in steady) / sum(r["step_s"] for r in steady),
        "peak_GiB": max(r["peak_GiB"] for r in rows),
        "wall_s_including_load": wall,
    }
    print_table([summary], list(summary), title="summary (steps 2.. ; peak over all steps)")
    write_json(args.out, {"config": cfg.to_dict(), "device": torch.cuda.get_device_name(), "rows": rows, **summary})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
