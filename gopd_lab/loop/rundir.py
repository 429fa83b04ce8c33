"""What a run directory may hold before a run starts, so that two runs never mix.

- A fresh run (``resume=False``) into a directory that holds a run is refused unless ``overwrite=True``, which
  deletes that run's files (and only those: other files in the directory are kept).
- ``resume=True`` continues only the run whose ``config.json`` matches: a field that changes the trajectory
  (method, models, λ, learning rate, seed, batch, ...) must be equal; :data:`MAY_DIFFER` (logging and evaluation
  cadence, trackers, the device) may change, and the length of the run where no schedule depends on it.
- A final save cut short (``model.tmp/`` without ``model/``) is finished by resume from the last checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from gopd_lab.errors import RunDirError

RUN_FILES = (
    "config.json",
    "metrics.jsonl",
    "eval.jsonl",
    "samples.jsonl",
    "summary.json",
    "teacher_samples.jsonl",
)
RUN_DIRS = ("checkpoints", "model", "model.tmp", "model.old", "tensorboard", "wandb")
"""``model.old/``: the previous final model while a new one replaces it; ``tensorboard/`` and ``wandb/``: the
trackers of ``report_to`` (an old run's event files would otherwise mix with the new run's)."""

MAY_DIFFER = frozenset(
    {
        "steps",
        "save_every",
        "log_samples_every",
        "log_samples",
        "eval_every",
        "eval_k",
        "eval_limit",
        "resume",
        "overwrite",
        "extra",
        "out_dir",
        "device",
        "score_chunk_tokens",
        "trust_remote_code",
        "report_to",
    }
)
"""Fields a resumed run may change: they do not change the weights a step computes. ``steps`` may change
(to extend a run) only when no schedule depends on it: see :func:`schedule_uses_steps`."""

LINEAGE_KNOBS = {
    "reopd": ("reopd_tau", "reopd_gamma_max", "reopd_target", "reopd_ema"),
    "agopd": ("agopd_rho", "agopd_lam_max"),
    "entropy": ("entropy_threshold",),
}
"""The lineage knobs each ``lam_mode`` reads; under another mode they have no effect, so they may differ."""


def schedule_uses_steps(cfg: dict) -> bool:
    """Whether the learning-rate or μ schedule depends on ``steps``: a ``linear``/``cosine`` learning rate decays
    to 0 at the last step, the ``warmup_cosine`` μ reaches its valley there (``gopd_lab.loop.schedules``)."""
    return cfg.get("lr_schedule", "constant") != "constant" or (
        cfg.get("mu", 0.0) > 0 and cfg.get("mu_schedule", "constant") != "constant"
    )


def holds_run(out: Path) -> list[str]:
    """The run files and directories present in ``out``."""
    return [name for name in RUN_FILES + RUN_DIRS if (out / name).exists()]


def clear_run(out: Path) -> None:
    """Delete a run's files from ``out`` (files it does not know are kept)."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for name in RUN_DIRS:
        shutil.rmtree(out / name, ignore_errors=True)


def _normal(value):
    return json.loads(json.dumps(value))


def _names(value) -> list[str]:
    """``"add,mul"`` and ``["add", "mul"]`` alike (``tasks``)."""
    items = value.split(",") if isinstance(value, str) else list(value or [])
    return [str(x).strip() for x in items if str(x).strip()]


def _comparable(name: str, value):
    if name == "tasks":
        return _names(value)
    return _normal(value)


def config_differences(saved: dict, current: dict) -> list[str]:
    """Fields outside :data:`MAY_DIFFER` whose values differ (a field absent from ``saved`` counts at its
    current value only if it is at the default: fields added later do not block resuming old runs)."""
    from gopd_lab.config import RunConfig

    defaults = RunConfig.__dataclass_fields__
    mode = current.get("lam_mode", "fixed")
    idle = {k for m, knobs in LINEAGE_KNOBS.items() if m != mode for k in knobs}  # no effect under this lam_mode
    changed = []
    for name, value in current.items():
        if name in MAY_DIFFER or name in idle:
            continue
        if name in saved:
            old = saved[name]
        elif name == "world":  # a run from before the field: its world was the environment's, not recorded
            continue
        elif name in defaults:
            f = defaults[name]
            old = f.default_factory() if callable(f.default_factory) else f.default
        else:
            continue
        if _comparable(name, old) != _comparable(name, value):
            changed.append(name)
    if "steps" in saved and saved["steps"] != current.get("steps") and schedule_uses_steps(current):
        changed.append("steps")  # the schedule's shape depends on the run's length
    return changed


def prepare_run_dir(cfg, *, clear: bool) -> None:
    """Refuse a run that would mix with the run already in ``cfg.out_dir``; with ``clear`` (the main process of
    a fresh run with ``overwrite=True``) delete the old run's files."""
    out = Path(cfg.out_dir)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"out_dir {out} is a file, not a directory; choose another out_dir")
    present = holds_run(out)
    if cfg.resume:
        if not present:
            return
        config = out / "config.json"
        if not config.is_file():
            raise RunDirError(
                f"resume=True: {out} holds {present} but no config.json, so nothing shows that they belong to this "
                "config; start a new out_dir, or overwrite=True (--overwrite true) to replace them"
            )
        try:
            saved = json.loads(config.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RunDirError(f"resume=True: {config} is not readable JSON ({err})") from None
        changed = config_differences(saved, cfg.to_dict())
        if changed:
            detail = ", ".join(f"{n}: saved {saved.get(n)!r}, now {getattr(cfg, n)!r}" for n in changed)
            raise RunDirError(
                f"resume=True: the run in {out} was made with another config ({detail}); resume with the saved "
                f"values ({config}), or start a new out_dir"
            )
        return
    if present and not getattr(cfg, "overwrite", False):
        raise RunDirError(
            f"{out} already holds a run ({', '.join(present)}); resume=True (--resume true) continues it, "
            "overwrite=True (--overwrite true) replaces it, or choose another out_dir"
        )
    if present and clear:
        clear_run(out)
