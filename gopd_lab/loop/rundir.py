"""What a run directory may hold before a run starts, so that two runs never mix.

- A fresh run (``resume=False``) into a directory that holds a run is refused unless ``overwrite=True``, which
  deletes that run's files (and only those: other files in the directory are kept).
- ``resume=True`` continues only the run whose ``config.json`` matches: a field that changes the trajectory
  (method, models, λ, learning rate, seed, batch, ...) must be equal; :data:`MAY_DIFFER` (logging and evaluation
  cadence, trackers, the device) may change, and the length of the run where no schedule depends on it.
- A final save cut short (``model.tmp/`` without ``model/``) is finished by resume from the last checkpoint.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from gopd_lab.errors import RunDirError

RUN_FILES = (
    "config.json",
    "metrics.jsonl",
    "eval.jsonl",
    "samples.jsonl",
    "summary.json",
    "teacher_samples.jsonl",
)
RUN_DIRS = ("checkpoints", "model", "model.tmp", "model.old", "tensorboard", "wandb")
"""``model.old/``: the previous final model while a new one replaces it; ``tensorboard/`` and ``wandb/``: the
trackers of ``report_to`` (an old run's event files would otherwise mix with the new run's)."""

MAY_DIFFER = frozenset(
    {
        "steps",
        "save_every",
        "log_samples_every",
        "log_samples",
        "eval_every",
        "eval_k",
        "eval_limit",
        "resume",
        "overwrite",
        "extra",
        "out_dir",
        "device",
        "score_chunk_tokens",
        "trust_remote_code",
        "report_to",
    }
)
"""Fields a resumed run may change: they do not change the weights a step computes. ``steps`` may change
(to extend a run) only when no schedule depends on it: see :func:`schedule_uses_steps`."""

LINEAGE_KNOBS = {
    "reopd": ("reopd_tau", "reopd_gamma_max", "reopd_target", "reopd_ema"),
    "agopd": ("agopd_rho", "agopd_lam_max"),
    "entropy": ("entropy_threshold",),
}
"""The lineage knobs each ``lam_mode`` reads; under another mode they have no effect, so they may differ."""


def schedule_uses_steps(cfg: dict) -> bool:
    """Whether the learning-rate or μ schedule depends on ``steps``: a ``linear``/``cosine`` learning rate decays
    to 0 at the last step, the ``warmup_cosine`` μ reaches its valley there (``gopd_lab.loop.schedules``)."""
    return cfg.get("lr_schedule", "constant") != "constant" or (
        cfg.get("mu", 0.0) > 0 and cfg.get("mu_schedule", "constant") != "constant"
    )


def holds_run(out: Path) -> list[str]:
    """The run files and directories present in ``out``."""
    return [name for name in RUN_FILES + RUN_DIRS if (out / name).exists()]


def clear_run(out: Path) -> None:
    """Delete a run's files from ``out`` (files it does not know are kept)."""
    for name in RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for name in RUN_DIRS:
        shutil.rmtree(out / name, ignore_errors=True)


def _normal(value):
    return json.loads(json.dumps(value))


def _names(value) -> list[str]:
    """``"add,mul"`` and ``["add", "mul"]`` alike (``tasks``)."""
    items = value.split(",") if isinstance(value, str) else list(value or [])
    return [str(x).strip() for x in items if str(x).strip()]


def _comparable(name: str, value):
    if name == "tasks":
        return _names(value)
    return _normal(value)


def config_differences(saved: dict, current: dict) -> list[str]:
    """Fields outside :data:`MAY_DIFFER` whose values differ (a field absent from ``saved`` counts at its
    current value only if it is at the default: fields added later do not block resuming old runs)."""
    from gopd_lab.config import RunConfig

    defaults = RunConfig.__dataclass_fields__
    mode = current.get("lam_mode", "fixed")
    idle = {k for m, knobs in LINEAGE_KNOBS.items() if m != mode for k in knobs}  # no effect under this lam_mode
    changed = []
    for name, value in current.items():
        if name in MAY_DIFFER or name in idle:
            continue
        if name in saved:
            old = saved[name]
        elif name == "world":  # a run from before the field: its world was the environment's, not recorded
            continue
        elif name in defaults:
            f = defaults[name]
            old = f.default_factory() if callable(f.default_factory) else f.default
        else:
            continue
        if _comparable(name, old) != _comparable(name, value):
            changed.append(name)
    if "steps" in saved and saved["steps"] != current.get("steps") and schedule_uses_steps(current):
        changed.append("steps")  # the schedule's shape depends on the run's length
    return changed


def prepare_run_dir(cfg, *, clear: bool) -> None:
    """Refuse a run that would mix with the run already in ``cfg.out_dir``; with ``clear`` (the main process of
    a fresh run with ``overwrite=True``) delete the old run's files."""
    out = Path(cfg.out_dir)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"out_dir {out} is a file, not a directory; choose another out_dir")
    present = holds_run(out)
    if cfg.resume:
        if not present:
            return
        config = out / "config.json"
        if not config.is_file():
            raise RunDirError(
                f"resume=True: {out} holds {present} but no config.json, so nothing shows that they belong to this "
                "config; start a new out_dir, or overwrite=True (--overwrite true) to replace them"
            )
        try:
            saved = json.loads(config.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RunDirError(f"resume=True: {config} is not readable JSON ({err})") from None
        changed = config_differences(saved, cfg.to_dict())
        if changed:
            detail = ", ".join(f"{n}: saved {saved.get(n)!r}, now {getattr(cfg, n)!r}" for n in changed)
            raise RunDirError(
                f"resume=True: the run in {out} was made with another config ({detail}); resume with the saved "
                f"values ({config}), or start a new out_dir"
            )
        return
    if present and not getattr(cfg, "overwrite", False):
        raise RunDirError(
            f"{out} already holds a run ({', '.join(present)}); resume=True (--resume true) continues it, "
            "overwrite=True (--overwrite true) replaces it, or choose another out_dir"
        )
    if present and clear:
        clear_run(out)
    if clear:
        check_tracker_dirs(cfg, out)


TRACKER_DIRS = {"tensorboard": "tensorboard", "wandb": "wandb"}
"""The folders of ``out_dir`` the trackers of ``report_to`` write into."""


def check_tracker_dirs(cfg, out: Path) -> None:
    """Each tracker folder of ``report_to`` can be written (a folder that is a file, read-only or on a full disk
    fails in the tracker's writer thread, long after the run started, or not at all): a probe file is created and
    removed; :class:`RunDirError` names the folder and the fix."""
    import tempfile

    for name in cfg.report_targets:
        if name not in TRACKER_DIRS:
            continue
        folder = out / TRACKER_DIRS[name]
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe."):
                pass
        except OSError as err:
            what = "is a file" if folder.exists() and not folder.is_dir() else f"cannot be written ({err.strerror})"
            raise RunDirError(
                f"report_to={name!r} writes into {folder}, which {what}; remove or fix it (chmod u+w {folder}), "
                f"or drop {name} from report_to"
            ) from None


# ---------------------------------------------------------------------------------------------- one run at a time
LOCK_NAME = ".run.lock"
"""The lock file of a running run, ``<out_dir>/.run.lock``: ``pid host started`` of its holder."""


def _host() -> str:
    import socket

    return socket.gethostname()


def _pid_alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _holder(path: Path) -> tuple[int | None, str, str]:
    """``(pid, host, started)`` written in a lock file (``(None, "", "")`` when unreadable)."""
    try:
        pid, host, started = (path.read_text(encoding="utf-8").split() + ["", "", ""])[:3]
        return int(pid), host, started
    except (OSError, ValueError):
        return None, "", ""


def _unusable_out_dir(out: Path, err: OSError) -> RunDirError:
    """The file-system fault behind ``err`` while creating ``out`` or its lock, as a message naming the fix."""
    import errno
    import os

    if out.is_symlink() and not out.exists():
        return RunDirError(
            f"out_dir {out} is a symlink to {os.readlink(out)}, which does not exist; create that directory, "
            "remove the symlink, or choose another out_dir"
        )
    if out.exists() and not out.is_dir():
        return RunDirError(f"out_dir {out} is a file, not a directory; choose another out_dir")
    blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        return RunDirError(f"out_dir {out} cannot be created: {blocker} is a file; choose another out_dir")
    if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        where = out if out.is_dir() else next((p for p in out.parents if p.exists()), out)
        fix = "the file system is read-only" if err.errno == errno.EROFS else f"make it writable (chmod u+w {where})"
        return RunDirError(f"cannot write in {where} ({err.strerror}): {fix}, or choose another out_dir")
    return RunDirError(f"cannot use out_dir {out}: {err.strerror or err}; choose another out_dir")


class RunLock:
    """An exclusive lock on a run directory for the whole run: a second run into it is refused, naming the holder.

    The lock is a ``flock`` on ``<out_dir>/.run.lock`` held by an open file (the file records ``pid host
    started``). The kernel drops a ``flock`` when its process dies, so a lock file left by a killed run is stale by
    construction and the next run takes it over. Where the file system has no ``flock`` (some network mounts),
    the pid in the file decides: a live pid on this host, or any pid on another host, holds the directory; a dead
    pid on this host is a stale lock, taken over.
    ``release()`` (or leaving the ``with`` block) unlinks the file and closes it. Under ``accelerate launch``
    the main process holds it. (``filelock.FileLock`` takes the same ``flock`` but does not record its holder,
    which the refusal names.)
    """

    def __init__(self, out_dir: str | Path):
        self.out = Path(out_dir)
        self.path = self.out / LOCK_NAME
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        import os

        try:
            self.out.mkdir(parents=True, exist_ok=True)
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                if not self._flock(fd):
                    os.close(fd)
                    raise self._held()
                try:  # the file may have been unlinked by its releasing holder between our open and our lock
                    same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    break
                os.close(fd)
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {_host()} {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode())
        except RunDirError:
            raise
        except OSError as err:
            raise _unusable_out_dir(self.out, err) from None
        self.fd = fd

    def _flock(self, fd: int) -> bool:
        """True when this process now holds the lock on ``fd``."""
        import errno

        try:
            import fcntl
        except ImportError:  # pragma: no cover - not POSIX
            return self._pid_lock(fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError as err:
            if err.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                return self._pid_lock(fd)
            raise

    def _pid_lock(self, fd: int) -> bool:
        """No ``flock`` here: the lock file holds a live pid on this host (or one on another host) → held."""
        pid, host, _ = _holder(self.path)
        return pid is None or (host == _host() and not _pid_alive(pid))

    def _held(self) -> RunDirError:
        pid, host, started = _holder(self.path)
        if pid is None:
            return RunDirError(f"{self.out} is in use by another run ({self.path} is locked); wait for it to finish")
        since = f", started {started}" if started else ""
        return RunDirError(
            f"{self.out} is in use by another run: process {pid} on {host}{since} holds {self.path}; wait for it "
            f"to finish, stop it (kill {pid}), or choose another out_dir"
        )

    def release(self) -> None:
        import os

        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)  # while still held: a waiting run then locks a fresh file
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None
