"""Fixtures for diagnostics tests: a python-can virtual bus with the simulated ECUs of
edge/simulator/ecus.py answering on it, and configurations that enable diagnostics there."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import can
import pytest

from edge.simulator.ecus import OBD_ECM, UDS_BMS, UDS_TCM, EcuFaults, SimulatedEcus
from edge.simulator.vehicle import DEMO_DBC

__all__ = ["diag_config", "ecus", "vehicle_channel"]


@pytest.fixture
def vehicle_channel() -> str:
    """A virtual bus channel of this test's own."""
    return f"diag-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def ecus(vehicle_channel: str) -> Iterator[SimulatedEcus]:
    """The simulated ECUs answering on ``vehicle_channel`` (faults: ``ecus.faults``)."""
    bus = can.Bus(interface="virtual", channel=vehicle_channel)
    simulated = SimulatedEcus(bus, faults=EcuFaults(), dm1_period=0.5)
    simulated.start()
    yield simulated
    simulated.stop()
    bus.shutdown()


def diag_config(channel: str, **diagnostics: Any) -> dict[str, Any]:
    """A configuration mapping with one virtual bus ``vehicle`` on ``channel`` and diagnostics
    enabled on it: OBD to the engine ECU, UDS to TCM and BMS, J1939; ``diagnostics`` overrides
    keys of the bus's diagnostics table (``None`` removes one)."""
    table: dict[str, Any] = {
        "bus": "vehicle",
        "max_requests_per_second": 100,
        "timeout": 0.5,
        "obd": {
            "request_id": OBD_ECM[0],
            "response_id": OBD_ECM[1],
            "pids": [{"pid": 0x0C, "period": 0.5}, {"pid": 0x0D, "period": 0.5}],
        },
        "uds": [
            {
                "name": "TCM",
                "request_id": UDS_TCM[0],
                "response_id": UDS_TCM[1],
                "dtc_period": 0.5,
                "dids": [{"did": 0xF190, "name": "VIN", "kind": "ascii"}],
            },
            {"name": "BMS", "request_id": UDS_BMS[0], "response_id": UDS_BMS[1], "dtc_period": 0.5},
        ],
        "j1939": {},
    }
    for key, value in diagnostics.items():
        if value is None:
            table.pop(key, None)
        else:
            table[key] = value
    return {
        "vehicle_id": "test-vehicle",
        "buses": [
            {"name": "vehicle", "interface": "virtual", "channel": channel, "dbc": [str(DEMO_DBC)]}
        ],
        "diagnostics": {"buses": [table]},
    }
