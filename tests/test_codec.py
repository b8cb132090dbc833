"""The wire format (edge/codec.py, docs/format.md): round trips, the envelope, and a decoder that
refuses every malformed payload with PayloadError and nothing else."""

from __future__ import annotations

import hashlib
import math
import re
import struct
import time
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import msgpack
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.batch import Batch
from edge.codec import (
    FORMAT_VERSION,
    KIND_DATA,
    KIND_SCHEMA,
    MAGIC,
    MAX_BODY,
    Codec,
    DecodedPayload,
    PayloadDecoder,
    Row,
    unpack,
)
from edge.errors import PayloadError, SchemaMissingError, TelemetryError
from edge.payload import CONTENT_TYPE, Payload
from edge.schema import MessageInfo, Schema, SignalInfo

COMPRESSIONS = ("none", "zlib", "zstd")
CODES = {"none": 0, "zlib": 1, "zstd": 2}
STREAM = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"  # what the spool uses: uuid4().hex
VEHICLE = "veh-7"
DOCS = Path(__file__).resolve().parents[1] / "docs" / "format.md"

# A fixed schema for the hand-written cases: an int signal with choices, a scaled int, a float,
# and a J1939 message on a second bus.
GEAR = SignalInfo("Gear", choices={0: "P", 1: "R", 2: "N", 3: "D"})
SPEED = SignalInfo("Speed", scale=0.01, unit="km/h")
TEMP = SignalInfo("Temp", offset=-40, unit="degC")
LAT = SignalInfo("Lat", unit="deg", is_float=True)
RPM = SignalInfo("EngineSpeed", scale=0.125, unit="rpm")
FIXED = Schema(
    ("powertrain", "truck"),
    (
        MessageInfo(0, "Drive", 0x100, False, False, (GEAR, SPEED, TEMP)),
        MessageInfo(0, "Gnss", 0x4E0, False, False, (LAT,)),
        MessageInfo(1, "EEC1", 0x0CF00400, True, True, (RPM,)),
    ),
)


#: A row as tests write it: (message index, source address, tick, [(signal index, raw)...]).
RowSpec = tuple[int, int | None, int, list[tuple[int, Any]]]

# --------------------------------------------------------------------------------------------
# helpers


def bits(value: Any) -> Any:
    """A value compared exactly: floats by their IEEE bits (so -0.0 != 0.0 and NaN == NaN)."""
    if isinstance(value, float):
        return ("float", struct.pack("<d", value))
    return (type(value).__name__, value)


def exact(rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
    return [tuple(bits(field) for field in row) for row in rows]


def make_codec(
    compression: str = "zstd", resolution: float = 0.001, vehicle: str = VEHICLE
) -> Codec:
    return Codec(compression, 3, resolution, vehicle)


def encode(codec: Codec, schema: Schema, batch: Batch, seq: int = 1) -> tuple[Payload, Payload]:
    """(schema payload, data payload) as the processor makes them."""
    schema_payload = codec.payload(
        KIND_SCHEMA, codec.envelope(None, schema), codec.schema_body(schema), STREAM, 0
    )
    envelope, body = codec.envelope(batch, schema), codec.data_body(batch, schema)
    data_payload = codec.payload(KIND_DATA, envelope, body, STREAM, seq)
    return schema_payload, data_payload


def raw_payload(
    envelope: Any, body: bytes, *, kind: int = KIND_DATA, code: int = 0, version: int = 1
) -> bytes:
    """A payload assembled by hand, so that any field can be wrong."""
    packed: bytes = msgpack.packb(envelope)
    return MAGIC + bytes((version, kind, code)) + packed + body


def decoder_for(schema: Schema = FIXED) -> PayloadDecoder:
    decoder = PayloadDecoder()
    decoder.add_schema(schema)
    return decoder


def data_envelope(**fields: Any) -> dict[str, Any]:
    """A valid data envelope for FIXED, with ``fields`` replaced."""
    env: dict[str, Any] = {"schema": FIXED.schema_id, "t0": 1000, "t1": 1000, "res": 1_000_000}
    env.update(tb="relative", stream=STREAM, seq=1, vehicle=VEHICLE)
    env.update(fields)
    return env


def decode_only_payload_error(decoder: PayloadDecoder, data: bytes) -> None:
    """Decode ``data``: rows or a PayloadError are both fine; any other exception fails."""
    try:
        decoder.decode(data)
    except PayloadError as exc:
        assert isinstance(exc, TelemetryError)


# --------------------------------------------------------------------------------------------
# random schemas and batches


@st.composite
def signal_specs(draw: st.DrawFn, name: str) -> tuple[SignalInfo, st.SearchStrategy[Any]]:
    """A signal and the strategy of its raw values (what cantools can give for it)."""
    kind = draw(st.sampled_from(["signed", "unsigned", "float32", "float64"]))
    if kind.startswith("float"):
        scale = draw(st.sampled_from([1, 1, 0.1, 0.01, 2]))
        offset = draw(st.sampled_from([0, 0, -40, 0.5]))
        width: Literal[32, 64] = 32 if kind == "float32" else 64
        return SignalInfo(name, scale, offset, "u", True, None), st.floats(width=width)
    # 64 bits: deltas between extremes leave msgpack's range; such columns are sent plain.
    length = draw(st.sampled_from([1, 2, 4, 8, 12, 16, 32, 63, 64]))
    if kind == "signed":
        values = st.integers(-(2 ** (length - 1)), 2 ** (length - 1) - 1)
    else:
        values = st.integers(0, 2**length - 1)
    scale = draw(st.sampled_from([1, 1, 1, 2, 10, -1, 0.1, 0.01, 0.05, 0.25, 0.001, 1e-7]))
    offset = draw(st.sampled_from([0, 0, 0, -40, 1000, -125, 0.5, -273.15]))
    choices = None
    if draw(st.booleans()):
        keys = draw(st.lists(values, min_size=1, max_size=4, unique=True))
        choices = {int(k): f"{name}_{i}" for i, k in enumerate(keys)}
        # Choice keys are drawn often enough that rows do hit them.
        values = st.one_of(st.sampled_from(keys), values)
    unit = draw(st.sampled_from(["", "km/h", "degC", "%"]))
    return SignalInfo(name, scale, offset, unit, False, choices), values


@st.composite
def schemas_and_rows(
    draw: st.DrawFn,
) -> tuple[Schema, list[RowSpec]]:
    """A schema and rows ``(message index, source, tick, [(signal index, raw)...])`` for it."""
    buses = tuple(f"bus{i}" for i in range(draw(st.integers(1, 2))))
    messages: list[MessageInfo] = []
    value_strategies: list[list[st.SearchStrategy[Any]]] = []
    dense: list[bool] = []
    for m in range(draw(st.integers(1, 4))):
        specs = [draw(signal_specs(f"M{m}S{s}")) for s in range(draw(st.integers(1, 5)))]
        j1939 = draw(st.booleans())
        messages.append(
            MessageInfo(
                draw(st.integers(0, len(buses) - 1)),
                f"M{m}",
                0x18FEF100 + m if j1939 else 0x100 + m,
                j1939,
                j1939,
                tuple(info for info, _ in specs),
            )
        )
        value_strategies.append([values for _, values in specs])
        dense.append(draw(st.booleans()))
    schema = Schema(buses, tuple(messages))
    base = draw(st.sampled_from([0, 5_000, 1_700_000_000_000, 1_700_000_000_000_000]))
    rows = []
    for _ in range(draw(st.integers(1, 30))):
        m = draw(st.integers(0, len(messages) - 1))
        source = draw(st.integers(0, 255)) if messages[m].j1939 else None
        tick = base + draw(st.integers(0, 100_000))
        n = len(messages[m].signals)
        present = [True] * n if dense[m] else draw(st.lists(st.booleans(), min_size=n, max_size=n))
        items = [(i, draw(value_strategies[m][i])) for i in range(n) if present[i]]
        rows.append((m, source, tick, items))
    return schema, rows


def batch_of(rows: Sequence[RowSpec]) -> Batch:
    batch = Batch(0.0)
    for message_index, source, tick, items in rows:
        batch.add(message_index, source, tick, items)
    return batch


def expected_rows(schema: Schema, rows: Sequence[RowSpec], res_ns: int) -> list[Row]:
    """What the cloud must get back, in the documented order: groups in order of first
    appearance, columns by signal index, values in row order."""
    groups: dict[tuple[int, int | None], list[tuple[int, dict[int, Any]]]] = {}
    for message_index, source, tick, items in rows:
        groups.setdefault((message_index, source), []).append((tick, dict(items)))
    out = []
    for (message_index, source), group in groups.items():
        message = schema.messages[message_index]
        for index in sorted({i for _, values in group for i in values}):
            signal = message.signals[index]
            for tick, values in group:
                if index not in values:
                    continue
                raw = values[index]
                if signal.scale == 1 and signal.offset == 0:
                    value = raw
                else:
                    value = raw * signal.scale + signal.offset
                choice = signal.choices.get(raw) if signal.choices else None
                out.append(
                    Row(
                        tick * res_ns / 10**9,
                        schema.buses[message.bus],
                        message.name,
                        signal.name,
                        value,
                        signal.unit,
                        choice,
                        source,
                    )
                )
    return out


# --------------------------------------------------------------------------------------------
# round trips


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=schemas_and_rows(),
    compression=st.sampled_from(COMPRESSIONS),
    resolution=st.sampled_from([0.001, 0.000001, 0.01, 0.0001, 1.0]),
    seq=st.integers(0, 2**63 - 1),
)
def test_round_trip_gives_back_every_value_exactly(
    case: tuple[Schema, list[RowSpec]],
    compression: str,
    resolution: float,
    seq: int,
) -> None:
    schema, rows = case
    codec = make_codec(compression, resolution)
    res_ns = round(resolution * 1e9)
    schema_payload, data_payload = encode(codec, schema, batch_of(rows), seq)
    decoder = PayloadDecoder()

    decoded_schema, schema_rows = decoder.decode(schema_payload.body)
    decoded, got = decoder.decode(data_payload.body)

    assert schema_rows == []
    assert decoded_schema.kind == "schema"
    assert decoder.schemas[schema.schema_id] == schema
    assert decoded.kind == "data"
    assert decoded.compression == compression
    t0 = min(tick for _, _, tick, _ in rows)
    t1 = max(tick for _, _, tick, _ in rows)
    env = decoded.envelope
    assert (env["stream"], env["seq"], env["vehicle"]) == (STREAM, seq, VEHICLE)
    assert (env["schema"], env["t0"], env["t1"], env["res"]) == (schema.schema_id, t0, t1, res_ns)
    assert env["tb"] == ("epoch" if t0 * res_ns / 1e9 > 1e9 else "relative")
    assert exact(got) == exact(expected_rows(schema, rows, res_ns))


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_special_floats_survive_bit_for_bit(compression: str) -> None:
    schema = Schema(
        ("can0",),
        (
            MessageInfo(0, "F", 1, False, False, (SignalInfo("raw", is_float=True),)),
            MessageInfo(0, "G", 2, False, False, (SignalInfo("scaled", 0.1, 0, "", True),)),
        ),
    )
    # A float32 NaN as cantools gives it, a NaN with a payload, -0.0, infinities, extremes.
    nan32 = struct.unpack("<f", b"\xff\xff\xff\x7f")[0]
    nan_payload = struct.unpack("<d", b"\x01\x00\x00\x00\x00\x00\xf8\xff")[0]
    specials = [nan32, nan_payload, -0.0, 0.0, math.inf, -math.inf, 1.7976931348623157e308, 5e-324]
    batch = Batch(0.0)
    for tick, value in enumerate(specials):
        batch.add(0, None, tick, [(0, value)])
        batch.add(1, None, tick, [(0, value)])
    decoder = PayloadDecoder()
    for payload in encode(make_codec(compression), schema, batch):
        rows = decoder.rows(payload.body)
    raw = [r.value for r in rows if r.message == "F"]
    scaled = [r.value for r in rows if r.message == "G"]
    assert exact([raw]) == exact([specials])  # unscaled: passed through untouched
    assert exact([scaled]) == exact([[v * 0.1 + 0 for v in specials]])


def test_data_body_layout_is_the_documented_one() -> None:
    """Groups, delta-coded times and rows, nil rows for dense columns, raw floats."""
    batch = Batch(0.0)
    batch.add(0, None, 1010, [(0, 3), (1, 5000), (2, 100)])
    batch.add(0, None, 1020, [(0, 3), (1, 5010)])
    batch.add(1, None, 1000, [(0, 48.25)])
    batch.add(2, 0x00, 1030, [(0, 6000)])
    batch.add(0, None, 1040, [(0, 1), (1, 4990), (2, 90)])
    batch.add(2, 0x3D, 1015, [(0, 7000)])
    codec = make_codec("none", resolution=0.001)
    _, payload = encode(codec, FIXED, batch)

    decoded = unpack(payload.body)

    drive_columns = [[0, None, [3, 0, -2]], [1, None, [5000, 10, -20]], [2, [0, 2], [100, -10]]]
    assert decoded.body == [
        [0, None, [10, 10, 20], drive_columns],
        [1, None, [0], [[0, None, [48.25]]]],
        [2, 0, [30], [[0, None, [6000]]]],
        [2, 0x3D, [15], [[0, None, [7000]]]],
    ]
    assert decoded.envelope["t0"] == 1000
    assert decoded.envelope["t1"] == 1040
    rows = decoder_for().rows(payload.body)
    assert rows[:3] == [
        Row(1.01, "powertrain", "Drive", "Gear", 3, "", "D", None),
        Row(1.02, "powertrain", "Drive", "Gear", 3, "", "D", None),
        Row(1.04, "powertrain", "Drive", "Gear", 1, "", "R", None),
    ]
    assert Row(1.04, "powertrain", "Drive", "Temp", 50, "degC", None, None) in rows
    assert Row(1.03, "truck", "EEC1", "EngineSpeed", 750.0, "rpm", None, 0) in rows
    assert Row(1.015, "truck", "EEC1", "EngineSpeed", 875.0, "rpm", None, 0x3D) in rows


def test_schema_body_is_the_schema_wire_form() -> None:
    for compression in COMPRESSIONS:
        codec = make_codec(compression)
        payload, _ = encode(codec, FIXED, batch_of([(0, None, 1, [(0, 1)])]))
        decoded = unpack(payload.body)
        assert decoded.kind == "schema"
        assert decoded.body == FIXED.to_wire()
        assert set(decoded.envelope) == {"schema", "created", "stream", "seq", "vehicle"}
        # docs/format.md: the id is the SHA-256 of the uncompressed body bytes as sent
        packed = _decompress(compression, unpack_body_bytes(payload.body))
        assert hashlib.sha256(packed).hexdigest()[:16] == FIXED.schema_id


def _decompress(compression: str, data: bytes) -> bytes:
    if compression == "zstd":
        return zstandard.ZstdDecompressor().decompress(data)
    return zlib.decompress(data) if compression == "zlib" else data


def test_envelope_and_properties() -> None:
    batch = batch_of([(0, None, 1_700_000_000_123, [(0, 1)]), (0, None, 1_700_000_000_456, [])])
    codec = make_codec("zstd", resolution=0.001)
    before = time.time()
    schema_payload, data_payload = encode(codec, FIXED, batch, seq=42)

    env = unpack(data_payload.body).envelope
    assert env == {
        "schema": FIXED.schema_id,
        "created": env["created"],
        "t0": 1_700_000_000_123,
        "t1": 1_700_000_000_456,
        "res": 1_000_000,
        "tb": "epoch",
        "vehicle": VEHICLE,
        "stream": STREAM,
        "seq": 42,
    }
    assert isinstance(env["created"], float)
    assert before - 0.01 <= env["created"] <= time.time() + 0.01
    assert data_payload.properties == {
        "kind": "data",
        "stream": STREAM,
        "seq": "42",
        "schema": FIXED.schema_id,
        "vehicle": VEHICLE,
        "compression": "zstd",
        "format": "1",
    }
    assert data_payload.message_id == f"{STREAM}:42"
    assert data_payload.content_type == CONTENT_TYPE
    assert schema_payload.properties["kind"] == "schema"
    assert schema_payload.properties["seq"] == "0"
    assert data_payload.body[:5] == b"CT\x01\x00\x02"
    assert schema_payload.body[:5] == b"CT\x01\x01\x02"
    assert FORMAT_VERSION == 1


def test_relative_time_base() -> None:
    batch = batch_of([(0, None, 12_345, [(0, 1)])])
    for resolution, tb in ((0.001, "relative"), (1.0, "relative"), (1e-6, "relative")):
        env = unpack(
            encode(make_codec("none", resolution=resolution), FIXED, batch)[1].body
        ).envelope
        assert env["tb"] == tb
    late = batch_of([(0, None, 10**9 + 1, [])])
    env = unpack(encode(make_codec("none", resolution=1.0), FIXED, late)[1].body).envelope
    assert env["tb"] == "epoch"


def test_unpack_reports_the_parts() -> None:
    _, payload = encode(make_codec("zlib"), FIXED, batch_of([(1, None, 5, [(0, 1.5)])]))
    decoded = unpack(payload.body)
    assert isinstance(decoded, DecodedPayload)
    assert (decoded.kind, decoded.version, decoded.compression) == ("data", 1, "zlib")
    assert decoded.body == [[1, None, [0], [[0, None, [1.5]]]]]


def test_unknown_compression_is_refused_by_the_codec() -> None:
    with pytest.raises(ValueError, match="lz4"):
        Codec("lz4")


def test_compression_makes_a_difference() -> None:
    rows = [(0, None, 1000 + t, [(0, t % 4), (1, 5000 + t), (2, 90)]) for t in range(2000)]
    sizes = {c: len(encode(make_codec(c), FIXED, batch_of(rows))[1].body) for c in COMPRESSIONS}
    assert sizes["zstd"] < sizes["none"] / 4
    assert sizes["zlib"] < sizes["none"] / 4


# --------------------------------------------------------------------------------------------
# schemas and the decoder's state


def test_data_before_its_schema_raises_schema_missing() -> None:
    schema_payload, data_payload = encode(make_codec(), FIXED, batch_of([(0, None, 1, [(0, 2)])]))
    decoder = PayloadDecoder()
    with pytest.raises(SchemaMissingError) as caught:
        decoder.decode(data_payload.body)
    assert caught.value.schema_id == FIXED.schema_id
    assert isinstance(caught.value, PayloadError)
    decoder.decode(schema_payload.body)
    assert decoder.rows(data_payload.body) == [
        Row(0.001, "powertrain", "Drive", "Gear", 2, "", "N", None)
    ]


def test_decoder_keeps_every_schema_it_saw() -> None:
    other = Schema(("x",), (MessageInfo(0, "Other", 7, False, False, (SignalInfo("v", 2),)),))
    decoder = PayloadDecoder()
    payloads = []
    for schema, items in ((FIXED, [(0, 1)]), (other, [(0, 21)])):
        schema_payload, data_payload = encode(make_codec(), schema, batch_of([(0, None, 1, items)]))
        decoder.decode(schema_payload.body)
        payloads.append(data_payload)
    assert set(decoder.schemas) == {FIXED.schema_id, other.schema_id}
    assert decoder.rows(payloads[0].body)[0].signal == "Gear"
    assert decoder.rows(payloads[1].body)[0].value == 42


def test_schema_payload_whose_id_does_not_match_is_refused() -> None:
    body = msgpack.packb(FIXED.to_wire())
    envelope = {"schema": "0123456789abcdef", "stream": STREAM, "seq": 0}
    decoder = PayloadDecoder()
    with pytest.raises(PayloadError, match="does not match"):
        decoder.decode(raw_payload(envelope, body, kind=KIND_SCHEMA))
    assert decoder.schemas == {}


# --------------------------------------------------------------------------------------------
# malformed payloads: always PayloadError


def _valid_data_payload(compression: str = "none") -> bytes:
    rows: list[RowSpec] = [(0, None, 1000 + t, [(0, t % 4), (1, 5000 + t)]) for t in range(20)]
    rows += [(1, None, 1005, [(0, 48.1)]), (2, 7, 1003, [(0, 6400)])]
    return encode(make_codec(compression), FIXED, batch_of(rows))[1].body


def _compress(compression: str, raw: bytes) -> bytes:
    return make_codec(compression).compress(raw)


def _body(obj: Any, compression: str = "none") -> bytes:
    return _compress(compression, msgpack.packb(obj))


GOOD_GROUP = [0, None, [0, 1], [[0, None, [1, 1]]]]


def _data(body: Any, **envelope: Any) -> bytes:
    """An uncompressed data payload for FIXED with ``body`` (any msgpack value)."""
    return raw_payload(data_envelope(**envelope), _body(body))


def _schema(body: Any) -> bytes:
    return raw_payload({"schema": "x"}, _body(body), kind=KIND_SCHEMA)


def _group(*columns: Any, message: Any = 0, times: Any = None) -> list[Any]:
    return [message, None, [0] if times is None else times, list(columns)]


MALFORMED: dict[str, bytes] = {
    "empty": b"",
    "one byte": b"C",
    "magic only": b"CT",
    "header cut short": b"CT\x01\x00",
    "bad magic": b"XT\x01\x00\x00" + msgpack.packb({}) + msgpack.packb([]),
    "lower-case magic": b"ct\x01\x00\x00" + msgpack.packb({}) + msgpack.packb([]),
    "version 0": raw_payload(data_envelope(), _body([]), version=0),
    "version 2": raw_payload(data_envelope(), _body([]), version=2),
    "version 255": raw_payload(data_envelope(), _body([]), version=255),
    "kind 2": raw_payload(data_envelope(), _body([]), kind=2),
    "kind 255": raw_payload(data_envelope(), _body([]), kind=255),
    "compression 3": raw_payload(data_envelope(), _body([]), code=3),
    "compression 255": raw_payload(data_envelope(), _body([]), code=255),
    "no envelope": b"CT\x01\x00\x00",
    "envelope cut short": raw_payload(data_envelope(), b"")[:-7],
    "envelope not a map": raw_payload([1, 2, 3], _body([])),
    "envelope is nil": raw_payload(None, _body([])),
    "envelope reserved byte": b"CT\x01\x00\x00\xc1" + _body([]),
    "no body": raw_payload(data_envelope(), b""),
    "body cut short": raw_payload(data_envelope(), _body([GOOD_GROUP])[:-2]),
    "body reserved byte": raw_payload(data_envelope(), b"\xc1"),
    "body with trailing bytes": raw_payload(data_envelope(), _body([]) + b"\x00"),
    "zlib body cut short": raw_payload(data_envelope(), _body([GOOD_GROUP], "zlib")[:-3], code=1),
    "zlib body corrupt": raw_payload(data_envelope(), b"\x78\x9c\xff\xff\xff\xff", code=1),
    "zlib body is plain msgpack": raw_payload(data_envelope(), _body([]), code=1),
    "zstd body cut short": raw_payload(data_envelope(), _body([GOOD_GROUP], "zstd")[:-3], code=2),
    "zstd body corrupt": raw_payload(data_envelope(), b"\x28\xb5\x2f\xfd\xff\xff\xff", code=2),
    "zstd body is plain msgpack": raw_payload(data_envelope(), _body([]), code=2),
    "unknown schema": _data([], schema="ffffffffffffffff"),
    "no schema id": raw_payload({"t0": 0, "res": 1}, _body([])),
    "no t0": raw_payload({k: v for k, v in data_envelope().items() if k != "t0"}, _body([])),
    "no res": raw_payload({k: v for k, v in data_envelope().items() if k != "res"}, _body([])),
    "t0 not a number": _data([GOOD_GROUP], t0="soon"),
    "t0 NaN": _data([GOOD_GROUP], t0=math.nan),
    "t0 a list": _data([GOOD_GROUP], t0=[1]),
    "body an int": _data(5),
    "body nil": _data(None),
    "body a string": _data("groups"),
    "body a map": _data({0: GOOD_GROUP}),
    "group not a list": _data([7]),
    "group too short": _data([[0, None, [0]]]),
    "group too long": _data([[*GOOD_GROUP, 1]]),
    "message index out of range": _data([_group([0, None, [1]], message=9)]),
    "message index a string": _data([_group([0, None, [1]], message="0")]),
    "message index nil": _data([_group([0, None, [1]], message=None)]),
    "times not a list": _data([_group([0, None, [1]], times=3)]),
    "time delta a string": _data([_group([0, None, [1]], times=["1"])]),
    "columns not a list": _data([[0, None, [0], 5]]),
    "column too short": _data([_group([0, None])]),
    "signal index out of range": _data([_group([3, None, [1]])]),
    "signal index a float": _data([_group([0.0, None, [1]])]),
    "row index out of range": _data([_group([0, [5], [1]])]),
    "row index a float": _data([_group([0, [0.5], [1]])]),
    "rows not a list": _data([_group([0, 0, [1]])]),
    "too few values": _data([_group([0, None, [1]], times=[0, 1])]),
    "too many values": _data([_group([0, None, [1, 2]])]),
    "fewer values than rows": _data([_group([0, [0, 1], [1]], times=[0, 1])]),
    "int value a string": _data([_group([1, None, ["x"]])]),
    "int value nil": _data([_group([0, None, [None]])]),
    "values not a list": _data([_group([0, None, 1])]),
    "float values not a list": _data([_group([0, None, 1.5], message=1)]),
    "unhashable value": _data([_group([0, None, [[1]]])]),
    "schema body not a map": _schema([1, 2]),
    "schema body without messages": _schema({"buses": []}),
    "schema message too short": _schema({"buses": ["a"], "messages": [[0, "M", 1, False, False]]}),
    "schema signal too short": _schema(
        {"buses": ["a"], "messages": [[0, "M", 1, False, False, [["s", 1, 0]]]]}
    ),
    "schema bus index not a number": _schema(
        {"buses": ["a"], "messages": [["zero", "M", 1, False, False, []]]}
    ),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_payload_raises_payload_error(name: str) -> None:
    with pytest.raises(PayloadError):
        decoder_for().decode(MALFORMED[name])


@pytest.mark.parametrize("compression", ["zlib", "zstd"])
def test_every_truncation_of_a_compressed_payload_is_refused(compression: str) -> None:
    data = _valid_data_payload(compression)
    decoder = decoder_for()
    assert decoder.rows(data)
    for end in range(len(data)):
        with pytest.raises(PayloadError):
            decoder.decode(data[:end])


def test_zlib_bomb_beyond_max_body_is_refused() -> None:
    deflater = zlib.compressobj(1)
    chunk = bytes(1 << 20)
    compressed = [deflater.compress(chunk) for _ in range(MAX_BODY // len(chunk) + 1)]
    compressed.append(deflater.flush())
    payload = raw_payload(data_envelope(), b"".join(compressed), code=1)
    assert len(payload) < MAX_BODY // 100
    with pytest.raises(PayloadError, match="zlib"):
        unpack(payload)


def test_zstd_bomb_without_content_size_is_refused() -> None:
    compressor = zstandard.ZstdCompressor(level=1, write_content_size=False)
    bomb = compressor.compress(bytes(MAX_BODY + 1))
    with pytest.raises(PayloadError, match="zstd"):
        unpack(raw_payload(data_envelope(), bomb, code=2))


def _zstd_rle_frame(content_size: int, block_sizes: Sequence[int], declared: bool = True) -> bytes:
    """A zstd frame of RLE blocks (each block: 3-byte header + 1 byte), written by hand so that
    the declared content size can lie and a bomb costs no compression time."""
    frame = b"\x28\xb5\x2f\xfd"
    frame += b"\xe0" + struct.pack("<Q", content_size) if declared else b"\x00\x50"
    for i, size in enumerate(block_sizes):
        last = i == len(block_sizes) - 1
        frame += struct.pack("<I", (size << 3) | 0b010 | last)[:3] + b"\x00"
    return frame


def test_hand_written_zstd_frame_is_valid() -> None:
    frame = _zstd_rle_frame(300, [100, 200])
    assert zstandard.ZstdDecompressor().decompress(frame) == bytes(300)


def test_zstd_bomb_with_declared_content_size_is_refused() -> None:
    # MAX_BODY + 128 KiB of zeros that unpack to one valid msgpack value: the frame is honest,
    # the limit must hold all the same.
    blocks = [128 * 1024] * (MAX_BODY // (128 * 1024) + 1)
    header = b"\xc6" + struct.pack(">I", sum(blocks))  # msgpack bin32 of the zeros that follow
    frame = b"\x28\xb5\x2f\xfd\xe0" + struct.pack("<Q", len(header) + sum(blocks))
    frame += struct.pack("<I", (len(header) << 3) | 0)[:3] + header  # a raw block
    for i, size in enumerate(blocks):
        frame += struct.pack("<I", (size << 3) | 0b010 | (i == len(blocks) - 1))[:3] + b"\x00"
    with pytest.raises(PayloadError):
        unpack(raw_payload(data_envelope(), frame, code=2))


def test_zstd_frame_lying_about_its_size_is_refused() -> None:
    frame = _zstd_rle_frame(1 << 50, [100])
    with pytest.raises(PayloadError):
        unpack(raw_payload(data_envelope(), frame, code=2))


@pytest.mark.parametrize("where", ["envelope", "body"])
def test_unhashable_map_key_raises_payload_error(where: str) -> None:
    bad = b"\x81\x90\x00"  # {[]: 0}: a map whose key is an array
    if where == "envelope":
        data = b"CT\x01\x00\x00" + bad + _body([])
    else:
        data = raw_payload(data_envelope(), bad)
    with pytest.raises(PayloadError):
        decoder_for().decode(data)


@pytest.mark.parametrize("field", ["t0", "res"])
def test_infinite_time_field_raises_payload_error(field: str) -> None:
    data = raw_payload(data_envelope(**{field: math.inf}), _body([GOOD_GROUP]))
    with pytest.raises(PayloadError):
        decoder_for().decode(data)


@pytest.mark.parametrize(
    "group",
    [
        [-1, None, [0], [[0, None, [1]]]],  # message index
        [0, None, [0], [[-1, None, [1]]]],  # signal index
        [0, None, [0, 1], [[0, [-1], [1]]]],  # row index
    ],
    ids=["message", "signal", "row"],
)
def test_negative_index_is_refused(group: list[Any]) -> None:
    with pytest.raises(PayloadError):
        decoder_for().decode(raw_payload(data_envelope(), _body([group])))


@pytest.mark.parametrize("value", ["north", None, b"\x00", [1.0], True])
def test_non_number_in_a_float_column_is_refused(value: Any) -> None:
    data = raw_payload(data_envelope(), _body([[1, None, [0], [[0, None, [value]]]]]))
    with pytest.raises(PayloadError):
        decoder_for().decode(data)


def test_error_message_stays_short() -> None:
    data = raw_payload(data_envelope(), _body([]) + bytes(1 << 20))
    with pytest.raises(PayloadError) as caught:
        decoder_for().decode(data)
    assert len(str(caught.value)) < 1000


def test_schema_payload_with_malformed_choices_raises_payload_error() -> None:
    wire = FIXED.to_wire()
    wire["messages"][0][5][0][5] = [1, 2]  # choices must be a map
    envelope = {"schema": "x", "stream": STREAM, "seq": 0}
    with pytest.raises(PayloadError):
        PayloadDecoder().decode(raw_payload(envelope, _body(wire), kind=KIND_SCHEMA))


@pytest.mark.parametrize("flag", [0, 2, "plain", None])
def test_unknown_column_encoding_is_refused(flag: Any) -> None:
    # A later encoding must not be misread by this reader as the delta one (docs/format.md,
    # versioning: readers refuse what they do not know).
    data = raw_payload(data_envelope(), _body([_group([0, None, [1], flag])]))
    with pytest.raises(PayloadError):
        decoder_for().decode(data)


@pytest.mark.parametrize("source", ["61", -1, 256, 1.5, [61]])
def test_source_address_of_the_wrong_kind_is_refused(source: Any) -> None:
    data = raw_payload(data_envelope(), _body([[2, source, [0], [[0, None, [1]]]]]))
    with pytest.raises(PayloadError):
        decoder_for().decode(data)


@pytest.mark.parametrize(
    ("low", "high"), [(0, 2**64 - 1), (-(2**63), 2**63 - 1)], ids=["unsigned", "signed"]
)
def test_64_bit_signal_round_trips(low: int, high: int) -> None:
    schema = Schema(("c",), (MessageInfo(0, "Wide", 1, False, False, (SignalInfo("w"),)),))
    batch = batch_of([(0, None, 1, [(0, high)]), (0, None, 2, [(0, low)]), (0, None, 3, [(0, 7)])])
    decoder = PayloadDecoder()
    for payload in encode(make_codec("none"), schema, batch):
        rows = decoder.rows(payload.body)
    assert [r.value for r in rows] == [high, low, 7]
    # The delta high -> low leaves msgpack's range: the column goes plain, flagged 1.
    assert unpack(payload.body).body[0][3] == [[0, None, [high, low, 7], 1]]


@pytest.mark.parametrize("vehicle", ["", "v", "vehicle-0001", "WDB9634031L123456", "V" * 300])
def test_measure_is_an_upper_bound_of_the_payload_size(vehicle: str) -> None:
    """The batcher and the writer size a batch before the spool numbers it."""
    batch = batch_of([(0, None, 1000 + t, [(0, t % 4), (1, t)]) for t in range(50)])
    codec = make_codec(vehicle=vehicle)
    bound = codec.measure(batch, FIXED)
    sizes = []
    for seq in (0, 127, 2**32, 2**64 - 1):
        _, payload = encode(codec, FIXED, batch, seq=seq)
        sizes.append(len(payload.body))
    assert max(sizes) <= bound
    assert max(sizes) >= bound - 4  # tight: the stream id the spool uses is 32 digits, not 36


# --------------------------------------------------------------------------------------------
# fuzzing: whatever the bytes, only PayloadError


VALID_HEADERS = [MAGIC + bytes((1, kind, code)) for kind in (0, 1) for code in (0, 1, 2)]


@settings(max_examples=300, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=64),
        st.builds(bytes.__add__, st.sampled_from(VALID_HEADERS), st.binary(max_size=64)),
    )
)
def test_fuzz_random_bytes(data: bytes) -> None:
    decode_only_payload_error(decoder_for(), data)


@pytest.mark.parametrize("compression", ["zlib", "zstd"])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_fuzz_mutated_compressed_bodies(compression: str, data: st.DataObject) -> None:
    """Corrupt, cut or extend the compressed body behind a valid header and envelope."""
    valid = _valid_data_payload(compression)
    body_at = len(valid) - len(unpack_body_bytes(valid))
    mutated = data.draw(mutations(valid[body_at:]))
    decode_only_payload_error(decoder_for(), valid[:body_at] + mutated)


@pytest.mark.parametrize("compression", COMPRESSIONS)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_fuzz_mutated_payloads(compression: str, data: st.DataObject) -> None:
    """Edits anywhere: header, envelope and body."""
    decode_only_payload_error(decoder_for(), data.draw(mutations(_valid_data_payload(compression))))


def unpack_body_bytes(payload: bytes) -> bytes:
    """The (compressed) body bytes of a well-formed payload: what follows the envelope."""
    unpacker = msgpack.Unpacker()
    unpacker.feed(payload[5:])
    unpacker.unpack()
    return payload[5 + unpacker.tell() :]


def mutations(valid: bytes) -> st.SearchStrategy[bytes]:
    """Payloads a few random edits away from ``valid``."""

    @st.composite
    def mutate(draw: st.DrawFn) -> bytes:
        data = bytearray(valid)
        for _ in range(draw(st.integers(1, 4))):
            action = draw(st.sampled_from(["flip", "set", "cut", "insert", "delete"]))
            at = draw(st.integers(0, max(0, len(data) - 1)))
            if action == "flip" and data:
                data[at] ^= 1 << draw(st.integers(0, 7))
            elif action == "set" and data:
                data[at] = draw(st.integers(0, 255))
            elif action == "cut":
                del data[at:]
            elif action == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=8))
            else:
                del data[at : at + draw(st.integers(1, 8))]
        return bytes(data)

    return mutate()


LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=4),
    st.binary(max_size=4),
)
TREES = st.recursive(
    LEAVES,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.integers(-3, 3) | st.text(max_size=2), children, max_size=3)
    ),
    max_leaves=20,
)


def _index(valid: int) -> st.SearchStrategy[Any]:
    return st.one_of(st.integers(0, valid), st.integers(-(2**63), 2**64 - 1), LEAVES)


def _int_list() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.lists(st.integers(-(2**63), 2**64 - 1), max_size=4),
        st.lists(st.integers(0, 3), max_size=4),
        TREES,
    )


COLUMNS = st.lists(
    st.one_of(
        st.tuples(_index(2), st.one_of(st.none(), _int_list()), _int_list()).map(list),
        st.tuples(_index(2), st.none(), st.lists(st.floats(), max_size=4)).map(list),
        TREES,
    ),
    max_size=3,
)
GROUPS = st.lists(
    st.one_of(
        st.tuples(_index(2), st.one_of(st.none(), _index(255)), _int_list(), COLUMNS).map(list),
        TREES,
    ),
    max_size=3,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.one_of(GROUPS, TREES), compression=st.sampled_from(COMPRESSIONS))
def test_fuzz_data_bodies_of_the_wrong_shape(body: Any, compression: str) -> None:
    """Bodies that look more or less like data bodies, behind a valid envelope."""
    data = raw_payload(data_envelope(), _body(body, compression), code=CODES[compression])
    decode_only_payload_error(decoder_for(), data)


@settings(max_examples=150, deadline=None)
@given(t0=LEAVES, res=LEAVES, schema=st.one_of(st.just(FIXED.schema_id), LEAVES))
def test_fuzz_envelope_fields(t0: Any, res: Any, schema: Any) -> None:
    data = raw_payload(data_envelope(t0=t0, res=res, schema=schema), _body([GOOD_GROUP]))
    decode_only_payload_error(decoder_for(), data)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=TREES)
def test_fuzz_schema_bodies(body: Any) -> None:
    envelope = {"schema": "0000000000000000", "stream": STREAM, "seq": 0}
    decode_only_payload_error(PayloadDecoder(), raw_payload(envelope, _body(body), kind=1))


# --------------------------------------------------------------------------------------------
# docs/format.md: its reference decoder agrees with PayloadDecoder


def _reference_decoder() -> dict[str, Any]:
    text = DOCS.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    code = next(b for b in blocks if "def read_payload" in b)
    namespace: dict[str, Any] = {}
    exec(compile(code, str(DOCS), "exec"), namespace)
    return namespace


@pytest.mark.skipif(not DOCS.exists(), reason="docs/format.md is not there")
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=schemas_and_rows(), compression=st.sampled_from(COMPRESSIONS))
def test_reference_decoder_in_the_docs_agrees(
    case: tuple[Schema, list[RowSpec]],
    compression: str,
) -> None:
    reference = _reference_decoder()
    schema, rows = case
    schema_payload, data_payload = encode(make_codec(compression), schema, batch_of(rows))
    kind, envelope, schema_body = reference["read_payload"](schema_payload.body)
    assert (kind, envelope["schema"]) == (1, schema.schema_id)
    kind, envelope, body = reference["read_payload"](data_payload.body)
    assert kind == 0
    got = list(reference["rows"](envelope, body, schema_body))
    assert exact(got) == exact(decoder_for(schema).rows(data_payload.body))
