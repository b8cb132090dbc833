"""The diagnostics of one bus: what is asked when, how often, and what the answers become.

:class:`BusDiagnostics` owns a python-can connection of its own to the bus (the pipeline's
source keeps reading the same bus, and so sees the ECUs' answers: mode 01 answers become
signals through the bus's OBD-II database). One thread runs the schedule:

* every request waits for the bus's rate limit (``max_requests_per_second``, shared with
  on-demand requests from direct methods);
* after an error frame or a send error, nothing is sent for ``error_pause`` seconds;
* with ``when``, nothing periodic is sent while the condition on signals is false;
* a request that times out is not retried before its next period (no retry storm); a
  once-per-start request (VIN, DIDs) that failed is tried again after a backoff that doubles up
  to :data:`MAX_RETRY`.

DTCs are tracked per ECU; an appearing, changing or clearing DTC (and a VIN or DID read) is
handed to ``emit`` at once as :class:`~edge.wire.diagnostics.DiagRecord` objects, which the
pipeline sends as a payload of its own.
"""

from __future__ import annotations

import collections
import contextlib
import heapq
import itertools
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import can

from edge.campaigns.expression import (
    ConditionState,
    Expression,
    ExpressionError,
    SignalRef,
    compile_expression,
)
from edge.clock import Clock, SystemClock
from edge.config.diagnostics import DiagBusConfig
from edge.config.model import BusConfig
from edge.diagnostics.dtc import j1939_cm1_dtc_text, j1939_dtc_text, uds_dtc_text
from edge.diagnostics.j1939 import (
    PGN_DM1,
    PGN_VIN,
    J1939Reassembler,
    decode_dm1,
    request_frame,
)
from edge.diagnostics.obd import RESPONSE_IDS, FunctionalObd, ObdClient, PhysicalObd
from edge.diagnostics.transport import (
    DiagnosticError,
    DiagnosticTimeout,
    IsoTpChannel,
    NegativeResponse,
    TransportError,
)
from edge.diagnostics.uds import UdsEcu, did_text
from edge.wire.diagnostics import DiagRecord

__all__ = ["MAX_RETRY", "BusDiagnostics", "DtcTracker", "RateLimiter"]

log = logging.getLogger(__name__)

#: Longest wait before a failed once-per-start request (VIN, DIDs) is tried again, seconds.
MAX_RETRY = 300.0
_IDLE = 0.05  # the loop's longest sleep when nothing is due, seconds
OBD_ECU = "OBD"


class RateLimiter:
    """At most ``rate`` requests per second, spaced evenly; thread-safe."""

    def __init__(self, rate: float, clock: Clock) -> None:
        self._interval = 1.0 / rate
        self._clock = clock
        self._next = -float("inf")
        self._lock = threading.Lock()

    def acquire(self) -> None:
        """Wait for the next slot."""
        with self._lock:
            now = self._clock.monotonic()
            slot = max(now, self._next)
            self._next = slot + self._interval
        if slot > now:
            self._clock.sleep(slot - now)


class DtcTracker:
    """The DTCs last read from each ECU; turns each new reading into events."""

    def __init__(self) -> None:
        self._known: dict[str, dict[str, tuple[int, float]]] = {}
        self._lock = threading.Lock()

    def update(
        self,
        bus: str,
        ecu: str,
        current: dict[str, int],
        now: float,
        source: int | None = None,
    ) -> list[DiagRecord]:
        """Records for the DTCs of ``ecu`` that appeared, changed status or cleared since the
        last reading (``current``: DTC text -> status)."""
        out = []
        with self._lock:
            known = self._known.setdefault(ecu, {})
            for code, status in sorted(current.items()):
                if code not in known:
                    known[code] = (status, now)
                    out.append(
                        DiagRecord(now, bus, ecu, "dtc", code, status, "appeared", now, source)
                    )
                elif known[code][0] != status:
                    first = known[code][1]
                    known[code] = (status, first)
                    out.append(
                        DiagRecord(now, bus, ecu, "dtc", code, status, "changed", first, source)
                    )
            for code in sorted(set(known) - set(current)):
                status, first = known.pop(code)
                out.append(DiagRecord(now, bus, ecu, "dtc", code, 0, "cleared", first, source))
        return out

    def active(self) -> dict[str, dict[str, int]]:
        """ECU -> DTC text -> status, as last read."""
        with self._lock:
            return {ecu: {c: s for c, (s, _) in d.items()} for ecu, d in self._known.items()}


@dataclass(order=True)
class _Job:
    due: float
    order: int
    name: str = field(compare=False)
    action: Callable[[], None] = field(compare=False)
    period: float = field(compare=False)  # 0: once (retried with backoff until it succeeds)
    backoff: float = field(default=0.0, compare=False)


class BusDiagnostics:
    """Requests on one bus with diagnostics enabled (see the module docstring)."""

    def __init__(
        self,
        config: DiagBusConfig,
        bus_config: BusConfig,
        emit: Callable[[list[DiagRecord]], None],
        *,
        clock: Clock | None = None,
        bus: can.BusABC | None = None,
        condition_database: Any = None,
    ) -> None:
        self.config = config
        self.bus_config = bus_config
        self._emit = emit
        self._clock = clock or SystemClock()
        self._given_bus = bus
        self.bus: can.BusABC | None = None
        self._notifier: can.Notifier | None = None
        self.limiter = RateLimiter(config.max_requests_per_second, self._clock)
        self.dtcs = DtcTracker()
        self.counters: collections.Counter[str] = collections.Counter()
        self.vin: str | None = None
        #: mode 01 PIDs some ECU supports (None: not known, every configured PID is asked)
        self.supported_pids: set[int] | None = None
        #: OBD ECUs that answered supported-PID discovery: response id -> their PIDs
        self.obd_ecus: dict[int, set[int]] = {}
        self._channels: list[IsoTpChannel] = []
        self._functional: FunctionalObd | None = None
        self._obd_responders: set[int] = set()  # of functional requests, before a reconnect
        self._obd_missing = 0
        self._closed_isotp_errors: collections.Counter[str] = collections.Counter()
        self.obd: ObdClient | None = None
        self.ecus: dict[str, UdsEcu] = {}
        self.j1939: J1939Reassembler | None = None
        self._j1939_vin = threading.Event()
        self._pause_until = -float("inf")
        self._state_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._jobs: list[_Job] = []
        self._order = itertools.count()
        #: ``when``, compiled against the bus's databases (edge.campaigns.expression)
        self.condition: Expression | None = None
        self._state = ConditionState({})
        self._condition_messages: dict[tuple[int, bool], Any] = {}
        if config.when:
            self._compile_condition(config.when, condition_database)

    # -- life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the schedule. Its thread opens the bus connection and the ISO-TP channels, and
        opens them again after the connection failed (a SocketCAN link that is down at start,
        or goes away): diagnostics never stop the pipeline. The first attempt is made here, so
        that on-demand requests work as soon as this returns when the bus is there."""
        self._plan()
        try:
            self._connect()
        except Exception:  # the thread says why, and tries again
            self._disconnect()
        self._thread = threading.Thread(
            target=self._main, name=f"diagnostics-{self.config.bus}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop the schedule and close what it opened."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._disconnect()

    @property
    def connected(self) -> bool:
        """Whether the bus connection is open and its reader alive."""
        notifier = self._notifier
        return notifier is not None and notifier.exception is None

    def _main(self) -> None:
        logged = False
        while not self._stop.is_set():
            if not self.connected:
                if self._notifier is not None:  # the reader died: a bus error (link gone)
                    log.warning(
                        "diagnostics on bus %s: connection lost (%s); reopening",
                        self.config.bus,
                        self._notifier.exception,
                    )
                    self.counters["reconnects"] += 1
                    self._disconnect()
                try:
                    self._connect()
                    logged = False
                except Exception as exc:
                    self.counters["open_errors"] += 1
                    if not logged:  # once per outage, not every retry
                        log.warning(
                            "diagnostics on bus %s cannot open it: %s: %s (retrying)",
                            self.config.bus,
                            type(exc).__name__,
                            exc,
                        )
                        logged = True
                    self._disconnect()
                    self._stop.wait(max(1.0, min(self.config.error_pause, 10.0)))
                    continue
            self._step()

    def _connect(self) -> None:
        from edge.ingest.source import open_bus

        if self._given_bus is not None:
            self.bus = self._given_bus
        else:
            self.bus = open_bus(self.bus_config, self.filters())
        listeners: list[Any] = [self._on_frame]
        config = self.config
        if config.j1939 is not None:
            self.j1939 = J1939Reassembler(
                {PGN_DM1, PGN_VIN},
                self._on_j1939,
                address=config.j1939.source_address,
                send=self._send,
            )
            listeners.append(self.j1939)
        self._notifier = can.Notifier(self.bus, listeners, timeout=0.1)
        ecus = {}
        for ecu in config.uds:
            channel = self._channel(ecu.request_id, ecu.response_id, ecu.extended_id)
            ecus[ecu.name] = UdsEcu(ecu, channel)
        obd: ObdClient | None = None
        if config.obd is not None and config.obd.functional:
            shared = {c.response_id: c for c in self._channels if not c.extended_id}
            self._functional = FunctionalObd(
                self.bus,
                self._notifier,
                self._send,
                timeout=config.timeout,
                limit=self.limiter.acquire,
                shared=shared,
            )
            obd = self._functional
        elif config.obd is not None:
            request_id, response_id = config.obd.request_id, config.obd.response_id
            obd = PhysicalObd(self._channel(request_id, response_id, False), response_id)
        for channel in self._channels:
            channel.open()
        if self._functional is not None:
            self._functional.open()
        self.obd = obd
        self.ecus = ecus

    def _disconnect(self) -> None:
        self.ecus = {}
        self.obd = None
        if self._functional is not None:
            self._functional.close()
            self._closed_isotp_errors.update(self._functional.errors)
            self._obd_responders |= self._functional.responders
            self._obd_missing += self._functional.missing
            self._functional = None
        for channel in self._channels:
            channel.close()
            self._closed_isotp_errors.update(channel.errors)
        self._channels = []
        if self._notifier is not None:
            self._notifier.stop()
            self._notifier = None
        if self.bus is not None and self._given_bus is None:
            with contextlib.suppress(Exception):  # a bus already gone
                self.bus.shutdown()
        self.bus = None

    def filters(self) -> list[dict[str, Any]]:
        """python-can filters for the frames diagnostics read: the ECUs' answers, J1939's
        transport and DM1/VIN, the condition's messages, error frames. The bus's every other
        frame would cost a trip through each ISO-TP stack's queue in Python (SocketCAN filters
        them in the kernel)."""
        config = self.config
        out: list[dict[str, Any]] = []

        def exact(can_id: int, extended: bool) -> None:
            mask = 0x1FFFFFFF if extended else 0x7FF
            out.append({"can_id": can_id, "can_mask": mask, "extended": extended})

        if config.obd is not None and config.obd.functional:
            out.append({"can_id": RESPONSE_IDS[0], "can_mask": 0x7F8, "extended": False})
        elif config.obd is not None:
            exact(config.obd.response_id, False)
        for ecu in config.uds:
            exact(ecu.response_id, ecu.extended_id)
        if config.j1939 is not None:
            for pgn, mask in ((0xEC00, 0x3FF0000), (0xEB00, 0x3FF0000)):
                out.append({"can_id": pgn << 8, "can_mask": mask, "extended": True})
            for pgn in (PGN_DM1, PGN_VIN):
                out.append({"can_id": pgn << 8, "can_mask": 0x3FFFF00, "extended": True})
        for frame_id, extended in self._condition_messages:
            exact(frame_id, extended)
        exact(0, True)  # python-can's virtual bus gives error frames this id (SocketCAN: always)
        return out

    def _channel(self, request_id: int, response_id: int, extended: bool) -> IsoTpChannel:
        """The ISO-TP channel to an ECU; one per identifier pair (OBD and UDS to the same ECU
        share it: two stacks on one identifier would both send flow control)."""
        assert self.bus is not None and self._notifier is not None
        for channel in self._channels:
            if (channel.request_id, channel.response_id, channel.extended_id) == (
                request_id,
                response_id,
                extended,
            ):
                return channel
        channel = IsoTpChannel(
            self.bus,
            self._notifier,
            request_id,
            response_id,
            extended_id=extended,
            timeout=self.config.timeout,
            limit=self.limiter.acquire,
        )
        self._channels.append(channel)
        return channel

    def _plan(self) -> None:
        config = self.config
        now = self._clock.monotonic()
        if config.obd is not None:
            if config.obd.discover:
                self._add("obd.discover", self._discover, 0.0, now)
            if config.obd.vin:
                self._add("obd.vin", self._obd_vin, 0.0, now)
            for pid in config.obd.pids:
                self._add(f"obd.{pid.pid:02X}", self._pid_job(pid.pid), pid.period, now)
        for ecu in config.uds:
            if ecu.dtc_period > 0:
                self._add(f"{ecu.name}.dtcs", self._dtc_job(ecu.name), ecu.dtc_period, now)
            if ecu.dids:
                self._add(f"{ecu.name}.dids", self._did_job(ecu.name), ecu.did_period, now)
        if config.j1939 is not None and config.j1939.vin:
            self._add("j1939.vin", self._j1939_vin_job, 0.0, now)

    def _add(self, name: str, action: Callable[[], None], period: float, due: float) -> None:
        heapq.heappush(self._jobs, _Job(due, next(self._order), name, action, period))

    # -- the schedule ----------------------------------------------------------------------------

    def _step(self) -> None:
        """Run the next job when it is due (or wait a little)."""
        clock = self._clock
        now = clock.monotonic()
        if self.j1939 is not None:
            self.j1939.expire()
        if not self._jobs or self._jobs[0].due > now:
            self._stop.wait(_IDLE if not self._jobs else min(_IDLE, self._jobs[0].due - now))
            return
        if now < self._pause_until:
            self._stop.wait(min(_IDLE, self._pause_until - now))
            return
        job = heapq.heappop(self._jobs)
        if self.condition is not None and not self._condition_holds():
            self.counters["gated"] += 1
            job.due = now + max(job.period, 1.0)  # look again later, not at once
            heapq.heappush(self._jobs, job)
            return
        ok = self._attempt(job.name, job.action)
        if job.period > 0:
            job.due = max(job.due + job.period, clock.monotonic())
        elif ok:
            return  # once per start, done
        else:
            job.backoff = min(MAX_RETRY, max(2 * job.backoff, 5.0))
            job.due = clock.monotonic() + job.backoff
        heapq.heappush(self._jobs, job)

    def _attempt(self, name: str, action: Callable[[], None]) -> bool:
        try:
            action()
            return True
        except DiagnosticError as exc:
            log.debug("diagnostics %s on %s: %s", name, self.config.bus, exc)
            return False
        except Exception:  # a bug must cost one request, not the schedule
            self.counters["errors"] += 1
            log.exception("diagnostics %s on %s failed", name, self.config.bus)
            return False

    def _request(self, call: Callable[[], Any]) -> Any:
        """One request, counted by outcome (each frame it sends waits for the rate limit)."""
        if self._clock.monotonic() < self._pause_until:
            self.counters["paused"] += 1
            raise TransportError("paused after a bus error")
        self.counters["requests"] += 1
        try:
            result = call()
        except DiagnosticTimeout:
            self.counters["timeouts"] += 1
            raise
        except NegativeResponse:
            self.counters["negative_responses"] += 1
            raise
        except TransportError:
            self.counters["transport_errors"] += 1
            self._pause()
            raise
        except DiagnosticError:
            self.counters["invalid_responses"] += 1
            raise
        self.counters["responses"] += 1
        return result

    def _pause(self) -> None:
        self._pause_until = self._clock.monotonic() + self.config.error_pause
        self.counters["pauses"] += 1

    # -- jobs ------------------------------------------------------------------------------------

    def _ecu(self, name: str) -> UdsEcu:
        """UDS ECU ``name`` (KeyError: not configured; TransportError: the bus is not open)."""
        self.config.ecu(name)
        ecu = self.ecus.get(name)
        if ecu is None:
            raise TransportError(f"bus {self.config.bus} is not open")
        return ecu

    def _discover(self) -> None:
        assert self.obd is not None
        obd = self.obd
        try:
            self.obd_ecus = self._request(obd.supported_pids)
            self.supported_pids = set().union(*self.obd_ecus.values())
        except (NegativeResponse, DiagnosticTimeout):
            # Some ECUs refuse discovery: ask for the configured PIDs anyway.
            log.info(
                "bus %s: OBD PID discovery refused; requesting all configured PIDs", self.config.bus
            )
            self.supported_pids = None
            return
        assert self.config.obd is not None
        for pid in self.config.obd.pids:
            if pid.pid not in self.supported_pids:
                self.counters["unsupported_pids"] += 1
                log.info(
                    "bus %s: OBD PID %02X is not supported by the ECU", self.config.bus, pid.pid
                )

    def _pid_job(self, pid: int) -> Callable[[], None]:
        def job() -> None:
            if self.supported_pids is not None and pid not in self.supported_pids:
                return
            assert self.obd is not None
            obd = self.obd
            self._request(lambda: obd.request(0x01, pid))

        return job

    def _obd_vin(self) -> None:
        obd = self.obd
        if obd is None:
            raise TransportError(f"bus {self.config.bus} is not open")
        vins: dict[int, str] = self._request(obd.vins)
        # Several ECUs answer a functional request, normally with the same VIN: the one of the
        # lowest response id (the engine ECU, 0x7E8) is the bus's. One that differs (a swapped
        # ECU) is counted and sent as a record of its own, each time it is read.
        first = min(vins)
        self._got_vin(self.obd_ecu_name(first), vins[first])
        for response_id, vin in sorted(vins.items()):
            if vin != vins[first]:
                self.counters["vin_mismatches"] += 1
                log.warning(
                    "bus %s: OBD ECU %03X reports VIN %s, ECU %03X %s",
                    self.config.bus,
                    response_id,
                    vin,
                    first,
                    vins[first],
                )
                name = self.obd_ecu_name(response_id)
                now = self._clock.time()
                self._emit([DiagRecord(now, self.config.bus, name, "vin", "VIN", 0, vin)])

    def obd_ecu_name(self, response_id: int) -> str:
        """The ECU name OBD records carry: ``OBD`` when asked physically, else ``OBD-7E8``
        and so on: each ECU answering a functional request is its own source."""
        functional = self.config.obd is not None and self.config.obd.functional
        return f"{OBD_ECU}-{response_id:03X}" if functional else OBD_ECU

    def _got_vin(self, ecu: str, vin: str, source: int | None = None) -> None:
        changed = vin != self.vin
        self.vin = vin
        if changed:
            self._emit(
                [
                    DiagRecord(
                        self._clock.time(), self.config.bus, ecu, "vin", "VIN", 0, vin, None, source
                    )
                ]
            )

    def _dtc_job(self, name: str) -> Callable[[], None]:
        return lambda: self._emit_now(self.read_dtcs_of(name))

    def read_dtcs_of(self, name: str) -> list[DiagRecord]:
        """Read the DTCs of UDS ECU ``name`` now; the records of what changed."""
        ecu = self._ecu(name)
        found = self._request(ecu.read_dtcs)
        current = {uds_dtc_text(code): status for code, status in found}
        return self.dtcs.update(self.config.bus, name, current, self._clock.time())

    def _did_job(self, name: str) -> Callable[[], None]:
        def job() -> None:
            ecu = self._ecu(name)
            records = []
            for did in ecu.config.dids:
                value, text = did_text(did, self.read_did(name, did.did))
                records.append(
                    DiagRecord(
                        self._clock.time(), self.config.bus, name, "did", did.name, value, text
                    )
                )
                if did.did == 0xF190 and text:
                    self.vin = text
            self._emit_now(records)

        return job

    def read_did(self, name: str, did: int) -> bytes:
        """The bytes of DID ``did`` of UDS ECU ``name``, read now."""
        ecu = self._ecu(name)
        data: bytes = self._request(lambda: ecu.read_did(did))
        return data

    def clear_dtcs(self, name: str) -> None:
        """ClearDiagnosticInformation on UDS ECU ``name`` (only with ``allow_clear``)."""
        if not self.config.allow_clear:
            raise PermissionError(f"bus {self.config.bus}: allow_clear is off")
        ecu = self._ecu(name)
        self._request(ecu.clear_dtcs)
        self.counters["clears"] += 1

    def _j1939_vin_job(self) -> None:
        assert self.config.j1939 is not None
        self._j1939_vin.clear()
        frame = request_frame(PGN_VIN, self.config.j1939.source_address)

        def ask() -> None:
            self.limiter.acquire()
            self._send(frame)
            # A VIN is longer than 8 bytes: it comes as a BAM, 50-200 ms per packet.
            if not self._j1939_vin.wait(max(self.config.timeout, 2.0)):
                raise DiagnosticTimeout("no J1939 VIN in time")

        self._request(ask)

    def request_vin(self) -> str:
        """The VIN read now: OBD mode 09, else J1939, else a UDS DID 0xF190."""
        if self.config.obd is not None:
            self._obd_vin()
        elif self.config.j1939 is not None:
            self._j1939_vin_job()
        else:
            for ecu in self.config.uds:
                if any(d.did == 0xF190 for d in ecu.dids):
                    data = self.read_did(ecu.name, 0xF190)
                    self._got_vin(ecu.name, data.decode("ascii", "replace").strip("\0 "))
                    break
            else:
                raise LookupError(f"bus {self.config.bus} has no way to read a VIN configured")
        assert self.vin is not None
        return self.vin

    def _emit_now(self, records: list[DiagRecord]) -> None:
        if records:
            self._emit(records)

    # -- frames from the bus (the notifier's thread) ---------------------------------------------

    def _send(self, msg: can.Message) -> None:
        bus = self.bus
        if bus is None:
            raise TransportError(f"bus {self.config.bus} is not open")
        try:
            bus.send(msg)
        except can.CanError as exc:
            self._pause()
            raise TransportError(f"send failed: {exc}") from exc

    def _on_frame(self, msg: can.Message) -> None:
        if msg.is_error_frame:
            self.counters["error_frames"] += 1
            self._pause()
            return
        if self._condition_messages:
            message = self._condition_messages.get((msg.arbitration_id, msg.is_extended_id))
            if message is not None:
                try:
                    decoded = message.decode(msg.data, decode_choices=False)
                except Exception:  # a frame the gate cannot read leaves the old values
                    return
                bus, state = self.config.bus, self._state
                with self._state_lock:
                    state.seen[(bus, message.name)] = msg.timestamp
                    for signal, value in decoded.items():
                        state.update((bus, message.name, signal), msg.timestamp, float(value))

    def _condition_holds(self) -> bool:
        assert self.condition is not None
        with self._state_lock:
            state = self._state
            state.now = max(state.seen.values(), default=0.0)
            state.changed.clear()
            return self.condition(state)

    def _compile_condition(self, text: str, database: Any) -> None:
        """Compile ``when`` against the bus's database (ConfigError for field ``when``)."""
        from edge.errors import ConfigError

        if database is None:
            raise ConfigError("diagnostics.when", "needs the bus's databases")
        bus = self.config.bus
        by_name = {m.name: m for m in database.messages}

        def resolve_signal(name: str) -> SignalRef:
            message_name, _, signal = name.rpartition(".")
            if message_name:
                candidates = [by_name[message_name]] if message_name in by_name else []
            else:
                candidates = list(database.messages)
            found = [m for m in candidates if any(s.name == signal for s in m.signals)]
            if not found:
                raise LookupError(f"no signal {name!r} on bus {bus!r}")
            if len(found) > 1:
                raise LookupError(f"signal {name!r} is ambiguous: write Message.Signal")
            db_signal = found[0].get_signal_by_name(signal)
            choices = {
                str(c): float(int(raw) * db_signal.scale + db_signal.offset)
                for raw, c in (db_signal.choices or {}).items()
            }
            return SignalRef(bus, found[0].name, signal, choices)

        def resolve_message(name: str) -> tuple[str, str]:
            if name not in by_name:
                raise LookupError(f"no message {name!r} on bus {bus!r}")
            return (bus, name)

        try:
            expression = compile_expression(text, resolve_signal, resolve_message)
        except ExpressionError as exc:
            raise ConfigError("when", str(exc)) from None
        self.condition = expression
        self._state = ConditionState(expression.windows)
        for _, message_name, _ in expression.inputs:
            message = by_name[message_name]
            self._condition_messages[(message.frame_id, bool(message.is_extended_frame))] = message
        for _, message_name in expression.messages:
            message = by_name[message_name]
            self._condition_messages[(message.frame_id, bool(message.is_extended_frame))] = message

    def _on_j1939(self, pgn: int, source: int, data: bytes, t: float) -> None:
        ecu = f"SA{source:02X}"
        if pgn == PGN_DM1:
            try:
                dm1 = decode_dm1(data)
            except ValueError:
                self.counters["invalid_responses"] += 1
                return
            current = {j1939_dtc_text(spn, fmi): count for spn, fmi, count in dm1.dtcs}
            current.update((j1939_cm1_dtc_text(dtc), dtc[3] & 0x7F) for dtc in dm1.cm1)
            self._emit_now(
                self.dtcs.update(self.config.bus, ecu, current, self._clock.time(), source)
            )
        elif pgn == PGN_VIN:
            text = data.split(b"*", 1)[0].strip(b"\0 ")
            if not (text.isascii() and text.decode("ascii").isprintable()):
                self.counters["invalid_responses"] += 1
                return
            vin = text.decode("ascii")
            if vin:
                self._got_vin(ecu, vin, source)
                self._j1939_vin.set()

    # -- reporting -------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Counters (requests, responses, timeouts, negative responses, ...)."""
        out: dict[str, Any] = dict(self.counters)
        isotp_errors = collections.Counter(self._closed_isotp_errors)
        for channel in self._channels:
            isotp_errors.update(channel.errors)
        functional = self._functional
        responders = set(self._obd_responders)
        if functional is not None:
            isotp_errors.update(functional.errors)
            responders |= functional.responders
        if self.config.obd is not None and self.config.obd.functional:
            out["obd_ecus"] = len(responders)  # that answered a functional request
            missing = self._obd_missing + (functional.missing if functional else 0)
            if missing:
                out["obd_missing_answers"] = missing
        if isotp_errors:
            out["isotp_errors"] = dict(isotp_errors)
        if self.j1939 is not None and self.j1939.stats:
            out["j1939"] = dict(self.j1939.stats)
        return out
