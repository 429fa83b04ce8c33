"""Build the embedded zoo (``gopd-lab zoo build``): train every recipe of ``gopd_lab.world.zoo`` in order with the
training loop, evaluate it, copy its weights and write the manifest (sha256, training files, accuracies)."""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import shutil
import sys
import time
from pathlib import Path

import torch

from gopd_lab.loop.evaluate import evaluate
from gopd_lab.loop.train import train
from gopd_lab.runio import atomic_write_json
from gopd_lab.tasks import load_tasks
from gopd_lab.world.tiny import save_tiny_model
from gopd_lab.world.tokenizer import build_char_tokenizer
from gopd_lab.world.zoo import (
    MANIFEST,
    ZOO_FILES,
    ZooModel,
    _world_prefix,
    read_manifest,
    sha256,
    train_data,
    world_recipes,
    zoo_dir,
)


def build(
    out: Path | None = None,
    *,
    recipes: list[ZooModel] | None = None,
    work: Path | None = None,
    scale: float = 1.0,
    eval_limit: int = 0,
    progress: bool = True,
    workers: int = 1,
) -> dict:
    """Train every recipe in order and write the zoo + manifest. ``scale`` < 1 shortens every run (tests).

    ``workers`` > 1 trains independent chains (a base and the models initialised from it) in that many
    processes at once, each on one thread: the same models, bit for bit, in less wall time. Entries of models
    already in ``out``'s manifest that are not rebuilt are kept (``--only``)."""

    out = Path(out or zoo_dir())
    work = Path(work or Path("runs") / "zoo-build")
    recipes = recipes or world_recipes()
    old = read_manifest(out)["models"] if (out / MANIFEST).exists() else {}
    if workers > 1:
        chains: dict[str, list[ZooModel]] = {}
        names = {r.name: r for r in recipes}
        for r in recipes:
            root = r
            while root.init in names:
                root = names[root.init]
            chains.setdefault(root.init or root.name, []).append(r)
        ctx = multiprocessing.get_context("spawn")
        with cf.ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
            jobs = [pool.submit(_build_chain, out, c, work, scale, eval_limit) for c in chains.values()]
            built = {k: v for job in jobs for k, v in job.result().items()}
        entries = {r.name: built[r.name] for r in recipes}
    else:
        entries = _build_chain(out, recipes, work, scale, eval_limit, progress, old)
    _write_manifest(out, {**_current(out, old), **entries})
    return entries


def _build_chain(out, recipes, work, scale, eval_limit, progress=False, old=None) -> dict:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread is as fast, immune to oversubscription, and reproducible
    try:
        return _build(out, recipes, work, scale, eval_limit, progress, old)
    finally:
        torch.set_num_threads(threads)


def _current(out: Path, old: dict) -> dict:
    """The manifest's models as they are now (another build into ``out`` may have added some meanwhile)."""
    return read_manifest(out)["models"] if (out / MANIFEST).exists() else old


def _write_manifest(out: Path, models: dict) -> None:
    atomic_write_json(out / MANIFEST, {"torch": torch.__version__, "python": sys.version.split()[0], "models": models})


def _build(
    out: Path, recipes: list[ZooModel], work: Path, scale: float, eval_limit: int, progress: bool, old: dict | None
) -> dict:
    """Train ``recipes`` in order; with ``old`` (the manifest's models) the manifest is rewritten after each model
    (a sequential build shows its progress there), else only the entries are returned."""
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_char_tokenizer()
    entries: dict[str, dict] = {}
    for r in recipes:
        t0 = time.perf_counter()
        if r.init:
            student = str(out / r.init)
        else:
            student = str(save_tiny_model(work / f"{r.name}-init", seed=r.seed, tokenizer=tokenizer, **r.arch))
        steps = max(2, int(r.steps * scale))
        cfg = r.run_config(student, work / r.name).replace(  # a rebuild replaces its own earlier work dir
            steps=steps, eval_limit=eval_limit, log_samples_every=max(1, steps // 10), overwrite=True
        )
        torch.manual_seed(r.seed)
        train(cfg, progress=progress)
        dest = out / r.name
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        for fname in ZOO_FILES:
            if (work / r.name / "model" / fname).exists():
                shutil.copy2(work / r.name / "model" / fname, dest / fname)
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(dest, dtype=torch.float32)
        tasks = load_tasks(r.eval_domains())
        acc = evaluate(model, tokenizer, tasks, k=4, max_new_tokens=r.max_new_tokens, limit=eval_limit, seed=0)
        entries[r.name] = {
            "architecture": {
                "class": type(model).__name__,
                **{
                    k: getattr(model.config, k)
                    for k in (
                        "vocab_size",
                        "hidden_size",
                        "num_hidden_layers",
                        "num_attention_heads",
                        "num_key_value_heads",
                        "intermediate_size",
                        "max_position_embeddings",
                    )
                },
            },
            "parameters": sum(p.numel() for p in model.parameters()),
            "recipe": {
                "method": r.method,
                "tasks": r.tasks,
                "label_noise": r.label_noise,
                **({"feedback_views": r.feedback_views} if r.feedback_views else {}),
                **({"carry_slip": r.carry_slip} if r.carry_slip else {}),
                **({"max_new_tokens": r.max_new_tokens} if r.max_new_tokens != 6 else {}),
                "steps": steps,
                "lr": r.lr,
                "init": r.init or None,
                "batch_size": r.batch_size,
                "samples_per_prompt": r.samples_per_prompt,
                **r.extra,
            },
            "train_data": train_data(r),
            "seed": r.seed,
            "command": _world_prefix() + "gopd-lab zoo build" + (f" --scale {scale}" if scale != 1 else ""),
            "train_seconds": round(time.perf_counter() - t0, 1),
            "accuracy": {
                row["domain"]: {"greedy": row["greedy_acc"], "mean@4": row["mean_acc"], "n": row["n"]}
                for row in acc.to_dict("records")
            },
            "sha256": {f.name: sha256(f) for f in sorted(dest.iterdir())},
        }
        if old is not None:
            _write_manifest(out, {**_current(out, old), **entries})
    return entries
