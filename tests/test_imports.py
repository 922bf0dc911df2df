"""ibjax's modules import one another without a cycle, imports inside functions included."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ibjax"


def imported_modules(path: Path) -> set[str]:
    """The ibjax modules a file imports anywhere in it (``ibjax`` itself for the package's own attributes)."""
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] != "ibjax":
                continue
            found.add(parts[1] if len(parts) > 1 and parts[1] in modules else "__init__")
    return found - {path.stem}


def import_graph() -> dict[str, set[str]]:
    return {path.stem: imported_modules(path) for path in PACKAGE.glob("*.py")}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for other in sorted(graph.get(node, ())):
            if state.get(other) == "open":
                return path[path.index(other):] + [other]
            if other not in state:
                cycle = visit(other)
                if cycle:
                    return cycle
        state[node] = "done"
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_through_a_function_level_import(tmp_path):
    graph = {"config": {"data"}, "data": {"_sources"}, "_sources": set()}
    assert find_cycle(graph) is None
    module = tmp_path / "data.py"
    module.write_text("import numpy\n\ndef load(config):\n    from ibjax.config import ConfigError\n")
    graph["data"] |= imported_modules(module)
    assert find_cycle(graph) == ["config", "data", "config"]


def test_ibjax_has_no_import_cycle():
    graph = import_graph()
    assert {"train", "step", "data", "config"} <= graph.keys() and "data" in graph["step"]
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph))
