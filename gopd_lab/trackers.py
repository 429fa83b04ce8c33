"""``RunConfig.report_to``: the metrics of ``metrics.jsonl`` also go to TensorBoard, trackio or Weights & Biases.

Each tracker receives exactly the rows written to ``metrics.jsonl`` (every numeric field but ``step``, at that
row's ``step``) and the evaluation rows of ``eval.jsonl`` as ``eval/<domain>/<metric>``. Each backend is an
optional extra (``pip install 'gopd-lab[tensorboard]'``); a missing one stops the run before any model loads
with a :class:`~gopd_lab.config.ConfigError` naming the extra.

- ``tensorboard``: event files in ``<out_dir>/tensorboard`` (``tensorboard --logdir runs``).
- ``trackio``: local by default (a SQLite database under ``$TRACKIO_DIR``, ``trackio show`` opens the
  dashboard); project ``gopd-lab``, run named after ``out_dir``.
- ``wandb``: ``wandb.init(project="gopd-lab", dir=out_dir)``; ``WANDB_MODE=offline`` keeps it local.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any

from .config import REPORT_TO, ConfigError, RunConfig

PROJECT = "gopd-lab"


def _numeric(row: dict[str, Any]) -> dict[str, float]:
    """The fields a tracker can plot: finite numbers (bools and ``step`` left out)."""
    return {
        k: float(v)
        for k, v in row.items()
        if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    }


def eval_scalars(rows: list[dict]) -> dict[str, float]:
    """``eval.jsonl`` rows of one step as ``{"eval/<domain>/<metric>": value}``."""
    out = {}
    for row in rows:
        domain = row.get("domain", "all")
        out.update({f"eval/{domain}/{k}": v for k, v in _numeric(row).items()})
    return out


def _require(module: str, name: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(
            f"report_to={name!r} needs the {name} package, which is not installed ({err}); "
            f"install it with: pip install 'gopd-lab[{name}]'"
        ) from None


class TensorBoardTracker:
    """Scalars in TensorBoard event files under ``<out_dir>/tensorboard``."""

    def __init__(self, cfg: RunConfig):
        _require("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = Path(cfg.out_dir) / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.logdir))

    def log(self, scalars: dict[str, float], step: int) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, global_step=step)

    def finish(self) -> None:
        self.writer.close()


class TrackioTracker:
    """A trackio run: local unless ``$TRACKIO_SPACE_ID`` or ``cfg.extra["trackio_space_id"]`` names a Space
    (``cfg.extra["trackio_project"]`` renames the project)."""

    def __init__(self, cfg: RunConfig):
        self.trackio = _require("trackio", "trackio")
        self.run = self.trackio.init(
            project=cfg.extra.get("trackio_project", PROJECT),
            name=Path(cfg.out_dir).name,
            config=cfg.to_dict(),
            space_id=cfg.extra.get("trackio_space_id"),
            resume="allow" if cfg.resume else "never",
            auto_log_cpu=False,
            auto_log_gpu=False,
        )

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def finish(self) -> None:
        self.run.finish()


class WandbTracker:
    """A Weights & Biases run (``WANDB_MODE=offline`` writes it under ``<out_dir>/wandb`` only)."""

    def __init__(self, cfg: RunConfig):
        wandb = _require("wandb", "wandb")
        self.run = wandb.init(
            project=cfg.extra.get("wandb_project", PROJECT),
            name=Path(cfg.out_dir).name,
            dir=cfg.out_dir,
            config=cfg.to_dict(),
            resume="allow" if cfg.resume else None,
        )

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def finish(self) -> None:
        self.run.finish()


TRACKERS = {"tensorboard": TensorBoardTracker, "trackio": TrackioTracker, "wandb": WandbTracker}
assert set(TRACKERS) == set(REPORT_TO) - {"none"}


class Reporter:
    """A :func:`gopd_lab.train.train` callback that forwards ``metrics.jsonl`` and ``eval.jsonl`` rows to the
    trackers of ``cfg.report_to``. Built before any model loads, so a missing package fails fast."""

    def __init__(self, cfg: RunConfig):
        for name in cfg.report_targets:  # every package present before any tracker starts
            _require(name, name)
        self.trackers = [TRACKERS[name](cfg) for name in cfg.report_targets]

    def on_step(self, step: int, metrics: dict) -> None:
        for t in self.trackers:
            t.log(_numeric(metrics), step)

    def on_eval(self, step: int, rows: list[dict]) -> None:
        for t in self.trackers:
            t.log(eval_scalars(rows), step)

    def on_end(self, summary: dict) -> None:
        for t in self.trackers:
            t.finish()
