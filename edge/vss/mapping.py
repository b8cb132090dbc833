"""Mapping files in Kuksa's format: which DBC signal feeds which VSS path, and how.

A mapping file is either a VSS JSON tree whose leaves carry ``dbc2vss`` blocks (Kuksa's
``vss_dbc.json``; the older ``dbc`` key is read too) or a ``.vspec`` overlay read through
vss-tools (flat ``Vehicle.Speed:`` entries with the same blocks)::

    "Speed": {"type": "sensor", "datatype": "float", "unit": "km/h",
              "dbc2vss": {"signal": "ESP_v_Signal", "interval_ms": 100,
                          "transform": {"math": "floor(x+0.5)"}}}

``signal`` is a DBC signal name, or ``Message.Signal`` where the name alone is ambiguous.
Each entry is checked against the bus's databases and the VSS tree in use when a configuration
is loaded (at start and on every twin update): the signal exists exactly once, the path is a
leaf of the tree, the datatypes fit (a fractional signal needs a transform to reach an integer
datatype, a string or boolean datatype a mapping), the transform compiles, its mapping's values
suit the datatype (and the leaf's ``allowed`` list), and the units agree, or convert (VSS unit
definitions, conversion factors from pint) when the entry has no transform of its own. Errors
name the file, the VSS path and the reason.

:class:`VssMapping` is the resolver other features use (campaign conditions, selection,
``getSignals``): ``link_config(config, databases).resolve("Vehicle.Speed")`` gives the
``(bus, message, signal, transform)`` links that feed a path. The databases are the processing
stage's to load (:func:`edge.processing.database.load_vss_mapping` loads them and calls
:func:`link_config`): this folder imports nothing of it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.bundled import bundled_mappings_dir
from edge.config.files import is_file
from edge.errors import ConfigError
from edge.vss.tree import NUMERIC_TYPES, VssNode, VssTree, VssTreeError, load_tree, walk
from edge.wire.schema import Schema, VssInfo
from edge.wire.transform import Transform, TransformError, compile_spec, linear

if TYPE_CHECKING:
    from cantools.database.can import Database
    from cantools.database.can.signal import Signal

    from edge.config.model import Config

__all__ = [
    "MappingEntry",
    "VssLink",
    "VssMapping",
    "VssMappingError",
    "bundled_mappings_dir",
    "link_config",
    "link_mapping",
    "read_mapping",
    "schema_with_vss",
]


_INT_RANGES = {
    "int8": (-(2**7), 2**7 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
    "uint8": (0, 2**8 - 1),
    "uint16": (0, 2**16 - 1),
    "uint32": (0, 2**32 - 1),
    "uint64": (0, 2**64 - 1),
}
#: DBC unit spellings seen in the wild (opendbc's VW files, Tesla's, the demo) -> VSS unit key.
#: Anything else is looked up as a VSS key, then given to pint as it is.
_UNIT_ALIASES = {
    "%": "percent",
    "deg": "degrees",
    "°": "degrees",
    "degC": "Celsius",
    "°C": "Celsius",
    "C": "Celsius",
    "kph": "km/h",
    "m/s2": "m/s^2",
    "deg/s": "degrees/s",
    "U/min": "rpm",
    "1/min": "rpm",
    "Unit_KiloMeterPerHour": "km/h",
    "Unit_MeterPerSecond": "m/s",
    "Unit_MeterPerSeconSquar": "m/s^2",
    "Unit_MinutInver": "rpm",
    "Unit_PerCent": "percent",
    "Unit_DegreOfArc": "degrees",
    "Unit_DegreOfArcPerSecon": "degrees/s",
    "Unit_Liter": "l",
    "Unit_NewtoMeter": "Nm",
    "Unit_Volt": "V",
    "Unit_Amper": "A",
    "Unit_KiloWatt": "kW",
    "Unit_DegreCelsi": "Celsius",
}
_FOLDED_ALIASES = {k.lower(): v for k, v in _UNIT_ALIASES.items() if k != "C"}
#: pint's names for VSS units whose long name it does not read.
_PINT_NAMES = {"Celsius": "degC", "Fahrenheit": "degF", "ratio": "dimensionless"}


class VssMappingError(ConfigError):
    """A mapping entry that cannot be used: ``field`` is the configuration key
    (``buses[0].vss_mapping``), the message names the file, the VSS path and the reason."""

    def __init__(self, field: str, file: str, path: str, reason: str) -> None:
        where = f"{file}: {path}" if path else file
        super().__init__(field, f"{where}: {reason}")
        self.file = file
        self.path = path


@dataclass(frozen=True, slots=True)
class MappingEntry:
    """One ``dbc2vss`` block as written, before it is checked against databases and tree."""

    path: str
    signal: str
    transform: Mapping[str, Any] | None
    interval_ms: int | None = None
    on_change: bool = False
    datatype: str | None = None
    file: str = ""


@dataclass(frozen=True, slots=True)
class VssLink:
    """A checked entry: VSS ``path`` is fed by ``message.signal`` on ``bus`` through
    ``transform`` (which includes any unit conversion), giving ``datatype`` values in ``unit``."""

    path: str
    bus: str
    message: str
    signal: str
    datatype: str
    unit: str
    transform: Transform
    interval_ms: int | None = None
    on_change: bool = False
    file: str = ""

    def to_wire(self, message_index: int, signal_index: int) -> list[Any]:
        """The schema's entry (docs/format.md):
        ``[message index, signal index, path, datatype, unit, transform spec]``."""
        spec = dict(self.transform.spec)
        return [message_index, signal_index, self.path, self.datatype, self.unit, spec]


@dataclass(frozen=True, slots=True)
class VssMapping:
    """Every link of a configuration, by VSS path and by DBC signal."""

    links: tuple[VssLink, ...] = ()
    _by_path: dict[str, tuple[VssLink, ...]] = field(init=False, repr=False, compare=False)
    _by_signal: dict[tuple[str, str, str], tuple[VssLink, ...]] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        by_path: dict[str, list[VssLink]] = {}
        by_signal: dict[tuple[str, str, str], list[VssLink]] = {}
        for link in self.links:
            by_path.setdefault(link.path, []).append(link)
            by_signal.setdefault((link.bus, link.message, link.signal), []).append(link)
        object.__setattr__(self, "_by_path", {k: tuple(v) for k, v in by_path.items()})
        object.__setattr__(self, "_by_signal", {k: tuple(v) for k, v in by_signal.items()})

    def resolve(self, path: str) -> tuple[VssLink, ...]:
        """The links feeding VSS ``path`` (one per bus that maps it; none when unmapped)."""
        return self._by_path.get(path, ())

    def paths(self) -> list[str]:
        """Every mapped VSS path, sorted."""
        return sorted(self._by_path)

    def of_signal(self, bus: str, message: str, signal: str) -> tuple[VssLink, ...]:
        """The links a DBC signal feeds."""
        return self._by_signal.get((bus, message, signal), ())


def _block(node: Mapping[str, Any]) -> Any:
    return node.get("dbc2vss", node.get("dbc"))


def _entries(
    items: Iterable[tuple[str, Mapping[str, Any]]], file: str, field: str
) -> list[MappingEntry]:
    entries: list[MappingEntry] = []
    for path, node in items:
        block = _block(node)
        if block is None:
            continue
        if not isinstance(block, Mapping):
            raise VssMappingError(field, file, path, "dbc2vss must be a map")
        signal = block.get("signal")
        if not isinstance(signal, str) or not signal:
            raise VssMappingError(field, file, path, "dbc2vss.signal must name a DBC signal")
        unknown = set(block) - {"signal", "interval_ms", "on_change", "transform"}
        if unknown:
            keys = ", ".join(sorted(map(str, unknown)))
            raise VssMappingError(field, file, path, f"unknown dbc2vss key(s): {keys}")
        interval = block.get("interval_ms")
        if interval is not None and (type(interval) is not int or interval < 0):
            raise VssMappingError(field, file, path, f"interval_ms {interval!r} is not >= 0")
        on_change = block.get("on_change", False)
        if type(on_change) is not bool:
            raise VssMappingError(field, file, path, f"on_change {on_change!r} is not a boolean")
        transform = block.get("transform")
        if transform is not None and not isinstance(transform, Mapping):
            raise VssMappingError(field, file, path, "transform must be a map (math or mapping)")
        datatype = node.get("datatype")
        entries.append(
            MappingEntry(
                path=path,
                signal=signal,
                transform=transform,
                interval_ms=interval,
                on_change=on_change,
                datatype=datatype if isinstance(datatype, str) else None,
                file=file,
            )
        )
    return entries


@lru_cache(maxsize=32)
def _read(file: Path, mtime: float, field: str) -> tuple[MappingEntry, ...]:
    name = str(file)
    if file.suffix == ".vspec":
        try:
            from vss_tools.vspec import load_vspec
        except ImportError as exc:
            reason = "reading .vspec overlays needs vss-tools (pip install 'can-telemetry[vss]')"
            raise VssMappingError(field, name, "", reason) from exc
        try:
            data = load_vspec([], [file]).data
        except Exception as exc:  # vss-tools raises many kinds; all mean a bad file here
            raise VssMappingError(field, name, "", f"{type(exc).__name__}: {exc}") from exc
        items: Iterable[tuple[str, Mapping[str, Any]]] = [
            (str(k), v) for k, v in data.items() if isinstance(v, Mapping)
        ]
    else:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise VssMappingError(field, name, "", f"cannot read: {exc.strerror or exc}") from exc
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise VssMappingError(field, name, "", f"not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise VssMappingError(field, name, "", "a mapping file must be a JSON object")
        items = walk(data)
    entries = _entries(items, name, field)
    if not entries:
        raise VssMappingError(field, name, "", "no dbc2vss entry in the file")
    return tuple(entries)


def find_mapping_file(name: str) -> Path:
    """``name`` as given, or the bundled mapping of that name (``vw_mqb.json``)."""
    path = Path(name)
    if not is_file(path) and path.name == name and is_file(bundled_mappings_dir() / name):
        return bundled_mappings_dir() / name
    return path


def read_mapping(name: str, field: str = "vss_mapping") -> tuple[MappingEntry, ...]:
    """The entries of one mapping file (JSON tree or ``.vspec`` overlay), unchecked: raises
    :class:`VssMappingError` for a file that cannot be read or a malformed block."""
    file = find_mapping_file(name)
    try:
        mtime = file.stat().st_mtime
    except OSError as exc:
        raise VssMappingError(field, name, "", f"no such file ({exc.strerror or exc})") from exc
    return _read(file.resolve(), mtime, field)


def _find_signal(db: Database, name: str) -> list[tuple[str, Signal]]:
    if "." in name:
        message_name, signal_name = name.split(".", 1)
        try:
            message = db.get_message_by_name(message_name)
        except KeyError:
            return []
        return [(message.name, s) for s in message.signals if s.name == signal_name]
    return [(m.name, s) for m in db.messages for s in m.signals if s.name == name]


def _signal_range(signal: Signal) -> tuple[float, float]:
    """The physical values a signal can take (its declared range, else what its bits allow)."""
    if signal.is_float:
        return -math.inf, math.inf
    if signal.is_signed:
        raw_low, raw_high = -(2 ** (signal.length - 1)), 2 ** (signal.length - 1) - 1
    else:
        raw_low, raw_high = 0, 2**signal.length - 1
    ends = sorted((raw_low * signal.scale + signal.offset, raw_high * signal.scale + signal.offset))
    if signal.minimum is None or signal.maximum is None or signal.minimum == signal.maximum:
        return float(ends[0]), float(ends[1])  # [0|0] in many DBCs means "not declared"
    return float(signal.minimum), float(signal.maximum)


def _integral(signal: Signal) -> bool:
    """Whether every physical value of ``signal`` is an integer."""
    return (
        not signal.is_float
        and float(signal.scale).is_integer()
        and float(signal.offset).is_integer()
    )


def _fits(value: Any, datatype: str) -> bool:
    if datatype == "boolean":
        return type(value) is bool
    if datatype == "string":
        return type(value) is str
    if datatype in _INT_RANGES:
        low, high = _INT_RANGES[datatype]
        return type(value) is int and low <= value <= high
    return type(value) in (int, float)


def _pint_name(key: str, tree: VssTree) -> str:
    if key in _PINT_NAMES:
        return _PINT_NAMES[key]
    unit = tree.units.get(key)
    return unit.name if unit is not None else key


def _vss_unit(dbc_unit: str, tree: VssTree) -> str:
    """The VSS unit key a DBC unit string means ('' when none is known)."""
    unit = _UNIT_ALIASES.get(dbc_unit) or _FOLDED_ALIASES.get(dbc_unit.lower(), dbc_unit)
    if unit in tree.units:
        return unit
    folded = {k.lower(): k for k in tree.units}
    return folded.get(unit.lower(), "")


def _conversion(dbc_unit: str, vss_unit: str, tree: VssTree) -> tuple[float, float] | None:
    """``(factor, offset)`` taking values in ``dbc_unit`` to ``vss_unit``; None when the units
    are the same or the DBC's is unknown (then values pass unconverted, as Kuksa passes them);
    raises ValueError when both are known and measure different quantities."""
    if not dbc_unit or not vss_unit:
        return None
    source = _vss_unit(dbc_unit, tree)
    vss_unit = _vss_unit(vss_unit, tree) or vss_unit  # an older tree's spelling ('celsius')
    if source == vss_unit:
        return None
    import pint  # only when units differ: importing it costs a third of a second

    registry = _registry()
    names = [_pint_name(source, tree) if source else _UNIT_ALIASES.get(dbc_unit, dbc_unit)]
    names.append(_pint_name(vss_unit, tree))
    try:
        units = [registry.Unit(n.replace(" per ", "/").replace(" ", "_")) for n in names]
    except (pint.errors.UndefinedUnitError, AttributeError, ValueError, TypeError):
        target = tree.units.get(vss_unit)
        if source and target is not None:  # two VSS units pint cannot read: compare quantities
            if tree.units[source].quantity != target.quantity:
                raise ValueError(f"DBC unit {dbc_unit!r} cannot become {vss_unit!r}") from None
            raise ValueError(f"no conversion known from {dbc_unit!r} to {vss_unit!r}") from None
        return None  # a DBC unit nobody knows: pass values unconverted
    try:
        zero = registry.Quantity(0.0, units[0]).to(units[1]).magnitude
        one = registry.Quantity(1.0, units[0]).to(units[1]).magnitude
    except pint.errors.DimensionalityError:
        raise ValueError(
            f"DBC unit {dbc_unit!r} and VSS unit {vss_unit!r} measure different quantities"
        ) from None
    factor, offset = float(one - zero), float(zero)
    return None if (factor, offset) == (1.0, 0.0) else (factor, offset)


@lru_cache(maxsize=1)
def _registry() -> Any:
    import pint

    return pint.UnitRegistry()


def _check(
    entry: MappingEntry, node: VssNode, signal: Signal, tree: VssTree
) -> tuple[Transform, str]:
    """The entry's transform (with any unit conversion) and the VSS unit of its values; raises
    ValueError or TransformError with the reason."""
    datatype = node.datatype
    if entry.datatype is not None and entry.datatype != datatype:
        raise ValueError(f"datatype {entry.datatype} differs from the tree's {datatype}")
    if datatype.endswith("[]") or datatype not in NUMERIC_TYPES | {"string", "boolean"}:
        raise ValueError(f"VSS datatype {datatype} cannot be fed by a CAN signal")
    spec = entry.transform or {}
    transform = compile_spec(spec, datatype)
    dbc_unit = signal.unit or ""
    if "mapping" in spec:
        names = {str(v) for v in (signal.choices or {}).values()}
        for source, target in transform.spec["mapping"]:
            if type(source) is str and source not in names:
                known = ", ".join(sorted(names)) or "none"
                raise ValueError(
                    f"mapping from {source!r} is not a value name of {signal.name} ({known})"
                )
            if not _fits(target, datatype):
                raise ValueError(f"mapping to {target!r} is not a {datatype} value")
            if node.allowed is not None and target not in node.allowed:
                raise ValueError(f"mapping to {target!r} is not allowed ({list(node.allowed)})")
        return transform, node.unit
    if "math" in spec:
        if datatype in ("string", "boolean"):
            raise ValueError(f"math gives numbers; VSS datatype {datatype} needs a mapping")
        return transform, node.unit
    # No transform: the DBC value itself, converted to the VSS unit when they differ.
    if datatype == "boolean":
        low, high = _signal_range(signal)
        if not (_integral(signal) and low >= 0 and high <= 1):
            raise ValueError(
                f"incompatible type: {signal.name} is not a 0/1 signal, boolean needs a mapping"
            )
        return transform, node.unit
    if datatype == "string":
        return transform, node.unit
    conversion = _conversion(dbc_unit, node.unit, tree)
    if conversion is not None:
        transform = linear(*conversion)
    if datatype in _INT_RANGES:
        if conversion is not None or not _integral(signal):
            what = f"scale {signal.scale}" if conversion is None else f"unit {dbc_unit}"
            raise ValueError(
                f"incompatible type: {signal.name} has fractional values ({what}); VSS "
                f"datatype {datatype} needs a math transform such as floor(x+0.5)"
            )
        low, high = _signal_range(signal)
        int_low, int_high = _INT_RANGES[datatype]
        if low < int_low or high > int_high:
            raise ValueError(
                f"incompatible type: {signal.name} spans {low:g}..{high:g}, beyond {datatype}"
            )
    return transform, node.unit


def link_mapping(
    entries: Sequence[MappingEntry],
    bus: str,
    db: Database,
    tree: VssTree,
    field: str = "vss_mapping",
) -> list[VssLink]:
    """Check a bus's mapping entries against its database and the VSS tree; the links, or
    :class:`VssMappingError` for the first entry that does not hold."""
    links: list[VssLink] = []
    seen: dict[str, str] = {}
    for entry in entries:
        file, path = entry.file, entry.path
        node = tree.node(path)
        if node is None:
            raise VssMappingError(field, file, path, f"unknown VSS path (not in {tree.source})")
        if path in seen:
            raise VssMappingError(field, file, path, f"mapped twice (also in {seen[path]})")
        seen[path] = file
        found = _find_signal(db, entry.signal)
        if not found:
            raise VssMappingError(field, file, path, f"unknown DBC signal {entry.signal!r}")
        if len({_definition(s) for _, s in found}) > 1:
            messages = ", ".join(sorted(m for m, _ in found))
            raise VssMappingError(
                field,
                file,
                path,
                f"ambiguous DBC signal {entry.signal!r}: defined differently in messages "
                f"{messages}; write it as Message.Signal",
            )
        # The same definition in several messages (Kuksa's Tesla file has one): each feeds the
        # path, as in Kuksa, which maps by signal name whatever message brings it.
        for message, signal in found:
            try:
                transform, unit = _check(entry, node, signal, tree)
            except (TransformError, ValueError) as exc:
                raise VssMappingError(field, file, path, str(exc)) from exc
            links.append(
                VssLink(
                    path=path,
                    bus=bus,
                    message=message,
                    signal=signal.name,
                    datatype=node.datatype,
                    unit=unit,
                    transform=transform,
                    interval_ms=entry.interval_ms,
                    on_change=entry.on_change,
                    file=file,
                )
            )
    return links


def _definition(signal: Signal) -> tuple[Any, ...]:
    """What makes two signals of one name give the same values."""
    choices = tuple(sorted((int(k), str(v)) for k, v in (signal.choices or {}).items()))
    return (
        signal.length,
        signal.is_signed,
        signal.is_float,
        signal.scale,
        signal.offset,
        signal.unit or "",
        choices,
    )


def link_config(config: Config, databases: Sequence[Database]) -> VssMapping:
    """Every bus's mapping files of ``config``, checked against its databases (one per bus, in
    bus order: the processing stage loads them, see
    :func:`edge.processing.database.load_vss_mapping`) and the configured VSS tree. Raises
    :class:`ConfigError` (a :class:`VssMappingError` naming file, path and reason for a bad
    entry)."""
    buses = config.buses
    if not any(b.vss_mapping for b in buses):
        return VssMapping()
    try:
        tree = load_tree(config.vss_tree)
    except VssTreeError as exc:
        raise ConfigError("vss_tree", str(exc)) from exc
    links: list[VssLink] = []
    for i, (bus, db) in enumerate(zip(buses, databases, strict=True)):
        field = f"buses[{i}].vss_mapping"
        entries = [e for name in bus.vss_mapping for e in read_mapping(name, field)]
        links.extend(link_mapping(entries, bus.name, db, tree, field))
    return VssMapping(tuple(links))


def schema_with_vss(schema: Schema, mapping: VssMapping) -> Schema:
    """``schema`` with the VSS paths its series feed (a mapped signal not selected feeds none)."""
    if not mapping.links:
        return schema
    infos: list[VssInfo] = []
    for m, message in enumerate(schema.messages):
        bus = schema.buses[message.bus]
        for s, signal in enumerate(message.signals):
            for link in mapping.of_signal(bus, message.name, signal.name):
                spec = dict(link.transform.spec)
                infos.append(VssInfo(m, s, link.path, link.datatype, link.unit, spec))
    return replace(schema, vss=tuple(infos))
