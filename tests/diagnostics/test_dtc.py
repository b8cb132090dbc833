"""edge.diagnostics.dtc: DTC text forms (SAE J2012, ISO 14229, J1939-73)."""

from __future__ import annotations

import pytest

from edge.diagnostics.dtc import j1939_dtc_text, obd_dtc_text, status_text, uds_dtc_text


@pytest.mark.parametrize(
    ("code", "text"),
    [(0x0301, "P0301"), (0xC100, "U0100"), (0x4123, "C0123"), (0x9ABC, "B1ABC"), (0x3FFF, "P3FFF")],
)
def test_obd_dtc_text(code: int, text: str) -> None:
    assert obd_dtc_text(code) == text


def test_uds_dtc_text_adds_the_failure_type_when_not_zero() -> None:
    assert uds_dtc_text(0x030100) == "P0301"
    assert uds_dtc_text(0xC1001A) == "U0100-1A"


@pytest.mark.parametrize("code", [-1, 0x1000000])
def test_out_of_range_codes_are_refused(code: int) -> None:
    with pytest.raises(ValueError, match="three bytes"):
        uds_dtc_text(code)


def test_j1939_and_status_texts() -> None:
    assert j1939_dtc_text(190, 2) == "SPN 190 FMI 2"
    assert status_text(0x09) == "testFailed,confirmedDTC"
    assert status_text(0) == ""
