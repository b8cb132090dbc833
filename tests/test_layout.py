"""The import graph of edge/ (issue 15): what may import what, read from the source with ast.

Rules that hold and must keep holding:

- no import cycle between modules at import time (module-level imports; those under
  ``if TYPE_CHECKING:`` and inside functions do not run at import time);
- the wire format (``edge/wire/``) imports nothing of the project but ``edge.errors``, at any
  level: the cloud side reads payloads with it alone;
- the cloud half (``edge/lake/``) imports only the wire format and ``edge.errors`` besides itself;
- nothing imports the simulator but the commands that run it (``edge/cli/``);
- nothing imports the command line or the IoT Edge control plane but the layers above them;
- the folders of ``edge/`` import each other one way (every import, lazy ones inside functions
  included; those under ``if TYPE_CHECKING:`` are types only). From the bottom up: ``errors``,
  ``clock``, ``bundled``; ``config``, ``wire``, ``simulator``; ``ingest``, ``delivery``, ``vss``,
  ``lake``; ``processing``; ``campaigns``, ``metrics``; ``diagnostics``, ``runloop``;
  ``pipeline``; ``iotedge``; ``cli`` (the README's Development section says so too).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EDGE = ROOT / "edge"


@dataclass(frozen=True)
class Import:
    importer: str  # the importing module, e.g. edge.wire.codec
    imported: str  # the project module it names (resolved to an existing module)
    at_import_time: bool  # module level, not under TYPE_CHECKING
    type_only: bool = False  # under TYPE_CHECKING: never runs


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in EDGE.rglob("*.py")}


def _resolve(name: str) -> str | None:
    """The project module ``name`` refers to (``edge.x.y.Name`` -> ``edge.x.y``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str, path: Path) -> list[Import]:
    tree = ast.parse(path.read_text(), str(path))
    deferred: set[int] = set()  # nodes that do not run at import time
    types_only: set[int] = set()  # nodes that never run
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            deferred.update(id(n) for n in ast.walk(node))
            types_only.update(id(n) for n in ast.walk(node))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            deferred.update(id(n) for n in ast.walk(node) if n is not node)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            names = [f"{base}.{alias.name}" for alias in node.names]
        for name in names:
            if name.split(".")[0] != "edge":
                continue
            target = _resolve(name)
            if target is not None and target != module:
                found.append(
                    Import(module, target, id(node) not in deferred, id(node) in types_only)
                )
    return found


IMPORTS = [i for module, path in sorted(MODULES.items()) for i in _imports(module, path)]


def _in(module: str, *packages: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


def test_the_graph_was_read() -> None:
    assert "edge.wire.codec" in MODULES
    assert Import("edge.wire.codec", "edge.wire.schema", True) in IMPORTS
    assert any(not i.at_import_time for i in IMPORTS)  # lazy imports are seen too


def first_cycle(graph: Mapping[str, set[str]], nodes: Iterable[str]) -> list[str] | None:
    """The first cycle of ``graph`` met by a depth-first walk from ``nodes`` in name order
    (``[a, b, a]``), None when there is none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph.get(node, ())):
            cycle = visit(target)
            if cycle:
                return cycle
        path.pop()
        done.add(node)
        return None

    for node in sorted(nodes):
        cycle = visit(node)
        if cycle:
            return cycle
    return None


def test_no_import_cycle_at_import_time() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    for i in IMPORTS:
        if i.at_import_time:
            graph[i.importer].add(i.imported)
    cycle = first_cycle(graph, MODULES)
    if cycle:
        pytest.fail("import cycle: " + " -> ".join(cycle))


@pytest.mark.parametrize(
    ("package", "allowed"),
    [
        ("edge.wire", ("edge.wire", "edge.errors")),
        ("edge.lake", ("edge.lake", "edge.wire", "edge.errors")),
    ],
)
def test_the_cloud_side_needs_nothing_of_the_vehicle_side(
    package: str, allowed: tuple[str, ...]
) -> None:
    # ``edge`` itself is the package's __init__, run by any import of a submodule; its own
    # imports are checked by tests/lake/test_package.py (the lake runs without the edge extra).
    outside = sorted(
        f"{i.importer} imports {i.imported}"
        for i in IMPORTS
        if _in(i.importer, package) and not _in(i.imported, *allowed) and i.imported != "edge"
    )
    assert outside == []


def test_only_the_commands_import_the_simulator() -> None:
    importers = sorted(
        {
            i.importer
            for i in IMPORTS
            if _in(i.imported, "edge.simulator")
            and not _in(i.importer, "edge.simulator", "edge.cli")
        }
    )
    assert importers == []


def test_the_command_line_and_the_control_plane_are_on_top() -> None:
    wrong = sorted(
        f"{i.importer} imports {i.imported}"
        for i in IMPORTS
        if (_in(i.imported, "edge.cli") and not _in(i.importer, "edge.cli", "edge.__main__"))
        or (
            _in(i.imported, "edge.iotedge")
            and not _in(i.importer, "edge.iotedge", "edge.cli", "edge.__main__")
        )
    )
    assert wrong == []


def _folder(module: str) -> str:
    """The folder of ``edge/`` a module is in (``edge.processing.decode`` -> ``processing``); a
    module at the top (``edge.pipeline``) is one of its own, the package's ``__init__`` too."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "edge"


def test_the_folders_import_each_other_one_way() -> None:
    graph: dict[str, set[str]] = defaultdict(set)
    why: dict[tuple[str, str], str] = {}
    for i in IMPORTS:
        importer, imported = _folder(i.importer), _folder(i.imported)
        if importer != imported and not i.type_only:
            graph[importer].add(imported)
            why.setdefault((importer, imported), f"{i.importer} imports {i.imported}")
    assert {"config", "processing", "campaigns", "vss"} <= set(graph)  # the graph was read
    cycle = first_cycle(graph, list(graph))
    if cycle:
        steps = [why[(a, b)] for a, b in pairwise(cycle)]
        pytest.fail("folders import each other: " + " -> ".join(cycle) + f" ({'; '.join(steps)})")
