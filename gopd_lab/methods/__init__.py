"""The training methods, one file each, registered by name (:mod:`gopd_lab.methods.method`): ``gopd`` (G-OPD,
OPD at λ = 1, ExOPD at λ > 1), ``sdpo``, ``grpo``, ``chord``, ``sft``, ``offpolicy`` and ``constant`` (a control:
G-OPD's step with ``A_t = −lam`` on every token)."""

from gopd_lab.methods.chord import CHORD
from gopd_lab.methods.constant import ConstantAdvantage
from gopd_lab.methods.gopd import GOPD, GOPDObjective, LamState, Lineage, lam_stats, lineage_signal
from gopd_lab.methods.grpo import GRPO
from gopd_lab.methods.method import METHODS, Method, get_method, register_method
from gopd_lab.methods.sdpo import SDPO
from gopd_lab.methods.sft import SFT, OffPolicy

__all__ = [
    "CHORD",
    "ConstantAdvantage",
    "GOPD",
    "GOPDObjective",
    "GRPO",
    "METHODS",
    "SDPO",
    "SFT",
    "LamState",
    "Lineage",
    "Method",
    "OffPolicy",
    "get_method",
    "lam_stats",
    "lineage_signal",
    "register_method",
]
