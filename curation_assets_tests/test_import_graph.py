"""The package's import graph: no loop, the core never imports the tools or the CLI.

Every ``import`` of a ``curation_assets`` module counts, also the ones inside functions (a
lazy import still ties the two modules together).
"""

import ast
from pathlib import Path

import curation_assets

PACKAGE = Path(curation_assets.__file__).resolve().parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the ``curation_assets`` modules it imports."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in targets:
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target in modules and target != name:
                    deps.add(target)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_loop():
    assert cycles(import_graph()) == []


def test_the_core_imports_neither_the_tools_nor_the_cli():
    graph = import_graph()
    core = [m for m in graph if m.startswith(("curation_assets.lib", "curation_assets.defs"))]
    core += ["curation_assets.definitions", "curation_assets.runner"]
    wrong = {
        m: sorted(
            d for d in graph[m] if d.startswith("curation_assets.tools") or d.endswith(".cli")
        )
        for m in core
    }
    assert {m: d for m, d in wrong.items() if d} == {}


def test_lib_never_imports_dagster():
    modules = _modules()
    lib = [m for m in modules if m.startswith("curation_assets.lib")]
    assert lib
    dagster = []
    for m in lib:
        for node in ast.walk(ast.parse(modules[m].read_text(encoding="utf-8"))):
            names = (
                [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else []
            )
            if any(n == "dagster" or n.startswith("dagster.") for n in names):
                dagster.append(m)
    assert dagster == []
