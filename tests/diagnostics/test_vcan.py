"""Diagnostics on a real kernel's SocketCAN (vcan0; run with ``bash .ci/vcan``): can-isotp and
udsoncan over raw CAN sockets against the simulated ECUs, DTCs and VIN read, and the kernel's own
J1939 stack reassembling the same DM1 as edge.diagnostics.j1939 where the kernel has it.

The User-Mode Linux kernel of the Debian package (6.1) ships can-j1939 as a module (.ci/uml-init.sh
loads it) but no CAN_ISOTP: hence python-can-isotp over raw sockets, as on gateways without it.
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
from edge.diagnostics.records import DiagRecord
from edge.diagnostics.service import Diagnostics
from edge.simulator.ecus import DEMO_VIN, SimulatedEcus, dm1_bytes
from edge.simulator.vehicle import DEMO_DBC
from tests.support.waiting import wait_for

pytestmark = [
    pytest.mark.vcan,
    pytest.mark.skipif(
        not Path("/sys/class/net/vcan0").exists(), reason="no vcan0: run `bash .ci/vcan`"
    ),
]

SOL_CAN_J1939 = socket.SOL_CAN_BASE + socket.CAN_J1939  # 107
SO_J1939_PROMISC = 2


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


def test_kernel_isotp_availability_is_known() -> None:
    try:
        sock = socket.socket(socket.AF_CAN, socket.SOCK_DGRAM, socket.CAN_ISOTP)
    except OSError as exc:
        pytest.skip(f"this kernel has no CAN_ISOTP sockets ({exc.strerror}): python-can-isotp used")
    sock.close()


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
