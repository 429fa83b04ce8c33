"""Method recipes: each method's own ``step`` gives the numbers of the shared step (which builds the batch by the
method's flags), and the λ rule's state
between batches is an object the G-OPD recipe owns (``LamState``), not a field the update writes into."""

import dataclasses
import json
from pathlib import Path

import pytest

from gopd_lab.config import RunConfig
from gopd_lab.loop.train import train
from gopd_lab.loop.update import UpdateSettings
from gopd_lab.methods import GOPD, GRPO, SDPO, SFT, LamState, Method, get_method

PROMPTS = ["12+7=", "3*4=", "9+9=", "100-1=", "7*7="]


def _metrics(out_dir) -> list[dict]:
    rows = [json.loads(line) for line in (Path(out_dir) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time_")} for r in rows]


@pytest.mark.parametrize(
    "recipe, kw",
    [
        (GOPD, dict(method="gopd", lam=1.25)),
        (GOPD, dict(method="gopd", lam_mode="reopd", micro_batch_size=2)),
        (GRPO, dict(method="grpo", tasks="add", samples_per_prompt=2, kl_coef=0.1)),
        (GRPO, dict(method="chord", tasks="add", samples_per_prompt=2, mu=0.5)),
        (SDPO, dict(method="sdpo", tasks="add")),
        (SFT, dict(method="sft", tasks="add")),
        (SFT, dict(method="offpolicy")),
    ],
)
def test_a_recipe_step_equals_the_shared_step(tiny_dirs, tmp_path, monkeypatch, recipe, kw):
    cfg = RunConfig(
        student=tiny_dirs["student"],
        teacher=tiny_dirs["teacher"],
        device="cpu",
        dtype="float32",
        batch_size=3,
        max_new_tokens=5,
        lr=1e-2,
        steps=3,
        log_samples=0,
        eval_limit=2,
        **({"prompts": PROMPTS} if "tasks" not in kw else {}),
        **kw,
    )
    train(cfg.replace(out_dir=str(tmp_path / "recipe")), progress=False)
    monkeypatch.setattr(recipe, "step", Method.step)  # the collector and the update choose by the flags
    train(cfg.replace(out_dir=str(tmp_path / "shared")), progress=False)
    assert _metrics(tmp_path / "recipe") == _metrics(tmp_path / "shared")


def test_the_reopd_budget_is_the_recipes_state():
    assert "reopd_gamma" not in {f.name for f in dataclasses.fields(UpdateSettings)}
    gopd = get_method("gopd")
    cfg = RunConfig(student="s", teacher="t", lam_mode="reopd")
    assert gopd.new_state(cfg, []) == LamState(reopd_gamma=None)
    assert gopd.new_state(cfg, [{"reopd_gamma_b": 0.2}, {"reopd_gamma_b": 0.4}]).reopd_gamma == 0.4
    assert gopd.new_state(cfg.replace(lam_mode="fixed"), [{"reopd_gamma_b": 0.4}]).reopd_gamma is None
    assert get_method("grpo").new_state(cfg, []) is None
