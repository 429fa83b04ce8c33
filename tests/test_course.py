"""gopd_lab.viz.course: the exercise checker, repository paths, committed sweep results, the shipped math task and
the GPU preset choice of notebook 04."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

from gopd_lab.experiments.sweep import load_sweep
from gopd_lab.tasks import load_tasks
from gopd_lab.tasks.mathjsonl import math_verifier
from gopd_lab.viz import course
from gopd_lab.viz import exercise_bank as ex_mod
from gopd_lab.viz.exercises import _namespace


def test_check_says_right_wrong_or_unanswered_and_never_raises():
    assert course.check(None, 1.0, why="w").status == "unanswered"
    right = course.check(0.30000001, 0.3, why="because")
    assert right.right and str(right) == "right: because"
    wrong = course.check(0.4, 0.3, why="because", hint="look again")
    assert wrong.status == "wrong" and "0.4" in str(wrong) and "look again" in str(wrong)
    assert course.check(torch.tensor([0.2, 0.8]), [0.2, 0.8], why="w").right
    assert "position 1" in str(course.check([0.2, 0.7], torch.tensor([0.2, 0.8]), why="w"))
    assert "2 number(s)" in str(course.check([0.2], [0.2, 0.8], why="w"))
    assert course.check("abc", 1.0, why="w").status == "wrong"  # a string where a number is due: wrong, no error
    assert course.check(float("nan"), 1.0, why="w").status == "wrong"
    assert course.check("teacher", "teacher", why="w").right and not course.check("student", "teacher", why="w").right
    assert "right" in course.check(1.0, 1.0, why="w")._repr_html_()


def test_repo_path_reads_relative_paths_against_the_repository(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert course.repo_path("sweeps/v2/lam.yaml").is_file()
    assert course.repo_path(tmp_path / "x") == tmp_path / "x"


@pytest.mark.parametrize("name", ["v1/lam_single_teacher", "v1/multi_teacher_merge"])
def test_committed_sweeps_load_and_match_their_spec(name):
    import yaml

    root = course.committed_sweep(name)
    plan, spec = course.sweep_plan(root), yaml.safe_load(course.repo_path(f"sweeps/{name}.yaml").read_text())
    assert plan["grid"] == spec["grid"] and plan["fixed"] == spec["fixed"]
    results = load_sweep(root)
    assert list(results.point_id) == plan["points"] and (results.status == "ok").all()
    assert results.filter(like="_greedy_acc").notna().all().all()
    published = "".join(p.read_text() for p in root.rglob("*.json"))
    assert not any(d in published for d in ("/work/", "/home/", "/tmp/")), "no machine paths are published"


def test_committed_sweep_names_the_fix_when_missing():
    with pytest.raises(FileNotFoundError, match="gopd-lab sweep --spec sweeps/nope.yaml"):
        course.committed_sweep("nope")


def test_zoo_models_in_a_plan():
    plan = course.sweep_plan(course.committed_sweep("v1/multi_teacher_merge"))
    assert course.zoo_models_in(plan) == ["student-base", "teacher-add", "teacher-mul"]


def test_publish_sweep_keeps_the_run_files_only(tmp_path):
    src = tmp_path / "sweep"
    (src / "lam=1,seed=0").mkdir(parents=True)
    (src / "sweep.json").write_text(
        json.dumps({"notebook": "nb.ipynb", "grid": {}, "fixed": {}, "points": ["lam=1,seed=0"]})
    )
    point = src / "lam=1,seed=0"
    (point / "point.json").write_text(json.dumps({"status": "ok", "notebook": str(point / "nb.ipynb")}))
    (point / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.123456789}) + "\n")
    (point / "nb.ipynb").write_text("{}")
    dest = course.publish_sweep(src, tmp_path / "published")
    assert sorted(p.name for p in (dest / "lam=1,seed=0").iterdir()) == ["metrics.jsonl", "point.json"]
    assert json.loads((dest / "lam=1,seed=0" / "metrics.jsonl").read_text())["loss"] == 0.123457
    assert json.loads((dest / "lam=1,seed=0" / "point.json").read_text())["notebook"] is None
    (point / "point.json").write_text(json.dumps({"status": "failed"}))
    with pytest.raises(ValueError, match="did not finish ok"):
        course.publish_sweep(src, tmp_path / "published")


def test_shipped_math_task_is_reproducible_and_its_answers_verify():
    path = course.repo_path(course.MATH_TASK)
    spec = importlib.util.spec_from_file_location("make_word_problems", path.with_name("make_word_problems.py"))
    maker = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(maker)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == maker.make_rows(), "data/math/word_problems.jsonl is what make_word_problems.py writes"
    task = load_tasks([str(path)])["word_problems"]
    assert len(task.train) == 900 and len(task.test) == 100
    for example in task.test:
        final = example.answer.rsplit("####", 1)[1].strip()
        assert math_verifier(f"so the answer is \\boxed{{{final}}}", example.answer)
        assert not math_verifier(f"\\boxed{{{int(final) + 1}}}", example.answer)
    assert "Apache-2.0" in path.with_name("README.md").read_text()


def test_gpu_preset_follows_the_gpu_memory():
    assert course.pick_gpu_preset(24) == "configs/gpu-0.5b.yaml"
    assert course.pick_gpu_preset(48) == "configs/gpu-1.5b.yaml"
    assert course.pick_gpu_preset(141) == "configs/gpu-1.7b.yaml"
    with pytest.raises(ValueError, match="preset = None"):
        course.pick_gpu_preset(8)


def test_training_config_falls_back_to_the_zoo_without_cuda(tmp_path):
    from gopd_lab import RunConfig

    fallback = RunConfig(student="zoo:student-base", teacher="zoo:teacher-add", out_dir=str(tmp_path))
    if not torch.cuda.is_available():
        cfg, why = course.training_config("auto", fallback)
        assert cfg is fallback and "CPU" in why
    assert course.training_config(None, fallback)[0] is fallback
    with pytest.raises(FileNotFoundError, match="preset = None"):
        course.training_config("configs/missing.yaml", fallback)
    preset = tmp_path / "preset.yaml"
    preset.write_text(
        f"# a test preset\nstudent: zoo:student-base\nteacher: zoo:teacher-add\ntasks: {course.MATH_TASK}\n"
    )
    cfg, why = course.training_config(str(preset), fallback)
    assert cfg.task_names == [str(course.repo_path(course.MATH_TASK))] and cfg.out_dir == fallback.out_dir
    assert course.preset_notes(preset) == "a test preset"
    assert os.path.isabs(cfg.task_names[0])


def test_committed_headroom_gathers_one_curve_per_teacher(tmp_path):
    (tmp_path / "t1.csv").write_text(
        "lam,domain,greedy_acc,n,mean_acc,pass_acc\n1.0,add,0.5,2,0.5,1.0\n2.0,add,1.0,2,0.75,1.0\n"
    )
    (tmp_path / "t2.csv").write_text("lam,domain,greedy_acc,n,mean_acc,pass_acc\n1.0,mul,0.0,2,0.25,0.5\n")
    curves = course.committed_headroom(tmp_path)
    assert sorted(curves.teacher.unique()) == ["t1", "t2"] and len(curves) == 3
    assert curves.set_index(["teacher", "lam"]).loc[("t1", 2.0), "mean_acc"] == 0.75
    committed = course.committed_headroom()  # results/v2/headroom: every zoo teacher, λ = 0 … 3
    assert {"teacher-add", "teacher-add-nokl", "big-teacher"} <= set(committed.teacher)
    with pytest.raises(FileNotFoundError, match="sweeps/headroom.py"):
        course.committed_headroom(tmp_path / "empty")


# ----------------------------------------------------------------------------- exercises that cannot be fooled
def _run(source: str, context: dict, name: str):
    namespace = _namespace(context)
    if source.lstrip().startswith(f"{name} =") or f"\n{name} =" in source:
        exec(source, namespace)  # a solution: statements assigning the answer
        return namespace[name]
    return eval(source, namespace)  # a wrong answer: one expression


@pytest.mark.parametrize("ex_id", sorted(ex_mod.EXERCISES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_exercise_says_right_to_its_solution_and_wrong_to_every_listed_wrong_answer(ex_id, seed):
    ex = ex_mod.EXERCISES[ex_id]
    context = ex.sample(seed)
    assert ex.check(None, **context).status == "unanswered"
    solved = ex.check(_run(ex.solution, context, ex.answer_name), **context)
    assert solved.right, f"{ex_id}: the solution is not right: {solved}"
    assert len(ex.wrong) >= 2 if ex.kind != "choice" else ex.options, f"{ex_id} lists too few wrong answers"
    for label, source in ex.wrong.items():
        verdict = ex.check(_run(source, context, ex.answer_name), **context)
        assert verdict.status == "wrong", f"{ex_id}: the wrong answer {label!r} passes: {verdict}"


def test_value_exercises_reject_zero_and_the_sign_flip():
    for ex in ex_mod.EXERCISES.values():
        if ex.kind == "value" and ex.id != "03-token-optimum":  # a distribution: 0 and −p are not distributions
            assert "0" in ex.wrong and any("sign" in label for label in ex.wrong), ex.id


def test_01_check_rejects_zero_when_the_answer_is_tiny():
    """The bug: 01's check accepted 0.0 when the expected advantage was 1.9e-5 (an absolute tolerance of 1e-4)."""
    record = {"lp_student": [-1e-5], "lp_teacher": [-1e-6], "lp_reference": [-3e-6], "lam": 1.25}
    ex = ex_mod.EXERCISES["01-advantage"]
    expected = 2 * -1e-6 + 3e-6 + 1e-5
    assert ex.check(expected, record=record, t=0).right
    assert ex.check(0.0, record=record, t=0).status == "wrong"
    assert not course.check(0.0, 1.9e-5, why="w").right


def test_hints_come_in_levels_and_only_the_last_is_the_formula():
    ex = ex_mod.EXERCISES["02-reverse-kl"]
    context = ex.sample(0)
    ex.reset()
    shown = [str(ex.check(0.123, **context)) for _ in range(len(ex.hints) + 1)]
    for level, text in enumerate(shown[: len(ex.hints)], 1):
        assert f"Hint {level} of {len(ex.hints)}" in text
    assert f"Hint {len(ex.hints)} of {len(ex.hints)}" in shown[-1]  # it stays at the last
    for ex in ex_mod.EXERCISES.values():
        assert len(ex.hints) >= 3, ex.id
        assert all("=" not in h.replace("λ = ", "").replace("t = t", "") for h in ex.hints[:-1]), (ex.id, ex.hints)
    ex = ex_mod.EXERCISES["02-reverse-kl"]
    wrong = str(ex.check(0.0, **context))
    assert "Hint" in wrong and ex.why not in wrong, "the why (it holds the formula) is shown only once right"


def test_a_known_wrong_answer_is_named():
    ex = ex_mod.EXERCISES["02-reverse-kl"]
    context = ex.sample(1)
    flipped = _run(ex.wrong["the sign-flipped value, mean(ℓ^T − ℓ^θ)"], context, ex.answer_name)
    assert "It is the sign-flipped value" in str(ex.check(flipped, **context))


def test_an_implementation_is_judged_on_random_trees_and_a_raising_one_is_wrong_not_an_error():
    ex = ex_mod.EXERCISES["03-implement-advantage"]
    assert ex.check(lambda *a: 1 / 0).status == "wrong"
    assert ex.check(3.0).status == "wrong"


# ----------------------------------------------------------------------------- quiet notebooks
def test_setup_notebook_silences_library_bars_and_keeps_the_runs_own():
    import huggingface_hub.utils
    import transformers.utils.logging

    from gopd_lab.viz import session

    try:
        session.quiet_libraries()
        assert not transformers.utils.logging.is_progress_bar_enabled()
        assert huggingface_hub.utils.are_progress_bars_disabled()
    finally:
        transformers.utils.logging.enable_progress_bar()
        huggingface_hub.utils.enable_progress_bars()


def test_tensors_show_as_rounded_tables():
    table = course.tensor_table(torch.tensor([[1.23456789e-5, -0.5], [2.0, 3.0]]))
    assert table.shape == (2, 2) and table.iloc[0, 0] == 0.0 and table.iloc[0, 1] == -0.5
    assert "-0.0" not in course.tensor_table(torch.tensor([[-1e-7, -0.5]])).to_string(), "no negative zero"
    both = course.tensor_table(lp=torch.zeros(2, 3), rank=torch.ones(2, 3, dtype=torch.long))
    assert list(both.columns.get_level_values(0).unique()) == ["lp", "rank"] and both.shape == (2, 6)
    assert course.tensor_table(torch.tensor(0.5)).shape == (1, 1)


def test_a_user_error_in_a_notebook_is_one_line_with_the_traceback_folded(capsys):
    from IPython.core.interactiveshell import InteractiveShell

    from gopd_lab.errors import UserError
    from gopd_lab.viz import session

    shell = InteractiveShell.instance()
    try:
        shell.set_custom_exc((UserError,), session._one_line_user_error)
        shell.run_cell("from gopd_lab import RunConfig\nRunConfig(lam=-1)")
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("configuration error: "), err
        assert "Traceback" not in err
    finally:
        InteractiveShell.clear_instance()


def test_committed_plans_name_no_machine_path():
    """The bug: 07 showed the absolute path of the checkout that ran the sweep (results/v2/*/sweep.json)."""
    for plan_file in course.SWEEP_RESULTS.glob("*/*/sweep.json"):
        notebook = course.sweep_plan(plan_file.parent)["notebook"]
        assert not Path(notebook).is_absolute() and course.repo_path(notebook).is_file(), (plan_file, notebook)


def test_display_path_names_no_machine_folder():
    assert course.display_path(course.REPO / "results" / "v2" / "lam") == "results/v2/lam"
    assert course.display_path("/elsewhere/x") == "/elsewhere/x"


@pytest.mark.slow
def test_readme_python_snippet_runs_twice(tmp_path, monkeypatch):
    """The bug: the README's snippet stopped with RunDirError when run a second time (its out_dir held a run)."""
    import re

    readme = (course.REPO / "README.md").read_text()
    snippet = re.search(r"```python\n(from gopd_lab import RunConfig, train\n.*?)```", readme, re.S).group(1)
    assert "steps=200," in snippet and 'out_dir="runs/exopd"' in snippet
    tiny = snippet.replace("steps=200,", "steps=1, batch_size=2, eval_limit=2, eval_k=0, log_samples=0,")
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        namespace: dict = {}
        exec(tiny, namespace)
        assert len(namespace["history"]) == 1


# ----------------------------------------------------------------------------- plots that show the effect
def test_paired_delta_plot_draws_points_with_intervals_in_points():
    import pandas as pd

    from gopd_lab.viz import effects

    diffs = pd.DataFrame({"lam": [1.25, 1.5], "metric": ["eval_add_mean_acc"] * 2, "diff_mean": [0.017, 0.031]}).assign(
        ci_low=[0.010, -0.001], ci_high=[0.025, 0.041]
    )
    fig = effects.paired_delta_plot(diffs)
    trace = fig.data[0]
    assert list(trace.y) == pytest.approx([1.7, 3.1]) and list(trace.error_y.arrayminus) == pytest.approx([0.7, 3.2])
    assert list(trace.marker.symbol) == ["circle", "circle-open"], "filled only where the interval excludes 0"


def test_headroom_delta_is_the_gain_over_lambda_one():
    from gopd_lab.viz import effects

    delta = effects.headroom_delta(course.committed_headroom())
    at = delta.set_index(["teacher", "domain", "metric", "lam"])
    assert at.delta[("teacher-add", "add", "mean_acc", 1.0)] == 0
    assert (
        at.delta[("teacher-add", "add", "mean_acc", 2.0)] > 0 > at.delta[("teacher-add-nokl", "add", "mean_acc", 2.0)]
    )
    assert (delta.half_width > 0).all() and (delta.half_width < 5).all()
    assert len(effects.headroom_delta_plot(delta).data) > 0


def test_committed_band_spans_the_six_opd_seeds_and_frames_smoothed_curves():
    import pandas as pd

    from gopd_lab.viz import effects

    band = course.committed_band("v2/lam", lam=1.0)
    assert set(band.runs) == {6} and (band.low <= band.high).all() and set(band.metric) == {"reverse_kl", "adv_mean"}
    metrics = pd.DataFrame({"run": ["a"] * 50, "step": range(1, 51), "reverse_kl": [0.1] * 50, "adv_mean": [0.0] * 50})
    fig = effects.smoothed_curves(metrics, band=band)
    assert [t.name for t in fig.data][:3] == ["reference runs", "a (raw)", "a"]
    with pytest.raises(ValueError, match="no point at lam"):
        course.committed_band("v2/lam", lam=7.0)


# ----------------------------------------------------------------------------- explorables
def test_one_state_explorable_moves_the_optimum_and_the_advantage_with_lambda():
    from gopd_lab.viz.explorable import OneState

    state = OneState(lam=1.0)
    assert torch.allclose(state.log_optimum, state.log_teacher), "λ = 1: the optimum is the teacher"
    state.set_lam(0.0)
    assert torch.allclose(state.log_optimum, state.log_reference) and (state.advantages == 0).all()
    state.set_lam(2.0)
    assert torch.allclose(state.advantages, 2 * (state.log_teacher - state.log_reference))
    before = state.log_optimum.clone()
    state.set_logits("teacher", 0, 3.0)
    assert state.log_optimum[0] > before[0] and "λ = 2" in state.html()
    widget = state.widget()
    widget.children[0].value = 1.0  # the λ slider
    assert "λ = 1</b>" in widget.children[-1].value


def test_two_step_tree_shows_the_optima_apart_at_the_root_and_equal_at_the_last_depth():
    from gopd_lab.viz.explorable import TwoStepTree

    tree = TwoStepTree(lam=2.0)
    opt = tree.optima()
    assert torch.allclose(opt["token-level"][1:], opt["sequence-level"][1:], atol=1e-6), "the last depth agrees"
    assert (opt["token-level"][0] - opt["sequence-level"][0]).abs().max() > 1e-3, "the root does not"
    tree.set_lam(1.0)
    opt = tree.optima()
    assert torch.allclose(opt["token-level"], opt["sequence-level"], atol=1e-6)
    assert "root" in tree.widget().children[-1].value
