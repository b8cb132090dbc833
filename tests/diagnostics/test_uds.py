"""edge.diagnostics.uds: DID values as configured (the udsoncan client runs against simulated
ECUs in tests/diagnostics/test_scheduler.py and tests/iotedge/test_methods.py)."""

from __future__ import annotations

from edge.config.diagnostics import DidConfig
from edge.diagnostics.uds import did_text


def test_did_kinds() -> None:
    assert did_text(DidConfig(0xF190, "VIN", "ascii"), b"WDEMO\x00\x00") == (7, "WDEMO")
    assert did_text(DidConfig(0x0101, "odometer", "uint"), b"\x01\x00") == (256, "256")
    assert did_text(DidConfig(0xF18C, "serial", "hex"), b"\x0a\xbc") == (2, "0ABC")
