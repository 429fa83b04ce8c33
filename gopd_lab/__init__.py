"""gopd_lab: a workbench for on-policy distillation (OPD, G-OPD, ExOPD) of language models.

The loop is five stages, each a function: ``rollout.sample`` → ``score.score_rollout`` →
``objectives.gopd_advantages`` → ``update.update`` → metrics; ``train.train`` runs them.
"""

from .config import ConfigError, RunConfig
from .objectives import gopd_advantages
from .train import train

__all__ = ["ConfigError", "RunConfig", "gopd_advantages", "train"]
__version__ = "0.1.0"
