"""The experiment notebooks, 07 (a λ sweep) and 08 (G-OPD next to its neighbours): committed clean, and each
runs top to bottom with papermill at tiny CI settings on the embedded zoo.

Clean means: no outputs, no execution counts, a first markdown cell saying what the notebook shows and needs,
exactly one code cell tagged ``parameters`` (which every CI parameter below must name), no ``def``/``class``
in code cells, imports from ``gopd_lab`` (plus ``torch`` and ``plotly``), under 100 kB.

The runs use a kernel for this interpreter made by ``gopd_lab.experiments.sweep``'s private kernelspec helper (the one a
sweep gives its points) and write only under ``tmp_path``. 07 runs twice from the repository root (a tiny
sweep, then the same sweep dir viewed without running) and once as JupyterLab opens it, from ``notebooks/``
with its defaults (the committed results of ``sweeps/v2/lam.yaml``). The asserts inside each notebook are the test.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
from notebook_checks import assert_clean_notebook, assert_light_and_quiet, source

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
ALLOWED_IMPORTS = {"gopd_lab", "torch", "plotly"}
ZOO_MODELS = {
    "07_sweeps": {"student-base", "teacher-add"},
    "08_neighbours": {"student-base", "teacher-add", "teacher-mul"},
}

# Tiny settings: a few steps and points; two seeds, so 07's std over seeds is checked. Paths are added per test.
CI_PARAMETERS: dict[str, dict] = {
    "07_sweeps": dict(lams=[1.0, 1.25], seeds=[0, 1], steps=2, batch_size=4, eval_limit=20, workers=2),
    "08_neighbours": dict(
        steps=2,
        batch_size=4,
        samples_per_prompt=2,
        seeds=[0],
        eval_every=1,
        eval_limit=4,
        eval_k=0,
        log_samples_every=1,
        view_prompts=2,
    ),
}


def _path(stem: str) -> Path:
    return NOTEBOOKS / f"{stem}.ipynb"


@pytest.mark.parametrize("stem", sorted(CI_PARAMETERS))
def test_committed_notebook_is_clean(stem):
    nb = assert_clean_notebook(_path(stem), set(CI_PARAMETERS[stem]), ALLOWED_IMPORTS)
    assert re.search(r"what it shows", source(nb["cells"][0]), re.I)


@pytest.fixture(scope="module")
def kernel_name():
    """The kernelspec a sweep gives its points (this interpreter), on a temporary JUPYTER_PATH."""
    pytest.importorskip("papermill")
    from gopd_lab.experiments.sweep import KERNEL_NAME, _private_kernel

    root = _private_kernel()
    mp = pytest.MonkeyPatch()
    mp.setenv("JUPYTER_PATH", os.pathsep.join(filter(None, [root, os.environ.get("JUPYTER_PATH")])))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        mp.setenv(var, "1")
    mp.setenv("TOKENIZERS_PARALLELISM", "false")
    yield KERNEL_NAME
    mp.undo()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def zoo_models() -> set[str]:
    from gopd_lab.world import zoo

    try:
        return set(zoo.read_manifest()["models"])
    except zoo.ZooError as err:
        pytest.skip(f"the experiment notebooks run on the embedded zoo: {err}")


def _execute(stem: str, out: Path, kernel: str, zoo_models: set[str], cwd: Path = ROOT, **params) -> Path:
    import papermill

    if not ZOO_MODELS[stem] <= zoo_models:
        pytest.skip(f"the zoo lacks {sorted(ZOO_MODELS[stem] - zoo_models)} (build it with `gopd-lab zoo build`)")

    executed = out / f"{stem}.ipynb"
    t0 = time.perf_counter()
    papermill.execute_notebook(
        str(_path(stem)),
        str(executed),
        parameters={**CI_PARAMETERS[stem], **params},
        kernel_name=kernel,
        cwd=str(cwd),
        progress_bar=False,
        log_output=False,
    )
    print(f"{stem}: {time.perf_counter() - t0:.1f} s")
    assert_light_and_quiet(executed)
    return executed


@pytest.mark.slow
def test_07_sweep_runs_then_loads_without_running(tmp_path, kernel_name, zoo_models):
    sweep_dir = tmp_path / "sweep"
    _execute(
        "07_sweeps",
        tmp_path,
        kernel_name,
        zoo_models,
        run=True,
        sweep_dir=str(sweep_dir),
        out_dir=str(tmp_path / "runs"),
    )
    points = [f"lam={lam},seed={seed}" for lam in (1.0, 1.25) for seed in (0, 1)]
    assert all(json.loads((sweep_dir / p / "point.json").read_text())["status"] == "ok" for p in points)
    assert {"accuracy_vs_lam.html", "training_curves.html", "lam_table.csv"} <= {
        p.name for p in (tmp_path / "runs").iterdir()
    }
    executions = (sweep_dir / "executions.jsonl").read_text()

    loaded = tmp_path / "loaded"
    loaded.mkdir()
    _execute(
        "07_sweeps", loaded, kernel_name, zoo_models, run=False, sweep_dir=str(sweep_dir), out_dir=str(loaded / "runs")
    )
    assert (sweep_dir / "executions.jsonl").read_text() == executions, "run=False executes no point"


@pytest.mark.slow
def test_07_opens_the_committed_results_from_the_notebooks_folder(tmp_path, kernel_name, zoo_models):
    """As JupyterLab opens it: kernel in notebooks/, default parameters (view mode, nothing trains)."""
    from gopd_lab.viz.course import committed_sweep, sweep_plan

    out = tmp_path / "runs"
    executed = _execute("07_sweeps", tmp_path, kernel_name, zoo_models, cwd=NOTEBOOKS, out_dir=str(out))
    assert {"accuracy_vs_lam.html", "training_curves.html", "lam_table.csv"} <= {p.name for p in out.iterdir()}
    cells = json.loads(executed.read_text())["cells"]
    plan_cell = next(c for c in cells if source(c).startswith("if run:"))
    shown = "".join(plan_cell["outputs"][0]["data"]["text/plain"])
    plan = sweep_plan(committed_sweep("v2/lam"))
    assert "'sweep_dir': 'results/v2/lam'" in shown, "the committed results are shown, relative to the repository"
    assert "/work/" not in shown and str(committed_sweep("v2/lam")) not in shown, "no machine path is shown"
    assert f"'points': {len(plan['points'])}" in shown, "the plan is the shown sweep's sweep.json"


@pytest.mark.slow
def test_08_neighbours_runs(tmp_path, kernel_name, zoo_models):
    out = tmp_path / "runs"
    _execute("08_neighbours", tmp_path, kernel_name, zoo_models, out_dir=str(out))
    arms = ["opd", "exopd", "sdpo", "chord", "offpolicy", "grpo", "gkd"]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(f"{a}-seed0" for a in arms)
    methods = {a: json.loads((out / f"{a}-seed0" / "config.json").read_text()) for a in arms}
    assert [methods[a]["method"] for a in arms] == ["gopd", "gopd", "sdpo", "chord", "offpolicy", "grpo", "gopd"]
    assert methods["exopd"]["lam"] == 1.25 and methods["gkd"]["estimator"] == "jsd"
