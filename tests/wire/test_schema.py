"""The signal schema (edge/wire/schema.py): its id, its wire form, building it from cantools
databases,
and physical values exactly as cantools computes them."""

from __future__ import annotations

import dataclasses
import hashlib
import random
import struct
from pathlib import Path
from typing import Any, cast

import cantools
import msgpack
import pytest
from cantools.database.can import Database, Message
from cantools.database.can.signal import Signal
from cantools.database.errors import DecodeError
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.errors import PayloadError
from edge.wire.schema import MessageInfo, Schema, SignalInfo, build_schema

ROOT = Path(__file__).resolve().parents[2]
DEMO_DBC = ROOT / "dbc" / "demo_vehicle.dbc"
SHARED = Path(__file__).resolve().parents[3] / "shared"
CORPUS = SHARED / "corpus"

SPEED = SignalInfo("Speed", 0.25, 0, "rpm")
MODE = SignalInfo("Mode", choices={0: "Off", 1: "On"})
ENGINE = MessageInfo(0, "Engine", 0x100, False, False, (SPEED, MODE))
SMALL = Schema(("can0",), (ENGINE,))


def load(path: Path) -> Database:
    db = cantools.database.load_file(str(path), strict=False)
    assert isinstance(db, Database)
    return db


def bits(value: Any) -> Any:
    """Exact comparison: type and, for floats, the IEEE bits (NaN == NaN, -0.0 != 0.0)."""
    if isinstance(value, float):
        return ("float", struct.pack("<d", value))
    return (type(value).__name__, value)


# --------------------------------------------------------------------------------------------
# schema id


def test_schema_id_is_a_short_content_hash() -> None:
    packed = msgpack.packb(SMALL.to_wire(), use_bin_type=True)
    assert SMALL.schema_id == hashlib.sha256(packed).hexdigest()[:16]
    # Pinned: the cloud keeps schemas by id, so the same content must keep its id across
    # versions of this module (a change here is a wire format change, docs/format.md).
    assert SMALL.schema_id == "81abdfdfc380ffc3"


def test_equal_content_gives_equal_id() -> None:
    again = Schema(
        ("can0",),
        (
            MessageInfo(
                0,
                "Engine",
                256,
                False,
                False,
                (
                    SignalInfo("Speed", 0.25, 0, "rpm", False, None),
                    SignalInfo("Mode", 1, 0, "", False, {0: "Off", 1: "On"}),
                ),
            ),
        ),
    )
    assert again == SMALL
    assert again.schema_id == SMALL.schema_id
    assert again is not SMALL


def _change_signal(index: int, **changes: Any) -> Schema:
    signals = list(ENGINE.signals)
    signals[index] = dataclasses.replace(signals[index], **changes)
    return Schema(SMALL.buses, (dataclasses.replace(ENGINE, signals=tuple(signals)),))


def _change_message(**changes: Any) -> Schema:
    return Schema(SMALL.buses, (dataclasses.replace(ENGINE, **changes),))


CHANGED = {
    "bus name": Schema(("can1",), SMALL.messages),
    "extra bus": Schema(("can0", "can1"), SMALL.messages),
    "message name": _change_message(name="Motor"),
    "frame id": _change_message(frame_id=0x101),
    "extended": _change_message(is_extended=True),
    "j1939": _change_message(j1939=True),
    "bus index": Schema(("can0", "can1"), (dataclasses.replace(ENGINE, bus=1),)),
    "signal order": _change_message(signals=(MODE, SPEED)),
    "signal dropped": _change_message(signals=(SPEED,)),
    "signal name": _change_signal(0, name="Speed2"),
    "scale": _change_signal(0, scale=0.5),
    "offset": _change_signal(0, offset=-40),
    "unit": _change_signal(0, unit="1/min"),
    "is_float": _change_signal(0, is_float=True),
    "choice name": _change_signal(1, choices={0: "Off", 1: "Running"}),
    "choice added": _change_signal(1, choices={0: "Off", 1: "On", 2: "Error"}),
    "choices removed": _change_signal(1, choices=None),
    "message added": Schema(SMALL.buses, (ENGINE, dataclasses.replace(ENGINE, name="Copy"))),
}


@pytest.mark.parametrize("name", sorted(CHANGED))
def test_any_change_of_content_changes_the_id(name: str) -> None:
    changed = CHANGED[name]
    assert changed != SMALL
    assert changed.schema_id != SMALL.schema_id


def test_ids_of_all_changes_are_distinct() -> None:
    ids = {s.schema_id for s in CHANGED.values()} | {SMALL.schema_id}
    assert len(ids) == len(CHANGED) + 1


# --------------------------------------------------------------------------------------------
# wire form

names = st.text(min_size=1, max_size=12)
numbers = st.one_of(
    st.integers(-1000, 1000),
    st.sampled_from([0.1, 0.01, 0.05, 0.001, -0.5, 1e-9, 2.5e6]),
    st.floats(allow_nan=False, allow_infinity=False),
)
signals = st.builds(
    SignalInfo,
    name=names,
    scale=numbers,
    offset=numbers,
    unit=st.text(max_size=6),
    is_float=st.booleans(),
    choices=st.one_of(
        st.none(),
        st.dictionaries(st.integers(-(2**63), 2**64 - 1), st.text(max_size=8), min_size=1),
    ),
)


@st.composite
def schemas(draw: st.DrawFn) -> Schema:
    buses = tuple(draw(st.lists(names, min_size=1, max_size=3)))
    messages = draw(
        st.lists(
            st.builds(
                MessageInfo,
                bus=st.integers(0, len(buses) - 1),
                name=names,
                frame_id=st.integers(0, 2**29 - 1),
                is_extended=st.booleans(),
                j1939=st.booleans(),
                signals=st.lists(signals, max_size=5).map(tuple),
            ),
            max_size=5,
        )
    )
    return Schema(buses, tuple(messages))


@settings(max_examples=80, deadline=None)
@given(schema=schemas())
def test_wire_round_trip(schema: Schema) -> None:
    wire = schema.to_wire()
    assert Schema.from_wire(wire) == schema
    # What the cloud gets: the msgpack bytes, unpacked the way PayloadReader does.
    received = msgpack.unpackb(
        msgpack.packb(wire, use_bin_type=True), raw=False, strict_map_key=False
    )
    again = Schema.from_wire(received)
    assert again == schema
    assert again.schema_id == schema.schema_id
    assert again.signal_count == schema.signal_count == sum(len(m.signals) for m in schema.messages)


def test_wire_form_is_compact_lists() -> None:
    assert SMALL.to_wire() == {
        "buses": ["can0"],
        "messages": [
            [
                0,
                "Engine",
                0x100,
                False,
                False,
                [
                    ["Speed", 0.25, 0, "rpm", False, None],
                    ["Mode", 1, 0, "", False, {0: "Off", 1: "On"}],
                ],
            ]
        ],
    }
    assert SignalInfo.from_wire(["x", 1, 0, "", 0, {}]) == SignalInfo("x")  # empty choices: none
    assert MessageInfo.from_wire([0, "M", 5, 1, 0, []]) == MessageInfo(0, "M", 5, True, False, ())


@pytest.mark.parametrize(
    "body",
    [
        [],
        "schema",
        None,
        {"buses": ["a"]},
        {"messages": []},
        {"buses": ["a"], "messages": 5},
        {"buses": 5, "messages": []},
        {"buses": ["a"], "messages": [[0, "M", 1, False, False]]},
        {"buses": ["a"], "messages": [[0, "M", 1, False, False, [], 7]]},
        {"buses": ["a"], "messages": [[0, "M", 1, False, False, [["s", 1, 0, "", False]]]]},
        {"buses": ["a"], "messages": [["x", "M", 1, False, False, []]]},
        {"buses": ["a"], "messages": [[0, "M", "x", False, False, []]]},
        {"buses": ["a"], "messages": [[0, "M", 1, False, False, 3]]},
    ],
)
def test_malformed_wire_raises_payload_error(body: Any) -> None:
    with pytest.raises(PayloadError):
        Schema.from_wire(body)


@pytest.mark.parametrize("choices", [[1, 2], "ab", [[1, 2, 3]]])
def test_malformed_choices_raise_payload_error(choices: Any) -> None:
    wire = SMALL.to_wire()
    wire["messages"][0][5][1][5] = choices
    with pytest.raises(PayloadError):
        Schema.from_wire(wire)


@pytest.mark.parametrize(
    ("position", "value"),
    [(1, "0.25"), (2, None), (1, [1]), (0, 5), (3, 7)],
    ids=["scale-str", "offset-nil", "scale-list", "name-int", "unit-int"],
)
def test_signal_fields_of_the_wrong_type_raise_payload_error(position: int, value: Any) -> None:
    # A scale of "0.25" would later turn raw 3 into "0.250.250.25" (or, raw 2**40, exhaust
    # memory) in PayloadReader instead of failing here.
    wire = SMALL.to_wire()
    wire["messages"][0][5][0][position] = value
    with pytest.raises(PayloadError):
        Schema.from_wire(wire)


def test_bus_index_out_of_range_raises_payload_error() -> None:
    wire = SMALL.to_wire()
    wire["messages"][0][0] = 3
    with pytest.raises(PayloadError):
        Schema.from_wire(wire)


# --------------------------------------------------------------------------------------------
# build_schema


def _all(_bus: str, _message: Message, _signal: Signal) -> bool:
    return True


@pytest.fixture(scope="module")
def demo() -> Database:
    if not DEMO_DBC.exists():
        pytest.skip("dbc/demo_vehicle.dbc is not there yet")
    return load(DEMO_DBC)


def test_build_schema_takes_every_selected_signal_in_database_order(demo: Database) -> None:
    schema = build_schema([("can0", demo, False)], _all)
    assert schema.buses == ("can0",)
    assert [m.name for m in schema.messages] == [m.name for m in demo.messages]
    for info, message in zip(schema.messages, demo.messages, strict=True):
        assert info.bus == 0
        assert info.frame_id == message.frame_id
        assert info.is_extended == message.is_extended_frame
        assert info.j1939 is False
        assert [s.name for s in info.signals] == [s.name for s in message.signals]
        for signal_info, signal in zip(info.signals, message.signals, strict=True):
            assert signal_info.scale == signal.scale
            assert signal_info.offset == signal.offset
            assert signal_info.unit == (signal.unit or "")
            assert signal_info.is_float == signal.is_float
            if signal.choices:
                assert signal_info.choices == {k: str(v) for k, v in signal.choices.items()}
                assert all(type(v) is str for v in signal_info.choices.values())
            else:
                assert signal_info.choices is None
    assert schema.signal_count == sum(len(m.signals) for m in demo.messages)


def test_build_schema_applies_the_selector_per_bus(demo: Database) -> None:
    calls: list[tuple[str, str, str]] = []

    def select(bus: str, message: Message, signal: Signal) -> bool:
        assert isinstance(message, Message)
        assert isinstance(signal, Signal)
        calls.append((bus, message.name, signal.name))
        if bus == "body":
            return message.name == "BCM_Status" and signal.name.startswith("BCM_Turn")
        return signal.name.startswith("ECM_") or message.name == "EEC1"

    schema = build_schema([("powertrain", demo, True), ("body", demo, False)], select)

    assert schema.buses == ("powertrain", "body")
    assert [(m.bus, m.name) for m in schema.messages] == [
        (0, "ECM_EngineStatus"),
        (0, "ECM_Temperatures"),
        (0, "EEC1"),
        (1, "BCM_Status"),
    ]
    body = schema.messages[3]
    assert [s.name for s in body.signals] == ["BCM_TurnIndicatorLeft", "BCM_TurnIndicatorRight"]
    # J1939 only for extended frames on a J1939 bus.
    assert [m.j1939 for m in schema.messages] == [False, False, True, False]
    total = sum(len(m.signals) for m in demo.messages)
    assert len(calls) == 2 * total
    assert {bus for bus, _, _ in calls} == {"powertrain", "body"}


def test_build_schema_with_nothing_selected_is_empty(demo: Database) -> None:
    schema = build_schema([("can0", demo, False)], lambda *_: False)
    assert schema.messages == ()
    assert schema.buses == ("can0",)
    assert schema.signal_count == 0


def test_build_schema_is_deterministic(demo: Database) -> None:
    first = build_schema([("can0", demo, False)], _all)
    second = build_schema([("can0", load(DEMO_DBC), False)], _all)
    assert first == second
    assert first.schema_id == second.schema_id


# --------------------------------------------------------------------------------------------
# physical values: exactly what cantools gives


def decode(message: Message, data: bytes, **options: bool) -> dict[str, Any]:
    """``message.decode`` of a plain (not container) message."""
    return cast(dict[str, Any], message.decode(data, **options))


def payloads(message: Message, rng: random.Random, count: int) -> list[bytes]:
    """Random frames plus the bit patterns that make special values (NaN, -0.0, extremes)."""
    n = message.length
    special = [
        bytes(n),
        b"\xff" * n,
        b"\x80" * n,
        b"\x7f" * n,
        (b"\x00\x00\x00\x80" * n)[:n],  # float32 -0.0 (little endian)
        (b"\x00" * 7 + b"\x80") * (n // 8) + bytes(n % 8),  # float64 -0.0
        (b"\x80" + b"\x00" * 7) * (n // 8) + bytes(n % 8),  # big endian -0.0
        (b"\x00\x00\xc0\x7f" * n)[:n],  # float32 quiet NaN
    ]
    return special + [rng.randbytes(n) for _ in range(count)]


def check_physical_matches_cantools(
    db: Database, count: int, *, every_message: bool = False, seed: int = 0
) -> int:
    """For every message: SignalInfo.physical(raw) and the choice lookup, with the schema taken
    through its wire form, equal cantools' decode bit for bit. Returns values checked."""
    schema = build_schema([("can0", db, False)], _all)
    received = Schema.from_wire(
        msgpack.unpackb(msgpack.packb(schema.to_wire()), raw=False, strict_map_key=False)
    )
    infos = {m.name: {s.name: s for s in m.signals} for m in received.messages}
    rng = random.Random(seed)
    checked = 0
    for message in db.messages:
        decoded = 0
        for data in payloads(message, rng, count):
            try:
                raw = decode(message, data, decode_choices=False, scaling=False)
                physical = decode(message, data, decode_choices=False)
                named = decode(message, data, decode_choices=True)
            except DecodeError:  # e.g. a multiplexer value the database does not define
                continue
            decoded += 1
            assert raw.keys() == physical.keys()
            for name, raw_value in raw.items():
                info = infos[message.name][name]
                got, want = info.physical(raw_value), physical[name]
                assert bits(got) == bits(want), (message.name, name, raw_value, got, want)
                choice = info.choices.get(raw_value) if info.choices else None
                if choice is None:
                    assert bits(named[name]) == bits(physical[name]), (message.name, name)
                else:
                    assert str(named[name]) == choice, (message.name, name)
                checked += 1
        if every_message and not message.is_multiplexed():
            assert decoded > 0, message.name
    return checked


def test_physical_equals_cantools_on_the_demo_dbc(demo: Database) -> None:
    assert check_physical_matches_cantools(demo, 200, every_message=True) > 10_000


CORPUS_DBCS = [
    "tesla_model3/Model3CAN_kuksa.dbc",
    "css_obd2_gnss/CSS-Electronics-OBD2-v1.4.dbc",
    "css_obd2_gnss/canmod-gps.dbc",
    "j1939_truck/CSS-Electronics-SAE-J1939-DEMO.dbc",
    "toyota_rav4_2017/toyota_new_mc_pt_generated.dbc",
    "dbc_corpus/cantools_tests/dbc/floating_point.dbc",
    "dbc_corpus/cantools_tests/dbc/foobar.dbc",
    "dbc_corpus/cantools_tests/dbc/signed.dbc",
    "dbc_corpus/cantools_tests/dbc/padding_bit_order.dbc",
    "dbc_corpus/cantools_tests/dbc/multiplex_2.dbc",
]


@pytest.mark.parametrize("name", CORPUS_DBCS)
def test_physical_equals_cantools_on_corpus_dbcs(name: str) -> None:
    path = CORPUS / name
    if not CORPUS.is_dir():
        pytest.skip(f"the shared corpus is not there ({CORPUS})")
    if not path.exists():
        pytest.skip(f"{name} is not in the shared corpus")
    assert check_physical_matches_cantools(load(path), 30) > 0


def test_corpus_covers_floats_nan_and_64_bit_values() -> None:
    """The corpus files above do reach the cases that matter (NaN, -0.0, 64-bit integers)."""
    if not CORPUS.is_dir():
        pytest.skip(f"the shared corpus is not there ({CORPUS})")
    db = load(CORPUS / "dbc_corpus/cantools_tests/dbc/floating_point.dbc")
    seen: set[str] = set()
    for message in db.messages:
        for data in payloads(message, random.Random(1), 10):
            for value in decode(message, data, decode_choices=False, scaling=False).values():
                if isinstance(value, float) and value != value:
                    seen.add("nan")
                elif isinstance(value, float) and value == 0 and str(value) == "-0.0":
                    seen.add("-0.0")
    assert seen == {"nan", "-0.0"}
    wide = load(CORPUS / "dbc_corpus/cantools_tests/dbc/padding_bit_order.dbc")
    values = {
        v
        for m in wide.messages
        for v in decode(m, b"\xff" * m.length, decode_choices=False, scaling=False).values()
    }
    assert 2**64 - 1 in values
