"""report_to: TensorBoard and trackio (local) get the rows of metrics.jsonl at the same steps, and eval.jsonl's."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gopd_lab.config import ConfigError, RunConfig
from gopd_lab.loop.train import train


def tiny_cfg(tiny_dirs, out: Path, **kw) -> RunConfig:
    kw = {"log_samples": 0, **kw}
    return RunConfig(
        student=tiny_dirs["student"],
        teacher=tiny_dirs["teacher"],
        lam=1.25,
        tasks="add",
        steps=3,
        batch_size=2,
        max_new_tokens=3,
        eval_k=2,
        eval_limit=4,
        eval_every=2,
        out_dir=str(out),
        **kw,
    )


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def numeric(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def test_tensorboard_event_files_hold_the_metrics_of_metrics_jsonl(tiny_dirs, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    train(tiny_cfg(tiny_dirs, out, report_to="tensorboard"), progress=False)
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    metrics = rows(out / "metrics.jsonl")
    names = set(numeric(metrics[0]))
    assert {"loss", "reverse_kl", "lr", "time_step"} <= names
    assert names <= set(acc.Tags()["scalars"])
    for name in names:
        events = acc.Scalars(name)
        assert [e.step for e in events] == [r["step"] for r in metrics] == [1, 2, 3]
        assert [e.value for e in events] == pytest.approx([r[name] for r in metrics], rel=1e-6)
    evals = rows(out / "eval.jsonl")
    for metric in ("greedy_acc", "mean_acc", "pass_acc"):
        events = acc.Scalars(f"eval/add/{metric}")
        assert [e.step for e in events] == [r["step"] for r in evals] == [0, 2, 3]
        assert [e.value for e in events] == pytest.approx([r[metric] for r in evals], rel=1e-6)


TRACKIO_RUN = """
import json, sys
from gopd_lab.config import RunConfig
from gopd_lab.loop.train import train
cfg = RunConfig(**json.loads(sys.argv[1]))
train(cfg, progress=False)
from trackio.sqlite_storage import SQLiteStorage
print("LOGS " + json.dumps(SQLiteStorage.get_logs("gopd-lab", "run")))
"""


def test_trackio_local_run_holds_the_metrics_of_metrics_jsonl(tiny_dirs, tmp_path):
    """In a subprocess: trackio fixes its storage dir ($TRACKIO_DIR, here a temp dir) when imported."""
    out = tmp_path / "run"
    cfg = tiny_cfg(tiny_dirs, out, report_to=["trackio"], report_samples=True, log_samples=1).to_dict()
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", TRACKIO_RUN, json.dumps(cfg)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (line,) = [x for x in proc.stdout.splitlines() if x.startswith("LOGS ")]  # trackio prints its own lines too
    logged = json.loads(line.removeprefix("LOGS "))
    assert (tmp_path / "trackio" / "gopd-lab.db").is_file()
    metrics, evals = rows(out / "metrics.jsonl"), rows(out / "eval.jsonl")
    for row in metrics:
        (entry,) = [e for e in logged if e["step"] == row["step"] and "loss" in e]
        assert {k: entry[k] for k in numeric(row)} == pytest.approx(numeric(row), rel=1e-9)
    for row in evals:
        (entry,) = [e for e in logged if e["step"] == row["step"] and "eval/add/mean_acc" in e]
        assert entry["eval/add/pass_acc"] == pytest.approx(row["pass_acc"])
    assert sorted({e["step"] for e in logged}) == [0, 1, 2, 3]
    from gopd_lab.loop.trackers import SAMPLE_COLUMNS, sample_table

    tables = {e["step"]: e["samples"] for e in logged if "samples" in e}  # report_samples: the per-token table
    by_step = samples_at(out)
    assert sorted(tables) == sorted(by_step) == [1, 3]
    for step, table in tables.items():
        assert table["_type"] == "trackio.table"
        assert [[r[c] for c in SAMPLE_COLUMNS] for r in table["_value"]] == sample_table(by_step[step])


@pytest.mark.parametrize("name", ["tensorboard", "trackio", "wandb"])
def test_a_missing_tracker_package_names_its_extra_before_any_model_loads(name, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, name, None)  # as if not installed: `import name` raises ImportError
    with pytest.raises(ConfigError, match=rf"pip install 'gopd-lab\[{name}\]'"):  # the config refuses it
        RunConfig(student="/nonexistent", teacher="/nonexistent", report_to=["none", name], out_dir=str(tmp_path))


def test_report_to_values_are_checked():
    assert RunConfig(report_to="tensorboard,trackio").report_targets == ["tensorboard", "trackio"]
    assert RunConfig().report_targets == [] and RunConfig(report_to=["none"]).report_targets == []
    with pytest.raises(ConfigError, match="report_to must be one of"):
        RunConfig(report_to="mlflow")


def test_wandb_adapter_calls_init_log_finish(tiny_dirs, tmp_path, monkeypatch):
    """wandb is not installed here: a recording stand-in module checks what the adapter sends (not wandb itself)."""
    import types

    calls = []

    class Run:
        def log(self, scalars, step):
            calls.append(("log", step, dict(scalars)))

        def finish(self):
            calls.append(("finish",))

    def init(**kw):
        calls.append(("init", kw["project"], kw["name"], kw["dir"], kw["config"]["lam"]))
        return Run()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    out = tmp_path / "run"
    train(tiny_cfg(tiny_dirs, out, report_to="wandb"), progress=False)
    assert calls[0] == ("init", "gopd-lab", "run", str(out), 1.25) and calls[-1] == ("finish",)
    logs = [c for c in calls if c[0] == "log"]
    metrics, evals = rows(out / "metrics.jsonl"), rows(out / "eval.jsonl")
    assert [(step, s) for _, step, s in logs if "loss" in s] == [
        (r["step"], pytest.approx(numeric(r))) for r in metrics
    ]
    assert [step for _, step, s in logs if "eval/add/greedy_acc" in s] == [r["step"] for r in evals] == [0, 2, 3]
    assert [step for _, step, _ in logs] == sorted(step for _, step, _ in logs)  # wandb needs steps in order


# ------------------------------------------------------------------ the per-token table (issue 28)
def samples_at(out: Path) -> dict[int, list[dict]]:
    by_step: dict[int, list[dict]] = {}
    for r in rows(out / "samples.jsonl"):
        by_step.setdefault(r["step"], []).append(r)
    return by_step


def test_sample_table_has_one_row_per_token_with_its_advantage():
    from gopd_lab.loop.trackers import SAMPLE_COLUMNS, markdown_table, sample_table

    record = {"step": 3, "index": 1, "domain": "add", "tokens": ["4", "6"], "advantage": [0.5, -0.25],
              "lp_student": [-1.0, -2.0], "lp_teacher": [-0.5, -2.25], "lam_t": None, "lam": 1.25, "score": 1.0}  # fmt: skip
    table = sample_table([record])
    assert table == [
        [3, 1, "add", 0, "4", 0.5, -1.0, -0.5, 1.25, 1.0],
        [3, 1, "add", 1, "6", -0.25, -2.0, -2.25, 1.25, 1.0],
    ]
    text = markdown_table(SAMPLE_COLUMNS, [[1, "a|b", None, 0.123456]])
    assert text.splitlines()[2] == "| 1 | a\\|b |  | 0.1235 |" and text.startswith("| step | sample |")


def test_tensorboard_gets_the_logged_samples_as_a_text_table(tiny_dirs, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from gopd_lab.loop.trackers import SAMPLE_COLUMNS, markdown_table, sample_table

    out = tmp_path / "run"
    cfg = tiny_cfg(tiny_dirs, out, report_to="tensorboard", report_samples=True, log_samples=2, log_samples_every=2)
    train(cfg, progress=False)
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"tensors": 0})
    acc.Reload()
    events = acc.Tensors("samples/text_summary")
    by_step = samples_at(out)
    assert [e.step for e in events] == sorted(by_step) == [1, 2, 3]
    for e in events:
        assert e.tensor_proto.string_val[0].decode() == markdown_table(SAMPLE_COLUMNS, sample_table(by_step[e.step]))


def test_wandb_and_trackio_get_a_table_only_when_asked(tiny_dirs, tmp_path, monkeypatch):
    """wandb is not installed here: a recording stand-in (its Table keeps columns and data) checks the adapter."""
    import types

    from gopd_lab.loop.trackers import SAMPLE_COLUMNS, sample_table

    tables = []

    class Table:
        def __init__(self, columns, data):
            self.columns, self.data = columns, data

    class Run:
        def log(self, values, step):
            tables.extend((step, v) for v in values.values() if isinstance(v, Table))

        def finish(self):
            pass

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=lambda **kw: Run(), Table=Table))
    out = tmp_path / "run"
    train(tiny_cfg(tiny_dirs, out, report_to="wandb", report_samples=True, log_samples=1), progress=False)
    by_step = samples_at(out)
    assert [step for step, _ in tables] == sorted(by_step) == [1, 3]
    for step, table in tables:
        assert table.columns == list(SAMPLE_COLUMNS) and table.data == sample_table(by_step[step])
        assert all(row[5] is not None for row in table.data)  # every token carries its A_t
    tables.clear()
    train(tiny_cfg(tiny_dirs, tmp_path / "off", report_to="wandb", log_samples=1), progress=False)
    assert tables == []  # report_samples is off by default
