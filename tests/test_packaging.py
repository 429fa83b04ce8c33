"""The built wheel carries the zoo and the task data: installed outside the checkout, the README's models load."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import tomllib
from setuptools import find_packages

from gopd_lab.tasks import data_dir

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_and_data_file_is_in_the_wheel_list():
    """pyproject lists the packages by hand (data/ is mapped in as gopd_lab.data): a new subpackage must be added."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = sorted(find_packages(str(ROOT), include=["gopd_lab", "gopd_lab.*"]))
    assert sorted(setuptools["packages"]) == sorted([*found, "gopd_lab.data"])
    assert setuptools["package-dir"] == {"gopd_lab.data": "data"}
    assert setuptools["package-data"]["gopd_lab.data"] == ["**/*"]  # every file a helper adds under data/
    assert data_dir() == ROOT / "data"  # the checkout's data/, found through importlib.resources


SCRIPT = """
import json, sys
import torch
from pathlib import Path
import gopd_lab
from gopd_lab.lm.models import load_model
from gopd_lab.tasks import data_dir, get_task
from gopd_lab.config import RunConfig
from gopd_lab.loop.train import train

site = Path(sys.argv[1]).resolve()
assert Path(gopd_lab.__file__).resolve().is_relative_to(site), gopd_lab.__file__
assert data_dir().resolve().is_relative_to(site), data_dir()
model = load_model("zoo:student-base", role="student", device=torch.device("cpu"), dtype=torch.float32)
task = get_task("add")
cfg = RunConfig(student="zoo:student-base", teacher="zoo:teacher-add", tasks="add", steps=2, batch_size=2,
                max_new_tokens=4, eval_k=1, eval_limit=4, log_samples=1, out_dir="run", device="cpu")
history = train(cfg, progress=False)
print(json.dumps({"params": sum(p.numel() for p in model.parameters()), "train": len(task.train),
                  "test": len(task.test), "steps": len(history), "data": str(data_dir())}))
"""


@pytest.mark.slow
def test_wheel_installed_outside_the_checkout_loads_the_zoo_and_trains(tmp_path):
    src = tmp_path / "src"  # build from a copy: nothing but what the wheel is made of, no build/ in the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "gopd_lab", src / "gopd_lab", ignore=ignore)
    shutil.copytree(ROOT / "data", src / "data", ignore=ignore)
    pip = [sys.executable, "-m", "pip"]
    subprocess.run([*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", tmp_path / "dist", src], check=True)
    (wheel,) = (tmp_path / "dist").glob("gopd_lab-*.whl")
    assert wheel.stat().st_size > 5e6  # the zoo (~5.5 MB of safetensors) is inside

    # a fresh venv whose own site-packages gets the wheel; torch & co. come from this interpreter's
    # site-packages through a .pth line (whose editable-install hook is not run there)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], text=True
        ).strip()
    )
    (site / "deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([*pip, "--python", python, "install", "-q", "--no-deps", "--no-index", wheel], check=True)
    data = site / "gopd_lab" / "data"
    assert sorted(p.name for p in (data / "zoo").iterdir()) == sorted(p.name for p in (ROOT / "data" / "zoo").iterdir())
    assert (data / "arith" / "add_train.jsonl").read_bytes() == (
        ROOT / "data" / "arith" / "add_train.jsonl"
    ).read_bytes()

    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GOPD_LAB_DATA")}
    out = subprocess.run([python, "-c", SCRIPT, site], cwd=work, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["steps"] == 2 and result["train"] > 0 and result["test"] > 0 and result["params"] > 0
    assert len((work / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    listing = subprocess.run(
        [venv / "bin" / "gopd-lab", "zoo", "list"], cwd=work, env=env, capture_output=True, text=True
    )
    assert listing.returncode == 0, listing.stderr[-2000:]
    assert "student-base" in listing.stdout and "teacher-add" in listing.stdout
    demo = subprocess.run(  # the demo from the wheel: zoo models, task data and the curves page, 1 step per λ
        [venv / "bin" / "gopd-lab", "demo", "--steps", "1", "--out-dir", "demo"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    table = (work / "demo" / "results.csv").read_text().splitlines()
    assert table[0].startswith("run,lam,greedy_before") and [r.split(",")[1] for r in table[1:]] == ["1.0", "1.25"]
    assert (work / "demo" / "training_curves.html").stat().st_size > 0
    course = (  # the course's checkout files from the wheel: one clear error elsewhere, read inside a checkout
        "from gopd_lab.viz import course\n"
        "try:\n    print(len(course.committed_headroom()))\n"
        "except course.NeedsCheckoutError as err:\n    print('needs a checkout:', err)\n"
    )
    env_no_repo = {k: v for k, v in env.items() if k != "GOPD_LAB_REPO"}
    elsewhere = subprocess.run([python, "-c", course], cwd=work, env=env_no_repo, capture_output=True, text=True)
    assert elsewhere.stdout.startswith("needs a checkout: results/v2/headroom"), elsewhere.stderr[-2000:]
    inside = subprocess.run(
        [python, "-c", course], cwd=ROOT / "notebooks", env=env_no_repo, capture_output=True, text=True
    )
    assert int(inside.stdout.strip()) > 0, inside.stderr[-2000:]


def _extras_of(requirement: str) -> set[str]:
    return set(requirement.partition("[")[2].rstrip("]").split(","))


def test_environment_yml_installs_every_extra_the_tests_use_and_registers_the_kernel():
    """Regression: environment.yml left out datasets / tensorboard / trackio and never registered the kernel."""
    import re

    import yaml

    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    (editable,) = [r for r in pip if r.startswith("-e .[")]
    makefile = (ROOT / "Makefile").read_text()
    make_extras = set(re.search(r"^EXTRAS \?= (.+)$", makefile, re.M).group(1).split(","))
    assert _extras_of(editable) == make_extras
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    imported = {"datasets": "datasets", "tensorboard": "tensorboard", "trackio": "trackio", "lora": "peft"}
    used = {
        extra
        for extra, module in imported.items()
        for test in (ROOT / "tests").glob("test_*.py")
        if re.search(rf"^\s*(import|from) {module}\b", test.read_text(), re.M)
    }
    assert used <= _extras_of(editable) <= set(extras), used
    kernels = {
        json.loads(nb.read_text())["metadata"]["kernelspec"]["name"] for nb in (ROOT / "notebooks").glob("*.ipynb")
    }
    command = f"python -m ipykernel install --sys-prefix --name {kernels.pop()} --display-name"
    assert not kernels and command in (ROOT / "environment.yml").read_text() and command.split("python ")[1] in makefile
    assert "torch==2.13.0" in pip


def test_setup_stamp_depends_on_torch():
    """Regression: `make setup TORCH=...` did nothing on an existing .venv (the stamp depended on pyproject only)."""
    makefile = (ROOT / "Makefile").read_text()
    assert "$(BIN)/.installed: pyproject.toml $(VENV)/.torch" in makefile
    dry = subprocess.run(
        ["make", "-n", "setup", "VENV=/nonexistent-venv", "TORCH=torch==9.9"], cwd=ROOT, capture_output=True, text=True
    )
    assert dry.returncode == 0 and "echo 'torch==9.9'" in dry.stdout and "uninstall -q -y torch" in dry.stdout


def test_course_paths_need_a_checkout_and_say_so(tmp_path, monkeypatch):
    """Regression: from an installed wheel course.REPO pointed into site-packages (notebooks 03, 07, 09 failed)."""
    from gopd_lab.viz import course

    assert course.find_repo() == ROOT
    monkeypatch.setenv("GOPD_LAB_REPO", str(tmp_path))
    assert course.find_repo() == tmp_path.resolve()
    from gopd_lab import checkout

    monkeypatch.setattr(checkout, "_FOUND", None)
    monkeypatch.setattr(checkout, "REPO", tmp_path)
    monkeypatch.setattr(checkout, "SWEEP_RESULTS", tmp_path / "results")
    with pytest.raises(course.NeedsCheckoutError, match="clone the repository.*GOPD_LAB_REPO"):
        course.committed_headroom()
    with pytest.raises(course.NeedsCheckoutError):
        course.committed_sweep("v2/lam")
    assert course.repo_path("runs/x") == tmp_path / "runs/x"  # outputs go to the working folder
