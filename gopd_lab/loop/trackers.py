"""``RunConfig.report_to``: the metrics of ``metrics.jsonl`` also go to TensorBoard, trackio or Weights & Biases.

Each tracker receives exactly the rows written to ``metrics.jsonl`` (every numeric field but ``step``, at that
row's ``step``) and the evaluation rows of ``eval.jsonl`` as ``eval/<domain>/<metric>``. Each backend is an
optional extra (``pip install 'gopd-lab[tensorboard]'``); a missing one is refused by the config
(:func:`gopd_lab.config_checks.check_trackers`), before the run directory is touched or any model loads, with a
:class:`~gopd_lab.config.ConfigError` naming the extra. The trackers are closed when the run ends or fails.

- ``tensorboard``: event files in ``<out_dir>/tensorboard`` (``tensorboard --logdir runs``). On resume from
  step ``s`` the writer is opened with ``purge_step=s + 1``: TensorBoard drops the interrupted run's events past
  the checkpoint, as ``metrics.jsonl`` is cut back to it.
- ``trackio``: local by default (a SQLite database under ``$TRACKIO_DIR``, ``trackio show`` opens the
  dashboard); project ``gopd-lab``, run named after ``out_dir``. On resume the same run continues
  (``resume="allow"``); trackio cannot delete rows, so the interrupted run's rows past the checkpoint stay and
  the resumed steps appear twice there (``metrics.jsonl`` and TensorBoard hold each step once).
- ``wandb``: ``wandb.init(project="gopd-lab", dir=out_dir)``; ``WANDB_MODE=offline`` keeps it local. No run id is
  carried over, so a resumed run is a new W&B run that starts at the checkpoint's step (no step is logged twice
  within one W&B run; the interrupted run keeps its rows).
- An overwritten run (``overwrite=True``) deletes ``tensorboard/`` and ``wandb/`` with the other run files.

``report_samples=True`` also sends the samples written to ``samples.jsonl`` as a per-token table named ``samples``
(:func:`sample_table`: one row per completion token with its A_t; TRL logs a completions table the same way):
a ``trackio.Table`` / ``wandb.Table``, and in TensorBoard a Markdown table in the Text tab.
"""

from __future__ import annotations

import importlib
import math
from pathlib import Path
from typing import Any

from gopd_lab.config import REPORT_TO, ConfigError, RunConfig

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


SAMPLE_COLUMNS = (
    "step", "sample", "domain", "position", "token", "advantage", "lp_student", "lp_teacher", "lam_t", "score",
)  # fmt: skip


def sample_table(records: list[dict]) -> list[list]:
    """``samples.jsonl`` records (``sample_records``) as rows of :data:`SAMPLE_COLUMNS`, one per completion token:
    the token, its advantage A_t and log-probs (``None`` where the step has none), and the sample's reward."""

    def at(values, t):
        return None if values is None else values[t]

    rows = []
    for r in records:
        lam_t = r.get("lam_t")
        for t, token in enumerate(r["tokens"]):
            rows.append(
                [
                    r["step"],
                    r["index"],
                    r["domain"],
                    t,
                    token,
                    at(r.get("advantage"), t),
                    at(r.get("lp_student"), t),
                    at(r.get("lp_teacher"), t),
                    at(lam_t, t) if lam_t is not None else r.get("lam"),
                    r.get("score"),
                ]
            )
    return rows


def markdown_table(columns, rows: list[list]) -> str:
    """A Markdown table (TensorBoard's Text tab renders it); numbers with 4 significant digits."""

    def cell(v) -> str:
        text = f"{v:.4g}" if isinstance(v, float) else "" if v is None else str(v)
        return text.replace("|", "\\|").replace("\n", "\\n")

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows])


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

    def __init__(self, cfg: RunConfig, start: int = 0):
        _require("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = Path(cfg.out_dir) / "tensorboard"
        purge = start + 1 if start > 0 else None  # events at steps > start are the interrupted run's: dropped
        self.writer = SummaryWriter(log_dir=str(self.logdir), purge_step=purge)

    def log(self, scalars: dict[str, float], step: int) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, global_step=step)

    def log_table(self, name: str, columns, rows: list[list], step: int) -> None:
        self.writer.add_text(name, markdown_table(columns, rows), global_step=step)

    def finish(self) -> None:
        self.writer.close()


class TrackioTracker:
    """A trackio run: local unless ``$TRACKIO_SPACE_ID`` or ``cfg.extra["trackio_space_id"]`` names a Space
    (``cfg.extra["trackio_project"]`` renames the project)."""

    def __init__(self, cfg: RunConfig, start: int = 0):
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

    def log_table(self, name: str, columns, rows: list[list], step: int) -> None:
        self.run.log({name: self.trackio.Table(columns=list(columns), data=rows)}, step=step)

    def finish(self) -> None:
        self.run.finish()


class WandbTracker:
    """A Weights & Biases run (``WANDB_MODE=offline`` writes it under ``<out_dir>/wandb`` only)."""

    def __init__(self, cfg: RunConfig, start: int = 0):
        self.wandb = wandb = _require("wandb", "wandb")
        self.run = wandb.init(
            project=cfg.extra.get("wandb_project", PROJECT),
            name=Path(cfg.out_dir).name,
            dir=cfg.out_dir,
            config=cfg.to_dict(),
            resume="allow" if cfg.resume else None,
        )

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)

    def log_table(self, name: str, columns, rows: list[list], step: int) -> None:
        self.run.log({name: self.wandb.Table(columns=list(columns), data=rows)}, step=step)

    def finish(self) -> None:
        self.run.finish()


TRACKERS = {"tensorboard": TensorBoardTracker, "trackio": TrackioTracker, "wandb": WandbTracker}
assert set(TRACKERS) == set(REPORT_TO) - {"none"}


class Reporter:
    """A :func:`gopd_lab.loop.train.train` callback that forwards ``metrics.jsonl`` and ``eval.jsonl`` rows to the
    trackers of ``cfg.report_to``. :meth:`start` opens them at the run's first step (after a resume, the
    checkpoint's); :meth:`close` finishes them, once, whether the run ended or failed."""

    def __init__(self, cfg: RunConfig):
        for name in cfg.report_targets:  # every package present before any tracker starts
            _require(name, name)
        self.cfg = cfg
        self.trackers: list = []

    def start(self, step: int = 0) -> None:
        for name in self.cfg.report_targets:
            self.trackers.append(TRACKERS[name](self.cfg, step))

    def on_step(self, step: int, metrics: dict) -> None:
        for t in self.trackers:
            t.log(_numeric(metrics), step)

    def on_eval(self, step: int, rows: list[dict]) -> None:
        for t in self.trackers:
            t.log(eval_scalars(rows), step)

    def on_samples(self, step: int, records: list[dict]) -> None:
        """``report_samples``: the step's logged samples as a per-token table (:func:`sample_table`)."""
        if not self.cfg.report_samples or not records:
            return
        rows = sample_table(records)
        for t in self.trackers:
            t.log_table("samples", SAMPLE_COLUMNS, rows, step)

    def on_end(self, summary: dict) -> None:
        self.close()

    def close(self) -> None:
        trackers, self.trackers = self.trackers, []
        for t in trackers:
            t.finish()
