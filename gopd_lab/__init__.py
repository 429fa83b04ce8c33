"""gopd_lab: a workbench for on-policy distillation (OPD, G-OPD, ExOPD) of language models.

The loop is five stages, each a function: ``lm.rollout.sample`` → ``scorers.score.score_rollout`` →
``objectives.gopd_advantages`` → ``loop.update.update`` → metrics; ``loop.train.train`` runs them
(docs/architecture.md). ``course``, ``widgets``, ``zoo`` and ``exact``, the modules the course notebooks import
from here, are loaded on first use from ``viz``, ``world`` and ``lm``.
"""

import importlib

from gopd_lab.config import ConfigError, RunConfig
from gopd_lab.loop.train import train
from gopd_lab.objectives import gopd_advantages

__all__ = ["ConfigError", "RunConfig", "gopd_advantages", "train"]
__version__ = "0.1.0"

_MODULES = {
    "course": "gopd_lab.viz.course",
    "widgets": "gopd_lab.viz.widgets",
    "zoo": "gopd_lab.world.zoo",
    "exact": "gopd_lab.lm.exact",
}


def __getattr__(name: str):
    """``from gopd_lab import course, widgets, zoo, exact``: the module, imported when first asked for."""
    if name in _MODULES:
        return importlib.import_module(_MODULES[name])
    raise AttributeError(f"module 'gopd_lab' has no attribute {name!r}")
