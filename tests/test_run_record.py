"""Self-describing runs: config.json's run record (world, resolved models with the manifest's hash, evaluator,
version, git commit, command line), the ``world`` field that ``GOPD_LAB_WORLD`` only defaults, and the headroom
check before a new task trains ("no teacher here knows this task")."""

import json
import re

import pytest

from gopd_lab import RunConfig, train
from gopd_lab.config import RUN_RECORD, ConfigError
from gopd_lab.loop.headroom import HeadroomError, check_headroom
from gopd_lab.loop.load import load_models
from gopd_lab.tasks import _REGISTRY, load_tasks, make_task, register_task
from gopd_lab.world.zoo import MANIFEST, sha256, zoo_dir

ZOO = dict(
    student="zoo:student-base",
    teacher="zoo:teacher-add",
    tasks="add",
    steps=1,
    batch_size=2,
    max_new_tokens=4,
    eval_k=1,
    eval_limit=2,
    eval_seed=1234,
    log_samples=1,
    device="cpu",
)


def test_config_json_records_what_the_run_was_made_with(tmp_path, monkeypatch):
    monkeypatch.delenv("GOPD_LAB_WORLD", raising=False)
    cfg = RunConfig(**ZOO, lam=1.5, out_dir=str(tmp_path / "run"))
    train(cfg, progress=False)
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    record = saved[RUN_RECORD]
    assert saved["world"] == record["world"] == "v2"
    teacher = record["models"]["teacher/default"]
    assert teacher["path"] == str((zoo_dir() / "teacher-add").resolve())
    assert teacher["manifest_sha256"] == sha256(zoo_dir() / MANIFEST) and len(teacher["weights_sha256"]) == 64
    assert record["models"]["reference/default"] == {"spec": "student"}  # λ ≠ 1: the reference ran
    assert record["evaluator"]["seed"] == 1234 and record["evaluator"]["limit"] == 2
    assert record["evaluator"]["tasks"] == ["add"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", record["gopd_lab_version"]) and record["command"]
    assert record["git"] is None or re.fullmatch(r"[0-9a-f]{40}", record["git"]["commit"])
    assert RunConfig.load(tmp_path / "run" / "config.json") == cfg  # the record is skipped when read back


def test_world_is_a_field_the_variable_only_defaults(monkeypatch):
    monkeypatch.setenv("GOPD_LAB_WORLD", "v1")
    assert RunConfig().world == "v1" and RunConfig(world="v2").world == "v2"
    monkeypatch.setenv("GOPD_LAB_WORLD", "v9")
    with pytest.raises(ConfigError, match="GOPD_LAB_WORLD must be one of"):
        RunConfig()
    monkeypatch.delenv("GOPD_LAB_WORLD")
    with pytest.raises(ConfigError, match="world must be one of"):
        RunConfig(world="v3")


def test_loading_a_runs_models_uses_its_world_not_the_environments(monkeypatch):
    monkeypatch.setenv("GOPD_LAB_WORLD", "v2")
    cfg = RunConfig(**{**ZOO, "world": "v1"})
    models = load_models(cfg)
    v1 = load_models(RunConfig(**{**ZOO, "world": "v2"}))
    assert any(
        (p - q).abs().max() > 0
        for p, q in zip(models.teacher_for("add").parameters(), v1.teacher_for("add").parameters())
    )


@pytest.fixture
def subtraction():
    register_task(
        "test-sub",
        lambda: make_task(
            "test-sub",
            train=[(f"{a}-{b}=", str(a - b)) for a in range(20, 40) for b in range(10, 20)],
            test=[(f"{a}-{b}=", str(a - b)) for a in range(40, 48) for b in range(10, 12)],
        ),
    )
    yield "test-sub"
    _REGISTRY.pop("test-sub")


def test_the_headroom_check_stops_a_run_whose_teacher_does_not_know_the_task(subtraction, tmp_path):
    cfg = RunConfig(**{**ZOO, "tasks": subtraction}, headroom_check="refuse", out_dir=str(tmp_path / "sub"))
    with pytest.raises(HeadroomError, match=r"no teacher here knows this task \(task 'test-sub': teacher 'zoo:teach"):
        train(cfg, progress=False)
    assert not (tmp_path / "sub" / "metrics.jsonl").exists()  # nothing trained
    models = load_models(cfg)
    with pytest.warns(UserWarning, match="headroom_check='off' to train anyway"):
        table = check_headroom(models, load_tasks([subtraction]), cfg.replace(headroom_check="warn"))
    assert table.greedy_acc.iloc[0] < 0.1 and table.n.iloc[0] == 16
    assert check_headroom(models, load_tasks([subtraction]), cfg.replace(headroom_check="off")) is None


def test_the_headroom_check_passes_a_teacher_that_knows_its_task(tmp_path):
    cfg = RunConfig(**ZOO, headroom_check="refuse", out_dir=str(tmp_path / "add"))
    train(cfg, progress=False)
    (row,) = json.loads((tmp_path / "add" / "config.json").read_text())[RUN_RECORD]["headroom_check"]
    assert row["domain"] == "add" and row["greedy_acc"] >= 0.1 and row["n"] == 16
