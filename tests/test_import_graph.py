"""The Python package imports one way: no cycle among the modules of python/mac.

Every ``import`` of every module counts, at any depth (an import inside a function is a dependency
too, only a later one), read with ``ast`` without importing anything. ``from mac import x`` depends on
the module ``mac.x`` where there is one, else on the package ``mac`` (its ``__init__``); a relative
import resolves against the importing module's package. Dynamic imports (importlib) are not seen.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[1] / "python" / "mac"


def module_names(root: Path) -> dict[str, Path]:
    """Dotted name -> file of every module under the package directory ``root`` (``mac.data`` for
    ``mac/data/__init__.py``)."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name,) + path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imported(node: ast.AST, importer: str, is_package: bool, modules: dict) -> list[str]:
    """The package modules that one Import / ImportFrom node of ``importer`` depends on."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:                       # relative: from .x / from .. import y
            package = importer.split(".") if is_package else importer.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                   for alias in node.names]
    found = []
    for target in targets:
        while target and target not in modules:   # `import mac.data.names as n` -> mac.data.names
            target = target.rpartition(".")[0]     # `from mac.x import f` where f is no module -> mac.x
        if target and target != importer:
            found.append(target)
    return found


def import_graph(root: Path) -> dict[str, dict[str, str]]:
    """importer -> {imported module: "file:line" of its first import} over the package at ``root``."""
    modules = module_names(root)
    graph: dict[str, dict[str, str]] = {}
    for name, path in modules.items():
        edges = graph.setdefault(name, {})
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _imported(node, name, path.name == "__init__.py", modules):
                    edges.setdefault(target, f"{path.relative_to(root.parent)}:{node.lineno}")
    return graph


def find_cycles(graph: dict[str, dict[str, str]]) -> list[list[str]]:
    """One cycle [a, b, ..., a] per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
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
                components.append(component)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_cycle_through(sorted(c)[0], set(c), graph) for c in components]


def _cycle_through(start: str, component: set[str], graph) -> list[str]:
    """A shortest path start -> ... -> start inside one strongly connected component (BFS)."""
    parent = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v]):
                if w == start:                      # back home: walk the parents to start
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return path[::-1] + [start]
                if w in component and w not in parent:
                    parent[w] = v
                    following.append(w)
        frontier = following
    raise AssertionError(f"{start} is on no cycle")


def describe(cycle: list[str], graph) -> str:
    """``a -> b (pkg/a.py:12) -> a (pkg/b.py:40)``: each import with the line that makes it."""
    return " -> ".join([cycle[0]] + [f"{b} ({graph[a][b]})" for a, b in zip(cycle, cycle[1:])])


def test_the_mac_package_has_no_import_cycle():
    graph = import_graph(PACKAGE_ROOT)
    assert "mac.rollout" in graph and "mac.data.names" in graph      # the walk saw the package
    assert "mac.reference" in graph["mac.rollout"]                   # and function-level imports:
    assert "mac.selfcheck" in graph["mac.rollout"]                   # rollout's self-check gate
    cycles = find_cycles(graph)
    assert not cycles, "import cycles among mac modules:\n" + "\n".join(describe(c, graph) for c in cycles)


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_cycle_through_a_function_level_import_is_found(tmp_path):
    """The checker itself: a cycle closed by an import inside a function, via a relative import and a
    ``from package import module``, is found and named; the same package without it is clean."""
    pkg = tmp_path / "pkg"
    files = {"pkg/__init__.py": "",
             "pkg/low.py": "import os\n",
             "pkg/api.py": "from pkg import low\nfrom pkg.sub.mid import f\n",
             "pkg/sub/__init__.py": "",
             "pkg/sub/mid.py": "from .. import low\n\ndef f():\n    from ..api import g\n"}
    _write(tmp_path, files)
    graph = import_graph(pkg)
    assert graph["pkg.sub.mid"] == {"pkg.low": "pkg/sub/mid.py:1", "pkg.api": "pkg/sub/mid.py:4"}
    cycles = find_cycles(graph)
    assert cycles == [["pkg.api", "pkg.sub.mid", "pkg.api"]]
    assert describe(cycles[0], graph) == "pkg.api -> pkg.sub.mid (pkg/api.py:2) -> pkg.api (pkg/sub/mid.py:4)"
    _write(tmp_path, {"pkg/sub/mid.py": "from .. import low\n"})
    assert find_cycles(import_graph(pkg)) == []
