"""The offline GPU check: every GPU preset's pair at its real shapes, random weights, the hf backend, a few steps.

    python bench/gpu_smoke.py                                  # all presets (configs/gpu-*.yaml), 2 steps each
    python bench/gpu_smoke.py --preset configs/gpu-0.5b.yaml --steps 3
    python bench/gpu_smoke.py --dry-run                        # CPU, tiny shapes (the 151,936-row vocabulary kept)

Nothing is downloaded and no token is needed: each preset's student and teacher are built from the dimensions the
preset states (``bench/gpu_pairs.py``: Qwen2 / Qwen3 configs, a stand-in of the 151,665-token Qwen tokenizer with
its chat template, output layers padded to 151,936 / 152,064 rows, random weights made on the device). The run is
the library's own :func:`gopd_lab.loop.train.train` on the preset's config (its batch, ``max_new_tokens``,
micro-batches, mixed precision, gradient checkpointing), with evaluation off and no checkpoint written (the loop's
two save functions are replaced by no-ops here; the run directory is a temporary one). Random students rarely
sample EOS, so completions run the full ``max_new_tokens``: the worst case of the preset's shape.

One table per preset, one row per step (step 1 includes CUDA warm-up): rollout / scoring / update / step seconds,
completion tokens per second, for each stage ``torch.cuda.max_memory_allocated`` (``*_alloc``) and the device-level
peak (``*_dev``: total − free memory of the device, sampled every 5 ms by a thread, so it also sees memory outside
torch's allocator, e.g. vLLM's), the padded share of the update's ``(B, P + C)`` token grid, then the estimates of
:mod:`gopd_lab.scale.gpu_memory` beside the measured figures, and the versions. Where ``trl`` is importable, TRL's
``DistillationTrainer`` runs the same pair and batch for the same steps (``--no-trl`` skips it). Without CUDA (and
without ``--dry-run``) it exits at once with a message and status 2. ``tests/test_gpu_smoke.py`` runs the dry run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
from _common import print_table, write_json  # noqa: E402
from gpu_pairs import random_load_model, write_pair  # noqa: E402

from gopd_lab.config import RunConfig  # noqa: E402

GIB = 2**30
PRESETS = sorted(str(p) for p in (ROOT / "configs").glob("gpu-*.yaml"))
DRY = dict(
    device="cpu",
    dtype="float32",
    mixed_precision=False,
    batch_size=4,
    micro_batch_size=2,
    max_new_tokens=6,
    eval_limit=4,
)
"""What ``--dry-run`` changes in each preset (CPU, float32, a small batch)."""


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", action="append", default=[], help="a preset YAML (repeatable; default: all)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes: checks the script, measures nothing real")
    p.add_argument("--set", nargs="*", default=[], metavar="FIELD=VALUE", help="RunConfig overrides (YAML values)")
    p.add_argument("--no-trl", action="store_true", help="skip TRL's DistillationTrainer even where it is importable")
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


class DevicePeak:
    """The device's used memory (total − free, all processes) sampled every ``every`` seconds by a thread."""

    def __init__(self, device: torch.device, every: float = 0.005):
        self.device, self.every, self.peak = device, every, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        if device.type == "cuda":
            self._thread.start()

    def used(self) -> int:
        if self.device.type != "cuda":
            return 0
        free, total = torch.cuda.mem_get_info(self.device)
        return total - free

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.used())
            time.sleep(self.every)

    def take(self) -> int:
        """The peak since the last call (then restarted from the current use)."""
        peak, self.peak = max(self.peak, self.used()), self.used()
        return peak

    def stop(self):
        self._stop.set()


class StageRecorder:
    """Per stage of each step: the torch allocator's peak and the device-level peak (reset at every stage's end),
    read by wrapping :class:`~gopd_lab.loop.step.StepContext`'s stage marks; the rollout's padded share."""

    def __init__(self, device: torch.device):
        self.device, self.rows, self.stage = device, [], {}
        self.cuda = device.type == "cuda"
        self.dev = DevicePeak(device)
        self.held = None
        """Allocated at the start of the last step (weights, AdamW moments, teacher, reference): the static part."""

    def allocated(self) -> int:
        return torch.cuda.memory_allocated(self.device) if self.cuda else 0

    def _reset(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        self.dev.take()

    def mark(self, stage: str) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        self.stage[f"{stage}_alloc"] = torch.cuda.max_memory_allocated(self.device) / GIB if self.cuda else None
        self.stage[f"{stage}_dev"] = self.dev.take() / GIB if self.cuda else None
        self._reset()

    def rollout(self, r) -> None:
        grid = r.prompt_mask.numel() + r.completion_mask.numel()
        self.stage["padded_share"] = 1.0 - float(r.prompt_mask.sum() + r.completion_mask.sum()) / grid
        self.stage["prompt_len"] = int(r.prompt_mask.shape[1])

    def on_step(self, step: int, metrics: dict) -> None:
        self.mark("update")
        tokens = metrics.get("tokens") or 0
        self.rows.append(
            {
                "step": step,
                "rollout_s": metrics.get("time_rollout"),
                "score_s": metrics.get("time_score"),
                "update_s": metrics.get("time_update"),
                "step_s": metrics.get("time_step"),
                "tok_per_s": tokens / metrics["time_step"] if metrics.get("time_step") else None,
                **self.stage,
            }
        )
        self.stage = {}


def install_hooks(recorder: StageRecorder):
    """Wrap the stage marks and the rollout of :class:`StepContext`, make models from configs with random weights,
    and make the loop's checkpoint saves no-ops; returns the function that undoes all of it."""
    from gopd_lab.loop import load, step, train

    saved = {
        (step.StepContext, "_mark"): step.StepContext._mark,
        (step.StepContext, "_stage1"): step.StepContext._stage1,
        (load, "load_model"): load.load_model,
        (train, "save_checkpoint"): train.save_checkpoint,
        (train, "save_final_model"): train.save_final_model,
    }
    mark, stage1 = saved[(step.StepContext, "_mark")], saved[(step.StepContext, "_stage1")]

    def _mark(self, stage):
        mark(self, stage)
        recorder.mark(stage)

    def _stage1(self, make, gather):
        recorder.held = recorder.allocated() / GIB if recorder.cuda else None
        recorder._reset()
        r = stage1(self, make, gather)
        recorder.rollout(r)
        return r

    step.StepContext._mark, step.StepContext._stage1 = _mark, _stage1
    load.load_model = random_load_model
    train.save_checkpoint = train.save_final_model = lambda *a, **k: None

    def undo():
        for (owner, name), value in saved.items():
            setattr(owner, name, value)
        recorder.dev.stop()

    return undo


def versions() -> dict:
    import transformers

    import gopd_lab

    out = {"torch": torch.__version__, "transformers": transformers.__version__, "gopd_lab": gopd_lab.__version__}
    out["cuda"] = torch.version.cuda or "none"
    out["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    try:
        import trl

        out["trl"] = trl.__version__
    except ImportError:
        out["trl"] = "not installed"
    return out


def run_preset(preset: str, args) -> dict:
    from gopd_lab.lm.logprobs import CHUNK_BYTES, CUDA_CHUNK_BYTES
    from gopd_lab.loop.train import train
    from gopd_lab.scale.gpu_memory import estimate

    with tempfile.TemporaryDirectory() as tmp:
        s_path, t_path, sd, td, _ = write_pair(preset, tmp, tiny=args.dry_run)
        cfg = RunConfig.load(preset).replace(
            student=str(s_path),
            teacher=str(t_path),
            steps=args.steps,
            out_dir=str(Path(tmp) / "run"),
            save_every=0,
            eval_every=0,
            eval_k=0,
            resume=False,
            log_samples=0,
            **(DRY if args.dry_run else {}),
            **overrides(args.set),
        )
        device = torch.device(cfg.device)
        recorder = StageRecorder(device)
        undo = install_hooks(recorder)
        t0 = time.perf_counter()
        try:
            train(cfg, evaluate=lambda student, step: [], callbacks=[recorder], progress=False)
        finally:
            undo()
        wall = time.perf_counter() - t0
        trl = None if args.no_trl else run_trl(cfg, args)
    rows = cfg.batch_size * cfg.samples_per_prompt
    positions = recorder.rows[0]["prompt_len"] + cfg.max_new_tokens
    half = cfg.dtype in ("bfloat16", "auto") and device.type == "cuda"
    expected = estimate(
        sd,
        td,
        rows=rows,
        positions=positions,
        micro_rows=cfg.micro_batch_size or rows,
        chunk_bytes=CUDA_CHUNK_BYTES if device.type == "cuda" else CHUNK_BYTES,
        mixed_precision=half and cfg.mixed_precision,
        act_bytes=2 if half else 4,
        teacher_bytes=2 if half else 4,
        reference=any(lam != 1 for _, lam in cfg.lam_items()),
    )
    last = recorder.rows[-1]

    def above_static(stage):  # the estimate's phases are what a stage adds to the static part
        return None if recorder.held is None else last[f"{stage}_alloc"] - recorder.held

    measured = {
        "static": recorder.held,
        "rollout": above_static("rollout"),
        "scoring": above_static("score"),
        "update": above_static("update"),
        "peak": max(last[f"{s}_alloc"] for s in ("rollout", "score", "update")) if recorder.cuda else None,
    }
    memory = [{"part": k, "estimate_GiB": v, "measured_GiB": measured.get(k)} for k, v in expected.items()]
    return {
        "preset": Path(preset).name,
        "shapes": "tiny (dry run)" if args.dry_run else "real",
        "rows": recorder.rows,
        "memory": memory,
        "wall_s_including_build": wall,
        "trl": trl,
        "config": cfg.to_dict(),
    }


def run_trl(cfg: RunConfig, args) -> dict | None:
    """TRL's ``DistillationTrainer`` on the same pair (random weights, same seeds), batch and steps; None without
    TRL. Reverse KL (``beta=1``) on its own completions; the ratio is TRL's median step time over gopd_lab's."""
    try:
        from trl import DistillationConfig, DistillationTrainer
    except ImportError:
        return None
    from datasets import Dataset
    from transformers import AutoTokenizer, PrinterCallback, TrainerCallback

    from gopd_lab.tasks import load_tasks

    class Timer(TrainerCallback):
        times: list[float] = []

        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.t0)

    device = torch.device(cfg.device)
    dtype = torch.bfloat16 if cfg.dtype == "bfloat16" else torch.float32
    tok = AutoTokenizer.from_pretrained(cfg.student)
    student = random_load_model(cfg.student, role="student", device=device, dtype=torch.float32).train()
    teacher = random_load_model(cfg.teacher, role="teacher", device=device, dtype=dtype)
    tasks = load_tasks(cfg.task_names)
    prompts = [e.prompt for t in tasks.values() for e in t.train][: cfg.batch_size * args.steps]
    timer = Timer()
    with tempfile.TemporaryDirectory() as out:
        tcfg = DistillationConfig(
            output_dir=out,
            per_device_train_batch_size=cfg.batch_size,
            max_steps=args.steps,
            learning_rate=cfg.lr,
            beta=1.0,
            temperature=cfg.temperature,
            max_completion_length=cfg.max_new_tokens,
            gradient_checkpointing=cfg.gradient_checkpointing,
            bf16=dtype == torch.bfloat16,
            use_cpu=device.type == "cpu",
            report_to="none",
            save_strategy="no",
            logging_steps=1,
            disable_tqdm=True,
            seed=cfg.seed,
        )
        data = Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in prompts]})
        trainer = DistillationTrainer(
            model=student, teacher_model=teacher, args=tcfg, train_dataset=data, processing_class=tok, callbacks=[timer]
        )
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    return {"step_s": timer.times}


def print_preset(result: dict) -> None:
    rows = result["rows"]
    cols = ["step", "rollout_s", "score_s", "update_s", "step_s", "tok_per_s"]
    cols += [f"{s}_{k}" for s in ("rollout", "score", "update") for k in ("alloc", "dev")] + ["padded_share"]
    print_table(rows, cols, title=f"{result['preset']} ({result['shapes']} shapes): per step; memory in GiB")
    print_table(
        result["memory"],
        ["part", "estimate_GiB", "measured_GiB"],
        title="memory: gopd_lab/scale/gpu_memory.py's estimate vs measured (max_memory_allocated; phases above static)",
    )
    trl = result["trl"]
    if trl is not None and trl["step_s"]:
        import statistics

        ours = statistics.median(r["step_s"] for r in rows[1:] or rows)
        theirs = statistics.median(trl["step_s"][1:] or trl["step_s"])
        print(
            f"TRL DistillationTrainer: median step {theirs:.2f} s vs gopd_lab {ours:.2f} s (ratio {theirs / ours:.2f})"
        )


def main(argv=None) -> int:
    args = parse(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print(
            "bench/gpu_smoke.py needs a CUDA GPU and torch.cuda.is_available() is False here; nothing was run. "
            "Run it on a GPU machine (a CUDA build of torch: `make setup TORCH=torch`), or pass --dry-run.",
            file=sys.stderr,
        )
        return 2
    results = []
    for preset in args.preset or PRESETS:
        results.append(run_preset(preset, args))
        print_preset(results[-1])
    info = versions()
    print_table([info], list(info), title="versions")
    write_json(args.out, {"versions": info, "presets": results})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
