"""The package's import graph: no loop, and the layers import only downwards.

Layers (ARCHITECTURE.md): ``lib`` (pure Python: polars, Delta, torch, faiss; never dagster)
< ``defs`` (Dagster assets over lib) < ``runner`` / ``definitions`` < ``tools`` (demo,
benchmarks, evaluation, dev server) < ``cli``. Every import counts, including the ones inside
functions (a lazy import is still a dependency, and a loop through one still breaks a reader).
"""

import ast
from pathlib import Path

import curation_assets

PACKAGE = Path(curation_assets.__file__).parent
NAME = "curation_assets"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules (of the package or outside it) that module ``name`` imports."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            out.add(module)
            # `from pkg import mod` imports the submodule pkg.mod when there is one
            out.update(f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in known)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    graph = {}
    for name, path in modules.items():
        targets = set()
        for imported in _imports(name, path, known):
            # importing a.b.c also runs a and a.b: depend on the deepest module we know
            while imported and imported not in known:
                imported = imported.rpartition(".")[0]
            if imported and imported != name:
                targets.add(imported)
        graph[name] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _external(name: str) -> set[str]:
    modules = _modules()
    return {i.split(".")[0] for i in _imports(name, modules[name], set(modules))}


def test_no_import_loop_in_the_package():
    graph = _graph()
    # ancestors packages (__init__) importing their own children are not loops of substance
    for name, targets in graph.items():
        graph[name] = {t for t in targets if not (name != NAME and t.startswith(name + "."))}
    assert _cycles(graph) == []


def test_the_graph_sees_real_edges():
    """The parser finds the imports it must (guards the tests above against a silent no-op)."""
    graph = _graph()
    assert "curation_assets.lib.storage" in graph["curation_assets.defs.resources"]
    assert "curation_assets.defs.resources" in graph["curation_assets.definitions"]
    assert any(t.startswith("curation_assets.runner") for t in graph["curation_assets.cli"])
    looped = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(looped) == [["a", "b", "c"]]


def test_lib_imports_neither_dagster_nor_defs_nor_tools():
    graph = _graph()
    for name in graph:
        if not name.startswith(f"{NAME}.lib"):
            continue
        assert "dagster" not in _external(name), f"{name} imports dagster"
        inner = {t for t in graph[name] if t.startswith(NAME)}
        bad = {t for t in inner if not t.startswith(f"{NAME}.lib")}
        assert not bad, f"{name} imports {sorted(bad)} (lib may import only lib)"


def test_defs_and_runner_do_not_import_tools_or_cli():
    graph = _graph()
    core = [n for n in graph if n.startswith(f"{NAME}.defs") or n.startswith(f"{NAME}.lib")]
    core += [f"{NAME}.definitions", f"{NAME}.runner"]
    for name in core:
        bad = {t for t in graph[name] if t.startswith((f"{NAME}.tools", f"{NAME}.cli"))}
        assert not bad, f"{name} imports {sorted(bad)}"


def test_no_source_file_over_700_lines():
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 700
    }
    assert long == {}
