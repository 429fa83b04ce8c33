"""Errors a user can cause and fix. Each message names the cause, the file (and line) and what to do.

``gopd-lab`` prints a :class:`UserError` as one line (no traceback) and exits with status 2; anything else is
a bug in gopd_lab and keeps its traceback. Each class also derives from the builtin error it replaces
(``ValueError``, ``RuntimeError``, ``OSError``), so code that caught those still catches them.

- :class:`ConfigError`: a run configuration that cannot work (the field is named).
- :class:`DataError`: an input file that cannot be read as asked (the file and line are named).
- :class:`ModelLoadError`: a model, tokenizer or checkpoint that cannot be loaded (the path is named).
- :class:`RunDirError`: a run directory that holds another run, or a resume whose config differs.
- :class:`NonFiniteError`: a non-finite loss or gradient stopped training; no non-finite weights were saved.
- :class:`DiskFullError`: no space left while writing a file (the file is named).
"""

from __future__ import annotations

import errno
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """An error the user caused; the message says which input and how to fix it."""

    label = "error"
    """How ``gopd-lab`` names the kind of error in its one line."""


class ConfigError(UserError, ValueError):
    """A run configuration that cannot work; the message says which field and what to do."""

    label = "configuration error"


class DataError(ConfigError):
    """An input file (prompts, tasks, expert data) that cannot be read; the message names the file and line."""

    label = "data error"


class ModelLoadError(UserError, RuntimeError):
    """A model, tokenizer or checkpoint that cannot be loaded; the message names the path."""


class RunDirError(UserError, RuntimeError):
    """The run directory holds another run (``overwrite=True`` replaces it) or a resumed run's config differs."""


class NonFiniteError(UserError, FloatingPointError):
    """A non-finite loss or gradient; the run stopped before the optimizer step that would have used it (with
    ``epochs_per_batch > 1`` the message names the epoch), the last checkpoint is kept."""


class DiskFullError(UserError, OSError):
    """No space left on the device while writing a file."""


_FULL_HINTS = ("no space left", "os error 28", "storagefull", "disk quota exceeded")


def _disk_full(err: BaseException, path: Path) -> bool:
    """``ENOSPC``/``EDQUOT``, or a library's wrapped write error (torch's stream writer, safetensors) on a
    filesystem with (almost) no space left."""
    if isinstance(err, OSError) and err.errno is not None:
        return err.errno in (errno.ENOSPC, errno.EDQUOT)
    if any(hint in str(err).lower() for hint in _FULL_HINTS):
        return True
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    try:
        return existing is not None and shutil.disk_usage(existing).free < (1 << 20)
    except OSError:
        return False


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn a full disk while writing ``path`` into a :class:`DiskFullError` naming it."""
    try:
        yield
    except DiskFullError:
        raise
    except Exception as err:
        if not isinstance(err, (OSError, RuntimeError)) and type(err).__name__ != "SafetensorError":
            raise
        if not _disk_full(err, Path(path)):
            raise
        raise DiskFullError(
            errno.ENOSPC, f"no space left on the device while writing {path}; free some space and resume the run"
        ) from err
