"""The import rules of the repository's layers, read from the source (every import, function-local ones too).

The core (catsdogs, model, training, handler) and the serving package never import the operations packages
(deploy, loadtest, monitoring, benchmarks); the operations packages import each other without a cycle.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOWER = ("catsdogs", "model", "training", "handler", "serving")
OPS = ("deploy", "loadtest", "monitoring", "benchmarks")


def imported_packages(path: Path) -> set[str]:
    """Top-level names of the repository packages a file imports (relative imports: its own package)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names & set(LOWER + OPS)


def package_imports(package: str) -> dict[str, set[str]]:
    """file (relative to the repo) -> the other repository packages it imports."""
    return {str(f.relative_to(ROOT)): found for f in sorted((ROOT / package).rglob("*.py"))
            if (found := imported_packages(f) - {package})}


def test_the_core_and_serving_never_import_the_operations_packages():
    wrong = {f: sorted(found & set(OPS)) for p in LOWER for f, found in package_imports(p).items() if found & set(OPS)}
    assert wrong == {}, f"imports running back up into the operations layer: {wrong}"


def test_the_operations_packages_import_each_other_without_a_cycle():
    graph = {p: set().union(*package_imports(p).values()) & set(OPS) for p in OPS}

    def reaches(start: str, goal: str, seen: frozenset = frozenset()) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in graph[start])

    cycles = [p for p in OPS if reaches(p, p)]
    assert cycles == [], f"import cycle through {cycles}: {graph}"


def test_the_rules_see_function_local_imports(tmp_path):
    """The reader must not miss an import inside a function (they used to hide the wrong direction)."""
    f = tmp_path / "x.py"
    f.write_text("def f():\n    from monitoring.drift import psi\n    import loadtest.gate\n")
    assert imported_packages(f) == {"monitoring", "loadtest"}
