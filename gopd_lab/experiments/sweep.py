"""Papermill sweeps: every point of a grid runs a parameterised notebook into its own run dir; parallel,
resumable, failure-tolerant; the results come back as one pandas DataFrame.

```python
from gopd_lab.experiments.sweep import run_sweep, load_sweep

df = run_sweep(
    "notebooks/experiments/lam.ipynb",
    grid={"lam": [0.5, 1, 1.25], "seed": [0, 1]},
    fixed={"steps": 20},
    sweep_dir="runs/sweeps/lam",
    workers=2,
)
```

The notebook has a cell tagged ``parameters`` with an ``out_dir`` and calls
``train(RunConfig(..., out_dir=out_dir))``. The sweep dir then holds::

    sweep.json                    notebook, grid, fixed, point ids (in grid order) and their parameters
    executions.jsonl              one line per point executed (id, status, seconds)
    results.parquet, results.csv  the gathered DataFrame
    <point_id>/                   e.g. lam=1.25,seed=0
        params.json, point.json   the point's parameters; status ok | failed | running, error, notebook, seconds
        <notebook>.ipynb          the executed notebook (with the traceback when the point failed)
        papermill.log             papermill's output
        config.json, metrics.jsonl, eval.jsonl, summary.json, ...   what train() wrote

Each point runs ``python -m papermill`` in a subprocess whose kernel gets ``OMP_NUM_THREADS`` /
``MKL_NUM_THREADS`` = cores // workers (and a ``torch_threads`` parameter when the notebook declares one)
and, when CUDA devices are visible, its own ``CUDA_VISIBLE_DEVICES``. The kernel is the interpreter
running the sweep (a private kernelspec, so nothing needs registering); ``kernel_name`` picks another.
A point is finished when its ``point.json`` says ``ok``: rerunning a sweep runs only the other points.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from tqdm.auto import tqdm

from gopd_lab.experiments.sweep_grid import Point, SweepError, SweepSpec, notebook_parameters, plan_points, same_params
from gopd_lab.experiments.sweep_lock import PointLock, is_stale, kill_tree, terminate_as_interrupt
from gopd_lab.loop.rundir import clear_run
from gopd_lab.runio import append_jsonl, atomic_write_json, atomic_write_text, public_mode, read_jsonl

__all__ = ["run_sweep", "load_sweep", "run_spec", "SweepError", "SweepSpec"]

KERNEL_NAME = "gopd-lab-sweep"


def run_sweep(
    notebook: str | Path,
    grid: dict[str, list] | None = None,
    fixed: dict[str, Any] | None = None,
    *,
    sweep_dir: str | Path | None = None,
    workers: int = 1,
    kernel_name: str | None = None,
    timeout: float | None = None,
    gpus: list | None = None,
    cwd: str | Path | None = None,
    rerun: bool = False,
    progress: bool = True,
) -> pd.DataFrame:
    """Run ``notebook`` once per point of ``grid`` (× ``fixed``) and return :func:`load_sweep`'s DataFrame.

    ``sweep_dir`` defaults to ``runs/sweeps/<notebook name>``; ``workers`` points run at once; ``kernel_name``
    defaults to the running interpreter; ``timeout`` (seconds) stops a point and records it as failed; ``gpus``
    (default: every visible CUDA device) go to workers round-robin; ``cwd`` is the kernels' working dir
    (default: the current one); ``rerun`` runs finished points again. Points already ``ok`` are skipped, failed
    ones are recorded and the others go on. The DataFrame's ``attrs`` hold ``ran`` and ``skipped`` point ids.
    """
    notebook = Path(notebook).resolve()
    defaults = notebook_parameters(notebook)
    points = plan_points(grid or {}, fixed or {}, defaults)
    if workers < 1:
        raise SweepError(f"workers must be >= 1, got {workers}")
    root = Path(sweep_dir or Path("runs/sweeps") / notebook.stem)
    pending = [p for p in points if rerun or not _finished(root, p)]
    skipped = [p.id for p in points if p not in pending]
    if pending:
        _check_tools(kernel_name)
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        root / "sweep.json",
        {
            "notebook": str(notebook),
            "grid": grid or {},
            "fixed": fixed or {},
            "points": [p.id for p in points],
            "params": {p.id: p.params for p in points},
        },
    )
    runner = _Runner(
        notebook,
        root.resolve(),
        defaults,
        workers,
        kernel_name,
        timeout,
        _visible_gpus() if gpus is None else [str(g) for g in gpus],
        cwd,
    )
    try:
        with terminate_as_interrupt():  # SIGTERM/SIGHUP stop the running points as Ctrl-C does
            runner.run(pending, total=len(points), progress=progress)
    finally:
        runner.close()
    results = load_sweep(root)
    _save_results(results, root)
    ran = [p.id for p in pending if p.id not in runner.locked]
    results.attrs.update(ran=ran, skipped=skipped, locked=list(runner.locked))
    if runner.locked:
        tqdm.write(f"sweep {root}: skipped {runner.locked}: another driver is running them (their .lock is held)")
    if progress:
        failed = results[results.status == "failed"]
        line = (
            f"sweep {root}: {len(points)} points, {len(ran)} ran, {len(skipped)} skipped, "
            + (f"{len(runner.locked)} left to another driver, " if runner.locked else "")
            + f"{len(failed)} failed → {root / 'results.parquet'}"
        )
        for _, row in failed.iterrows():
            line += f"\n  failed {row.point_id}: {row.error} (see {row.notebook})"
        tqdm.write(line)
    return results


def run_spec(spec: str | Path | SweepSpec, **overrides: Any) -> pd.DataFrame:
    """Run a YAML sweep spec (see :class:`SweepSpec`); keyword arguments override its keys."""
    spec = spec if isinstance(spec, SweepSpec) else SweepSpec.load(spec)
    options = {**spec.__dict__, **{k: v for k, v in overrides.items() if v is not None}}
    return run_sweep(options.pop("notebook"), options.pop("grid"), options.pop("fixed"), **options)


# ----------------------------------------------------------------------------- gathering
def load_sweep(sweep_dir: str | Path) -> pd.DataFrame:
    """Gather a sweep dir without running anything: one row per point with its parameters, ``status``
    (``ok``, ``failed``, ``running``, ``interrupted`` (marked running, but its driver died) or ``pending``),
    ``error``, ``wall_seconds``, the final metrics of ``summary.json`` as ``final_<metric>``, the last
    evaluation of ``eval.jsonl`` as ``eval_<domain>_<metric>`` (e.g. ``eval_add_greedy_acc``) and the
    executed ``notebook``'s path."""
    root = Path(sweep_dir)
    if not root.is_dir():
        raise SweepError(f"sweep dir {root} does not exist")
    manifest = root / "sweep.json"
    planned = json.loads(manifest.read_text()) if manifest.is_file() else {}
    ids = planned.get("points") or sorted(d.name for d in root.iterdir() if (d / "params.json").is_file())
    rows = [_gather_point(root / pid, planned.get("params", {}).get(pid)) for pid in ids]
    df = pd.DataFrame(rows)
    if not len(df):
        return pd.DataFrame(columns=["point_id", "status", "error", "wall_seconds", "notebook"])
    front = ["point_id"] + [c for r in rows for c in r["_params"] if c in df]
    front = list(dict.fromkeys(front + ["status", "error", "wall_seconds"]))
    final = [c for c in df.columns if c.startswith("final_") and c not in front]
    evals = [c for c in df.columns if c.startswith("eval_") and c not in front]  # a parameter may be eval_k
    return df[front + final + evals + ["notebook"]]


OUTCOMES = "outcomes.csv"
"""A run's per-prompt outcomes of its latest evaluation (:func:`gopd_lab.loop.evaluate.task_evaluator`)."""
SWEEP_OUTCOMES = "outcomes.csv.gz"
"""A published sweep's per-prompt outcomes: every point's final evaluation in one table (:func:`load_outcomes`)."""


def load_outcomes(sweep_dir: str | Path) -> pd.DataFrame | None:
    """Every ``ok`` point's per-prompt outcomes at its final evaluation, one table: ``point_id``, the outcome
    columns (``step``, ``domain``, ``prompt``, ``greedy``, ``s0`` …) of its ``outcomes.csv``, read from a sweep dir,
    or the sweep's ``outcomes.csv.gz`` when the dir is a published one. None when no point recorded them (sweeps
    that ran before runs wrote them); a missing file of one ``ok`` point, or one that does not hold the final
    step, is an error (the table must pair every point)."""
    root = Path(sweep_dir)
    if (root / SWEEP_OUTCOMES).is_file():
        return pd.read_csv(root / SWEEP_OUTCOMES)
    df = load_sweep(root)
    ok = df[df.status == "ok"]
    have = [pid for pid in ok.point_id if (root / pid / OUTCOMES).is_file()]
    if not have:
        return None
    missing = sorted(set(ok.point_id) - set(have))
    if missing:
        raise SweepError(f"points {missing} of {root} have no {OUTCOMES}: rerun them (they ran before it was written)")
    frames = []
    for pid in have:
        frame = pd.read_csv(root / pid / OUTCOMES)
        steps = _read_json(root / pid / "summary.json") or {}
        if set(frame.step) != {steps.get("steps")}:
            raise SweepError(f"{root / pid / OUTCOMES} is not the final evaluation (step {steps.get('steps')})")
        frames.append(frame.assign(point_id=pid))
    out = pd.concat(frames, ignore_index=True)
    return out[["point_id", *[c for c in out.columns if c != "point_id"]]]


def write_outcomes(frame: pd.DataFrame, path: str | Path) -> None:
    """``frame`` as gzip-compressed CSV (no timestamp in the header: the same table gives the same bytes),
    through a temp file and a rename."""
    import gzip
    import os
    import tempfile

    from gopd_lab.errors import writing

    path = Path(path)
    with writing(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            with open(tmp, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
                f.write(frame.to_csv(index=False).encode())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _gather_point(d: Path, planned: dict | None = None) -> dict:
    info = _read_json(d / "point.json") or {}
    params = _read_json(d / "params.json") or info.get("params") or planned or {}
    row = {
        "point_id": d.name,
        **params,
        "status": info.get("status", "pending"),
        "error": info.get("error"),
    }
    if is_stale(d, row["status"]):  # marked running, but no process holds its lock: its driver died
        row.update(status="interrupted", error="its sweep driver stopped while it ran; run the sweep again")
    row |= {
        "wall_seconds": info.get("wall_seconds"),
        "notebook": info.get("notebook"),
    }
    summary = _read_json(d / "summary.json")
    if summary is not None:  # run files are read only from a run that finished writing them
        row.update({f"final_{k}": v for k, v in (summary.get("final") or {}).items() if k != "step"})
        evals = read_jsonl(d / "eval.jsonl")
        last = max((r.get("step", 0) for r in evals), default=None)
        for r in evals:
            if r.get("step") == last:
                row.update(
                    {f"eval_{r.get('domain', 'all')}_{k}": v for k, v in r.items() if k not in ("step", "domain")}
                )
    row["_params"] = list(params)
    return row


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _save_results(df: pd.DataFrame, root: Path) -> None:
    """``results.csv`` and ``results.parquet``, each written to a temp file and renamed."""
    df = df.drop(columns=[c for c in df.columns if c == "_params"])
    atomic_write_text(root / "results.csv", df.to_csv(index=False))
    flat = df.copy()
    for col in flat.columns:  # parquet needs one type per column: mixed or nested values become JSON text
        if flat[col].dtype == object and not all(v is None or isinstance(v, str) for v in flat[col]):
            flat[col] = [None if v is None else json.dumps(v, default=str) for v in flat[col]]
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".results.", suffix=".parquet.tmp")
    public_mode(fd)
    os.close(fd)
    try:
        flat.to_parquet(tmp, index=False)
        os.replace(tmp, root / "results.parquet")
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- running
def _finished(root: Path, point: Point) -> bool:
    info = _read_json(root / point.id / "point.json")
    if not info or info.get("status") != "ok":
        return False
    if not same_params(info.get("params", {}), point.params):
        changed = sorted(
            k for k in {*info.get("params", {}), *point.params} if info.get("params", {}).get(k) != point.params.get(k)
        )
        raise SweepError(
            f"point {point.id} in {root} finished with other values of {changed}; use a new "
            "sweep_dir, or rerun=True (--rerun) to run every point again"
        )
    return True


def _check_tools(kernel_name: str | None) -> None:
    needed = ["papermill"] + ([] if kernel_name else ["ipykernel"])
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise SweepError(f"sweeps need {missing} in this Python ({sys.executable}): pip install -e '.[notebooks]'")


def _visible_gpus() -> list[str]:
    """CUDA devices this process may hand out: CUDA_VISIBLE_DEVICES's entries if set, else 0..n-1."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    except Exception:  # noqa: BLE001 — no usable CUDA means CPU workers
        return []


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass
class _Runner:
    notebook: Path
    root: Path
    defaults: dict
    workers: int
    kernel_name: str | None
    timeout: float | None
    gpus: list[str]
    cwd: str | Path | None
    procs: dict = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    kernel_dir: str | None = None
    locked: list = field(default_factory=list)

    @property
    def threads(self) -> int:
        return max(1, _cpu_count() // self.workers)

    def run(self, points: list[Point], *, total: int, progress: bool) -> None:
        if not points:
            return
        if self.kernel_name is None:
            self.kernel_dir = _private_kernel()
        slots: queue.Queue = queue.Queue()
        for i in range(self.workers):
            slots.put(i)

        def work(point: Point) -> dict | None:
            slot = slots.get()
            try:
                return None if self.stop.is_set() else self.execute(point, slot)
            finally:
                slots.put(slot)

        bar = tqdm(
            total=total, initial=total - len(points), desc=f"sweep {self.root.name}", unit="point", disable=not progress
        )
        failed = 0
        with ThreadPoolExecutor(self.workers, thread_name_prefix="sweep") as pool:
            futures = [pool.submit(work, p) for p in points]
            try:
                for fut in as_completed(futures):
                    record = fut.result()
                    failed += bool(record) and record["status"] not in ("ok", "locked")
                    bar.update(1)
                    bar.set_postfix(failed=failed)
            except BaseException:  # Ctrl-C / kernel interrupt: start nothing new, stop what runs
                self.stop.set()
                for fut in futures:
                    fut.cancel()
                self.kill_all()
                raise
            finally:
                bar.close()

    def execute(self, point: Point, slot: int) -> dict:
        """Run one point in a papermill subprocess; write its ``point.json`` (atomically) whatever happens."""
        d = self.root / point.id
        d.mkdir(parents=True, exist_ok=True)
        lock = PointLock(d)
        if not lock.acquire():  # another driver runs this point
            with self.lock:
                self.locked.append(point.id)
            return {"point_id": point.id, "status": "locked"}
        try:
            return self._execute(point, slot, d, lock)
        finally:
            lock.close()

    def _execute(self, point: Point, slot: int, d: Path, lock: PointLock) -> dict:
        (d / "point.json").unlink(missing_ok=True)
        clear_run(d)  # the point runs from scratch: no files of an earlier attempt may mix in
        executed = d / self.notebook.name
        env = self.env(slot)
        params = {**point.params, "out_dir": str(d)}
        if "torch_threads" in self.defaults and "torch_threads" not in params:
            params["torch_threads"] = self.threads
        record = {
            "point_id": point.id,
            "status": "running",
            "params": point.params,
            "error": None,
            "notebook": str(executed),
            "wall_seconds": None,
            "started": time.time(),
            "threads": self.threads,
            "cuda_visible_devices": env.get("CUDA_VISIBLE_DEVICES"),
        }
        atomic_write_json(d / "params.json", point.params)
        atomic_write_json(d / "point.json", record)
        t0 = time.perf_counter()
        try:
            rc, error = self.papermill(point.id, executed, params, env, d / "papermill.log", lock.fd)
        except Exception as err:  # noqa: BLE001 — an unexpected error fails this point, not the sweep
            rc, error = -1, f"{type(err).__name__}: {err}"
        if rc != 0 and self.stop.is_set():
            error = "interrupted: the sweep was stopped while this point ran (rerun the sweep to run it)"
        killed = killed_reason(error) if rc != 0 and not self.stop.is_set() else None
        if killed:
            error = killed
        record.update(
            status="ok" if rc == 0 else "failed",
            error=None if rc == 0 else error,
            killed=bool(killed),
            returncode=rc,
            wall_seconds=time.perf_counter() - t0,
            finished=time.time(),
        )
        atomic_write_json(d / "point.json", record)
        with self.lock:
            append_jsonl(
                self.root / "executions.jsonl",
                [{k: record[k] for k in ("point_id", "status", "wall_seconds", "finished")}],
            )
        return record

    def env(self, slot: int) -> dict[str, str]:
        env = dict(os.environ)
        n = str(self.threads)
        env.update(
            OMP_NUM_THREADS=n,
            MKL_NUM_THREADS=n,
            OPENBLAS_NUM_THREADS=n,
            GOPD_TORCH_THREADS=n,
            TOKENIZERS_PARALLELISM="false",
            PYTHONUNBUFFERED="1",
        )
        if self.gpus:
            env["CUDA_VISIBLE_DEVICES"] = self.gpus[slot % len(self.gpus)]
        if self.kernel_dir:
            env["JUPYTER_PATH"] = os.pathsep.join(filter(None, [self.kernel_dir, env.get("JUPYTER_PATH")]))
        return env

    def papermill(
        self, pid: str, executed: Path, params: dict, env: dict, log: Path, lock_fd: int | None = None
    ) -> tuple[int, str | None]:
        encoded = base64.b64encode(yaml.safe_dump(params).encode()).decode()
        cmd = [
            sys.executable,
            "-m",
            "papermill",
            str(self.notebook),
            str(executed),
            "-b",
            encoded,
            "-k",
            self.kernel_name or KERNEL_NAME,
            "--no-progress-bar",
        ]
        posix = os.name == "posix"
        with open(log, "w") as out:
            proc = subprocess.Popen(
                cmd,
                env=env,
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=posix,
                pass_fds=() if lock_fd is None else (lock_fd,),  # papermill holds the point's lock while it runs
            )
            with self.lock:
                self.procs[pid] = proc
            try:
                rc = proc.wait(timeout=self.timeout)
                timed_out = False
            except subprocess.TimeoutExpired:
                _kill(proc)
                rc, timed_out = proc.wait(), True
            finally:
                with self.lock:
                    self.procs.pop(pid, None)
        if timed_out:
            return -1, f"timed out after {self.timeout:g} s"
        if rc == 0:
            return 0, None
        if rc < 0:  # ended by a signal that was not the timeout's
            return rc, killed_by_signal(-rc)
        return rc, _notebook_error(executed) or _log_tail(log) or f"papermill exited with {rc}"

    def kill_all(self) -> None:
        with self.lock:
            procs = list(self.procs.values())
        for proc in procs:
            _kill(proc)

    def close(self) -> None:
        if self.kernel_dir:
            shutil.rmtree(self.kernel_dir, ignore_errors=True)


def killed_by_signal(signum: int) -> str:
    """The error of a point whose papermill process was ended by a signal (not the sweep's timeout or stop)."""
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    return (
        f"killed: the point's papermill process was ended by {name} (kill, the out-of-memory killer, a scheduler); "
        "rerun the sweep to run it again"
    )


def killed_reason(error: str | None) -> str | None:
    """The error of a point that was killed, saying so (None when it was not): its papermill process got a signal
    (:func:`killed_by_signal`), or its kernel died under it (papermill's ``DeadKernelError``)."""
    if not error:
        return None
    if error.startswith("killed:"):
        return error
    if "DeadKernelError" in error or "kernel died" in error.lower():
        return (
            f"killed: the point's kernel died while it ran (kill, the out-of-memory killer) ({error[:200]}); "
            "rerun the sweep to run it again, with fewer workers if memory ran out"
        )
    return None


def _kill(proc: subprocess.Popen) -> None:
    """Stop papermill (its process group) and its kernel (which leads a session of its own)."""
    if os.name == "posix":
        kill_tree(proc.pid, signal.SIGTERM)
    else:
        proc.terminate()


def _private_kernel() -> str:
    """A kernelspec dir (for ``JUPYTER_PATH``) whose kernel is this interpreter, so that a sweep started from
    any venv or notebook runs its points with the same Python and packages, registered or not."""
    root = tempfile.mkdtemp(prefix="gopd-sweep-kernel-")
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"gopd-lab sweep ({sys.executable})",
        "language": "python",
        "metadata": {"debugger": False},
    }
    atomic_write_json(Path(root) / "kernels" / KERNEL_NAME / "kernel.json", spec)
    return root


def _notebook_error(path: Path) -> str | None:
    """``ExceptionName: message`` of the first error output in an executed notebook."""
    try:
        nb = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    for cell in nb.get("cells", []):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return f"{out.get('ename')}: {out.get('evalue')}"
    return None


def _log_tail(path: Path) -> str | None:
    """The last line of papermill's log that names an error (else its last line)."""
    lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()] if path.exists() else []
    errors = [ln for ln in lines if re.search(r"\w(Error|Exception)\b", ln)]
    return (errors or lines or [None])[-1][-500:] if lines else None


def summarise(results: pd.DataFrame, by: list[str], metrics: list[str] | None = None) -> pd.DataFrame:
    """Mean ± std over the points that share ``by`` (e.g. over seeds): one row per group, with
    ``<metric>_mean``, ``<metric>_std`` and the number of ``points`` that finished."""
    ok = results[results.status == "ok"]
    metrics = metrics or [c for c in results.columns if c.startswith("eval_") and c.endswith("_acc")]
    agg = ok.groupby(by, dropna=False)[metrics].agg(["mean", "std"])
    agg.columns = [f"{m}_{stat}" for m, stat in agg.columns]
    agg["points"] = ok.groupby(by, dropna=False).size()
    return agg.reset_index()
