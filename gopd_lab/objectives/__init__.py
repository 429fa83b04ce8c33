"""The objectives of on-policy distillation as pure tensor math (no model calls): G-OPD advantages
(``advantages``), the λ rules of ``RunConfig.lam_mode`` (``lineage``), GRPO/SFT/CHORD terms (docs/math.md).

Everything public is re-exported here: ``from gopd_lab.objectives import gopd_advantages``.
"""

from gopd_lab.objectives.advantages import (
    agopd_lambda,
    chord_phi,
    discounted_returns,
    entropy_from_logp,
    entropy_split,
    forward_kl,
    gopd_advantages,
    group_advantages,
    grpo_token_advantages,
    kl_k3,
    masked_mean,
    reopd_budget,
    reopd_lambda,
    reward_gate,
    sft_loss,
    target_logprobs,
)
from gopd_lab.objectives.estimator import (
    ESTIMATORS,
    MIXED_TARGET,
    NEEDS,
    SAMPLED_TOKENS,
    TEACHER_DISTRIBUTION,
    TEACHER_TOPK,
    Estimator,
    LossInput,
    get_estimator,
    register_estimator,
)
from gopd_lab.objectives.full import Full, full_loss
from gopd_lab.objectives.jsd import JSD, jsd_loss
from gopd_lab.objectives.sampled import Sampled, sampled_loss
from gopd_lab.objectives.topk import TopK, topk_buckets, topk_loss

__all__ = [
    "ESTIMATORS",
    "MIXED_TARGET",
    "NEEDS",
    "SAMPLED_TOKENS",
    "TEACHER_DISTRIBUTION",
    "TEACHER_TOPK",
    "Estimator",
    "LossInput",
    "get_estimator",
    "register_estimator",
    "Full",
    "JSD",
    "Sampled",
    "TopK",
    "gopd_advantages",
    "reopd_lambda",
    "reopd_budget",
    "agopd_lambda",
    "entropy_split",
    "forward_kl",
    "reward_gate",
    "discounted_returns",
    "target_logprobs",
    "sampled_loss",
    "full_loss",
    "topk_loss",
    "topk_buckets",
    "jsd_loss",
    "masked_mean",
    "entropy_from_logp",
    "group_advantages",
    "grpo_token_advantages",
    "kl_k3",
    "sft_loss",
    "chord_phi",
]
