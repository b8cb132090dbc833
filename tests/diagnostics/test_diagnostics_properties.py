"""Property tests (hypothesis) of the diagnostics the module requests itself: OBD-II (SAE J1979 /
ISO 15031-5), UDS (ISO 14229-1 over ISO 15765-2) and J1939 DM1 (SAE J1939-73) with the J1939-21
transport protocol.

The project's rule for all of them: bad input from the bus is counted and skipped, never crashes
the module, and good input is decoded exactly. Each reference below is written here from the
standards, not from edge/diagnostics:

* J1939-73 DM1: byte 1 lamp status (MIL bits 8-7, red stop 6-5, amber warning 4-3, protect 2-1),
  byte 2 their flash states, then 4 bytes per DTC: SPN bits 8-1, SPN bits 16-9, SPN bits 19-17 in
  bits 8-6 with the FMI in bits 5-1, conversion method (CM) in bit 8 and occurrence count in
  bits 7-1 (SPN conversion method 4, CM = 0; CM = 1: one of versions 1-3, whose SPN layouts
  differ and which the bytes do not tell apart). No DTC: SPN 0 FMI 0. Single frames padded to 8
  bytes with 0xFF.
* J1939-21 transport: TP.CM (PGN 0xEC00) BAM / RTS / CTS / EndOfMsgAck / Abort, TP.DT (PGN
  0xEB00) 8-byte packets numbered from 1, 7 data bytes each, in order, at most T1 = 750 ms apart.
* ISO 14229-1: positive response SID = request SID + 0x40; 0x7F SID NRC negative; NRC 0x78
  (response pending) means "wait P2*, the answer comes" (ISO 15765-4 says the same for OBD-II);
  NRC 0x00 is reserved ("positiveResponse"), never a negative response code; 0x19 0x02 answers
  0x59 0x02, the status availability mask, then 4-byte records (3-byte DTC, status); 0x22
  answers 0x62 DID data.
* SAE J1979: supported-PID bitmaps (bit 7 of byte A = PID base+1 ... bit 0 of byte D = PID
  base+0x20, which says the next range exists), VIN (mode 09 PID 02: count 1 and 17 characters),
  and the mode 01 formulas that the bundled OBD2 database must reproduce.

The last group runs the real path: can-isotp stacks and udsoncan's client on python-can's virtual
bus against ECUs answering generated payloads.

The bugs these properties found (now mended) are kept as minimal tests at the end of the file.
"""

from __future__ import annotations

import functools
import math
import string
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import can
import cantools
import isotp
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from udsoncan.connections import BaseConnection
from udsoncan.exceptions import TimeoutException

from edge.clock import FakeClock
from edge.config.diagnostics import UdsEcuConfig
from edge.config.model import Config, parse_config
from edge.diagnostics.dtc import j1939_dtc_text, obd_dtc_text, status_text, uds_dtc_text
from edge.diagnostics.j1939 import (
    PACKET_TIMEOUT,
    PGN_DM1,
    PGN_REQUEST,
    PGN_VIN,
    J1939Reassembler,
    decode_dm1,
    pgn_of,
    request_frame,
)
from edge.diagnostics.obd import (
    FUNCTIONAL_ID,
    RESPONSE_IDS,
    FunctionalObd,
    ObdClient,
    PhysicalObd,
    parse_supported,
    parse_vin,
)
from edge.diagnostics.scheduler import BusDiagnostics
from edge.diagnostics.transport import (
    DiagnosticError,
    DiagnosticTimeout,
    IsoTpChannel,
    NegativeResponse,
    nrc_name,
)
from edge.diagnostics.uds import UdsEcu
from edge.processing.decode import dict_decoder
from edge.simulator.vehicle import OBD2_DBC
from edge.wire.diagnostics import DiagRecord
from tests.support.diagnostics import diag_config
from tests.support.waiting import wait_for

#: Pure decoders: many examples, each microseconds.
PURE = settings(max_examples=200, deadline=None, database=None)
#: Stateful or threaded paths: fewer.
FEW = settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

OUR_ADDRESS = 0xF9  # J1939DiagConfig's default source address
TP_CM, TP_DT = 0xEC00, 0xEB00
RTS, CTS, EOM_ACK, BAM, ABORT = 16, 17, 19, 32, 255
T1 = 0.75  # J1939-21: longest gap between two TP.DT packets (receiver)
T2 = 1.25  # J1939-21: longest wait for a TP.DT after sending a CTS (receiver)
NO_DTC_RECORD = bytes(4)  # J1939-73: SPN 0, FMI 0, OC 0 when no DTC is active
NOT_AVAILABLE_RECORD = b"\xff" * 4  # padding of a BAM's last packet, SPN 0x7FFFF

# -- references written from the standards --------------------------------------------------------


def lamp_byte(mil: int, red_stop: int, amber_warning: int, protect: int) -> int:
    """J1939-73 DM1 byte 1 (or byte 2, the flash states): two bits per lamp, MIL highest."""
    return mil << 6 | red_stop << 4 | amber_warning << 2 | protect


def dtc_record(spn: int, fmi: int, occurrences: int, cm: int = 0) -> bytes:
    """A J1939-73 DTC, SPN conversion method 4: 19-bit SPN little-endian over bytes 3, 4 and the
    top three bits of byte 5, FMI in its low five bits, CM bit and 7-bit OC in byte 6."""
    return bytes(
        (
            spn & 0xFF,
            spn >> 8 & 0xFF,
            (spn >> 16 & 0x7) << 5 | fmi,
            cm << 7 | occurrences,
        )
    )


def dm1_message(lamps: int, flash: int, records: list[bytes]) -> bytes:
    """A DM1: lamp bytes and DTC records ("no DTC" when none), padded to 8 bytes when it fits a
    single frame (J1939-21 pads with 0xFF)."""
    data = bytes((lamps, flash)) + (b"".join(records) or NO_DTC_RECORD)
    return data.ljust(8, b"\xff")


def dm1_reference(data: bytes) -> tuple[int, list[tuple[int, int, int]], list[bytes]]:
    """Lamps (byte 1 high, byte 2 low), the ``(spn, fmi, oc)`` of every whole 4-byte record
    after the lamps with CM 0, and the records with CM 1 (whose SPN layout, of versions 1-3,
    the bytes do not tell), without "no DTC" records and SPN 0x7FFFF ("not available":
    padding); the SPN takes the same 19 bits in every version."""
    dtcs = []
    old = []
    for k in range((len(data) - 2) // 4):
        b1, b2, b3, b4 = data[2 + 4 * k : 6 + 4 * k]
        spn = b1 + 256 * b2 + 65536 * (b3 >> 5)
        fmi = b3 % 32
        if (spn, fmi) == (0, 0) or spn == 2**19 - 1:
            continue
        if b4 >= 128:
            old.append(bytes((b1, b2, b3, b4)))
        else:
            dtcs.append((spn, fmi, b4 % 128))
    return data[0] * 256 + data[1], dtcs, old


def j1939_id(priority: int, pgn: int, destination: int, source: int) -> int:
    """A 29-bit J1939-21 identifier: priority (3 bits), data page, PDU format, PDU specific (the
    destination for PDU1 formats below 240, the group extension above), source address."""
    pdu_format = pgn >> 8 & 0xFF
    pdu_specific = destination if pdu_format < 240 else pgn & 0xFF
    return priority << 26 | (pgn >> 16 & 1) << 24 | pdu_format << 16 | pdu_specific << 8 | source


def frame(can_id: int, data: bytes, *, extended: bool = True) -> can.Message:
    return can.Message(arbitration_id=can_id, data=data, is_extended_id=extended)


def tp_cm(
    control: int,
    size: int,
    packets: int,
    fourth: int,
    pgn: int,
    source: int,
    destination: int = 0xFF,
) -> can.Message:
    """A TP.CM: control byte, size (2 bytes LE), packets, byte 5 (RTS: most packets per CTS;
    BAM: 0xFF), the PGN carried (3 bytes LE)."""
    data = (
        bytes((control,))
        + size.to_bytes(2, "little")
        + bytes((packets, fourth))
        + pgn.to_bytes(3, "little")
    )
    return frame(j1939_id(7, TP_CM, destination, source), data)


def tp_dt(seq: int, chunk: bytes, source: int, destination: int = 0xFF) -> can.Message:
    """A TP.DT: sequence number and 7 bytes (the last packet padded with 0xFF)."""
    return frame(j1939_id(7, TP_DT, destination, source), bytes((seq,)) + chunk.ljust(7, b"\xff"))


def packets_of(payload: bytes) -> list[bytes]:
    return [payload[i : i + 7] for i in range(0, len(payload), 7)]


def bam_frames(pgn: int, payload: bytes, source: int) -> list[can.Message]:
    chunks = packets_of(payload)
    announce = tp_cm(BAM, len(payload), len(chunks), 0xFF, pgn, source)
    return [announce] + [tp_dt(i, chunk, source) for i, chunk in enumerate(chunks, 1)]


def j2012_text(code: int) -> str:
    """SAE J2012 / ISO 15031-6 text of a two-byte DTC: bits 15-14 the system letter, bits 13-12
    the first digit, then three hex digits."""
    first, second = code >> 8, code & 0xFF
    letter = {0: "P", 1: "C", 2: "B", 3: "U"}[first >> 6]
    return f"{letter}{first >> 4 & 3}{first & 0xF:X}{second >> 4:X}{second & 0xF:X}"


def supported_reference(base: int, data: bytes) -> set[int]:
    """J1979 PIDs-supported bitmap: bit 7 of byte A is PID base+1, bit 0 of byte D base+0x20."""
    return {
        base + 8 * i + bit + 1
        for i, byte in enumerate(data[:4])
        for bit in range(8)
        if byte << bit & 0x80
    }


def bitmap(base: int, pids: set[int]) -> bytes:
    """The 4-byte J1979 bitmap of the PIDs of ``pids`` in ``base+1 .. base+0x20``."""
    data = bytearray(4)
    for pid in pids:
        if base < pid <= base + 0x20:
            offset = pid - base - 1
            data[offset // 8] |= 0x80 >> offset % 8
    return bytes(data)


def uds_dtcs_reference(answer: bytes) -> list[tuple[int, int]] | None:
    """The ``(dtc, status)`` records of an ISO 14229-1 0x59 0x02 answer (subfunction echo, status
    availability mask, 4-byte records), or None when the answer is not one. All-zero records
    (status 0 matches no mask: zero padding) are dropped, as are trailing zero bytes short of a
    record; any other partial record makes the answer invalid."""
    if len(answer) < 3 or answer[:2] != b"\x59\x02":
        return None
    body = answer[3:]
    whole = len(body) // 4
    if any(body[4 * whole :]):
        return None
    records = [body[4 * k : 4 * k + 4] for k in range(whole)]
    return [(int.from_bytes(r[:3], "big"), r[3]) for r in records if any(r)]


#: ISO 14229-1 Table A.1 names, as udsoncan spells them.
ISO_14229_NRC = {
    0x10: "GeneralReject",
    0x11: "ServiceNotSupported",
    0x12: "SubFunctionNotSupported",
    0x13: "IncorrectMessageLengthOrInvalidFormat",
    0x14: "ResponseTooLong",
    0x21: "BusyRepeatRequest",
    0x22: "ConditionsNotCorrect",
    0x24: "RequestSequenceError",
    0x31: "RequestOutOfRange",
    0x33: "SecurityAccessDenied",
    0x72: "GeneralProgrammingFailure",
    0x78: "RequestCorrectlyReceived_ResponsePending",
    0x7E: "SubFunctionNotSupportedInActiveSession",
    0x7F: "ServiceNotSupportedInActiveSession",
}

#: SAE J1979 mode 01 PIDs: (data bytes, formula of A and B, the OBD2 database's signal).
J1979_FORMULAS: dict[int, tuple[int, Callable[[int, int], float], str]] = {
    0x04: (1, lambda a, b: a * 100 / 255, "S1_PID_04_CalcEngineLoad"),
    0x05: (1, lambda a, b: a - 40, "S1_PID_05_EngineCoolantTemp"),
    0x0A: (1, lambda a, b: 3 * a, "S1_PID_0A_FuelPressure"),
    0x0B: (1, lambda a, b: a, "S1_PID_0B_IntakeManiAbsPress"),
    0x0C: (2, lambda a, b: (256 * a + b) / 4, "S1_PID_0C_EngineRPM"),
    0x0D: (1, lambda a, b: a, "S1_PID_0D_VehicleSpeed"),
    0x0E: (1, lambda a, b: a / 2 - 64, "S1_PID_0E_TimingAdvance"),
    0x0F: (1, lambda a, b: a - 40, "S1_PID_0F_IntakeAirTemperature"),
    0x10: (2, lambda a, b: (256 * a + b) / 100, "S1_PID_10_MAFAirFlowRate"),
    0x11: (1, lambda a, b: a * 100 / 255, "S1_PID_11_ThrottlePosition"),
    0x1F: (2, lambda a, b: 256 * a + b, "S1_PID_1F_TimeSinceEngStart"),
    0x21: (2, lambda a, b: 256 * a + b, "S1_PID_21_DistanceMILOn"),
    0x2F: (1, lambda a, b: a * 100 / 255, "S1_PID_2F_FuelTankLevel"),
    0x31: (2, lambda a, b: 256 * a + b, "S1_PID_31_DistanceSinceCodeClear"),
    0x33: (1, lambda a, b: a, "S1_PID_33_AbsBaroPres"),
    0x42: (2, lambda a, b: (256 * a + b) / 1000, "S1_PID_42_ControlModuleVolt"),
    0x46: (1, lambda a, b: a - 40, "S1_PID_46_AmbientAirTemp"),
    0x5C: (1, lambda a, b: a - 40, "S1_PID_5C_EngineOilTemp"),
    0x5E: (2, lambda a, b: (256 * a + b) / 20, "S1_PID_5E_EngineFuelRate"),
}

# -- strategies ------------------------------------------------------------------------------------

TWO_BITS = st.integers(0, 3)
LAMPS = st.builds(lamp_byte, TWO_BITS, TWO_BITS, TWO_BITS, TWO_BITS)
SPNS = st.integers(1, 2**19 - 2)  # 0x7FFFF is "not available"
FMIS = st.integers(0, 31)
OCS = st.integers(0, 127)
DM1_DTCS = st.lists(st.tuples(SPNS, FMIS, OCS), max_size=40)
SOURCES = st.integers(0, 0xFD)  # 0xFE is the null address, 0xFF global
#: ISO 3779 VIN characters (no I, O, Q).
VIN_CHARS = "".join(c for c in string.digits + string.ascii_uppercase if c not in "IOQ")
VINS = st.text(alphabet=VIN_CHARS, min_size=17, max_size=17)
NRCS = st.integers(1, 0xFF).filter(lambda c: c != 0x78)
#: ISO 14229-1 Annex C: 0x0000-0x00FF are reserved (and 62 00 00 00... reads as zero padding).
DIDS = st.integers(0x0100, 0xFFFF)

# -- small harnesses ------------------------------------------------------------------------------


class Recorder:
    """Collects what BusDiagnostics emits."""

    def __init__(self) -> None:
        self.records: list[DiagRecord] = []

    def __call__(self, records: list[DiagRecord]) -> None:
        self.records.extend(records)

    def take(self) -> list[DiagRecord]:
        out, self.records = self.records, []
        return out


@dataclass
class Reassembly:
    """A J1939Reassembler on a clock of our own, what it delivered and sent."""

    pgns: frozenset[int] = frozenset({PGN_DM1, PGN_VIN})
    may_send: bool = True
    now: float = 0.0
    delivered: list[tuple[int, int, bytes]] = field(default_factory=list)
    sent: list[can.Message] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.reassembler = J1939Reassembler(
            set(self.pgns),
            lambda pgn, source, data, t: self.delivered.append((pgn, source, data)),
            address=OUR_ADDRESS,
            send=self.sent.append if self.may_send else None,
            clock=lambda: self.now,
        )

    def feed(self, *frames: can.Message, gap: float = 0.0) -> None:
        for msg in frames:
            self.now += gap
            self.reassembler.on_message_received(msg)

    @property
    def stats(self) -> dict[str, int]:
        return dict(self.reassembler.stats)


def dtc_events(previous: dict[str, int], current: dict[str, int]) -> set[tuple[str, int, str]]:
    """What the docs promise for a new reading: each new DTC ``appeared``, each whose status
    changed ``changed``, each gone ``cleared`` (value 0)."""
    out = {(c, s, "appeared") for c, s in current.items() if c not in previous}
    out |= {(c, s, "changed") for c, s in current.items() if c in previous and previous[c] != s}
    return out | {(c, 0, "cleared") for c in previous if c not in current}


#: Diagnostics tables (tests/support/diagnostics.py's, with these keys changed) by name.
CONFIGS: dict[str, dict[str, Any]] = {
    "j1939": {"obd": None, "uds": []},
    "uds": {
        "obd": None,
        "j1939": None,
        "uds": [{"name": "BMS", "request_id": 0x7E4, "response_id": 0x7EC}],
    },
}


@functools.cache
def parsed_config(name: str) -> Config:
    return parse_config(diag_config("properties-never-opened", **CONFIGS[name]))


def bus_diagnostics(name: str) -> tuple[BusDiagnostics, Recorder]:
    """A BusDiagnostics that is never started (its handlers are driven by the test)."""
    config = parsed_config(name)
    recorder = Recorder()
    diagnostics = BusDiagnostics(
        config.diagnostics.buses[0], config.buses[0], recorder, clock=FakeClock()
    )
    return diagnostics, recorder


class ScriptedConnection(BaseConnection):
    """A udsoncan connection to an ECU that answers every request with ``answers``, in order;
    waiting for more raises udsoncan's timeout at once."""

    def __init__(self) -> None:
        super().__init__("scripted")
        self.answers: list[bytes] = []
        self.requests: list[bytes] = []
        self._pending: list[bytes] = []

    def open(self) -> ScriptedConnection:
        return self

    def close(self) -> None:
        pass

    def is_open(self) -> bool:
        return True

    def empty_rxqueue(self) -> None:
        self._pending.clear()

    def specific_send(self, payload: bytes, timeout: float | None = None) -> None:
        self.requests.append(bytes(payload))
        self._pending.extend(self.answers)

    def specific_wait_frame(self, timeout: float | None = None) -> bytes | None:
        if not self._pending:
            raise TimeoutException("the scripted ECU has nothing more to say")  # type: ignore[no-untyped-call]
        return self._pending.pop(0)


class ScriptedChannel:
    """What UdsEcu uses of an IsoTpChannel, over a ScriptedConnection."""

    timeout = 0.05

    def __init__(self) -> None:
        self.connection = ScriptedConnection()
        self._lock = threading.Lock()

    def lock(self) -> threading.Lock:
        return self._lock


def scripted_ecu(config: UdsEcuConfig) -> tuple[UdsEcu, ScriptedConnection]:
    channel = ScriptedChannel()
    return UdsEcu(config, cast(IsoTpChannel, channel)), channel.connection


class ScriptedObd(ObdClient):
    """An ObdClient whose ECUs' answers come from ``answer(mode, pid)`` (by response id)."""

    def __init__(self, answer: Callable[[int, int], dict[int, bytes]]) -> None:
        self._answer = answer
        self.asked: list[tuple[int, int]] = []

    def ask(self, mode: int, pid: int) -> dict[int, bytes]:
        self.asked.append((mode, pid))
        answers = self._answer(mode, pid)
        if not answers:
            raise DiagnosticTimeout("no ECU answered")
        return answers


def virtual_channel() -> str:
    return f"properties-{uuid.uuid4().hex[:12]}"


# == J1939-73 DM1 ================================================================================


@PURE
@given(
    lamps=LAMPS,
    flash=LAMPS,
    dtcs=DM1_DTCS,
    cm=st.lists(st.integers(0, 1), min_size=40, max_size=40),
)
def test_dm1_decodes_lamps_and_every_dtc_as_j1939_73_encodes_them(
    lamps: int, flash: int, dtcs: list[tuple[int, int, int]], cm: list[int]
) -> None:
    records = [dtc_record(spn, fmi, oc, c) for (spn, fmi, oc), c in zip(dtcs, cm, strict=False)]
    dm1 = decode_dm1(dm1_message(lamps, flash, records))
    assert (dm1.lamps >> 8, dm1.lamps & 0xFF) == (lamps, flash)
    # CM 0: version 4, the only one J1939-73 still defines, decoded (the CM bit never leaks
    # into the count); CM 1: one of versions 1-3, kept as sent, never read as version 4.
    assert dm1.dtcs == tuple(dtc for dtc, c in zip(dtcs, cm, strict=False) if c == 0)
    assert dm1.cm1 == tuple(r for r, c in zip(records, cm, strict=False) if c == 1)


@PURE
@given(
    lamps=LAMPS,
    items=st.lists(
        st.one_of(
            st.tuples(SPNS, FMIS, OCS),
            st.just("no DTC"),
            st.just("not available"),
            st.tuples(st.just(0), st.just(0), OCS),  # SPN 0 FMI 0: no DTC, whatever the count
        ),
        max_size=30,
    ),
)
def test_dm1_skips_no_dtc_and_not_available_records(lamps: int, items: list[Any]) -> None:
    records = []
    expected = []
    for item in items:
        if item == "no DTC":
            records.append(NO_DTC_RECORD)
        elif item == "not available":
            records.append(NOT_AVAILABLE_RECORD)
        else:
            records.append(dtc_record(*item))
            if item[:2] != (0, 0):
                expected.append(item)
    assert decode_dm1(dm1_message(lamps, 0xFF, records)).dtcs == tuple(expected)


@PURE
@given(st.binary(max_size=64))
def test_dm1_decoder_is_total_over_arbitrary_bytes(data: bytes) -> None:
    if len(data) < 6:
        with pytest.raises(ValueError):
            decode_dm1(data)
        return
    dm1 = decode_dm1(data)
    lamps, dtcs, old = dm1_reference(data)
    assert dm1.lamps == lamps and list(dm1.dtcs) == dtcs and list(dm1.cm1) == old
    assert all(0 <= spn < 2**19 - 1 and 0 <= fmi < 32 and 0 <= oc < 128 for spn, fmi, oc in dtcs)


@PURE
@given(spn=st.integers(0, 2**19 - 1), fmi=FMIS)
def test_j1939_dtc_text(spn: int, fmi: int) -> None:
    assert j1939_dtc_text(spn, fmi) == f"SPN {spn} FMI {fmi}"


# == J1939-21 identifiers ========================================================================


@PURE
@given(
    priority=st.integers(0, 7),
    data_page=st.integers(0, 1),
    pdu_format=st.integers(0, 255),
    pdu_specific=st.integers(0, 255),
    source=st.integers(0, 255),
)
def test_pgn_of_reads_j1939_21_identifiers(
    priority: int, data_page: int, pdu_format: int, pdu_specific: int, source: int
) -> None:
    can_id = priority << 26 | data_page << 24 | pdu_format << 16 | pdu_specific << 8 | source
    if pdu_format < 240:  # PDU1: PS is the destination, not part of the PGN
        expected = (data_page << 16 | pdu_format << 8, pdu_specific, source)
    else:  # PDU2: broadcast, PS is the group extension
        expected = (data_page << 16 | pdu_format << 8 | pdu_specific, 0xFF, source)
    assert pgn_of(can_id) == expected


@PURE
@given(pgn=st.integers(0, 0x1FFFF), source=st.integers(0, 0xFD), destination=st.integers(0, 0xFF))
def test_request_frame_is_a_j1939_21_request(pgn: int, source: int, destination: int) -> None:
    msg = request_frame(pgn, source, destination)
    assert msg.is_extended_id and msg.arbitration_id >> 26 == 6  # default priority of a Request
    assert pgn_of(msg.arbitration_id) == (PGN_REQUEST, destination, source)
    assert bytes(msg.data) == bytes((pgn & 0xFF, pgn >> 8 & 0xFF, pgn >> 16))


# == J1939-21 transport: well-formed transfers ====================================================


@PURE
@given(
    pgn=st.sampled_from([PGN_DM1, PGN_VIN]),
    payload=st.binary(min_size=9, max_size=1785),
    source=SOURCES,
    gap=st.sampled_from([0.0, 0.05, 0.2, 0.7]),
)
def test_bam_of_any_size_is_delivered_exactly_once(
    pgn: int, payload: bytes, source: int, gap: float
) -> None:
    run = Reassembly()
    run.feed(*bam_frames(pgn, payload, source), gap=gap)
    run.feed(*bam_frames(pgn, payload, source)[1:], gap=gap)  # a repeat of its packets: ignored
    assert run.delivered == [(pgn, source, payload)]
    assert run.stats == {"transfers": 1}
    assert run.sent == []  # a BAM is never answered
    assert not run.reassembler._sessions


@PURE
@given(
    pgn=st.sampled_from([PGN_DM1, PGN_VIN]),
    payload=st.binary(min_size=9, max_size=600),
    source=SOURCES.filter(lambda a: a != OUR_ADDRESS),
    per_cts=st.integers(0, 255),
)
def test_cmdt_to_us_is_answered_with_cts_and_acknowledged(
    pgn: int, payload: bytes, source: int, per_cts: int
) -> None:
    chunks = packets_of(payload)
    run = Reassembly()
    run.feed(tp_cm(RTS, len(payload), len(chunks), per_cts, pgn, source, OUR_ADDRESS))
    # J1939-21: each CTS asks for at most what the RTS allows per CTS (0xFF: no limit; 0 is
    # taken as no limit too), and the next CTS comes once those packets are in.
    window = per_cts if 0 < per_cts < 0xFF else len(chunks)
    sent = 0
    while sent < len(chunks):
        cts = run.sent[-1]
        assert cts.is_extended_id
        assert pgn_of(cts.arbitration_id) == (TP_CM, source, OUR_ADDRESS)
        # CTS: packets that can be sent, next packet number, 2 reserved bytes, the PGN.
        count = min(window, len(chunks) - sent)
        assert bytes(cts.data) == bytes((CTS, count, sent + 1, 0xFF, 0xFF)) + pgn.to_bytes(
            3, "little"
        )
        assert run.delivered == []
        batch = chunks[sent : sent + count]
        run.feed(*(tp_dt(i, c, source, OUR_ADDRESS) for i, c in enumerate(batch, sent + 1)))
        sent += count
    assert run.delivered == [(pgn, source, payload)]
    rounds = -(-len(chunks) // window)
    assert len(run.sent) == rounds + 1
    ack = run.sent[-1]
    assert pgn_of(ack.arbitration_id) == (TP_CM, source, OUR_ADDRESS)
    # EndOfMsgAck: size, total packets, a reserved byte, the PGN.
    assert bytes(ack.data) == (
        bytes((EOM_ACK,))
        + len(payload).to_bytes(2, "little")
        + bytes((len(chunks), 0xFF))
        + pgn.to_bytes(3, "little")
    )
    assert run.stats == {"transfers": 1}


@PURE
@given(
    first=st.binary(min_size=9, max_size=200),
    second=st.binary(min_size=9, max_size=200),
    sources=st.lists(SOURCES, min_size=2, max_size=2, unique=True),
    order=st.lists(st.booleans(), min_size=60, max_size=60),
)
def test_bams_from_two_sources_interleaved_are_both_delivered_exactly(
    first: bytes, second: bytes, sources: list[int], order: list[bool]
) -> None:
    a, b = bam_frames(PGN_DM1, first, sources[0]), bam_frames(PGN_DM1, second, sources[1])
    merged = []
    picks = iter(order)
    while a or b:  # each source's frames in their order, the two sources mixed
        take_a = next(picks, True) if a and b else bool(a)
        merged.append((a if take_a else b).pop(0))
    run = Reassembly()
    run.feed(*merged, gap=0.01)
    assert sorted(run.delivered) == sorted(
        [(PGN_DM1, sources[0], first), (PGN_DM1, sources[1], second)]
    )
    assert run.stats == {"transfers": 2}


@PURE
@given(
    first=st.binary(min_size=15, max_size=200),
    second=st.binary(min_size=9, max_size=200),
    source=SOURCES,
    data=st.data(),
)
def test_a_new_bam_from_the_same_source_replaces_the_unfinished_one(
    first: bytes, second: bytes, source: int, data: st.DataObject
) -> None:
    frames = bam_frames(PGN_DM1, first, source)
    cut = data.draw(st.integers(1, len(frames) - 1), label="frames of the first BAM sent")
    run = Reassembly()
    run.feed(*frames[:cut], *bam_frames(PGN_DM1, second, source), gap=0.05)
    assert run.delivered == [(PGN_DM1, source, second)]
    assert run.stats == {"transfers_incomplete": 1, "transfers": 1}


@PURE
@given(payload=st.binary(min_size=15, max_size=300), source=SOURCES, data=st.data())
def test_an_abort_ends_a_cmdt_and_its_later_packets_are_ignored(
    payload: bytes, source: int, data: st.DataObject
) -> None:
    source = source if source != OUR_ADDRESS else 0
    chunks = packets_of(payload)
    sent = data.draw(st.integers(0, len(chunks) - 1), label="packets before the abort")
    run = Reassembly()
    run.feed(tp_cm(RTS, len(payload), len(chunks), 0xFF, PGN_VIN, source, OUR_ADDRESS))
    dts = [tp_dt(i, c, source, OUR_ADDRESS) for i, c in enumerate(chunks, 1)]
    abort = frame(
        j1939_id(7, TP_CM, OUR_ADDRESS, source),
        bytes((ABORT, 3, 0xFF, 0xFF, 0xFF)) + PGN_VIN.to_bytes(3, "little"),
    )
    run.feed(*dts[:sent], abort, *dts[sent:], gap=0.05)
    assert run.delivered == []
    assert run.stats == {"transfers_aborted": 1}
    assert len(run.sent) == 1  # the CTS; no acknowledgement of an aborted transfer


@PURE
@given(
    payload=st.binary(min_size=15, max_size=300),
    source=SOURCES,
    data=st.data(),
    wait=st.one_of(st.floats(0.0, T1 - 0.01), st.floats(T1 + 0.01, 1e6)),
)
def test_a_stalled_bam_expires_only_after_t1(
    payload: bytes, source: int, data: st.DataObject, wait: float
) -> None:
    frames = bam_frames(PGN_DM1, payload, source)
    cut = data.draw(st.integers(1, len(frames) - 1), label="frames sent before it stalls")
    run = Reassembly()
    run.feed(*frames[:cut], gap=0.1)
    run.reassembler.expire(run.now + wait)
    if wait < T1:
        assert run.reassembler._sessions and run.stats == {}
        run.feed(*frames[cut:], gap=0.1)
        assert run.delivered == [(PGN_DM1, source, payload)]
    else:
        assert not run.reassembler._sessions
        assert run.stats == {"transfers_timed_out": 1}
        run.feed(*frames[cut:], gap=0.1)  # too late: ignored
        assert run.delivered == []
    assert PACKET_TIMEOUT == T1


# == J1939-21 transport: damaged transfers ========================================================

#: Kinds of damage; frames of other sources (harmless) weigh more, so that both outcomes occur.
DAMAGE = st.sampled_from(
    ["drop", "duplicate", "swap", "renumber", "gap", "noise", "noise", "noise", "empty"]
)


@st.composite
def damaged_bam(
    draw: st.DrawFn,
) -> tuple[bytes, int, list[tuple[float, can.Message]], bool | None]:
    """A DM1 BAM from one source, then damage: packets lost, repeated, swapped, renumbered
    (0, beyond the total, wrapped), late (more than T1), frames of other sources in between,
    zero-length frames from the same source. Also whether the transfer must still be delivered
    (J1939-21: announced, then packets 1..n in order, none later than T1), or None when the
    standard leaves it open (a zero-length TP.DT: dropping the transfer is as right as
    ignoring the frame)."""
    payload = draw(st.binary(min_size=9, max_size=100), label="payload")
    source = draw(SOURCES, label="source")
    frames: list[tuple[float, can.Message]] = [
        (0.05, m) for m in bam_frames(PGN_DM1, payload, source)
    ]
    damage = draw(st.lists(DAMAGE, min_size=1, max_size=4), label="damage")
    for kind in damage:
        i = draw(st.integers(0, len(frames) - 1))
        delay, msg = frames[i]
        if kind == "drop" and len(frames) > 1:
            del frames[i]
        elif kind == "duplicate":
            frames.insert(i, (delay, msg))
        elif kind == "swap" and i + 1 < len(frames):
            frames[i], frames[i + 1] = frames[i + 1], frames[i]
        elif kind == "renumber" and pgn_of(msg.arbitration_id)[0] == TP_DT and msg.dlc == 8:
            seq = draw(st.sampled_from([0, 255, 256 + 1, len(frames) + 1]), label="seq") % 256
            frames[i] = (delay, frame(msg.arbitration_id, bytes((seq,)) + bytes(msg.data[1:])))
        elif kind == "gap":
            frames[i] = (draw(st.floats(T1 + 0.01, 5.0), label="gap"), msg)
        elif kind == "noise":  # other sources' transport and DM1 frames
            other = draw(SOURCES.filter(lambda a: a != source), label="other source")
            pgn = draw(st.sampled_from([TP_DT, PGN_DM1]), label="noise pgn")
            data = draw(st.binary(max_size=8), label="noise data")
            frames.insert(i, (0.01, frame(j1939_id(7, pgn, 0xFF, other), data)))
        elif kind == "empty":  # a zero-length TP.DT or TP.CM from the same source
            pgn = draw(st.sampled_from([TP_DT, TP_CM]), label="empty pgn")
            frames.insert(i, (0.01, frame(j1939_id(7, pgn, 0xFF, source), b"")))
    return payload, source, frames, j1939_21_delivers(frames, source, payload, damage)


def j1939_21_delivers(
    frames: list[tuple[float, can.Message]], source: int, payload: bytes, damage: list[str]
) -> bool | None:
    """Whether a J1939-21 receiver delivers ``payload`` from these frames (None: open)."""
    if "empty" in damage:
        return None
    total = len(packets_of(payload))
    now, last, expected = 0.0, 0.0, None
    for delay, msg in frames:
        now += delay
        pgn, _, sender = pgn_of(msg.arbitration_id)
        if sender != source or pgn not in (TP_CM, TP_DT):
            continue
        if pgn == TP_CM:  # (only the BAM's announcement, possibly repeated: a fresh start)
            expected, last = 1, now
        elif expected is not None:
            if msg.data[0] != expected or now - last > T1:
                expected = None  # packets out of order or late: the transfer is lost
                continue
            expected, last = expected + 1, now
            if expected > total:
                return True
    return False


@settings(FEW, max_examples=150)
@given(damaged_bam())
def test_a_damaged_bam_is_dropped_and_counted_never_delivered_wrong(
    case: tuple[bytes, int, list[tuple[float, can.Message]], bool | None],
) -> None:
    payload, source, frames, delivers = case
    event(f"J1939-21 says: {'open' if delivers is None else ('deliver' if delivers else 'drop')}")
    run = Reassembly(may_send=False)
    for delay, msg in frames:
        run.now += delay
        run.reassembler.on_message_received(msg)
    run.reassembler.expire(float("inf"))
    ours = [data for pgn, sender, data in run.delivered if sender == source and len(data) > 8]
    assert all(data == payload for data in ours)  # never anything else as this source's DM1
    assert not run.reassembler._sessions
    if delivers is not None:
        assert ours == ([payload] if delivers else [])
    if not ours:
        lost = ("transfers_incomplete", "transfers_timed_out", "malformed")
        assert sum(run.stats.get(k, 0) for k in lost) >= 1 or not any(
            pgn_of(m.arbitration_id)[0] == TP_CM and pgn_of(m.arbitration_id)[2] == source
            for _, m in frames
        )


J1939_IDS = st.one_of(
    st.builds(
        j1939_id,
        st.integers(0, 7),
        st.sampled_from([TP_CM, TP_DT, PGN_DM1, PGN_VIN, PGN_REQUEST, 0xFEE3]),
        st.sampled_from([OUR_ADDRESS, 0xFF, 0x00, 0x17]),
        st.sampled_from([0x00, 0x03, 0x17, OUR_ADDRESS]),
    ),
    st.integers(0, 2**29 - 1),
)
TP_CM_DATA = st.builds(
    lambda control, size, packets, fourth, pgn: (
        bytes((control,))
        + size.to_bytes(2, "little")
        + bytes((packets if packets is not None else (size + 6) // 7 % 256, fourth))
        + pgn.to_bytes(3, "little")
    ),
    st.sampled_from([RTS, CTS, EOM_ACK, BAM, ABORT, 0, 99]),
    st.integers(0, 0xFFFF) | st.integers(9, 30),
    st.none() | st.integers(0, 255),
    st.integers(0, 255),
    st.sampled_from([PGN_DM1, PGN_VIN, 0xFEE3]) | st.integers(0, 0xFFFFFF),
)
TP_DT_DATA = st.builds(
    lambda seq, rest: bytes((seq,)) + rest, st.integers(0, 6), st.binary(max_size=7)
)
#: Frames of transfers from two sources, to us or to all: announcements of plausible sizes,
#: packets numbered near the start (7 bytes or fewer), aborts; so that transfers start, complete,
#: break and get answered.
TRANSFER_FRAMES = st.builds(
    lambda control, size, pgn, seq, rest, source, to_us: (
        j1939_id(7, TP_DT if control is None else TP_CM, OUR_ADDRESS if to_us else 0xFF, source),
        bytes((seq,)) + rest
        if control is None
        else tp_cm(control, size, (size + 6) // 7, 0xFF, pgn, source).data,
    ),
    st.sampled_from([None, None, None, None, RTS, BAM, ABORT]),
    st.integers(9, 30),
    st.sampled_from([PGN_DM1, PGN_VIN, 0xFEE3]),
    st.integers(1, 5) | st.integers(0, 255),
    st.binary(min_size=7, max_size=7) | st.binary(max_size=7),
    st.sampled_from([0x00, 0x17]),
    st.booleans(),
)
RANDOM_FRAME = st.tuples(
    st.floats(0.0, 1.0) | st.just(0.05),  # time before the frame
    st.one_of(TRANSFER_FRAMES, st.tuples(J1939_IDS, st.one_of(TP_CM_DATA, TP_DT_DATA))),
    st.sampled_from(["extended"] * 5 + ["standard", "error", "remote"]),
    st.booleans(),  # expire() after it
)


@st.composite
def bus_traffic(draw: st.DrawFn) -> list[tuple[float, tuple[int, bytes], str, bool]]:
    """Bursts of random frames and whole transfers (BAM, or RTS and packets to us; some cut
    short) from two sources, one after the other."""
    traffic: list[tuple[float, tuple[int, bytes], str, bool]] = []
    for _ in range(draw(st.integers(1, 6), label="episodes")):
        if draw(st.booleans(), label="a transfer"):
            source = draw(st.sampled_from([0x00, 0x17]), label="source")
            to_us = draw(st.booleans(), label="to us")
            pgn = draw(st.sampled_from([PGN_DM1, PGN_VIN, 0xFEE3]), label="pgn")
            payload = draw(st.binary(min_size=9, max_size=40), label="payload")
            destination = OUR_ADDRESS if to_us else 0xFF
            chunks = packets_of(payload)
            announce = tp_cm(
                RTS if to_us else BAM, len(payload), len(chunks), 0xFF, pgn, source, destination
            )
            packets = [tp_dt(k, c, source, destination) for k, c in enumerate(chunks, 1)]
            sent = draw(st.integers(0, len(packets)) | st.just(len(packets)), label="packets")
            for msg in [announce, *packets[:sent]]:
                traffic.append((0.05, (msg.arbitration_id, bytes(msg.data)), "extended", False))
        else:
            traffic += draw(st.lists(RANDOM_FRAME, max_size=12), label="random frames")
    return traffic


@settings(FEW, max_examples=150)
@given(bus_traffic())
def test_random_frames_never_raise_and_only_what_was_asked_for_comes_out(
    frames: list[tuple[float, tuple[int, bytes], str, bool]],
) -> None:
    run = Reassembly()
    requested: set[int] = set()  # sources that sent an RTS to us
    for delay, (can_id, data), kind, expire in frames:
        run.now += delay
        msg = can.Message(
            arbitration_id=can_id if kind != "standard" else can_id & 0x7FF,
            data=data,
            is_extended_id=kind != "standard",
            is_error_frame=kind == "error",
            is_remote_frame=kind == "remote",
        )
        if (
            kind == "extended"
            and pgn_of(can_id)[:2] == (TP_CM, OUR_ADDRESS)
            and data[:1] == b"\x10"
        ):
            requested.add(can_id & 0xFF)
        run.reassembler.on_message_received(msg)
        if expire:
            run.reassembler.expire()
    run.reassembler.expire(float("inf"))
    event(f"transfers completed: {bool(run.stats.get('transfers'))}, replied: {bool(run.sent)}")
    assert not run.reassembler._sessions
    assert all(pgn in run.pgns and len(data) <= 1785 for pgn, _, data in run.delivered)
    for reply in run.sent:  # only CTS and acknowledgements, from us, to who asked
        pgn, destination, sender = pgn_of(reply.arbitration_id)
        assert (pgn, sender) == (TP_CM, OUR_ADDRESS) and destination in requested
        assert reply.data[0] in (CTS, EOM_ACK) and len(reply.data) == 8
    assert all(isinstance(v, int) and v > 0 for v in run.stats.values())


# == DM1 and the J1939 VIN in BusDiagnostics ======================================================


@FEW
@given(
    source=SOURCES,
    readings=st.lists(
        st.one_of(
            st.dictionaries(
                st.sampled_from([(190, 2), (110, 16), (91, 3), (2**19 - 2, 31)])
                | st.tuples(SPNS, FMIS),  # a few DTCs come and go, change their count
                st.integers(1, 3) | OCS,
                max_size=12,
            ),
            st.binary(max_size=5),  # too short for a DM1
        ),
        min_size=1,
        max_size=8,
    ),
)
def test_dm1_readings_become_exactly_the_dtc_events(
    source: int, readings: list[dict[tuple[int, int], int] | bytes]
) -> None:
    diagnostics, recorder = bus_diagnostics("j1939")
    ecu = f"SA{source:02X}"
    previous: dict[str, int] = {}
    invalid = 0
    for reading in readings:
        if isinstance(reading, bytes):
            diagnostics._on_j1939(PGN_DM1, source, reading, 0.0)
            invalid += 1
            assert recorder.take() == []  # counted, nothing emitted
            continue
        records = [dtc_record(spn, fmi, oc) for (spn, fmi), oc in reading.items()]
        diagnostics._on_j1939(PGN_DM1, source, dm1_message(0x04, 0xFF, records), 0.0)
        current = {f"SPN {spn} FMI {fmi}": oc for (spn, fmi), oc in reading.items()}
        emitted = recorder.take()
        assert {(r.name, r.value, r.text) for r in emitted} == dtc_events(previous, current)
        assert len(emitted) == len(dtc_events(previous, current))
        assert all((r.kind, r.ecu, r.source) == ("dtc", ecu, source) for r in emitted)
        previous = current
    assert diagnostics.counters.get("invalid_responses", 0) == invalid
    assert diagnostics.dtcs.active().get(ecu, {}) == previous


@FEW
@given(source=SOURCES, vins=st.lists(VINS, min_size=1, max_size=4), tail=st.binary(max_size=8))
def test_j1939_vin_is_read_up_to_its_delimiter_and_sent_when_it_changes(
    source: int, vins: list[str], tail: bytes
) -> None:
    diagnostics, recorder = bus_diagnostics("j1939")
    last = None
    for vin in vins:
        diagnostics._on_j1939(PGN_VIN, source, vin.encode() + b"*" + tail, 0.0)
        assert diagnostics.vin == vin
        emitted = recorder.take()
        expected = [] if vin == last else [("vin", f"SA{source:02X}", vin, source)]
        assert [(r.kind, r.ecu, r.text, r.source) for r in emitted] == expected
        last = vin


# == DTC texts (SAE J2012, ISO 14229) =============================================================


@PURE
@given(st.integers(0, 0xFFFFFF))
def test_uds_and_obd_dtc_texts_follow_j2012(code: int) -> None:
    failure_type = code & 0xFF
    assert obd_dtc_text(code >> 8) == j2012_text(code >> 8)
    expected = j2012_text(code >> 8) + (f"-{failure_type:02X}" if failure_type else "")
    assert uds_dtc_text(code) == expected


@PURE
@given(st.integers(0, 255))
def test_status_text_names_the_iso_14229_status_bits(status: int) -> None:
    names = [
        "testFailed",
        "testFailedThisOperationCycle",
        "pendingDTC",
        "confirmedDTC",
        "testNotCompletedSinceLastClear",
        "testFailedSinceLastClear",
        "testNotCompletedThisOperationCycle",
        "warningIndicatorRequested",
    ]
    assert status_text(status) == ",".join(n for bit, n in enumerate(names) if status & 1 << bit)


# == OBD-II (SAE J1979) ==========================================================================


@PURE
@given(base=st.sampled_from(range(0, 0xE1, 0x20)), data=st.binary(min_size=4, max_size=8))
def test_supported_pid_bitmaps_read_as_j1979_numbers_them(base: int, data: bytes) -> None:
    assert parse_supported(base, data) == supported_reference(base, data)


@PURE
@given(base=st.sampled_from(range(0, 0xE1, 0x20)), data=st.binary(max_size=3))
def test_a_short_supported_pid_answer_is_refused(base: int, data: bytes) -> None:
    with pytest.raises(DiagnosticError):
        parse_supported(base, data)


@st.composite
def obd_ecus(draw: st.DrawFn) -> dict[int, set[int]]:
    """Mode 01 PIDs of up to 8 OBD ECUs, each consistent as J1979 asks: an ECU with a PID above
    0x20 lists every range PID (0x20, 0x40, ...) below it."""
    rids = draw(st.lists(st.sampled_from(RESPONSE_IDS), min_size=1, max_size=8, unique=True))
    ecus = {}
    for rid in rids:
        pids = draw(st.sets(st.integers(1, 0xFF), max_size=30))
        pids |= {marker for pid in pids for marker in range(0x20, pid, 0x20)}
        ecus[rid] = pids
    return ecus


@PURE
@given(obd_ecus())
def test_supported_pid_discovery_follows_the_ranges_every_ecu_gives(
    ecus: dict[int, set[int]],
) -> None:
    def answer(mode: int, pid: int) -> dict[int, bytes]:
        assert mode == 0x01 and pid % 0x20 == 0
        # J1979: every ECU answers PID 00; the others only where it listed the range.
        return {
            rid: bytes((0x41, pid)) + bitmap(pid, pids)
            for rid, pids in ecus.items()
            if pid == 0 or pid in pids
        }

    obd = ScriptedObd(answer)
    found = obd.supported_pids()
    bases = [pid for _, pid in obd.asked]
    assert bases == list(range(0, bases[-1] + 1, 0x20))
    # It goes on while some ECU lists the next range, and stops where none does.
    assert all(any(b + 0x20 in pids for pids in ecus.values()) for b in bases[:-1])
    assert bases[-1] == 0xE0 or not any(bases[-1] + 0x20 in pids for pids in ecus.values())
    assert found == {rid: {p for p in pids if p <= bases[-1] + 0x20} for rid, pids in ecus.items()}


OBD_ANSWER = st.one_of(
    st.binary(max_size=10),
    st.builds(
        lambda a, b: a + b,
        st.sampled_from([b"\x41\x0d", b"\x41\x0c", b"\x7f\x01"]),
        st.binary(max_size=4),
    ),
)


@PURE
@given(answers=st.dictionaries(st.sampled_from(RESPONSE_IDS), OBD_ANSWER, min_size=1, max_size=8))
def test_obd_request_keeps_exactly_the_positive_answers(answers: dict[int, bytes]) -> None:
    mode, pid = 0x01, 0x0D
    positive = {rid: a[2:] for rid, a in answers.items() if a[:2] == bytes((mode + 0x40, pid))}
    # ISO 14229-1 / ISO 15765-4: 7F, the service asked, an NRC; 0x78 says the answer comes later,
    # and a 7F naming another service answers another request.
    not_answers = {
        rid
        for rid, a in answers.items()
        if a[:1] == b"\x7f" and len(a) >= 2 and (a[1] != mode or a[2:3] == b"\x78")
    }
    negative = sorted(
        (rid, a)
        for rid, a in answers.items()
        if len(a) >= 3 and a[0] == 0x7F and rid not in not_answers
    )
    obd = ScriptedObd(lambda m, p: answers)
    if positive:
        assert obd.request(mode, pid) == positive
    elif negative:
        with pytest.raises(NegativeResponse) as info:
            obd.request(mode, pid)
        first = negative[0][1]
        assert (info.value.service, info.value.code) == (first[1], first[2])
    else:
        with pytest.raises(DiagnosticError) as error:
            obd.request(mode, pid)
        if not_answers == answers.keys():  # nothing but "wait" or others' refusals: no answer
            assert type(error.value) is DiagnosticTimeout
        else:  # unexpected answers: invalid, counted so
            assert type(error.value) is DiagnosticError


@PURE
@given(vin=VINS, padding=st.integers(0, 3), count=st.booleans())
def test_vin_answer_is_parsed_exactly(vin: str, padding: int, count: bool) -> None:
    data = (b"\x01" if count else b"") + bytes(padding) + vin.encode()
    assert parse_vin(data) == vin
    obd = ScriptedObd(lambda mode, pid: {0x7E8: bytes((0x49, 0x02)) + data})
    assert obd.vins() == {0x7E8: vin}
    assert obd.asked == [(0x09, 0x02)]


@PURE
@given(st.binary(max_size=40))
def test_vin_parser_refuses_only_as_a_diagnostic_error(data: bytes) -> None:
    try:
        vin = parse_vin(data)
    except DiagnosticError:
        return
    assert vin and vin == vin.strip("\0 ")


@functools.cache
def obd2_database() -> tuple[Any, Any]:
    database: Any = cantools.database.load_file(str(OBD2_DBC))
    message = database.get_message_by_name("OBD2")
    return message, dict_decoder(message)


@PURE
@given(pid=st.sampled_from(sorted(J1979_FORMULAS)), a=st.integers(0, 255), b=st.integers(0, 255))
def test_mode_01_answers_decode_through_the_obd2_database_per_j1979(
    pid: int, a: int, b: int
) -> None:
    size, formula, name = J1979_FORMULAS[pid]
    answer = bytes((0x41, pid, a, b)[: 2 + size])
    payload = (bytes((len(answer),)) + answer).ljust(8, b"\xaa")  # an ISO-TP single frame
    message, decode = obd2_database()
    raw = decode(payload)  # what the pipeline sends: raw values; scaled with the schema
    signal = message.get_signal_by_name(name)
    value = raw[name] * signal.scale + signal.offset
    assert math.isclose(value, formula(a, b), rel_tol=1e-4, abs_tol=1e-9)


# == UDS (ISO 14229-1) through udsoncan, scripted answers =========================================

BMS = UdsEcuConfig("BMS", 0x7E4, 0x7EC, dtc_status_mask=0x2F)
UDS_DTCS = st.dictionaries(st.integers(0, 0xFFFFFF), st.integers(1, 255), max_size=60)


def dtc_answer(dtcs: dict[int, int], availability: int, padding: int) -> bytes:
    records = b"".join(code.to_bytes(3, "big") + bytes((status,)) for code, status in dtcs.items())
    return bytes((0x59, 0x02, availability)) + records + bytes(padding)


@PURE
@given(
    dtcs=UDS_DTCS,
    availability=st.integers(0, 255),
    padding=st.integers(0, 7),
    pending=st.integers(0, 3),
)
def test_uds_dtcs_are_read_exactly_after_any_response_pending(
    dtcs: dict[int, int], availability: int, padding: int, pending: int
) -> None:
    ecu, connection = scripted_ecu(BMS)
    connection.answers = [b"\x7f\x19\x78"] * pending + [dtc_answer(dtcs, availability, padding)]
    assert ecu.read_dtcs() == list(dtcs.items())
    assert connection.requests == [bytes((0x19, 0x02, 0x2F))]


@PURE
@given(did=DIDS, value=st.binary(max_size=64), pending=st.integers(0, 3))
def test_uds_did_is_read_exactly(did: int, value: bytes, pending: int) -> None:
    ecu, connection = scripted_ecu(BMS)
    connection.answers = [b"\x7f\x22\x78"] * pending + [b"\x62" + did.to_bytes(2, "big") + value]
    assert ecu.read_did(did) == value
    assert connection.requests == [b"\x22" + did.to_bytes(2, "big")]


@PURE
@given(
    service=st.sampled_from(["dtcs", "did"]),
    code=NRCS,
    pending=st.integers(0, 3),
)
def test_uds_negative_responses_are_named_as_iso_14229_names_them(
    service: str, code: int, pending: int
) -> None:
    ecu, connection = scripted_ecu(BMS)
    sid = 0x19 if service == "dtcs" else 0x22
    connection.answers = [bytes((0x7F, sid, 0x78))] * pending + [bytes((0x7F, sid, code))]
    with pytest.raises(NegativeResponse) as info:
        ecu.read_dtcs() if service == "dtcs" else ecu.read_did(0xF190)
    assert (info.value.service, info.value.code, info.value.name) == (sid, code, nrc_name(code))
    if code in ISO_14229_NRC:
        assert info.value.name == ISO_14229_NRC[code]


@PURE
@given(pending=st.integers(1, 5))
def test_uds_response_pending_without_an_answer_is_a_timeout(pending: int) -> None:
    ecu, connection = scripted_ecu(BMS)
    connection.answers = [b"\x7f\x19\x78"] * pending
    with pytest.raises(DiagnosticTimeout):
        ecu.read_dtcs()


UDS_GARBAGE = st.one_of(
    st.binary(max_size=24),
    st.builds(
        lambda prefix, rest: prefix + rest,
        st.sampled_from(
            [b"\x59\x02", b"\x59\x03", b"\x62\xf1\x90", b"\x62\xf1\x91", b"\x7f\x19", b"\x7f\x22"]
        ),
        st.binary(max_size=20),
    ),
)


@PURE
@given(answer=UDS_GARBAGE)
def test_uds_garbled_answers_end_in_diagnostic_errors_or_exact_values(answer: bytes) -> None:
    ecu, connection = scripted_ecu(BMS)
    connection.answers = [answer]
    expected = uds_dtcs_reference(answer)
    if expected is None:
        with pytest.raises(DiagnosticError):
            ecu.read_dtcs()
    else:
        assert ecu.read_dtcs() == expected
    if answer[:3] == b"\x62\xf1\x90":
        assert ecu.read_did(0xF190) == answer[3:]
    else:
        with pytest.raises(DiagnosticError):
            ecu.read_did(0xF190)


def garbled_outcome(answer: bytes) -> str:
    """The counter a bad answer to 0x19 0x02 lands in: a negative response (ISO 14229: 0x7F,
    the request's SID, an NRC) in ``negative_responses``, "response pending" and then silence
    in ``timeouts``, anything else in ``invalid_responses``."""
    if len(answer) >= 3 and answer[:2] == b"\x7f\x19":
        return "timeouts" if answer[2] == 0x78 else "negative_responses"
    return "invalid_responses"


UDS_READING = st.one_of(
    st.builds(
        lambda d: ("good", d),
        st.dictionaries(
            st.sampled_from([0x070000, 0xC10000, 0x0A8000, 0xC1001A]) | st.integers(0, 0xFFFFFF),
            st.sampled_from([0x08, 0x09, 0x28, 0x2F]) | st.integers(1, 255),
            max_size=8,
        ),  # a few DTCs come and go, change their status
    ),
    st.builds(lambda c: ("negative", c), NRCS),
    st.just(("silent", None)),
    st.builds(
        lambda a: ("garbled", a), UDS_GARBAGE.filter(lambda a: uds_dtcs_reference(a) is None)
    ),
)


@FEW
@given(st.lists(UDS_READING, min_size=1, max_size=8))
def test_schedule_counts_every_bad_uds_answer_and_sends_only_what_changed(
    readings: list[tuple[str, Any]],
) -> None:
    diagnostics, recorder = bus_diagnostics("uds")
    ecu, connection = scripted_ecu(diagnostics.config.uds[0])
    diagnostics.ecus = {"BMS": ecu}
    job = diagnostics._dtc_job("BMS")
    previous: dict[str, int] = {}
    outcomes = {"good": "responses", "negative": "negative_responses", "silent": "timeouts"}
    for kind, value in readings:
        before = dict(diagnostics.counters)
        if kind == "good":
            connection.answers = [dtc_answer(value, 0xFF, 0)]
        elif kind == "negative":
            connection.answers = [bytes((0x7F, 0x19, value))]
        else:
            connection.answers = [] if kind == "silent" else [value]
        assert diagnostics._attempt("BMS.dtcs", job) == (kind == "good")
        changed = {
            k: diagnostics.counters[k] - before.get(k, 0)
            for k in diagnostics.counters
            if diagnostics.counters[k] != before.get(k, 0)
        }
        outcome = outcomes.get(kind) or garbled_outcome(value)
        assert changed == {"requests": 1, outcome: 1}  # never "errors" (a bug of ours)
        emitted = recorder.take()
        if kind == "good":
            current = {uds_dtc_text(code): status for code, status in value.items()}
            assert {(r.name, r.value, r.text) for r in emitted} == dtc_events(previous, current)
            assert all((r.kind, r.ecu) == ("dtc", "BMS") for r in emitted)
            previous = current
        else:
            assert emitted == []
        assert diagnostics.dtcs.active().get("BMS", {}) == previous


# == The real path: can-isotp and udsoncan on python-can's virtual bus ============================


class IsoTpEcu:
    """Our IsoTpChannel (request_id -> response_id) and an ECU's can-isotp stack on a virtual bus
    of their own; the ECU answers each request with the payloads of ``answers``, in order."""

    def __init__(self, request_id: int, response_id: int, timeout: float) -> None:
        channel = virtual_channel()
        self.ours = can.Bus(interface="virtual", channel=channel)
        self.theirs = can.Bus(interface="virtual", channel=channel)
        self.notifier = can.Notifier(self.ours, [], timeout=0.05)
        self.ecu_notifier = can.Notifier(self.theirs, [], timeout=0.05)
        self.stack = isotp.NotifierBasedCanStack(
            self.theirs,
            self.ecu_notifier,
            address=isotp.Address(
                isotp.AddressingMode.Normal_11bits, txid=response_id, rxid=request_id
            ),
            params={"tx_padding": 0xAA, "blocking_send": False},
        )
        self.channel = IsoTpChannel(
            self.ours, self.notifier, request_id, response_id, timeout=timeout
        )
        self.answers: list[bytes] = []
        self.requests: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            request = self.stack.recv(block=True, timeout=0.05)
            if request is not None:
                self.requests.append(bytes(request))
                for answer in self.answers:
                    self.stack.send(answer)

    def __enter__(self) -> IsoTpEcu:
        self.stack.start()
        self.channel.open()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.channel.close()
        self.stack.stop()
        self.notifier.stop()
        self.ecu_notifier.stop()
        self.ours.shutdown()
        self.theirs.shutdown()


REAL_UDS_ANSWER = st.one_of(
    st.builds(lambda d, p: ("dtcs", d, p), UDS_DTCS, st.integers(0, 2)),
    st.builds(lambda v, p: ("did", v, p), st.binary(max_size=300), st.integers(0, 2)),
    st.builds(lambda c: ("negative", c, 0), NRCS),
    # Garbage, but not "response pending" forever (that waits P2*, 2 s, by design).
    st.builds(
        lambda a: ("garbled", a, 0), UDS_GARBAGE.filter(lambda a: a != b"" and a[2:3] != b"\x78")
    ),
)


def test_uds_over_the_virtual_bus_reads_generated_answers_exactly() -> None:
    with IsoTpEcu(0x7E4, 0x7EC, timeout=1.0) as rig:
        ecu = UdsEcu(BMS, rig.channel)

        @FEW
        @given(REAL_UDS_ANSWER)
        def check(case: tuple[str, Any, int]) -> None:
            kind, value, pending = case
            rig.requests.clear()
            if kind == "dtcs":
                rig.answers = [b"\x7f\x19\x78"] * pending + [dtc_answer(value, 0xFF, 0)]
                assert ecu.read_dtcs() == list(value.items())
                assert rig.requests == [b"\x19\x02\x2f"]
            elif kind == "did":
                rig.answers = [b"\x7f\x22\x78"] * pending + [b"\x62\xf1\x95" + value]
                assert ecu.read_did(0xF195) == value
                assert rig.requests == [b"\x22\xf1\x95"]
            elif kind == "negative":
                rig.answers = [bytes((0x7F, 0x19, value))]
                with pytest.raises(NegativeResponse) as info:
                    ecu.read_dtcs()
                assert info.value.code == value
            else:
                rig.answers = [value]
                expected = uds_dtcs_reference(value)
                if expected is None:
                    with pytest.raises(DiagnosticError):
                        ecu.read_dtcs()
                else:
                    assert ecu.read_dtcs() == expected

        check()
        assert not rig.channel.errors  # well-formed ISO-TP all along
        assert rig.notifier.exception is None


OBD_REAL_ANSWER = st.one_of(
    st.builds(lambda v, p: ("vin", v, p), VINS, st.integers(0, 3)),
    st.builds(lambda pids: ("pids", pids, 0), st.sets(st.integers(1, 0x20))),
    st.builds(lambda a: ("garbled", a, 0), st.binary(min_size=1, max_size=40)),
)


def test_physical_obd_over_the_virtual_bus_reads_vin_and_pids_exactly() -> None:
    with IsoTpEcu(0x7E0, 0x7E8, timeout=1.0) as rig:
        obd = PhysicalObd(rig.channel, 0x7E8)

        @FEW
        @given(OBD_REAL_ANSWER)
        def check(case: tuple[str, Any, int]) -> None:
            kind, value, padding = case
            if kind == "vin":  # 20 bytes and more: a first frame and consecutive frames
                rig.answers = [b"\x49\x02\x01" + bytes(padding) + value.encode()]
                assert obd.vins() == {0x7E8: value}
            elif kind == "pids":
                rig.answers = [b"\x41\x00" + bitmap(0, value)]
                assert obd.request(0x01, 0x00) == {0x7E8: bitmap(0, value)}
                assert parse_supported(0, obd.request(0x01, 0x00)[0x7E8]) == value
            else:
                rig.answers = [value]
                try:
                    got = obd.request(0x01, 0x0D)
                except DiagnosticError:
                    assert value[:2] != b"\x41\x0d"
                else:
                    assert got == {0x7E8: value[2:]} and value[:2] == b"\x41\x0d"

        check()
        assert not rig.channel.errors


ISOTP_GARBAGE = st.one_of(
    st.builds(lambda n, rest: bytes((0x20 | n,)) + rest, st.integers(0, 15), st.binary(max_size=7)),
    st.builds(lambda n, rest: bytes((0x30 | n,)) + rest, st.integers(0, 2), st.binary(max_size=7)),
    st.builds(lambda b, rest: bytes((b,)) + rest, st.integers(0x40, 0xFF), st.binary(max_size=7)),
    # A single frame longer than its CAN frame: 0x08-0x0F, or more bytes than it carries.
    st.builds(lambda b, rest: bytes((b,)) + rest, st.integers(0x08, 0x0F), st.binary(max_size=7)),
    st.integers(1, 7).flatmap(
        lambda n: st.binary(max_size=n - 1).map(lambda rest: bytes((n,)) + rest)
    ),
    st.just(b""),
)


def test_bad_iso_tp_frames_are_counted_and_the_answer_after_them_read() -> None:
    channel_name = virtual_channel()
    garbage: list[bytes] = []
    with (
        can.Bus(interface="virtual", channel=channel_name) as ours,
        can.Bus(interface="virtual", channel=channel_name) as theirs,
    ):

        def answer(msg: can.Message) -> None:  # the ECU: raw frames, then a good single frame
            if msg.arbitration_id == 0x7E0:
                for data in garbage:
                    theirs.send(can.Message(arbitration_id=0x7E8, data=data, is_extended_id=False))
                good = bytes((0x03, 0x41, 0x0D, len(garbage))).ljust(8, b"\xaa")
                theirs.send(can.Message(arbitration_id=0x7E8, data=good, is_extended_id=False))

        ecu_notifier = can.Notifier(theirs, [answer], timeout=0.05)
        notifier = can.Notifier(ours, [], timeout=0.05)
        channel = IsoTpChannel(ours, notifier, 0x7E0, 0x7E8, timeout=1.0)
        channel.open()
        obd = PhysicalObd(channel, 0x7E8)
        try:

            @FEW
            @given(st.lists(ISOTP_GARBAGE, max_size=6))
            def check(frames: list[bytes]) -> None:
                garbage[:] = frames
                before = sum(channel.errors.values())
                assert obd.request(0x01, 0x0D) == {0x7E8: bytes((len(frames),))}
                assert sum(channel.errors.values()) - before == len(frames)  # each counted

            check()
        finally:
            channel.close()
            notifier.stop()
            ecu_notifier.stop()
        assert notifier.exception is None


def test_functional_obd_over_the_virtual_bus_collects_every_answer_exactly() -> None:
    channel_name = virtual_channel()
    answers: dict[int, bytes] = {}
    with (
        can.Bus(interface="virtual", channel=channel_name) as ours,
        can.Bus(interface="virtual", channel=channel_name) as theirs,
    ):
        ecu_notifier = can.Notifier(theirs, [], timeout=0.05)
        stacks = {
            rid: isotp.NotifierBasedCanStack(
                theirs,
                ecu_notifier,
                address=isotp.Address(isotp.AddressingMode.Normal_11bits, txid=rid, rxid=rid - 8),
                params={"tx_padding": 0xAA, "blocking_send": False},
            )
            for rid in RESPONSE_IDS
        }

        def functional(msg: can.Message) -> None:  # every ECU with an answer gives it
            if msg.arbitration_id == FUNCTIONAL_ID and msg.data[:3] == b"\x02\x01\x0d":
                for rid, answer in answers.items():
                    stacks[rid].send(answer)

        ecu_notifier.add_listener(functional)
        notifier = can.Notifier(ours, [], timeout=0.05)
        obd = FunctionalObd(ours, notifier, ours.send, timeout=0.6)
        for stack in stacks.values():
            stack.start()
        obd.open()
        try:

            @settings(max_examples=5, deadline=None, database=None)
            @given(
                st.dictionaries(
                    st.sampled_from(RESPONSE_IDS),
                    st.binary(max_size=30).map(lambda rest: b"\x41\x0d" + rest),
                    max_size=4,
                ),
                st.sets(st.sampled_from(RESPONSE_IDS), max_size=2),
            )
            def check(given_answers: dict[int, bytes], silent: set[int]) -> None:
                silent -= given_answers.keys()  # listed by discovery, but they do not answer
                answers.clear()
                answers.update(given_answers)
                # After discovery a PID's answers are awaited from the ECUs that listed it, up
                # to the timeout: spent only when one of them is silent (or none answers).
                obd.discovered = {rid: {0x0D} for rid in given_answers.keys() | silent}
                obd.timeout = 0.4 if silent or not given_answers else 5.0
                missing = obd.missing
                if not given_answers:
                    with pytest.raises(DiagnosticTimeout):
                        obd.ask(0x01, 0x0D)
                else:
                    assert obd.ask(0x01, 0x0D) == given_answers
                    assert set(given_answers) <= obd.responders
                assert obd.missing - missing == len(silent)

            check()
        finally:
            obd.close()
            for stack in stacks.values():
                stack.stop()
            notifier.stop()
            ecu_notifier.stop()
        assert not obd.errors and notifier.exception is None


def test_bam_and_cmdt_over_the_virtual_bus_are_delivered_exactly() -> None:
    channel_name = virtual_channel()
    delivered: list[tuple[int, int, bytes]] = []
    with (
        can.Bus(interface="virtual", channel=channel_name) as ours,
        can.Bus(interface="virtual", channel=channel_name) as ecu,
    ):
        reassembler = J1939Reassembler(
            {PGN_DM1, PGN_VIN},
            lambda pgn, source, data, t: delivered.append((pgn, source, data)),
            address=OUR_ADDRESS,
            send=ours.send,
        )
        notifier = can.Notifier(ours, [reassembler], timeout=0.05)
        try:

            @FEW
            @given(
                payload=st.binary(min_size=9, max_size=400),
                source=SOURCES.filter(lambda a: a != OUR_ADDRESS),
                to_us=st.booleans(),
            )
            def check(payload: bytes, source: int, to_us: bool) -> None:
                delivered.clear()
                chunks = packets_of(payload)
                if to_us:  # RTS, our CTS, the packets, our acknowledgement
                    ecu.send(
                        tp_cm(RTS, len(payload), len(chunks), 0xFF, PGN_VIN, source, OUR_ADDRESS)
                    )
                    cts = ecu.recv(2)
                    assert cts is not None and cts.data[0] == CTS
                    for i, chunk in enumerate(chunks, 1):
                        ecu.send(tp_dt(i, chunk, source, OUR_ADDRESS))
                    ack = ecu.recv(2)
                    assert ack is not None and ack.data[0] == EOM_ACK
                    expected = (PGN_VIN, source, payload)
                else:
                    for msg in bam_frames(PGN_DM1, payload, source):
                        ecu.send(msg)
                    expected = (PGN_DM1, source, payload)
                wait_for(lambda: delivered, timeout=2, what="the transfer")
                assert delivered == [expected]

            check()
        finally:
            notifier.stop()
        assert notifier.exception is None


# == Bugs found: minimal reproducers ==============================================================


def test_a_bam_of_another_pgn_from_the_same_source_ends_the_unfinished_dm1() -> None:
    run = Reassembly()
    other = bytes(range(1, 15))  # 14 bytes of PGN 0xFEE3 (engine configuration), 2 packets
    run.feed(
        tp_cm(BAM, 10, 2, 0xFF, PGN_DM1, 0x00),  # DM1 announced; its packets never come
        *bam_frames(0xFEE3, other, 0x00),  # the engine's next BAM, of another PGN
        gap=0.05,
    )
    assert run.delivered == []  # was [(PGN_DM1, 0, other[:10])], decoded as 2 bogus DTCs


def test_a_short_tp_dt_is_refused_not_spliced_into_the_message() -> None:
    dm1 = dm1_message(0x04, 0xFF, [dtc_record(190, 2, 3), dtc_record(110, 16, 1)])  # 10 bytes
    run = Reassembly()
    run.feed(tp_cm(BAM, len(dm1), 2, 0xFF, PGN_DM1, 0x00))
    run.feed(frame(j1939_id(7, TP_DT, 0xFF, 0x00), bytes((1,)) + dm1[:4]))  # DLC 5
    run.feed(tp_dt(2, dm1[7:], 0x00))
    # was delivered 04 FF BE 00 00 10 01 FF FF FF: SPN 190 FMI 0 OC 16 and SPN 524033 FMI 31
    assert run.delivered == []


def test_cts_respects_the_packet_limit_of_the_rts() -> None:
    run = Reassembly()
    run.feed(tp_cm(RTS, 18, 3, 1, PGN_VIN, 0x00, OUR_ADDRESS))  # at most 1 packet per CTS
    [cts] = run.sent
    assert cts.data[0] == CTS and cts.data[1] == 1


def test_first_packet_may_come_t2_after_the_cts() -> None:
    vin = b"WDEMO00CANTELEM01*"
    run = Reassembly()
    run.feed(tp_cm(RTS, len(vin), 3, 0xFF, PGN_VIN, 0x00, OUR_ADDRESS))
    run.now += 1.0  # within T2
    run.feed(*(tp_dt(i, c, 0x00, OUR_ADDRESS) for i, c in enumerate(packets_of(vin), 1)))
    assert run.delivered == [(PGN_VIN, 0x00, vin)]


@contextmanager
def failing_sends() -> Iterator[can.BusABC]:
    bus = can.Bus(interface="virtual", channel=virtual_channel())

    def send(msg: can.Message, timeout: float | None = None) -> None:
        raise can.CanOperationError("No buffer space available [Error Code 105]")

    bus.send = send  # type: ignore[method-assign]
    try:
        yield bus
    finally:
        bus.shutdown()


def test_a_failed_cts_is_counted_not_raised_into_the_bus_reader() -> None:
    with failing_sends() as bus:
        config = parsed_config("j1939")
        diagnostics = BusDiagnostics(
            config.diagnostics.buses[0], config.buses[0], Recorder(), bus=bus
        )
        diagnostics._connect()
        try:
            assert diagnostics.j1939 is not None
            rts = tp_cm(RTS, 18, 3, 0xFF, PGN_DM1, 0x00, OUR_ADDRESS)
            diagnostics.j1939.on_message_received(rts)  # raised TransportError into the notifier
            assert diagnostics.j1939.stats["send_errors"] == 1
        finally:
            diagnostics._disconnect()


def test_a_vin_of_non_ascii_bytes_is_refused() -> None:
    with pytest.raises(DiagnosticError):
        parse_vin(b"\x01" + b"\xff" * 17)  # returned "\ufffd" * 17


# -- OBD-II answers that are not the answer: "response pending", another service's 7F -----------


def test_physical_obd_waits_for_the_answer_after_response_pending() -> None:
    with IsoTpEcu(0x7E0, 0x7E8, timeout=0.5) as rig:
        obd = PhysicalObd(rig.channel, 0x7E8)
        rig.answers = [b"\x7f\x01\x78", b"\x7f\x01\x78", b"\x41\x0d\x2a"]
        assert obd.request(0x01, 0x0D) == {0x7E8: b"\x2a"}  # raised NegativeResponse 0x78
        rig.answers = [b"\x7f\x01\x78"]  # and never the answer: a timeout, not a refusal
        started = time.monotonic()
        with pytest.raises(DiagnosticTimeout):
            obd.request(0x01, 0x0D)
        assert 0.4 < time.monotonic() - started < 2.0  # its own timeout bounds it, not P2* (5 s)


def test_physical_obd_ignores_a_negative_answer_to_another_service() -> None:
    with IsoTpEcu(0x7E0, 0x7E8, timeout=0.5) as rig:
        obd = PhysicalObd(rig.channel, 0x7E8)
        rig.answers = [b"\x7f\x22\x31", b"\x41\x0d\x2a"]
        assert obd.request(0x01, 0x0D) == {0x7E8: b"\x2a"}  # raised NegativeResponse 0x22
        rig.answers = [b"\x7f\x22\x31"]
        with pytest.raises(DiagnosticTimeout):
            obd.request(0x01, 0x0D)
        rig.answers = [b"\x7f\x01\x12"]  # a refusal of the service asked still is one
        with pytest.raises(NegativeResponse) as info:
            obd.request(0x01, 0x0D)
        assert (info.value.service, info.value.code) == (0x01, 0x12)


@contextmanager
def functional_ecus(timeout: float) -> Iterator[tuple[FunctionalObd, dict[int, list[Any]]]]:
    """A FunctionalObd and the eight OBD ECUs' can-isotp stacks on a virtual bus of their own:
    each ECU of ``script`` answers 01 0D with its ``(delay, payload)`` items, in order."""
    channel_name = virtual_channel()
    script: dict[int, list[tuple[float, bytes]]] = {}
    with (
        can.Bus(interface="virtual", channel=channel_name) as ours,
        can.Bus(interface="virtual", channel=channel_name) as theirs,
    ):
        ecu_notifier = can.Notifier(theirs, [], timeout=0.05)
        stacks = {
            rid: isotp.NotifierBasedCanStack(
                theirs,
                ecu_notifier,
                address=isotp.Address(isotp.AddressingMode.Normal_11bits, txid=rid, rxid=rid - 8),
                params={"tx_padding": 0xAA, "blocking_send": False},
            )
            for rid in RESPONSE_IDS
        }
        timers: list[threading.Timer] = []

        def functional(msg: can.Message) -> None:
            if msg.arbitration_id == FUNCTIONAL_ID and msg.data[:3] == b"\x02\x01\x0d":
                for rid, items in script.items():
                    for delay, payload in items:
                        timers.append(threading.Timer(delay, stacks[rid].send, (payload,)))
                        timers[-1].start()

        ecu_notifier.add_listener(functional)
        notifier = can.Notifier(ours, [], timeout=0.05)
        obd = FunctionalObd(ours, notifier, ours.send, timeout=timeout)
        for stack in stacks.values():
            stack.start()
        obd.open()
        try:
            yield obd, cast(dict[int, list[Any]], script)
        finally:
            for timer in timers:
                timer.cancel()
            obd.close()
            for stack in stacks.values():
                stack.stop()
            notifier.stop()
            ecu_notifier.stop()


def test_functional_obd_waits_for_an_ecus_answer_after_response_pending() -> None:
    with functional_ecus(timeout=1.0) as (obd, script):
        # The engine says "pending", answers after the 0.25 s window; the other at once.
        script[0x7E8] = [(0.0, b"\x7f\x01\x78"), (0.5, b"\x41\x0d\x2a")]
        script[0x7E9] = [(0.0, b"\x41\x0d\x07")]
        # ask kept 7F 01 78 as the engine's answer; request took the transmission's alone.
        assert obd.ask(0x01, 0x0D) == {0x7E8: b"\x41\x0d\x2a", 0x7E9: b"\x41\x0d\x07"}
        assert obd.missing == 0
        script[0x7E8] = [(0.0, b"\x7f\x01\x78")]  # pending, and never the answer
        started = time.monotonic()
        assert obd.ask(0x01, 0x0D) == {0x7E9: b"\x41\x0d\x07"}
        assert time.monotonic() - started >= 0.9  # waited for it up to the timeout
        assert obd.missing == 1  # an answer it owed: counted as missing
        del script[0x7E9]
        with pytest.raises(DiagnosticTimeout):  # raised NegativeResponse 0x78
            obd.request(0x01, 0x0D)
        assert obd.responders == {0x7E8, 0x7E9}


def test_functional_obd_ignores_a_negative_answer_to_another_service() -> None:
    with functional_ecus(timeout=1.0) as (obd, script):
        obd.discovered = {0x7E8: {0x0D}}
        script[0x7E8] = [(0.0, b"\x7f\x22\x31"), (0.1, b"\x41\x0d\x2a")]
        assert obd.request(0x01, 0x0D) == {0x7E8: b"\x2a"}  # raised NegativeResponse 0x22
        script[0x7E8] = [(0.0, b"\x7f\x22\x31")]
        with pytest.raises(DiagnosticTimeout):
            obd.request(0x01, 0x0D)
        assert obd.missing == 1 and obd.responders == {0x7E8}


def test_functional_obd_ignores_a_late_answer_to_another_pid() -> None:
    with functional_ecus(timeout=1.0) as (obd, script):
        obd.discovered = {0x7E8: {0x0C, 0x0D}}
        script[0x7E8] = [(0.0, b"\x41\x0c\x1a\xf8"), (0.1, b"\x41\x0d\x2a")]
        assert obd.request(0x01, 0x0D) == {0x7E8: b"\x2a"}  # raised DiagnosticError
        assert obd.missing == 0


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"\x7f\x01\x78", DiagnosticTimeout),  # pending, and nothing after it
        (b"\x7f\x22\x31", DiagnosticTimeout),  # another service's refusal: not an answer
        (b"\x7f\x01\x31", NegativeResponse),
        (b"\x41\x0c\x00", DiagnosticError),
    ],
)
def test_obd_request_takes_only_an_answer_to_what_it_asked(
    answer: bytes, error: type[DiagnosticError]
) -> None:
    obd = ScriptedObd(lambda m, p: {0x7E8: answer})
    with pytest.raises(DiagnosticError) as info:
        obd.request(0x01, 0x0D)
    assert type(info.value) is error


def test_nrc_0x00_is_not_named_positive_response() -> None:
    with IsoTpEcu(0x7E4, 0x7EC, timeout=0.5) as rig:
        rig.answers = [b"\x7f\x19\x00"]
        with pytest.raises(NegativeResponse) as info:
            UdsEcu(BMS, rig.channel).read_dtcs()
    assert info.value.code == 0x00
    assert info.value.name == "0x00 (not a negative response code)"  # was "PositiveResponse"


def test_a_dm1_dtc_of_spn_conversion_method_1_is_not_decoded_as_method_4() -> None:
    # 0x00 0x5F 0x02 0x83: with CM 0 SPN 24320 FMI 2, but its CM bit says the SPN is in one of
    # J1939-73's older layouts (versions 1-3), which the bytes do not tell apart.
    old = bytes((0x00, 0x5F, 0x02, 0x83))
    dm1 = decode_dm1(dm1_message(0x04, 0xFF, [dtc_record(190, 2, 3), old]))
    assert dm1.dtcs == ((190, 2, 3),)  # was also (24320, 2, 3)
    assert dm1.cm1 == (old,)
    diagnostics, recorder = bus_diagnostics("j1939")
    diagnostics._on_j1939(PGN_DM1, 0x00, dm1_message(0x04, 0xFF, [old]), 0.0)
    [record] = recorder.take()
    assert (record.name, record.value, record.text) == ("CM1 005F02", 3, "appeared")
