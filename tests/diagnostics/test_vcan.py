"""Diagnostics on a real kernel's SocketCAN (vcan0; run with ``bash .ci/vcan``): can-isotp and
udsoncan over raw CAN sockets against the simulated ECUs, DTCs and VIN read, and the kernel's own
J1939 stack reassembling the same DM1 as edge.diagnostics.j1939 where the kernel has it.

The User-Mode Linux kernel of the Debian package (6.1) ships can-j1939 as a module (.ci/uml-init.sh
loads it) but no CAN_ISOTP: hence python-can-isotp over raw sockets, as on gateways without it.
Where the kernel has J1939, its stack also plays the ECU: it answers our VIN request and sends
DM1 with its own transport protocol (TP.BAM to all, TP.CMDT to us, which our side must drive
with CTS and acknowledge), and our diagnostics must read what it sent.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import can
import pytest

from edge.config.model import parse_config
from edge.diagnostics.j1939 import PGN_DM1, J1939Reassembler
from edge.diagnostics.service import Diagnostics
from edge.pipeline import Pipeline
from edge.simulator.ecus import (
    DEMO_VIN,
    ENGINE_PIDS,
    TRANSMISSION_PIDS,
    SimulatedEcus,
    dm1_bytes,
)
from edge.simulator.vehicle import DEMO_DBC
from edge.wire.diagnostics import DiagRecord
from tests.support.waiting import wait_for

pytestmark = [
    pytest.mark.vcan,
    pytest.mark.skipif(
        not Path("/sys/class/net/vcan0").exists(), reason="no vcan0: run `bash .ci/vcan`"
    ),
]

SOL_CAN_J1939 = socket.SOL_CAN_BASE + socket.CAN_J1939  # 107
SO_J1939_PROMISC = 2
PGN_REQUEST = 0xEA00
OUR_ADDRESS = 0xF9  # J1939DiagConfig's default source address


@pytest.fixture
def ecus() -> Iterator[SimulatedEcus]:
    bus = can.Bus(interface="socketcan", channel="vcan0")
    simulated = SimulatedEcus(bus, dm1_period=0.5)
    simulated.start()
    yield simulated
    simulated.stop()
    bus.shutdown()


def test_obd_uds_and_dm1_over_socketcan(ecus: SimulatedEcus) -> None:
    config = parse_config(
        {
            "buses": [
                {"name": "can", "interface": "socketcan", "channel": "vcan0", "dbc": str(DEMO_DBC)}
            ],
            "diagnostics": {
                "buses": [
                    {
                        "bus": "can",
                        "timeout": 1.0,  # User-Mode Linux is slow
                        "obd": {"pids": [{"pid": 0x0C, "period": 0.5}]},
                        "uds": [{"name": "TCM", "request_id": 0x7E1, "response_id": 0x7E9}],
                        "j1939": {},
                    }
                ]
            },
        }
    )
    records: list[DiagRecord] = []
    lock = threading.Lock()

    def emit(new: list[DiagRecord]) -> None:
        with lock:
            records.extend(new)

    diagnostics = Diagnostics(config, emit)
    diagnostics.start()
    try:
        wait_for(
            lambda: {"P0700", "U0100", "SPN 190 FMI 2"} <= {r.name for r in records},
            timeout=20,
            what="DTCs over SocketCAN",
        )
        assert diagnostics.get_vin()["vin"] == DEMO_VIN  # 20 bytes: a multi-frame answer
        assert diagnostics.read_did("TCM", 0xF195)["hex"] == b"TCM-SW-04.12".hex().upper()
    finally:
        diagnostics.stop()
    stats = diagnostics.stats()["can"]
    assert stats["requests"] == stats["responses"]


def test_functional_obd_over_socketcan(ecus: SimulatedEcus) -> None:
    config = parse_config(
        {
            "buses": [
                {"name": "can", "interface": "socketcan", "channel": "vcan0", "dbc": str(DEMO_DBC)}
            ],
            "diagnostics": {
                "buses": [
                    {
                        "bus": "can",
                        "timeout": 1.0,
                        "obd": {"functional": True, "pids": [{"pid": 0x0D, "period": 0.5}]},
                    }
                ]
            },
        }
    )
    diagnostics = Diagnostics(config, lambda records: None)
    diagnostics.start()
    try:
        bus = diagnostics.buses[0]
        wait_for(lambda: bus.vin is not None, timeout=20, what="the VIN")
        wait_for(lambda: diagnostics.stats()["can"].get("responses", 0) >= 5, timeout=20)
    finally:
        diagnostics.stop()
    assert bus.vin == DEMO_VIN
    assert bus.obd_ecus == {0x7E8: set(ENGINE_PIDS), 0x7E9: set(TRANSMISSION_PIDS)}
    stats = diagnostics.stats()["can"]
    assert stats["requests"] == stats["responses"] and stats["obd_ecus"] == 2


def test_a_listen_only_bus_never_sees_a_frame_from_us(ecus: SimulatedEcus, tmp_path: Path) -> None:
    """vcan0 has diagnostics, vcan1 none: a raw socket on vcan1 sees nothing from the module."""
    data = {
        "buses": [
            {"name": "can", "interface": "socketcan", "channel": "vcan0", "dbc": str(DEMO_DBC)},
            {"name": "quiet", "interface": "socketcan", "channel": "vcan1", "dbc": str(DEMO_DBC)},
        ],
        "diagnostics": {
            "buses": [
                {
                    "bus": "can",
                    "obd": {"pids": [{"pid": 0x0C, "period": 0.2}]},
                    "uds": [{"name": "TCM", "request_id": 0x7E1, "response_id": 0x7E9}],
                    "j1939": {},
                }
            ]
        },
        "spool": {"path": str(tmp_path / "spool.db")},
        "uplink": {"type": "file", "path": str(tmp_path / "outbox")},
    }
    seen: list[can.Message] = []
    with can.Bus(interface="socketcan", channel="vcan1", fd=True) as listener:
        notifier = can.Notifier(listener, [seen.append])
        pipeline = Pipeline(parse_config(data))
        pipeline.start()
        try:
            wait_for(lambda: sum(ecus.requests.values()) >= 10, timeout=20, what="requests")
            time.sleep(0.5)
        finally:
            pipeline.stop()
            notifier.stop()
    assert seen == []


def test_kernel_isotp_reads_the_vin_from_the_simulated_ecu(ecus: SimulatedEcus) -> None:
    """Where the kernel has ISO-TP sockets, its stack as the tester: the simulated ECU's
    multi-frame answer comes through the kernel's flow control (the UML kernel has none)."""
    try:
        sock = socket.socket(socket.AF_CAN, socket.SOCK_DGRAM, socket.CAN_ISOTP)
    except OSError as exc:
        pytest.skip(f"this kernel has no CAN_ISOTP sockets ({exc.strerror}): python-can-isotp used")
    with sock:
        sock.bind(("vcan0", 0x7E8, 0x7E0))  # (interface, receive id, transmit id)
        sock.settimeout(5.0)
        sock.send(b"\x09\x02")
        assert sock.recv(4095) == b"\x49\x02\x01" + DEMO_VIN.encode()


def test_kernel_j1939_reassembles_the_same_dm1(ecus: SimulatedEcus) -> None:
    try:
        kernel = socket.socket(socket.AF_CAN, socket.SOCK_DGRAM, socket.CAN_J1939)
    except OSError as exc:
        pytest.skip(f"this kernel has no CAN_J1939 sockets ({exc.strerror})")
    ours: list[bytes] = []
    reassembler = J1939Reassembler({PGN_DM1}, lambda pgn, sa, data, t: ours.append(data))
    with kernel, can.Bus(interface="socketcan", channel="vcan0") as bus:
        kernel.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        kernel.setsockopt(SOL_CAN_J1939, SO_J1939_PROMISC, 1)
        kernel.bind(("vcan0", socket.J1939_NO_NAME, socket.J1939_NO_PGN, socket.J1939_NO_ADDR))
        kernel.settimeout(5.0)
        notifier = can.Notifier(bus, [reassembler])
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                data, address = kernel.recvfrom(1785)
                if address[2] == PGN_DM1:
                    break
            wait_for(lambda: ours, what="our reassembly")
        finally:
            notifier.stop()
    assert data == dm1_bytes(ecus.dm1) == ours[0]


def kernel_j1939_socket(address: int) -> socket.socket:
    """A kernel J1939 socket on vcan0 with source ``address`` (skips without CAN_J1939)."""
    try:
        sock = socket.socket(socket.AF_CAN, socket.SOCK_DGRAM, socket.CAN_J1939)
    except OSError as exc:
        pytest.skip(f"this kernel has no CAN_J1939 sockets ({exc.strerror})")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.bind(("vcan0", socket.J1939_NO_NAME, socket.J1939_NO_PGN, address))
    return sock


def test_kernel_j1939_ecu_answers_our_vin_request_and_sends_dm1_by_bam_and_cmdt() -> None:
    config = parse_config(
        {
            "buses": [
                {"name": "can", "interface": "socketcan", "channel": "vcan0", "dbc": str(DEMO_DBC)}
            ],
            "diagnostics": {"buses": [{"bus": "can", "timeout": 1.0, "j1939": {}}]},
        }
    )
    vin = "KERNELJ1939VIN001"
    broadcast_dm1 = [(190, 2, 3), (110, 16, 1)]  # 10 bytes: a BAM
    our_dm1 = [(520, 4, 1), (91, 3, 2), (100, 1, 7)]  # 14 bytes, to us: a CMDT
    records: list[DiagRecord] = []
    lock = threading.Lock()

    def emit(new: list[DiagRecord]) -> None:
        with lock:
            records.extend(new)

    def seen(ecu: str) -> set[str]:
        with lock:
            return {r.name for r in records if r.ecu == ecu and r.kind == "dtc"}

    with kernel_j1939_socket(0x00) as engine, kernel_j1939_socket(0x17) as brakes:
        engine.settimeout(10.0)
        diagnostics = Diagnostics(config, emit)
        diagnostics.start()
        try:
            # The VIN request (PGN 59904 for 65260) reaches the kernel's socket like any PGN.
            while True:
                data, (_, _, pgn, source) = engine.recvfrom(1785)
                if pgn == PGN_REQUEST and data[:3] == (0xFEEC).to_bytes(3, "little"):
                    break
            assert source == OUR_ADDRESS
            # The kernel sends a PGN longer than 8 bytes to everyone as TP.BAM...
            engine.sendto(f"{vin}*".encode(), ("vcan0", socket.J1939_NO_NAME, 0xFEEC, 0xFF))
            engine.sendto(dm1_bytes(broadcast_dm1), ("vcan0", socket.J1939_NO_NAME, PGN_DM1, 0xFF))
            # ...and to one address as TP.CMDT: RTS, our CTS, the packets, our acknowledgement.
            brakes.sendto(dm1_bytes(our_dm1), ("vcan0", socket.J1939_NO_NAME, PGN_DM1, OUR_ADDRESS))
            wait_for(lambda: diagnostics.buses[0].vin == vin, timeout=10, what="the VIN")
            wait_for(
                lambda: seen("SA00") == {"SPN 190 FMI 2", "SPN 110 FMI 16"},
                timeout=10,
                what="DM1 by BAM",
            )
            wait_for(
                lambda: seen("SA17") == {"SPN 520 FMI 4", "SPN 91 FMI 3", "SPN 100 FMI 1"},
                timeout=10,
                what="DM1 by CMDT",
            )
        finally:
            diagnostics.stop()
    stats = diagnostics.stats()["can"]
    assert stats["j1939"]["transfers"] >= 3
    assert not {"transfers_incomplete", "transfers_timed_out", "malformed"} & set(stats["j1939"])
