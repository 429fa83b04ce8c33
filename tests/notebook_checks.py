"""The rules every committed notebook follows, shared by the notebook test files."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path


def source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def parameter_names(nb: dict) -> set[str]:
    """The names assigned in the notebook's ``parameters`` cell."""
    cell = next(c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    names = set()
    for node in ast.parse(source(cell)).body:
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return names


def assert_clean_notebook(path: Path, ci_parameters: set[str], allowed_imports: set[str]) -> dict:
    """Small, no outputs, a first markdown cell saying what it needs, one ``parameters`` cell holding the CI
    knobs and ``out_dir``, no algorithm code (no def/class), imports only from ``allowed_imports``."""
    assert path.stat().st_size < 100_000, f"{path.name} is {path.stat().st_size} bytes; keep notebooks under 100 kB"
    nb = json.loads(path.read_text(encoding="utf-8"))
    cells = nb["cells"]
    assert cells and cells[0]["cell_type"] == "markdown", "the first cell says what the notebook shows and needs"
    assert re.search(r"needs", source(cells[0]), re.I), "the first cell says what the notebook needs"
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1 and tagged[0]["cell_type"] == "code", "exactly one code cell tagged 'parameters'"
    assert set(ci_parameters) | {"out_dir"} <= parameter_names(nb), "CI parameters must be knobs of the parameters cell"
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code":
            continue
        assert cell.get("outputs") == [], f"cell {i} has outputs: strip them before committing"
        assert cell.get("execution_count") is None, f"cell {i} has an execution count"
        src = source(cell)
        assert not re.search(r"^\s*(async\s+)?(def|class)\s", src, re.M), f"cell {i} defines a function or class"
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, ast.Import):
                roots = {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]}
            else:
                continue
            assert roots <= allowed_imports, f"cell {i} imports {roots - allowed_imports}; use gopd_lab"
    return nb
