"""gopd_lab vs TRL's on-policy distillation trainer: the same student, teacher, prompts and objective.

gopd_lab runs its stages (``sample`` → ``score_rollout`` → ``update``) with λ = 1 and ``estimator="full"``:
per state ``KL(π_θ ‖ π_T)`` over the whole vocabulary on the student's own samples. TRL runs
``trl.DistillationTrainer`` (TRL ≥ 1.x; the experimental ``GKDTrainer`` is its predecessor) with ``beta=1.0``
(reverse KL) on completions it generates itself every step (fully on-policy, what ``lmbda=1.0`` meant in
``GKDTrainer``). Both: float32 on CPU, the same thread count, torch's fused AdamW (no weight decay; the Trainer's default on torch ≥ 2.8, and what ``gopd_lab.loop.train`` uses), constant learning rate,
gradient clipping at 1.0, temperature 1, full-vocabulary sampling (top-k 0, top-p 1), completions of at most
``--new-tokens`` tokens that stop at EOS (the EOS token is trained on, later positions are masked: both
trainers do this; random models almost never sample EOS, so theirs run the full length), no gradient checkpointing (TRL's default is on; ``--trl-gradient-checkpointing`` turns
it back on), the same prompts in the same order.

Runs alternate (gopd_lab, TRL, gopd_lab, TRL, ...) in one process; the first step of each run is a warm-up
and is not timed. Per step time = wall clock of rollout + scoring + loss + backward + optimizer step (TRL:
``on_step_begin`` → ``on_step_end``). The final reverse KL of each trained student is measured the same way
for both: fresh samples of that student on fixed held-out prompts, exact per-state
``Σ_v π_θ (log π_θ − log π_T)`` averaged over tokens.

    .venv/bin/pip install trl          # bench-only extra: pip install -e '.[bench]'
    python bench/vs_trl.py --setting zoo --setting v151936_b4 --setting v151936_b32
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import build_world, print_table, set_threads, stats, task_prompts, write_json  # noqa: E402

from gopd_lab.config import RunConfig  # noqa: E402
from gopd_lab.lm.logprobs import full_logprobs  # noqa: E402
from gopd_lab.lm.models import Models  # noqa: E402
from gopd_lab.lm.rollout import sample  # noqa: E402
from gopd_lab.loop.schedules import make_optimizer  # noqa: E402
from gopd_lab.loop.update import update  # noqa: E402
from gopd_lab.scorers.score import score_rollout  # noqa: E402

SETTINGS = {  # lr / steps: enough for the reverse KL to move visibly in a few steps, not so much that it overshoots
    "zoo": dict(vocab=0, batch=32, lr=3e-4, steps=8),
    "v151936_b4": dict(vocab=151936, batch=4, lr=1e-3, steps=5),
    "v151936_b32": dict(vocab=151936, batch=32, lr=1e-3, steps=5),
}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--setting", action="append", choices=sorted(SETTINGS), help="repeatable; default: all")
    p.add_argument("--student", default="zoo:student-base")
    p.add_argument("--teacher", default="zoo:teacher-add")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--steps", type=int, default=0, help="steps per run, the first untimed (0: the setting's)")
    p.add_argument("--repeats", type=int, default=3, help="alternating (gopd_lab, TRL) run pairs")
    p.add_argument("--lr", type=float, default=0.0, help="learning rate (0: the setting's)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--eval-prompts", type=int, default=32)
    p.add_argument("--trl-gradient-checkpointing", action="store_true")
    p.add_argument("--out", default="bench/results/vs_trl.json")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------- the two runs
def run_gopd(base, teacher, tok, prompts, args, batch) -> dict:
    student = copy.deepcopy(base).train()
    opt = make_optimizer(
        [p for p in student.parameters() if p.requires_grad],
        argparse.Namespace(optimizer="adamw", lr=args.lr, weight_decay=0.0),
    )  # fused AdamW, as train() uses
    models = Models(student, tok, {"default": teacher})
    settings = RunConfig(estimator="full", max_grad_norm=1.0)
    gen = torch.Generator().manual_seed(0)
    times, cpu, losses, lengths = [], [], [], []
    for step in range(args.steps):
        t0, c0 = time.perf_counter(), time.process_time()
        ro = sample(
            student,
            prompts.select(range(step * batch, (step + 1) * batch)),
            max_new_tokens=args.new_tokens,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            generator=gen,
        )
        scored = score_rollout(models, ro, 1.0, estimator="full")
        result = update(student, opt, scored, settings)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        losses.append(result.metrics["loss"])
        lengths.append(result.metrics["completion_len"])
    return {"student": student, "step_s": times[1:], "step_cpu_s": cpu[1:], "loss": losses, "completion_len": lengths}


def run_trl(base, teacher, tok, prompts, args, batch) -> dict:
    import warnings

    from datasets import Dataset
    from transformers import PrinterCallback, TrainerCallback
    from trl import DistillationConfig, DistillationTrainer

    warnings.filterwarnings("ignore", category=FutureWarning)

    class Timer(TrainerCallback):
        def __init__(self):
            self.times, self.cpu, self.losses, self.lengths, self._t0, self._c0 = [], [], [], [], 0.0, 0.0

        def on_step_begin(self, *a, **k):
            self._t0, self._c0 = time.perf_counter(), time.process_time()

        def on_step_end(self, *a, **k):
            self.times.append(time.perf_counter() - self._t0)
            self.cpu.append(time.process_time() - self._c0)

        def on_log(self, _args, _state, _control, logs=None, **k):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))
                self.lengths.append(float(logs["completions/mean_length"]))

    student = copy.deepcopy(base).train()
    timer = Timer()
    with tempfile.TemporaryDirectory() as out:
        cfg = DistillationConfig(
            output_dir=out,
            per_device_train_batch_size=batch,
            gradient_accumulation_steps=1,
            max_steps=args.steps,
            learning_rate=args.lr,
            lr_scheduler_type="constant",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            optim="adamw_torch_fused",
            beta=1.0,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            max_completion_length=args.new_tokens,
            gradient_checkpointing=args.trl_gradient_checkpointing,
            bf16=False,
            fp16=False,
            use_cpu=True,
            report_to="none",
            save_strategy="no",
            logging_steps=1,
            disable_tqdm=True,
            seed=0,
            shuffle_dataset=False,
            dataloader_num_workers=0,
        )
        data = Dataset.from_dict({"prompt": prompts.texts[: args.steps * batch]})
        trainer = DistillationTrainer(
            model=student, teacher_model=teacher, args=cfg, train_dataset=data, processing_class=tok, callbacks=[timer]
        )
        trainer.remove_callback(PrinterCallback)  # logs are kept by the timer, not printed
        trainer.train()
    torch.set_num_threads(args.threads)  # in case the Trainer touched it
    return {
        "student": trainer.model.eval(),
        "step_s": timer.times[1:],
        "step_cpu_s": timer.cpu[1:],
        "loss": timer.losses,
        "completion_len": timer.lengths,
    }


@torch.no_grad()
def reverse_kl(student, teacher, tok, prompts, new_tokens: int) -> float:
    """Mean over the student's own sampled tokens of the exact ``KL(π_θ(·|s_t) ‖ π_T(·|s_t))``."""
    ro = sample(
        student,
        prompts,
        max_new_tokens=new_tokens,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        generator=torch.Generator().manual_seed(1234),
    )
    kl, n = 0.0, 0
    for lo in range(0, len(ro), 4):  # 4 rows at a time: two (N, V) float32 tensors at V = 151,936
        sub = ro.select(list(range(lo, min(lo + 4, len(ro)))))
        lp_s, lp_t = full_logprobs(student, sub), full_logprobs(teacher, sub)  # (N, V)
        kl += float((lp_s.exp() * (lp_s - lp_t)).sum())
        n += lp_s.shape[0]
    return kl / max(n, 1)


def bench_setting(name: str, args) -> dict:
    spec = SETTINGS[name]
    batch = spec["batch"]
    args = argparse.Namespace(**{**vars(args), "steps": args.steps or spec["steps"], "lr": args.lr or spec["lr"]})
    w = build_world(
        student=args.student, teacher=args.teacher, vocab=spec["vocab"], hidden=args.hidden, layers=args.layers
    )
    pool = task_prompts(w.tokenizer, args.steps * batch + args.eval_prompts)  # text prompts: both sides tokenise them
    train_prompts = pool.select(range(args.steps * batch))
    eval_prompts = pool.select(range(args.steps * batch, len(pool)))
    print(
        f"\n== {name}: {w.name}; batch {batch} x <= {args.new_tokens} new tokens; lr {args.lr:g}; {args.steps} steps/run "
        f"(first untimed); {args.repeats} alternating pairs; {args.threads} thread(s)",
        flush=True,
    )
    kl0 = reverse_kl(w.student, w.teacher, w.tokenizer, eval_prompts, args.new_tokens)
    runs = {"gopd_lab": [], "trl": []}
    for rep in range(args.repeats):
        for side, fn in (("gopd_lab", run_gopd), ("trl", run_trl)):
            torch.manual_seed(rep)
            r = fn(w.student, w.teacher, w.tokenizer, train_prompts, args, batch)
            r["final_reverse_kl"] = reverse_kl(r.pop("student"), w.teacher, w.tokenizer, eval_prompts, args.new_tokens)
            runs[side].append(r)
            print(
                f"  rep {rep} {side:8s} step median {statistics.median(r['step_s']):.3f}s wall "
                f"{statistics.median(r['step_cpu_s']):.3f}s CPU  train loss "
                f"{r['loss'][0]:.4f} -> {r['loss'][-1]:.4f}  final reverse KL {r['final_reverse_kl']:.4f}",
                flush=True,
            )
    ratios = {
        c: [statistics.median(t[c]) / statistics.median(g[c]) for g, t in zip(runs["gopd_lab"], runs["trl"])]
        for c in ("step_s", "step_cpu_s")
    }
    rows = []
    for side in ("gopd_lab", "trl"):
        wall = stats([s for r in runs[side] for s in r["step_s"]])
        cpu = stats([s for r in runs[side] for s in r["step_cpu_s"]])
        rows.append(
            {
                "trainer": side,
                "wall_median_s": wall["median"],
                "wall_min_max_s": f"{wall['min']:.3g}-{wall['max']:.3g}",
                "cpu_median_s": cpu["median"],
                "cpu_min_max_s": f"{cpu['min']:.3g}-{cpu['max']:.3g}",
                "mean_completion_len": statistics.mean(x for r in runs[side] for x in r["completion_len"]),
                "first_step_loss": statistics.median(r["loss"][0] for r in runs[side]),
                "last_step_loss": statistics.median(r["loss"][-1] for r in runs[side]),
                "reverse_kl_init": kl0,
                "reverse_kl_final": statistics.median(r["final_reverse_kl"] for r in runs[side]),
            }
        )
    print_table(rows, list(rows[0]), title=f"{name}: per-step time and reverse KL")
    summary = {c: stats(v) for c, v in ratios.items()}
    for c, label in (("step_s", "wall"), ("step_cpu_s", "CPU")):
        r = summary[c]
        print(
            f"TRL / gopd_lab per-step {label} time (median per run, {len(ratios[c])} pairs): "
            f"median {r['median']:.2f}  min {r['min']:.2f}  max {r['max']:.2f}"
        )
    for side in runs:
        for run in runs[side]:
            run.pop("student", None)
    return {
        "setting": w.name,
        "batch": batch,
        "lr": args.lr,
        "steps": args.steps,
        "ratio_trl_over_gopd": summary,
        "ratios": ratios,
        "rows": rows,
        "runs": runs,
        "reverse_kl_init": kl0,
    }


def main(argv=None) -> None:
    args = parse(argv)
    set_threads(args.threads)
    try:
        import trl
    except ImportError:
        sys.exit("TRL is not installed: .venv/bin/pip install trl (or pip install -e '.[bench]')")
    results = {"trl_version": trl.__version__, "torch_version": torch.__version__, "args": vars(args), "settings": {}}
    for name in args.setting or list(SETTINGS):
        results["settings"][name] = bench_setting(name, args)
        write_json(args.out, results)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
