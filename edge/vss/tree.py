"""The VSS tree in use: which paths exist, their datatypes and units, and VSS's unit
definitions (which quantity each unit measures).

Trees come from COVESA's ``.vspec`` sources through vss-tools, the project's reference tool:
either once, into the JSON this package ships (the VSS 6.0 standard catalog, made by
:func:`generate`, see docs/vss.md), or at start from a tree the configuration points to: a
vss-tools JSON export (``vspec export json``; Kuksa's mapping files are such trees too) or a
``.vspec`` root file, with ``units.yaml`` and ``quantities.yaml`` beside it. Parsed trees are
kept per file and modification time, as vss-tools takes about half a second for the standard
catalog.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_TREE",
    "DEFAULT_UNITS",
    "VssNode",
    "VssTree",
    "VssTreeError",
    "VssUnit",
    "default_tree",
    "generate",
    "load_tree",
    "walk",
]

log = logging.getLogger(__name__)

_DATA = Path(__file__).parent / "data"
#: The bundled VSS 6.0 standard catalog (vss-tools JSON export) and its units.
DEFAULT_TREE = _DATA / "vss-6.0.json"
DEFAULT_UNITS = _DATA / "units-6.0.json"
#: Node types that carry values (branches, structs and properties do not).
LEAF_TYPES = frozenset({"sensor", "actuator", "attribute"})
NUMERIC_TYPES = frozenset(
    {"int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float", "double"}
)


class VssTreeError(ValueError):
    """A VSS tree (or its units) that cannot be read."""


@dataclass(frozen=True, slots=True)
class VssNode:
    """One leaf of the tree."""

    path: str
    type: str
    datatype: str
    unit: str = ""
    allowed: tuple[Any, ...] | None = None
    min: float | None = None
    max: float | None = None


@dataclass(frozen=True, slots=True)
class VssUnit:
    """One VSS unit: its key (as nodes name it), its long name and the quantity it measures."""

    key: str
    name: str
    quantity: str


@dataclass(frozen=True, slots=True)
class VssTree:
    """The leaves of a VSS tree by path, and the unit definitions by key."""

    source: str
    nodes: Mapping[str, VssNode]
    units: Mapping[str, VssUnit]

    def node(self, path: str) -> VssNode | None:
        """The leaf at ``path``, or None."""
        return self.nodes.get(path)


def walk(tree: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Mapping[str, Any]]]:
    """Every node of a nested VSS JSON tree (``{name: {..., "children": {...}}}``) as
    ``(path, node)``, parents before children."""
    for name, node in tree.items():
        if not isinstance(node, Mapping):
            continue
        path = f"{prefix}.{name}" if prefix else str(name)
        yield path, node
        children = node.get("children")
        if isinstance(children, Mapping):
            yield from walk(children, path)


def _number(value: Any) -> float | None:
    return float(value) if type(value) in (int, float) else None


def nodes_of(tree: Mapping[str, Any]) -> dict[str, VssNode]:
    """The leaves of a nested VSS JSON tree."""
    nodes: dict[str, VssNode] = {}
    for path, node in walk(tree):
        if node.get("type") in LEAF_TYPES and isinstance(node.get("datatype"), str):
            allowed = node.get("allowed")
            nodes[path] = VssNode(
                path=path,
                type=str(node["type"]),
                datatype=str(node["datatype"]),
                unit=str(node.get("unit") or ""),
                allowed=tuple(allowed) if isinstance(allowed, list) else None,
                min=_number(node.get("min")),
                max=_number(node.get("max")),
            )
    return nodes


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise VssTreeError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise VssTreeError(f"{path} is not JSON: {exc}") from exc


@lru_cache(maxsize=4)
def _units(path: Path, mtime: float) -> Mapping[str, VssUnit]:
    data = _read_json(path)
    if not isinstance(data, dict):
        raise VssTreeError(f"{path}: units must be a JSON object")
    return {
        key: VssUnit(key, str(v.get("unit", key)), str(v.get("quantity", "")))
        for key, v in data.items()
        if isinstance(v, dict)
    }


def _units_yaml(path: Path) -> dict[str, Any]:
    import yaml  # vss-tools' dependency, needed only with .vspec sources

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise VssTreeError(f"cannot read units {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise VssTreeError(f"{path}: units must be a mapping")
    return {
        str(k): {"unit": v.get("unit", k), "quantity": v.get("quantity", "")}
        for k, v in data.items()
        if isinstance(v, dict)
    }


def _vspec_json(vspec: Path) -> dict[str, Any]:
    """A ``.vspec`` root file through vss-tools, as its JSON exporter writes it."""
    try:
        from vss_tools.exporters.json import get_data
        from vss_tools.main import get_trees
    except ImportError as exc:
        raise VssTreeError(
            f"{vspec}: reading .vspec files needs vss-tools (pip install 'can-telemetry[vss]')"
        ) from exc
    folder = vspec.parent
    units = tuple(p for p in [folder / "units.yaml"] if p.is_file())
    quantities = tuple(p for p in [folder / "quantities.yaml"] if p.is_file())
    try:
        root, _ = get_trees(vspec=vspec, include_dirs=(folder,), units=units, quantities=quantities)
    except SystemExit as exc:  # vss-tools logs the reason and exits
        raise VssTreeError(f"{vspec}: vss-tools refused the specification (see its log)") from exc
    except Exception as exc:  # vss-tools raises many kinds; all mean the same here
        raise VssTreeError(f"{vspec}: {type(exc).__name__}: {exc}") from exc
    return {root.name: get_data(root)}


@lru_cache(maxsize=4)
def _load(path: Path, mtime: float) -> VssTree:
    if path.suffix == ".vspec":
        data = _vspec_json(path)
        units_file = path.parent / "units.yaml"
        units: Mapping[str, VssUnit] = (
            {k: VssUnit(k, v["unit"], v["quantity"]) for k, v in _units_yaml(units_file).items()}
            if units_file.is_file()
            else _units(DEFAULT_UNITS, DEFAULT_UNITS.stat().st_mtime)
        )
    else:
        data = _read_json(path)
        if not isinstance(data, dict):
            raise VssTreeError(f"{path}: a VSS JSON tree must be an object")
        units = _units(DEFAULT_UNITS, DEFAULT_UNITS.stat().st_mtime)
    nodes = nodes_of(data)
    if not nodes:
        raise VssTreeError(f"{path}: no VSS signal (sensor, actuator or attribute) in the tree")
    return VssTree(str(path), nodes, units)


def load_tree(path: str | Path | None = None) -> VssTree:
    """The VSS tree at ``path`` (a vss-tools JSON export or a ``.vspec`` root file), or the
    bundled VSS 6.0 catalog when None. Raises VssTreeError."""
    file = DEFAULT_TREE if path is None else Path(path)
    try:
        mtime = file.stat().st_mtime
    except OSError as exc:
        raise VssTreeError(f"no VSS tree at {file}: {exc.strerror or exc}") from exc
    return _load(file.resolve(), mtime)


def default_tree() -> VssTree:
    """The bundled VSS 6.0 standard catalog."""
    return load_tree(None)


def generate(spec_dir: str | Path, out_dir: str | Path, version: str) -> tuple[Path, Path]:
    """Write ``vss-<version>.json`` (the tree of ``spec_dir/VehicleSignalSpecification.vspec``
    through vss-tools, without descriptions and comments, which nothing here reads) and
    ``units-<version>.json`` (its ``units.yaml``) into ``out_dir``: how the bundled files are
    made (``python -m edge.vss.tree SPEC_DIR OUT_DIR VERSION``)."""
    spec, out = Path(spec_dir), Path(out_dir)
    data = _vspec_json(spec / "VehicleSignalSpecification.vspec")
    for _, node in walk(data):
        for key in ("description", "comment"):
            node.pop(key, None)  # type: ignore[attr-defined]
    tree_file, units_file = out / f"vss-{version}.json", out / f"units-{version}.json"
    out.mkdir(parents=True, exist_ok=True)
    tree_file.write_text(json.dumps(data, separators=(",", ":"), sort_keys=True) + "\n")
    units = _units_yaml(spec / "units.yaml")
    units_file.write_text(json.dumps(units, indent=1, sort_keys=True) + "\n")
    return tree_file, units_file


if __name__ == "__main__":  # pragma: no cover - the generator's command line
    import sys

    print(*generate(sys.argv[1], sys.argv[2], sys.argv[3]))
