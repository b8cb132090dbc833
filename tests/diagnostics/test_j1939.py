"""edge.diagnostics.j1939: DM1 decoding and J1939-21 transport reassembly, on python-can's
virtual bus: a BAM from the simulated engine (edge/simulator/ecus.py), one with a missing packet,
and a CMDT (RTS/CTS) to us answered with CTS and an acknowledgement."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import can
import pytest

from edge.diagnostics.j1939 import (
    PGN_DM1,
    PGN_VIN,
    J1939Reassembler,
    decode_dm1,
    pgn_of,
    request_frame,
)
from edge.simulator.ecus import SimulatedEcus, dm1_bytes
from tests.support.waiting import wait_for

DTCS = [(190, 2, 3), (110, 16, 1), (524287 - 1, 31, 126), (91, 3, 1)]  # 18 bytes: 3 packets


def test_dm1_round_trip_and_no_dtc() -> None:
    dm1 = decode_dm1(dm1_bytes(DTCS))
    assert dm1.dtcs == tuple(DTCS)
    assert dm1.lamps >> 8 == 0x04
    assert decode_dm1(dm1_bytes([])).dtcs == ()
    with pytest.raises(ValueError, match="at least 6"):
        decode_dm1(b"\x00\x00")


def test_pgn_of_and_request() -> None:
    assert pgn_of(0x18FECA00) == (PGN_DM1, 0xFF, 0x00)
    assert pgn_of(0x18EA00F9) == (0xEA00, 0x00, 0xF9)
    request = request_frame(PGN_VIN, 0xF9)
    assert request.arbitration_id == 0x18EAFFF9 and bytes(request.data) == b"\xec\xfe\x00"


class Received:
    def __init__(self) -> None:
        self.items: list[tuple[int, int, bytes]] = []
        self.lock = threading.Lock()

    def __call__(self, pgn: int, source: int, data: bytes, t: float) -> None:
        with self.lock:
            self.items.append((pgn, source, data))


@pytest.fixture
def channel() -> str:
    return f"j1939-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def engine(channel: str) -> Iterator[SimulatedEcus]:
    bus = can.Bus(interface="virtual", channel=channel)
    ecus = SimulatedEcus(bus, dm1_period=3600)  # DM1 sent by hand here
    ecus.start()
    yield ecus
    ecus.stop()
    bus.shutdown()


def listen(channel: str, reassembler: J1939Reassembler) -> tuple[can.BusABC, can.Notifier]:
    bus = can.Bus(interface="virtual", channel=channel)
    return bus, can.Notifier(bus, [reassembler])


def test_bam_is_reassembled(channel: str, engine: SimulatedEcus) -> None:
    received = Received()
    reassembler = J1939Reassembler({PGN_DM1}, received)
    bus, notifier = listen(channel, reassembler)
    try:
        engine.send_j1939(PGN_DM1, dm1_bytes(DTCS))
        wait_for(lambda: received.items)
    finally:
        notifier.stop()
        bus.shutdown()
    assert received.items == [(PGN_DM1, 0x00, dm1_bytes(DTCS))]
    assert reassembler.stats["transfers"] == 1


def test_bam_with_a_missing_packet_is_dropped_and_counted(
    channel: str, engine: SimulatedEcus
) -> None:
    received = Received()
    reassembler = J1939Reassembler({PGN_DM1}, received)
    bus, notifier = listen(channel, reassembler)
    try:
        engine.faults.skip_bam_packet = 2
        long_dm1 = dm1_bytes(DTCS)
        engine.send_j1939(PGN_DM1, long_dm1)
        wait_for(lambda: reassembler.stats["transfers_incomplete"] == 1 or received.items)
        reassembler.expire(float("inf"))
        engine.faults.skip_bam_packet = None
        engine.send_j1939(PGN_DM1, long_dm1)  # the next one starts afresh
        wait_for(lambda: received.items)
    finally:
        notifier.stop()
        bus.shutdown()
    assert received.items == [(PGN_DM1, 0x00, long_dm1)]
    assert reassembler.stats["transfers_incomplete"] == 1


def test_a_bam_that_stops_times_out(channel: str, engine: SimulatedEcus) -> None:
    received = Received()
    reassembler = J1939Reassembler({PGN_DM1}, received)
    bus, notifier = listen(channel, reassembler)
    try:
        engine.faults.skip_bam_packet = 3  # the last packet never comes
        engine.send_j1939(PGN_DM1, dm1_bytes(DTCS))
        wait_for(lambda: reassembler._sessions)
        reassembler.expire(float("inf"))
    finally:
        notifier.stop()
        bus.shutdown()
    assert received.items == [] and reassembler.stats["transfers_timed_out"] == 1


def test_cmdt_to_us_is_answered_with_cts_and_acknowledged(channel: str) -> None:
    received = Received()
    with (
        can.Bus(interface="virtual", channel=channel) as ours,
        can.Bus(interface="virtual", channel=channel) as sender,
    ):
        reassembler = J1939Reassembler({PGN_VIN}, received, address=0xF9, send=ours.send)
        notifier = can.Notifier(ours, [reassembler])
        try:
            vin = b"WDEMO00CANTELEM01*"
            rts = bytes((16, len(vin), 0, 3, 0xFF)) + PGN_VIN.to_bytes(3, "little")
            sender.send(can.Message(arbitration_id=0x1CECF900, data=rts))  # to 0xF9 from 0x00
            cts = sender.recv(2)
            assert cts is not None and cts.arbitration_id == 0x1CEC00F9
            assert bytes(cts.data[:3]) == bytes((17, 3, 1))
            for seq in range(1, 4):
                chunk = vin[(seq - 1) * 7 : seq * 7].ljust(7, b"\xff")
                sender.send(can.Message(arbitration_id=0x1CEBF900, data=bytes((seq,)) + chunk))
            ack = sender.recv(2)
            assert ack is not None and ack.data[0] == 19
            wait_for(lambda: received.items)
        finally:
            notifier.stop()
    assert received.items == [(PGN_VIN, 0x00, vin)]


def test_cmdt_without_permission_to_send_is_ignored(channel: str) -> None:
    reassembler = J1939Reassembler({PGN_VIN}, Received(), address=0xF9, send=None)
    rts = bytes((16, 18, 0, 3, 0xFF)) + PGN_VIN.to_bytes(3, "little")
    reassembler.on_message_received(can.Message(arbitration_id=0x1CECF900, data=rts))
    assert reassembler.stats["cmdt_ignored"] == 1 and not reassembler._sessions


def test_gaps_are_timed_on_our_clock_not_the_frames_timestamps() -> None:
    now = [100.0]
    received = Received()
    reassembler = J1939Reassembler({PGN_DM1}, received, clock=lambda: now[0])
    data = dm1_bytes(DTCS)
    announce = bytes((32, len(data), 0, 3, 0xFF)) + PGN_DM1.to_bytes(3, "little")
    # A replay's (or a simulator's) timestamps: far in the past, all equal.
    frames = [can.Message(arbitration_id=0x1CECFF00, data=announce, timestamp=0.0)]
    for seq in range(1, 4):
        chunk = bytes((seq,)) + data[(seq - 1) * 7 : seq * 7].ljust(7, b"\xff")
        frames.append(can.Message(arbitration_id=0x1CEBFF00, data=chunk, timestamp=0.0))
    for frame in frames[:2]:
        reassembler.on_message_received(frame)
        now[0] += 0.1
    reassembler.expire()  # 0.2 s since the last packet: still going
    for frame in frames[2:]:
        reassembler.on_message_received(frame)
    assert received.items == [(PGN_DM1, 0x00, data)]
    reassembler.on_message_received(frames[0])
    now[0] += 0.8
    reassembler.expire()
    assert reassembler.stats["transfers_timed_out"] == 1
