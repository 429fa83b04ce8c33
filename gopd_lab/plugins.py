"""User extensions a run imports before its config is validated (``RunConfig.plugins``): a module name
(``my_lab.methods``, importable from ``sys.path``) or a ``.py`` file. Importing one runs its registrations
(``register_task``, ``register_estimator``, ``register_method``, ``register_teacher_type``), so a config may name
what it adds. ``RunConfig`` imports them first thing in validation, which every way of making a run goes
through: ``gopd-lab train``, ``train()``, each sweep point's notebook and a resumed run's ``config.json``."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

from gopd_lab.errors import ConfigError


def is_file_plugin(name: str) -> bool:
    """A plugin given as a file (``.py``, or a path with a separator), not a module name."""
    return name.endswith(".py") or "/" in name or "\\" in name


def resolve_plugin(name: str) -> str:
    """A file plugin as an absolute path (so a resumed run or a sweep point in another folder finds it);
    a module name unchanged."""
    return str(Path(name).expanduser().resolve()) if is_file_plugin(name) else name


def load_plugins(names: list[str]) -> None:
    """Import each plugin once per process (a second import of the same file or module is a no-op)."""
    for name in names:
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"plugins must be module names or .py paths, got {name!r}")
        if is_file_plugin(name):
            _import_file(Path(name))
        else:
            try:
                importlib.import_module(name)
            except ImportError as err:
                raise ConfigError(
                    f"plugin {name!r} could not be imported ({err}); give a module on sys.path or a .py file's path"
                ) from None


def _import_file(path: Path) -> None:
    path = path.expanduser().resolve()
    if not path.is_file():
        raise ConfigError(f"plugin file {path} does not exist; give the .py file that registers your extension")
    module_name = f"gopd_lab_plugin_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # before executing: dataclasses and pickling look the module up
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[module_name]
        raise ConfigError(f"plugin file {path} failed to import: {type(err).__name__}: {err}") from err
