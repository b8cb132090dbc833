"""edge.diagnostics.obd: supported-PID bitmaps and the VIN answer (the requests themselves run
against simulated ECUs in tests/diagnostics/test_scheduler.py)."""

from __future__ import annotations

import pytest

from edge.diagnostics.obd import parse_supported, parse_vin
from edge.diagnostics.transport import DiagnosticError


def test_supported_pid_bitmap() -> None:
    # PIDs 01, 03, 0C, 0D and 20 (the next range exists) set.
    bits = (1 << 31) | (1 << 29) | (1 << 20) | (1 << 19) | 1
    assert parse_supported(0x00, bits.to_bytes(4, "big")) == {0x01, 0x03, 0x0C, 0x0D, 0x20}
    assert parse_supported(0x20, (1 << 31).to_bytes(4, "big")) == {0x21}
    with pytest.raises(DiagnosticError, match="expected 4"):
        parse_supported(0x00, b"\x00")


def test_vin_with_and_without_the_item_count() -> None:
    assert parse_vin(b"\x01WDEMO00CANTELEM01") == "WDEMO00CANTELEM01"
    assert parse_vin(b"\x00\x00\x00WDEMO00CANTELEM01") == "WDEMO00CANTELEM01"
    with pytest.raises(DiagnosticError, match="empty VIN"):
        parse_vin(b"\x01")
