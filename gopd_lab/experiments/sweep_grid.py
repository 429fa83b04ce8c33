"""What a sweep is, before anything runs: the notebook's parameters, the grid and fixed values, point ids,
YAML sweep specs and the command line's ``name=value`` syntax. :mod:`gopd_lab.experiments.sweep` runs the points."""

from __future__ import annotations

import ast
import hashlib
import itertools
import json
import re
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from gopd_lab.config import ConfigError, RunConfig, load_yaml, parse_value

INJECTED = ("out_dir", "torch_threads")
"""Parameters the sweep sets itself: ``out_dir`` (required: the point's run dir) and ``torch_threads``
(set only when the notebook declares it: the worker's share of CPU threads)."""

_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")


class SweepError(ConfigError):
    """A sweep that cannot run as asked; the message names the fix. Raised before any point runs."""


@dataclass(frozen=True)
class Point:
    """One grid point: ``id`` names its run dir, ``params`` are every parameter it sets (grid + fixed)."""

    id: str
    params: dict[str, Any]


# ----------------------------------------------------------------------------- values and ids
def parse_assignment(text: str, *, default: Any = None, split: bool = False) -> tuple[str, Any]:
    """``name=value`` → ``(name, value)``; with ``split`` the value is a comma-separated list (or a YAML flow
    list ``[...]``). A parameter whose notebook default is a string keeps its text (``student=007``)."""
    name, sep, raw = text.partition("=")
    name = name.strip()
    if not sep or not name.isidentifier():
        raise SweepError(f"expected NAME=VALUE, got {text!r}")

    def one(item: str) -> Any:
        value = parse_value(item)
        return item if isinstance(default, str) and not isinstance(value, (list, dict)) else value

    if not split:
        return name, one(raw)
    if raw.strip().startswith("["):
        values = parse_value(raw)
        if not isinstance(values, list):
            raise SweepError(f"--grid {name}: could not read {raw!r} as a list")
        return name, values
    return name, [one(item.strip()) for item in raw.split(",")]


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float, str)):
        return str(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def point_id(values: dict[str, Any]) -> str:
    """A stable, readable dir name for the grid values of a point: ``lam=1.25,seed=0``. Characters outside
    ``[A-Za-z0-9._=,+-]`` become ``_``; when that loses information or the name is long, a short hash of the
    values is appended (``student=zoo_student-base__3fa2b1c9``) so that distinct points never share a dir."""
    if not values:
        return "default"
    readable = ",".join(f"{k}={_fmt(v)}" for k, v in values.items())
    safe = _UNSAFE.sub("_", readable)
    if safe == readable and len(safe) <= 80:
        return safe
    digest = hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{safe[:60]}__{digest}"


def same_params(a: dict, b: dict) -> bool:
    def canon(d):
        return json.dumps(d, sort_keys=True, default=str)

    return canon(a) == canon(b)


# ----------------------------------------------------------------------------- the notebook
def notebook_parameters(notebook: str | Path) -> dict[str, Any]:
    """``{name: default}`` of the notebook's ``parameters`` cell. Names come from papermill's
    ``inspect_notebook`` and from Python's parser (papermill skips lines with two ``=``, e.g. in a
    comment); defaults are Python literals, or the source text when not a literal."""
    import nbformat
    from papermill import inspect_notebook

    path = Path(notebook)
    if not path.is_file():
        raise SweepError(f"notebook {path} does not exist")
    try:
        nb = nbformat.read(path, as_version=4)
    except (nbformat.reader.NotJSONError, ValueError, UnicodeDecodeError, KeyError, AttributeError) as err:
        hint = "; a sweep spec (YAML) goes with --spec" if path.suffix in (".yaml", ".yml") else ""
        raise SweepError(
            f"{path} is not a readable notebook ({type(err).__name__}: {str(err)[:100]}){hint}; give a .ipynb file"
        ) from None
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not cells:
        raise SweepError(
            f"{path} has no cell tagged 'parameters' (papermill convention): tag the cell that "
            "assigns the defaults, including out_dir"
        )
    params: dict[str, Any] = {}
    try:
        inspected = inspect_notebook(str(path))
    except ValueError as err:  # e.g. no kernelspec in the notebook's metadata
        raise SweepError(f"papermill cannot read the parameters of {path}: {err}") from None
    for name, info in inspected.items():
        params[name] = _literal(info.get("default"))
    try:
        tree = ast.parse(cells[0].source)
    except SyntaxError:
        return params
    for node in tree.body:
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        for target in targets:
            if isinstance(target, ast.Name) and target.id not in params:
                value = getattr(node, "value", None)
                params[target.id] = _literal(ast.get_source_segment(cells[0].source, value)) if value else None
    if any(c.cell_type == "code" and "point_config(" in c.source for c in nb.cells):
        params = {**config_defaults(), **params}  # it reads every RunConfig field: each one is a parameter
    return params


def config_defaults() -> dict[str, Any]:
    """``{field: default}`` of :class:`RunConfig` (the parameters a :func:`point_config` notebook also takes)."""
    out = {}
    for f in fields(RunConfig):
        out[f.name] = f.default_factory() if f.default_factory is not MISSING else f.default
    return out


def _literal(source: str | None) -> Any:
    try:
        return ast.literal_eval(source) if source is not None else None
    except (ValueError, SyntaxError):
        return source


# ----------------------------------------------------------------------------- a point's config
_KERNEL_NAMES = frozenset({"In", "Out", "exit", "quit", "get_ipython", "open"})
"""Names IPython puts in a notebook's namespace (not parameters)."""


def point_config(namespace: dict[str, Any], *, knobs: tuple[str, ...] = (), **fixed: Any) -> RunConfig:
    """A point notebook's :class:`RunConfig` from its parameters: every public plain value of ``namespace``
    (the notebook's ``globals()`` right after its parameters cell and papermill's injected one) except the
    notebook's own ``knobs`` (``torch_threads``, an arm's name), plus ``fixed``, through
    :meth:`RunConfig.from_dict`. A parameter that is no config field is one :class:`ConfigError` naming it, so a
    new field, a plugin's method or task can be swept without editing the notebook."""
    plain = (str, int, float, bool, list, dict, type(None))
    params = {
        k: v
        for k, v in namespace.items()
        if not k.startswith("_") and k not in _KERNEL_NAMES and k not in knobs and isinstance(v, plain)
    }
    try:
        return RunConfig.from_dict({**params, **fixed})
    except ConfigError as err:
        if str(err).startswith("unknown config field"):
            raise ConfigError(f"{err} (a knob of the notebook itself? pass it in knobs=...)") from None
        raise


# ----------------------------------------------------------------------------- grid → points
def plan_points(grid: dict[str, Any], fixed: dict[str, Any], defaults: dict[str, Any]) -> list[Point]:
    """Validate the grid and fixed values against the notebook's parameters and expand the grid (the first
    name varies slowest). Every mistake raises :class:`SweepError` here, before anything runs."""
    grid = {k: (list(v) if isinstance(v, (list, tuple)) else [v]) for k, v in (grid or {}).items()}
    fixed = dict(fixed or {})
    if "out_dir" not in defaults:
        raise SweepError(
            'the notebook\'s parameters cell has no out_dir: add out_dir = "runs/..." and pass it to '
            "RunConfig(out_dir=out_dir) (the sweep sets it to each point's run dir)"
        )
    valid = sorted(set(defaults) - {"out_dir"})
    unknown = [n for n in [*grid, *fixed] if n not in defaults or n == "out_dir"]
    if unknown:
        raise SweepError(
            f"unknown parameter(s) {unknown}: the notebook's parameters cell defines {valid} "
            "(out_dir is set by the sweep)"
        )
    both = sorted(set(grid) & set(fixed))
    if both:
        raise SweepError(f"{both} given both as grid and fixed values; keep one")
    for name, values in grid.items():
        if not values:
            raise SweepError(f"grid {name!r} has no values")
    points, seen = [], {}
    for combo in itertools.product(*grid.values()):
        values = dict(zip(grid, combo))
        pid = point_id(values)
        if pid in seen:
            raise SweepError(f"the grid gives point {pid} twice; remove the repeated value")
        seen[pid] = True
        points.append(Point(pid, {**values, **fixed}))
    return points


# ----------------------------------------------------------------------------- YAML specs
@dataclass
class SweepSpec:
    """A sweep as a YAML file (``gopd-lab sweep --spec sweeps/lam.yaml``)::

    notebook: notebooks/experiments/lam.ipynb   # relative to the working dir, else to this file
    sweep_dir: runs/sweeps/lam                  # default: runs/sweeps/<spec file name>
    workers: 2
    grid: {lam: [0.5, 1, 1.25, 1.5, 2], seed: [0, 1, 2]}
    fixed: {steps: 20, student: "zoo:student-base"}
    """

    notebook: str
    """The parameterised notebook."""
    grid: dict[str, list] = field(default_factory=dict)
    """``{parameter: [values]}``; every combination is one point."""
    fixed: dict[str, Any] = field(default_factory=dict)
    """Parameters set to the same value at every point."""
    sweep_dir: str | None = None
    """Where the point dirs and results go."""
    workers: int = 1
    """Points run at once."""
    kernel_name: str | None = None
    """Jupyter kernel; default: the running interpreter."""
    timeout: float | None = None
    """Seconds a point may run before it is stopped and recorded as failed."""
    gpus: list | None = None
    """CUDA devices handed out to workers round-robin; default: every visible device."""

    @classmethod
    def load(cls, path: str | Path) -> SweepSpec:
        path = Path(path)
        if not path.is_file():
            raise SweepError(f"sweep spec {path} does not exist")
        data = load_yaml(path.read_text())
        names = [f.name for f in fields(cls)]
        if not isinstance(data, dict) or "notebook" not in data:
            raise SweepError(f"sweep spec {path} must be a mapping with at least 'notebook' (keys: {names})")
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise SweepError(f"unknown key(s) {unknown} in sweep spec {path}; valid keys: {names}")
        for key in ("grid", "fixed"):
            if not isinstance(data.get(key) or {}, dict):
                raise SweepError(f"{key} in sweep spec {path} must be a mapping of parameter: value(s)")
            data[key] = data.get(key) or {}
        notebook = Path(data["notebook"])
        if not notebook.is_absolute() and not notebook.exists():
            # relative to the spec's folder, or to the repository the spec lives in (specs sit in sweeps/)
            for base in (path.parent, path.resolve().parent.parent):
                if (base / notebook).exists():
                    data["notebook"] = str(base / notebook)
                    break
        data.setdefault("sweep_dir", None)
        data["sweep_dir"] = data["sweep_dir"] or str(Path("runs/sweeps") / path.stem)
        return cls(**data)


def spec_from_cli(notebook: str | None, spec: str | None, grid_args: list[str], set_args: list[str]) -> SweepSpec:
    """``gopd-lab sweep``'s sweep: a spec file and/or a notebook, plus ``--grid name=v1,v2`` and ``--set name=v``
    (values read as YAML scalars, see :func:`parse_assignment`), which add to or replace the spec's."""
    base = SweepSpec.load(spec) if spec else SweepSpec(notebook="")
    base.notebook = notebook or base.notebook
    if not base.notebook:
        raise SweepError("give a notebook (gopd-lab sweep NOTEBOOK ...) or a spec (--spec sweeps/x.yaml)")
    defaults = notebook_parameters(base.notebook)
    for text, is_grid in [(t, True) for t in grid_args] + [(t, False) for t in set_args]:
        name, value = parse_assignment(text, default=defaults.get(text.partition("=")[0].strip()), split=is_grid)
        (base.fixed if is_grid else base.grid).pop(name, None)
        (base.grid if is_grid else base.fixed)[name] = value
    return base
