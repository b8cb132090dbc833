"""SAE J1939 diagnostics: DM1 (active DTCs, PGN 65226), the VIN (PGN 65260) by request
(PGN 59904), and the transport protocol both arrive with when longer than 8 bytes (J1939-21
TP.BAM broadcast, TP.CMDT to us with RTS/CTS).

The kernel's J1939 sockets would do the reassembly, but only on SocketCAN with the ``can-j1939``
module (absent from many gateways and from the test kernel, see docs/diagnostics.md); this
listener works on any python-can bus.
"""

from __future__ import annotations

import collections
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import can

__all__ = [
    "DM1",
    "PGN_DM1",
    "PGN_REQUEST",
    "PGN_VIN",
    "J1939Reassembler",
    "decode_dm1",
    "pgn_of",
    "request_frame",
]

log = logging.getLogger(__name__)

PGN_DM1 = 0xFECA
PGN_VIN = 0xFEEC
PGN_REQUEST = 0xEA00
PGN_TP_CM = 0xEC00
PGN_TP_DT = 0xEB00
_RTS, _CTS, _ACK, _BAM, _ABORT = 16, 17, 19, 32, 255
#: J1939-21 T1: longest gap between packets of a transfer.
PACKET_TIMEOUT = 0.75
#: J1939-21 T2: longest wait for the first packet after we sent a CTS.
CTS_TIMEOUT = 1.25
_GLOBAL = 0xFF


def pgn_of(can_id: int) -> tuple[int, int, int]:
    """``(pgn, destination, source)`` of a 29-bit J1939 identifier (destination 0xFF for
    broadcast PGNs)."""
    pf = (can_id >> 16) & 0xFF
    ps = (can_id >> 8) & 0xFF
    dp = (can_id >> 24) & 0x3
    if pf < 240:
        return (dp << 16) | (pf << 8), ps, can_id & 0xFF
    return (dp << 16) | (pf << 8) | ps, _GLOBAL, can_id & 0xFF


def _can_id(priority: int, pgn: int, destination: int, source: int) -> int:
    pf = (pgn >> 8) & 0xFF
    ps = destination if pf < 240 else pgn & 0xFF
    return (priority << 26) | ((pgn >> 16 & 0x3) << 24) | (pf << 16) | (ps << 8) | source


def request_frame(pgn: int, source: int, destination: int = _GLOBAL) -> can.Message:
    """A Request (PGN 59904) for ``pgn``."""
    return can.Message(
        arbitration_id=_can_id(6, PGN_REQUEST, destination, source),
        data=pgn.to_bytes(3, "little"),
        is_extended_id=True,
    )


@dataclass(frozen=True, slots=True)
class DM1:
    """A decoded DM1: lamp status and ``(spn, fmi, occurrences)`` of each active DTC; the DTCs
    sent with SPN conversion method 1 in ``cm1``, undecoded (see :func:`decode_dm1`)."""

    lamps: int
    dtcs: tuple[tuple[int, int, int], ...]
    #: the 4 bytes of each DTC whose CM bit is 1, as sent
    cm1: tuple[bytes, ...] = ()


def decode_dm1(data: bytes) -> DM1:
    """Decode a DM1 (J1939-73). ``SPN 0 FMI 0`` means no DTC, SPN 0x7FFFF is padding.

    Only SPN conversion method 0 (the CM bit, bit 8 of a DTC's 4th byte, clear: J1939-73's
    version 4, the only current one) is decoded. CM 1 says the SPN is in one of the older
    layouts of versions 1, 2 or 3, which differ in the order of the SPN's bits and which the
    bytes do not tell apart: such a DTC is not decoded (that would give a wrong SPN) but kept
    whole in ``cm1``. Its SPN takes the same 19 bits in every version, so "no DTC" and padding
    are recognised all the same and skipped."""
    if len(data) < 6:
        raise ValueError(f"DM1 of {len(data)} bytes, expected at least 6")
    dtcs = []
    cm1 = []
    for i in range(2, len(data) - 3, 4):
        b = data[i : i + 4]
        spn = b[0] | b[1] << 8 | (b[2] & 0xE0) << 11
        fmi = b[2] & 0x1F
        if (spn == 0 and fmi == 0) or spn == 0x7FFFF:  # "no DTC" and padding
            continue
        if b[3] & 0x80:
            cm1.append(bytes(b))
        else:
            dtcs.append((spn, fmi, b[3] & 0x7F))
    return DM1(lamps=data[0] << 8 | data[1], dtcs=tuple(dtcs), cm1=tuple(cm1))


@dataclass(slots=True)
class _Session:
    pgn: int
    size: int
    packets: int
    broadcast: bool
    started: float
    #: when the next packet is overdue (T1 after a packet, T2 after our CTS)
    deadline: float
    #: packets the sender may send per CTS (CMDT; the RTS's byte 5, 0xFF: no limit)
    window: int = 0xFF
    #: the last packet the CTS we sent asked for (CMDT)
    cts_end: int = 0
    parts: dict[int, bytes] = field(default_factory=dict)
    next_seq: int = 1


class J1939Reassembler(can.Listener):
    """Hands every complete J1939 message of a PGN in ``pgns`` to ``deliver(pgn, source,
    data, time)``: single frames and TP.BAM / TP.CMDT transfers. With ``send`` (diagnostics
    enabled on the bus) it answers an RTS addressed to ``address`` with CTS and acknowledges
    the end; without, a CMDT to us is counted and ignored.

    Incomplete transfers (a missing or repeated packet, a gap over :data:`PACKET_TIMEOUT`)
    are dropped and counted in ``stats``; the next BAM starts afresh.
    """

    def __init__(
        self,
        pgns: set[int],
        deliver: Callable[[int, int, bytes, float], None],
        *,
        address: int = 0xF9,
        send: Callable[[can.Message], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.pgns = pgns
        # Gaps are timed on our clock when frames arrive: a frame's own timestamp may be a
        # replay's, a simulator's or an interface's time base.
        self._clock = clock
        self._deliver = deliver
        self._address = address
        self._send = send
        self._sessions: dict[tuple[int, int], _Session] = {}
        self.stats: collections.Counter[str] = collections.Counter()

    def on_message_received(self, msg: can.Message) -> None:
        """python-can Listener entry point (the notifier's thread)."""
        if not msg.is_extended_id or msg.is_error_frame or msg.is_remote_frame:
            return
        pgn, destination, source = pgn_of(msg.arbitration_id)
        data = bytes(msg.data)
        if pgn == PGN_TP_CM:
            self._control(source, destination, data, self._clock())
        elif pgn == PGN_TP_DT:
            self._packet(source, destination, data, self._clock(), msg.timestamp)
        elif pgn in self.pgns:
            self.stats["messages"] += 1
            self._deliver(pgn, source, data, msg.timestamp)

    def expire(self, now: float | None = None) -> None:
        """Drop transfers whose next packet is overdue (call now and then; ``now`` on the
        reassembler's clock, by default its present)."""
        if now is None:
            now = self._clock()
        for key, session in list(self._sessions.items()):
            if now > session.deadline:
                del self._sessions[key]
                self.stats["transfers_timed_out"] += 1

    def _control(self, source: int, destination: int, data: bytes, t: float) -> None:
        if len(data) < 8:
            self.stats["malformed"] += 1
            return
        control = data[0]
        pgn = int.from_bytes(data[5:8], "little")
        key = (source, destination)
        if control == _ABORT:
            if self._sessions.pop(key, None) is not None:
                self.stats["transfers_aborted"] += 1
            return
        if control not in (_BAM, _RTS):
            return
        if control == _RTS and destination != self._address:
            return  # a transfer between two other nodes
        if pgn not in self.pgns:  # not ours; it ends the sender's unfinished one all the same
            if self._sessions.pop(key, None) is not None:
                self.stats["transfers_incomplete"] += 1
            return
        size, packets = int.from_bytes(data[1:3], "little"), data[3]
        if key in self._sessions:
            self.stats["transfers_incomplete"] += 1  # a new one replaces the unfinished one
        if not 9 <= size <= 1785 or packets != (size + 6) // 7:
            self.stats["malformed"] += 1
            self._sessions.pop(key, None)
            return
        if control == _RTS and self._send is None:
            self.stats["cmdt_ignored"] += 1
            return
        session = _Session(pgn, size, packets, control == _BAM, t, t + PACKET_TIMEOUT)
        self._sessions[key] = session
        if control == _RTS:
            session.window = data[4] or 0xFF
            self._clear_to_send(source, session, t)

    def _clear_to_send(self, source: int, session: _Session, t: float) -> None:
        """Ask for the next packets of a CMDT, no more than the sender's RTS allows at once."""
        count = min(session.packets - session.next_seq + 1, session.window)
        session.cts_end = session.next_seq + count - 1
        session.deadline = t + CTS_TIMEOUT
        cts = bytes((_CTS, count, session.next_seq, 0xFF, 0xFF))
        self._reply(source, cts + session.pgn.to_bytes(3, "little"))

    def _packet(
        self, source: int, destination: int, data: bytes, t: float, frame_time: float
    ) -> None:
        key = (source, destination)
        session = self._sessions.get(key)
        if session is None:
            return
        seq = data[0] if data else 0
        if len(data) != 8 or seq != session.next_seq or t > session.deadline:
            # J1939-21: packets have 8 bytes and come in order; a gap means one was lost, and
            # nothing can ask for it again in a BAM. Drop the transfer (the ECU repeats DM1
            # every second).
            del self._sessions[key]
            self.stats["transfers_incomplete"] += 1
            return
        session.parts[seq] = data[1:8]
        session.next_seq += 1
        session.deadline = t + PACKET_TIMEOUT
        if seq < session.packets:
            if not session.broadcast and seq == session.cts_end:
                self._clear_to_send(source, session, t)  # the sender waits for the next CTS
            return
        del self._sessions[key]
        payload = b"".join(session.parts[i] for i in range(1, session.packets + 1))[: session.size]
        if not session.broadcast:
            ack = (
                bytes((_ACK,)) + session.size.to_bytes(2, "little") + bytes((session.packets, 0xFF))
            )
            self._reply(source, ack + session.pgn.to_bytes(3, "little"))
        self.stats["transfers"] += 1
        self._deliver(session.pgn, source, payload, frame_time)

    def _reply(self, destination: int, data: bytes) -> None:
        if self._send is None:
            return
        try:
            self._send(
                can.Message(
                    arbitration_id=_can_id(7, PGN_TP_CM, destination, self._address),
                    data=data,
                    is_extended_id=True,
                )
            )
        except Exception as exc:  # never into the bus reader: counted, the sender times out
            self.stats["send_errors"] += 1
            log.debug("J1939 TP reply failed: %s", exc)
