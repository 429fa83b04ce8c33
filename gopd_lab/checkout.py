"""Where the repository checkout is, for code that reads its files (``sweeps/``, ``results/``, ``notebooks/``):
``$GOPD_LAB_REPO``, the checkout this package was installed from, or the one the working directory is in. An
installed wheel carries the package and ``data/`` only; reading another repository folder there is one clear
error (:class:`NeedsCheckoutError`). The course (:mod:`gopd_lab.viz.course`) and the experiments' readers of
committed results both use it.
"""

from __future__ import annotations

import os
from pathlib import Path

from gopd_lab.errors import ConfigError

CHECKOUT_ONLY = ("sweeps", "results", "configs", "notebooks", "bench", "docs")
"""Top folders of the repository that an installed wheel does not carry (it has the package and ``data/``)."""


def _is_checkout(path: Path) -> bool:
    return (path / "pyproject.toml").is_file() and (path / "gopd_lab").is_dir() and (path / "sweeps").is_dir()


def find_repo() -> Path | None:
    """The gopd_lab checkout the course reads ``sweeps/`` and ``results/`` from: ``$GOPD_LAB_REPO``, else the
    repository this package was installed from (``pip install -e .``), else the working directory or a folder
    above it when it is a checkout (a wheel installed, Jupyter started inside a clone); ``None`` when there is none.
    """
    override = os.environ.get("GOPD_LAB_REPO")
    if override:
        return Path(override).expanduser().resolve()
    here = Path.cwd().resolve()
    for candidate in (Path(__file__).resolve().parents[1], here, *here.parents):
        if _is_checkout(candidate):
            return candidate
    return None


class NeedsCheckoutError(ConfigError, FileNotFoundError):
    """A course cell read a repository file (``sweeps/``, ``results/``, ...) that an installed wheel lacks."""


_FOUND = find_repo()
REPO = _FOUND or Path.cwd().resolve()
"""The checkout (:func:`find_repo`); without one, the working directory (runs go there; reading a checkout file
raises :class:`NeedsCheckoutError`)."""
SWEEP_RESULTS = REPO / "results"
"""Committed results of the paper's sweeps: ``results/<world>/<name>`` for the spec ``sweeps/<world>/<name>.yaml``."""


def repo_path(path: str | Path) -> Path:
    """``path`` made absolute: an absolute path as it is, a relative one read against the repository root.

    Use it for every repository file a notebook names (``sweeps/…``, ``data/…``, ``notebooks/…``) and for
    outputs that should land in the repository's ``runs/`` whichever folder the kernel started in.
    """
    path = Path(path).expanduser()
    if path.is_absolute():
        return path
    if _FOUND is None and path.parts[:1] and path.parts[0] in CHECKOUT_ONLY and not (REPO / path).exists():
        raise NeedsCheckoutError(
            f"{path} is a file of the gopd_lab repository, which an installed wheel does not carry (it has the "
            "package and data/ only): clone the repository and start Jupyter inside it, or set "
            "GOPD_LAB_REPO=<the checkout>"
        )
    return REPO / path


def display_path(path: str | Path) -> str:
    """``path`` as a notebook shows it: relative to the repository when inside it, so that an executed notebook
    names no folder of the machine that ran it."""
    path = repo_path(path)
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def committed_sweep(name: str) -> Path:
    """The committed results of the sweep ``sweeps/<name>.yaml`` (``results/<name>``; ``name`` is e.g. ``"v2/lam"``)."""
    root = repo_path("results") / name
    if not (root / "sweep.json").is_file():
        have = sorted(str(p.parent.relative_to(SWEEP_RESULTS)) for p in SWEEP_RESULTS.glob("*/*/sweep.json"))
        raise FileNotFoundError(
            f"no committed results for sweep {name!r} in {SWEEP_RESULTS} (committed: {have}); run it with "
            f"`gopd-lab sweep --spec sweeps/{name}.yaml` and view its sweep dir, e.g. runs/sweeps/{name}"
        )
    return root
