"""Papermill sweeps: points run in their own dirs, failures are recorded, reruns resume, results match train().

Kernel start-up dominates the cost, so one session sweep (3 points, 2 workers) serves most tests; the tests
that change a sweep dir work on a copy of it.
"""

import json
import shutil
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from gopd_lab.cli import main
from gopd_lab.config import RunConfig
from gopd_lab.experiments.sweep import SweepError, SweepSpec, _private_kernel, _Runner, load_sweep, run_sweep
from gopd_lab.experiments.sweep_grid import parse_assignment, plan_points, point_id
from gopd_lab.loop.train import train

NB = Path(__file__).parent / "notebooks" / "sweep_point.ipynb"
OK = ["lam=1.0,seed=0", "lam=1.25,seed=0"]
BAD = "lam=-1.0,seed=0"
DEFAULTS = {
    "lam": 1.0,
    "seed": 0,
    "steps": 2,
    "out_dir": "runs/x",
    "fail": False,
    "student": "",
    "teacher": "",
    "torch_threads": 0,
}


@pytest.fixture(scope="session")
def fixed(tiny_dirs):
    return {"steps": 2, "student": tiny_dirs["student"], "teacher": tiny_dirs["teacher"]}


@pytest.fixture(scope="session")
def swept(tmp_path_factory, fixed):
    """λ ∈ {1, 1.25, -1} × seed 0 with two workers; λ = -1 is rejected by RunConfig inside the notebook."""
    root = tmp_path_factory.mktemp("sweep") / "lam"
    df = run_sweep(NB, {"lam": [1.0, 1.25, -1.0], "seed": [0]}, fixed, sweep_dir=root, workers=2, progress=False)
    return root, df


def _copy(swept, tmp_path) -> Path:
    return Path(shutil.copytree(swept[0], tmp_path / "copy"))


def _mtimes(root: Path) -> dict:
    return {str(p): p.stat().st_mtime_ns for p in root.glob("*/*") if p.name == "point.json" or p.suffix == ".ipynb"}


def _executions(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "executions.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------ the session sweep
def test_grid_points_run_through_papermill(swept):
    root, df = swept
    assert list(df.point_id) == [*OK, BAD]
    ok = df[df.status == "ok"]
    assert list(ok.point_id) == OK and ok.error.isna().all()
    assert {"lam", "seed", "steps", "student", "wall_seconds", "final_loss", "final_reverse_kl"} <= set(df.columns)
    assert ok.lam.tolist() == [1.0, 1.25] and (ok.steps == 2).all() and (ok.wall_seconds > 0).all()
    assert ok.final_loss.notna().all()
    for pid in OK:  # the run files live in the point's dir, next to the executed notebook
        d = root / pid
        assert json.loads((d / "config.json").read_text())["out_dir"] == str(d.resolve())
        assert (d / "summary.json").is_file() and (d / NB.name).is_file()
        assert json.loads((d / "params.json").read_text())["lam"] == float(pid.split(",")[0][4:])
    injected = json.loads((root / OK[0] / NB.name).read_text())["cells"]
    source = "".join("".join(c["source"]) for c in injected if "injected-parameters" in c["metadata"].get("tags", []))
    assert "out_dir" in source and "torch_threads" in source
    for saved in (pd.read_parquet(root / "results.parquet"), pd.read_csv(root / "results.csv")):
        assert list(saved.point_id) == list(df.point_id)
        assert saved.final_loss.tolist()[:2] == pytest.approx(ok.final_loss.tolist())
    pd.testing.assert_frame_equal(load_sweep(root), df.reset_index(drop=True), check_like=True)


def test_failed_point_is_recorded_and_the_others_finish(swept):
    root, df = swept
    row = df.set_index("point_id").loc[BAD]
    assert row.status == "failed" and "lam must be a finite number > 0" in row.error
    executed = json.loads(Path(row.notebook).read_text())
    assert Path(row.notebook).parent == root / BAD
    assert any(o.get("output_type") == "error" for c in executed["cells"] for o in c.get("outputs", []))
    assert pd.isna(row.final_loss)
    assert (df.status == "ok").sum() == 2


def test_two_workers_run_every_point(swept):
    root, df = swept
    assert sorted(df.attrs["ran"]) == sorted([*OK, BAD]) and df.attrs["skipped"] == []
    assert sorted(e["point_id"] for e in _executions(root)) == sorted([*OK, BAD])
    threads = {json.loads((root / pid / "point.json").read_text())["threads"] for pid in OK}
    assert threads == {max(1, _Runner(NB, root, {}, 2, None, None, [], None).threads)}


def test_point_equals_direct_train(swept, fixed, tmp_path):
    """Same config, same seed, CPU: the notebook run and an in-process train() agree to 1e-6."""
    _, df = swept
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # like the kernel (2 workers share the CPU)
    try:
        history = train(
            RunConfig(
                student=fixed["student"],
                teacher=fixed["teacher"],
                lam=1.25,
                seed=0,
                steps=2,
                prompts=["12+3=", "7*8="],
                batch_size=2,
                max_new_tokens=4,
                device="cpu",
                dtype="float32",
                out_dir=str(tmp_path / "direct"),
            ),
            progress=False,
        )
    finally:
        torch.set_num_threads(before)
    row = df.set_index("point_id").loc["lam=1.25,seed=0"]
    final = history.iloc[-1]
    for name in ("loss", "reverse_kl", "adv_mean", "lp_teacher_mean", "entropy", "grad_norm", "tokens"):
        assert row[f"final_{name}"] == pytest.approx(final[name], abs=1e-6), name


# ------------------------------------------------------------------------------------ resume
def test_rerunning_a_finished_sweep_executes_nothing(swept, fixed, tmp_path):
    root = _copy(swept, tmp_path)
    before, runs = _mtimes(root), len(_executions(root))
    df = run_sweep(NB, {"lam": [1.0, 1.25], "seed": [0]}, fixed, sweep_dir=root, workers=2, progress=False)
    assert df.attrs["ran"] == [] and df.attrs["skipped"] == OK and (df.status == "ok").all()
    assert _mtimes(root) == before and len(_executions(root)) == runs


def test_rerun_completes_only_the_missing_points(swept, fixed, tmp_path):
    """A sweep killed midway: one point has no point.json; the rerun runs that one only."""
    root = _copy(swept, tmp_path)
    original = swept[1].set_index("point_id")
    (root / OK[1] / "point.json").unlink()
    keep = {str(root / OK[0] / "point.json"): (root / OK[0] / "point.json").stat().st_mtime_ns}
    df = run_sweep(NB, {"lam": [1.0, 1.25], "seed": [0]}, fixed, sweep_dir=root, progress=False)
    assert df.attrs["ran"] == [OK[1]] and df.attrs["skipped"] == [OK[0]]
    assert [e["point_id"] for e in _executions(root)][-1] == OK[1] and len(_executions(root)) == 4
    assert {p: Path(p).stat().st_mtime_ns for p in keep} == keep
    assert (df.status == "ok").all()
    rerun = df.set_index("point_id").loc[OK[1]]
    assert rerun.final_loss == pytest.approx(original.loc[OK[1]].final_loss, abs=1e-6)  # reproducible


def test_changed_fixed_values_are_refused_before_running(swept, fixed, tmp_path):
    root = _copy(swept, tmp_path)
    runs = len(_executions(root))
    with pytest.raises(SweepError, match=r"other values of \['steps'\].*rerun=True"):
        run_sweep(NB, {"lam": [1.0, 1.25], "seed": [0]}, {**fixed, "steps": 3}, sweep_dir=root, progress=False)
    assert len(_executions(root)) == runs


def test_cli_and_yaml_spec_name_the_same_points(swept, fixed, tmp_path, capsys):
    root = _copy(swept, tmp_path)
    runs = len(_executions(root))
    spec = tmp_path / "lam.yaml"
    spec.write_text(
        f"notebook: {NB}\nsweep_dir: {root}\nworkers: 2\ngrid:\n  lam: [1.0, 1.25]\n  seed: [0]\n"
        f"fixed:\n  steps: 2\n  student: {fixed['student']}\n  teacher: {fixed['teacher']}\n"
    )
    assert main(["sweep", "--spec", str(spec)]) == 0
    args = [
        "sweep",
        str(NB),
        "--grid",
        "lam=1.0,1.25",
        "--grid",
        "seed=0",
        "--set",
        "steps=2",
        "--sweep-dir",
        str(root),
        "--set",
        f"student={fixed['student']}",
        "--set",
        f"teacher={fixed['teacher']}",
        "--workers",
        "2",
    ]
    assert main(args) == 0
    assert len(_executions(root)) == runs  # both found every point finished
    assert "lam=1.25,seed=0" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ no kernel needed
def test_unknown_parameters_raise_before_anything_runs(tmp_path, capsys):
    with pytest.raises(SweepError, match=r"unknown parameter\(s\) \['lamda'\].*'lam'.*'seed'"):
        run_sweep(NB, {"lamda": [1.0]}, sweep_dir=tmp_path / "s")
    with pytest.raises(SweepError, match="out_dir is set by the sweep"):
        run_sweep(NB, {"lam": [1.0]}, {"out_dir": "x"}, sweep_dir=tmp_path / "s")
    assert not (tmp_path / "s").exists()
    assert main(["sweep", str(NB), "--grid", "lamda=1,2", "--sweep-dir", str(tmp_path / "s")]) == 2
    assert "lamda" in capsys.readouterr().err and not (tmp_path / "s").exists()


def test_timeout_stops_a_point_and_records_it(tmp_path, fixed):
    df = run_sweep(NB, {"lam": [1.0]}, fixed, sweep_dir=tmp_path / "s", timeout=0.5, progress=False)
    assert df.status.tolist() == ["failed"] and df.error[0] == "timed out after 0.5 s"


def test_cli_values_parse_as_yaml_scalars():
    assert parse_assignment("lam=0.5,1,1.25", split=True) == ("lam", [0.5, 1, 1.25])
    assert parse_assignment("lr=1e-3,3e-4", split=True) == ("lr", [1e-3, 3e-4])
    assert parse_assignment("fail=true") == ("fail", True)
    assert parse_assignment("student=zoo:student-base", default="") == ("student", "zoo:student-base")
    assert parse_assignment("student=007", default="") == ("student", "007")
    assert parse_assignment("tasks=add,mul", default="") == ("tasks", "add,mul")
    assert parse_assignment('teacher={"add": "a", "mul": "b"}', default="") == ("teacher", {"add": "a", "mul": "b"})
    assert parse_assignment("prompts=[1+1=, 2+2=]", split=True) == ("prompts", ["1+1=", "2+2="])
    with pytest.raises(SweepError, match="NAME=VALUE"):
        parse_assignment("lam")


def test_spec_yaml_reads_exponent_numbers_as_numbers(tmp_path):
    """The spec file and the command line share one YAML loader: `lr: 1e-3` is a float, not the text '1e-3'."""
    spec = tmp_path / "s.yaml"
    spec.write_text(f"notebook: {NB}\ngrid: {{lr: [1e-3, 3e-4]}}\nfixed: {{steps: 2, mu: 5e-1}}\n")
    loaded = SweepSpec.load(spec)
    assert loaded.grid == {"lr": [1e-3, 3e-4]} and loaded.fixed == {"steps": 2, "mu": 0.5}
    assert all(isinstance(v, float) for v in [*loaded.grid["lr"], loaded.fixed["mu"]])


def test_point_ids_are_stable_readable_and_distinct():
    assert point_id({"lam": 1.25, "seed": 0}) == "lam=1.25,seed=0"
    assert point_id({}) == "default"
    a, b = point_id({"student": "zoo:x"}), point_id({"student": "zoo/x"})
    assert a.startswith("student=zoo_x__") and a != b and a == point_id({"student": "zoo:x"})
    assert len(point_id({"prompts": ["x" * 200]})) < 80
    points = plan_points({"lam": [1, 2], "seed": [0, 1]}, {"steps": 10}, DEFAULTS)
    assert [p.id for p in points] == ["lam=1,seed=0", "lam=1,seed=1", "lam=2,seed=0", "lam=2,seed=1"]
    assert points[0].params == {"lam": 1, "seed": 0, "steps": 10}
    with pytest.raises(SweepError, match="twice"):
        plan_points({"lam": [1, 1]}, {}, DEFAULTS)
    with pytest.raises(SweepError, match="both as grid and fixed"):
        plan_points({"lam": [1]}, {"lam": 2}, DEFAULTS)
    with pytest.raises(SweepError, match="no out_dir"):
        plan_points({}, {}, {"lam": 1.0})


def test_load_sweep_gathers_final_metrics_and_last_eval(tmp_path):
    root = tmp_path / "s"
    (root / "a").mkdir(parents=True)
    (root / "sweep.json").write_text(json.dumps({"points": ["a", "b"], "params": {"b": {"lam": 2.0}}}))
    (root / "a" / "params.json").write_text(json.dumps({"lam": 1.5}))
    (root / "a" / "point.json").write_text(json.dumps({"status": "ok", "wall_seconds": 3.0, "notebook": "nb"}))
    (root / "a" / "summary.json").write_text(json.dumps({"final": {"step": 4, "loss": 0.5}}))
    (root / "a" / "eval.jsonl").write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                {"step": 0, "domain": "add", "greedy_acc": 0.1},
                {"step": 4, "domain": "add", "greedy_acc": 0.7, "mean_acc": 0.6},
                {"step": 4, "domain": "mul", "greedy_acc": 0.2},
            ]
        )
    )
    df = load_sweep(root)
    assert (
        df.point_id.tolist() == ["a", "b"] and df.status.tolist() == ["ok", "pending"] and df.lam.tolist() == [1.5, 2.0]
    )
    a = df.iloc[0]
    assert (a.lam, a.final_loss, a.eval_add_greedy_acc, a.eval_add_mean_acc, a.eval_mul_greedy_acc) == (
        1.5,
        0.5,
        0.7,
        0.6,
        0.2,
    )
    assert "final_step" not in df.columns


def test_default_kernel_is_this_interpreter(tmp_path):
    root = Path(_private_kernel())
    try:
        spec = json.loads((root / "kernels" / "gopd-lab-sweep" / "kernel.json").read_text())
        assert spec["argv"][0] == sys.executable and spec["language"] == "python"
    finally:
        shutil.rmtree(root)
    runner = _Runner(NB, tmp_path, {}, 2, None, None, ["0", "1"], None)
    assert [runner.env(s)["CUDA_VISIBLE_DEVICES"] for s in (0, 1, 2)] == ["0", "1", "0"]
    assert runner.env(0)["OMP_NUM_THREADS"] == str(runner.threads)


def test_spec_files_check_their_keys_and_find_the_notebook(tmp_path):
    (tmp_path / "sweeps").mkdir()
    shutil.copy(NB, tmp_path / "sweeps" / NB.name)
    spec = tmp_path / "sweeps" / "lam.yaml"
    spec.write_text(f"notebook: {NB.name}\ngrid: {{lam: [0.5, 1e-1]}}\nfixed: {{steps: 3}}\n")
    loaded = SweepSpec.load(spec)  # the notebook is found next to the spec; the sweep dir is named after it
    assert Path(loaded.notebook) == tmp_path / "sweeps" / NB.name and loaded.sweep_dir == "runs/sweeps/lam"
    assert [p.params for p in plan_points(loaded.grid, loaded.fixed, DEFAULTS)][1] == {"lam": 0.1, "steps": 3}
    spec.write_text(f"notebook: {NB.name}\ngrids: {{lam: [1]}}\n")
    with pytest.raises(SweepError, match=r"unknown key\(s\) \['grids'\]"):
        SweepSpec.load(spec)
