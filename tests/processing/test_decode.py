"""Frame -> raw values: lookup, J1939 PGN matching, repeats, and every skip reason."""

from __future__ import annotations

import random

import can
import cantools
import pytest
from cantools.j1939 import pgn_from_frame_id as cantools_pgn

from edge.config.model import SignalsConfig
from edge.processing.decode import BusDecoder, Decoder, pgn_from_frame_id
from edge.processing.sample import Selection
from edge.wire.schema import build_schema

DBC = """VERSION ""
BS_:
BU_: ECU
BO_ 256 Plain: 8 ECU
 SG_ Speed : 0|16@1+ (0.01,0) [0|655.35] "km/h" Vector__XXX
 SG_ Angle : 23|16@0- (0.1,0) [-3276.8|3276.7] "deg" Vector__XXX
BO_ 257 Mux: 8 ECU
 SG_ Sel M : 0|8@1+ (1,0) [0|255] "" Vector__XXX
 SG_ A m0 : 8|16@1+ (1,0) [0|65535] "" Vector__XXX
 SG_ B m1 : 8|16@1- (1,0) [-32768|32767] "" Vector__XXX
BO_ 2364540158 EEC1: 8 ECU
 SG_ EngineSpeed : 24|16@1+ (0.125,0) [0|8031.875] "rpm" Vector__XXX
BO_ 2147484160 ExtSame: 8 ECU
 SG_ X : 0|8@1+ (1,0) [0|255] "" Vector__XXX
BO_ 258 Fd: 64 ECU
 SG_ Last : 504|8@1+ (1,0) [0|255] "" Vector__XXX
BO_ 259 Ignored: 1 ECU
 SG_ Nothing : 0|8@1+ (1,0) [0|255] "" Vector__XXX
"""


def decoder(j1939: bool = False, exclude: tuple[str, ...] = ("Ignored.*",)) -> Decoder:
    db = cantools.database.load_string(DBC, strict=True)
    selection = Selection(SignalsConfig(exclude=exclude))
    schema = build_schema([("can0", db, j1939)], selection.selects)
    return Decoder([BusDecoder(0, "can0", db, schema, selection, j1939=j1939)])


def frame(arbitration_id: int, data: bytes, **kwargs: object) -> can.Message:
    kwargs.setdefault("is_extended_id", False)  # python-can's default is True
    return can.Message(arbitration_id=arbitration_id, data=data, channel="can0", **kwargs)


def test_decodes_raw_values_big_and_little_endian_signed() -> None:
    d = decoder()
    track = d.decode(frame(256, bytes([0x10, 0x27, 0xFF, 0xF6, 0, 0, 0, 0])))
    assert track is not None
    assert track.values == {"Speed": 10000, "Angle": -10}  # raw: no scaling
    assert track.repeated is False


def test_repeated_payload_is_not_decoded_again() -> None:
    d = decoder()
    data = bytes(8)
    first = d.decode(frame(256, data))
    second = d.decode(frame(256, data))
    assert first is second and second is not None and second.repeated
    assert d.stats().decoded == 1 and d.stats().repeated == 1


def test_multiplexed_signals() -> None:
    d = decoder()
    a = d.decode(frame(257, bytes([0, 5, 0, 0, 0, 0, 0, 0])))
    assert a is not None and a.values == {"Sel": 0, "A": 5}
    b = d.decode(frame(257, bytes([1, 0xFF, 0xFF, 0, 0, 0, 0, 0])))
    assert b is not None and b.values == {"Sel": 1, "B": -1}
    assert d.decode(frame(257, bytes([7, 0, 0, 0, 0, 0, 0, 0]))) is None  # undefined mux value
    assert d.stats().skipped == {"decode_error": 1}


def test_can_fd_64_byte_frame() -> None:
    d = decoder()
    track = d.decode(frame(258, bytes(63) + b"\x2a", is_fd=True))
    assert track is not None and track.values == {"Last": 42}


def test_extended_and_standard_ids_with_the_same_number_are_different_messages() -> None:
    d = decoder()
    assert d.decode(frame(0x100, bytes(8), is_extended_id=True)) is None
    assert d.stats().skipped == {"unknown_id": 1}
    track = d.decode(frame(0x100 | 0, bytes([9] + [0] * 7), is_extended_id=False))
    assert track is not None and "Speed" in track.values


def test_j1939_matches_by_pgn_and_keeps_the_source_address() -> None:
    frame_id = 0x0CF00417  # EEC1 (PGN 61444), priority 3, source address 0x17
    data = bytes([0, 0, 0, 0x40, 0x1F, 0, 0, 0])
    assert decoder(j1939=False).decode(frame(frame_id, data, is_extended_id=True)) is None
    d = decoder(j1939=True)
    track = d.decode(frame(frame_id, data, is_extended_id=True))
    assert track is not None
    assert track.values == {"EngineSpeed": 0x1F40}
    assert track.source_address == 0x17
    other = d.decode(frame(0x18F00400, data, is_extended_id=True))
    assert other is not None and other is not track and other.source_address == 0x00


def test_every_skip_reason_is_counted_and_the_stream_goes_on() -> None:
    d = decoder()
    frames = [
        can.Message(is_error_frame=True, channel="can0"),
        frame(256, b"", is_remote_frame=True, dlc=8),
        frame(0x7FF, bytes(8)),
        frame(259, bytes(1)),
        frame(256, bytes(3)),
        frame(257, bytes([9] * 8)),
        can.Message(arbitration_id=256, is_extended_id=False, data=bytes(8), channel="nowhere"),
    ]
    for msg in frames:
        assert d.decode(msg) is None
    assert d.decode(frame(256, bytes(8))) is not None
    assert d.stats().skipped == {
        "error_frame": 1,
        "remote_frame": 1,
        "unknown_id": 1,
        "not_selected": 1,
        "short_frame": 1,
        "decode_error": 1,
        "unknown_bus": 1,
    }
    assert d.stats().frames == len(frames) + 1


def test_kernel_filters_cover_exactly_the_selected_messages() -> None:
    d = decoder(j1939=True)
    filters = set(d.bus("can0").frame_ids())
    assert (256, 0x7FF, False) in filters
    assert (259, 0x7FF, False) not in filters  # not selected: never reaches Python
    assert (0xCF00400 & 0x3FFFF00, 0x3FFFF00, True) in filters  # J1939: PGN only


@pytest.mark.parametrize("seed", range(3))
def test_pgn_matches_cantools(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(20_000):
        frame_id = rng.getrandbits(29)
        assert pgn_from_frame_id(frame_id) == cantools_pgn(frame_id)
