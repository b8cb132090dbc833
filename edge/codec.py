"""The wire format (docs/format.md, version 1): batches and schemas to bytes, and bytes back to
rows.

A payload is::

    b"CT" | version: u8 | kind: u8 (0 data, 1 schema) | compression: u8 (0 none, 1 zlib, 2 zstd)
    | envelope: msgpack map, uncompressed (stream, seq, vehicle, schema id, time range, ...)
    | body: msgpack, compressed as named

The envelope lets a cloud function route, deduplicate and order payloads without decompressing
them. The data body is a list of groups, one per message (and J1939 source address)::

    [message_index, source_address | nil, [time deltas...], [column, ...]]
    column = [signal_index, rows | nil, values]

Times are integer ticks (``res`` nanoseconds each), the first relative to the envelope's ``t0``,
each next one relative to its predecessor. ``rows`` is nil when the column has a value in every
row, else the delta-encoded row numbers it has values in. Integer-coded signals carry their raw
integers, delta-encoded; float signals carry their IEEE value as sent. The reader applies
``raw * scale + offset`` from the schema, exactly as cantools does.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import msgpack
import zstandard

from edge.batch import EPOCH_THRESHOLD, Batch
from edge.errors import PayloadError, SchemaMissingError
from edge.payload import Payload
from edge.schema import Schema

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "Codec",
    "DecodedPayload",
    "PayloadDecoder",
    "Row",
    "unpack",
]

MAGIC = b"CT"
FORMAT_VERSION = 1
KIND_DATA, KIND_SCHEMA = 0, 1
_KIND_NAMES = {KIND_DATA: "data", KIND_SCHEMA: "schema"}
_COMPRESSION_CODES = {"none": 0, "zlib": 1, "zstd": 2}
_COMPRESSION_NAMES = {v: k for k, v in _COMPRESSION_CODES.items()}
#: Refuse to inflate a body beyond this (a corrupt or hostile payload must not exhaust memory).
MAX_BODY = 64 * 1024 * 1024
_HEADER = 5
#: Room the largest possible sequence number takes in the envelope beyond a small one.
SEQ_SLACK = 16


class Row(NamedTuple):
    """One decoded value, as the cloud stores it."""

    time: float
    bus: str
    message: str
    signal: str
    value: int | float
    unit: str
    choice: str | None
    source: int | None


class Codec:
    """Encodes batches and schemas for one stream configuration."""

    def __init__(self, compression: str = "zstd", level: int = 9, resolution: float = 0.001):
        if compression not in _COMPRESSION_CODES:
            raise ValueError(f"unknown compression {compression!r}")
        self.compression = compression
        self._code = _COMPRESSION_CODES[compression]
        self._level = level
        self._zstd = zstandard.ZstdCompressor(level=level) if compression == "zstd" else None
        self.resolution_ns = round(resolution * 1e9)
        self.ticks_per_second = 1e9 / self.resolution_ns

    def compress(self, raw: bytes) -> bytes:
        """Compress a msgpack body."""
        if self._zstd is not None:
            return self._zstd.compress(raw)
        if self.compression == "zlib":
            return zlib.compress(raw, min(self._level, 9))
        return raw

    def data_body(self, batch: Batch, schema: Schema) -> bytes:
        """The compressed body of a data payload."""
        groups = []
        for (message_index, source_address), group in batch.groups.items():
            signals = schema.messages[message_index].signals
            times = _deltas(group.times, int(batch.min_tick))
            columns = []
            for index, (rows, values) in sorted(group.columns.items()):
                row_field = None if len(rows) == len(group.times) else _deltas(rows, 0)
                if not signals[index].is_float:
                    columns.append([index, row_field, _deltas(values, 0)])
                else:
                    columns.append([index, row_field, values])
            groups.append([message_index, source_address, times, columns])
        return self.compress(msgpack.packb(groups, use_bin_type=True))

    def envelope(self, batch: Batch | None, schema: Schema) -> dict[str, Any]:
        """The envelope fields a batch (or a schema payload, batch None) has before its
        stream/sequence are known."""
        env: dict[str, Any] = {"schema": schema.schema_id, "created": round(time.time(), 3)}
        if batch is not None:
            t0, t1 = int(batch.min_tick), int(batch.max_tick)
            epoch = t0 * self.resolution_ns / 1e9 > EPOCH_THRESHOLD
            env.update(t0=t0, t1=t1, res=self.resolution_ns, tb="epoch" if epoch else "relative")
        return env

    def measure(self, batch: Batch, schema: Schema) -> int:
        """Encoded size of ``batch`` with the largest sequence number: never exceeded later."""
        env = self.envelope(batch, schema)
        return (
            len(self.pack(KIND_DATA, env, self.data_body(batch, schema), "s" * 36, 0)) + SEQ_SLACK
        )

    def schema_body(self, schema: Schema) -> bytes:
        """The compressed body of a schema payload."""
        return self.compress(msgpack.packb(schema.to_wire(), use_bin_type=True))

    def pack(
        self, kind: int, envelope: Mapping[str, Any], body: bytes, stream: str, seq: int
    ) -> bytes:
        """Assemble a payload from an encoded body."""
        env = dict(envelope, stream=stream, seq=seq)
        header = bytes((MAGIC[0], MAGIC[1], FORMAT_VERSION, kind, self._code))
        packed: bytes = msgpack.packb(env, use_bin_type=True)
        return header + packed + body

    def payload(
        self,
        kind: int,
        envelope: Mapping[str, Any],
        body: bytes,
        stream: str,
        seq: int,
        vehicle: str,
    ) -> Payload:
        """A spoolable :class:`Payload`: bytes plus the properties uplinks send beside them."""
        env = dict(envelope, vehicle=vehicle)
        properties = {
            "kind": _KIND_NAMES[kind],
            "stream": stream,
            "seq": str(seq),
            "schema": str(envelope["schema"]),
            "vehicle": vehicle,
            "compression": self.compression,
            "format": str(FORMAT_VERSION),
        }
        return Payload(self.pack(kind, env, body, stream, seq), properties)


@dataclass(frozen=True, slots=True)
class DecodedPayload:
    """A payload taken apart: its kind, envelope and (decompressed, unpacked) body."""

    kind: str
    version: int
    compression: str
    envelope: Mapping[str, Any]
    body: Any


def unpack(data: bytes) -> DecodedPayload:
    """Take a payload apart. Raises :class:`PayloadError` for anything malformed."""
    if len(data) < _HEADER or data[:2] != MAGIC:
        raise PayloadError("not a can-telemetry payload (bad magic)")
    version, kind, code = data[2], data[3], data[4]
    if version != FORMAT_VERSION:
        raise PayloadError(f"unsupported format version {version} (this reader knows 1)")
    if kind not in _KIND_NAMES:
        raise PayloadError(f"unknown payload kind {kind}")
    if code not in _COMPRESSION_NAMES:
        raise PayloadError(f"unknown compression code {code}")
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=len(data))
    unpacker.feed(data[_HEADER:])
    try:
        envelope = unpacker.unpack()
    except (msgpack.OutOfData, ValueError, msgpack.ExtraData) as exc:
        raise PayloadError(f"truncated or malformed envelope: {exc!r}") from exc
    if not isinstance(envelope, dict):
        raise PayloadError("envelope is not a map")
    compressed = data[_HEADER + unpacker.tell() :]
    raw = _decompress(_COMPRESSION_NAMES[code], compressed)
    try:
        body = msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise PayloadError(f"malformed body: {exc!r}") from exc
    return DecodedPayload(_KIND_NAMES[kind], version, _COMPRESSION_NAMES[code], envelope, body)


def _decompress(compression: str, data: bytes) -> bytes:
    try:
        if compression == "zstd":
            return zstandard.ZstdDecompressor().decompress(data, max_output_size=MAX_BODY)
        if compression == "zlib":
            inflater = zlib.decompressobj()
            out = inflater.decompress(data, MAX_BODY)
            if inflater.unconsumed_tail or not inflater.eof:
                raise PayloadError("zlib body truncated or larger than allowed")
            return out
    except (zstandard.ZstdError, zlib.error) as exc:
        raise PayloadError(f"corrupt {compression} body: {exc}") from exc
    return data


class PayloadDecoder:
    """Turns payloads back into rows. Feed schema payloads first (they come first in a stream and
    again periodically); data payloads whose schema was not seen raise SchemaMissingError."""

    def __init__(self) -> None:
        self.schemas: dict[str, Schema] = {}

    def add_schema(self, schema: Schema) -> None:
        """Make a schema known (e.g. one the cloud kept from earlier)."""
        self.schemas[schema.schema_id] = schema

    def decode(self, data: bytes) -> tuple[DecodedPayload, list[Row]]:
        """Decode one payload: a schema payload is remembered and gives no rows."""
        payload = unpack(data)
        if payload.kind == "schema":
            schema = Schema.from_wire(payload.body)
            if schema.schema_id != payload.envelope.get("schema"):
                raise PayloadError("schema payload does not match its schema id")
            self.add_schema(schema)
            return payload, []
        return payload, list(self._rows(payload))

    def rows(self, data: bytes) -> list[Row]:
        """The rows of one payload (none for a schema payload)."""
        return self.decode(data)[1]

    def _rows(self, payload: DecodedPayload) -> Iterator[Row]:
        env = payload.envelope
        schema_id = env.get("schema")
        schema = self.schemas.get(str(schema_id))
        if schema is None:
            raise SchemaMissingError(str(schema_id))
        try:
            t0, res = int(env["t0"]), int(env["res"])
            groups = payload.body
            for message_index, source_address, time_deltas, columns in groups:
                message = schema.messages[message_index]
                bus = schema.buses[message.bus]
                times = _undelta(time_deltas, t0)
                seconds = [t * res / 1_000_000_000 for t in times]
                for signal_index, row_deltas, values in columns:
                    signal = message.signals[signal_index]
                    rows = range(len(times)) if row_deltas is None else _undelta(row_deltas, 0)
                    if not signal.is_float:
                        values = _undelta(values, 0)
                    if len(values) != len(rows):
                        raise PayloadError("column length does not match its rows")
                    choices = signal.choices
                    for row, raw in zip(rows, values, strict=True):
                        yield Row(
                            seconds[row],
                            bus,
                            message.name,
                            signal.name,
                            signal.physical(raw),
                            signal.unit,
                            choices.get(raw) if choices else None,
                            source_address,
                        )
        except PayloadError:
            raise
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise PayloadError(f"malformed data body: {exc!r}") from exc


def _deltas(values: list[int], base: int) -> list[int]:
    out = []
    previous = base
    for v in values:
        out.append(v - previous)
        previous = v
    return out


def _undelta(deltas: list[int], base: int) -> list[int]:
    out = []
    value = base
    for d in deltas:
        value += d
        out.append(value)
    return out
