"""The embedded model zoo: tiny Qwen2 checkpoints trained by this package's own SFT and GRPO.

``data/zoo/<name>/`` holds ordinary ``save_pretrained`` directories (safetensors + the character
tokenizer); ``data/zoo/manifest.json`` records for each model its architecture, parameter count, the
training recipe, seed and command that built it, the sha256 of every file and its measured test accuracy
per domain. ``gopd-lab zoo build`` rebuilds everything deterministically (CPU, fixed seeds); model specs
``"zoo:<name>"`` resolve to these directories after checking their hashes.

The world mirrors the paper's settings: domain teachers are RL (GRPO) versions of the same student,
and a larger base with its RL teacher serves strong-to-weak distillation and reward correction.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .config import RunConfig
from .errors import UserError
from .runio import atomic_write_json, read_jsonl
from .tasks import data_dir

MANIFEST = "manifest.json"
ZOO_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


class ZooError(UserError, RuntimeError):
    """A zoo model that is missing or does not match its manifest; the message says how to rebuild."""


@dataclass
class ZooModel:
    """How one zoo checkpoint is made: from a fresh model (``arch``) or from another zoo model (``init``)."""

    name: str
    method: str
    tasks: str
    steps: int
    lr: float
    init: str = ""
    arch: dict = field(default_factory=dict)
    batch_size: int = 128
    samples_per_prompt: int = 1
    seed: int = 0
    label_noise: float = 0.0
    extra: dict = field(default_factory=dict)

    feedback_views: float = 0.0
    """SFT: share of train prompts also shown in SDPO's self-teacher view (feedback / solution → answer)."""

    def task_names(self) -> str:
        """The tasks to train on; with label noise, registered noisy copies (``add~noise0.5``) of each, plus
        :func:`~gopd_lab.tasks.arith.feedback_views` when ``feedback_views`` > 0 (``add~noise0.4~views0.3``)."""
        if not self.label_noise and not self.feedback_views:
            return self.tasks
        from .tasks import get_task, register_task
        from .tasks.arith import with_feedback_views, with_label_noise

        def make(t: str):
            task = with_label_noise(get_task(t), self.label_noise, seed=self.seed) if self.label_noise else get_task(t)
            if self.feedback_views:
                task = with_feedback_views(task, get_task(t), self.feedback_views, seed=self.seed)
            return task

        names = []
        for t in self.tasks.split(","):
            name = f"{t}~noise{self.label_noise:g}" + (f"~views{self.feedback_views:g}" if self.feedback_views else "")
            register_task(name, lambda t=t: make(t))
            names.append(name)
        return ",".join(names)

    def run_config(self, student: str, out_dir: Path) -> RunConfig:
        return RunConfig(
            method=self.method,
            student=student,
            tasks=self.task_names(),
            steps=self.steps,
            lr=self.lr,
            batch_size=self.batch_size,
            samples_per_prompt=self.samples_per_prompt,
            seed=self.seed,
            max_new_tokens=6,
            lr_schedule="cosine",
            warmup_steps=min(50, self.steps // 10),
            eval_k=0,
            eval_limit=0,
            log_samples_every=max(1, self.steps // 10),
            device="cpu",
            dtype="float32",
            out_dir=str(out_dir),
            **self.extra,
        )


SMALL = dict(hidden=64, layers=2, heads=4, kv_heads=2)
BIG = dict(hidden=128, layers=4, heads=4, kv_heads=2)
GRPO = dict(temperature=1.0, clip_eps=0.2)

NOISE = 0.4  # share of SFT answers whose last digit is off by one (see tasks.arith.with_label_noise)

RECIPES: list[ZooModel] = [
    ZooModel("student-base", "sft", "add,mul", steps=2500, lr=3e-3, arch=SMALL, seed=0, label_noise=NOISE),
    ZooModel(
        "teacher-add",
        "grpo",
        "add",
        steps=400,
        lr=3e-4,
        init="student-base",
        batch_size=64,
        samples_per_prompt=4,
        seed=1,
        extra=GRPO,
    ),
    ZooModel(
        "teacher-mul",
        "grpo",
        "mul",
        steps=1200,
        lr=3e-4,
        init="student-base",
        batch_size=64,
        samples_per_prompt=4,
        seed=2,
        extra=GRPO,
    ),
    ZooModel("big-base", "sft", "add,mul", steps=1500, lr=2e-3, arch=BIG, seed=3, label_noise=NOISE),
    ZooModel(
        "big-teacher",
        "grpo",
        "add,mul",
        steps=600,
        lr=2e-4,
        init="big-base",
        batch_size=64,
        samples_per_prompt=4,
        seed=4,
        extra=GRPO,
    ),
]


BETA = 0.8
"""World v2: the KL coefficient β of the main KL-regularised teachers; siblings use β/λ for λ in SIBLING_LAMS."""
SIBLING_LAMS = (1.25, 1.5)


def _grpo(name: str, tasks: str, init: str, seed: int, steps: int, kl: float, lr: float = 3e-4) -> ZooModel:
    extra = {**GRPO, "kl_coef": round(kl, 4)} if kl else dict(GRPO)
    return ZooModel(name, "grpo", tasks, steps=steps, lr=lr, init=init, batch_size=64, samples_per_prompt=4,
                    seed=seed, extra=extra)  # fmt: skip


RECIPES_V2: list[ZooModel] = [
    ZooModel("student-base", "sft", "add,mul", steps=2500, lr=3e-3, arch=SMALL, seed=0, label_noise=NOISE),
    _grpo("teacher-add", "add-rl", "student-base", seed=1, steps=400, kl=BETA),
    *[
        _grpo(f"teacher-add-kl-over-{lam:g}", "add-rl", "student-base", seed=1, steps=400, kl=BETA / lam)
        for lam in SIBLING_LAMS
    ],
    _grpo("teacher-add-nokl", "add-rl", "student-base", seed=1, steps=400, kl=0.0),
    _grpo("teacher-mul", "mul-rl", "student-base", seed=2, steps=1200, kl=0.2),  # β = 0.8 (lr 3e-4 or 1e-3): +11 points
    ZooModel("big-base", "sft", "add,mul", steps=2500, lr=2e-3, arch=BIG, seed=3, label_noise=NOISE),
    _grpo("big-teacher", "add-rl,mul-rl", "big-base", seed=4, steps=600, kl=BETA, lr=2e-4),
    ZooModel(
        "student-base-sdpo",
        "sft",
        "add,mul",
        steps=2500,
        lr=3e-3,
        arch=SMALL,
        seed=0,
        label_noise=NOISE,
        feedback_views=0.3,
    ),  # student-base's recipe plus SDPO self-teacher views (it did not learn to read them: docs/results.md)
]
"""World v2 (the default; ``GOPD_LAB_WORLD=v2``): teachers trained by GRPO on the RL prompt sets with a binding KL penalty β
to their base (``kl_coef``), the β/λ siblings that extrapolation with λ should approach, and a KL-free teacher
as the counter-example."""


def world_recipes(world: str | None = None) -> list[ZooModel]:
    """The recipes of a data world (default: ``GOPD_LAB_WORLD``)."""
    from .tasks.arith import world as current_world

    return RECIPES_V2 if (world or current_world()) == "v2" else RECIPES


def zoo_dir() -> Path:
    """``data/zoo/v2`` (world v2, the default) or ``data/zoo`` (``GOPD_LAB_WORLD=v1``)."""
    from .tasks.arith import world

    return data_dir() / "zoo" / ("v2" if world() == "v2" else "")


def _world_prefix() -> str:
    from .tasks.arith import world

    return f"GOPD_LAB_WORLD={world()} "


def train_data(r: ZooModel) -> list[dict]:
    """The prompt files a recipe trains on, ``[{"path": <repo-relative>, "sha256"}]`` (arithmetic tasks only; the
    answers of SFT recipes are these files' answers with ``label_noise`` applied)."""
    from .tasks.arith import DOMAINS, world_dir

    files = []
    for name in r.tasks.split(","):
        domain, _, split = name.partition("-")
        if domain in DOMAINS:
            path = world_dir() / f"{domain}_{split or 'train'}.jsonl"
            rel = Path("data") / path.relative_to(data_dir())
            files.append({"path": rel.as_posix(), "sha256": sha256(path)})
    return files


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest(root: Path | None = None) -> dict:
    root = root or zoo_dir()
    path = root / MANIFEST
    if not path.exists():
        raise ZooError(f"no zoo manifest at {path}; build the zoo with `gopd-lab zoo build`")
    import json

    return json.loads(path.read_text())


def model_path(name: str, *, root: Path | None = None, verify: bool = True) -> Path:
    """Directory of zoo model ``name``, after checking every file against the manifest's sha256."""
    root = root or zoo_dir()
    models = read_manifest(root)["models"]
    if name not in models:
        raise ZooError(f"no zoo model {name!r}; the zoo has {sorted(models)}")
    path = root / name
    if verify:
        for fname, digest in models[name]["sha256"].items():
            f = path / fname
            if not f.exists():
                raise ZooError(f"zoo model {name!r} is missing {f}; rebuild with `gopd-lab zoo build`")
            if sha256(f) != digest:
                raise ZooError(
                    f"zoo model {name!r}: {f} does not match its sha256 in {root / MANIFEST} "
                    "(corrupt or modified); restore it from git or rebuild with `gopd-lab zoo build`"
                )
        extra = sorted(f.name for f in path.iterdir() if f.name not in models[name]["sha256"] and f.name[0] != ".")
        if extra:  # e.g. a special_tokens_map.json would change EOS while every listed hash still matches
            raise ZooError(
                f"zoo model {name!r}: {path} holds files its manifest does not list ({extra}); they can change how "
                "the model or tokenizer loads. Remove them, or rebuild with `gopd-lab zoo build`"
            )
    return path


def resolve(spec: str) -> str:
    """``"zoo:<name>"`` → the verified directory; anything else is returned unchanged."""
    return str(model_path(spec[4:])) if spec.startswith("zoo:") else spec


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
        import concurrent.futures as cf
        import multiprocessing

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
    from .evaluate import evaluate
    from .tasks import load_tasks
    from .tiny import save_tiny_model
    from .tokenizer import build_char_tokenizer
    from .train import train

    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_char_tokenizer()
    tasks = load_tasks(["add", "mul"])
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
        acc = evaluate(model, tokenizer, tasks, k=4, max_new_tokens=6, limit=eval_limit, seed=0)
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


def accuracy_table(root: Path | None = None):
    """The manifest's accuracies as a DataFrame (model × domain greedy / mean@4)."""
    import pandas as pd

    rows = []
    for name, entry in read_manifest(root)["models"].items():
        for domain, acc in entry["accuracy"].items():
            rows.append(
                {"model": name, "domain": domain, "greedy": acc["greedy"], "mean@4": acc["mean@4"], "n": acc["n"]}
            )
    return pd.DataFrame(rows)


def training_log(name: str, work: Path | None = None) -> list[dict]:
    """The metrics of the run that built ``name`` (when its build directory is still there)."""
    return read_jsonl(Path(work or Path("runs") / "zoo-build") / name / "metrics.jsonl")
