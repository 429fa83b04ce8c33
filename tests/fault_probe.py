"""Fault probes (issue 22), run by hand, not by pytest: they print a table of cases and how each ended.

    .venv/bin/python tests/fault_probe.py config   # nonsense values for every RunConfig field
    .venv/bin/python tests/fault_probe.py files    # empty and truncated forms of the files a run reads
    .venv/bin/python tests/fault_probe.py kill     # kill -9 of `gopd-lab train` at each stage, then resume

"ok" is a one-line user error (a ``UserError``) or, for ``kill``, a resume that finishes with every step logged
once; "RAW" is any other exception (a bug); "accepted" is a value the config takes (legitimate or not: judge).
Each case that ended badly here has a regression test in tests/test_faults*.py (docs/reliability.md).
"""

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

NONSENSE = [None, "", -1, 0, 10**12, "nonsense", [], {}, -0.5, 1e300, float("nan"), True]


def probe_config() -> None:
    from gopd_lab.config import RunConfig
    from gopd_lab.errors import UserError

    counts, accepted = {"refused": 0, "accepted": 0, "RAW": 0}, {}
    for f in dataclasses.fields(RunConfig):
        for value in NONSENSE:
            try:
                RunConfig(**{f.name: value})
                counts["accepted"] += 1
                accepted.setdefault(f.name, []).append(value)
            except UserError:
                counts["refused"] += 1
            except Exception as err:  # noqa: BLE001 - a probe reports every outcome
                counts["RAW"] += 1
                print(f"RAW {f.name}={value!r}: {type(err).__name__}: {err}")
    for name, values in accepted.items():
        print(f"accepted {name}: {values}")
    print(f"{len(dataclasses.fields(RunConfig))} fields x {len(NONSENSE)} values: {counts}")


def _tiny(root: Path):
    from gopd_lab.world.tiny import save_tiny_model

    return save_tiny_model(root / "s", seed=0), save_tiny_model(root / "t", seed=1)


def probe_files() -> None:
    import torch

    from gopd_lab.cli import main
    from gopd_lab.config import RunConfig
    from gopd_lab.errors import UserError
    from gopd_lab.lm.models import load_model, load_tokenizer
    from gopd_lab.loop.train import train

    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp())
    student, teacher = _tiny(root)
    base = dict(
        student=str(student), teacher=str(teacher), device="cpu", dtype="float32", prompts=["1+1=", "2+2="],
        batch_size=2, max_new_tokens=2, steps=2, log_samples=0, save_every=1,
    )  # fmt: skip
    results = []

    def case(name, fn):
        try:
            fn()
            results.append((name, "no error"))
        except UserError as err:
            results.append((name, f"ok {type(err).__name__}: {str(err)[:110]}"))
        except SystemExit as err:
            results.append((name, f"exit {err.code}"))
        except Exception as err:  # noqa: BLE001
            results.append((name, f"RAW {type(err).__name__}: {str(err)[:110]}"))

    def damaged(src: Path, rel: str, how: str, tag: str) -> Path:
        dest = root / f"{tag}_{rel.replace('/', '_')}_{how}"
        shutil.copytree(src, dest)
        data = (dest / rel).read_bytes()
        (dest / rel).write_bytes(b"" if how == "empty" else data[: len(data) // 2])
        return dest

    run = root / "run"
    train(RunConfig(**base, out_dir=str(run)), progress=False)
    for rel in ("optimizer.pt", "rng.pt", "state.json", "student.safetensors"):
        for how in ("empty", "truncated"):

            def resume(rel=rel, how=how):
                d = damaged(run, f"checkpoints/step_000002/{rel}", how, "run")
                train(RunConfig(**{**base, "steps": 3}, out_dir=str(d), resume=True), progress=False)

            case(f"resume, {how} checkpoint {rel}", resume)
    for how in ("empty", "truncated"):
        case(f"resume, {how} config.json", lambda how=how: train(
            RunConfig(**{**base, "steps": 3}, out_dir=str(damaged(run, "config.json", how, "cfg")), resume=True),
            progress=False))  # fmt: skip
    for rel in ("config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        for how in ("empty", "truncated"):

            def load(rel=rel, how=how):
                d = damaged(student, rel, how, "model")
                load_tokenizer(str(d))
                load_model(str(d), role="student", device=torch.device("cpu"), dtype=torch.float32)

            case(f"model folder, {how} {rel}", load)
    for how, text in (("empty", ""), ("truncated", "student: a\nlr: [1,")):
        path = root / f"config_{how}.yaml"
        path.write_text(text)
        case(f"train --config, {how} YAML", lambda p=path: sys.exit(main(["train", "--config", str(p)])))
    for how, text in (("empty", ""), ("truncated", '{"cells": [')):
        path = root / f"nb_{how}.ipynb"
        path.write_text(text)
        case(f"sweep, {how} notebook", lambda p=path: sys.exit(main(["sweep", str(p), "--grid", "x=1"])))
    for how, text in (("empty", ""), ("truncated", '{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+')):
        path = root / f"expert_{how}.jsonl"
        path.write_text(text)
        fields = {**base, "method": "sft", "expert_data": str(path), "tasks": "add", "eval_k": 0, "eval_limit": 1}
        fields.pop("prompts")
        case(
            f"expert_data, {how}", lambda f=fields, h=how: train(RunConfig(**f, out_dir=str(root / h)), progress=False)
        )
        case(f"prompts file, {how}", lambda p=path: train(RunConfig(**{**base, "prompts": str(p)}, out_dir=str(root / "p")), progress=False))  # fmt: skip
    big = root / "big.jsonl"
    big.write_text(json.dumps({"prompt": "1+" * (1 << 20)}) + "\n")
    case("prompts file, one 2 MiB row", lambda: train(RunConfig(**{**base, "prompts": str(big)}, out_dir=str(root / "b")), progress=False))  # fmt: skip
    for name, outcome in results:
        print(f"{name:45s} {outcome}")
    bad = sum(not r.startswith(("ok", "exit 2")) for _, r in results)
    print(f"{len(results)} cases, {len(results) - bad} ended in a one-line user error")


def probe_kill() -> None:
    root = Path(tempfile.mkdtemp())
    student, teacher = _tiny(root)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cli = [sys.executable, "-m", "gopd_lab.cli", "train", "--student", str(student), "--teacher", str(teacher)]
    cli += ["--device", "cpu", "--prompts", "[12+7=, 3*4=]", "--batch-size", "2", "--max-new-tokens", "3"]
    cli += ["--log-samples", "0", "--save-every", "1", "--steps", "40"]
    stages = {
        "holding the lock": lambda out: (out / ".run.lock").exists(),
        "config.json written": lambda out: (out / "config.json").exists(),
        "after step 1": lambda out: len(_lines(out / "metrics.jsonl")) >= 1,
        "after step 10": lambda out: len(_lines(out / "metrics.jsonl")) >= 10,
        "writing checkpoint 5": lambda out: any((out / "checkpoints").glob("step_000005*")),
        "writing the final model": lambda out: (out / "model.tmp").exists(),
    }
    good = 0
    for stage, reached in stages.items():
        out = root / stage.replace(" ", "_")
        proc = subprocess.Popen(
            [*cli, "--out-dir", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        t0 = time.time()
        while not reached(out) and proc.poll() is None and time.time() - t0 < 300:
            time.sleep(0.002)
        alive = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        again = subprocess.run(
            [*cli, "--out-dir", str(out), "--resume", "true"], env=env, capture_output=True, text=True
        )
        steps = [json.loads(x)["step"] for x in _lines(out / "metrics.jsonl")]
        ok = again.returncode == 0 and steps == list(range(1, 41)) and (out / "model").is_dir()
        ok = ok and not (out / ".run.lock").exists()
        good += ok
        print(f"kill -9 {stage:26s} (still running when killed: {alive}): resume {'ok' if ok else 'FAILED'}")
    print(f"{len(stages)} stages, {good} resumed to the same 40 steps")


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


if __name__ == "__main__":
    {"config": probe_config, "files": probe_files, "kill": probe_kill}[sys.argv[1]]()
