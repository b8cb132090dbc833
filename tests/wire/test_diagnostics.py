"""edge.wire.diagnostics: the ``ext["diag"]`` wire form; the codec refuses a malformed one."""

from __future__ import annotations

from typing import Any

import pytest

from edge.wire.diagnostics import DiagRecord, records_from_wire, records_to_wire

RES = 1_000_000  # 1 ms


def test_round_trip_relative_to_t0() -> None:
    records = [
        DiagRecord(1000.0, "can0", "BMS", "dtc", "P0A80", 0x2F, "appeared", 999.5, None),
        DiagRecord(1000.25, "can0", "SA00", "vin", "VIN", 0, "WDEMO", None, 0),
    ]
    wire = records_to_wire(records, 999_500, RES)
    assert wire[0] == [500, "can0", "BMS", "dtc", "P0A80", 0x2F, "appeared", 0, None]
    assert records_from_wire(wire, 999_500, RES) == records


@pytest.mark.parametrize(
    "items",
    [
        {"a": 1},
        [[0, "can0"]],
        [[0.5, "can0", "BMS", "dtc", "P0A80", 1, "appeared", None, None]],
        [[0, "can0", 7, "dtc", "P0A80", 1, "appeared", None, None]],
        [[0, "can0", "BMS", "dtc", "P0A80", "1", "appeared", None, None]],
    ],
)
def test_malformed_records_are_refused(items: Any) -> None:
    with pytest.raises(ValueError, match=r"ext\.diag"):
        records_from_wire(items, 0, RES)


def test_the_codec_reports_a_malformed_record_as_a_payload_error() -> None:
    from edge.errors import PayloadError
    from edge.wire.codec import KIND_DATA, Codec, PayloadReader

    codec = Codec("none", 1, 0.001, "car")
    envelope = {"schema": "00" * 8, "t0": 0, "t1": 0, "res": RES, "ext": {"diag": [[0]]}}
    data = codec.pack(KIND_DATA, envelope, codec.compress(b"\x90"), "ab", 1)
    with pytest.raises(PayloadError, match="malformed diagnostics record"):
        PayloadReader().rows(data)
