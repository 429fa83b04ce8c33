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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class UserError(Exception):
    """An error the user caused; the message says which input and how to fix it."""


class ConfigError(UserError, ValueError):
    """A run configuration that cannot work; the message says which field and what to do."""


class DataError(ConfigError):
    """An input file (prompts, tasks, expert data) that cannot be read; the message names the file and line."""


class ModelLoadError(UserError, RuntimeError):
    """A model, tokenizer or checkpoint that cannot be loaded; the message names the path."""


class RunDirError(UserError, RuntimeError):
    """The run directory holds another run (``overwrite=True`` replaces it) or a resumed run's config differs."""


class NonFiniteError(UserError, FloatingPointError):
    """A non-finite loss or gradient; the run stopped before the optimizer step, the last checkpoint is kept."""


class DiskFullError(UserError, OSError):
    """No space left on the device while writing a file."""


@contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn a full disk (``ENOSPC``/``EDQUOT``) while writing ``path`` into a :class:`DiskFullError` naming it."""
    try:
        yield
    except OSError as err:
        if isinstance(err, DiskFullError) or err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise DiskFullError(
            err.errno, f"no space left on the device while writing {path}; free some space and resume the run"
        ) from err
