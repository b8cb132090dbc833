"""Readers of the three ways payloads leave IoT Hub, as Arrow batches of
:data:`~edge.lake.tables.PAYLOAD_INPUT`:

* IoT Hub message routing to storage: Avro files of ``Microsoft.Azure.Devices.Message`` records
  (:data:`ROUTING_SCHEMA`) in ``{iothub}/{partition}/{YYYY}/{MM}/{DD}/{HH}/{mm}`` folders;
* Event Hubs Capture (also behind IoT Hub's built-in endpoint): Avro files of
  ``Microsoft.ServiceBus.Messaging.EventData`` records (:data:`CAPTURE_SCHEMA`);
* the ``file`` uplink's outbox: one ``*.ctl`` file per payload (arrival = the file's mtime).

The writers (:func:`write_routing`, :func:`write_capture`) write the same schemas, as the hub
does: tests, the benchmark and anyone replaying an outbox as the hub would use them.
"""

from __future__ import annotations

import datetime as dt
import io
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO

import fastavro
import pyarrow as pa

from edge.lake.tables import PAYLOAD_INPUT

__all__ = [
    "CAPTURE_SCHEMA",
    "ROUTING_SCHEMA",
    "HubMessage",
    "read_avro",
    "read_content",
    "read_outbox_file",
    "read_source",
    "source_files",
    "write_capture",
    "write_routing",
]

#: IoT Hub message routing to Azure Storage (Avro encoding).
ROUTING_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "Message",
    "namespace": "Microsoft.Azure.Devices",
    "fields": [
        {"name": "EnqueuedTimeUtc", "type": "string"},
        {"name": "Properties", "type": {"type": "map", "values": "string"}},
        {"name": "SystemProperties", "type": {"type": "map", "values": "string"}},
        {"name": "Body", "type": ["null", "bytes"]},
    ],
}

#: Event Hubs Capture.
CAPTURE_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "EventData",
    "namespace": "Microsoft.ServiceBus.Messaging",
    "fields": [
        {"name": "SequenceNumber", "type": "long"},
        {"name": "Offset", "type": "string"},
        {"name": "EnqueuedTimeUtc", "type": "string"},
        {
            "name": "SystemProperties",
            "type": {"type": "map", "values": ["long", "double", "string", "bytes"]},
        },
        {
            "name": "Properties",
            "type": {"type": "map", "values": ["long", "double", "string", "bytes", "null"]},
        },
        {"name": "Body", "type": ["null", "bytes"]},
    ],
}

#: System property names of the sending device: IoT Hub routing's, then the ``iothub-*``
#: annotations Event Hubs Capture keeps from IoT Hub's built-in endpoint.
_DEVICE_KEYS = ("connectionDeviceId", "iothub-connection-device-id")
_BATCH_ROWS = 4096

HubMessage = tuple[bytes | None, Mapping[str, str], Mapping[str, str], dt.datetime]
"""body, application properties, system properties, enqueued time (UTC)."""


def _enqueued(text: object) -> dt.datetime | None:
    """IoT Hub writes ISO 8601 (``2026-12-06T20:25:26.5520000Z``, 7 fraction digits); Capture
    writes ``12/6/2026 8:25:26 PM``."""
    if not isinstance(text, str) or not text:
        return None
    value = text.strip()
    if "/" in value:
        try:
            parsed = dt.datetime.strptime(value, "%m/%d/%Y %I:%M:%S %p")
        except ValueError:
            return None
        return parsed.replace(tzinfo=dt.UTC)
    if value.endswith("Z"):
        value = value[:-1] + "+00:00"
    head, dot, rest = value.partition(".")
    if dot:  # Python reads at most 6 fraction digits
        digits = len(rest) - len(rest.lstrip("0123456789"))
        value = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.replace(tzinfo=dt.UTC) if parsed.tzinfo is None else parsed.astimezone(dt.UTC)


def _text(value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def read_avro(stream: BinaryIO, origin: str) -> Iterator[pa.RecordBatch]:
    """Payload batches from one Avro file of either hub schema (told apart by the record's
    name). Raises ValueError for another schema or a file that is not Avro."""
    reader = fastavro.reader(stream)
    schema = reader.writer_schema
    name = schema.get("name", "") if isinstance(schema, dict) else ""
    if name not in ("Microsoft.Azure.Devices.Message", "Microsoft.ServiceBus.Messaging.EventData"):
        raise ValueError(f"{origin}: Avro records {name!r} are neither IoT Hub's nor Capture's")
    columns: dict[str, list[Any]] = {f.name: [] for f in PAYLOAD_INPUT}
    for index, record in enumerate(reader):
        assert isinstance(record, dict)
        system = record.get("SystemProperties") or {}
        properties = record.get("Properties") or {}
        columns["body"].append(record.get("Body"))
        device = next((system[k] for k in _DEVICE_KEYS if system.get(k) is not None), None)
        columns["device"].append(_text(device))
        columns["vehicle"].append(_text(properties.get("vehicle")))
        columns["enqueued"].append(_enqueued(record.get("EnqueuedTimeUtc")))
        columns["origin"].append(f"{origin}#{index}")
        if len(columns["body"]) >= _BATCH_ROWS:
            yield pa.RecordBatch.from_pydict(columns, schema=PAYLOAD_INPUT)
            columns = {f.name: [] for f in PAYLOAD_INPUT}
    if columns["body"]:
        yield pa.RecordBatch.from_pydict(columns, schema=PAYLOAD_INPUT)


def read_outbox_file(path: Path) -> pa.RecordBatch:
    """One payload file of the ``file`` uplink's outbox."""
    mtime = dt.datetime.fromtimestamp(path.stat().st_mtime, dt.UTC)
    return pa.RecordBatch.from_pydict(
        {
            "body": [path.read_bytes()],
            "device": [None],
            "vehicle": [None],
            "enqueued": [mtime],
            "origin": [str(path)],
        },
        schema=PAYLOAD_INPUT,
    )


def source_files(sources: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The Avro (``*.avro``) and outbox (``*.ctl``) files of files and folders (recursively,
    names starting with a dot skipped: temporary files), sorted. Raises FileNotFoundError for a
    source that does not exist."""
    found: list[Path] = []
    for source in sources:
        path = Path(source)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found.extend(
                    Path(root, f)
                    for f in sorted(files)
                    if not f.startswith(".") and f.endswith((".avro", ".ctl"))
                )
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return found


def read_content(
    name: str, content: bytes, modified: dt.datetime | None
) -> Iterator[pa.RecordBatch]:
    """Payload batches of a file already in memory (Spark's ``binaryFile`` rows): an outbox
    payload when ``name`` ends in ``.ctl`` (arrival = ``modified``), else Avro."""
    if name.endswith(".ctl"):
        yield pa.RecordBatch.from_pydict(
            {
                "body": [content],
                "device": [None],
                "vehicle": [None],
                "enqueued": [modified],
                "origin": [name],
            },
            schema=PAYLOAD_INPUT,
        )
        return
    yield from read_avro(io.BytesIO(content), name)


def read_source(path: Path) -> Iterator[pa.RecordBatch]:
    """Payload batches of one file: an outbox payload (``.ctl``) or an Avro file."""
    if path.suffix == ".ctl":
        yield read_outbox_file(path)
        return
    with path.open("rb") as stream:
        yield from read_avro(stream, str(path))


def _routing_time(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"


def write_routing(stream: BinaryIO, messages: Iterable[HubMessage]) -> None:
    """Write an Avro file as IoT Hub message routing does."""
    records = (
        {
            "EnqueuedTimeUtc": _routing_time(when),
            "Properties": dict(properties),
            "SystemProperties": {**system, "enqueuedTime": _routing_time(when)},
            "Body": body,
        }
        for body, properties, system, when in messages
    )
    fastavro.writer(stream, fastavro.parse_schema(ROUTING_SCHEMA), records, codec="deflate")


def write_capture(
    stream: BinaryIO, messages: Iterable[HubMessage], first_sequence: int = 0
) -> None:
    """Write an Avro file as Event Hubs Capture does (from IoT Hub's built-in endpoint: the
    device id travels as ``iothub-connection-device-id``)."""
    records = (
        {
            "SequenceNumber": first_sequence + i,
            "Offset": str((first_sequence + i) * 1024),
            "EnqueuedTimeUtc": when.astimezone(dt.UTC).strftime("%-m/%-d/%Y %-I:%M:%S %p"),
            "SystemProperties": {
                "iothub-connection-device-id": system.get("connectionDeviceId", ""),
                "iothub-connection-module-id": system.get("connectionModuleId", ""),
                "x-opt-sequence-number": first_sequence + i,
            },
            "Properties": dict(properties),
            "Body": body,
        }
        for i, (body, properties, system, when) in enumerate(messages)
    )
    fastavro.writer(stream, fastavro.parse_schema(CAPTURE_SCHEMA), records, codec="deflate")
