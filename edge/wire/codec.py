"""The wire format (docs/format.md, version 2): batches and schemas to bytes, and bytes back to
rows. The reader also reads version 1.

A payload is::

    b"CT" | version: u8 | kind: u8 (0 data, 1 schema) | compression: u8 (0 none, 1 zlib, 2 zstd)
    | envelope: msgpack array, uncompressed
    | body: msgpack, compressed as named

    data envelope   = [schema id: bin 8, stream: bin, seq, t0, span, res, (ext: map)]
    schema envelope = [schema id: bin 8, stream: bin, seq, vehicle, created, (ext: map)]

``ext`` is optional: a map with string keys for what a feature adds to the envelope (e.g. the
campaign that made a payload), absent when empty. Readers give it as ``envelope["ext"]`` (no
such key when absent: use ``envelope.get("ext", {})``) and ignore keys they do not know.

The envelope lets a cloud function route, deduplicate and order payloads without decompressing
them (version 1's was a map with string keys; :func:`unpack` gives both as the same dict). The
data body is a list of groups, one per message (and J1939 source address)::

    [message_index, source_address | nil, [time deltas...], [column, ...]]
    column = [signal_index, rows | nil, values] or [signal_index, rows | nil, values, 1]

Times are integer ticks (``res`` nanoseconds each), the first relative to the envelope's ``t0``,
each next one relative to its predecessor. ``rows`` is nil when the column is *dense*: one
value per row of the group, nil in the rows the signal has no value in (a column with a value in
every row has no nil); else the delta-encoded row numbers it has values in. The writer sends a
column dense when it has values in at least 30 % of its group's rows. Integer-coded signals
carry their raw integers, delta-encoded across the values present (a fourth element ``1`` marks
a column sent plain, when a 64-bit signal's deltas leave msgpack's integer range); float signals
carry their IEEE value as sent. The reader applies ``raw * scale + offset`` from the schema,
exactly as cantools does.
"""

from __future__ import annotations

import io
import re
import time
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import msgpack
import zstandard

from edge.errors import PayloadError, SchemaMissingError
from edge.wire.columns import EPOCH_THRESHOLD, Batch
from edge.wire.diagnostics import records_from_wire
from edge.wire.payload import Payload
from edge.wire.schema import Schema, SignalInfo
from edge.wire.transform import TransformError, compile_spec

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "MAX_ARRAY",
    "WIDE_VERSION",
    "Codec",
    "DecodedPayload",
    "PayloadDecoder",
    "PayloadReader",
    "Row",
    "peek",
    "unpack",
]

_T = TypeVar("_T")

MAGIC = b"CT"
FORMAT_VERSION = 2
#: Versions :func:`unpack` reads. Version 3 is version 2 plus wide-integer columns (below): a
#: writer marks 3 only the payloads that have one, so readers of version 2 refuse those rather
#: than misread them, and read everything else as before.
_READABLE = (1, 2, 3)
WIDE_VERSION = 3
KIND_DATA, KIND_SCHEMA = 0, 1
_KIND_NAMES = {KIND_DATA: "data", KIND_SCHEMA: "schema"}
_COMPRESSION_CODES = {"none": 0, "zlib": 1, "zstd": 2}
_COMPRESSION_NAMES = {v: k for k, v in _COMPRESSION_CODES.items()}
#: Refuse to inflate a body beyond this (a corrupt or hostile payload must not exhaust memory).
MAX_BODY = 64 * 1024 * 1024
#: Longest array (a group's times, a column's rows or values) a reader takes: a writer closes a
# : batch at :data:`~edge.processing.batch.MAX_BATCH_VALUES` values, so its arrays are shorter. It
# bounds
#: the memory a payload can take by rows, as ``MAX_BODY`` does by bytes.
MAX_ARRAY = 1 << 20
_LIMITS = {"max_array_len": MAX_ARRAY, "max_map_len": MAX_ARRAY}
_HEADER = 5
#: Placeholders as long as the longest stream id the writer accepts (16 bytes: a uuid4 hex) and
#: the largest sequence number, so a size measured before the spool numbers the payload is never
#: exceeded after.
_LONGEST_STREAM = "ff" * 16
_LARGEST_SEQ = 2**64 - 1
#: Stream ids the writer accepts: lower-case hex of at most 16 bytes, which travel as bin (and
#: come back from the reader as the same string).
_STREAM_ID = re.compile(r"(?:[0-9a-f]{2}){0,16}")
#: A column with values in at least this share (3/10) of its group's rows is sent dense.
_DENSE_NUM, _DENSE_DEN = 3, 10
#: Envelope lengths (the reader ignores elements after these).
_DATA_ENVELOPE, _SCHEMA_ENVELOPE = 6, 5
#: Raw integers whose deltas do not fit msgpack's integer range are sent as they are.
_INT_MIN, _UINT_MAX = -(2**63), 2**64 - 1
_DELTA: Any = object()  # a column without a flag: delta-encoded (no flag value stands for it)
_PLAIN = 1  # column encoding flag: values not delta-encoded
#: Column encoding flag: raw integers beyond 64 bits (a signal longer than 64 bits: CAN FD
#: allows up to 512), each as big-endian two's-complement bytes (bin), nil where dense has none.
_WIDE = 2
#: Integer values spanning at most this have every delta within msgpack's range.
_SAFE_SPAN = 2**63


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
    #: The campaign that made the payload (its envelope's ``ext["campaign"]``); None for the
    #: default campaign, ``always`` (issue 11).
    campaign: str | None = None
    #: The VSS path this row is a value of (edge/vss/), None for a DBC signal's own row.
    vss_path: str | None = None
    #: Diagnostics rows (docs/diagnostics.md): the ECU that reported it, and when a DTC was
    #: first seen; None for a signal's row.
    ecu: str | None = None
    first_seen: float | None = None


class Codec:
    """Encodes batches and schemas for one stream configuration."""

    def __init__(
        self,
        compression: str = "zstd",
        level: int = 9,
        resolution: float = 0.001,
        vehicle: str = "",
    ) -> None:
        if compression not in _COMPRESSION_CODES:
            raise ValueError(f"unknown compression {compression!r}")
        self.compression = compression
        self._code = _COMPRESSION_CODES[compression]
        self._level = level
        # A 4-byte checksum per payload: a flipped bit must be an error, not other values.
        self._zstd = (
            zstandard.ZstdCompressor(level=level, write_checksum=True)
            if compression == "zstd"
            else None
        )
        self.body_version = FORMAT_VERSION  # of the last data body (see data_body)
        self.resolution_ns = round(resolution * 1e9)
        self.ticks_per_second = 1e9 / self.resolution_ns
        self.vehicle = vehicle

    def compress(self, raw: bytes) -> bytes:
        """Compress a msgpack body."""
        if self._zstd is not None:
            return self._zstd.compress(raw)
        if self.compression == "zlib":
            return zlib.compress(raw, min(self._level, 9))
        return raw

    def data_body(self, batch: Batch, schema: Schema) -> bytes:
        """The compressed body of a data payload. Sets :attr:`body_version`: the format version
        the payload must carry (:data:`WIDE_VERSION` when a column holds integers beyond 64
        bits; :meth:`envelope` passes it on)."""
        self.body_version = FORMAT_VERSION
        groups = []
        messages = schema.messages
        base = int(batch.min_tick)
        for (message_index, source_address), group in batch.groups.items():
            signals = messages[message_index].signals
            n = len(group.times)
            dense_from = n * _DENSE_NUM  # a column of k values is dense when k * 10 >= this
            columns = []
            for index, (rows, values) in sorted(group.columns.items()):
                # Integer values are sent as deltas, unless one leaves msgpack's integer range
                # (only 64-bit signals between extremes can; within a span of 2**63 none does),
                # or a value itself does (a signal beyond 64 bits: its first delta is itself).
                delta = not signals[index].is_float
                plain = False
                wide = False
                if delta:
                    low, high = min(values), max(values)
                    delta = high - low <= _SAFE_SPAN and low >= _INT_MIN and high <= _UINT_MAX
                if not delta and not signals[index].is_float:
                    deltas = _deltas(values, 0)
                    if min(values) < _INT_MIN or max(values) > _UINT_MAX:
                        wide = True
                        values = [_wide(v) for v in values]
                    elif min(deltas) < _INT_MIN or max(deltas) > _UINT_MAX:
                        plain = True
                    else:
                        values = deltas
                    delta = False
                row_field = None
                k = len(rows)
                if k == n:
                    if delta:
                        values = _deltas(values, 0)
                elif k * _DENSE_DEN >= dense_from:
                    dense: list[Any] = [None] * n
                    if delta:
                        previous = 0
                        for row, value in zip(rows, values, strict=True):
                            dense[row] = value - previous
                            previous = value
                    else:
                        for row, value in zip(rows, values, strict=True):
                            dense[row] = value
                    values = dense
                else:
                    row_field = _deltas(rows, 0)
                    if delta:
                        values = _deltas(values, 0)
                if wide:
                    self.body_version = WIDE_VERSION
                    columns.append([index, row_field, values, _WIDE])
                elif plain:
                    columns.append([index, row_field, values, _PLAIN])
                else:
                    columns.append([index, row_field, values])
            groups.append([message_index, source_address, _deltas(group.times, base), columns])
        return self.compress(msgpack.packb(groups, use_bin_type=True))

    def envelope(self, batch: Batch | None, schema: Schema) -> dict[str, Any]:
        """The envelope fields a batch (or a schema payload, batch None) has before its
        stream/sequence are known: what :meth:`pack` puts in the envelope array."""
        if batch is None:
            fields: dict[str, Any] = {
                "schema": schema.schema_id,
                "vehicle": self.vehicle,
                "created": round(time.time(), 3),
            }
            if schema.vss:  # in ext, which older readers skip (docs/format.md)
                fields["ext"] = {"vss": [v.to_wire() for v in schema.vss]}
            return fields
        return {
            "schema": schema.schema_id,
            "t0": int(batch.min_tick),
            "t1": int(batch.max_tick),
            "res": self.resolution_ns,
        }

    def size(self, kind: int, envelope: Mapping[str, Any], body: bytes) -> int:
        """The payload's size once the spool numbers it: never exceeded, whatever the number."""
        return len(self.pack(kind, envelope, body, _LONGEST_STREAM, _LARGEST_SEQ))

    def measure(self, batch: Batch, schema: Schema) -> int:
        """Encoded size of ``batch`` as a data payload (see :meth:`size`)."""
        return self.size(KIND_DATA, self.envelope(batch, schema), self.data_body(batch, schema))

    def schema_body(self, schema: Schema) -> bytes:
        """The compressed body of a schema payload."""
        return self.compress(msgpack.packb(schema.to_wire(), use_bin_type=True))

    def pack(
        self, kind: int, envelope: Mapping[str, Any], body: bytes, stream: str, seq: int
    ) -> bytes:
        """Assemble a payload from an encoded body. Raises ValueError for a stream id that is
        not lower-case hex of at most 16 bytes (the spool's are a uuid4's 32 hex digits) or a
        negative sequence number."""
        if not _STREAM_ID.fullmatch(stream):
            raise ValueError(f"stream id {stream!r} is not lower-case hex of at most 16 bytes")
        if seq < 0:
            raise ValueError(f"sequence number {seq} is negative")
        schema_id = bytes.fromhex(envelope["schema"])
        if len(schema_id) != 8:
            raise ValueError(f"schema id {envelope['schema']!r} is not 16 hex digits")
        fields: list[Any]
        if kind == KIND_DATA:
            t0 = envelope["t0"]
            span = envelope["t1"] - t0
            fields = [schema_id, bytes.fromhex(stream), seq, t0, span, envelope["res"]]
        else:
            vehicle, created = envelope["vehicle"], envelope["created"]
            fields = [schema_id, bytes.fromhex(stream), seq, vehicle, created]
        ext = envelope.get("ext")
        if ext:
            fields.append(dict(ext))
        version = envelope.get("version", FORMAT_VERSION)
        header = bytes((MAGIC[0], MAGIC[1], version, kind, self._code))
        packed: bytes = msgpack.packb(fields, use_bin_type=True)
        return header + packed + body

    def payload(
        self,
        kind: int,
        envelope: Mapping[str, Any],
        body: bytes,
        stream: str,
        seq: int,
    ) -> Payload:
        """A spoolable :class:`Payload`: bytes plus the properties uplinks send beside them."""
        properties = {
            "kind": _KIND_NAMES[kind],
            "stream": stream,
            "seq": str(seq),
            "schema": str(envelope["schema"]),
            "vehicle": self.vehicle,
            "compression": self.compression,
            "format": str(envelope.get("version", FORMAT_VERSION)),
        }
        return Payload(self.pack(kind, envelope, body, stream, seq), properties)


@dataclass(frozen=True, slots=True)
class DecodedPayload:
    """A payload taken apart: its kind, format version, envelope and (decompressed, unpacked)
    body. ``envelope`` is a dict with the keys of version 1's envelope map, whatever the
    version: data ``schema``, ``stream``, ``seq``, ``t0``, ``t1``, ``res``, ``tb`` (and, in
    version 1, ``vehicle`` and ``created``); schema ``schema``, ``stream``, ``seq``, ``vehicle``,
    ``created``."""

    kind: str
    version: int
    compression: str
    envelope: Mapping[str, Any]
    body: Any


def peek(data: bytes) -> DecodedPayload:
    """A payload's kind, version, compression and envelope, checked as :func:`unpack` checks
    them; its body is left as it is (compressed bytes), so this is cheap whatever it holds."""
    return _open(data, decompress=False)


def _open(data: bytes, *, decompress: bool = True) -> DecodedPayload:
    """:func:`unpack` but for the body, left as msgpack bytes (decompressed or not)."""
    if len(data) < _HEADER or data[:2] != MAGIC:
        raise PayloadError("not a can-telemetry payload (bad magic)")
    version, kind, code = data[2], data[3], data[4]
    if version not in _READABLE:
        raise PayloadError(f"unsupported format version {version} (this reader knows 1, 2 and 3)")
    if kind not in _KIND_NAMES:
        raise PayloadError(f"unknown payload kind {kind}")
    if code not in _COMPRESSION_NAMES:
        raise PayloadError(f"unknown compression code {code}")
    unpacker = msgpack.Unpacker(raw=False, strict_map_key=False, max_buffer_size=len(data))
    unpacker.feed(data[_HEADER:])
    try:
        envelope = unpacker.unpack()
    except (msgpack.OutOfData, ValueError, TypeError, msgpack.StackError) as exc:
        raise PayloadError(f"truncated or malformed envelope: {_short(exc)}") from exc
    if version == 1:
        if not isinstance(envelope, dict):
            raise PayloadError("envelope is not a map")
    else:
        envelope = _envelope_v2(kind, envelope)
    compressed = data[_HEADER + unpacker.tell() :]
    raw = _decompress(_COMPRESSION_NAMES[code], compressed) if decompress else compressed
    return DecodedPayload(_KIND_NAMES[kind], version, _COMPRESSION_NAMES[code], envelope, raw)


def unpack(data: bytes) -> DecodedPayload:
    """Take a payload of version 1 or 2 apart. Raises :class:`PayloadError` for anything
    malformed, and for a body with an array longer than :data:`MAX_ARRAY` (which no writer
    makes)."""
    opened = _open(data)
    try:
        body = msgpack.unpackb(opened.body, raw=False, strict_map_key=False, **_LIMITS)
    except (ValueError, TypeError, msgpack.FormatError, msgpack.StackError) as exc:
        raise PayloadError(f"malformed body: {_short(exc)}") from exc
    return DecodedPayload(opened.kind, opened.version, opened.compression, opened.envelope, body)


def _groups(raw: bytes) -> Iterator[tuple[Any, Any, Any, Iterator[Any]]]:
    """The groups of a data body (msgpack bytes) read one by one, each with its columns read
    one by one: memory holds one time column and one value column at a time."""
    unpacker = msgpack.Unpacker(
        raw=False, strict_map_key=False, max_buffer_size=max(1, len(raw)), **_LIMITS
    )
    unpacker.feed(raw)

    def columns(count: int) -> Iterator[Any]:
        for _ in range(count):
            try:
                column = unpacker.unpack()
            except (msgpack.OutOfData, ValueError, TypeError, msgpack.StackError) as exc:
                raise PayloadError(f"malformed body: {_short(exc)}") from exc
            if not isinstance(column, list):
                raise PayloadError("malformed column")
            yield column

    try:
        count = unpacker.read_array_header()
    except (msgpack.OutOfData, ValueError, TypeError, msgpack.StackError) as exc:
        raise PayloadError(f"malformed body: {_short(exc)}") from exc
    for _ in range(count):
        try:
            if unpacker.read_array_header() != 4:
                raise PayloadError("malformed group")
            message_index, source_address, time_deltas = (unpacker.unpack() for _ in range(3))
            width = unpacker.read_array_header()
        except (msgpack.OutOfData, ValueError, TypeError, msgpack.StackError) as exc:
            raise PayloadError(f"malformed body: {_short(exc)}") from exc
        group_columns = columns(width)
        yield message_index, source_address, time_deltas, group_columns
        for _ in group_columns:  # what the caller left unread, so the next group starts right
            pass
    if unpacker.tell() != len(raw):
        raise PayloadError("bytes after the end of the data body")


def _envelope_v2(kind: int, fields: object) -> dict[str, Any]:
    """A version 2 envelope array as the dict of version 1's keys (see :class:`DecodedPayload`).
    Elements after the known ones are ignored."""
    if not isinstance(fields, list):
        raise PayloadError("envelope is not an array")
    length = _DATA_ENVELOPE if kind == KIND_DATA else _SCHEMA_ENVELOPE
    if len(fields) < length:
        raise PayloadError(
            f"{_KIND_NAMES[kind]} envelope has {len(fields)} elements, expected {length}"
        )
    schema_id, stream, seq = fields[:3]
    if type(schema_id) is not bytes or len(schema_id) != 8:
        raise PayloadError("envelope schema id is not 8 bytes")
    if type(stream) is not bytes:
        raise PayloadError("envelope stream id is not bytes")
    if type(seq) is not int or seq < 0:
        raise PayloadError(f"envelope seq {_shorter(seq)} is not an unsigned integer")
    env: dict[str, Any] = {"schema": schema_id.hex(), "stream": stream.hex(), "seq": seq}
    if kind == KIND_DATA:
        t0, span, res = fields[3:6]
        if type(t0) is not int:
            raise PayloadError(f"envelope t0 {_shorter(t0)} is not an integer")
        if type(span) is not int or span < 0:
            raise PayloadError(f"envelope span {_shorter(span)} is not an unsigned integer")
        if type(res) is not int or res <= 0:
            raise PayloadError(f"envelope res {_shorter(res)} is not a positive integer")
        epoch = t0 * res / 1e9 > EPOCH_THRESHOLD  # within float range: |t0|, res < 2**64
        env.update(t0=t0, t1=t0 + span, res=res, tb="epoch" if epoch else "relative")
    else:
        vehicle, created = fields[3:5]
        if type(vehicle) is not str:
            raise PayloadError(f"envelope vehicle {_shorter(vehicle)} is not a string")
        if type(created) not in (float, int):
            raise PayloadError(f"envelope created {_shorter(created)} is not a number")
        env.update(vehicle=vehicle, created=created)
    # Readers have always ignored trailing elements: one that is not a map of string keys is one
    # they do not know, not a malformed envelope.
    ext = fields[length] if len(fields) > length else None
    if ext and isinstance(ext, dict) and all(type(k) is str for k in ext):
        env["ext"] = ext
    return env


def _shorter(value: object) -> str:
    """A field of a malformed payload for an error message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _short(exc: BaseException) -> str:
    """An exception as a short message (msgpack's ExtraData repr carries the whole rest)."""
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 120 else text[:117] + "..."


def _decompress(compression: str, data: bytes) -> bytes:
    try:
        if compression == "zstd":
            declared = zstandard.frame_content_size(data)
            if declared > MAX_BODY:
                raise PayloadError(f"zstd body declares {declared} bytes, over {MAX_BODY}")
            if declared >= 0:  # one shot: checks the frame is whole and its checksum
                return zstandard.ZstdDecompressor().decompress(data)
            # No size in the header: stream with a read limit.
            with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data)) as reader:
                out = reader.read(MAX_BODY + 1)
            if len(out) > MAX_BODY:
                raise PayloadError(f"zstd body inflates beyond {MAX_BODY} bytes")
            return out
        if compression == "zlib":
            inflater = zlib.decompressobj()
            out = inflater.decompress(data, MAX_BODY)
            if inflater.unconsumed_tail or not inflater.eof:
                raise PayloadError("zlib body truncated or larger than allowed")
            if inflater.unused_data:
                raise PayloadError("bytes after the end of the zlib body")
            return out
    except (zstandard.ZstdError, zlib.error) as exc:
        raise PayloadError(f"corrupt {compression} body: {_short(exc)}") from exc
    return data


class PayloadReader:
    """Turns payloads back into rows. Feed schema payloads first (they come first in a stream and
    again periodically); data payloads whose schema was not seen raise SchemaMissingError.

    A series that feeds VSS paths (the schema's ``vss``) gives, beside each of its rows, one row
    per path with ``vss_path`` set and the VSS value (a string value goes in ``choice``, with
    the DBC value in ``value``); a value the transform maps to nothing gives none. ``vss=False``
    leaves them out."""

    def __init__(self, *, vss: bool = True) -> None:
        self.schemas: dict[str, Schema] = {}
        self.vss = vss
        # schema id -> (message, signal) -> [(path, unit, transform)], compiled once per schema
        self._vss: dict[str, dict[tuple[int, int], list[tuple[str, str, Any]]]] = {}

    def add_schema(self, schema: Schema) -> None:
        """Make a schema known (e.g. one the cloud kept from earlier). Raises PayloadError
        when its VSS transforms do not compile."""
        self._vss[schema.schema_id] = _vss_columns(schema) if self.vss else {}
        self.schemas[schema.schema_id] = schema

    def decode(self, data: bytes) -> tuple[DecodedPayload, list[Row]]:
        """Decode one payload: a schema payload is remembered and gives no rows."""
        payload = unpack(data)
        if payload.kind == "schema":
            ext = payload.envelope.get("ext", {})
            schema = Schema.from_wire(payload.body, ext.get("vss"))
            if schema.schema_id != payload.envelope.get("schema"):
                raise PayloadError("schema payload does not match its schema id")
            self.add_schema(schema)
            return payload, []
        # A diagnostics payload has its rows in ext and an empty body, which needs no schema.
        diag = payload.envelope.get("ext", {}).get("diag")
        rows = [] if diag is not None and payload.body == [] else list(self._rows(payload))
        if diag is not None:
            rows.extend(_diagnostics_rows(payload.envelope, diag))
        return payload, rows

    def rows(self, data: bytes) -> list[Row]:
        """The rows of one payload (none for a schema payload)."""
        return self.decode(data)[1]

    def iter_rows(self, data: bytes) -> Iterator[Row]:
        """:meth:`rows` as they are decoded, holding one column of the payload at a time (a
        schema payload is remembered and gives none). Errors come as the rows are read."""
        opened = _open(data)
        if opened.kind != "data" or "diag" in opened.envelope.get("ext", {}):
            yield from self.decode(data)[1]  # small: decoded whole
            return
        yield from self._rows(opened, _groups(opened.body))

    def _rows(self, payload: DecodedPayload, groups: Iterable[Any] | None = None) -> Iterator[Row]:
        """The rows of a data payload whose body is ``groups`` (default: ``payload.body``)."""
        env = payload.envelope
        schema_id = env.get("schema")
        schema = self.schemas.get(str(schema_id))
        if schema is None:
            raise SchemaMissingError(str(schema_id))
        nils = payload.version >= 2  # version 1 has no nil in a column
        flags = (_DELTA, _PLAIN, _WIDE) if payload.version >= WIDE_VERSION else (_DELTA, _PLAIN)
        campaign = env.get("ext", {}).get("campaign")
        if not isinstance(campaign, str):
            campaign = None
        vss_columns = self._vss.get(schema.schema_id, {})
        try:
            t0, res = env["t0"], env["res"]
            if type(t0) is not int or type(res) is not int or res <= 0:
                raise PayloadError("envelope t0/res must be integers (res > 0)")
            if groups is None:
                groups = payload.body
            for message_index, source_address, time_deltas, columns in groups:
                if source_address is not None and not (
                    type(source_address) is int and 0 <= source_address <= 0xFF
                ):
                    raise PayloadError(f"J1939 source address {source_address!r} out of range")
                message = _item(schema.messages, message_index, "message")
                bus = _item(schema.buses, message.bus, "bus")
                times = _undelta(_ints(time_deltas), t0)
                seconds = [t * res / 1_000_000_000 for t in times]
                for column in columns:
                    flag = column[3] if len(column) == 4 else _DELTA
                    if not 3 <= len(column) <= 4 or flag not in flags:
                        raise PayloadError("malformed column")
                    signal_index, row_deltas, values = column[:3]
                    signal = _item(message.signals, signal_index, "signal")
                    if row_deltas is None:
                        rows: Sequence[int] = range(len(times))
                        if nils and isinstance(values, list) and None in values:
                            # dense: one entry per row, nil where the signal has no value
                            if len(values) != len(times):
                                raise PayloadError("dense column length does not match its group")
                            rows = [row for row, v in enumerate(values) if v is not None]
                            values = [v for v in values if v is not None]
                    else:
                        rows = _undelta(_ints(row_deltas), 0)
                        if rows and (min(rows) < 0 or max(rows) >= len(times)):
                            raise PayloadError("row number outside its group")
                    if signal.is_float:
                        values = _numbers(values)
                    elif flag == _PLAIN:
                        values = _ints(values)
                    elif flag == _WIDE:
                        values = _wide_ints(values)
                    else:
                        values = _undelta(_ints(values), 0)
                    if len(values) != len(rows):
                        raise PayloadError("column length does not match its rows")
                    links = vss_columns.get((message_index, signal_index))
                    if links:
                        yield from _with_vss(
                            (seconds[row] for row in rows),
                            values,
                            links,
                            bus,
                            message.name,
                            signal,
                            source_address,
                            campaign,
                        )
                        continue
                    for row, raw in zip(rows, values, strict=True):
                        yield Row(
                            seconds[row],
                            bus,
                            message.name,
                            signal.name,
                            signal.physical(raw),
                            signal.unit,
                            signal.choice(raw),
                            source_address,
                            campaign,
                        )
        except PayloadError:
            raise
        except (KeyError, IndexError, TypeError, ValueError, OverflowError) as exc:
            raise PayloadError(f"malformed data body: {_short(exc)}") from exc


_DIAG_MESSAGES = {"dtc": "DTC", "vin": "VIN", "did": "DID"}


def _diagnostics_rows(envelope: Mapping[str, Any], items: object) -> list[Row]:
    """The rows of an envelope's ``ext["diag"]`` records (docs/diagnostics.md): message
    ``DTC``/``VIN``/``DID``, signal the DTC text or the DID's name, the event or text in
    ``choice``."""
    try:
        records = records_from_wire(items, envelope["t0"], envelope["res"])
    except ValueError as exc:
        raise PayloadError(f"malformed diagnostics record: {exc}") from exc
    return [
        Row(
            r.time,
            r.bus,
            _DIAG_MESSAGES.get(r.kind, r.kind),
            r.name,
            r.value,
            "",
            r.text,
            r.source,
            ecu=r.ecu,
            first_seen=r.first_seen,
        )
        for r in records
    ]


def _vss_columns(schema: Schema) -> dict[tuple[int, int], list[tuple[str, str, Any]]]:
    """The schema's VSS links by (message, signal) index, their transforms compiled."""
    columns: dict[tuple[int, int], list[tuple[str, str, Any]]] = {}
    for link in schema.vss:
        try:
            transform = compile_spec(link.transform, link.datatype)
        except TransformError as exc:
            raise PayloadError(f"malformed schema: VSS {link.path}: {exc}") from exc
        columns.setdefault((link.message, link.signal), []).append(
            (link.path, link.unit, transform.apply)
        )
    return columns


def _with_vss(
    times: Iterator[float],
    values: Sequence[Any],
    links: list[tuple[str, str, Any]],
    bus: str,
    message: str,
    signal: SignalInfo,
    source: int | None,
    campaign: str | None,
) -> Iterator[Row]:
    """A series' rows, each followed by its VSS rows (see :class:`PayloadReader`)."""
    name, unit = signal.name, signal.unit
    for t, raw in zip(times, values, strict=True):
        physical = signal.physical(raw)
        choice = signal.choice(raw)
        yield Row(t, bus, message, name, physical, unit, choice, source, campaign=campaign)
        for path, vss_unit, apply in links:
            value = apply(physical, choice)
            if value is None:  # the transform defines no VSS value for this one
                continue
            # A string value goes in choice, with the DBC value beside it in value.
            text = value if isinstance(value, str) else None
            yield Row(
                t,
                bus,
                message,
                name,
                physical if text is not None else value,
                vss_unit,
                text,
                source,
                campaign=campaign,
                vss_path=path,
            )


def _item(items: Sequence[_T], index: object, what: str) -> _T:
    """``items[index]`` for a non-negative integer index (negative ones count from the end in
    Python, which a malformed payload must not get away with)."""
    if type(index) is not int or not 0 <= index < len(items):
        raise PayloadError(f"{what} index {index!r} out of range")
    return items[index]


def _wide(value: int) -> bytes:
    """An integer as the fewest big-endian two's-complement bytes that hold it."""
    return value.to_bytes((value.bit_length() + 8) // 8, "big", signed=True)


def _wide_ints(values: object) -> list[int]:
    if not isinstance(values, list) or not all(type(v) is bytes and v for v in values):
        raise PayloadError("expected a list of wide integers (non-empty bin)")
    return [int.from_bytes(v, "big", signed=True) for v in values]


def _ints(values: object) -> list[int]:
    if not isinstance(values, list) or not all(type(v) is int for v in values):
        raise PayloadError("expected a list of integers")
    return values


def _numbers(values: object) -> list[int | float]:
    if not isinstance(values, list) or not all(type(v) in (int, float) for v in values):
        raise PayloadError("expected a list of numbers")
    return values


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


#: The former name of :class:`PayloadReader`, kept for existing callers.
PayloadDecoder = PayloadReader
