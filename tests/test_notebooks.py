"""The course notebooks 01–06: committed clean, and each one runs top to bottom with papermill at tiny settings.

Clean means: no outputs, no execution counts, a first markdown cell saying what the notebook shows and
needs, exactly one cell tagged ``parameters`` (papermill) holding every knob, no ``def``/``class`` in code
cells (algorithms live in the package), imports from ``gopd_lab`` (plus ``torch`` for threads and seeds,
``time``, and plotly for a figure the package does not draw), and under 100 kB.

Exercises (cells tagged ``exercise``, ``check``, ``solution``) are well formed, at least
``MIN_EXERCISE_NOTEBOOKS`` notebooks have them, and in the run each check cell says "not answered yet" as
shipped, "right" after its solution and "wrong" after a wrong answer (probe cells added after it).

The run uses each notebook's CI parameters below (every one must be a name its parameters cell defines),
writes the executed notebook and its runs under ``tmp_path``, and runs on a kernel registered for this
interpreter in a temporary Jupyter path, so it needs no ``ipykernel install``. The asserts inside each
notebook are the test.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from notebook_checks import (
    assert_clean_notebook,
    assert_exercise_context_not_rebound,
    assert_exercise_verdicts,
    assert_exercises_well_formed,
    assert_light_and_quiet,
    exercises,
    with_exercise_probes,
)

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
KERNEL = "gopd-lab-notebook-tests"
ALLOWED_IMPORTS = {"gopd_lab", "torch", "time", "plotly"}
MIN_EXERCISE_NOTEBOOKS = 5

# Tiny settings: a few steps, a handful of test prompts, one sample per prompt; every notebook's asserts
# must hold here too (claims that need real training are guarded by ``if steps >= ...`` inside).
CI_PARAMETERS: dict[str, dict] = {
    "01_quickstart": dict(steps=3, batch_size=8, eval_limit=8, eval_k=1),
    "02_opd_loop": dict(batch_size=4, budget_steps=3, budget_batch=8, stability_steps=3, eval_limit=8, eval_k=1),
    "03_opd_to_exopd": dict(tree_steps=40, tree_batch=64),
    "04_training": dict(steps=3, batch_size=8, eval_every=2, eval_limit=8, eval_k=1, view_prompts=3),
    "05_strong_to_weak": dict(steps=3, batch_size=8, eval_limit=8, eval_k=1),
    "06_merging_teachers": dict(steps=3, batch_size=8, eval_limit=8, eval_k=1, lams=[1.0, 1.25]),
}


def _notebooks() -> list[Path]:
    return [NOTEBOOKS / f"{stem}.ipynb" for stem in CI_PARAMETERS]


def _read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.stem)
def test_notebook_exists(path):
    assert path.is_file(), f"{path} is missing"


@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.stem)
def test_committed_notebook_is_clean(path):
    assert_clean_notebook(path, set(CI_PARAMETERS[path.stem]), ALLOWED_IMPORTS)


COURSE_NOTEBOOKS = sorted(NOTEBOOKS.glob("0[1-9]_*.ipynb"))
"""Every course notebook, 07–09 included (their runs are tested in their own files)."""


@pytest.mark.parametrize("path", COURSE_NOTEBOOKS, ids=lambda p: p.stem)
def test_exercises_are_well_formed(path):
    assert_exercises_well_formed(_read(path))


@pytest.mark.parametrize("path", COURSE_NOTEBOOKS, ids=lambda p: p.stem)
def test_exercise_context_is_not_rebound_by_a_later_cell(path):
    """The bug: notebook 03's checks raised AttributeError after Run All (a later loop rebound ``teacher``)."""
    assert_exercise_context_not_rebound(_read(path))


def test_every_exercise_of_the_package_is_in_a_notebook():
    from gopd_lab.viz.exercise_bank import EXERCISES

    used = {ex_id for p in COURSE_NOTEBOOKS for ex_id in exercises(_read(p))}
    assert used == set(EXERCISES), (
        f"in the package only: {set(EXERCISES) - used}; in notebooks only: {used - set(EXERCISES)}"
    )


def test_the_course_has_exercises_in_enough_notebooks():
    with_exercises = [p.stem for p in _notebooks() if exercises(_read(p))]
    assert len(with_exercises) >= MIN_EXERCISE_NOTEBOOKS, with_exercises


@pytest.fixture(scope="session")
def kernel_name(tmp_path_factory):
    """A kernelspec for this interpreter in a temporary Jupyter path (the notebooks' own kernel,
    ``gopd-lab``, is registered by ``make setup`` and need not exist here)."""
    root = tmp_path_factory.mktemp("jupyter")
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "gopd-lab (notebook tests)",
        "language": "python",
        "metadata": {"debugger": False},
    }
    (root / "kernels" / KERNEL).mkdir(parents=True)
    (root / "kernels" / KERNEL / "kernel.json").write_text(json.dumps(spec))
    mp = pytest.MonkeyPatch()
    mp.setenv("JUPYTER_PATH", os.pathsep.join(filter(None, [str(root), os.environ.get("JUPYTER_PATH")])))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        mp.setenv(var, "1")
    mp.setenv("TOKENIZERS_PARALLELISM", "false")
    yield KERNEL
    mp.undo()


@pytest.fixture(scope="session")
def zoo_available():
    from gopd_lab.world import zoo

    try:
        zoo.read_manifest()
    except zoo.ZooError as err:
        pytest.skip(f"the notebooks run on the embedded zoo: {err}")


@pytest.mark.slow
@pytest.mark.parametrize("path", _notebooks(), ids=lambda p: p.stem)
def test_notebook_runs_at_ci_parameters(path, tmp_path, kernel_name, zoo_available):
    papermill = pytest.importorskip("papermill")
    params = {**CI_PARAMETERS[path.stem], "out_dir": str(tmp_path / "runs")}
    probed = tmp_path / f"probed-{path.name}"  # each check also run after its solution and after a wrong answer
    probed.write_text(json.dumps(with_exercise_probes(_read(path))), encoding="utf-8")
    t0 = time.perf_counter()
    papermill.execute_notebook(
        str(probed),
        str(tmp_path / path.name),
        parameters=params,
        kernel_name=kernel_name,
        cwd=str(tmp_path),
        progress_bar=False,
        log_output=False,
    )
    print(f"{path.name}: {time.perf_counter() - t0:.1f} s")
    assert_light_and_quiet(tmp_path / path.name)
    probes = assert_exercise_verdicts(_read(tmp_path / path.name))
    assert probes == 2 * len(exercises(_read(path)))


PREDICTING_NOTEBOOKS = {"01", "02", "03", "04", "05", "06", "07", "08", "09"}
"""Every course notebook has a predict-then-check exercise."""


def test_the_course_asks_for_predictions():
    from gopd_lab.viz.exercise_bank import EXERCISES

    predicting = {
        p.stem[:2] for p in COURSE_NOTEBOOKS if any(EXERCISES[i].kind == "choice" for i in exercises(_read(p)))
    }
    assert predicting >= PREDICTING_NOTEBOOKS, sorted(PREDICTING_NOTEBOOKS - predicting)


@pytest.mark.parametrize("path", COURSE_NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_links_the_notation_card(path):
    assert (NOTEBOOKS.parent / "docs" / "notation.md").is_file()
    assert "../docs/notation.md" in "".join(
        "".join(c["source"]) for c in _read(path)["cells"] if c["cell_type"] == "markdown"
    )


@pytest.mark.parametrize("path", COURSE_NOTEBOOKS, ids=lambda p: p.stem)
def test_every_course_helper_a_notebook_calls_exists(path):
    import re

    from gopd_lab.viz import course

    code = "".join("".join(c["source"]) for c in _read(path)["cells"] if c["cell_type"] == "code")
    missing = sorted({n for n in re.findall(r"\bcourse\.(\w+)", code) if not hasattr(course, n)})
    assert not missing, f"{path.name} calls course.{missing}"
