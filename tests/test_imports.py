"""The modules of ice_ignite import each other without a cycle. The import graph is read from the
source with ``ast``: every ``import`` / ``from ... import`` of a package module anywhere in a file
(module level, inside functions, under ``if TYPE_CHECKING:`` — type-only imports count) is an
edge. Only the top-level ``ice_ignite/__init__.py`` is left out as a source of edges: it re-exports
everything by design. Subpackage inits (``ice_ignite/nodes/__init__.py``) count.

    python tests/test_imports.py    # prints the whole graph, the cycles and the strongly connected components
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = "ice_ignite"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE
MAX_CYCLES = 500  # enumerating simple cycles is exponential in the worst case


def modules(root: Path = ROOT) -> dict[str, Path]:
    """``{dotted name: file}`` for every module of the package (a package is its ``__init__.py``)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = (PACKAGE,) + path.relative_to(root).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def _type_checking(test: ast.expr) -> bool:
    """``TYPE_CHECKING`` or ``typing.TYPE_CHECKING``."""
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(nodes, where: str = "module level"):
    """Yield ``(statement, context)`` for every import statement in ``nodes`` and below them; the
    context: module level, in a function, or TYPE_CHECKING."""
    for node in nodes:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, where
        elif isinstance(node, ast.If) and _type_checking(node.test):
            yield from _imports(node.body, "TYPE_CHECKING")
            yield from _imports(node.orelse, where)  # the else branch runs at run time
        else:
            inner = "in a function" if isinstance(node, FUNCTIONS) and where == "module level" else where
            yield from _imports(ast.iter_child_nodes(node), inner)


def _targets(stmt: ast.Import | ast.ImportFrom, name: str, is_package: bool, known: dict) -> list[str]:
    """The package modules that ``stmt`` in module ``name`` imports."""
    if isinstance(stmt, ast.Import):
        # `import a.b.c` binds a.b.c: the edge is to the deepest module of the package it names
        found = []
        for alias in stmt.names:
            prefixes = (alias.name.rsplit(".", i)[0] for i in range(alias.name.count(".") + 1))
            found += [next((p for p in prefixes if p in known), None)]
        return list(dict.fromkeys(m for m in found if m is not None))
    base = stmt.module or ""
    if stmt.level:
        package = name.split(".") if is_package else name.split(".")[:-1]
        package = package[: len(package) - (stmt.level - 1)]
        base = ".".join(package + ([base] if base else []))
    if base != PACKAGE and not base.startswith(PACKAGE + "."):
        return []
    # `from pkg import sub` is an edge to the submodule, `from pkg import obj` one to pkg itself
    return list(dict.fromkeys(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in stmt.names))


def import_graph(root: Path = ROOT) -> dict[str, dict[str, list[str]]]:
    """``{module: {imported package module: ["file:line (context)", ...]}}``."""
    known = modules(root)
    graph = {}
    for name, path in known.items():
        edges: dict[str, list[str]] = {}
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for stmt, where in _imports(tree.body):
            for target in _targets(stmt, name, path.name == "__init__.py", known):
                if target in known:
                    edges.setdefault(target, []).append(f"{path.relative_to(root.parent)}:{stmt.lineno} ({where})")
        graph[name] = edges
    return graph


def checked(graph: dict) -> dict[str, list[str]]:
    """The edges cycles are looked for in: all but those of the top-level package init."""
    return {m: sorted(e) for m, e in graph.items() if m != PACKAGE}


def components(edges: dict[str, list[str]]) -> list[list[str]]:
    """The strongly connected components with a cycle (Tarjan), each sorted, in sorted order."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1 or v in edges.get(v, ()):
                found.append(sorted(scc))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)


def cycles(edges: dict[str, list[str]], limit: int = MAX_CYCLES) -> list[list[str]]:
    """The simple cycles, each from its smallest module and back to it, at most ``limit``."""
    found: list[list[str]] = []
    for scc in components(edges):
        members = set(scc)
        for start in scc:  # cycles through `start` and modules after it only: each cycle once
            path, todo = [start], [iter(sorted(w for w in edges.get(start, ()) if w in members and w >= start))]
            while todo and len(found) < limit:
                w = next(todo[-1], None)
                if w is None:
                    todo.pop()
                    path.pop()
                elif w == start:
                    found.append(path + [start])
                elif w not in path:
                    path.append(w)
                    todo.append(iter(sorted(x for x in edges.get(w, ()) if x in members and x >= start)))
    return found


def describe(graph: dict) -> str:
    """The cycles as ``a -> b -> a``, the strongly connected components, and where their edges are."""
    edges = checked(graph)
    found, sccs = cycles(edges), components(edges)
    lines = [f"{len(found)}{'+' if len(found) == MAX_CYCLES else ''} import cycle(s):"]
    lines += ["  " + " -> ".join(c) for c in found]
    lines.append(f"{len(sccs)} strongly connected component(s):")
    for scc in sccs:
        lines.append(f"  ({len(scc)} modules) " + ", ".join(scc))
    lines.append("their edges:")
    for scc in sccs:
        for m in scc:
            for target in edges[m]:
                if target in scc:
                    lines.append(f"  {m} -> {target}: " + "; ".join(graph[m][target]))
    return "\n".join(lines)


FAKE = {  # a package with each kind of import; its cycles: a -> sub.b -> c -> a and c -> sub -> sub.b -> c
    "__init__.py": "from ice_ignite.a import A\nfrom ice_ignite import c\n",  # not a source of edges
    "a.py": "from typing import TYPE_CHECKING\n"
    "if TYPE_CHECKING:\n    from .sub import b\nelse:\n    import os\nA = 1\n",
    "sub/__init__.py": "from .b import B\n",
    "sub/b.py": "def f():\n    from ice_ignite import c, A\n    return c\nB = 2\n",
    "c.py": "import ice_ignite.a\nimport torch\nfrom ice_ignite.sub import B\nfrom . import a\n",
}


def test_edges_are_resolved(tmp_path):
    for name, text in FAKE.items():
        (tmp_path / PACKAGE / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / PACKAGE / name).write_text(text)
    graph = import_graph(tmp_path / PACKAGE)
    assert {m: sorted(e) for m, e in graph.items()} == {
        "ice_ignite": ["ice_ignite.a", "ice_ignite.c"],
        "ice_ignite.a": ["ice_ignite.sub.b"],
        "ice_ignite.c": ["ice_ignite.a", "ice_ignite.sub"],
        "ice_ignite.sub": ["ice_ignite.sub.b"],
        "ice_ignite.sub.b": ["ice_ignite", "ice_ignite.c"],
    }
    assert graph["ice_ignite.a"]["ice_ignite.sub.b"] == ["ice_ignite/a.py:3 (TYPE_CHECKING)"]
    assert graph["ice_ignite.sub.b"]["ice_ignite.c"] == ["ice_ignite/sub/b.py:2 (in a function)"]
    assert graph["ice_ignite.c"]["ice_ignite.a"] == [
        "ice_ignite/c.py:1 (module level)",
        "ice_ignite/c.py:4 (module level)",
    ]
    edges = checked(graph)
    assert components(edges) == [["ice_ignite.a", "ice_ignite.c", "ice_ignite.sub", "ice_ignite.sub.b"]]
    assert cycles(edges) == [
        ["ice_ignite.a", "ice_ignite.sub.b", "ice_ignite.c", "ice_ignite.a"],
        ["ice_ignite.c", "ice_ignite.sub", "ice_ignite.sub.b", "ice_ignite.c"],
    ]
    assert "ice_ignite.a -> ice_ignite.sub.b -> ice_ignite.c -> ice_ignite.a" in describe(graph)


def test_no_import_cycles():
    graph = import_graph()
    assert "ice_ignite.nodes" in graph, "the package was not found"
    if components(checked(graph)):
        pytest.fail("\n" + describe(graph), pytrace=False)


if __name__ == "__main__":
    graph = import_graph()
    for module, targets in graph.items():
        print(f"{module}: {sorted(targets)}")
    print()
    print(describe(graph))
    sys.exit(1 if components(checked(graph)) else 0)
