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


# The schema in the header of a real Event Hubs Capture file, verbatim (as published by Microsoft
# and seen in capture files in the wild), and IoT Hub routing's as the issue states it: files
# written with these exact strings, not with the module's constants, are read.
_PUBLISHED_CAPTURE = (
    '{"type":"record","name":"EventData","namespace":"Microsoft.ServiceBus.Messaging","fields":['
    '{"name":"SequenceNumber","type":"long"},{"name":"Offset","type":"string"},'
    '{"name":"EnqueuedTimeUtc","type":"string"},'
    '{"name":"SystemProperties","type":{"type":"map","values":["long","double","string","bytes"]}},'
    '{"name":"Properties","type":{"type":"map","values":["long","double","string","bytes","null"]}},'
    '{"name":"Body","type":["null","bytes"]}]}'
)
_ROUTING = (
    '{"type":"record","name":"Message","namespace":"Microsoft.Azure.Devices","fields":['
    '{"name":"EnqueuedTimeUtc","type":"string"},'
    '{"name":"Properties","type":{"type":"map","values":"string"}},'
    '{"name":"SystemProperties","type":{"type":"map","values":"string"}},'
    '{"name":"Body","type":["null","bytes"]}]}'
)


def test_files_in_the_hubs_published_schemas_are_read_and_ours_match_them() -> None:
    import json

    capture = io.BytesIO()
    record = {
        "SequenceNumber": 7,
        "Offset": "4294967296",
        "EnqueuedTimeUtc": "12/6/2026 8:25:26 PM",
        "SystemProperties": {"iothub-connection-device-id": b"dev-7", "x-opt-sequence-number": 7},
        "Properties": {"vehicle": "car-7", "seq": 3},
        "Body": b"CT...",
    }
    fastavro.writer(capture, fastavro.parse_schema(json.loads(_PUBLISHED_CAPTURE)), [record])
    routing = io.BytesIO()
    message = {
        "EnqueuedTimeUtc": "2026-12-06T20:25:26.5520000Z",
        "Properties": {"vehicle": "car-7"},
        "SystemProperties": {"connectionDeviceId": "dev-7", "messageId": "m-1"},
        "Body": b"CT...",
    }
    fastavro.writer(routing, fastavro.parse_schema(json.loads(_ROUTING)), [message])
    for buffer, when in ((capture, WHEN.replace(microsecond=0)), (routing, WHEN)):
        buffer.seek(0)
        (batch,) = read_avro(buffer, "hub.avro")
        (row,) = batch.to_pylist()
        assert (row["body"], row["device"], row["vehicle"], row["enqueued"]) == (
            b"CT...",
            "dev-7",
            "car-7",
            when,
        )
    canonical = fastavro.schema.to_parsing_canonical_form
    assert canonical(CAPTURE_SCHEMA) == canonical(json.loads(_PUBLISHED_CAPTURE))
    assert canonical(ROUTING_SCHEMA) == canonical(json.loads(_ROUTING))
