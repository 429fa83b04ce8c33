"""The pilot that fixes the constant of the constant-advantage control (sweeps/v2/lam_controls_constant.yaml).

OPD (λ = 1, student-base ← teacher-add, the settings of sweeps/v2/lam.yaml) is trained with a pilot seed that no
sweep point uses, and the mean ``|A_t|`` over every valid token of its training batches is recorded step by step.
Nothing here reads the test split (the run's evaluator is switched off), so the constant is fixed before any
test accuracy of the controls exists.

    nice -n 5 python sweeps/v2/lam_controls_pilot.py   # → results/v2/lam_controls_pilot.json (about a minute)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

from gopd_lab import RunConfig, train
from gopd_lab.methods.gopd import GOPD
from gopd_lab.methods.method import register_method
from gopd_lab.runio import atomic_write_json
from gopd_lab.tasks.arith import use_world

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "results" / "v2" / "lam_controls_pilot.json"
PILOT_SEED = 100
SETTINGS = dict(
    student="zoo:student-base",
    teacher="zoo:teacher-add",
    tasks="add",
    lam=1.0,
    steps=400,
    batch_size=32,
    lr=1.0e-4,
    temperature=1.0,
    max_new_tokens=6,
    seed=PILOT_SEED,
)
TOKENS: list[tuple[float, int]] = []
"""Per batch: the sum of ``|A_t|`` over its valid tokens and their number."""


@register_method
class AbsAdvantageProbe(GOPD):
    """G-OPD unchanged, recording each batch's ``Σ|A_t|`` and token count (the pilot's measurement)."""

    name = "gopd-abs-probe"

    def signal(self, scored, lp_student, settings, dist=None, state=None):
        lineage = super().signal(scored, lp_student, settings, dist, state)
        valid = scored.rollout.completion_mask.bool()  # (B, C)
        TOKENS.append((float(lineage.advantages[valid].abs().sum()), int(valid.sum())))
        return lineage


def main() -> int:
    use_world("v2")
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = RunConfig(
            **SETTINGS, method="gopd-abs-probe", device="cpu", dtype="float32", out_dir=tmp, extra={"world": "v2"}
        )
        train(cfg, evaluate=lambda model, step: [], progress=False)  # no evaluation: the test split is never read
    if len(TOKENS) != SETTINGS["steps"]:
        raise RuntimeError(f"expected one record per step, got {len(TOKENS)}")
    per_100 = []
    for start in range(0, len(TOKENS), 100):
        part = TOKENS[start : start + 100]
        per_100.append(sum(a for a, _ in part) / sum(n for _, n in part))
    mean_abs = sum(a for a, _ in TOKENS) / sum(n for _, n in TOKENS)
    atomic_write_json(
        OUT,
        {
            "what": "mean |A_t| of OPD over every valid token of its 400 training batches (pilot seed, no test data)",
            "settings": SETTINGS,
            "mean_abs_advantage": mean_abs,
            "mean_abs_advantage_per_100_steps": per_100,
            "tokens": sum(n for _, n in TOKENS),
        },
    )
    print(
        f"mean |A_t| = {mean_abs:.4f} (per 100 steps: {', '.join(f'{x:.4f}' for x in per_100)}) → {OUT.relative_to(ROOT)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
