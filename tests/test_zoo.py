"""The embedded zoo: a scaled-down build end to end, the manifest, hash checks, and the committed zoo."""

import json

import pytest
import torch

from gopd_lab.experiments import zoo_build
from gopd_lab.lm.models import ModelLoadError, load_model
from gopd_lab.world import zoo


@pytest.fixture(scope="module")
def small_zoo(tmp_path_factory):
    """A scaled-down build of world v1's recipes (the build mechanics; world v2's has its own test below)."""
    root = tmp_path_factory.mktemp("zoo")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GOPD_LAB_WORLD", "v1")
        zoo_build.build(root / "zoo", work=root / "work", scale=0.002, eval_limit=8, progress=False)
    return root / "zoo"


def test_scaled_down_build_writes_every_model_and_a_valid_manifest(small_zoo):
    manifest = json.loads((small_zoo / zoo.MANIFEST).read_text())
    recipes = zoo.RECIPES
    assert sorted(manifest["models"]) == sorted(r.name for r in recipes)
    for name, entry in manifest["models"].items():
        assert entry["architecture"]["class"] == "Qwen2ForCausalLM"
        assert entry["parameters"] > 0 and entry["seed"] == next(r.seed for r in recipes if r.name == name)
        assert entry["command"].startswith("GOPD_LAB_WORLD=v1 gopd-lab zoo build")
        assert set(entry["accuracy"]) == {"add", "mul"}
        for acc in entry["accuracy"].values():
            assert acc["n"] == 8 and 0.0 <= acc["greedy"] <= 1.0 and 0.0 <= acc["mean@4"] <= 1.0
        assert "model.safetensors" in entry["sha256"] and "tokenizer.json" in entry["sha256"]
        assert zoo.model_path(name, root=small_zoo) == small_zoo / name  # every hash verifies
    teachers = {r.name: r.init for r in zoo.RECIPES if r.init}
    assert teachers == {"teacher-add": "student-base", "teacher-mul": "student-base", "big-teacher": "big-base"}
    big, small = manifest["models"]["big-base"]["parameters"], manifest["models"]["student-base"]["parameters"]
    assert big > 4 * small


def test_a_modified_checkpoint_fails_its_sha256_check(small_zoo, tmp_path):
    import shutil

    copy = tmp_path / "zoo"
    shutil.copytree(small_zoo, copy)
    weights = copy / "student-base" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(zoo.ZooError, match="does not match its sha256"):
        zoo.model_path("student-base", root=copy)
    with pytest.raises(zoo.ZooError, match="no zoo model"):
        zoo.model_path("nope", root=copy)


def test_build_is_deterministic(small_zoo, tmp_path, monkeypatch):
    monkeypatch.setenv("GOPD_LAB_WORLD", "v1")
    recipe = [r for r in zoo.RECIPES if r.name == "student-base"]
    zoo_build.build(tmp_path / "zoo", recipes=recipe, work=tmp_path / "work", scale=0.002, eval_limit=8, progress=False)
    a = json.loads((small_zoo / zoo.MANIFEST).read_text())["models"]["student-base"]["sha256"]["model.safetensors"]
    b = json.loads((tmp_path / "zoo" / zoo.MANIFEST).read_text())["models"]["student-base"]["sha256"][
        "model.safetensors"
    ]
    assert a == b


def test_committed_zoo_verifies_and_loads_through_zoo_specs():
    manifest = zoo.read_manifest()
    for name in manifest["models"]:
        model = load_model(f"zoo:{name}", role="student", device=torch.device("cpu"), dtype=torch.float32)
        assert sum(p.numel() for p in model.parameters()) == manifest["models"][name]["parameters"]


def test_a_missing_zoo_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "missing"), role="teacher", device=torch.device("cpu"), dtype=torch.float32)


@pytest.mark.slow
def test_distilling_student_base_from_its_domain_teacher_raises_domain_accuracy(tmp_path):
    """40 OPD steps on `add` (world v2): measured +16.3 points greedy (70.5 % -> 86.8 %); the margin asked is 5."""
    from gopd_lab import RunConfig, train

    cfg = RunConfig(
        student="zoo:student-base",
        teacher="zoo:teacher-add",
        lam=1.0,
        tasks="add",
        steps=40,
        batch_size=32,
        lr=1e-4,
        max_new_tokens=6,
        eval_k=4,
        device="cpu",
        out_dir=str(tmp_path / "opd"),
    )
    train(cfg, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "opd" / "eval.jsonl").read_text().splitlines()]
    before, after = rows[0], rows[-1]
    assert (before["step"], after["step"], after["n"]) == (0, 40, 1000)
    assert after["greedy_acc"] >= before["greedy_acc"] + 0.05
    assert after["mean_acc"] > before["mean_acc"]


def test_world_v2_build_records_its_training_files_and_kl_teachers(tmp_path, monkeypatch):
    """A scaled-down world-v2 build: teachers on the RL prompts with kl_coef β, β/λ siblings, a KL-free teacher;
    every model's manifest entry lists the prompt files it trained on with their sha256."""
    from gopd_lab.tasks.arith import world_dir

    monkeypatch.setenv("GOPD_LAB_WORLD", "v2")
    assert zoo.world_recipes() is zoo.RECIPES_V2 and zoo.zoo_dir() == zoo.data_dir() / "zoo" / "v2"
    small = [r for r in zoo.RECIPES_V2 if r.name in ("student-base", "teacher-add", "teacher-add-kl-over-1.25")]
    entries = zoo_build.build(
        tmp_path / "zoo", recipes=small, work=tmp_path / "work", scale=0.002, eval_limit=8, progress=False
    )
    base, teacher, sibling = (entries[r.name] for r in small)
    assert [f["path"] for f in base["train_data"]] == ["data/arith/v2/add_train.jsonl", "data/arith/v2/mul_train.jsonl"]
    assert [f["path"] for f in teacher["train_data"]] == ["data/arith/v2/add_rl.jsonl"]
    assert teacher["train_data"][0]["sha256"] == zoo.sha256(world_dir() / "add_rl.jsonl")
    assert teacher["recipe"]["kl_coef"] == zoo.BETA and sibling["recipe"]["kl_coef"] == pytest.approx(zoo.BETA / 1.25)
    assert teacher["command"].startswith("GOPD_LAB_WORLD=v2 gopd-lab zoo build")
    nokl = next(r for r in zoo.RECIPES_V2 if r.name == "teacher-add-nokl")
    assert "kl_coef" not in nokl.extra and teacher["accuracy"]["add"]["n"] == 8


def test_a_parallel_build_makes_the_same_models_and_a_partial_build_keeps_the_other_entries(
    small_zoo, tmp_path, monkeypatch
):
    import shutil

    monkeypatch.setenv("GOPD_LAB_WORLD", "v1")

    par = zoo_build.build(
        tmp_path / "par", work=tmp_path / "work", scale=0.002, eval_limit=8, progress=False, workers=2
    )
    seq = json.loads((small_zoo / zoo.MANIFEST).read_text())["models"]
    assert list(par) == [r.name for r in zoo.RECIPES]
    assert {n: e["sha256"] for n, e in par.items()} == {n: e["sha256"] for n, e in seq.items()}
    assert json.loads((tmp_path / "par" / zoo.MANIFEST).read_text())["models"].keys() == seq.keys()
    copy = tmp_path / "copy"
    shutil.copytree(small_zoo, copy)
    only = [r for r in zoo.RECIPES if r.name == "teacher-add"]
    zoo_build.build(copy, recipes=only, work=tmp_path / "work2", scale=0.002, eval_limit=8, progress=False)
    assert json.loads((copy / zoo.MANIFEST).read_text())["models"].keys() == seq.keys()


def test_committed_world_v2_zoo_verifies_and_its_teachers_beat_their_bases(monkeypatch):
    """data/zoo/v2: every file matches its sha256, every training file's hash matches data/; each GRPO teacher is
    >= 15 greedy points above its base on every domain it was trained on;
    the KL-regularised teachers carry kl_coef, the counter-example none."""
    monkeypatch.setenv("GOPD_LAB_WORLD", "v2")
    models = zoo.read_manifest()["models"]
    assert list(models) == [r.name for r in zoo.RECIPES_V2]
    for name, entry in models.items():
        assert zoo.model_path(name) == zoo.zoo_dir() / name  # every hash verifies
        for f in entry["train_data"]:
            assert zoo.sha256(zoo.data_dir().parent / f["path"]) == f["sha256"], f["path"]
        recipe = entry["recipe"]
        if recipe["method"] != "grpo":
            continue
        base = models[recipe["init"]]["accuracy"]
        gains = [
            entry["accuracy"][d]["greedy"] - base[d]["greedy"] for d in recipe["tasks"].replace("-rl", "").split(",")
        ]
        assert min(gains) >= 0.15, (name, gains)
        assert ("kl_coef" in recipe) == (not name.endswith("-nokl"))
