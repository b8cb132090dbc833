"""Readers of IoT Hub routing and Event Hubs Capture Avro files (the hubs' exact schemas) and of
the file uplink's outbox."""

from __future__ import annotations

import datetime as dt
import io
from pathlib import Path

import fastavro
import pytest

from edge.lake.avro import (
    CAPTURE_SCHEMA,
    ROUTING_SCHEMA,
    read_avro,
    source_files,
    write_capture,
    write_routing,
)

WHEN = dt.datetime(2026, 12, 6, 20, 25, 26, 552000, tzinfo=dt.UTC)
MESSAGE = (b"CT...", {"vehicle": "car-7"}, {"connectionDeviceId": "dev-7"}, WHEN)


def test_routing_files_give_body_device_vehicle_and_arrival() -> None:
    buffer = io.BytesIO()
    write_routing(buffer, [MESSAGE, (None, {}, {"connectionDeviceId": "dev-8"}, WHEN)])
    buffer.seek(0)
    assert fastavro.reader(buffer).writer_schema["name"] == "Microsoft.Azure.Devices.Message"
    buffer.seek(0)
    (batch,) = read_avro(buffer, "hub/0/2026/12/06/20/25.avro")
    assert batch.to_pylist() == [
        {
            "body": b"CT...",
            "device": "dev-7",
            "vehicle": "car-7",
            "enqueued": WHEN,
            "origin": "hub/0/2026/12/06/20/25.avro#0",
        },
        {
            "body": None,
            "device": "dev-8",
            "vehicle": None,
            "enqueued": WHEN,
            "origin": "hub/0/2026/12/06/20/25.avro#1",
        },
    ]


def test_capture_files_give_the_iothub_device_and_second_resolution_arrival() -> None:
    buffer = io.BytesIO()
    write_capture(buffer, [MESSAGE])
    buffer.seek(0)
    records = list(fastavro.reader(buffer))
    assert records[0]["EnqueuedTimeUtc"] == "12/6/2026 8:25:26 PM"
    buffer.seek(0)
    (batch,) = read_avro(buffer, "capture.avro")
    row = batch.to_pylist()[0]
    assert row["device"] == "dev-7" and row["enqueued"] == WHEN.replace(microsecond=0)


def test_other_avro_files_are_refused_by_name() -> None:
    buffer = io.BytesIO()
    schema = {"type": "record", "name": "Other", "fields": [{"name": "x", "type": "int"}]}
    fastavro.writer(buffer, fastavro.parse_schema(schema), [{"x": 1}])
    buffer.seek(0)
    with pytest.raises(ValueError, match="neither IoT Hub's nor Capture's"):
        list(read_avro(buffer, "other.avro"))
    assert ROUTING_SCHEMA["name"] == "Message" and CAPTURE_SCHEMA["name"] == "EventData"


def test_source_files_walk_folders_and_skip_temporary_names(tmp_path: Path) -> None:
    for name in ("a/1.avro", "a/.tmp.avro", "b/x-000000000001.data.ctl", "b/notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = source_files([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a/1.avro",
        "b/x-000000000001.data.ctl",
    ]
    with pytest.raises(FileNotFoundError):
        source_files([tmp_path / "missing"])
