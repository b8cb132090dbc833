"""Diagnostics in the pipeline: the records travel as payloads of the same stream (file uplink),
``edge.wire.codec`` and ``can-telemetry decode`` give them back as rows; OBD-II answers become
signals through the bundled OBD-II DBC; a listen-only bus never sees a frame from us."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import can
import pytest

from edge.config.model import parse_config
from edge.diagnostics.service import DTC_PRIORITY, DiagnosticsWriter
from edge.pipeline import Pipeline
from edge.simulator.ecus import DEMO_VIN, SimulatedEcus
from edge.simulator.vehicle import OBD2_DBC
from edge.wire.codec import PayloadReader, Row
from edge.wire.diagnostics import DiagRecord
from tests.support.diagnostics import diag_config
from tests.support.waiting import wait_for


def outbox_rows(outbox: Path) -> list[Row]:
    decoder = PayloadReader()
    files = sorted(outbox.glob("*.ctl"), key=lambda f: (".schema." not in f.name, f.name))
    return [row for f in files for row in decoder.rows(f.read_bytes())]


def pipeline_config(tmp_path: Path, channel: str, **overrides: Any) -> Any:
    data = diag_config(channel, **overrides)
    data["buses"][0]["dbc"].append(str(OBD2_DBC))
    data["batch"] = {"max_age": 600.0}  # data batches close only at stop
    data["spool"] = {"path": str(tmp_path / "spool.db")}
    data["uplink"] = {"type": "file", "path": str(tmp_path / "outbox")}
    return parse_config(data)


def test_dtcs_vin_and_pids_travel_in_the_stream(
    tmp_path: Path, vehicle_channel: str, ecus: SimulatedEcus
) -> None:
    pipeline = Pipeline(pipeline_config(tmp_path, vehicle_channel))
    pipeline.start()
    outbox = tmp_path / "outbox"
    try:
        # Sent at once, long before the data batch (ten minutes) closes.
        wait_for(
            lambda: (
                {"P0700", "P0A80", "SPN 190 FMI 2"}
                <= {r.signal for r in outbox_rows(outbox) if r.message == "DTC"}
            ),
            what="DTC rows in the outbox",
        )
        ecus.uds["BMS"].dtcs = {}
        wait_for(
            lambda: any(r.choice == "cleared" for r in outbox_rows(outbox)), what="cleared DTC"
        )
        time.sleep(1.0)  # a few PID periods
    finally:
        pipeline.stop(drain_timeout=5)
    rows = outbox_rows(outbox)
    dtcs = [r for r in rows if r.message == "DTC"]
    p0a80 = [(r.ecu, r.choice, r.value) for r in dtcs if r.signal == "P0A80"]
    assert p0a80 == [("BMS", "appeared", 0x2F), ("BMS", "cleared", 0)]
    appeared = next(r for r in dtcs if r.signal == "P0A80")
    assert appeared.first_seen == appeared.time
    vin = [r for r in rows if r.message == "VIN"]
    assert vin[0].choice == DEMO_VIN and vin[0].ecu == "OBD"
    did = next(r for r in rows if r.message == "DID")
    assert (did.ecu, did.signal, did.choice) == ("TCM", "VIN", DEMO_VIN)
    # Mode 01 answers, decoded by the OBD-II DBC like any frame.
    rpm = [r for r in rows if r.signal == "S1_PID_0C_EngineRPM"]
    assert rpm and rpm[0].unit == "rpm" and rpm[0].value == 800.0
    assert any(r.signal == "S1_PID_0D_VehicleSpeed" for r in rows)
    assert pipeline.diagnostics_writer.payloads >= 3

    decoded = subprocess.run(
        [sys.executable, "-m", "edge", "decode", str(outbox)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    lines = [json.loads(line) for line in decoded.stdout.splitlines()]
    dtc_line = next(x for x in lines if x["message"] == "DTC" and x["signal"] == "P0700")
    assert dtc_line["ecu"] == "TCM" and dtc_line["choice"] == "appeared"


def test_a_listen_only_bus_never_sees_a_frame_from_us(
    tmp_path: Path, vehicle_channel: str, ecus: SimulatedEcus
) -> None:
    quiet = vehicle_channel + "-quiet"
    data = diag_config(vehicle_channel)
    data["buses"].append({"name": "quiet", "channel": quiet, "dbc": data["buses"][0]["dbc"]})
    data["spool"] = {"path": str(tmp_path / "spool.db")}
    data["uplink"] = {"type": "file", "path": str(tmp_path / "outbox")}
    config = parse_config(data)
    assert config.diagnostics.for_bus("quiet") is None
    seen: list[can.Message] = []
    with can.Bus(interface="virtual", channel=quiet) as listener:
        notifier = can.Notifier(listener, [seen.append])
        pipeline = Pipeline(config)
        pipeline.start()
        try:
            wait_for(lambda: sum(ecus.requests.values()) >= 5, what="requests on the other bus")
            time.sleep(0.5)
        finally:
            pipeline.stop()
            notifier.stop()
    assert seen == []


def test_no_diagnostics_table_transmits_nothing(tmp_path: Path, vehicle_channel: str) -> None:
    data = diag_config(vehicle_channel)
    del data["diagnostics"]
    data["spool"] = {"path": str(tmp_path / "spool.db")}
    data["uplink"] = {"type": "file", "path": str(tmp_path / "outbox")}
    seen: list[can.Message] = []
    with can.Bus(interface="virtual", channel=vehicle_channel) as listener:
        notifier = can.Notifier(listener, [seen.append])
        pipeline = Pipeline(parse_config(data))
        assert pipeline.diagnostics is None
        pipeline.start()
        time.sleep(1.0)
        pipeline.stop()
        notifier.stop()
    assert seen == []


def test_writer_payload_round_trips_through_the_codec(tmp_path: Path) -> None:
    from edge.wire.codec import Codec

    codec = Codec("zstd", 3, 0.001, "car")
    payloads: list[bytes] = []
    priorities: list[int | None] = []

    def append(build: Any, priority: int | None = None) -> int:
        payloads.append(build("ab" * 16, len(payloads)).body)
        priorities.append(priority)
        return len(payloads)

    writer = DiagnosticsWriter(codec, lambda: "00" * 8, append)
    records = [
        DiagRecord(
            1_700_000_000.5, "can0", "BMS", "dtc", "P0A80-1A", 0x2F, "appeared", 1_700_000_000.5
        ),
        DiagRecord(
            1_700_000_001.25,
            "can0",
            "SA00",
            "dtc",
            "SPN 190 FMI 2",
            3,
            "cleared",
            1_699_999_990.0,
            0,
        ),
        DiagRecord(1_700_000_002.0, "can0", "OBD", "vin", "VIN", 0, DEMO_VIN),
    ]
    writer.write(records)
    writer.write([])  # nothing: no payload
    writer.write([DiagRecord(1.7e9, "can0", "OBD", "vin", "VIN", 0, DEMO_VIN)])
    assert len(payloads) == 2
    assert priorities == [DTC_PRIORITY, None]  # DTC events overtake a backlog
    rows = PayloadReader().rows(payloads[0])  # no schema needed: the body is empty
    got = [(r.message, r.signal, r.value, r.choice, r.source, r.ecu) for r in rows]
    assert got == [
        ("DTC", "P0A80-1A", 0x2F, "appeared", None, "BMS"),
        ("DTC", "SPN 190 FMI 2", 3, "cleared", 0, "SA00"),
        ("VIN", "VIN", 0, DEMO_VIN, None, "OBD"),
    ]
    # Times at the codec's resolution (1 ms), as a data row's.
    assert [r.time for r in rows] == pytest.approx([r.time for r in records], abs=1e-6)
    assert [r.first_seen for r in rows] == [1_700_000_000.5, 1_699_999_990.0, None]
