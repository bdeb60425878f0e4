"""The import graph: no cycles, and every layer imports only the layers below it.

Read from the source with ``ast`` (nothing is imported): every ``import`` counts, at module
level, under ``if TYPE_CHECKING:`` and inside functions alike, since a lazy import is still a
dependency. A package does not count as importing its submodules by being their parent.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("htrq", "api", "worker", "migrations")

#: (importer, imported, why): no module under the first may import one under the second.
FORBIDDEN = [
    ("htrq", "api", "the core serves the API; it never imports it"),
    ("htrq", "worker", "the core is installed without the worker (the API image)"),
    ("htrq", "migrations", "the migrations import the core"),
    ("api", "worker", "the API image has no worker (nor torch)"),
    ("worker", "api", "the worker runs without the API"),
    ("worker.recognition", "worker.serving", "reading knows no Celery, database or storage"),
    ("worker.recognition", "worker.training", "training builds on reading, not the reverse"),
    ("worker.segmentation", "worker.recognition", "reading builds on segmentation"),
    ("worker.segmentation", "worker.serving", "segmentation knows no Celery"),
    ("worker.segmentation", "worker.training", "training builds on segmentation"),
    ("worker.training", "worker.serving", "training runs without the service"),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def source_modules() -> dict[str, Path]:
    return {
        module_name(p): p
        for package in PACKAGES
        for p in sorted((ROOT / package).rglob("*.py"))
        if ".venv" not in p.parts
    }


def imported(tree: ast.Module, module: str, is_package: bool, known: set[str]) -> Iterator[str]:
    """The project modules ``tree`` imports: ``from a.b import c`` names ``a.b.c`` when that
    is a module, else ``a.b``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = module.split(".") if is_package else module.split(".")[:-1]
                up = here[: len(here) - (node.level - 1)]
                base = ".".join([*up, base] if base else up)
            names = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        else:
            continue
        for name in names:
            # The longest known module the name lies in (``a.b.Class`` -> ``a.b``).
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module:
                yield name


def import_graph() -> dict[str, set[str]]:
    modules = source_modules()
    known = set(modules)
    return {
        name: set(imported(ast.parse(path.read_text()), name, path.name == "__init__.py", known))
        for name, path in modules.items()
    }


def under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read() -> None:
    """The check sees the modules and edges it is about (a broken reader would pass all)."""
    graph = import_graph()
    assert "worker.recognition.pipeline" in graph["worker.serving.app"]
    assert "worker.segmentation.base" in graph["worker.segmentation.classical"]
    assert "htrq.settings" in graph["htrq.storage"]


def test_no_module_imports_itself_back() -> None:
    """No import cycles among the project's modules, lazy imports included."""
    assert cycles(import_graph()) == []


@pytest.mark.parametrize(("importer", "imported_", "why"), FORBIDDEN)
def test_layers_import_downwards(importer: str, imported_: str, why: str) -> None:
    """Each layer imports only the layers below it."""
    wrong = sorted(
        f"{m} imports {d}"
        for m, deps in import_graph().items()
        if under(m, importer)
        for d in deps
        if under(d, imported_)
    )
    assert wrong == [], f"{importer} must not import {imported_} ({why})"


def test_cycles_and_forbidden_imports_are_found() -> None:
    """The checks fail on the graph of a cycle and of a core module that imports the worker."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    tree = ast.parse("def f():\n    from worker.serving.app import create_app\n")
    known = {"htrq.jobs", "worker.serving.app", "worker.serving"}
    assert list(imported(tree, "htrq.jobs", True, known)) == ["worker.serving.app"]
