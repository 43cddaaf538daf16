"""The import graph (issue 15): no module of the engine or the Slicer side imports another that imports it back,
directly or through others, and the engine (``DSSMSegmentLib``) imports neither Qt nor Slicer. Read from the source with ``ast``,
so that imports inside functions count too."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Set

MODULE = Path(__file__).resolve().parents[1] / "DSSMSegment"
ENGINE = MODULE / "DSSMSegmentLib"
PACKAGES = (ENGINE, MODULE / "DSSMSegmentSlicerLib")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(MODULE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> Set[str]:
    """Every module ``path`` imports (absolute names), wherever the import statement is."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[:len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)  # `from . import sampler`
    return found


def _graph() -> Dict[str, Set[str]]:
    modules = {_module_name(p): p for package in PACKAGES for p in package.rglob("*.py") if p.name != "__main__.py"}
    return {name: {m for m in _imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_no_engine_modules_import_each_other() -> None:
    graph = _graph()
    assert {"DSSMSegmentLib.benchmark.command", "DSSMSegmentLib.cli", "DSSMSegmentSlicerLib.Widget"} <= set(graph)
    # a package's __init__ importing its own submodules is how a package exposes them, not a cycle
    edges = {a: {b for b in deps if not (a.startswith(b + ".") and graph.get(b) is not None)}
             for a, deps in graph.items()}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo.extend(edges.get(node, ()))
        return False

    cycles = sorted((a, b) for a, deps in edges.items() for b in deps if reaches(b, a))
    assert not cycles, f"modules that import each other (directly or through others): {cycles}"
    # the command line calls the benchmark, never the reverse
    assert not any(reaches(m, "DSSMSegmentLib.cli") for m in graph if m.startswith("DSSMSegmentLib.benchmark"))


def test_the_engine_imports_neither_qt_nor_slicer() -> None:
    for path in ENGINE.rglob("*.py"):
        roots = {m.split(".")[0] for m in _imports(path)}
        bad = roots & {"qt", "ctk", "slicer", "vtk", "PySide2", "PySide6", "PyQt5", "PyQt6", "DSSMSegmentSlicerLib"}
        assert not bad, f"{path.relative_to(MODULE)} imports {sorted(bad)}"
