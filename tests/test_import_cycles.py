"""No import circles in ``src/audiotag``: no two modules import each other, and no longer loop either.

Every import counts: top-level, function-local and under ``TYPE_CHECKING``; ``from x import y`` where
``y`` is a submodule imports the submodule; relative imports are resolved. A function-local import
that only hides a circle is a circle.
"""

from __future__ import annotations

import ast
import shutil
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "audiotag"

Graph = dict[str, set[str]]


def module_names(package: Path) -> dict[str, Path]:
    """Dotted name -> file of every module under ``package`` (a package is named by its folder)."""
    names = {}
    for path in sorted(package.rglob("*.py")):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _imported(node: ast.AST, module: str, is_package: bool, known: set[str]) -> Iterator[str]:
    """The known modules one import statement imports."""
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name in known:
                yield alias.name
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            parts = module.split(".") if is_package else module.split(".")[:-1]
            parts = parts[: len(parts) - (node.level - 1)]
            base = ".".join([*parts, *([node.module] if node.module else [])])
        else:
            base = node.module or ""
        for alias in node.names:
            submodule = f"{base}.{alias.name}"
            if submodule in known:
                yield submodule
            elif base in known:
                yield base


def import_graph(package: Path) -> Graph:
    """Module -> the modules it imports (itself left out)."""
    files = module_names(package)
    known = set(files)
    graph: Graph = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        targets = {t for node in ast.walk(tree) for t in _imported(node, module, is_package, known)}
        graph[module] = targets - {module}
    return graph


def mutual_pairs(graph: Graph) -> set[frozenset[str]]:
    return {frozenset({a, b}) for a, targets in graph.items() for b in targets if a in graph.get(b, ())}


def cycles(graph: Graph) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(root: str) -> None:
        # iterative, so a long import chain cannot hit the recursion limit
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, targets = work[-1]
            target = next(targets, None)
            if target is not None:
                if target not in index:
                    index[target] = low[target] = len(index)
                    stack.append(target)
                    on_stack.add(target)
                    work.append((target, iter(sorted(graph.get(target, ())))))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def problems(package: Path) -> list[str]:
    """Every import circle under ``package``, as sentences naming the modules."""
    graph = import_graph(package)
    found = [f"{a} and {b} import each other" for a, b in sorted(sorted(p) for p in mutual_pairs(graph))]
    found += [f"import circle: {' -> '.join(c)}" for c in cycles(graph) if len(c) > 2]
    return found


def test_no_import_circles() -> None:
    assert problems(PACKAGE) == []


def _planted_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "audiotag"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _append(path: Path, text: str) -> None:
    path.write_text(path.read_text(encoding="utf-8") + text, encoding="utf-8")


def test_a_planted_pair_is_caught(tmp_path: Path) -> None:
    copy = _planted_copy(tmp_path)
    assert problems(copy) == problems(PACKAGE)
    # core/paths imports core/atomic in a function, through a relative `from . import` of the submodule
    _append(copy / "core" / "atomic.py", "\nfrom audiotag.core import paths\n")
    _append(copy / "core" / "paths.py", "\n\ndef _planted() -> None:\n    from . import atomic\n")
    planted = set(problems(copy)) - set(problems(PACKAGE))
    assert planted == {"audiotag.core.atomic and audiotag.core.paths import each other"}


def test_a_planted_longer_circle_is_caught(tmp_path: Path) -> None:
    copy = _planted_copy(tmp_path)
    _append(copy / "core" / "atomic.py", "\nimport audiotag.core.paths\n")
    _append(copy / "core" / "paths.py", "\nfrom ..core.digests import file_sha256\n")
    _append(copy / "core" / "digests.py", "\nfrom audiotag.core.atomic import atomic_path\n")
    planted = set(problems(copy)) - set(problems(PACKAGE))
    assert planted == {"import circle: audiotag.core.atomic -> audiotag.core.digests -> audiotag.core.paths"}
