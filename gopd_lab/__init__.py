"""gopd_lab: a workbench for on-policy distillation (OPD, G-OPD, ExOPD) of language models.

The loop is five stages, each a function: ``lm.rollout.sample`` → ``scorers.score.score_rollout`` →
``objectives.gopd_advantages`` → ``loop.update.update`` → metrics; ``loop.train.train`` runs them
(docs/architecture.md). ``course``, ``widgets``, ``zoo`` and ``exact``, the modules the course notebooks import
from here, are loaded on first use from ``viz``, ``world`` and ``lm``; so are ``RunConfig``, ``train`` and the
rest (``import gopd_lab`` imports no torch: ``gopd-lab --help`` answers at once).
"""

import importlib

__all__ = ["ConfigError", "RunConfig", "gopd_advantages", "train"]
__version__ = "0.1.0"

_NAMES = {
    "ConfigError": "gopd_lab.errors",
    "RunConfig": "gopd_lab.config",
    "train": "gopd_lab.loop.train",
    "gopd_advantages": "gopd_lab.objectives",
}

_MODULES = {
    "course": "gopd_lab.viz.course",
    "widgets": "gopd_lab.viz.widgets",
    "zoo": "gopd_lab.world.zoo",
    "exact": "gopd_lab.lm.exact",
}


def __getattr__(name: str):
    """``from gopd_lab import RunConfig, train, course, ...``: the name or module, imported when first asked for."""
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    if name in _MODULES:
        return importlib.import_module(_MODULES[name])
    raise AttributeError(f"module 'gopd_lab' has no attribute {name!r}")
