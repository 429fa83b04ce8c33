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


# ----------------------------------------------------------------------------- exercises
def exercises(nb: dict) -> dict[str, dict[str, dict]]:
    """``{exercise id: {"task", "answer", "check", "solution": cell}}`` from the cells tagged ``exercise`` (the
    markdown task and the code cell for the answer), ``check`` and ``solution``, each carrying
    ``metadata.exercise.id`` (the task cell takes the id of the answer cell right after it)."""
    found: dict[str, dict[str, dict]] = {}
    cells = nb["cells"]
    for i, cell in enumerate(cells):
        tags = cell.get("metadata", {}).get("tags", [])
        meta = cell.get("metadata", {}).get("exercise", {})
        if "exercise" in tags and cell["cell_type"] == "markdown":
            nxt = cells[i + 1] if i + 1 < len(cells) else {}
            found.setdefault(nxt.get("metadata", {}).get("exercise", {}).get("id", f"?{i}"), {})["task"] = cell
        elif "exercise" in tags:
            found.setdefault(meta.get("id", f"?{i}"), {})["answer"] = cell
        elif "check" in tags:
            found.setdefault(meta.get("id", f"?{i}"), {})["check"] = cell
        elif "solution" in tags:
            found.setdefault(meta.get("id", f"?{i}"), {})["solution"] = cell
    return found


def assert_exercises_well_formed(nb: dict) -> None:
    """Every exercise has its four cells in order (task, answer, check, solution), the check a wrong answer to
    test with, the solution collapsed; the answer cell as shipped leaves the answer unset (None)."""
    for ex_id, parts in exercises(nb).items():
        assert set(parts) == {"task", "answer", "check", "solution"}, f"exercise {ex_id} has cells {sorted(parts)}"
        order = [nb["cells"].index(parts[k]) for k in ("task", "answer", "check", "solution")]
        assert order == list(range(order[0], order[0] + 4)), f"exercise {ex_id}: task, answer, check, solution in a row"
        assert parts["check"]["metadata"]["exercise"].get("wrong"), f"exercise {ex_id}: the check names a wrong answer"
        assert parts["solution"]["metadata"].get("jupyter", {}).get("source_hidden"), f"{ex_id}: collapse the solution"
        assert re.search(r"=\s*None\b", source(parts["answer"])), f"exercise {ex_id}: the answer cell ships unanswered"


def with_exercise_probes(nb: dict) -> dict:
    """A copy of ``nb`` in which each check cell is followed by probes: the solution then the check again (it
    must say right), the check's wrong answer then the check again (it must say wrong)."""
    import copy

    nb = copy.deepcopy(nb)
    cells = []
    for cell in nb["cells"]:
        cells.append(cell)
        if "check" not in cell.get("metadata", {}).get("tags", []):
            continue
        meta = cell["metadata"]["exercise"]
        solution = next(
            c
            for c in nb["cells"]
            if "solution" in c["metadata"].get("tags", []) and c["metadata"]["exercise"]["id"] == meta["id"]
        )
        for expect, answer in (("right", source(solution)), ("wrong", meta["wrong"])):
            cells.append(
                {"cell_type": "code", "execution_count": None, "outputs": [], "source": answer, "metadata": {}}
            )
            cells.append(
                {
                    "cell_type": "code",
                    "execution_count": None,
                    "outputs": [],
                    "source": source(cell),
                    "metadata": {"probe": {"id": meta["id"], "expect": expect}},
                }
            )
    nb["cells"] = cells
    return nb


def _output_text(cell: dict) -> str:
    texts = []
    for out in cell.get("outputs", []):
        data = out.get("data", {})
        text = data.get("text/plain", out.get("text", ""))
        texts.append("".join(text) if isinstance(text, list) else text)
    return "\n".join(texts)


def assert_exercise_verdicts(executed: dict) -> int:
    """Each check cell said "not answered yet" as shipped, "right" after the solution and "wrong" after the
    wrong answer. Returns the number of probes checked."""
    probes = 0
    for cell in executed["cells"]:
        meta = cell.get("metadata", {})
        if "check" in meta.get("tags", []):
            assert _output_text(cell).strip("'\" \n").startswith("not answered yet"), _output_text(cell)
        elif "probe" in meta:
            text = _output_text(cell).strip("'\" \n")
            assert text.startswith(meta["probe"]["expect"]), f"exercise {meta['probe']['id']}: {text!r}"
            probes += 1
    return probes


MAX_EXECUTED_BYTES = 2_000_000


def assert_light_and_quiet(path: Path) -> None:
    """An executed notebook is under 2 MB (no plotly.js stored per figure or widget) and no library printed a
    warning into it."""
    size = path.stat().st_size
    assert size < MAX_EXECUTED_BYTES, f"{path.name} weighs {size} bytes executed; is plotly.js stored in it?"
    nb = json.loads(path.read_text(encoding="utf-8"))
    for i, cell in enumerate(nb["cells"]):
        for out in cell.get("outputs", []):
            text = out.get("text", "")
            text = "".join(text) if isinstance(text, list) else text
            assert not (out.get("name") == "stderr" and re.search(r"Warning|deprecated", text)), (
                f"{path.name} cell {i} shows a warning: {text[:300]}"
            )
