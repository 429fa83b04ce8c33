"""gopd_lab: a workbench for on-policy distillation (OPD, G-OPD, ExOPD) of language models.

The loop is five stages, each a function: ``rollout.sample`` → ``score.score_rollout`` →
``objectives.gopd_advantages`` → ``update.update`` → metrics; ``train.train`` runs them.
"""

from gopd_lab.config import ConfigError, RunConfig
from gopd_lab.loop.train import train
from gopd_lab.objectives import gopd_advantages

__all__ = ["ConfigError", "RunConfig", "gopd_advantages", "train"]
__version__ = "0.1.0"
