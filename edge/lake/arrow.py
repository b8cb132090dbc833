"""The one decode function of the lake: an Arrow batch of payloads in, Arrow batches of rows out.

:func:`decode` serves Spark's ``mapInArrow`` (edge.lake.spark), the single-machine ingest
(edge.lake.local) and ``can-telemetry plot``. It decodes with edge.wire.codec's
:class:`~edge.wire.codec.PayloadReader` (the edge's own reader, so the lake's rows are the edge's
rows)
and never raises for a bad payload: each input payload gets an outcome (ok, parked, foreign,
corrupt) in :attr:`Decoded.outcomes`.
"""

from __future__ import annotations

import hashlib
import json
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
import pyarrow as pa
import pyarrow.compute as pc

from edge.errors import PayloadError, SchemaMissingError
from edge.lake.tables import KEYED_INPUT, OUTCOMES, PAYLOAD_INPUT, ROW_FIELDS, SIGNALS
from edge.wire.codec import KIND_SCHEMA, MAGIC, DecodedPayload, PayloadReader, Row, unpack
from edge.wire.schema import Schema, SignalInfo

__all__ = ["Decoded", "SchemaBook", "decode", "empty", "payload_batch", "payload_keys"]

_ROW_INDEX = {f.name: i for i, f in enumerate(ROW_FIELDS)}


@dataclass
class SchemaBook:
    """What decoding needs besides the payloads: the schemas known so far (by id) and the vehicle
    of each stream (from its schema payloads). Grows as schema payloads are decoded."""

    decoder: PayloadReader = field(default_factory=PayloadReader)
    vehicles: dict[str, str] = field(default_factory=dict)
    _signals: dict[str, dict[tuple[str, str, str], SignalInfo]] = field(default_factory=dict)

    @classmethod
    def from_wire(
        cls, schemas: Iterable[bytes], vehicles: Mapping[str, str] | None = None
    ) -> SchemaBook:
        """A book knowing the schemas whose msgpack wire forms (the ``schemas`` table's ``wire``
        column) are given, and the ``vehicles`` of streams seen before."""
        book = cls(vehicles=dict(vehicles or {}))
        for wire in schemas:
            body = msgpack.unpackb(wire, raw=False, strict_map_key=False)
            book.decoder.add_schema(Schema.from_wire(body))
        return book

    def signal(self, schema_id: str, bus: str, message: str, name: str) -> SignalInfo | None:
        """The schema's entry of a signal (for its raw integer)."""
        table = self._signals.get(schema_id)
        if table is None:
            schema = self.decoder.schemas[schema_id]
            table = {
                (schema.buses[m.bus], m.name, s.name): s for m in schema.messages for s in m.signals
            }
            self._signals[schema_id] = table
        return table.get((bus, message, name))


@dataclass(frozen=True)
class Decoded:
    """What :func:`decode` makes of a batch of payloads: ``rows`` (the ``signals`` schema),
    ``outcomes`` (one per payload, :data:`~edge.lake.tables.OUTCOMES`) and ``schemas`` (the
    schema payloads' schemas, by id)."""

    rows: pa.RecordBatch
    outcomes: pa.RecordBatch
    schemas: dict[str, Schema]
    #: For each row, the index of its payload in the batch (and in ``outcomes``).
    payload_index: pa.Array


def empty(schema: pa.Schema) -> pa.RecordBatch:
    """A batch of no rows."""
    return pa.RecordBatch.from_pylist([], schema=schema)


def decode(payloads: pa.RecordBatch | pa.Table, book: SchemaBook) -> Decoded:
    """Decode a batch of payloads (:data:`~edge.lake.tables.PAYLOAD_INPUT` columns).

    Schema payloads are taken first, whatever their place in the batch; a data payload whose
    schema is still unknown is *parked* (its outcome keeps the body, to be retried). Rows are not
    deduplicated here: that is the engine's job (stateful deduplication on (stream, seq)).
    """
    columns = payloads.to_pydict()
    bodies: list[bytes | None] = columns["body"]
    n = len(bodies)
    devices, vehicles = columns["device"], columns["vehicle"]
    enqueued, origins = columns["enqueued"], columns["origin"]
    out: dict[str, list[Any]] = {f.name: [None] * n for f in OUTCOMES}
    out["rows"] = [0] * n
    schemas: dict[str, Schema] = {}
    all_rows: list[Row] = []
    row_payload: list[int] = []  # for each row: its payload's index in the batch

    def fail(i: int, status: str, reason: str) -> None:
        out["status"][i], out["reason"][i], out["body"][i] = status, reason, bodies[i]

    def describe(i: int, payload: DecodedPayload) -> None:
        env = payload.envelope
        out["stream"][i], out["seq"][i] = env["stream"], env["seq"]
        out["kind"][i], out["schema"][i] = payload.kind, env["schema"]
        out["format"][i], out["compression"][i] = payload.version, payload.compression
        ext = env.get("ext") or {}
        if ext:
            out["ext"][i] = json.dumps(ext, sort_keys=True, default=_json_default)
            campaign = ext.get("campaign")
            out["campaign"][i] = None if campaign is None else str(campaign)
        if payload.kind == "data":
            # In integers, then one division: the rows' times (PayloadReader) are computed so,
            # and ``t0 * res`` of an epoch time is beyond float64's integers (2**53).
            res = env["res"]
            out["t0"][i] = env["t0"] * res / 1_000_000_000
            out["t1"][i] = env["t1"] * res / 1_000_000_000
            out["time_base"][i] = env["tb"]

    decoder = book.decoder
    data: list[int] = []
    # Pass 1: schema payloads into the book, so a batch's data finds the schemas it carries.
    for i, body in enumerate(bodies):
        out["device"][i], out["enqueued"][i], out["origin"][i] = devices[i], enqueued[i], origins[i]
        out["bytes"][i] = len(body) if body is not None else 0
        if body is None or body[:2] != MAGIC:
            fail(i, "foreign", "not a can-telemetry payload (bad magic)")
        elif len(body) < 4:  # our magic, cut short
            fail(i, "corrupt", "truncated payload (no header)")
        elif body[3] != KIND_SCHEMA:
            data.append(i)
        else:
            try:
                payload, _ = decoder.decode(body)
            except PayloadError as exc:
                fail(i, "corrupt", str(exc))
                continue
            describe(i, payload)
            schema_id = payload.envelope["schema"]
            schemas[schema_id] = decoder.schemas[schema_id]
            vehicle = payload.envelope.get("vehicle")
            if vehicle:
                book.vehicles[payload.envelope["stream"]] = vehicle
            out["vehicle"][i] = vehicle or vehicles[i] or devices[i]
            out["status"][i] = "ok"
            out["date"][i] = _date(enqueued[i])

    # Pass 2: data payloads.
    for i in data:
        body = bodies[i]
        assert body is not None  # pass 1 took the None bodies (foreign)
        try:
            payload, decoded = decoder.decode(body)
            rows = list(decoded)
        except SchemaMissingError as exc:
            describe(i, unpack(body))  # it unpacked once already: the envelope is sound
            fail(i, "parked", str(exc))
            # As it came (the Spark jobs park the outcome): retried, it is named as if it had
            # just come, by its property, else its stream's schema payload, else its device.
            out["vehicle"][i] = vehicles[i]
            continue
        except PayloadError as exc:
            fail(i, "corrupt", str(exc))
            continue
        describe(i, payload)
        stream = payload.envelope["stream"]
        out["vehicle"][i] = vehicles[i] or book.vehicles.get(stream) or devices[i]
        out["status"][i] = "ok"
        out["rows"][i] = len(rows)
        if out["time_base"][i] == "relative":
            out["date"][i] = _date(enqueued[i])
        else:
            out["date"][i] = _date_of_seconds(out["t0"][i])
        all_rows.extend(rows)
        row_payload.extend([i] * len(rows))

    outcomes = pa.RecordBatch.from_pydict(out, schema=OUTCOMES)
    index = pa.array(row_payload, type=pa.int32())
    return Decoded(_rows_batch(all_rows, index, outcomes, book), outcomes, schemas, index)


def _rows_batch(
    rows: list[Row], take: pa.Array, outcomes: pa.RecordBatch, book: SchemaBook
) -> pa.RecordBatch:
    """The ``signals`` batch: Row's columns plus the payload's keys, taken per row. Column-wise
    (one transpose, then Arrow kernels): no Python work per row and column beyond conversion."""
    if not rows:
        return empty(SIGNALS)
    arrays: dict[str, pa.Array] = {}
    for f in ROW_FIELDS:
        # itemgetter over the rows: C speed (zip(*rows) builds a call of a million arguments)
        values: Sequence[Any] = list(map(operator.itemgetter(_ROW_INDEX[f.name]), rows))
        try:
            arrays[f.name] = pa.array(values, type=f.type)
        except pa.ArrowInvalid:  # an integer beyond 2**53 into float64: round it, as Python does
            arrays[f.name] = pa.array([None if v is None else float(v) for v in values], f.type)
    for name in ("vehicle", "stream", "seq", "time_base", "device"):
        arrays[name] = outcomes.column(name).take(take)
    arrays["raw"] = _raw_column(arrays, outcomes.column("schema").take(take), book)
    enqueued = outcomes.column("enqueued").take(take)
    # Event time places a row, unless its payload's clock was relative: then arrival does.
    event = pc.cast(
        pc.cast(pc.floor(pc.multiply(arrays["time"], 1e6)), pa.int64()),
        pa.timestamp("us", tz="UTC"),
    )
    relative = pc.equal(arrays["time_base"], "relative")
    arrays["date"] = pc.cast(pc.if_else(relative, enqueued, event), pa.date32())
    return pa.RecordBatch.from_pydict({f.name: arrays[f.name] for f in SIGNALS}, schema=SIGNALS)


def _raw_column(arrays: dict[str, pa.Array], schema_ids: pa.Array, book: SchemaBook) -> pa.Array:
    """The raw integers of integer-coded signals: ``round((value - offset) / scale)``, exact for
    the scales DBCs use and values within float64's integers (2**53); null for float signals,
    for values a VSS mapping transformed, and where the result leaves int64."""
    keys = pc.binary_join_element_wise(
        schema_ids, arrays["bus"], arrays["message"], arrays["signal"], "\x1f"
    ).dictionary_encode()
    scales, offsets, integer = [], [], []
    for key in keys.dictionary.to_pylist():
        info = book.signal(*key.split("\x1f"))
        integer.append(info is not None and not info.is_float)
        scales.append(float(info.scale) if info else 1.0)
        offsets.append(float(info.offset) if info else 0.0)
    index = keys.indices
    scale = pa.array(scales, pa.float64()).take(index)
    offset = pa.array(offsets, pa.float64()).take(index)
    raw = pc.round(pc.divide(pc.subtract(arrays["value"], offset), scale))
    keep = pc.and_(pa.array(integer).take(index), pc.less(pc.abs(raw), 2.0**63))
    if "vss_path" in arrays:
        keep = pc.and_(keep, pc.is_null(arrays["vss_path"]))
    return pc.cast(pc.if_else(keep, raw, pa.scalar(None, pa.float64())), pa.int64())


def _json_default(value: Any) -> Any:
    """What JSON has no type for in an envelope's ``ext``: byte strings (a capture's raw
    frames) as lower-case hex, anything else as its text."""
    return value.hex() if isinstance(value, bytes) else str(value)


def _date(when: Any) -> Any:
    return None if when is None else when.date()


def _date_of_seconds(seconds: float | None) -> Any:
    import datetime as dt

    if seconds is None:
        return None
    return dt.datetime.fromtimestamp(seconds, dt.UTC).date()


def payload_keys(payloads: pa.RecordBatch) -> pa.RecordBatch:
    """``payloads`` with their deduplication ``key`` and ``kind`` (:data:`KEYED_INPUT`): what an
    engine deduplicates on before decoding."""
    keys: list[str] = []
    kinds: list[str | None] = []
    for body in payloads.column("body").to_pylist():
        try:
            if body is None:
                raise PayloadError("no body")
            env = unpack(body)
            keys.append(f"{env.envelope['stream']}:{env.envelope['seq']}")
            kinds.append(env.kind)
        except PayloadError:
            keys.append("sha256:" + hashlib.sha256(body or b"").hexdigest()[:16])
            kinds.append(None)
    columns = [payloads.column(name) for name in PAYLOAD_INPUT.names]
    columns += [pa.array(keys, pa.string()), pa.array(kinds, pa.string())]
    return pa.RecordBatch.from_arrays(columns, schema=KEYED_INPUT)


def payload_batch(
    bodies: list[bytes],
    *,
    device: str | None = None,
    vehicle: str | None = None,
    enqueued: Any = None,
    origin: str | None = None,
) -> pa.RecordBatch:
    """A :data:`~edge.lake.tables.PAYLOAD_INPUT` batch of bare payload bodies (tests, plot)."""
    n = len(bodies)
    return pa.RecordBatch.from_pydict(
        {
            "body": bodies,
            "device": [device] * n,
            "vehicle": [vehicle] * n,
            "enqueued": [enqueued] * n,
            "origin": [origin] * n,
        },
        schema=PAYLOAD_INPUT,
    )
