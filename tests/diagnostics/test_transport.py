"""edge.diagnostics.transport: negative response codes named as ISO 14229 names them."""

from __future__ import annotations

from edge.diagnostics.transport import NegativeResponse, nrc_name


def test_nrc_names() -> None:
    assert nrc_name(0x31) == "RequestOutOfRange"
    assert nrc_name(0x22) == "ConditionsNotCorrect"
    error = NegativeResponse(0x19, 0x11)
    assert (error.code, error.name) == (0x11, "ServiceNotSupported")
    assert str(error) == "negative response to service 0x19: ServiceNotSupported (0x11)"
    assert nrc_name(0x00) == "0x00 (not a negative response code)"  # was "PositiveResponse"
