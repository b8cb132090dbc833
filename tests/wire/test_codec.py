"""The wire format (edge/wire/codec.py, docs/format.md): round trips, the envelope, dense and sparse
columns, reading version 1 payloads, and a decoder that refuses every malformed payload with
PayloadError and nothing else."""

from __future__ import annotations

import hashlib
import itertools
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

from edge.errors import PayloadError, SchemaMissingError, TelemetryError
from edge.processing.batch import MAX_BATCH_VALUES, Batch
from edge.wire.codec import (
    FORMAT_VERSION,
    KIND_DATA,
    KIND_SCHEMA,
    MAGIC,
    MAX_ARRAY,
    MAX_BODY,
    Codec,
    DecodedPayload,
    PayloadReader,
    Row,
    peek,
    unpack,
)
from edge.wire.payload import CONTENT_TYPE, Payload
from edge.wire.schema import MessageInfo, Schema, SignalInfo

COMPRESSIONS = ("none", "zlib", "zstd")
CODES = {"none": 0, "zlib": 1, "zstd": 2}
STREAM = "0f1e2d3c4b5a69788796a5b4c3d2e1f0"  # what the spool uses: uuid4().hex
STREAM_BIN = bytes.fromhex(STREAM)
VEHICLE = "veh-7"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "format.md"

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
    envelope: Any, body: bytes, *, kind: int = KIND_DATA, code: int = 0, version: int = 2
) -> bytes:
    """A payload assembled by hand, so that any field can be wrong."""
    packed: bytes = msgpack.packb(envelope, use_bin_type=True)
    return MAGIC + bytes((version, kind, code)) + packed + body


def decoder_for(schema: Schema = FIXED) -> PayloadReader:
    decoder = PayloadReader()
    decoder.add_schema(schema)
    return decoder


#: The fields of a version 2 envelope array, by position.
DATA_FIELDS = ("schema", "stream", "seq", "t0", "span", "res")
SCHEMA_FIELDS = ("schema", "stream", "seq", "vehicle", "created")


def data_envelope(**fields: Any) -> list[Any]:
    """A valid version 2 data envelope for FIXED, with ``fields`` (named as in DATA_FIELDS)
    replaced."""
    env = {"schema": bytes.fromhex(FIXED.schema_id), "stream": STREAM_BIN, "seq": 1}
    env.update(t0=1000, span=0, res=1_000_000)
    env.update(fields)
    return [env[name] for name in DATA_FIELDS]


def schema_envelope(schema_id: str = FIXED.schema_id, **fields: Any) -> list[Any]:
    """A valid version 2 schema envelope, with ``fields`` (as in SCHEMA_FIELDS) replaced."""
    env = {"schema": bytes.fromhex(schema_id), "stream": STREAM_BIN, "seq": 0}
    env.update(vehicle=VEHICLE, created=1_700_000_000.123)
    env.update(fields)
    return [env[name] for name in SCHEMA_FIELDS]


def v1_data_envelope(**fields: Any) -> dict[str, Any]:
    """A valid version 1 data envelope (a map) for FIXED, with ``fields`` replaced."""
    env: dict[str, Any] = {"schema": FIXED.schema_id, "t0": 1000, "t1": 1000, "res": 1_000_000}
    env.update(tb="relative", stream=STREAM, seq=1, vehicle=VEHICLE, created=1_700_000_000.0)
    env.update(fields)
    return env


def _v1_deltas(values: Sequence[int], base: int) -> list[int]:
    return [v - p for p, v in zip([base, *values], values, strict=False)]


def v1_data_body(batch: Batch, schema: Schema) -> list[Any]:
    """A batch's data body as the version 1 writer made it: row numbers for every column that
    lacks a value in some row, never nil."""
    groups = []
    for (message_index, source_address), group in batch.groups.items():
        signals = schema.messages[message_index].signals
        columns: list[Any] = []
        for index, (rows, values) in sorted(group.columns.items()):
            row_field = None if len(rows) == len(group.times) else _v1_deltas(rows, 0)
            if signals[index].is_float:
                columns.append([index, row_field, values])
                continue
            deltas = _v1_deltas(values, 0)
            if min(deltas) < -(2**63) or max(deltas) > 2**64 - 1:
                columns.append([index, row_field, values, 1])
            else:
                columns.append([index, row_field, deltas])
        times = _v1_deltas(group.times, int(batch.min_tick))
        groups.append([message_index, source_address, times, columns])
    return groups


def encode_v1(codec: Codec, schema: Schema, batch: Batch, seq: int = 1) -> tuple[bytes, bytes]:
    """(schema payload, data payload) as the version 1 writer made them: map envelopes with
    string keys and version 1 bodies."""
    code = CODES[codec.compression]
    schema_env = {"schema": schema.schema_id, "vehicle": codec.vehicle, "created": 1.7e9}
    schema_env.update(stream=STREAM, seq=0)
    schema_payload = raw_payload(
        schema_env, codec.schema_body(schema), kind=KIND_SCHEMA, code=code, version=1
    )
    t0, t1 = int(batch.min_tick), int(batch.max_tick)
    epoch = t0 * codec.resolution_ns / 1e9 > 1e9
    data_env = v1_data_envelope(
        schema=schema.schema_id, t0=t0, t1=t1, res=codec.resolution_ns, seq=seq
    )
    data_env.update(vehicle=codec.vehicle, tb="epoch" if epoch else "relative")
    body = codec.compress(msgpack.packb(v1_data_body(batch, schema), use_bin_type=True))
    return schema_payload, raw_payload(data_env, body, code=code, version=1)


def decode_only_payload_error(decoder: PayloadReader, data: bytes) -> None:
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
    # How often a message's signals have a value, in tenths of its rows: always, or about 10 to
    # 80 % of rows (columns below 30 % go sparse, the others dense with nils).
    density: list[int] = []
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
        density.append(draw(st.sampled_from([10, 10, 1, 3, 5, 8])))
    schema = Schema(buses, tuple(messages))
    base = draw(st.sampled_from([0, 5_000, 1_700_000_000_000, 1_700_000_000_000_000]))
    rows = []
    for _ in range(draw(st.integers(1, 30))):
        m = draw(st.integers(0, len(messages) - 1))
        source = draw(st.integers(0, 255)) if messages[m].j1939 else None
        tick = base + draw(st.integers(0, 100_000))
        n = len(messages[m].signals)
        present = [draw(st.integers(0, 9)) < density[m] for _ in range(n)]
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
    decoder = PayloadReader()

    decoded_schema, schema_rows = decoder.decode(schema_payload.body)
    decoded, got = decoder.decode(data_payload.body)

    assert schema_rows == []
    assert decoded_schema.kind == "schema"
    assert decoder.schemas[schema.schema_id] == schema
    assert (decoded.kind, decoded.version) == ("data", 2)
    assert decoded.compression == compression
    t0 = min(tick for _, _, tick, _ in rows)
    t1 = max(tick for _, _, tick, _ in rows)
    env = decoded.envelope
    assert (env["stream"], env["seq"]) == (STREAM, seq)
    assert (env["schema"], env["t0"], env["t1"], env["res"]) == (schema.schema_id, t0, t1, res_ns)
    assert env["tb"] == ("epoch" if t0 * res_ns / 1e9 > 1e9 else "relative")
    assert decoded_schema.envelope["vehicle"] == data_payload.properties["vehicle"] == VEHICLE
    assert exact(got) == exact(expected_rows(schema, rows, res_ns))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=schemas_and_rows(),
    compression=st.sampled_from(COMPRESSIONS),
    resolution=st.sampled_from([0.001, 0.000001, 1.0]),
)
def test_version_1_payloads_give_the_same_rows(
    case: tuple[Schema, list[RowSpec]], compression: str, resolution: float
) -> None:
    """Spools may hold version 1 payloads after an update: the reader decodes them as before,
    into the same rows and the same envelope keys (plus version 1's vehicle and created)."""
    schema, rows = case
    codec = make_codec(compression, resolution)
    batch = batch_of(rows)
    v1_schema, v1_data = encode_v1(codec, schema, batch, seq=7)
    v2_schema, v2_data = encode(codec, schema, batch, seq=7)
    decoder = PayloadReader()

    old_schema, _ = decoder.decode(v1_schema)
    old, old_rows = decoder.decode(v1_data)
    new, new_rows = decoder.decode(v2_data.body)

    assert (old_schema.version, old.version, new.version) == (1, 1, 2)
    assert old_schema.envelope["vehicle"] == VEHICLE
    assert decoder.schemas == {schema.schema_id: schema}
    assert exact(old_rows) == exact(new_rows)
    assert exact(old_rows) == exact(expected_rows(schema, rows, codec.resolution_ns))
    assert dict(old.envelope, vehicle=None, created=None) == dict(
        new.envelope, vehicle=None, created=None
    )
    assert set(old.envelope) - set(new.envelope) == {"vehicle", "created"}
    assert set(unpack(v2_schema.body).envelope) == set(old_schema.envelope)


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
    decoder = PayloadReader()
    for payload in encode(make_codec(compression), schema, batch):
        rows = decoder.rows(payload.body)
    raw = [r.value for r in rows if r.message == "F"]
    scaled = [r.value for r in rows if r.message == "G"]
    assert exact([raw]) == exact([specials])  # unscaled: passed through untouched
    assert exact([scaled]) == exact([[v * 0.1 + 0 for v in specials]])


def test_data_body_layout_is_the_documented_one() -> None:
    """Groups, delta-coded times, nil rows for dense columns (with a nil where a row has no
    value), raw floats."""
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

    # Temp has values in 2 of the 3 rows: dense, its deltas run across the nil.
    drive_columns = [[0, None, [3, 0, -2]], [1, None, [5000, 10, -20]], [2, None, [100, None, -10]]]
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


WIDE = Schema(
    ("c",),
    (
        MessageInfo(
            0,
            "Mixed",
            1,
            False,
            False,
            (SignalInfo("i"), SignalInfo("f", is_float=True), SignalInfo("w"), SignalInfo("s")),
        ),
    ),
)


def test_dense_columns_carry_a_nil_per_missing_row() -> None:
    """Integer deltas run between present values across the nils; floats go as they are; a
    64-bit column sent plain is dense too; a column below 30 % keeps row numbers."""
    high, low = 2**64 - 1, 0
    rows: list[RowSpec] = [
        (0, None, 10, [(0, 5), (1, 1.5), (2, high), (3, 42)]),
        (0, None, 11, [(1, -0.0)]),
        (0, None, 12, [(0, 9)]),
        (0, None, 13, [(0, 4), (1, math.inf), (2, low)]),
        (0, None, 14, []),
        (0, None, 15, [(2, high)]),
        (0, None, 16, [(0, 4)]),
        (0, None, 17, []),
    ]
    batch = batch_of(rows)
    _, payload = encode(make_codec("none"), WIDE, batch)

    (group,) = unpack(payload.body).body
    assert group[:3] == [0, None, [0, 1, 1, 1, 1, 1, 1, 1]]
    assert exact(group[3]) == exact(
        [
            [0, None, [5, None, 4, -5, None, None, 0, None]],  # 4 of 8 rows
            [1, None, [1.5, -0.0, None, math.inf, None, None, None, None]],  # 3 of 8
            [2, None, [high, None, None, low, None, high, None, None], 1],  # plain: 3 of 8
            [3, [0], [42]],  # 1 of 8: sparse
        ]
    )
    decoder = decoder_for(WIDE)
    assert exact(decoder.rows(payload.body)) == exact(expected_rows(WIDE, rows, 1_000_000))


@pytest.mark.parametrize(
    ("n", "k", "dense"),
    [(100, 29, False), (100, 30, True), (10, 2, False), (10, 3, True), (7, 2, False), (7, 3, True)],
)
def test_a_column_is_dense_from_30_percent_of_its_rows(n: int, k: int, dense: bool) -> None:
    rows: list[RowSpec] = [
        (0, None, t, [(0, t % 4)] + ([(1, t)] if t < k else [])) for t in range(n)
    ]
    _, payload = encode(make_codec("none"), FIXED, batch_of(rows))

    (group,) = unpack(payload.body).body
    gear, speed = group[3]
    assert gear == [0, None, _deltas([t % 4 for t in range(n)])]  # every row: dense, no nil
    if dense:
        assert speed == [1, None, [0] + [1] * (k - 1) + [None] * (n - k)]
    else:
        assert speed == [1, [0] + [1] * (k - 1), [0] + [1] * (k - 1)]
    assert decoder_for().rows(payload.body) == expected_rows(FIXED, rows, 1_000_000)


def _deltas(values: Sequence[int]) -> list[int]:
    return _v1_deltas(values, 0)


def test_dense_column_of_nils_only_has_no_rows() -> None:
    """The writer never sends one, but it is well-formed: a dense column with no value."""
    body = [[0, None, [0, 1], [[0, None, [None, None]], [1, None, [7, None]]]]]
    rows = decoder_for().rows(raw_payload(data_envelope(), _body(body)))
    assert rows == [Row(1.0, "powertrain", "Drive", "Speed", 0.07, "km/h", None, None)]


def test_nil_is_malformed_in_a_version_1_column() -> None:
    body = _body([[0, None, [0, 1], [[1, None, [7, None]]]]])
    assert decoder_for().rows(raw_payload(data_envelope(), body))
    with pytest.raises(PayloadError):
        decoder_for().decode(raw_payload(v1_data_envelope(), body, version=1))


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

    # On the wire: arrays, ids as bytes, the span instead of t1, no time base, no vehicle.
    data_env = msgpack.unpackb(data_payload.body[5 : -len(unpack_body_bytes(data_payload.body))])
    schema_id = bytes.fromhex(FIXED.schema_id)
    assert data_env == [schema_id, STREAM_BIN, 42, 1_700_000_000_123, 333, 1_000_000]
    assert len(msgpack.packb(data_env)) == 47
    schema_env = msgpack.unpackb(
        schema_payload.body[5 : -len(unpack_body_bytes(schema_payload.body))]
    )
    assert schema_env[:4] == [schema_id, STREAM_BIN, 0, VEHICLE]
    assert isinstance(schema_env[4], float) and len(schema_env) == 5
    assert before - 0.01 <= schema_env[4] <= time.time() + 0.01

    # As unpack gives them: version 1's keys.
    env = unpack(data_payload.body).envelope
    assert env == {
        "schema": FIXED.schema_id,
        "stream": STREAM,
        "seq": 42,
        "t0": 1_700_000_000_123,
        "t1": 1_700_000_000_456,
        "res": 1_000_000,
        "tb": "epoch",
    }
    assert unpack(schema_payload.body).envelope == {
        "schema": FIXED.schema_id,
        "stream": STREAM,
        "seq": 0,
        "vehicle": VEHICLE,
        "created": schema_env[4],
    }
    assert data_payload.properties == {
        "kind": "data",
        "stream": STREAM,
        "seq": "42",
        "schema": FIXED.schema_id,
        "vehicle": VEHICLE,
        "compression": "zstd",
        "format": "2",
    }
    assert data_payload.message_id == f"{STREAM}:42"
    assert data_payload.content_type == CONTENT_TYPE
    assert schema_payload.properties["kind"] == "schema"
    assert schema_payload.properties["seq"] == "0"
    assert schema_payload.properties["vehicle"] == VEHICLE
    assert schema_payload.properties["format"] == "2"
    assert data_payload.body[:5] == b"CT\x02\x00\x02"
    assert schema_payload.body[:5] == b"CT\x02\x01\x02"
    assert FORMAT_VERSION == 2


@pytest.mark.parametrize("kind", [KIND_DATA, KIND_SCHEMA])
def test_readers_ignore_elements_after_the_known_ones(kind: int) -> None:
    extra = ["a later field", {1: [2.5]}, None, b"\x00"]
    if kind == KIND_DATA:
        envelope, body = data_envelope(), _body([GOOD_GROUP])
    else:
        envelope, body = schema_envelope(), _body(FIXED.to_wire())
    decoder = decoder_for()
    plain, plain_rows = decoder.decode(raw_payload(envelope, body, kind=kind))
    extended, extended_rows = decoder.decode(raw_payload(envelope + extra, body, kind=kind))
    assert extended.envelope == plain.envelope
    assert extended_rows == plain_rows


@pytest.mark.parametrize(
    "stream",
    ["test-stream", STREAM.upper(), STREAM + "00", STREAM[:-1], " " + STREAM[2:], "ab cd", "0x12"],
)
def test_a_stream_id_that_is_not_short_lower_case_hex_is_refused(stream: str) -> None:
    codec = make_codec()
    envelope, body = codec.envelope(batch_of([(0, None, 1, [(0, 1)])]), FIXED), b""
    with pytest.raises(ValueError, match="stream id"):
        codec.payload(KIND_DATA, envelope, body, stream, 0)
    with pytest.raises(ValueError, match="stream id"):
        codec.payload(KIND_SCHEMA, codec.envelope(None, FIXED), body, stream, 0)


@pytest.mark.parametrize("stream", ["", "00", "c0ffee", STREAM])
def test_shorter_stream_ids_round_trip(stream: str) -> None:
    codec = make_codec()
    batch = batch_of([(0, None, 1, [(0, 1)])])
    envelope = codec.envelope(batch, FIXED)
    payload = codec.payload(KIND_DATA, envelope, codec.data_body(batch, FIXED), stream, 3)
    assert unpack(payload.body).envelope["stream"] == stream
    assert len(payload.body) <= codec.measure(batch, FIXED)


def test_a_negative_sequence_number_is_refused() -> None:
    codec = make_codec()
    with pytest.raises(ValueError, match="negative"):
        codec.payload(KIND_SCHEMA, codec.envelope(None, FIXED), b"", STREAM, -1)


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
    assert (decoded.kind, decoded.version, decoded.compression) == ("data", 2, "zlib")
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
    decoder = PayloadReader()
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
    decoder = PayloadReader()
    payloads = []
    for schema, items in ((FIXED, [(0, 1)]), (other, [(0, 21)])):
        schema_payload, data_payload = encode(make_codec(), schema, batch_of([(0, None, 1, items)]))
        decoder.decode(schema_payload.body)
        payloads.append(data_payload)
    assert set(decoder.schemas) == {FIXED.schema_id, other.schema_id}
    assert decoder.rows(payloads[0].body)[0].signal == "Gear"
    assert decoder.rows(payloads[1].body)[0].value == 42


@pytest.mark.parametrize("version", [1, 2])
def test_schema_payload_whose_id_does_not_match_is_refused(version: int) -> None:
    body = msgpack.packb(FIXED.to_wire())
    if version == 1:
        envelope: Any = {"schema": "0123456789abcdef", "stream": STREAM, "seq": 0}
    else:
        envelope = schema_envelope("0123456789abcdef")
    decoder = PayloadReader()
    with pytest.raises(PayloadError, match="does not match"):
        decoder.decode(raw_payload(envelope, body, kind=KIND_SCHEMA, version=version))
    assert decoder.schemas == {}


# --------------------------------------------------------------------------------------------
# malformed payloads: always PayloadError


def _valid_data_payload(compression: str = "none", version: int = 2) -> bytes:
    """A data payload with full, dense (with nils) and sparse columns."""
    rows: list[RowSpec] = [
        (0, None, 1000 + t, [(0, t % 4), (1, 5000 + t)] + ([(2, t)] if t % 3 else []))
        for t in range(20)
    ]
    rows += [(1, None, 1005 + t, [(0, 48.1)] if t == 7 else []) for t in range(10)]
    rows += [(2, 7, 1003, [(0, 6400)])]
    if version == 1:
        return encode_v1(make_codec(compression), FIXED, batch_of(rows))[1]
    return encode(make_codec(compression), FIXED, batch_of(rows))[1].body


def test_the_valid_payload_has_every_kind_of_column() -> None:
    body = unpack(_valid_data_payload()).body
    drive, gnss, _ = body
    assert [column[1] is None for column in drive[3]] == [True, True, True]
    assert None in drive[3][2][2]  # dense, with nils
    assert gnss[3] == [[0, [7], [48.1]]]  # sparse
    assert len(decoder_for().rows(_valid_data_payload(version=1))) == len(
        decoder_for().rows(_valid_data_payload())
    )


def _compress(compression: str, raw: bytes) -> bytes:
    return make_codec(compression).compress(raw)


def _body(obj: Any, compression: str = "none") -> bytes:
    return _compress(compression, msgpack.packb(obj))


GOOD_GROUP = [0, None, [0, 1], [[0, None, [1, 1]]]]


def _data(body: Any, **envelope: Any) -> bytes:
    """An uncompressed data payload for FIXED with ``body`` (any msgpack value)."""
    return raw_payload(data_envelope(**envelope), _body(body))


def _schema(body: Any) -> bytes:
    return raw_payload(schema_envelope(), _body(body), kind=KIND_SCHEMA)


def _v1(body: Any, **envelope: Any) -> bytes:
    """An uncompressed version 1 data payload for FIXED with ``body``."""
    return raw_payload(v1_data_envelope(**envelope), _body(body), version=1)


def _envelope(envelope: Any, kind: int = KIND_DATA) -> bytes:
    """A version 2 payload with ``envelope`` and a valid body of its kind."""
    body = _body([GOOD_GROUP] if kind == KIND_DATA else FIXED.to_wire())
    return raw_payload(envelope, body, kind=kind)


SCHEMA_ID_BIN = bytes.fromhex(FIXED.schema_id)


def _group(*columns: Any, message: Any = 0, times: Any = None) -> list[Any]:
    return [message, None, [0] if times is None else times, list(columns)]


MALFORMED: dict[str, bytes] = {
    "empty": b"",
    "one byte": b"C",
    "magic only": b"CT",
    "header cut short": b"CT\x02\x00",
    "bad magic": b"XT\x01\x00\x00" + msgpack.packb({}) + msgpack.packb([]),
    "lower-case magic": b"ct\x01\x00\x00" + msgpack.packb({}) + msgpack.packb([]),
    "version 0": raw_payload(data_envelope(), _body([]), version=0),
    "version 4": raw_payload(data_envelope(), _body([]), version=4),
    "version 255": raw_payload(data_envelope(), _body([]), version=255),
    "kind 2": raw_payload(data_envelope(), _body([]), kind=2),
    "kind 255": raw_payload(data_envelope(), _body([]), kind=255),
    "compression 3": raw_payload(data_envelope(), _body([]), code=3),
    "compression 255": raw_payload(data_envelope(), _body([]), code=255),
    "no envelope": b"CT\x02\x00\x00",
    "no envelope, version 1": b"CT\x01\x00\x00",
    "envelope cut short": raw_payload(data_envelope(), b"")[:-7],
    "envelope a map": raw_payload(v1_data_envelope(), _body([])),
    "envelope is nil": raw_payload(None, _body([])),
    "envelope reserved byte": b"CT\x02\x00\x00\xc1" + _body([]),
    "version 1 envelope not a map": raw_payload(data_envelope(), _body([]), version=1),
    "version 1 envelope is nil": raw_payload(None, _body([]), version=1),
    "version 1 envelope reserved byte": b"CT\x01\x00\x00\xc1" + _body([]),
    # version 2 envelopes
    "data envelope too short": _envelope(data_envelope()[:5]),
    "data envelope empty": _envelope([]),
    "schema envelope as data envelope": _envelope(schema_envelope()),
    "schema envelope too short": _envelope(schema_envelope()[:4], KIND_SCHEMA),
    "schema id 7 bytes": _envelope(data_envelope(schema=SCHEMA_ID_BIN[:7])),
    "schema id 9 bytes": _envelope(data_envelope(schema=SCHEMA_ID_BIN + b"\x00")),
    "schema id as hex text": _envelope(data_envelope(schema=FIXED.schema_id)),
    "schema id nil": _envelope(data_envelope(schema=None)),
    "schema id of a schema payload as text": _envelope(
        schema_envelope(schema=FIXED.schema_id), KIND_SCHEMA
    ),
    "stream as text": _envelope(data_envelope(stream=STREAM)),
    "stream nil": _envelope(data_envelope(stream=None)),
    "stream an int": _envelope(data_envelope(stream=7)),
    "seq negative": _envelope(data_envelope(seq=-1)),
    "seq a float": _envelope(data_envelope(seq=1.0)),
    "seq a bool": _envelope(data_envelope(seq=True)),
    "seq as text": _envelope(data_envelope(seq="1")),
    "seq of a schema payload nil": _envelope(schema_envelope(seq=None), KIND_SCHEMA),
    "t0 a float": _envelope(data_envelope(t0=1000.0)),
    "t0 nil": _envelope(data_envelope(t0=None)),
    "span negative": _envelope(data_envelope(span=-1)),
    "span a float": _envelope(data_envelope(span=0.5)),
    "span nil": _envelope(data_envelope(span=None)),
    "res zero": _envelope(data_envelope(res=0)),
    "res negative": _envelope(data_envelope(res=-1_000_000)),
    "res a float": _envelope(data_envelope(res=1e6)),
    "vehicle not text": _envelope(schema_envelope(vehicle=b"veh"), KIND_SCHEMA),
    "vehicle nil": _envelope(schema_envelope(vehicle=None), KIND_SCHEMA),
    "created text": _envelope(schema_envelope(created="now"), KIND_SCHEMA),
    "created a bool": _envelope(schema_envelope(created=True), KIND_SCHEMA),
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
    "unknown schema": _data([], schema=b"\xff" * 8),
    "version 1 unknown schema": _v1([], schema="ffffffffffffffff"),
    "version 1 no schema id": raw_payload({"t0": 0, "res": 1}, _body([]), version=1),
    "version 1 no t0": raw_payload(
        {k: v for k, v in v1_data_envelope().items() if k != "t0"}, _body([]), version=1
    ),
    "version 1 no res": raw_payload(
        {k: v for k, v in v1_data_envelope().items() if k != "res"}, _body([]), version=1
    ),
    "version 1 t0 not a number": _v1([GOOD_GROUP], t0="soon"),
    "version 1 t0 NaN": _v1([GOOD_GROUP], t0=math.nan),
    "version 1 t0 a list": _v1([GOOD_GROUP], t0=[1]),
    "version 1 res zero": _v1([GOOD_GROUP], res=0),
    "version 1 int value nil": _v1([_group([0, None, [None]])]),
    "version 1 float value nil": _v1([_group([0, None, [None]], message=1)]),
    "version 1 body malformed": _v1([_group([3, None, [1]])]),
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
    # dense columns
    "dense column shorter than its group": _data([_group([0, None, [1, None]], times=[0, 1, 1])]),
    "dense column longer than its group": _data([_group([0, None, [1, None, 2]], times=[0, 1])]),
    "dense float column shorter": _data(
        [_group([0, None, [1.5, None]], message=1, times=[0, 1, 1])]
    ),
    "dense plain column longer": _data([_group([0, None, [1, None, 2], 1], times=[0, 1])]),
    "nil in a sparse column": _data([_group([0, [0, 1], [1, None]], times=[0, 1])]),
    "nil in sparse row numbers": _data([_group([0, [0, None], [1, 2]], times=[0, 1])]),
    "nil in a dense column of the wrong type": _data(
        [_group([0, None, [None, "x"]], times=[0, 1])]
    ),
    "dense column with nil flagged 0": _data([_group([0, None, [None, 1], 0], times=[0, 1])]),
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


@pytest.mark.parametrize("where", ["envelope", "envelope element", "version 1 envelope", "body"])
def test_unhashable_map_key_raises_payload_error(where: str) -> None:
    bad = b"\x81\x90\x00"  # {[]: 0}: a map whose key is an array
    if where == "version 1 envelope":
        data = b"CT\x01\x00\x00" + bad + _body([])
    elif where == "envelope":
        data = b"CT\x02\x00\x00" + bad + _body([])
    elif where == "envelope element":  # after the known ones: ignored, but must still parse
        fields = b"".join(msgpack.packb(field) for field in data_envelope())
        data = b"CT\x02\x00\x00\x97" + fields + bad + _body([])
    else:
        data = raw_payload(data_envelope(), bad)
    with pytest.raises(PayloadError):
        decoder_for().decode(data)


@pytest.mark.parametrize("field", ["t0", "span", "res", "v1 t0", "v1 res"])
def test_infinite_time_field_raises_payload_error(field: str) -> None:
    if field.startswith("v1 "):
        data = _v1([GOOD_GROUP], **{field[3:]: math.inf})
    else:
        data = raw_payload(data_envelope(**{field: math.inf}), _body([GOOD_GROUP]))
    with pytest.raises(PayloadError):
        decoder_for().decode(data)


def test_largest_times_give_no_overflow() -> None:
    """t0 and res at msgpack's extremes: the time base and the times are still computed."""
    for t0, res in ((-(2**63), 2**64 - 1), (2**63 - 1, 2**64 - 1), (2**63 - 1, 1)):
        data = raw_payload(data_envelope(t0=t0, span=2**64 - 1, res=res), _body([GOOD_GROUP]))
        payload, rows = decoder_for().decode(data)
        assert payload.envelope["t1"] == t0 + 2**64 - 1
        assert payload.envelope["tb"] == ("epoch" if t0 > 0 else "relative")
        assert len(rows) == 2


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


@pytest.mark.parametrize("value", ["north", b"\x00", [1.0], True])
@pytest.mark.parametrize("dense", [False, True])
def test_non_number_in_a_float_column_is_refused(value: Any, dense: bool) -> None:
    values = [value, None] if dense else [value]  # a nil makes the column dense with nils
    times = [0, 1] if dense else [0]
    data = raw_payload(data_envelope(), _body([[1, None, times, [[0, None, values]]]]))
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
    with pytest.raises(PayloadError):
        PayloadReader().decode(raw_payload(schema_envelope(), _body(wire), kind=KIND_SCHEMA))


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
    decoder = PayloadReader()
    for payload in encode(make_codec("none"), schema, batch):
        rows = decoder.rows(payload.body)
    assert [r.value for r in rows] == [high, low, 7]
    # The delta high -> low leaves msgpack's range: the column goes plain, flagged 1.
    assert unpack(payload.body).body[0][3] == [[0, None, [high, low, 7], 1]]


@pytest.mark.parametrize("n", [4, 8, 20], ids=["full", "dense", "sparse"])
def test_64_bit_values_spanning_the_range_in_steps_stay_delta_encoded(n: int) -> None:
    """Values from 0 to 2**64 - 1 whose every step fits msgpack's range: deltas, not plain."""
    schema = Schema(("c",), (MessageInfo(0, "Wide", 1, False, False, (SignalInfo("w"),)),))
    values = [0, 2**63, 2**64 - 1, 2**64 - 2**62]
    rows: list[RowSpec] = [(0, None, t, [(0, values[t])] if t < 4 else []) for t in range(n)]
    decoder = PayloadReader()
    for payload in encode(make_codec("none"), schema, batch_of(rows)):
        got = decoder.rows(payload.body)
    assert [r.value for r in got] == values
    (column,) = unpack(payload.body).body[0][3]
    assert len(column) == 3  # no plain flag
    assert (column[1] is None) == (n < 20)
    assert [v for v in column[2] if v is not None] == _deltas(values)


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
    assert sizes[-1] == bound  # tight: the longest stream id and sequence number are the bound


# --------------------------------------------------------------------------------------------
# fuzzing: whatever the bytes, only PayloadError


VALID_HEADERS = [
    MAGIC + bytes((version, kind, code))
    for version in (1, 2)
    for kind in (0, 1)
    for code in (0, 1, 2)
]


@settings(max_examples=300, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=64),
        st.builds(bytes.__add__, st.sampled_from(VALID_HEADERS), st.binary(max_size=64)),
    )
)
def test_fuzz_random_bytes(data: bytes) -> None:
    decode_only_payload_error(decoder_for(), data)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("compression", ["zlib", "zstd"])
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_fuzz_mutated_compressed_bodies(
    compression: str, version: int, data: st.DataObject
) -> None:
    """Corrupt, cut or extend the compressed body behind a valid header and envelope."""
    valid = _valid_data_payload(compression, version)
    body_at = len(valid) - len(unpack_body_bytes(valid))
    mutated = data.draw(mutations(valid[body_at:]))
    decode_only_payload_error(decoder_for(), valid[:body_at] + mutated)


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("compression", COMPRESSIONS)
@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_fuzz_mutated_payloads(compression: str, version: int, data: st.DataObject) -> None:
    """Edits anywhere: header, envelope and body."""
    valid = _valid_data_payload(compression, version)
    decode_only_payload_error(decoder_for(), data.draw(mutations(valid)))


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
@given(
    body=st.one_of(GROUPS, TREES),
    compression=st.sampled_from(COMPRESSIONS),
    version=st.sampled_from([1, 2]),
)
def test_fuzz_data_bodies_of_the_wrong_shape(body: Any, compression: str, version: int) -> None:
    """Bodies that look more or less like data bodies, behind a valid envelope."""
    envelope = data_envelope() if version == 2 else v1_data_envelope()
    packed = _body(body, compression)
    data = raw_payload(envelope, packed, code=CODES[compression], version=version)
    decode_only_payload_error(decoder_for(), data)


@settings(max_examples=200, deadline=None)
@given(
    t0=LEAVES,
    span=LEAVES,
    res=LEAVES,
    seq=LEAVES,
    schema=st.one_of(st.just(SCHEMA_ID_BIN), LEAVES),
    stream=st.one_of(st.just(STREAM_BIN), LEAVES),
    extra=st.lists(TREES, max_size=2),
)
def test_fuzz_envelope_fields(
    t0: Any, span: Any, res: Any, seq: Any, schema: Any, stream: Any, extra: list[Any]
) -> None:
    envelope = data_envelope(t0=t0, span=span, res=res, seq=seq, schema=schema, stream=stream)
    decode_only_payload_error(decoder_for(), _envelope(envelope + extra))


@settings(max_examples=100, deadline=None)
@given(t0=LEAVES, res=LEAVES, schema=st.one_of(st.just(FIXED.schema_id), LEAVES))
def test_fuzz_version_1_envelope_fields(t0: Any, res: Any, schema: Any) -> None:
    data = _v1([GOOD_GROUP], t0=t0, res=res, schema=schema)
    decode_only_payload_error(decoder_for(), data)


@settings(max_examples=100, deadline=None)
@given(
    fields=st.lists(LEAVES, max_size=7),
    kind=st.sampled_from([KIND_DATA, KIND_SCHEMA]),
)
def test_fuzz_envelope_arrays(fields: list[Any], kind: int) -> None:
    decode_only_payload_error(decoder_for(), _envelope(fields, kind))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=TREES, version=st.sampled_from([1, 2]))
def test_fuzz_schema_bodies(body: Any, version: int) -> None:
    if version == 1:
        envelope: Any = {"schema": "0000000000000000", "stream": STREAM, "seq": 0}
    else:
        envelope = schema_envelope("0000000000000000")
    data = raw_payload(envelope, _body(body), kind=KIND_SCHEMA, version=version)
    decode_only_payload_error(PayloadReader(), data)


# --------------------------------------------------------------------------------------------
# docs/format.md: its reference decoder agrees with PayloadReader


def _reference_decoder() -> dict[str, Any]:
    text = DOCS.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    code = next(b for b in blocks if "def read_payload" in b)
    namespace: dict[str, Any] = {}
    exec(compile(code, str(DOCS), "exec"), namespace)
    return namespace


@pytest.mark.skipif(not DOCS.exists(), reason="docs/format.md is not there")
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=schemas_and_rows(),
    compression=st.sampled_from(COMPRESSIONS),
    version=st.sampled_from([1, 2]),
)
def test_reference_decoder_in_the_docs_agrees(
    case: tuple[Schema, list[RowSpec]],
    compression: str,
    version: int,
) -> None:
    reference = _reference_decoder()
    schema, rows = case
    codec = make_codec(compression)
    if version == 1:
        schema_data, data = encode_v1(codec, schema, batch_of(rows))
    else:
        schema_payload, data_payload = encode(codec, schema, batch_of(rows))
        schema_data, data = schema_payload.body, data_payload.body
    kind, envelope, schema_body = reference["read_payload"](schema_data)
    assert (kind, envelope["schema"]) == (1, schema.schema_id)
    assert envelope == dict(unpack(schema_data).envelope)
    kind, envelope, body = reference["read_payload"](data)
    assert kind == 0
    assert envelope == dict(unpack(data).envelope)
    got = list(reference["rows"](envelope, body, schema_body))
    # The reference decoder gives a series' own rows: the fields before vss_path.
    assert exact(got) == exact([row[:8] for row in decoder_for(schema).rows(data)])


def test_envelope_extension_travels_and_old_readers_skip_it() -> None:
    batch = batch_of([(0, None, 1_700_000_000_123, [(0, 1)])])
    codec = make_codec("zstd", resolution=0.001)
    envelope = {**codec.envelope(batch, FIXED), "ext": {"campaign": "brake", "priority": 0}}
    body = codec.data_body(batch, FIXED)
    data = codec.pack(KIND_DATA, envelope, body, STREAM, 7)
    fields = msgpack.unpackb(data[5 : -len(body)])
    assert fields[6] == {"campaign": "brake", "priority": 0}
    assert unpack(data).envelope["ext"] == {"campaign": "brake", "priority": 0}
    # Without one, nothing is appended and the envelope has no "ext" entry.
    plain = codec.pack(KIND_DATA, codec.envelope(batch, FIXED), body, STREAM, 7)
    assert len(msgpack.unpackb(plain[5 : -len(body)])) == 6
    assert "ext" not in unpack(plain).envelope
    # A trailing element that is not a map of string keys is not an extension: ignored.
    other = data[:5] + msgpack.packb([*fields[:6], [1]]) + body
    assert "ext" not in unpack(other).envelope


# --------------------------------------------------------------------------------------------
# Issue 12, item 11: a streaming reader, bounded by rows as well as bytes


def three_groups() -> Batch:
    batch = Batch(0.0)
    for tick in range(50):
        batch.add(0, None, tick, [(0, tick % 4), (1, tick * 7)])
        batch.add(1, None, tick, [(0, tick / 3)])
        batch.add(2, tick % 3, tick, [(0, tick)])
    return batch


def test_iter_rows_gives_the_same_rows_as_rows() -> None:
    schema_payload, data_payload = encode(make_codec(), FIXED, three_groups())
    decoder = PayloadReader()
    assert list(decoder.iter_rows(schema_payload.body)) == []
    assert exact(decoder.iter_rows(data_payload.body)) == exact(decoder.rows(data_payload.body))


def test_iter_rows_streams_the_groups_before_a_bad_one() -> None:
    good = [0, None, [0, 1], [[1, None, [5, 1]]]]
    body = msgpack.packb([good, [0, None, [0], [[1, None, "not a list"]]]])
    decoder = decoder_for()
    stream = decoder.iter_rows(raw_payload(data_envelope(), body))
    assert [r.value for r in itertools.islice(stream, 2)] == [0.05, 0.06]
    with pytest.raises(PayloadError, match="expected a list of integers"):
        next(stream)


def inflating_payload(elements: int) -> bytes:
    """A data payload of a few KB whose body inflates to ``elements`` bytes: one group whose
    time column holds ``elements`` zeros (msgpack array32 of fixints)."""
    body = b"\x91\x94\x00\xc0\xdd" + elements.to_bytes(4, "big") + bytes(elements) + b"\x90"
    compressed = zstandard.ZstdCompressor(level=3).compress(body)
    return raw_payload(data_envelope(), compressed, code=CODES["zstd"])


@pytest.mark.parametrize("elements", [MAX_ARRAY + 1, 60_000_000])
def test_a_body_with_an_array_over_max_array_is_refused_before_it_is_built(
    elements: int,
) -> None:
    data = inflating_payload(elements)
    assert len(data) < 4096 and elements < MAX_BODY  # small, and under the byte bound
    decoder = decoder_for()
    with pytest.raises(PayloadError, match="max_array_len"):
        list(decoder.iter_rows(data))
    with pytest.raises(PayloadError, match="max_array_len"):
        unpack(data)


def test_the_longest_array_a_writer_makes_is_read() -> None:
    data = inflating_payload(MAX_BATCH_VALUES)
    assert len(list(decoder_for().iter_rows(data))) == 0  # times without values: no rows
    assert len(unpack(data).body[0][2]) == MAX_BATCH_VALUES


def test_peek_reads_the_envelope_only() -> None:
    _, data_payload = encode(make_codec(), FIXED, three_groups())
    peeked = peek(data_payload.body)
    assert peeked.envelope == unpack(data_payload.body).envelope
    assert isinstance(peeked.body, bytes)  # still compressed


@pytest.mark.parametrize("dense", [True, False], ids=["dense", "sparse"])
def test_integers_beyond_64_bits_travel_in_version_3_payloads_only(dense: bool) -> None:
    # A 128-bit signal (CAN FD allows up to 512): its raw integers leave msgpack's range, so
    # they go as big-endian two's-complement bytes, in a payload marked version 3; a payload
    # without such a column stays version 2, and a version 2 reader refuses a version 3 one.
    wide = Schema(("fd",), (MessageInfo(0, "Big", 0x10, False, False, (SignalInfo("x"),)),))
    values = [0, 2**128 - 1, -(2**100), 5, 2**64, -(2**63) - 1]
    rows: list[RowSpec] = [(0, None, 1000 + i, [(0, v)]) for i, v in enumerate(values)]
    if not dense:  # a column with values in few rows of its group
        rows += [(0, None, 2000 + i, []) for i in range(40)]
    codec = make_codec("zstd")
    schema_payload, _ = encode(codec, wide, batch_of(rows))
    batch = batch_of(rows)
    envelope, body = codec.envelope(batch, wide), codec.data_body(batch, wide)
    assert codec.body_version == 3
    data = codec.pack(KIND_DATA, {**envelope, "version": codec.body_version}, body, STREAM, 1)
    assert data[2] == 3
    decoder = PayloadReader()
    decoder.decode(schema_payload.body)
    assert [r.value for r in decoder.rows(data)] == values
    # Ordinary integers keep version 2.
    small = batch_of([(0, None, 1, [(0, 2**64 - 1)]), (0, None, 2, [(0, -(2**63))])])
    codec.data_body(small, wide)
    assert codec.body_version == 2
    # A flag-2 column in a version 2 payload is refused, not misread.
    with pytest.raises(PayloadError, match="malformed column"):
        decoder.rows(data[:2] + b"\x02" + data[3:])
