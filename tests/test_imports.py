"""The import graph of picovlm has no cycle, counting every import: module level, inside functions
and under `if TYPE_CHECKING:`, so a cycle cannot hide behind a lazy import. Nor do its packages
(data, models, eval, ...) import each other both ways: the floors of the code point one way.

Run it as a script to see the graph's size, the packages' imports and the modules' floors (each
module sits one floor above the highest module it imports):

    python tests/test_imports.py
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "picovlm"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(tree: ast.AST, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The picovlm modules one module's code imports, wherever the import statement is."""
    package = name if is_package else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # a relative import: resolve it against this module's package
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            # `from a import b` imports the module a.b when there is one, else a name from a
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def import_graph() -> dict[str, set[str]]:
    """module -> the picovlm modules it imports."""
    paths = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
    modules = set(paths)
    return {
        name: imported(ast.parse(path.read_text(encoding="utf-8")), name, path.name == "__init__.py", modules)
        for name, path in paths.items()
    }


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The graph between picovlm's subpackages and top-level modules ("data", "cli", ...)."""
    part = {m: m.split(".")[1] if m.count(".") else m for m in graph}
    packages: dict[str, set[str]] = {p: set() for p in part.values()}
    for module, targets in graph.items():
        packages[part[module]].update(part[t] for t in targets if part[t] != part[module])
    return packages


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (its modules in import order, the first repeated at the end), or None."""
    state: dict[str, str] = {}  # "open" while its imports are walked, "done" after
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        stack.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[module] = "done"
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def floors(graph: dict[str, set[str]]) -> dict[str, int]:
    """0 for a module that imports no picovlm module, else one more than its highest import."""
    floor: dict[str, int] = {}

    def of(module: str) -> int:
        if module not in floor:
            floor[module] = 1 + max((of(t) for t in graph[module]), default=-1)
        return floor[module]

    for module in graph:
        of(module)
    return floor


def test_the_graph_sees_imports_inside_functions():
    code = "import os\ndef f():\n    from picovlm.data import records\n    from .batches import x\n"
    modules = {"picovlm.data.records", "picovlm.data.batches", "picovlm.data.formats"}
    assert imported(ast.parse(code), "picovlm.data.formats", False, modules) == modules - {"picovlm.data.formats"}


def test_a_cycle_is_found():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_picovlm_has_no_import_cycle():
    graph = import_graph()
    assert len(graph) > 50 and sum(map(len, graph.values())) > 100  # the walk really found the package
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_picovlm_packages_import_each_other_one_way():
    packages = package_graph(import_graph())
    assert {"data", "models", "eval", "text"} <= set(packages) and "text" in packages["data"]
    cycle = find_cycle(packages)
    assert cycle is None, "packages import each other both ways: " + " -> ".join(cycle)


if __name__ == "__main__":
    graph = import_graph()
    cycle = find_cycle(graph)
    print(f"{len(graph)} modules, {sum(map(len, graph.values()))} imports between them (function-level included)")
    print("cycle: " + (" -> ".join(cycle) if cycle else "none"))
    packages = package_graph(graph)
    package_cycle = find_cycle(packages)
    print("package cycle: " + (" -> ".join(package_cycle) if package_cycle else "none"))
    for package in sorted(packages, key=lambda p: (len(packages[p]), p)):
        print(f"  {package:>10} -> {' '.join(sorted(packages[package])) or '(nothing of picovlm)'}")
    if not cycle:
        by_floor: dict[int, list[str]] = {}
        for module, floor in floors(graph).items():
            by_floor.setdefault(floor, []).append(module.removeprefix("picovlm."))
        for floor in sorted(by_floor):
            print(f"floor {floor:2d}: {' '.join(sorted(by_floor[floor]))}")
