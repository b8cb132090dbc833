"""Diagnostic trouble codes in their standard text forms.

* OBD-II / UDS (SAE J2012, ISO 15031-6): the first two bytes of a DTC give a letter for the
  system (``P`` powertrain, ``C`` chassis, ``B`` body, ``U`` network) and four digits:
  ``0x0301`` is ``P0301``, ``0xC100`` is ``U0100``. UDS adds a third byte, the failure type
  (ISO 14229 / SAE J2012-DA): it is written after a dash when not zero (``P0301-1A``).
* J1939 (SAE J1939-73): a suspect parameter number and a failure mode identifier, written
  ``SPN 190 FMI 2``; a DTC sent with SPN conversion method 1 (an older layout of the SPN that
  its bytes do not identify) is written ``CM1`` and its first three bytes in hex as sent
  (``CM1 005F02``).
"""

from __future__ import annotations

__all__ = [
    "UDS_STATUS_BITS",
    "j1939_cm1_dtc_text",
    "j1939_dtc_text",
    "obd_dtc_text",
    "status_text",
    "uds_dtc_text",
]

_SYSTEMS = "PCBU"

#: ISO 14229-1 DTC status bits, lowest first.
UDS_STATUS_BITS = (
    "testFailed",
    "testFailedThisOperationCycle",
    "pendingDTC",
    "confirmedDTC",
    "testNotCompletedSinceLastClear",
    "testFailedSinceLastClear",
    "testNotCompletedThisOperationCycle",
    "warningIndicatorRequested",
)


def obd_dtc_text(code: int) -> str:
    """The J2012 text of a two-byte DTC (``0x0301`` -> ``P0301``)."""
    if not 0 <= code <= 0xFFFF:
        raise ValueError(f"an OBD DTC is two bytes, got {code:#x}")
    return f"{_SYSTEMS[code >> 14]}{(code >> 12) & 0x3}{code & 0xFFF:03X}"


def uds_dtc_text(code: int) -> str:
    """The text of a three-byte UDS DTC: its J2012 form, and the failure type byte after a dash
    when it is not zero (``0x030100`` -> ``P0301``, ``0xC1001A`` -> ``U0100-1A``)."""
    if not 0 <= code <= 0xFFFFFF:
        raise ValueError(f"a UDS DTC is three bytes, got {code:#x}")
    text = obd_dtc_text(code >> 8)
    failure_type = code & 0xFF
    return f"{text}-{failure_type:02X}" if failure_type else text


def j1939_dtc_text(spn: int, fmi: int) -> str:
    """The text of a J1939 DTC (``SPN 190 FMI 2``)."""
    return f"SPN {spn} FMI {fmi}"


def j1939_cm1_dtc_text(record: bytes) -> str:
    """The text of a J1939 DTC with SPN conversion method 1 (J1939-73 versions 1 to 3, whose SPN
    layouts differ): ``CM1`` and the bytes that hold its SPN and FMI, as sent (``CM1 005F02``).
    The occurrence count (4th byte) is left out: it is the DTC's status."""
    if len(record) != 4:
        raise ValueError(f"a J1939 DTC is four bytes, got {len(record)}")
    return f"CM1 {record[:3].hex().upper()}"


def status_text(status: int) -> str:
    """The names of the UDS status bits set in ``status``, comma-separated."""
    return ",".join(name for bit, name in enumerate(UDS_STATUS_BITS) if status >> bit & 1)
