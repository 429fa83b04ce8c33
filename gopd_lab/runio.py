"""Run-directory files: atomic writes (temp file + rename) and JSON-lines logs read back by pandas."""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gopd_lab.errors import DataError, writing


def _clean(value: Any) -> Any:
    """JSON-safe values: NaN/inf become None, tensors and numpy scalars become python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


_UMASK: int | None = None


def _umask() -> int:
    """The process umask, read once: reading it means setting it, which would race with other threads."""
    global _UMASK
    if _UMASK is None:
        _UMASK = os.umask(0o022)
        os.umask(_UMASK)
    return _UMASK


def public_mode(fd: int) -> None:
    """Give a ``mkstemp`` file (mode 0600) the mode an ordinary ``open`` would: 0666 less the umask."""
    os.fchmod(fd, 0o666 & ~_umask())


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file in the same directory and an atomic rename; a full disk
    raises :class:`~gopd_lab.errors.DiskFullError` naming ``path``."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            public_mode(fd)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def atomic_write_json(path: str | Path, data: Any, *, strict: bool = False) -> None:
    """``strict``: refuse NaN/inf (``ValueError``) instead of writing them as null (configs: null means "off")."""
    text = json.dumps(data, indent=2, allow_nan=False) if strict else json.dumps(_clean(data), indent=2)
    atomic_write_text(path, text + "\n")


def append_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    """Append rows as JSON lines (one line is written whole by one ``write`` call)."""
    text = "".join(json.dumps(_clean(r)) + "\n" for r in rows)
    if text:
        with writing(path), open(path, "a", encoding="utf-8") as f:
            f.write(text)


MAX_LINE_BYTES = 1 << 20
"""Longest row of an input file (1 MiB): a 1 MB prompt took 15 s and 0.7 GB to tokenize on a shared CPU, and
tokenizing grows faster than its length; no model here has a context that long."""


def read_jsonl(path: str | Path, *, strict: bool = False, numbered: bool = False) -> list:
    """Rows of a JSON-lines file, the one reader of the package; blank lines are skipped.

    Run files (``metrics.jsonl``, ``eval.jsonl``, ``samples.jsonl``, sweep indexes; ``strict=False``): a missing
    file has no rows and a line that does not parse (a torn last line from a crash mid-write) is skipped.
    Input files (task and prompt JSONL; ``strict=True``): :class:`~gopd_lab.errors.DataError` naming the file and
    line for an unreadable file, a line that is not UTF-8, not JSON or not a JSON object, and for a file without
    any row. ``numbered``: ``(line_number, row)`` pairs (1-based), for messages that name the line.
    """
    rows = _strict_rows(path) if strict else _run_file_rows(path)
    return rows if numbered else [row for _, row in rows]


def _run_file_rows(path: str | Path) -> list[tuple[int, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line_number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            rows.append((line_number, json.loads(line)))
        except json.JSONDecodeError:
            continue
    return rows


def _strict_rows(path: str | Path) -> list[tuple[int, dict]]:
    rows = []
    try:
        with open(path, "rb") as f:
            raw_lines = f.read().splitlines()
    except OSError as error:
        raise DataError(f"cannot read {path}: {error.strerror or error}") from None
    for line_number, raw in enumerate(raw_lines, start=1):
        if len(raw) > MAX_LINE_BYTES:
            raise DataError(
                f"{path}, line {line_number}: {len(raw):,} bytes in one row; rows of at most {MAX_LINE_BYTES:,} bytes "
                "are read (longer text is beyond every model's context here, and tokenizing it takes minutes and "
                "gigabytes); shorten or drop that row"
            )
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise DataError(
                f"{path}, line {line_number}: not UTF-8 text (byte {raw[error.start]:#04x} at column "
                f"{error.start + 1}); save the file as UTF-8"
            ) from None
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}, line {line_number}: not valid JSON ({error})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}, line {line_number}: expected a JSON object, got {type(row).__name__}")
        rows.append((line_number, row))
    if not rows:
        raise DataError(f"{path} holds no rows: a task file needs one JSON object per line")
    return rows


def keep_steps_upto(path: str | Path, step: int) -> None:
    """Drop rows whose ``step`` is beyond ``step`` (used when resuming from a checkpoint)."""
    path = Path(path)
    if path.exists():
        rows = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
