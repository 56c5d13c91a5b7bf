"""The shape of the code: the import graph of `marketplace/` and `node/` has no cycles and never points from
`marketplace` to `node`; no module grows past MAX_LINES, and the engine facades stay under FACADE_MAX_LINES.

The graph is read from the source with `ast`, without importing anything: every `import` and `from ... import`
statement of a module counts, at module level or inside a function or class, except those guarded by
`if TYPE_CHECKING:` (never executed). Relative imports are resolved against the importing module's package;
`from pkg import name` is an edge to `pkg.name` when that is a module here, else to `pkg`; `import a.b.c` is an
edge to the longest prefix of `a.b.c` that is a module here. Imports of anything outside the two packages are
ignored.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("marketplace", "node")
MAX_LINES = 500
FACADE_MAX_LINES = 300
#: The two engine facades: the requester's and the provider node's.
FACADES = ("marketplace/requester/engine.py", "node/agent/agent.py")


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every Python file of the packages."""
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement, at any depth, except inside `if TYPE_CHECKING:` bodies."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _longest_module(dotted: str) -> str | None:
    parts = dotted.split(".")
    for n in range(len(parts), 0, -1):
        name = ".".join(parts[:n])
        if name in MODULES:
            return name
    return None


def _targets(module: str, path: Path, node: ast.Import | ast.ImportFrom) -> set[str]:
    """The modules of the packages that one import statement of `module` imports."""
    if isinstance(node, ast.Import):
        return {t for a in node.names if (t := _longest_module(a.name)) is not None}
    if node.level:
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        base = package[:len(package) - (node.level - 1)] if node.level > 1 else package
        source = ".".join([*base, *([node.module] if node.module else [])])
    else:
        source = node.module or ""
    out: set[str] = set()
    for alias in node.names:
        sub = f"{source}.{alias.name}"
        if sub in MODULES:
            out.add(sub)
        elif (t := _longest_module(source)) is not None:
            out.add(t)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module -> the modules of the packages it imports (itself left out)."""
    graph: dict[str, set[str]] = {}
    for module, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges: set[str] = set()
        for node in _import_nodes(tree):
            edges |= _targets(module, path, node)
        edges.discard(module)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle through each strongly connected component of more than one module (Tarjan's SCCs;
    the cycle is found by a breadth-first search from the component's first module back to itself)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    sccs: list[list[str]] = []
    counter = 0

    def strongconnect(v: str) -> None:  # recursion depth <= number of modules (~100)
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                sccs.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    out = []
    for comp in sorted(sccs):
        members, start = set(comp), comp[0]
        parent: dict[str, str] = {}
        frontier, seen, found = [start], {start}, None
        while frontier and found is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v] & members):
                    if w == start:
                        found = v
                        break
                    if w not in seen:
                        seen.add(w)
                        parent[w] = v
                        nxt.append(w)
                if found is not None:
                    break
            frontier = nxt
        assert found is not None
        path = [found]
        while path[-1] != start:
            path.append(parent[path[-1]])
        out.append([*reversed(path), start])
    return out


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines())


# ---------------------------------------------------------------- the harness itself
def test_the_graph_reader_resolves_imports() -> None:
    graph = import_graph()
    assert len(MODULES) > 20 and set(graph) == set(MODULES)
    assert "marketplace.types" in graph["marketplace.market"]  # a plain absolute import
    # a tiny graph with a known cycle and a dangling edge
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


# ---------------------------------------------------------------- the rules
def test_no_import_cycles() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_marketplace_never_imports_node() -> None:
    graph = import_graph()
    bad = sorted(f"{m} -> {t}" for m, ts in graph.items() if m.split(".")[0] == "marketplace"
                 for t in ts if t.split(".")[0] == "node")
    assert not bad, "marketplace imports node:\n" + "\n".join(bad)


def test_no_module_over_max_lines() -> None:
    big = sorted((_lines(p), str(p.relative_to(ROOT))) for p in MODULES.values() if _lines(p) > MAX_LINES)
    assert not big, f"modules over {MAX_LINES} lines:\n" + "\n".join(f"{n:>6} {p}" for n, p in big)


def test_engine_facades_stay_small() -> None:
    sizes = {f: _lines(ROOT / f) for f in FACADES}
    big = {f: n for f, n in sizes.items() if n > FACADE_MAX_LINES}
    assert not big, f"facades over {FACADE_MAX_LINES} lines: {big}"
