"""The house keeps its shape: the import-linter contracts in .importlinter hold, no two modules
import each other in a loop (imports inside functions count), and no module grows past its room.

Each check reads the code as it is, through grimp (import-linter's own graph builder), so a new
arrow that breaks a layer, a cycle, or an oversized module fails here with its name.
"""
from __future__ import annotations

import ast
import configparser
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent
APPS = ("dashboard", "serving", "gates", "health")
# A module may pass this only with its docstring saying why it stays whole (STYLE.md: rooms of a
# readable size); the list names those, so growing another one past it is a decision, not a drift.
MAX_LINES = 500
ALLOWED_LONGER: dict[str, str] = {
    "health.probes.gpu": "the NVML reader is shipped to every Ray node by value as one module object; its docstring says why it stays whole",
}


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*APPS, cache_dir=None)


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Every strongly connected set of two or more modules (Tarjan), each sorted, the largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(module: str) -> None:
        # Iterative, so a long chain of imports cannot overflow Python's stack.
        work = [(module, iter(sorted(graph.find_modules_directly_imported_by(module))))]
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.find_modules_directly_imported_by(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
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

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return sorted(found, key=len, reverse=True)


def described(graph: grimp.ImportGraph, cycle: list[str]) -> str:
    """One cycle as the imports that close it, with their line numbers, for the failure message."""
    members = set(cycle)
    arrows = []
    for importer in cycle:
        for imported in sorted(graph.find_modules_directly_imported_by(importer) & members):
            lines = graph.get_import_details(importer=importer, imported=imported)
            where = ", ".join(f"l.{d['line_number']}" for d in lines)
            arrows.append(f"  {importer} -> {imported} ({where})")
    return "\n".join(arrows)


def test_the_import_linter_contracts_hold():
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache", "--config", str(ROOT / ".importlinter")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    print(done.stdout[-6000:])
    assert done.returncode == 0, f"an import breaks a contract (.importlinter):\n{done.stdout[-6000:]}\n{done.stderr[-2000:]}"
    assert "0 broken" in done.stdout


def layer_modules() -> set[str]:
    config = configparser.ConfigParser()
    config.read(ROOT / ".importlinter")
    layers = config["importlinter:contract:layers"]["layers"].strip().splitlines()
    return {name.strip() for layer in layers for name in layer.split(":")}


def is_package_face(module: str) -> bool:
    """An __init__.py that defines nothing: it only hands names on (its imports are still arrows)."""
    file = ROOT / Path(*module.split(".")) / "__init__.py"
    if not file.exists():
        return False
    body = ast.parse(file.read_text()).body
    return all(isinstance(node, (ast.Import, ast.ImportFrom, ast.Expr)) or (isinstance(node, ast.Assign) and all(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets)) for node in body)


def test_every_module_stands_on_a_layer(graph):
    """A module the layers contract does not name is checked by nothing: a new one must be placed
    on the map (.importlinter) when it is written."""
    listed = layer_modules()

    def placed(module: str) -> bool:
        parts = module.split(".")
        return any(".".join(parts[:n]) in listed for n in range(1, len(parts) + 1))

    unplaced = sorted(
        module for module in graph.modules
        if not placed(module) and ".migrations" not in module and not is_package_face(module)
    )
    assert not unplaced, f"modules on no layer of .importlinter's layers contract: {unplaced}"


def test_no_module_imports_itself_through_others(graph):
    found = cycles(graph)
    assert not found, "import cycles between modules (break one arrow: move what both need down, or invert it):\n" + "\n\n".join(
        described(graph, cycle) for cycle in found
    )


def test_the_cycle_finder_sees_a_loop_through_a_function_level_import(tmp_path, monkeypatch):
    """The check above would pass vacuously if grimp missed imports inside functions: a two-module
    loop closed by one is found."""
    package = tmp_path / "looped"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tasks.py").write_text("from looped import domain\n")
    (package / "domain.py").write_text("def enqueue():\n    from looped.tasks import run\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    loop = grimp.build_graph("looped", cache_dir=None)
    assert cycles(loop) == [["looped.domain", "looped.tasks"]]


def test_no_module_is_longer_than_a_room(graph):
    too_long = {}
    for module in graph.modules:
        path = ROOT / Path(*module.split("."))
        file = path / "__init__.py" if path.is_dir() else path.with_suffix(".py")
        if "migrations" in module.split(".") or not file.exists():
            continue
        lines = len(file.read_text().splitlines())
        if lines > MAX_LINES and module not in ALLOWED_LONGER:
            too_long[module] = lines
    assert not too_long, f"modules over {MAX_LINES} lines: split them by reason to change, or say in ALLOWED_LONGER why not: {too_long}"
