"""The package's layout is its architecture: folders import each other without a cycle, and so do modules.

Every ``import`` of every module is read with ``ast`` (function-local ones included: an import inside a function to
dodge a cycle is still a dependency). In the folder graph a module inside a folder (``gopd_lab/loop/train.py``)
counts as its folder (``loop``), a top-level module (``gopd_lab/config.py``) as itself; in the module graph every
module is its own node (a package's ``__init__`` is the package's name). ``gopd_lab/__init__.py`` (which re-exports
the public names) and the deprecated re-export modules at old paths sit above everything and are left out.
"""

import ast
from pathlib import Path

import gopd_lab

PACKAGE = Path(gopd_lab.__file__).resolve().parent
SHIMS = {"__init__", "teacher_server"}  # composition root and the old path of `python -m gopd_lab.teacher_server`


def _node(parts: list[str]) -> str:
    return parts[0]


def _imports(path: Path) -> set[str]:
    """The gopd_lab modules ``path`` imports, as dotted names without ``gopd_lab.``."""
    rel = path.relative_to(PACKAGE).with_suffix("").parts
    here = list(rel[:-1]) if rel[-1] != "__init__" else list(rel[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                mod = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.split(".")[0] == "gopd_lab":
                mod = node.module.split(".")[1:]
            else:
                continue
            if mod:
                found.add(".".join(mod))
            else:  # from gopd_lab import a, b
                found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".", 1)[1] for a in node.names if a.name.startswith("gopd_lab."))
    return found


def folder_graph() -> dict[str, set[str]]:
    """``{node: nodes it imports}`` over the package (a node is a folder or a top-level module)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("").parts
        if len(rel) == 1 and rel[0] in SHIMS:
            continue
        src = _node(list(rel))
        targets = {_node(m.split(".")) for m in _imports(path)} - {src}
        graph.setdefault(src, set()).update(targets)
    return graph


def _module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


def module_graph() -> dict[str, set[str]]:
    """``{module: modules it imports}`` over the package, every module its own node (``lm.models``; a package is
    its ``__init__``). ``from gopd_lab.lm import vocab`` is an edge to ``lm.vocab`` when that is a module."""
    modules = {_module_name(p) for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        src = _module_name(path)
        if src in SHIMS or src == "":
            continue
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                here = src.split(".") if path.name == "__init__.py" else src.split(".")[:-1]
                if node.level:
                    base = here[: len(here) - node.level + 1]
                    mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
                elif node.module and node.module.split(".")[0] == "gopd_lab":
                    mod = node.module.partition(".")[2]
                else:
                    continue
                for alias in node.names:  # `from gopd_lab.lm import vocab`: the submodule itself
                    sub = f"{mod}.{alias.name}" if mod else alias.name
                    targets.add(sub if sub in modules else mod)
            elif isinstance(node, ast.Import):
                targets.update(a.name.split(".", 1)[1] for a in node.names if a.name.startswith("gopd_lab."))
        graph[src] = {t for t in targets if t and t != src and t not in SHIMS}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return [*stack[stack.index(m) :], m]
            if m not in state and (cycle := visit(m)):
                return cycle
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (cycle := visit(n)):
            return cycle
    return None


def test_the_folders_import_each_other_without_a_cycle():
    graph = folder_graph()
    assert {"loop", "objectives", "scorers", "world", "scale", "viz", "experiments"} <= set(graph)
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph))


EXEMPT_EDGES: set[tuple[str, str]] = set()
"""Module edges the cycle check ignores: none (the last one, tasks.base → tasks.hfdata → tasks.mathjsonl →
tasks.base, went when the answer functions moved to tasks/answers.py)."""


def test_no_module_imports_itself_through_others():
    """No cycle at module granularity either (function-local imports included): lm/ once ran logprobs → rollout →
    models → vocab → logprobs for one constant, loop/ evaluate ↔ headroom."""
    graph = module_graph()
    assert {"lm.models", "lm.logprobs", "loop.train", "methods.gopd", "config"} <= set(graph)
    for a, b in EXEMPT_EDGES:
        graph[a].discard(b)
    assert find_cycle(graph) is None, " → ".join(find_cycle(graph))


def test_the_module_graph_sees_the_cycles_it_forbids():
    graph = module_graph()
    assert "lm.vocab" in graph["lm.logprobs"] and "lm.target" in graph["loop.evaluate"]
    graph["lm.vocab"].add("lm.logprobs")  # the old constant's import
    assert find_cycle(graph) is not None


def test_the_cycle_finder_sees_the_old_flat_cycle():
    """Today's layout would fail: the flat modules' eleven-module cycle (models ↔ score ↔ teacher_server…)."""
    old = {"models": {"teacher_server", "zoo"}, "teacher_server": {"models", "scoring"}, "zoo": {"train"}}
    old["train"] = {"models"}
    assert find_cycle(old) == ["models", "teacher_server", "models"]


def test_the_layers_point_down():
    """The pure math imports nothing of the package; the world and the scorers never import the loop."""
    graph = folder_graph()
    assert graph["objectives"] == set()
    assert "loop" not in graph["world"] and "loop" not in graph["scorers"]
    assert not graph["errors"]


def test_the_checkpoint_loader_knows_no_method_and_no_served_teacher():
    """``lm/models.py`` loads one checkpoint and its tokenizer; SDPO's self-teacher, HTTP teachers, LoRA and the
    method's needs are ``loop/load.py``'s, which asks the method registry and the scorers."""
    imported = _imports(PACKAGE / "lm" / "models.py")
    assert {m.split(".")[0] for m in imported} <= {"config", "errors", "lm", "world"}, imported
    load = _imports(PACKAGE / "loop" / "load.py")
    assert "methods" in load and "scorers.remote" in load and "scorers.self_teacher" in load
    source = (PACKAGE / "loop" / "load.py").read_text()
    assert "cfg.method ==" not in source and '"sdpo"' not in source


def test_the_package_docstrings_name_only_their_own_modules():
    """A folder's docstring lists its modules as ``name``; each one is a module of that folder, and every module of
    the folder is listed (names of other folders are written out, ``gopd_lab.lm.logprobs``)."""
    import re

    for folder in ("loop", "scorers", "scale", "lm"):
        doc = ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text()))
        named = {n for n in re.findall(r"``([a-z_]+)``", doc)}
        modules = {p.stem for p in (PACKAGE / folder).glob("*.py")} - {"__init__"}
        assert named <= modules, (folder, named - modules)
        assert modules <= named, (folder, modules - named)
