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


SOLUTION_CODE = re.compile(r"```python\n(.*?)\n```", re.S)


def solution_code(cell: dict) -> str:
    """The code of a solution cell: a collapsed markdown cell (Run All does not execute it) holding one
    ```python block."""
    found = SOLUTION_CODE.search(source(cell))
    assert found, "a solution cell holds one ```python block"
    return found.group(1)


def check_call_id(cell: dict) -> str | None:
    """The id of ``course.exercise("<id>").check(...)`` in a check cell."""
    found = re.search(r"course\.exercise\(\s*[\"']([^\"']+)[\"']\s*\)\.check\(", source(cell))
    return found.group(1) if found else None


def assert_exercises_well_formed(nb: dict) -> None:
    """Every exercise has its four cells in order (task, answer, check, solution; a prediction may have the cells
    that show its outcome between its answer and its check); the check is one call of the
    package's exercise (which holds its wrong answers and hints, so the cell shows no formula); the solution is
    a markdown cell inside ``<details>`` (never run by Run All) whose code is the package's solution; the
    answer cell as shipped leaves the answer unset (None)."""
    from gopd_lab.viz.exercise_bank import EXERCISES

    for ex_id, parts in exercises(nb).items():
        assert set(parts) == {"task", "answer", "check", "solution"}, f"exercise {ex_id} has cells {sorted(parts)}"
        assert ex_id in EXERCISES, f"exercise {ex_id} is not in gopd_lab.viz.exercise_bank.EXERCISES"
        task, answer, check, solution = (nb["cells"].index(parts[k]) for k in ("task", "answer", "check", "solution"))
        assert answer == task + 1 and solution == check + 1, f"exercise {ex_id}: task, answer … check, solution"
        if EXERCISES[ex_id].kind == "choice":  # a prediction: the cells that show the outcome run before its check
            assert answer < check, f"prediction {ex_id}: its check comes after the prediction"
        else:
            assert check == answer + 1, f"exercise {ex_id}: task, answer, check, solution in a row"
        assert check_call_id(parts["check"]) == ex_id, f"exercise {ex_id}: the check calls course.exercise({ex_id!r})"
        solution = parts["solution"]
        assert solution["cell_type"] == "markdown", f"{ex_id}: the solution is markdown, so Run All does not run it"
        assert "<details>" in source(solution), f"{ex_id}: the solution is folded in <details>"
        assert solution_code(solution) == EXERCISES[ex_id].solution, f"{ex_id}: the solution is the package's"
        answer = EXERCISES[ex_id].answer_name
        assert re.search(rf"^{answer}\s*=\s*None\b", source(parts["answer"]), re.M), f"{ex_id}: ships unanswered"


def assert_exercise_context_not_rebound(nb: dict) -> None:
    """The names a check cell reads are not assigned again after it (a later cell rebinding ``teacher`` to a
    string broke notebook 03's checks after Run All)."""
    cells = nb["cells"]
    for i, cell in enumerate(cells):
        if "check" not in cell.get("metadata", {}).get("tags", []):
            continue
        tree = ast.parse(source(cell))
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        for j, later in enumerate(cells[i + 1 :], i + 1):
            if later["cell_type"] != "code" or "solution" in later.get("metadata", {}).get("tags", []):
                continue
            bound = {
                n.id
                for n in ast.walk(ast.parse(source(later)))
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
            }
            assert not names & bound, f"cell {j} rebinds {sorted(names & bound)}, which the check in cell {i} reads"


def with_exercise_probes(nb: dict) -> dict:
    """A copy of ``nb`` in which each check cell is followed by probes: the solution then the check again (it
    must say right), the exercise's first listed wrong answer then the check again (it must say wrong)."""
    import copy

    from gopd_lab.viz.exercise_bank import EXERCISES

    nb = copy.deepcopy(nb)
    cells = []
    for cell in nb["cells"]:
        cells.append(cell)
        if "check" not in cell.get("metadata", {}).get("tags", []):
            continue
        ex = EXERCISES[check_call_id(cell)]
        wrong = f"{ex.answer_name} = {next(iter(ex.wrong.values()))}"
        for expect, answer in (("right", ex.solution), ("wrong", wrong)):
            cells.append(
                {"cell_type": "code", "execution_count": None, "outputs": [], "source": answer, "metadata": {}}
            )
            cells.append(
                {
                    "cell_type": "code",
                    "execution_count": None,
                    "outputs": [],
                    "source": source(cell),
                    "metadata": {"probe": {"id": ex.id, "expect": expect}},
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
    """An executed notebook is under 2 MB (no plotly.js stored per figure or widget), no library printed a
    warning into it, and no library drew a progress bar (only each training run's own)."""
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
            assert not re.search(r"Loading weights|Writing model shards|Fetching \d+ files", text), (
                f"{path.name} cell {i} shows a library's progress bar (course.setup_notebook turns them off)"
            )
