"""One G-OPD step, stage by stage, against a naive baseline; scoring's memory against a naive log-softmax.

Stages (what ``train`` runs each step, without the run files): rollout (``rollout.sample``), scoring
(``score.score_rollout``: the teacher alone, then teacher + reference at λ), update (``update.update``:
student forward + backward + AdamW). Naive baselines on the same batch (the bare library calls,
not a lower bound on what a step can cost): Hugging Face ``generate`` (same length, full vocabulary sampling), the bare teacher / reference forward with ``logits_to_keep`` over the completion
positions, and a bare student forward + cross-entropy + backward + AdamW step. Completions always run the
full ``--new-tokens`` (no EOS stop) so both sides do the same work.

Times: min / median / max over ``--repeats`` (one warm-up step first), stages and naive baselines interleaved.
Memory: the peak of live torch CPU allocations during each stage (``_common.peak_alloc``, exact, measured
in a separate pass) and the process max RSS.

    python bench/step.py                                            # zoo models (tiny random until data/zoo exists)
    python bench/step.py --vocab 151936 --hidden 64 --layers 2      # random models, a Qwen-sized vocabulary
    python bench/step.py --vocab 151936 --scoring-memory-only       # scoring peak vs naive log_softmax(...).gather
    python bench/step.py --remote                                   # also: teacher behind gopd_lab.scale.teacher_server
"""

from __future__ import annotations

import argparse
import copy
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    build_world,
    max_rss_mb,
    measured,
    peak_alloc,
    print_table,
    proc_cpu_s,
    set_threads,
    stats,
    write_json,
)

from gopd_lab.config import RunConfig  # noqa: E402
from gopd_lab.lm.logprobs import CHUNK_BYTES, token_logprobs  # noqa: E402
from gopd_lab.lm.models import Models  # noqa: E402
from gopd_lab.lm.rollout import left_pad, position_ids_from_mask, sample  # noqa: E402
from gopd_lab.loop.schedules import make_optimizer  # noqa: E402
from gopd_lab.loop.update import update  # noqa: E402
from gopd_lab.scorers.score import score_rollout  # noqa: E402


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--student", default="zoo:student-base")
    p.add_argument("--teacher", default="zoo:teacher-add")
    p.add_argument(
        "--vocab", type=int, default=0, help="random models of this vocabulary instead of --student/--teacher"
    )
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--prompt-len", type=int, default=16, help="prompt length of random models")
    p.add_argument("--lam", type=float, default=1.25)
    p.add_argument("--estimator", default="sampled", choices=("sampled", "full", "topk"))
    p.add_argument(
        "--score-chunk-tokens",
        type=int,
        default=0,
        help="RunConfig.score_chunk_tokens for scoring and the update (0 = scoring.CHUNK_BYTES of float32 logits per chunk)",
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-memory", action="store_true", help="skip the per-stage allocation pass")
    p.add_argument("--scoring-memory", action="store_true", help="also: scoring's peak vs a naive log_softmax.gather")
    p.add_argument("--scoring-memory-only", action="store_true")
    p.add_argument("--chunk-tokens", default="0,64,16", help="score_chunk_tokens values for the scoring-memory table")
    p.add_argument("--remote", action="store_true", help="also: teacher scoring through a teacher_server subprocess")
    p.add_argument("--out", default="bench/results/step.json")
    return p.parse_args(argv)


# ---------------------------------------------------------------------------------------------- the step and its naive baseline
def model_inputs(rollout):
    ids, mask = rollout.input_ids, rollout.attention_mask  # (B, T)
    return dict(input_ids=ids, attention_mask=mask, position_ids=position_ids_from_mask(mask))


@torch.inference_mode()
def bare_forward(model, rollout):
    """The naive baseline of scoring: one forward, logits only at the completion positions (``logits_to_keep``)."""
    return model(**model_inputs(rollout), use_cache=False, logits_to_keep=rollout.completion_ids.shape[1] + 1).logits


def bare_train_step(model, opt, rollout):
    """The naive baseline of the update: forward, cross-entropy on the sampled tokens, backward, AdamW step."""
    logits = model(**model_inputs(rollout), use_cache=False, logits_to_keep=rollout.completion_ids.shape[1] + 1).logits[
        :, :-1
    ]
    mask = rollout.completion_mask.bool()  # (B, C)
    loss = F.cross_entropy(logits[mask].float(), rollout.completion_ids[mask])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


@torch.inference_mode()
def bare_generate(model, prompts, new_tokens, pad_id):
    ids, mask = left_pad(prompts.ids, pad_id)
    return model.generate(
        input_ids=ids,
        attention_mask=mask,
        do_sample=True,
        top_k=0,
        top_p=1.0,
        temperature=1.0,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        pad_token_id=pad_id,
    )


def run(args) -> dict:
    set_threads(args.threads)
    w = build_world(
        student=args.student,
        teacher=args.teacher,
        vocab=args.vocab,
        hidden=args.hidden,
        layers=args.layers,
        n_prompts=args.batch,
        prompt_len=args.prompt_len,
    )
    print(
        f"setting: {w.name}; batch {args.batch} x {args.new_tokens} new tokens; lam {args.lam}; estimator "
        f"{args.estimator}; score_chunk_tokens {args.score_chunk_tokens}; {args.threads} thread(s); {args.repeats} repeats"
    )
    pad = w.tokenizer.pad_token_id
    prompts = w.prompts.select(range(args.batch))
    models = Models(w.student, w.tokenizer, {"default": w.teacher}, {"default": w.reference})
    settings = RunConfig(estimator=args.estimator, score_chunk_tokens=args.score_chunk_tokens)
    opt = make_optimizer(
        [p for p in w.student.parameters() if p.requires_grad],  # as train() builds it: fused AdamW
        argparse.Namespace(optimizer="adamw", lr=1e-4, weight_decay=0.01),
    )
    naive_student = copy.deepcopy(w.student)
    naive_opt = torch.optim.AdamW(naive_student.parameters(), lr=1e-4, fused=True)
    gen = torch.Generator().manual_seed(0)
    n_tok = args.batch * args.new_tokens

    stages = {
        "rollout": lambda: sample(
            w.student, prompts, max_new_tokens=args.new_tokens, eos_token_id=None, pad_token_id=pad, generator=gen
        ),
        "score_teacher": lambda ro: score_rollout(
            models, ro, 1.0, estimator=args.estimator, chunk_tokens=args.score_chunk_tokens
        ),
        "score": lambda ro: score_rollout(
            models, ro, args.lam, estimator=args.estimator, chunk_tokens=args.score_chunk_tokens
        ),
        "update": lambda sc: update(w.student, opt, sc, settings),
    }
    naives = {
        "rollout": lambda: bare_generate(naive_student, prompts, args.new_tokens, pad),
        "score_teacher": lambda ro: bare_forward(w.teacher, ro),
        "score": lambda ro: (bare_forward(w.teacher, ro), bare_forward(w.reference, ro) if args.lam != 1 else None),
        "update": lambda ro: bare_train_step(naive_student, naive_opt, ro),
    }

    def one_step(record: dict | None) -> None:
        got = {}
        ro, *got["rollout"] = measured(stages["rollout"])
        _, *got["score_teacher"] = measured(stages["score_teacher"], ro)
        sc, *got["score"] = measured(stages["score"], ro)
        _, *got["update"] = measured(stages["update"], sc)
        _, *got["naive_rollout"] = measured(naives["rollout"])
        _, *got["naive_score_teacher"] = measured(naives["score_teacher"], ro)
        _, *got["naive_score"] = measured(naives["score"], ro)
        _, *got["naive_update"] = measured(naives["update"], ro)
        for prefix in ("", "naive_"):
            got[prefix + "step"] = [sum(got[prefix + k][i] for k in ("rollout", "score", "update")) for i in (0, 1)]
        if record is not None:
            for name, (wall, cpu) in got.items():
                record.setdefault(name, {"wall": [], "cpu": []})
                record[name]["wall"].append(wall)
                record[name]["cpu"].append(cpu)

    one_step(None)  # warm-up
    times: dict[str, dict[str, list[float]]] = {}
    for _ in range(args.repeats):
        one_step(times)

    memory = {}
    if not args.no_memory:
        ro, memory["rollout"] = peak_alloc(stages["rollout"])
        _, memory["score_teacher"] = peak_alloc(stages["score_teacher"], ro)
        sc, memory["score"] = peak_alloc(stages["score"], ro)
        _, memory["update"] = peak_alloc(stages["update"], sc)
        _, memory["naive_rollout"] = peak_alloc(naives["rollout"])
        _, memory["naive_score_teacher"] = peak_alloc(naives["score_teacher"], ro)
        _, memory["naive_score"] = peak_alloc(naives["score"], ro)
        _, memory["naive_update"] = peak_alloc(naives["update"], ro)

    labels = {
        "rollout": ("rollout (sample)", "HF generate"),
        "score_teacher": ("score: teacher (lam=1 pass)", "teacher forward"),
        "score": (f"score: teacher+reference (lam={args.lam:g})", "teacher+reference forward"),
        "update": ("update (fwd+bwd+AdamW)", "student fwd+CE+bwd+AdamW"),
        "step": ("step = rollout+score+update", "sum of naive baselines"),
    }
    rows = []
    for key, (label, naive_label) in labels.items():
        t, f = times[key], times["naive_" + key]
        ratio = {c: [a / b for a, b in zip(t[c], f[c])] for c in ("wall", "cpu")}
        rows.append(
            {
                "stage": label,
                "estimator": args.estimator,
                "wall_median_s": stats(t["wall"])["median"],
                "wall_min_max_s": f"{min(t['wall']):.3g}-{max(t['wall']):.3g}",
                "cpu_median_s": stats(t["cpu"])["median"],
                "tok/s": n_tok / stats(t["cpu"])["median"],
                "peak_MB": memory[key] / 2**20 if key in memory else "",
                "naive_baseline": naive_label,
                "naive_wall_s": stats(f["wall"])["median"],
                "naive_cpu_s": stats(f["cpu"])["median"],
                "naive_peak_MB": memory["naive_" + key] / 2**20 if key in memory else "",
                "ratio_wall": stats(ratio["wall"])["median"],
                "ratio_cpu": stats(ratio["cpu"])["median"],
                "ratio_cpu_min_max": f"{min(ratio['cpu']):.2f}-{max(ratio['cpu']):.2f}",
            }
        )
    print_table(
        rows,
        [
            "stage",
            "estimator",
            "wall_median_s",
            "wall_min_max_s",
            "cpu_median_s",
            "tok/s",
            "peak_MB",
            "naive_baseline",
            "naive_wall_s",
            "naive_cpu_s",
            "naive_peak_MB",
            "ratio_wall",
            "ratio_cpu",
            "ratio_cpu_min_max",
        ],
        title=f"one G-OPD step ({args.estimator} estimator) vs a naive baseline (ratio = stage / naive per repeat, median; "
        "tok/s on CPU time; CPU)",
    )
    print(f"process max RSS: {max_rss_mb():.0f} MB")
    result = {
        "setting": w.name,
        "args": vars(args),
        "tokens_per_step": n_tok,
        "times_s": times,
        "peak_alloc_bytes": memory,
        "rows": rows,
        "max_rss_mb": max_rss_mb(),
    }
    if args.scoring_memory:
        result["scoring_memory"] = scoring_memory(w, models, stages["rollout"](), args)
    if args.remote:
        result["remote"] = remote_overhead(w, models, stages["rollout"](), args)
    return result


# ---------------------------------------------------------------------------------------------- scoring memory
def naive_scoring(model, rollout):
    """The naive way: full ``log_softmax`` over every completion position, then gather the sampled tokens."""
    with torch.inference_mode():
        logits = model(
            **model_inputs(rollout), use_cache=False, logits_to_keep=rollout.completion_ids.shape[1] + 1
        ).logits[:, :-1]
        lp = torch.log_softmax(logits.float(), -1).gather(-1, rollout.completion_ids[..., None]).squeeze(-1)  # (B, C)
        return lp * rollout.completion_mask


def scoring_memory(w, models, rollout, args) -> dict:
    """Peak allocations (and median CPU time over 3 unprofiled calls) of teacher scoring vs the naive
    log_softmax + gather on the same positions."""

    def median_s(fn, *a, **k):
        return stats([measured(fn, *a, **k)[2] for _ in range(3)])["median"]

    naive_lp, naive_peak = peak_alloc(naive_scoring, w.teacher, rollout)
    _, fwd_peak = peak_alloc(bare_forward, w.teacher, rollout)
    rows = [
        {
            "method": "naive log_softmax(logits).gather",
            "estimator": "-",
            "chunk_tokens": "-",
            "peak_MB": naive_peak / 2**20,
            "vs_naive": 1.0,
            "cpu_median_s": median_s(naive_scoring, w.teacher, rollout),
        },
        {
            "method": "bare forward (logits_to_keep), no reduction",
            "estimator": "-",
            "chunk_tokens": "-",
            "peak_MB": fwd_peak / 2**20,
            "vs_naive": fwd_peak / naive_peak,
            "cpu_median_s": median_s(bare_forward, w.teacher, rollout),
        },
    ]
    for chunk in [int(c) for c in args.chunk_tokens.split(",")]:
        sc, peak = peak_alloc(score_rollout, models, rollout, 1.0, chunk_tokens=chunk)
        err = float((sc.lp_teacher - naive_lp).abs().max())
        rows.append(
            {
                "method": "score_rollout (teacher, lp + rank)",
                "estimator": "sampled (lam=1)",
                "chunk_tokens": chunk or f"default ({CHUNK_BYTES // 2**20} MiB)",
                "peak_MB": peak / 2**20,
                "vs_naive": peak / naive_peak,
                "max_abs_err": err,
                "cpu_median_s": median_s(score_rollout, models, rollout, 1.0, chunk_tokens=chunk),
            }
        )
        _, peak = peak_alloc(token_logprobs, w.teacher, rollout, chunk_tokens=chunk)
        rows.append(
            {
                "method": "scoring.token_logprobs",
                "estimator": "sampled (lam=1)",
                "chunk_tokens": chunk or f"default ({CHUNK_BYTES // 2**20} MiB)",
                "peak_MB": peak / 2**20,
                "vs_naive": peak / naive_peak,
                "cpu_median_s": median_s(token_logprobs, w.teacher, rollout, chunk_tokens=chunk),
            }
        )
    rows += full_estimator_memory(w, models, rollout, args, naive_peak, median_s)
    print_table(
        rows,
        ["method", "estimator", "chunk_tokens", "peak_MB", "vs_naive", "cpu_median_s", "max_abs_err"],
        title=f"scoring peak allocations (CPU allocator), V={w.vocab}, {rollout.num_tokens} completion positions "
        "(target: <= 1/8 of naive)",
    )
    return {"rows": rows, "positions": rollout.num_tokens, "vocab": w.vocab}


def full_estimator_memory(w, models, rollout, args, naive_peak, median_s) -> list[dict]:
    """The ``full`` estimator at λ = ``--lam`` (teacher + reference): scoring keeps a lazy target (features, not
    ``N × V``); for comparison the same target materialised, and the update's fused-KL forward + backward that
    reads the lazy target chunk by chunk (that row includes the student's decoder activations)."""
    from gopd_lab.lm.logprobs import student_kl_forward
    from gopd_lab.scorers import score as score_mod

    lam = args.lam

    def score_full():
        # the lazy target at any size: scoring keeps a smaller one dense (LAZY_TARGET_BYTES), which is not the
        # path measured here
        saved, score_mod.LAZY_TARGET_BYTES = score_mod.LAZY_TARGET_BYTES, 0
        try:
            return score_rollout(models, rollout, lam, estimator="full")
        finally:
            score_mod.LAZY_TARGET_BYTES = saved

    scored, peak = peak_alloc(score_full)
    _, dense_peak = peak_alloc(lambda: scored.target.dense())

    def update_full():
        out = student_kl_forward(w.student, rollout, scored.target)
        out.kl_loss.backward()
        w.student.zero_grad(set_to_none=True)
        return out

    _, update_peak = peak_alloc(update_full)
    label = f"full (lam={lam:g})"
    return [
        {
            "method": "score_rollout (lazy target: teacher + reference features)",
            "estimator": label,
            "chunk_tokens": f"default ({CHUNK_BYTES // 2**20} MiB)",
            "peak_MB": peak / 2**20,
            "vs_naive": peak / naive_peak,
            "cpu_median_s": median_s(score_full),
        },
        {
            "method": "the same target materialised, (N, V) float32 (for comparison)",
            "estimator": label,
            "chunk_tokens": f"default ({CHUNK_BYTES // 2**20} MiB)",
            "peak_MB": dense_peak / 2**20,
            "vs_naive": dense_peak / naive_peak,
        },
        {
            "method": "update: fused KL forward + backward over the lazy target (incl. student activations)",
            "estimator": label,
            "chunk_tokens": f"default ({CHUNK_BYTES // 2**20} MiB)",
            "peak_MB": update_peak / 2**20,
            "vs_naive": update_peak / naive_peak,
        },
    ]


# ---------------------------------------------------------------------------------------------- remote teacher
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def remote_overhead(w, models, rollout, args) -> dict:
    """Scoring with the teacher in-process vs behind ``python -m gopd_lab.scale.teacher_server`` (a subprocess on
    this machine, same thread count), alternating, on the same rollout."""
    from gopd_lab.scale.teacher_server import RemoteScorer

    with tempfile.TemporaryDirectory() as tmp:
        w.teacher.save_pretrained(tmp)
        w.tokenizer.save_pretrained(tmp)
        port = _free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gopd_lab.scale.teacher_server",
                "--model",
                tmp,
                "--port",
                str(port),
                "--threads",
                str(args.threads),
                "--device",
                "cpu",
                "--dtype",
                "float32",
            ]
        )
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 300
            while True:
                try:
                    urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url + "/info", timeout=5).read()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError("the teacher server did not start") from None
                    time.sleep(0.3)
            remote = Models(w.student, w.tokenizer, {"default": RemoteScorer(url)}, {"default": w.reference})

            def score(m, lam):
                return score_rollout(m, rollout, lam, estimator=args.estimator, chunk_tokens=args.score_chunk_tokens)

            for m in (models, remote):
                score(m, args.lam)  # warm-up
            t = {k: {"wall": [], "cpu": []} for k in ("local_teacher", "remote_teacher", "local_lam", "remote_lam")}
            for _ in range(args.repeats):
                for key, m, lam in (
                    ("local_teacher", models, 1.0),
                    ("remote_teacher", remote, 1.0),
                    ("local_lam", models, args.lam),
                    ("remote_lam", remote, args.lam),
                ):
                    server0 = proc_cpu_s(proc.pid)
                    _, wall, cpu = measured(score, m, lam)
                    t[key]["wall"].append(wall)
                    t[key]["cpu"].append(cpu + proc_cpu_s(proc.pid) - server0)  # remote: client + server CPU
            diff = float((score(remote, args.lam).lp_teacher - score(models, args.lam).lp_teacher).abs().max())
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    rows = []
    for key, label in (("teacher", "teacher only (lam=1)"), ("lam", f"teacher + local reference (lam={args.lam:g})")):
        loc, rem = t["local_" + key], t["remote_" + key]
        cpu_loc, cpu_rem = sum(loc["cpu"]) / len(loc["cpu"]), sum(rem["cpu"]) / len(rem["cpu"])  # means: 10 ms ticks
        wall_ratio = [r / q for r, q in zip(rem["wall"], loc["wall"])]
        rows.append(
            {
                "scoring": label,
                "in_process_wall_s": stats(loc["wall"])["median"],
                "remote_wall_s": stats(rem["wall"])["median"],
                "wall_overhead_s": stats(rem["wall"])["median"] - stats(loc["wall"])["median"],
                "wall_ratio": stats(wall_ratio)["median"],
                "wall_ratio_min_max": f"{min(wall_ratio):.2f}-{max(wall_ratio):.2f}",
                "in_process_cpu_s": cpu_loc,
                "remote_cpu_s (client+server)": cpu_rem,
                "cpu_overhead_s": cpu_rem - cpu_loc,
                "cpu_ratio": cpu_rem / cpu_loc,
            }
        )
    print_table(
        rows,
        list(rows[0]),
        title=f"teacher server overhead per step (loopback subprocess, max_rows=32, estimator "
        f"{args.estimator}); max |lp diff| {diff:.1e}",
    )
    return {"times_s": t, "rows": rows, "max_abs_lp_diff": diff}


def main(argv=None) -> None:
    args = parse(argv)
    if args.scoring_memory_only:
        set_threads(args.threads)
        w = build_world(
            student=args.student,
            teacher=args.teacher,
            vocab=args.vocab,
            hidden=args.hidden,
            layers=args.layers,
            n_prompts=args.batch,
            prompt_len=args.prompt_len,
        )
        print(f"setting: {w.name}; batch {args.batch} x {args.new_tokens} new tokens")
        models = Models(w.student, w.tokenizer, {"default": w.teacher}, {"default": w.reference})
        ro = sample(
            w.student,
            w.prompts,
            max_new_tokens=args.new_tokens,
            eos_token_id=None,
            pad_token_id=w.tokenizer.pad_token_id,
            generator=torch.Generator().manual_seed(0),
        )
        result = {"setting": w.name, "args": vars(args), "scoring_memory": scoring_memory(w, models, ro, args)}
    else:
        result = run(args)
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
