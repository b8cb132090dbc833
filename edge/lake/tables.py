"""The lake's tables: their Arrow schemas and where their files go (docs/lake.md).

Every table is a folder of Parquet files under the lake's root, hive-partitioned by event date
(``signals/date=2026-12-06/part-….parquet``) where it has one, and sorted by vehicle, signal and
time inside each file: a folder per vehicle would not survive millions of cars (too many small
files), a sort order lets Parquet's row-group statistics skip what a query does not want.

The ``signals`` columns after the keys are :class:`edge.wire.codec.Row`'s fields, whatever they are
(a field added to Row at the end becomes a column here with no change in this package).
"""

from __future__ import annotations

import typing

import pyarrow as pa

from edge.wire.codec import Row

__all__ = [
    "KEYED_INPUT",
    "OUTCOMES",
    "PARKED",
    "PAYLOADS",
    "PAYLOAD_INPUT",
    "QUARANTINE",
    "ROW_FIELDS",
    "SCHEMAS",
    "SIGNALS",
    "SIGNALS_SORT",
    "STREAMS",
    "TABLES",
    "arrow_type",
]


def arrow_type(annotation: object) -> pa.DataType:
    """The Arrow type of one :class:`Row` field from its annotation (a string under postponed
    evaluation): numbers that may be floats are float64, integers int64, the rest strings."""
    text = str(annotation)
    if "float" in text:
        return pa.float64()
    if "bool" in text:
        return pa.bool_()
    if "int" in text:
        return pa.int64()
    return pa.string()


#: Row's fields and their Arrow types, in Row's order.
ROW_FIELDS: tuple[pa.Field, ...] = tuple(
    pa.field(name, arrow_type(annotation))
    for name, annotation in typing.get_type_hints(Row).items()
    if name in Row._fields
)

_UTC = pa.timestamp("us", tz="UTC")

#: What the readers (edge.lake.avro) give and the decode function takes: one row per payload.
PAYLOAD_INPUT = pa.schema(
    [
        pa.field("body", pa.binary()),
        pa.field("device", pa.string()),  # the sending device's id (IoT Hub), if known
        pa.field("vehicle", pa.string()),  # the ``vehicle`` application property, if sent
        pa.field("enqueued", _UTC),  # arrival time at the hub (or the outbox file's mtime)
        pa.field("origin", pa.string()),  # file#record, for quarantine and debugging
    ]
)

#: PAYLOAD_INPUT with the key the engines deduplicate on: ``{stream}:{seq}``, or for what is not
#: a readable payload ``sha256:`` and the first 16 hex digits of the body's SHA-256.
KEYED_INPUT = pa.schema(
    [*PAYLOAD_INPUT, pa.field("key", pa.string()), pa.field("kind", pa.string())]
)

_KEYS = [
    pa.field("date", pa.date32()),
    pa.field("vehicle", pa.string()),
    pa.field("stream", pa.string()),
    pa.field("seq", pa.int64()),
]
_ROW_NAMES = {f.name for f in ROW_FIELDS}
#: One row per decoded value, long form.
SIGNALS = pa.schema(
    _KEYS
    + [f for f in ROW_FIELDS if f.name not in {k.name for k in _KEYS}]
    + [
        pa.field(name, type_)
        for name, type_ in (
            ("raw", pa.int64()),  # the raw integer of an integer-coded signal
            ("time_base", pa.string()),  # epoch, or relative (placed by arrival)
            ("device", pa.string()),
        )
        if name not in _ROW_NAMES
    ]
)
#: Sort order inside a partition's file.
SIGNALS_SORT = [("vehicle", "ascending"), ("signal", "ascending"), ("time", "ascending")]

#: One row per unique (stream, seq): what the envelope says, where and when it arrived.
PAYLOADS = pa.schema(
    [
        *_KEYS,
        pa.field("kind", pa.string()),  # data or schema
        pa.field("schema", pa.string()),
        pa.field("format", pa.int32()),
        pa.field("compression", pa.string()),
        pa.field("t0", pa.float64()),  # first/last row time, seconds (data payloads)
        pa.field("t1", pa.float64()),
        pa.field("time_base", pa.string()),
        pa.field("campaign", pa.string()),  # ext["campaign"] when the payload carries one
        pa.field("ext", pa.string()),  # the whole ext map as JSON, when present
        pa.field("device", pa.string()),
        pa.field("enqueued", _UTC),
        pa.field("bytes", pa.int64()),
        pa.field("rows", pa.int64()),
    ]
)

#: What the decode function says of each payload: PAYLOADS plus its fate. ``status`` is ok,
#: parked (its schema has not arrived: kept and retried), foreign (not our magic bytes) or
#: corrupt; ``body`` is kept for all but ok.
OUTCOMES = pa.schema(
    [
        *PAYLOADS,
        pa.field("status", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("origin", pa.string()),
        pa.field("body", pa.binary()),
    ]
)

#: Payloads that could not be decoded and never will be (foreign, corrupt), keyed by the first
#: 16 hex digits of their SHA-256 (so the same bad payload ingested twice is kept once).
QUARANTINE = pa.schema(
    [
        pa.field("date", pa.date32()),  # arrival date
        pa.field("key", pa.string()),
        pa.field("status", pa.string()),
        pa.field("reason", pa.string()),
        pa.field("device", pa.string()),
        pa.field("enqueued", _UTC),
        pa.field("origin", pa.string()),
        pa.field("body", pa.binary()),
    ]
)

#: Data payloads waiting for their schema (retried at every ingest; not one of the five tables).
PARKED = pa.schema([*PAYLOAD_INPUT, pa.field("stream", pa.string()), pa.field("seq", pa.int64())])

#: Every schema seen, by id, with its wire form (msgpack) so a decoder can be rebuilt from it.
SCHEMAS = pa.schema(
    [
        pa.field("schema", pa.string()),
        pa.field("wire", pa.binary()),
        pa.field("buses", pa.list_(pa.string())),
        pa.field("messages", pa.int32()),
        pa.field("signals", pa.int32()),
        pa.field("first_seen", _UTC),
    ]
)

#: One row per stream: which vehicle, which sequence numbers arrived, which never did.
STREAMS = pa.schema(
    [
        pa.field("stream", pa.string()),
        pa.field("vehicle", pa.string()),
        pa.field("device", pa.string()),
        pa.field("first_seq", pa.int64()),
        pa.field("last_seq", pa.int64()),
        pa.field("payloads", pa.int64()),
        pa.field("missing", pa.int64()),
        # [first, last] ranges of sequence numbers that never arrived
        pa.field("gaps", pa.list_(pa.list_(pa.int64()))),
        pa.field("first_time", pa.float64()),
        pa.field("last_time", pa.float64()),
    ]
)

#: Table name -> (schema, partitioned by date).
TABLES: dict[str, tuple[pa.Schema, bool]] = {
    "signals": (SIGNALS, True),
    "payloads": (PAYLOADS, True),
    "schemas": (SCHEMAS, False),
    "streams": (STREAMS, False),
    "quarantine": (QUARANTINE, True),
}
