"""Diagnostics of every enabled bus, as the pipeline and the direct methods see them, and the
writer that puts diagnostics records into the payload stream.

Records travel in a data payload of their own, appended to the spool as soon as they are made
(a DTC that appears or clears is sent at once): an empty body, and the records in the envelope's
``ext`` map under ``diag`` (docs/format.md). The payload carries the pipeline's schema id and
stream like any data payload, so the spool numbers it and the cloud orders it with the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from edge.clock import Clock, SystemClock
from edge.config.model import Config
from edge.delivery.appender import Append, PayloadAppender
from edge.diagnostics.scheduler import BusDiagnostics
from edge.diagnostics.uds import did_text
from edge.errors import ConfigError, SpoolError
from edge.wire.codec import KIND_DATA, Codec
from edge.wire.diagnostics import EXT_KEY, DiagRecord, records_to_wire

__all__ = ["DTC_PRIORITY", "Diagnostics", "DiagnosticsWriter"]

log = logging.getLogger(__name__)


#: Spool delivery priority of a payload with DTC events (0 most urgent ... 9; the spool's
#: default is 5, campaigns' schemas go at 0): they overtake a backlog of ordinary data.
DTC_PRIORITY = 1


class DiagnosticsWriter:
    """Appends records to the spool as one data payload per call, through a
    :class:`~edge.delivery.appender.PayloadAppender` on ``append`` (the pipeline's: the
    spool's ``append(build)`` or ``append(build, priority=p)``)."""

    def __init__(self, codec: Codec, schema_id: Callable[[], str], append: Append) -> None:
        self._codec = codec
        self._schema_id = schema_id
        self._appender = PayloadAppender(append, codec)
        self._empty_body = codec.compress(msgpack.packb([], use_bin_type=True))
        self.payloads = 0
        self.records = 0
        self.spool_errors = 0

    def write(self, records: Sequence[DiagRecord]) -> None:
        """Send ``records`` now (thread-safe: the spool serialises appends)."""
        if not records:
            return
        per_second = self._codec.ticks_per_second
        ticks = [round(r.time * per_second) for r in records]
        ticks += [round(r.first_seen * per_second) for r in records if r.first_seen is not None]
        t0, t1 = min(ticks), max(ticks)
        res = self._codec.resolution_ns
        envelope = {
            "schema": self._schema_id(),
            "t0": t0,
            "t1": t1,
            "res": res,
            "ext": {EXT_KEY: records_to_wire(records, t0, res)},
        }
        urgent = any(r.kind == "dtc" for r in records)
        try:
            self._appender.append(
                KIND_DATA, envelope, self._empty_body, priority=DTC_PRIORITY if urgent else None
            )
        except SpoolError as exc:
            self.spool_errors += 1
            log.error("spool refused a diagnostics payload (%d records): %s", len(records), exc)
            return
        self.payloads += 1
        self.records += len(records)


class Diagnostics:
    """Every :class:`BusDiagnostics` of a configuration."""

    def __init__(
        self,
        config: Config,
        emit: Callable[[list[DiagRecord]], None],
        *,
        clock: Clock | None = None,
        buses: dict[str, Any] | None = None,
    ) -> None:
        from edge.processing.database import load_databases

        clock = clock or SystemClock()
        self.buses: list[BusDiagnostics] = []
        for i, diag in enumerate(config.diagnostics.buses):
            bus_config = config.bus(diag.bus)
            database = None
            if diag.when:
                database = load_databases(bus_config.databases, strict=bus_config.strict)
            try:
                bus = BusDiagnostics(
                    diag,
                    bus_config,
                    emit,
                    clock=clock,
                    bus=(buses or {}).get(diag.bus),
                    condition_database=database,
                )
            except ConfigError as exc:  # the condition names a signal the bus does not have
                raise ConfigError(f"diagnostics.buses[{i}].{exc.field}", exc.reason) from None
            self.buses.append(bus)

    def start(self) -> None:
        """Start every bus's schedule."""
        for bus in self.buses:
            bus.start()

    def stop(self) -> None:
        """Stop every bus's schedule."""
        for bus in self.buses:
            bus.stop()

    def ecu_names(self) -> list[str]:
        """Every configured UDS ECU."""
        return [ecu.name for bus in self.buses for ecu in bus.config.uds]

    def _owner(self, ecu: str) -> BusDiagnostics:
        for bus in self.buses:
            if any(e.name == ecu for e in bus.config.uds):
                return bus
        raise KeyError(ecu)

    def read_dtcs(self, ecus: Sequence[str] | None = None) -> dict[str, Any]:
        """Read the DTCs of ``ecus`` (default: every UDS ECU, plus the J1939 ECUs' last DM1) now;
        DTCs that appeared or cleared are sent as usual. Raises KeyError for an unknown ECU
        (before asking any)."""
        names = list(ecus) if ecus is not None else self.ecu_names()
        owners = [(name, self._owner(name)) for name in names]
        answer: dict[str, Any] = {}
        for name, bus in owners:
            bus._emit_now(bus.read_dtcs_of(name))
            active = bus.dtcs.active().get(name, {})
            answer[name] = [{"dtc": code, "status": status} for code, status in active.items()]
        if ecus is None:  # J1939 ECUs broadcast DM1: their last one, nothing to ask
            for bus in self.buses:
                if bus.config.j1939 is not None:
                    for name, active in bus.dtcs.active().items():
                        if name.startswith("SA"):
                            answer[name] = [{"dtc": c, "status": s} for c, s in active.items()]
        return answer

    def read_did(self, ecu: str, did: int) -> dict[str, Any]:
        """Read DID ``did`` of ``ecu`` now."""
        bus = self._owner(ecu)
        data = bus.read_did(ecu, did)
        configured = next((d for d in bus.config.ecu(ecu).dids if d.did == did), None)
        out: dict[str, Any] = {"ecu": ecu, "did": f"{did:04X}", "hex": data.hex().upper()}
        if configured is not None:
            out["name"] = configured.name
            out["value"], out["text"] = did_text(configured, data)
        return out

    def get_vin(self, refresh: bool = False) -> dict[str, Any]:
        """The VIN: the one read at start unless ``refresh`` or none was read yet."""
        errors: list[Exception] = []
        for bus in self.buses:
            if bus.vin is not None and not refresh:
                return {"vin": bus.vin, "bus": bus.config.bus}
        for bus in self.buses:
            try:
                return {"vin": bus.request_vin(), "bus": bus.config.bus}
            except LookupError as exc:
                errors.append(exc)
        raise LookupError("no bus can read a VIN") from (errors[0] if errors else None)

    def clear_dtcs(self, ecu: str) -> None:
        """ClearDiagnosticInformation on ``ecu`` (its bus must allow it)."""
        self._owner(ecu).clear_dtcs(ecu)

    def stats(self) -> dict[str, Any]:
        """Counters by bus."""
        return {bus.config.bus: bus.stats() for bus in self.buses}
