"""Notebook 10 (credit assignment on chains) and the chain sweep's point notebook: committed clean
(``notebook_checks`` rules) and each runs top to bottom with papermill at tiny settings on the embedded zoo. 10 reads
the committed ``results/chain``; its asserts (the slip is one token, OPD's most negative token sits on the first wrong
step, OPD's share beats GRPO's) are the test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from notebook_checks import assert_clean_notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = {"10_credit_assignment": ROOT / "notebooks", "point": ROOT / "sweeps" / "chain"}
ALLOWED_IMPORTS = {"gopd_lab", "torch"}
CI_PARAMETERS: dict[str, dict] = {
    "10_credit_assignment": dict(limit=12, k=4),  # out_dir: a tmp folder (the test sets it)
    "point": dict(steps=2, batch_size=4, eval_k=1, eval_limit=2, chain_limit=4),
}


@pytest.mark.parametrize("stem", sorted(CI_PARAMETERS))
def test_committed_notebook_is_clean(stem):
    allowed = ALLOWED_IMPORTS | ({"json"} if stem == "point" else set())
    assert_clean_notebook(NOTEBOOKS[stem] / f"{stem}.ipynb", set(CI_PARAMETERS[stem]), allowed)


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
def test_chain_notebook_runs_at_ci_parameters(stem, tmp_path, kernel_name):
    import papermill

    params = {**CI_PARAMETERS[stem], "out_dir": str(tmp_path / "runs")}
    papermill.execute_notebook(
        str(NOTEBOOKS[stem] / f"{stem}.ipynb"),
        str(tmp_path / f"{stem}.ipynb"),
        parameters=params,
        kernel_name=kernel_name,
        cwd=str(tmp_path),
        progress_bar=False,
        log_output=False,
    )
    if stem == "10_credit_assignment":
        assert (tmp_path / "runs" / "credit_view.html").is_file()
    else:
        chain = json.loads((tmp_path / "runs" / "summary.json").read_text())["chain"]
        assert chain["n"] == 4 and set(chain["error_rate"]) >= {"column 1", "answer"}
