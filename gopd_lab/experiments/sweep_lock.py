"""One driver per sweep point, and no orphaned kernels.

- :class:`PointLock`: an exclusive ``flock`` on ``<point>/.lock``, taken before a point runs. Its papermill
  process inherits the lock, so the point stays locked for as long as anything runs it, even when the driver
  was killed with ``kill -9``; the kernel releases nothing because it never holds it. A second driver finds the
  lock held and skips the point.
- :func:`is_stale`: ``point.json`` says ``running`` but no process holds the lock: the driver died; the point
  is run again on the next sweep and reported as ``interrupted`` until then.
- :func:`terminate_as_interrupt`: SIGTERM / SIGHUP to the driver act as Ctrl-C, so that its handler stops
  every running point (papermill's process group and its kernel's session) before the driver exits.
- :func:`kill_tree`: stop papermill's process group and the sessions of the kernels it started.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locking
    fcntl = None

LOCK_NAME = ".lock"


class PointLock:
    """``acquire()`` → True when this driver now runs the point; ``fd`` is passed to the papermill process."""

    def __init__(self, point_dir: Path):
        self.path = Path(point_dir) / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> bool:
        if fcntl is None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return True

    def close(self) -> None:
        """Drop this process's hold (a papermill process that inherited the lock keeps it until it exits)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def is_locked(point_dir: Path) -> bool:
    """Whether some process (this one included) holds the point's lock."""
    path = Path(point_dir) / LOCK_NAME
    if fcntl is None or not path.exists():
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # closing drops a lock taken here
    return False


def is_stale(point_dir: Path, status: str | None) -> bool:
    """A point marked ``running`` that nothing runs (its driver died)."""
    return status == "running" and fcntl is not None and not is_locked(point_dir)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """In the main thread: SIGTERM and SIGHUP raise ``KeyboardInterrupt`` (the driver's cleanup path)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"stopped by signal {signal.Signals(signum).name}")

    names = [s for s in ("SIGTERM", "SIGHUP") if hasattr(signal, s)]
    old = {name: signal.signal(getattr(signal, name), interrupt) for name in names}
    try:
        yield
    finally:
        for name, handler in old.items():
            signal.signal(getattr(signal, name), handler)


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (Linux ``/proc``; empty elsewhere)."""
    kids = []
    for entry in Path("/proc").glob("[0-9]*/stat") if Path("/proc").is_dir() else []:
        try:
            fields = entry.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(entry.parent.name))
    return kids


def kill_tree(pid: int, sig: int = signal.SIGTERM) -> None:
    """Signal the kernels ``pid`` started (each leads its own session) and then ``pid``'s process group."""
    if os.name != "posix":
        return
    for child in _children(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(child) == child:  # a session/group leader of its own: a kernel
                os.killpg(child, sig)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
