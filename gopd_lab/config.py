"""One flat, validated dataclass for a run: every knob, with a docstring under each field."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ESTIMATORS = ("sampled", "full", "topk", "jsd")
LOSS_AGGS = ("token-mean", "seq-mean-token-mean")
METHODS = ("gopd", "sdpo", "sft", "offpolicy", "grpo", "chord")


class ConfigError(ValueError):
    """A run configuration that cannot work; the message says which field and what to do."""


@dataclass
class RunConfig:
    """Everything one G-OPD run needs. Saved as ``config.json`` in the run dir."""

    method: str = "gopd"
    """``gopd`` (OPD / G-OPD / ExOPD from a teacher), ``sdpo`` (the teacher is the student re-prompted with
    feedback), ``sft`` (supervised on the tasks' answers), ``offpolicy`` (SFT on completions the teacher
    generates once), ``grpo`` (RL with the tasks' verifiable reward) or ``chord`` (GRPO + μ-weighted SFT on
    expert data)."""
    student: str = ""
    """Student model: a Hugging Face hub id or a local directory (loaded with ``from_pretrained``)."""
    teacher: str | dict[str, str] = ""
    """Teacher: an id/path, or ``{domain: id/path}`` for multi-teacher runs (each prompt's domain picks its teacher)."""
    reference: str | dict[str, str] = "student"
    """Reference π_R: ``"student"`` (the student's initial weights), an id/path (e.g. the teacher's pre-RL base,
    "reward correction"), or ``{domain: ...}``. Never run when λ = 1."""
    lam: float | dict[str, float] = 1.0
    """Reward scale λ > 0: 1 = OPD, (0, 1) interpolation, > 1 ExOPD. A float or ``{domain: λ}``."""
    estimator: str = "sampled"
    """Update estimator: ``sampled`` (policy gradient on sampled tokens), ``full`` (per-state KL to the target over
    the whole vocabulary), ``topk`` (same on the teacher's top-k plus a tail bucket), ``jsd`` (generalised JSD(β))."""
    gamma: float = 0.0
    """Discount for ``sampled``: 0 = token-level advantage (official G-OPD), 1 = return-to-go (sequence-level)."""
    topk: int = 16
    """Number of teacher tokens kept by the ``topk`` estimator (plus one tail bucket)."""
    jsd_beta: float = 1.0
    """β of the ``jsd`` estimator: 1 = reverse KL to the teacher, 0 = forward KL (TRL's convention)."""
    clip_eps: float | None = None
    """PPO clip on the ratio for ``sampled`` (None = no clipping; only matters with ``epochs_per_batch > 1``)."""
    epochs_per_batch: int = 1
    """Optimizer passes over each batch of rollouts; 1 = strictly on-policy."""
    sdpo_teacher: str = "live"
    """SDPO self-teacher weights: ``live`` (current), ``initial`` (frozen copy) or ``ema``."""
    sdpo_ema_rate: float = 0.99
    """SDPO ``ema`` teacher: ``θ' ← rate·θ' + (1 − rate)·θ`` after every step."""
    sdpo_feedback: str = "both"
    """What the self-teacher is shown: ``verifier`` (the task's feedback on a wrong answer), ``solution`` (a correct
    answer from another sample of the same prompt) or ``both``."""
    sdpo_template: str = "{feedback} {solution}\n{prompt}"
    """Self-teacher prompt with the fields ``{prompt}``, ``{feedback}``, ``{solution}`` (absent ones are empty);
    ``"{prompt}"`` makes the self-teacher the student itself."""
    sdpo_no_feedback: str = "mask"
    """Samples with no feedback (correct, no other solution): ``mask`` them out of the update, or score them under
    the ``plain`` prompt."""
    mu: float = 0.0
    """Weight μ of the SFT term on expert data, ``L = (1 − μ)·L_method + μ·L_SFT`` (CHORD; also beside G-OPD).
    With a schedule this is the peak."""
    mu_schedule: str = "constant"
    """``constant`` or ``warmup_cosine`` (linear warm-up from ``mu_valley`` to ``mu``, then cosine decay back)."""
    mu_valley: float = 0.0
    """Lowest μ of the ``warmup_cosine`` schedule."""
    mu_warmup_steps: int = 0
    """Warm-up steps of the μ schedule."""
    phi_weighting: bool = True
    """Weight each SFT token by ``φ = p(1 − p)`` (detached), CHORD's token weighting."""
    expert_data: str = ""
    """Expert (prompt, answer) pairs for the SFT term / ``offpolicy``: ``""`` = the tasks' answers, a JSONL path with
    ``prompt``/``answer`` fields, or ``teacher`` = completions the teacher samples once at the start."""
    kl_coef: float = 0.0
    """GRPO: weight of the per-token KL to the reference (k3 estimator); 0 = no KL term, no reference pass."""
    grpo_scale_std: bool = True
    """GRPO: divide group-centred rewards by the group's std (False = Dr. GRPO's mean baseline only)."""

    tasks: str | list[str] = ""
    """Tasks with verifiers (``"add,mul"``, names or math JSONL paths): their train splits are the prompts,
    their test splits the evaluation, their verifier the GRPO reward and the samples' ``score``."""
    prompts: str | list[str] = ""
    """Training prompts when no ``tasks`` are given: a JSONL file with a ``prompt`` field (optional ``domain``)
    or a list of strings."""
    batch_size: int = 8
    """Prompts per step."""
    samples_per_prompt: int = 1
    """Completions sampled per prompt."""
    max_new_tokens: int = 32
    """Longest completion; sampling stops earlier at EOS."""
    temperature: float = 1.0
    """Sampling temperature for rollouts."""
    top_p: float = 1.0
    """Nucleus sampling mass for rollouts (1 = off)."""
    chat_template: bool = False
    """Wrap each prompt with the tokenizer's chat template (for instruction-tuned hub models)."""

    steps: int = 100
    """Number of training steps (one rollout batch each)."""
    lr: float = 1e-5
    """Learning rate."""
    optimizer: str = "adamw"
    """``adamw`` or ``sgd`` (plain gradient descent: exact comparisons, e.g. multi-process against one process)."""
    weight_decay: float = 0.0
    """Weight decay (decoupled for AdamW)."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up steps (constant afterwards)."""
    lr_schedule: str = "constant"
    """Learning rate after warm-up: ``constant``, ``linear`` (to 0 at the last step) or ``cosine`` (to 0)."""
    max_grad_norm: float | None = 1.0
    """Gradient-norm clip (None = off); the pre-clip norm is logged as ``grad_norm``."""
    seed: int = 0
    """Seed for prompt order and sampling (runs are reproducible on CPU)."""
    row_seeded_sampling: bool = False
    """Draw each completion from its own seed (seed, step, position in the global batch), so samples do not
    depend on how the batch is split across processes. Always on under ``accelerate launch`` with N > 1."""

    device: str = "auto"
    """``auto`` (CUDA when present, else CPU), ``cpu``, ``cuda``, ``cuda:1``..."""
    dtype: str = "auto"
    """Model dtype: ``auto`` (bfloat16 on CUDA, float32 on CPU), ``float32``, ``bfloat16``, ``float16``.
    Log-probs are always computed in float32."""
    trust_remote_code: bool = False
    """Allow model code from the hub; off unless you trust the checkpoint."""
    lora_r: int = 0
    """LoRA rank for the student (0 = full fine-tuning). Needs ``peft``; with ``reference="student"`` the
    reference is the base with adapters disabled (no second copy)."""
    lora_alpha: int = 16
    """LoRA alpha."""
    lora_target_modules: list[str] | str = "all-linear"
    """Modules that get LoRA adapters (peft's ``target_modules``)."""
    score_chunk_tokens: int = 0
    """Positions per chunk when projecting hidden states to the vocabulary (0 = auto: about 64 MiB of float32
    logits per chunk)."""

    out_dir: str = "runs/default"
    """Run directory: config.json, metrics.jsonl, eval.jsonl, samples.jsonl, summary.json, checkpoints/."""
    save_every: int = 0
    """Checkpoint every N steps (0 = only at the end)."""
    log_samples_every: int = 10
    """Write per-token samples every N steps (and at the first and last step; 0 = only those two)."""
    log_samples: int = 4
    """Completions written to samples.jsonl each time samples are logged."""
    eval_every: int = 0
    """Run evaluation every N steps (0 = only before and after training)."""
    eval_k: int = 4
    """Samples per test prompt for ``mean_acc`` (0 = greedy only)."""
    eval_limit: int = 0
    """Test prompts per task used in evaluation (0 = the whole test split)."""
    resume: bool = False
    """Continue from the newest checkpoint in ``out_dir`` if there is one."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form notes saved with the run (sweep parameters, etc.)."""
    # --- evaluation protocol and loss normalisation (world v2: paired comparisons) ---
    eval_seed: int = 0
    """Seed of the evaluation's sampled completions (``mean_acc``), the same for every run of a comparison and
    independent of ``seed``: two runs that differ only in their training are scored on one random stream."""
    loss_agg: str = "token-mean"
    """How per-token losses ``ℓ_bt`` (mask ``m_bt``) become one number: ``token-mean`` = ``Σ_bt m·ℓ / Σ_bt m``
    (every token weighs the same, long completions weigh more) or ``seq-mean-token-mean`` =
    ``(1/B') Σ_b (Σ_t m·ℓ / Σ_t m)`` over the ``B'`` non-empty rows (every completion weighs the same; the
    official verl G-OPD run's effective normalisation). See docs/metrics.md."""

    def __post_init__(self) -> None:
        for name in ("teacher", "reference", "lam"):  # {domain: ...} given as JSON text (papermill, shell)
            value = getattr(self, name)
            if isinstance(value, str) and value.lstrip().startswith("{"):
                try:
                    setattr(self, name, json.loads(value))
                except json.JSONDecodeError as err:
                    raise ConfigError(f"{name} looks like JSON but does not parse: {err}") from None
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.estimator not in ESTIMATORS:
            raise ConfigError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        for domain, lam in self.lam_items():
            if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam > 0):
                where = f" for domain {domain!r}" if domain else ""
                raise ConfigError(
                    f"lam must be a finite number > 0{where}, got {lam!r} (1 = OPD, 1.25 = ExOPD default)"
                )
        if not 0.0 <= self.gamma <= 1.0:
            raise ConfigError(f"gamma must be in [0, 1], got {self.gamma}")
        if self.gamma > 0 and self.estimator != "sampled":
            raise ConfigError("gamma > 0 only applies to estimator='sampled' (the others are per-state, γ = 0)")
        if not 0.0 <= self.jsd_beta <= 1.0:
            raise ConfigError(f"jsd_beta must be in [0, 1], got {self.jsd_beta}")
        if self.estimator == "jsd" and any(lam != 1 for _, lam in self.lam_items()):
            raise ConfigError("estimator='jsd' distils to the teacher itself; set lam=1 (or use 'full' for G-OPD)")
        positive = ("topk", "epochs_per_batch", "batch_size", "samples_per_prompt", "max_new_tokens", "steps")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name, allowed in (
            ("sdpo_teacher", ("live", "initial", "ema")),
            ("sdpo_feedback", ("verifier", "solution", "both")),
            ("sdpo_no_feedback", ("mask", "plain")),
            ("mu_schedule", ("constant", "warmup_cosine")),
        ):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not 0.0 <= self.sdpo_ema_rate < 1.0:
            raise ConfigError(f"sdpo_ema_rate must be in [0, 1), got {self.sdpo_ema_rate}")
        if not 0.0 <= self.mu <= 1.0:
            raise ConfigError(f"mu must be in [0, 1], got {self.mu}")
        if self.mu_schedule == "warmup_cosine" and not 0.0 <= self.mu_valley <= self.mu:
            raise ConfigError(
                f"need 0 <= mu_valley <= mu for warmup_cosine, got mu={self.mu}, mu_valley={self.mu_valley}"
            )
        if self.method == "chord" and self.mu <= 0:
            raise ConfigError("method='chord' needs mu > 0 (the weight of the SFT term); mu=0 is plain GRPO")
        if self.method == "sdpo" and "{prompt}" not in self.sdpo_template:
            raise ConfigError("sdpo_template must contain {prompt}")
        if self.kl_coef < 0:
            raise ConfigError(f"kl_coef must be >= 0, got {self.kl_coef}")
        for name in (
            "mu_warmup_steps",
            "eval_k",
            "eval_limit",
            "save_every",
            "log_samples_every",
            "log_samples",
            "eval_every",
            "warmup_steps",
            "lora_r",
            "score_chunk_tokens",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        if self.temperature != 1 and self.method in ("gopd", "sdpo", "grpo", "chord"):
            raise ConfigError(
                f"temperature={self.temperature} with method={self.method!r}: the update scores the student's "
                "log-probs at temperature 1, so samples drawn at another temperature would make the update and "
                "reverse_kl off-policy; use temperature=1"
            )
        if self.loss_agg not in LOSS_AGGS:
            raise ConfigError(f"loss_agg must be one of {LOSS_AGGS}, got {self.loss_agg!r}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.clip_eps is not None and self.clip_eps <= 0:
            raise ConfigError(f"clip_eps must be > 0 or None, got {self.clip_eps}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(f"optimizer must be adamw or sgd, got {self.optimizer!r}")
        if self.lr_schedule not in ("constant", "linear", "cosine"):
            raise ConfigError(f"lr_schedule must be constant, linear or cosine, got {self.lr_schedule!r}")
        if self.dtype not in ("auto", "float32", "bfloat16", "float16"):
            raise ConfigError(f"dtype must be auto, float32, bfloat16 or float16, got {self.dtype!r}")
        if isinstance(self.teacher, dict) and not self.teacher:
            raise ConfigError("teacher is an empty dict; give {domain: path} or one path")

    # ------------------------------------------------------------------ helpers
    def lam_items(self) -> list[tuple[str, float]]:
        """``[(domain, λ)]``; domain is ``""`` when one λ serves every domain."""
        if isinstance(self.lam, dict):
            return list(self.lam.items())
        return [("", self.lam)]

    def lam_for(self, domain: str) -> float:
        """λ for a domain (the single λ when not per-domain)."""
        if isinstance(self.lam, dict):
            if domain in self.lam:
                return float(self.lam[domain])
            if "default" in self.lam:
                return float(self.lam["default"])
            raise ConfigError(f"no lam for domain {domain!r}; lam has {sorted(self.lam)} (add it or a 'default')")
        return float(self.lam)

    @property
    def needs_reference(self) -> bool:
        """The reference is run only when some λ differs from 1 (at λ = 1 it cancels exactly), or for
        GRPO's KL term."""
        if self.method in ("grpo", "chord"):
            return self.kl_coef > 0
        return self.method in ("gopd", "sdpo") and any(lam != 1 for _, lam in self.lam_items())

    @property
    def rl_method(self) -> str:
        """The update rule behind the method: ``gopd`` (G-OPD advantages), ``grpo`` or ``sft``."""
        return {"sdpo": "gopd", "chord": "grpo", "offpolicy": "sft"}.get(self.method, self.method)

    @property
    def task_names(self) -> list[str]:
        """``tasks`` as a list of names (a comma-separated string is split)."""
        if isinstance(self.tasks, str):
            return [t.strip() for t in self.tasks.split(",") if t.strip()]
        return list(self.tasks)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; valid fields: {sorted(names)}")
        numeric = {f.name for f in dataclasses.fields(cls) if str(f.type).split(" |")[0] in ("int", "float")}
        data = {k: _number(k, v) if k in numeric and isinstance(v, str) else v for k, v in data.items()}
        return cls(**data)

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        """Read a YAML or JSON config file."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of field: value")
        return cls.from_dict(data)


def _number(name: str, text: str) -> float | int:
    """YAML 1.1 reads ``1e-3`` as text: accept numeric text for numeric fields."""
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {text!r}") from None
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def config_fields() -> list[dataclasses.Field]:
    """The fields of :class:`RunConfig` (used by the CLI to build its options)."""
    return list(dataclasses.fields(RunConfig))
