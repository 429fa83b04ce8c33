"""The lineage notebooks, 09 (the G-OPD lineage side by side) and its sweep's point notebook: committed clean
(``notebook_checks`` rules) and each runs top to bottom with papermill at tiny settings on the embedded zoo.
09 reads the committed ``results/v2/lineage.csv`` (world v2, like its live runs); its asserts (the logged λ_t, gates and splits are exactly the
formulas, and the claims about the comparison) are the test."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from notebook_checks import assert_clean_notebook, source

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
ALLOWED_IMPORTS = {"gopd_lab", "torch", "plotly", "pandas", "pathlib", "json"}
CI_PARAMETERS: dict[str, dict] = {
    "09_lineage": dict(steps=2, batch_size=4, view_samples=2, eval_limit=2),
    "lineage_point": dict(arm="reopd", steps=2, batch_size=4, eval_k=0, eval_limit=2),
}


@pytest.mark.parametrize("stem", sorted(CI_PARAMETERS))
def test_committed_notebook_is_clean(stem):
    nb = assert_clean_notebook(NOTEBOOKS / f"{stem}.ipynb", set(CI_PARAMETERS[stem]), ALLOWED_IMPORTS)
    if stem == "09_lineage":
        assert re.search(r"what it shows", source(nb["cells"][0]), re.I)
        assert any("$$" in source(c) for c in nb["cells"] if c["cell_type"] == "markdown"), "typeset formulas"


def test_results_table_is_committed_with_every_arm_and_seed():
    import pandas as pd

    results = pd.read_csv(ROOT / "results" / "v1" / "lineage.csv")
    arms = ["fixed-1", "fixed-1.25", "fixed-1.5", "reopd", "agopd", "entropy", "gated"]
    assert sorted(results.arm.unique()) == sorted(arms)
    assert all(sorted(results[results.arm == a].seed) == [0, 1, 2, 3, 4] for a in arms), "paired seeds"


@pytest.fixture(scope="module")
def kernel_name():
    pytest.importorskip("papermill")
    import os
    import shutil

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


@pytest.mark.slow
@pytest.mark.parametrize("stem", sorted(CI_PARAMETERS))
def test_lineage_notebook_runs_at_ci_parameters(stem, tmp_path, kernel_name):
    import papermill

    from gopd_lab.world import zoo

    try:
        zoo.read_manifest()
    except zoo.ZooError as err:
        pytest.skip(f"the lineage notebooks run on the embedded zoo: {err}")
    out = tmp_path / "runs"
    for _ in range(2 if stem == "lineage_point" else 1):  # a second Run All into the same folder works (overwrite)
        papermill.execute_notebook(
            str(NOTEBOOKS / f"{stem}.ipynb"),
            str(tmp_path / f"{stem}.ipynb"),
            parameters={**CI_PARAMETERS[stem], "out_dir": str(out)},
            kernel_name=kernel_name,
            cwd=str(tmp_path),
            progress_bar=False,
            log_output=False,
        )
    if stem == "lineage_point":
        assert json.loads((out / "config.json").read_text())["lam_mode"] == "reopd"
    else:
        assert sorted(p.name for p in out.iterdir()) == ["agopd", "entropy", "gated", "reopd"]
