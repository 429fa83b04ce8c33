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
from dataclasses import dataclass, field
from pathlib import Path

from gopd_lab.config import RunConfig
from gopd_lab.errors import UserError
from gopd_lab.runio import read_jsonl
from gopd_lab.tasks import data_dir

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

    carry_slip: float = 0.0
    """SFT on chains: share of the train chains with a carry whose first carry is dropped
    (:func:`gopd_lab.tasks.chain.with_carry_slip`), the chain base's systematic slip."""

    max_new_tokens: int = 6
    """Tokens sampled per completion in training and evaluation (a chain needs 42)."""

    def eval_domains(self) -> list[str]:
        """The domains the build evaluates this model on: ``chain`` for chain recipes, else ``add`` and ``mul``."""
        return ["chain"] if self.tasks.split(",")[0].startswith("chain") else ["add", "mul"]

    def task_names(self) -> str:
        """The tasks to train on; with label noise, registered noisy copies (``add~noise0.5``) of each, plus
        :func:`~gopd_lab.tasks.arith.feedback_views` when ``feedback_views`` > 0 (``add~noise0.4~views0.3``)."""
        if self.carry_slip:
            from gopd_lab.tasks import get_task, register_task
            from gopd_lab.tasks.chain import with_carry_slip

            name = f"{self.tasks}~slip{self.carry_slip:g}"
            register_task(name, lambda: with_carry_slip(get_task(self.tasks), self.carry_slip, seed=self.seed))
            return name
        if not self.label_noise and not self.feedback_views:
            return self.tasks
        from gopd_lab.tasks import get_task, register_task
        from gopd_lab.tasks.arith import with_feedback_views, with_label_noise

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
            max_new_tokens=self.max_new_tokens,
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


CHAIN_SLIP = 0.6
"""Share of the chain base's SFT chains (among those with a carry) whose first carry is dropped: more than half, so
the base's greedy chain drops it too and its mistakes sit on one predictable token."""
CHAIN_TOKENS = 42  # the longest chain (4 + 4 digits with a final carry) is 41 characters, then <eos>
CHAIN_BETA = 0.8
"""The KL coefficient β of the KL-regularised chain teacher (as world v2's teachers)."""


def _chain_grpo(name: str, kl: float) -> ZooModel:
    extra = {**GRPO, **({"kl_coef": kl} if kl else {})}
    return ZooModel(name, "grpo", "chain-rl", steps=60, lr=5e-4, init="chain-base", batch_size=32,
                    samples_per_prompt=4, seed=6, max_new_tokens=CHAIN_TOKENS, extra=extra)  # fmt: skip


RECIPES_CHAIN: list[ZooModel] = [
    ZooModel(
        "chain-sft",
        "sft",
        "chain",
        steps=600,
        lr=3e-3,
        arch=SMALL,
        seed=5,
        carry_slip=CHAIN_SLIP,
        max_new_tokens=CHAIN_TOKENS,
    ),  # fmt: skip
    ZooModel(
        "chain-base",
        "sft",
        "chain",
        steps=600,
        lr=1.5e-3,
        init="chain-sft",
        seed=5,
        carry_slip=CHAIN_SLIP,
        max_new_tokens=CHAIN_TOKENS,
    ),  # fmt: skip
    _chain_grpo("chain-teacher", CHAIN_BETA),
    _chain_grpo("chain-teacher-nokl", 0.0),
]
"""The chain domain's models (:mod:`gopd_lab.tasks.chain`), part of world v2's zoo: a base SFT'd with a systematic
carry slip (in two stages on the same slipped chains: ``chain-sft``, then ``chain-base`` from it), a KL-regularised GRPO teacher and its KL-free counterpart, both on the chain RL prompts. Size: SMALL (64 hidden, 2 layers) learns the format; 32 hidden
× 2 layers did not (greedy 0.0 on 200 test prompts after 600 SFT steps, loss 0.80 against SMALL's 0.12); 128 × 3 ran
4.0 s per SFT step against SMALL's 1.3 s on the shared CPU, too slow for the build budget (measured 2026-12-08, CPU
contended). Build cost of the four models: about 350 s of CPU time (user), 32 minutes of wall time on a contended
machine."""

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
    *RECIPES_CHAIN,
]
"""World v2 (the default; ``GOPD_LAB_WORLD=v2``): teachers trained by GRPO on the RL prompt sets with a binding KL penalty β
to their base (``kl_coef``), the β/λ siblings that extrapolation with λ should approach, and a KL-free teacher
as the counter-example."""


def world_recipes(world: str | None = None) -> list[ZooModel]:
    """The recipes of a data world (default: ``GOPD_LAB_WORLD``)."""
    from gopd_lab.tasks.arith import world as current_world

    return RECIPES_V2 if (world or current_world()) == "v2" else RECIPES


def zoo_dir() -> Path:
    """``data/zoo/v2`` (world v2, the default) or ``data/zoo`` (``GOPD_LAB_WORLD=v1``)."""
    from gopd_lab.tasks.arith import world

    return data_dir() / "zoo" / ("v2" if world() == "v2" else "")


def _world_prefix() -> str:
    from gopd_lab.tasks.arith import world

    return f"GOPD_LAB_WORLD={world()} "


def train_data(r: ZooModel) -> list[dict]:
    """The prompt files a recipe trains on, ``[{"path": <repo-relative>, "sha256"}]`` (arithmetic and chain tasks; the
    answers of SFT recipes are these files' answers with ``label_noise`` or ``carry_slip`` applied)."""
    from gopd_lab.tasks.arith import DOMAINS, world_dir
    from gopd_lab.tasks.chain import DOMAIN as CHAIN
    from gopd_lab.tasks.chain import chain_dir

    files = []
    for name in r.tasks.split(","):
        domain, _, split = name.partition("-")
        if domain in DOMAINS or domain == CHAIN:
            folder = chain_dir() if domain == CHAIN else world_dir()
            path = folder / f"{domain}_{split or 'train'}.jsonl"
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
