"""The code's shape, checked from its source: the rooms of the edge runtime, the direction of
imports between them, no import cycle anywhere in ``sortline`` (imports inside functions
included), and the size limits that keep each part easy to enter (docs/layout.md)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"hardware": "sortline.hardware", "edge_runtime": "sortline.edge_runtime",
            "export": "sortline.export", "train": "sortline.train"}
EDGE = "sortline.edge_runtime"
# Each room may import the rooms listed for it (and the top-level modules of edge_runtime); the
# list is the dependency direction: model ← learning ← detection, labelling, station ← daemon ← cli;
# nothing imports the cli (the desktop's commands take its shared flags: not a room of the edge).
ROOMS = {
    "model": set(),
    "web": set(),
    "learning": {"model"},
    "detection": {"model", "learning"},
    "labelling": {"model", "learning", "web", "station"},
    "station": {"model"},
    "watch": {"model", "learning", "station"},
    "plant": {"model", "station"},
    "hil": {"model", "learning", "station", "daemon", "watch", "plant"},
    "daemon": {"model", "learning", "station", "web", "watch", "plant"},
    "cli": {"model", "learning", "detection", "labelling", "station", "daemon", "hil", "web", "watch", "plant"},
}
TOP_LEVEL_MAX = 10
CLASS_MAX_LINES = 200
FUNCTION_MAX_LINES = 60


def _modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for folder, package in PACKAGES.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            is_package = parts[-1] == "__init__"
            name = ".".join([package, *(parts[:-1] if is_package else parts)])
            found[name] = (path, is_package)
    return found


MODULES = _modules()


def _imports(name: str) -> set[str]:
    """Every sortline module that ``name`` imports, wherever the import statement sits."""
    path, is_package = MODULES[name]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            targets.add(module)
            targets.update(f"{module}.{alias.name}" for alias in node.names)  # from package import module
    resolved = set()
    for target in targets:
        if name.startswith(target + "."):
            continue  # a module's own package: ``from . import sibling`` runs nothing new
        if target in MODULES:
            resolved.add(target)
            # importing a.b.c runs a.b's __init__ too, unless the importer lives inside a.b
            parts = target.split(".")
            for i in range(2, len(parts)):
                parent = ".".join(parts[:i])
                if parent in MODULES and not name.startswith(parent + ".") and name != parent:
                    resolved.add(parent)
    resolved.discard(name)
    return resolved


GRAPH = {name: _imports(name) for name in MODULES}


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; the components of more than one node."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
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
    return found


def _room(module: str) -> str | None:
    """The edge runtime's room of a module, or None for its top-level modules."""
    parts = module.split(".")
    if not module.startswith(EDGE + ".") or len(parts) < 4:
        return None
    return parts[2] if f"{EDGE}.{parts[2]}" in MODULES and MODULES[f"{EDGE}.{parts[2]}"][1] else None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_sortline() -> None:
    assert _strongly_connected(GRAPH) == []


def test_rooms_import_in_one_direction() -> None:
    wrong = []
    for module, targets in GRAPH.items():
        room = _room(module)
        if room is None:
            continue
        assert room in ROOMS, f"{module}: room {room!r} has no place in the dependency list"
        for target in targets:
            other = _room(target)
            if target.startswith(EDGE) and other not in (None, room) and other not in ROOMS[room]:
                wrong.append(f"{module} → {target}")
    assert wrong == []


def test_edge_runtime_and_drivers_do_not_import_the_desktop_or_the_simulators() -> None:
    wrong = []
    for module, targets in GRAPH.items():
        for target in targets:
            if module.startswith(("sortline.edge_runtime", "sortline.hardware")) and target.startswith(
                    ("sortline.train", "sortline.export")):
                wrong.append(f"{module} → {target}")
            product = module.startswith(EDGE) and _room(module) != "hil" or (
                module.startswith("sortline.hardware") and not module.startswith("sortline.hardware.sim"))
            if product and target.startswith("sortline.hardware.sim"):
                wrong.append(f"{module} → {target}")
    assert wrong == []


def test_the_edge_runtime_has_few_top_level_modules() -> None:
    top = [p.name for p in (ROOT / "edge_runtime").glob("*.py") if p.name != "__init__.py"]
    assert len(top) <= TOP_LEVEL_MAX, sorted(top)


def test_every_room_has_a_map() -> None:
    for room in ROOMS:
        doc = ast.get_docstring(ast.parse((ROOT / "edge_runtime" / room / "__init__.py").read_text())) or ""
        modules = sorted(p.stem for p in (ROOT / "edge_runtime" / room).glob("*.py") if not p.stem.startswith("__"))
        missing = [m for m in modules if f"``{m}.py``" not in doc]
        assert not missing, f"edge_runtime/{room}/__init__.py's map does not name {missing}"


@pytest.mark.parametrize("kind,limit", [(ast.ClassDef, CLASS_MAX_LINES), (ast.FunctionDef, FUNCTION_MAX_LINES)])
def test_edge_runtime_classes_and_functions_stay_small(kind: type, limit: int) -> None:
    over = defaultdict(list)
    for path in (ROOT / "edge_runtime").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            kinds = (kind, ast.AsyncFunctionDef) if kind is ast.FunctionDef else (kind,)
            if isinstance(node, kinds) and node.end_lineno - node.lineno + 1 > limit:
                over[str(path.relative_to(ROOT))].append(f"{node.name} ({node.end_lineno - node.lineno + 1})")
    assert dict(over) == {}
