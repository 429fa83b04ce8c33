"""Plugins (``RunConfig.plugins``): a user's .py file registering a task, an estimator, a method and a teacher type
reaches ``gopd-lab train``, ``config.json``, a resumed run and every point of ``gopd-lab sweep``."""

import json
import sys
from pathlib import Path

import pytest

from gopd_lab import RunConfig
from gopd_lab.cli import main
from gopd_lab.config import ConfigError
from gopd_lab.experiments.sweep_grid import point_config
from gopd_lab.methods import METHODS
from gopd_lab.objectives import ESTIMATORS
from gopd_lab.teacher_types import TEACHER_TYPES

REPO = Path(__file__).resolve().parents[1]

PLUGIN = '''
"""A researcher's extensions in one file: subtraction, a k1-style estimator, a method and a teacher type."""
from gopd_lab.methods import GOPD, register_method
from gopd_lab.objectives import SAMPLED_TOKENS, Estimator, register_estimator, sampled_loss
from gopd_lab.tasks import make_task, register_task
from gopd_lab.teacher_types import Ensemble, register_teacher_type

register_task(
    "plugin-sub",
    lambda: make_task(
        "plugin-sub",
        train=[(f"{a}-{b}=", str(a - b)) for a in range(10, 40) for b in range(10)],
        test=[(f"{a}-{b}=", str(a - b)) for a in range(40, 44) for b in range(2)],
    ),
)


@register_estimator
class PluginSampled(Estimator):
    name = "plugin-sampled"
    needs = SAMPLED_TOKENS
    uses_advantages = True

    def loss(self, x):
        return sampled_loss(x.out.lp, x.advantages, x.weights)


@register_method
class PluginOPD(GOPD):
    name = "plugin-opd"


register_teacher_type("plugin-twice", lambda argument, load: Ensemble([load(argument), load(argument)]))
'''

NAMES = {"task": "plugin-sub", "estimator": "plugin-sampled", "method": "plugin-opd", "teacher": "plugin-twice"}


def _forget_plugin() -> None:
    """Undo the plugin's registrations and import, as in a fresh process."""
    from gopd_lab.tasks import _REGISTRY

    _REGISTRY.pop(NAMES["task"], None)
    ESTIMATORS.pop(NAMES["estimator"], None)
    METHODS.pop(NAMES["method"], None)
    TEACHER_TYPES.pop(NAMES["teacher"], None)
    for name in [m for m in sys.modules if m.startswith("gopd_lab_plugin_")]:
        del sys.modules[name]


@pytest.fixture
def plugin(tmp_path):
    path = tmp_path / "my_extensions.py"
    path.write_text(PLUGIN)
    _forget_plugin()
    yield path
    _forget_plugin()


ARGS = dict(
    method=NAMES["method"],
    estimator=NAMES["estimator"],
    teacher=f"{NAMES['teacher']}:zoo:teacher-add",
    tasks=NAMES["task"],
    student="zoo:student-base",
    batch_size=2,
    max_new_tokens=4,
    eval_k=0,
    eval_limit=2,
    log_samples=1,
    device="cpu",
)


def test_without_the_plugin_the_config_names_what_is_missing(plugin):
    with pytest.raises(ConfigError, match="unknown task 'plugin-sub'.*plugins"):
        RunConfig(**ARGS, steps=1)


def test_a_plugin_file_that_is_missing_or_broken_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="plugin file .*nope.py does not exist"):
        RunConfig(plugins=[str(tmp_path / "nope.py")])
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(ConfigError, match="bad.py failed to import: RuntimeError: boom"):
        RunConfig(plugins=str(bad))
    with pytest.raises(ConfigError, match="plugin 'no_such_module_x' could not be imported"):
        RunConfig(plugins=["no_such_module_x"])


@pytest.mark.slow
def test_a_plugin_reaches_the_cli_config_json_and_a_resume(plugin, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative plugin path, recorded absolute
    out = tmp_path / "run"
    options = [f"--{k.replace('_', '-')}={v}" for k, v in ARGS.items()]
    assert main(["train", f"--plugins={plugin.name}", *options, "--steps=1", f"--out-dir={out}"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["plugins"] == [str(plugin)]
    assert (saved["method"], saved["estimator"], saved["tasks"]) == (NAMES["method"], NAMES["estimator"], "plugin-sub")
    assert saved["teacher"] == "plugin-twice:zoo:teacher-add"

    _forget_plugin()  # a fresh process: only config.json knows the plugin
    monkeypatch.chdir(REPO)
    assert main(["train", f"--config={out / 'config.json'}", "--resume", "--steps=2"]) == 0
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2] and NAMES["method"] in METHODS


def test_a_point_notebook_builds_its_config_from_its_parameters(plugin):
    params = {"plugins": [str(plugin)], **ARGS, "steps": 3, "torch_threads": 1, "json": json, "In": []}
    cfg = point_config(params, knobs=("torch_threads",), dtype="float32")
    assert (cfg.method, cfg.steps, cfg.dtype) == (NAMES["method"], 3, "float32")
    with pytest.raises(ConfigError, match=r"unknown config field\(s\): torch_threads.*knobs="):
        point_config(params)


@pytest.mark.slow
def test_a_sweep_grid_names_the_plugins_method_and_sets_a_field_the_notebook_does_not_list(plugin, tmp_path):
    """One point of notebooks/experiment_point.ipynb in its own kernel: the plugin is imported there from the
    ``plugins`` parameter; ``lr_schedule`` is no parameter of the notebook but a RunConfig field."""
    root = tmp_path / "sweep"
    sets = {**ARGS, "plugins": f"[{plugin}]", "steps": 1, "lr_schedule": "cosine"}
    sets.pop("method")
    sets.pop("device")
    argv = ["sweep", str(REPO / "notebooks" / "experiment_point.ipynb"), "--grid", f"method={NAMES['method']}"]
    for k, v in sets.items():
        argv += ["--set", f"{k}={v}"]
    assert main([*argv, "--sweep-dir", str(root)]) == 0
    (point,) = [p for p in root.iterdir() if p.is_dir()]
    saved = json.loads((point / "config.json").read_text())
    assert saved["method"] == NAMES["method"] and saved["lr_schedule"] == "cosine"
    assert saved["plugins"] == [str(plugin)]
