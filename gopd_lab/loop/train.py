"""The G-OPD loop: rollout → score → advantage → update, with metrics, samples, checkpoints and resume.

``train(cfg)`` returns a pandas DataFrame with one row per step; the run directory holds
``config.json``, ``metrics.jsonl``, ``eval.jsonl``, ``samples.jsonl``, ``summary.json``,
``checkpoints/`` and (for Hugging Face students) the final ``model/``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from gopd_lab.config import RUN_RECORD, RunConfig
from gopd_lab.config_checks import check_context, check_device
from gopd_lab.errors import writing
from gopd_lab.lm.models import DEFAULT_DOMAIN, Models
from gopd_lab.lm.precision import autocast
from gopd_lab.lm.rollout import Prompts, load_prompts, prompts_from_tasks, token_strings
from gopd_lab.loop.checkpoint import check_finite, latest_checkpoint, load_checkpoint, save_checkpoint
from gopd_lab.loop.collect import Collector, batch_indices
from gopd_lab.loop.evaluate import task_evaluator
from gopd_lab.loop.headroom import check_headroom
from gopd_lab.loop.load import load_models
from gopd_lab.loop.record import run_record
from gopd_lab.loop.rundir import RunLock, prepare_run_dir
from gopd_lab.loop.schedules import lr_factor, make_optimizer
from gopd_lab.loop.step import Batch, StepContext
from gopd_lab.loop.trackers import Reporter
from gopd_lab.loop.update import UpdateResult, enable_gradient_checkpointing
from gopd_lab.objectives.lineage import LOSS_KINDS
from gopd_lab.runio import append_jsonl, atomic_write_json, keep_steps_upto, read_jsonl
from gopd_lab.scale.distributed import Distributed
from gopd_lab.scorers.score import Scored
from gopd_lab.scorers.self_teacher import ema_update

Evaluator = Callable[[torch.nn.Module, int], list[dict]]


def row_seed(seed: int, step: int, position: int, sample: int) -> int:
    """The sampling seed of one completion: a function of where it sits in the *global* batch only."""
    return ((seed * 1_000_003 + step) * 65_537 + position) * 64 + sample


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _load_tasks(cfg: RunConfig, tokenizer=None) -> dict:
    if not cfg.task_names:
        return {}
    from gopd_lab.tasks import load_tasks

    return load_tasks(cfg.task_names, tokenizer=tokenizer)  # the student's tokenizer renders chat-format rows


def _evaluator_settings(evaluate) -> dict | None:
    """What the run's evaluator is: :func:`~gopd_lab.loop.evaluate.task_evaluator`'s settings (tasks, k, limit,
    seed, ...), or the name of a callable of the caller's own; None without evaluation."""
    if evaluate is None:
        return None
    settings = getattr(evaluate, "settings", None)
    if settings is not None:
        return dict(settings)
    return {"callable": getattr(evaluate, "__qualname__", type(evaluate).__name__)}


def sample_records(models: Models, scored: Scored, result: UpdateResult, step: int, limit: int) -> list[dict]:
    """Per-token records (the token view's input) for the first ``limit`` samples of a step."""
    rollout, records = scored.rollout, []
    for i in range(min(limit, len(rollout))):
        m = rollout.completion_mask[i].bool()
        ids = rollout.completion_ids[i][m].tolist()

        def take(t, i=i, m=m):
            return None if t is None else t[i][m].tolist()

        records.append(
            {
                "step": step,
                "index": i,
                "domain": rollout.domains[i],
                "prompt": rollout.prompts[i],
                "completion": rollout.completions[i],
                "tokens": token_strings(models.tokenizer, ids),
                "lp_student": take(result.lp_student),
                "lp_teacher": take(scored.lp_teacher),
                "lp_reference": take(scored.lp_reference),
                "advantage": take(result.advantages),
                "teacher_rank": take(scored.teacher_rank),
                "lam_t": take(result.lam_t),
                "loss_kind": None if result.loss_kind is None else [LOSS_KINDS[k] for k in take(result.loss_kind)],
                "teacher_entropy": take(scored.teacher_entropy),
                "lam": float(scored.lam[i]),
                "score": None if scored.rewards is None else float(scored.rewards[i]),
            }
        )
    return records


class _Callbacks:
    """Calls ``on_step`` / ``on_eval`` / ``on_end`` on each callback that has it (plain callables get on_step)."""

    def __init__(self, callbacks: Iterable):
        self.items = list(callbacks)

    def fire(self, event: str, *args) -> None:
        for cb in self.items:
            fn = getattr(cb, event, None)
            if fn is None and event == "on_step" and callable(cb):
                fn = cb
            if fn is not None:
                fn(*args)


def train(
    cfg: RunConfig,
    *,
    models: Models | None = None,
    prompts: Prompts | None = None,
    evaluate: Evaluator | None = None,
    callbacks: Iterable = (),
    progress: bool = True,
) -> pd.DataFrame:
    """Run G-OPD for ``cfg.steps`` steps (or continue a run with ``cfg.resume``).

    ``models`` / ``prompts`` override what ``cfg`` would load (e.g. the tabular policies of
    :mod:`gopd_lab.lm.exact`). ``evaluate(student, step) -> rows`` runs before training, every
    ``cfg.eval_every`` steps and at the end; its rows go to ``eval.jsonl``.
    """
    out = Path(cfg.out_dir)
    from gopd_lab.tasks.arith import use_world  # here: `python -m gopd_lab.tasks.arith` runs it as __main__

    use_world(cfg.world)  # the data world the tasks and zoo: models come from (recorded in config.json)
    check_device(cfg)  # device="cuda" on a CPU-only torch: refused before anything loads
    dist = Distributed(cfg)  # first: refuses what FSDP cannot run; on GPUs it selects this process's device
    # a missing tracker package was refused by the config (before this clears anything or loads any model)
    with RunLock(out) if dist.is_main else nullcontext():  # one run per out_dir, held until this run ends
        prepare_run_dir(cfg, clear=dist.is_main)  # before any model loads: never mix two runs in one out_dir
        out.mkdir(parents=True, exist_ok=True)
        reporter = Reporter(cfg) if cfg.report_targets and dist.is_main else None
        try:
            return _run(cfg, out, dist, reporter, models, prompts, evaluate, callbacks, progress)
        finally:  # a failed run closes its trackers too (event files flushed, the wandb/trackio run finished)
            if reporter is not None:
                reporter.close()


def _run(cfg, out, dist, reporter, models, prompts, evaluate, callbacks, progress) -> pd.DataFrame:
    models = models if models is not None else load_models(cfg)
    tasks = _load_tasks(cfg, models.tokenizer)
    if prompts is None:
        if tasks:
            prompts = prompts_from_tasks(tasks, models.tokenizer, chat_template=cfg.chat_template)
        else:
            prompts = load_prompts(cfg.prompts, models.tokenizer, chat_template=cfg.chat_template)
    if evaluate is None and tasks:
        evaluate = task_evaluator(
            tasks,
            models.tokenizer,
            k=cfg.eval_k,
            max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature,
            limit=cfg.eval_limit,
            seed=cfg.eval_seed,
            chat_template=cfg.chat_template,  # scored on the prompts it is trained on
            outcomes_path=out / "outcomes.csv",  # per-prompt correctness of the latest evaluation
        )
    cbs = _Callbacks([*callbacks, *([reporter] if reporter is not None else [])])
    main = dist.is_main
    student, device = models.student, models.device
    if dist.fsdp:
        dist.shard_student(student, cfg)  # before the optimizer, which then holds only this process's shards
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(student)
    amp = models.autocast_dtype  # mixed precision: the float32 student computes in this dtype
    torch.manual_seed(cfg.seed)
    gens = {"sample": torch.Generator(device=device).manual_seed(cfg.seed)}
    params = [p for p in student.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(cfg))
    collector = Collector(cfg, models, tasks, prompts, gens["sample"], out)
    check_context(cfg, collector)  # every prompt + max_new_tokens and every SFT example fits the models' context
    method = collector.method  # the registered recipe of cfg.method (gopd_lab.methods): its step is method.step
    ctx = StepContext(cfg, collector, student, optimizer, dist, out, state=method.new_state(cfg, []))
    # vLLM always seeds each row (from the step, so a resumed run continues the same streams)
    row_seeded = cfg.row_seeded_sampling or dist.world > 1 or cfg.rollout_backend == "vllm"

    start = 0
    ckpt = latest_checkpoint(out) if cfg.resume else None
    uses_teacher = method.needs_teacher and not method.self_teacher
    # every process decides alike (greedy decoding of the unsharded teacher), so a refusal stops them all
    headroom = check_headroom(models, tasks, cfg) if ckpt is None and uses_teacher else None
    if ckpt is not None:
        start = load_checkpoint(ckpt, student, optimizer, scheduler, gens)
        logged = [r for r in read_jsonl(out / "metrics.jsonl") if r.get("step", 0) <= start]
        ctx.state = method.new_state(cfg, logged)  # e.g. REOPD's budget: the last logged γ_b before the checkpoint
        collector.after_update(student)  # rollout_backend="vllm": the engine samples from the resumed weights
    if reporter is not None:
        reporter.start(start)  # trackers begin at the resumed step (TensorBoard drops its later events)
    dist.barrier()
    if main:
        for name in ("metrics.jsonl", "eval.jsonl", "samples.jsonl"):
            if ckpt is not None:
                keep_steps_upto(out / name, start)
            else:
                (out / name).unlink(missing_ok=True)
        record = run_record(cfg, _evaluator_settings(evaluate))  # the world, resolved models, version, commit, argv
        if headroom is not None:
            record["headroom_check"] = headroom.to_dict("records")
        atomic_write_json(out / "config.json", {**cfg.to_dict(), RUN_RECORD: record}, strict=True)

    def run_eval(step: int) -> None:
        if evaluate is None:
            return
        with dist.full_params(student):  # FSDP: every process gathers the student, the main one evaluates
            if not main:
                return
            with autocast(amp, device):
                rows = [{"step": step, **r} for r in evaluate(student, step)]
        append_jsonl(out / "eval.jsonl", rows)
        cbs.fire("on_eval", step, rows)

    if start == 0:
        run_eval(0)
    t_run = time.perf_counter()
    bar = tqdm(range(start, cfg.steps), desc=out.name, disable=not (progress and main), initial=start, total=cfg.steps)
    for step in bar:
        slots = dist.shard(list(enumerate(batch_indices(collector.num_examples, cfg.batch_size, step, cfg.seed))))
        index = [i for _, i in slots for _ in range(cfg.samples_per_prompt)]
        seeds = [row_seed(cfg.seed, step, pos, k) for pos, _ in slots for k in range(cfg.samples_per_prompt)]
        result = method.step(ctx, Batch(step, index, seeds if row_seeded else None))  # the method's recipe
        scored = ctx.scored
        scheduler.step()
        collector.after_update(student)  # rollout_backend="vllm": the engine samples from the new weights
        if method.self_teacher and cfg.sdpo_teacher == "ema":
            ema_update(models.teacher_for(DEFAULT_DOMAIN), student, cfg.sdpo_ema_rate)
        _sync(device)
        t = {**ctx.times, "update": time.perf_counter()}
        t.setdefault("start", t["update"])  # a recipe that skipped a stage: its time counts as the next stage's
        t.setdefault("rollout", t["start"])
        t.setdefault("score", t["rollout"])
        n = step + 1
        metrics = dist.mean_metrics(
            {
                "step": n,
                **result.metrics,
                "lr": scheduler.get_last_lr()[0],
                "time_rollout": t["rollout"] - t["start"],
                "time_score": t["score"] - t["rollout"],
                "time_update": t["update"] - t["score"],
                "time_step": t["update"] - t["start"],
            }
        )
        metrics["step"] = n
        if dist.fsdp:  # parameter elements the main process holds, and the whole student's
            metrics["local_param_numel"], metrics["param_numel"] = dist.param_numel(student)
        if main:
            append_jsonl(out / "metrics.jsonl", [metrics])
            if cfg.log_samples and (
                (cfg.log_samples_every and n % cfg.log_samples_every == 0) or n == cfg.steps or n == 1
            ):
                records = sample_records(models, scored, result, n, cfg.log_samples)
                append_jsonl(out / "samples.jsonl", records)
                cbs.fire("on_samples", n, records)  # the trackers' per-token table (report_samples)
            cbs.fire("on_step", n, metrics)
            bar.set_postfix({k: f"{metrics[k]:.3f}" for k in ("loss", "reverse_kl", "score_mean") if k in metrics})
        if cfg.eval_every and n % cfg.eval_every == 0 and n != cfg.steps:
            run_eval(n)
        if cfg.save_every and n % cfg.save_every == 0 and n != cfg.steps:
            state = dist.full_state(student, optimizer)  # FSDP: gathered with every process taking part
            if main:
                save_checkpoint(out, n, student, optimizer, scheduler, gens, state=state)
        dist.barrier()
    bar.close()

    if start < cfg.steps or ckpt is None:
        run_eval(cfg.steps)
        state = dist.full_state(student, optimizer)
        if main:
            save_checkpoint(out, cfg.steps, student, optimizer, scheduler, gens, state=state)
            save_final_model(models, out / "model", None if state is None else state[0])
    elif hasattr(student, "save_pretrained") and not (out / "model").is_dir():  # the final save was cut short
        state = dist.full_state(student, optimizer)
        if main:
            save_final_model(models, out / "model", None if state is None else state[0])
    dist.barrier()
    history = pd.DataFrame(read_jsonl(out / "metrics.jsonl"))
    if main:
        summary = _summary(cfg, history, read_jsonl(out / "eval.jsonl"), time.perf_counter() - t_run)
        atomic_write_json(out / "summary.json", summary)
        cbs.fire("on_end", summary)
    return history


def _in_dtype(student: torch.nn.Module, state_dict: dict | None, dtype: torch.dtype) -> dict:
    """The weights cast to ``dtype``, each tied weight once (under its first name, as ``save_pretrained`` keeps it):
    the casts are separate tensors, so tying can no longer be seen from shared storage."""
    if state_dict is None:
        tied = set(dict(student.named_parameters(remove_duplicate=False))) - set(dict(student.named_parameters()))
        state_dict = {k: v for k, v in student.state_dict().items() if k not in tied}
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}


def _set_config_dtype(path: Path, dtype: torch.dtype) -> None:
    """Record the saved weights' dtype in ``config.json`` (``save_pretrained`` wrote the float32 student's)."""
    import json

    config = json.loads(path.read_text())
    name = str(dtype).removeprefix("torch.")
    for key in ("dtype", "torch_dtype"):
        if key in config:
            config[key] = name
    config.setdefault("dtype", name)
    atomic_write_json(path, config)


def save_final_model(models: Models, path: Path, state_dict: dict | None = None) -> None:
    """``save_pretrained`` the student (and its tokenizer) so it loads like any checkpoint; ``state_dict``: the
    gathered full weights of a sharded (FSDP) student. Under mixed precision the float32 master weights are
    saved in the run's dtype (half the size, what the model computed in; ``checkpoints/`` keep float32); a
    LoRA adapter stays float32."""
    import shutil

    student = models.student
    if not hasattr(student, "save_pretrained"):
        return
    check_finite(student.state_dict() if state_dict is None else state_dict, path)
    dtype = models.autocast_dtype
    if dtype is not None and not hasattr(student, "get_base_model"):
        state_dict = _in_dtype(student, state_dict, dtype)
    tmp, old = path.with_name(path.name + ".tmp"), path.with_name(path.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)  # a save cut short earlier
    with writing(tmp):
        student.save_pretrained(tmp, state_dict=state_dict)
        if dtype is not None and (tmp / "config.json").is_file():
            _set_config_dtype(tmp / "config.json", dtype)
        if models.tokenizer is not None:
            models.tokenizer.save_pretrained(tmp)
    if path.exists():  # never a moment without a complete model: the old one moves aside, then goes
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def _summary(cfg: RunConfig, history: pd.DataFrame, evals: list[dict], wall: float) -> dict:
    final = history.iloc[-1].to_dict() if len(history) else {}
    timing = {c: float(history[c].mean()) for c in history.columns if c.startswith("time_")} if len(history) else {}
    last_eval = [r for r in evals if r.get("step") == cfg.steps]
    first_eval = [r for r in evals if r.get("step") == 0]
    return {
        "steps": cfg.steps,
        "out_dir": cfg.out_dir,
        "final": final,
        "mean_stage_seconds": timing,
        "wall_seconds_this_session": wall,
        "eval_initial": first_eval,
        "eval_final": last_eval,
    }
