"""edge.simulator.ecus: the simulated ECUs' answers (their ISO-TP side runs in
tests/diagnostics/test_scheduler.py)."""

from __future__ import annotations

from edge.simulator.ecus import DEMO_VIN, UdsServer, _obd_answer


def test_uds_server_answers_dtcs_by_mask_dids_and_clear() -> None:
    server = UdsServer("BMS", {0x0A8000: 0x2F, 0x070000: 0x04}, {0xF190: b"VIN"})
    assert server.answer(bytes((0x19, 0x02, 0x08))) == bytes.fromhex("5902ff0a80002f")
    assert server.answer(bytes((0x22, 0xF1, 0x90))) == b"\x62\xf1\x90VIN"
    assert server.answer(bytes((0x22, 0x12, 0x34))) == bytes((0x7F, 0x22, 0x31))
    assert server.answer(bytes((0x14, 0xFF, 0xFF, 0xFF))) == b"\x54"
    assert server.dtcs == {} and server.clears == 1
    assert server.answer(bytes((0x27, 0x01))) == bytes((0x7F, 0x27, 0x11))


def test_obd_answers_supported_pids_values_and_vin() -> None:
    supported = _obd_answer(b"\x01\x00", {}, DEMO_VIN)
    assert supported is not None and supported[:2] == b"\x41\x00"
    assert _obd_answer(b"\x01\x0c", {"engine_speed": 1000.0}, DEMO_VIN) == b"\x41\x0c\x0f\xa0"
    assert _obd_answer(b"\x01\x42", {}, DEMO_VIN) is None  # unsupported: no answer
    assert _obd_answer(b"\x09\x02", {}, DEMO_VIN) == b"\x49\x02\x01" + DEMO_VIN.encode()
