"""What a run was made with beyond its fields: ``config.json``'s ``run_record`` (:data:`~gopd_lab.config.RUN_RECORD`).

The data world, every model spec with the path it resolved to (``zoo:`` models with the zoo manifest's sha256 and
the weights' sha256 listed there), the evaluator's settings, the package version, the git commit of the checkout
the package runs from (when it is one) and the command line. ``RunConfig.load`` ignores the record, so a run's
``config.json`` still loads as its config (``gopd-lab train --config run/config.json --resume``).
"""

from __future__ import annotations

import platform
import shlex
import subprocess
import sys
from pathlib import Path

import gopd_lab
from gopd_lab.config import RunConfig
from gopd_lab.teacher_types import split_spec
from gopd_lab.world.zoo import MANIFEST, read_manifest, sha256, zoo_dir


def model_record(spec: str) -> dict:
    """``{"spec", "path", ...}`` of one model spec: a ``zoo:`` model's directory with the manifest's sha256 and
    its weights' sha256; a local directory's absolute path; a teacher type's parts; anything else as given."""
    if not isinstance(spec, str):
        return {"spec": spec}
    if spec.startswith("zoo:"):
        root, name = zoo_dir(), spec[4:]
        entry = read_manifest(root)["models"].get(name, {})
        return {
            "spec": spec,
            "path": str((root / name).resolve()),
            "manifest_sha256": sha256(root / MANIFEST),
            "weights_sha256": entry.get("sha256", {}).get("model.safetensors"),
        }
    parts = split_spec(spec)
    if parts is not None:  # a registered teacher type: its argument's specs, as far as they parse
        inner = [model_record(s.strip()) for s in parts[1].split(",") if s.strip()]
        return {"spec": spec, "type": parts[0], "parts": inner}
    if Path(spec).expanduser().is_dir():
        return {"spec": spec, "path": str(Path(spec).expanduser().resolve())}
    return {"spec": spec}


def _by_domain(spec) -> dict:
    return dict(spec) if isinstance(spec, dict) else {"default": spec}


def git_commit(path: Path | None = None) -> dict | None:
    """``{"commit", "dirty"}`` of the git checkout holding ``path`` (default: the package), None outside one."""
    where = (path or Path(gopd_lab.__file__).resolve().parent).parent
    if not (where / ".git").exists():
        return None
    try:
        head = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        status = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def run_record(cfg: RunConfig, evaluator: dict | None) -> dict:
    """The record written beside the config's fields in ``config.json``."""
    import torch
    import transformers

    models = {"student": model_record(cfg.student)}
    if cfg.teacher:
        models.update({f"teacher/{d}": model_record(s) for d, s in _by_domain(cfg.teacher).items()})
    if cfg.needs_reference:
        models.update({f"reference/{d}": model_record(s) for d, s in _by_domain(cfg.reference).items()})
    return {
        "world": cfg.world,
        "models": models,
        "evaluator": evaluator,
        "gopd_lab_version": gopd_lab.__version__,
        "git": git_commit(),
        "command": shlex.join(sys.argv),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
