"""The ``[diagnostics]`` configuration, validated into frozen dataclasses.

Nothing is transmitted on a bus unless a ``[[diagnostics.buses]]`` entry names it: that is
what "listen-only by default" means. The same parser serves the TOML file and the module
twin (:func:`edge.config.model.parse_config` calls :func:`parse_diagnostics`). Options are
documented in docs/diagnostics.md.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from edge.config.table import Table

__all__ = [
    "DID_KINDS",
    "DiagBusConfig",
    "DiagnosticsConfig",
    "DidConfig",
    "J1939DiagConfig",
    "ObdConfig",
    "ObdPid",
    "UdsEcuConfig",
    "parse_diagnostics",
]

DidKind = Literal["ascii", "hex", "uint"]
DID_KINDS: tuple[DidKind, ...] = ("ascii", "hex", "uint")


@dataclass(frozen=True, slots=True)
class ObdPid:
    """A mode 01 PID requested every ``period`` seconds."""

    pid: int
    period: float


@dataclass(frozen=True, slots=True)
class ObdConfig:
    """OBD-II (SAE J1979) requests: physically addressed to one ECU (``request_id`` ->
    ``response_id``), or with ``functional`` to every OBD ECU at once (0x7DF; answers from
    0x7E8-0x7EF, each ECU its own source)."""

    request_id: int = 0x7E0
    response_id: int = 0x7E8
    functional: bool = False
    pids: tuple[ObdPid, ...] = ()
    vin: bool = True  # mode 09 PID 02, once per start
    discover: bool = True  # mode 01 PIDs 00/20/40...: skip PIDs the ECU does not support


@dataclass(frozen=True, slots=True)
class DidConfig:
    """A UDS data identifier read with ReadDataByIdentifier (0x22)."""

    did: int
    name: str
    kind: DidKind = "hex"


@dataclass(frozen=True, slots=True)
class UdsEcuConfig:
    """One UDS (ISO 14229) ECU on ISO-TP."""

    name: str
    request_id: int
    response_id: int
    extended_id: bool = False
    dtc_period: float = 60.0  # ReadDTCInformation 0x19 0x02 every so often; 0: on demand only
    dtc_status_mask: int = 0xFF
    dids: tuple[DidConfig, ...] = ()
    did_period: float = 0.0  # 0: the DIDs are read once per start


@dataclass(frozen=True, slots=True)
class J1939DiagConfig:
    """J1939 diagnostics: DM1 (active DTCs, received) and the VIN (requested)."""

    dm1: bool = True
    vin: bool = True
    source_address: int = 0xF9  # ours: the off-board diagnostic tool's


@dataclass(frozen=True, slots=True)
class DiagBusConfig:
    """Diagnostics enabled on one bus (and so transmitting on it)."""

    bus: str
    max_requests_per_second: float = 5.0
    error_pause: float = 10.0
    timeout: float = 1.0
    when: str | None = None
    allow_clear: bool = False
    obd: ObdConfig | None = None
    uds: tuple[UdsEcuConfig, ...] = ()
    j1939: J1939DiagConfig | None = None

    def ecu(self, name: str) -> UdsEcuConfig:
        """The UDS ECU called ``name``."""
        for ecu in self.uds:
            if ecu.name == name:
                return ecu
        raise KeyError(name)


@dataclass(frozen=True, slots=True)
class DiagnosticsConfig:
    """Every bus diagnostics are enabled on (none by default: listen-only)."""

    buses: tuple[DiagBusConfig, ...] = ()

    def for_bus(self, name: str) -> DiagBusConfig | None:
        """The diagnostics of bus ``name``, None when it is listen-only."""
        return next((b for b in self.buses if b.bus == name), None)


def parse_diagnostics(t: Table, bus_names: Sequence[str]) -> DiagnosticsConfig:
    """Validate the ``[diagnostics]`` table (absent: listen-only everywhere)."""
    buses = []
    for bt in t.tables("buses"):
        buses.append(_bus(bt, bus_names))
    t.finish()
    names = [b.bus for b in buses]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise t.error(f"buses[{i}].bus", f"diagnostics for bus {name!r} given twice")
    return DiagnosticsConfig(buses=tuple(buses))


def _can_id(t: Table, key: str, default: int | None = None, *, extended: bool = False) -> int:
    top = 0x1FFFFFFF if extended else 0x7FF
    value: int = (
        t.int(key, default, min=0, max=top) if default is not None else t.int(key, min=0, max=top)
    )
    return value


def _bus(t: Table, bus_names: Sequence[str]) -> DiagBusConfig:
    bus = t.str("bus")
    if bus not in bus_names:
        raise t.error("bus", f"no bus named {bus!r}")
    when = t.str("when", None)
    if when is not None:
        # Syntax here; names are resolved against the bus's databases when the diagnostics are
        # built, before anything starts (edge.campaigns.expression, as campaign conditions).
        try:
            ast.parse(when.strip(), mode="eval")
        except SyntaxError as exc:
            column = exc.offset or len(when.strip()) + 1
            raise t.error("when", f"column {column}: syntax error: {exc.msg}") from None
        except (RecursionError, MemoryError):  # nesting past what the parser takes
            raise t.error("when", "nested too deep") from None
    obd = _obd(t.table("obd")) if t.has("obd") else None
    uds = tuple(_uds(u) for u in t.tables("uds"))
    ecus = [u.name for u in uds]
    for i, name in enumerate(ecus):
        if name in ecus[:i]:
            raise t.error(f"uds[{i}].name", f"duplicate ECU name {name!r}")
    j1939 = _j1939(t.table("j1939")) if t.has("j1939") else None
    config = DiagBusConfig(
        bus=bus,
        max_requests_per_second=t.float(
            "max_requests_per_second", 5.0, min=0.0, max=1000.0, min_exclusive=True
        ),
        error_pause=t.float("error_pause", 10.0, min=0.0, max=3600.0),
        timeout=t.float("timeout", 1.0, min=0.05, max=30.0),
        when=when,
        allow_clear=t.bool("allow_clear", False),
        obd=obd,
        uds=uds,
        j1939=j1939,
    )
    t.finish()
    if obd is None and not uds and j1939 is None:
        raise t.error("bus", "enables diagnostics but asks for nothing (obd, uds or j1939)")
    return config


def _obd(t: Table) -> ObdConfig:
    pids = []
    for pt in t.tables("pids"):
        pids.append(ObdPid(pid=pt.int("pid", min=1, max=0xFF), period=pt.float("period", min=0.05)))
        pt.finish()
    functional = t.bool("functional", False)
    if functional:
        for key in ("request_id", "response_id"):
            if t.has(key):
                raise t.error(
                    key,
                    "not with functional = true (requests go to 0x7DF, answers from 0x7E8-0x7EF)",
                )
    config = ObdConfig(
        request_id=_can_id(t, "request_id", 0x7E0),
        response_id=_can_id(t, "response_id", 0x7E8),
        functional=functional,
        pids=tuple(pids),
        vin=t.bool("vin", True),
        discover=t.bool("discover", True),
    )
    t.finish()
    if config.request_id == config.response_id:  # ISO-TP cannot tell requests from answers
        raise t.error("response_id", "must differ from request_id")
    return config


def _uds(t: Table) -> UdsEcuConfig:
    name = t.str("name")
    extended = t.bool("extended_id", False)
    dids = []
    for dt in t.tables("dids"):
        did = dt.int("did", min=0, max=0xFFFF)
        dids.append(
            DidConfig(
                did=did,
                name=dt.str("name", f"{did:04X}"),
                kind=dt.str("kind", "hex", choices=DID_KINDS),
            )
        )
        dt.finish()
    config = UdsEcuConfig(
        name=name,
        request_id=_can_id(t, "request_id", extended=extended),
        response_id=_can_id(t, "response_id", extended=extended),
        extended_id=extended,
        dtc_period=t.float("dtc_period", 60.0, min=0.0),
        dtc_status_mask=t.int("dtc_status_mask", 0xFF, min=1, max=0xFF),
        dids=tuple(dids),
        did_period=t.float("did_period", 0.0, min=0.0),
    )
    t.finish()
    if config.request_id == config.response_id:
        raise t.error("response_id", "must differ from request_id")
    return config


def _j1939(t: Table) -> J1939DiagConfig:
    config = J1939DiagConfig(
        dm1=t.bool("dm1", True),
        vin=t.bool("vin", True),
        source_address=t.int("source_address", 0xF9, min=0, max=0xFD),
    )
    t.finish()
    return config
