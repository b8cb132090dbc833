"""The whole module wired together: source -> ... -> spool -> forwarder -> file uplink."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import can
import pytest

from edge.config.model import parse_config
from edge.pipeline import Pipeline
from edge.simulator.vehicle import DEMO_DBC, VehicleSimulator
from edge.wire.codec import PayloadReader, unpack


def write_log(path: Path, seconds: float, seed: int = 3) -> int:
    simulator = VehicleSimulator(seed=seed, start_time=1_700_000_000.0, channel="can0")
    n = 0
    with can.Logger(str(path)) as writer:
        for msg in simulator.frames(seconds):
            writer.on_message_received(msg)
            n += 1
    return n


def config(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "vehicle_id": "test-car",
        "buses": [{"name": "can0", "dbc": [str(DEMO_DBC)], "j1939": True}],
        "spool": {"path": str(tmp_path / "spool.db")},
        "uplink": {"type": "file", "path": str(tmp_path / "outbox")},
    }
    data.update(extra)
    return data


def decode_outbox(outbox: Path) -> tuple[list[Any], list[Any]]:
    decoder = PayloadReader()
    payloads = [(unpack(f.read_bytes()), f.read_bytes()) for f in outbox.glob("*.ctl")]
    payloads.sort(key=lambda p: (p[0].envelope["stream"], p[0].envelope["seq"]))
    rows: list[Any] = []
    for _, data in payloads:
        rows.extend(decoder.rows(data))
    return [p for p, _ in payloads], rows


def test_replay_through_spool_and_file_uplink_delivers_every_sample(tmp_path: Path) -> None:
    log = tmp_path / "drive.log"
    n = write_log(log, 60)
    cfg = parse_config(config(tmp_path, replay={"log": str(log), "speed": "max"}))
    pipeline = Pipeline(cfg)
    sent: list[dict[str, str]] = []
    send = pipeline.uplink.send

    def send_and_record(payload: Any, timeout: float) -> None:
        send(payload, timeout)
        sent.append(dict(payload.properties))

    pipeline.uplink.send = send_and_record  # type: ignore[method-assign]
    pipeline.start()
    pipeline.wait()
    pipeline.stop(drain_timeout=10)
    stats = pipeline.stats()
    assert stats.frames == n
    assert stats.spool.depth == 0  # everything was confirmed by the uplink
    payloads, rows = decode_outbox(tmp_path / "outbox")
    assert len(rows) == stats.samples > 0
    assert payloads[0].kind == "schema"  # the schema travels first
    seqs = [p.envelope["seq"] for p in payloads]
    assert seqs == list(range(len(seqs)))  # gap-free
    # The vehicle id travels in schema envelopes and in every payload's properties.
    assert {p.envelope["vehicle"] for p in payloads if p.kind == "schema"} == {"test-car"}
    assert {(p["kind"], p["vehicle"]) for p in sent} == {
        ("schema", "test-car"),
        ("data", "test-car"),
    }
    assert all(p.envelope["tb"] == "epoch" for p in payloads if p.kind == "data")


def test_sequence_numbers_continue_across_restarts(tmp_path: Path) -> None:
    log = tmp_path / "drive.log"
    write_log(log, 10)
    for _ in range(2):
        pipeline = Pipeline(
            parse_config(config(tmp_path, replay={"log": str(log), "speed": "max"}))
        )
        pipeline.start()
        pipeline.wait()
        pipeline.stop(drain_timeout=10)
    payloads, _ = decode_outbox(tmp_path / "outbox")
    assert len({p.envelope["stream"] for p in payloads}) == 1
    seqs = [p.envelope["seq"] for p in payloads]
    assert seqs == list(range(len(seqs)))


def test_live_virtual_bus_and_stop_closes_the_open_batch(tmp_path: Path) -> None:
    channel = f"pipeline-{time.monotonic_ns()}"
    data = config(tmp_path)
    data["buses"][0].update(interface="virtual", channel=channel)
    data["batch"] = {"max_age": 3600}  # only stop() can close the batch
    pipeline = Pipeline(parse_config(data))
    pipeline.start()
    time.sleep(0.2)
    simulator = VehicleSimulator(seed=5, start_time=time.time(), channel=channel)
    with can.Bus(interface="virtual", channel=channel, preserve_timestamps=True) as bus:
        sent = 0
        for msg in simulator.frames(5):
            bus.send(msg)
            sent += 1
        deadline = time.monotonic() + 10
        while pipeline.processor.decoder.frames < sent and time.monotonic() < deadline:
            time.sleep(0.05)
    pipeline.stop(drain_timeout=10)
    payloads, rows = decode_outbox(tmp_path / "outbox")
    assert pipeline.stats().frames == sent
    assert [p.kind for p in payloads] == ["schema", "data"]
    assert len(rows) == pipeline.stats().samples


def test_silent_bus_still_flushes_by_wall_clock_age(tmp_path: Path) -> None:
    channel = f"pipeline-{time.monotonic_ns()}"
    data = config(tmp_path)
    data["buses"][0].update(interface="virtual", channel=channel)
    data["batch"] = {"max_age": 0.3}
    pipeline = Pipeline(parse_config(data))
    pipeline.start()
    time.sleep(0.2)
    # One burst of frames whose own timestamps do not advance: only wall-clock age closes it.
    with can.Bus(interface="virtual", channel=channel, preserve_timestamps=True) as bus:
        for msg in VehicleSimulator(seed=1, start_time=time.time(), channel=channel).frames(0.05):
            bus.send(msg)
    outbox = tmp_path / "outbox"
    done = threading.Event()
    deadline = time.monotonic() + 10
    while not done.is_set() and time.monotonic() < deadline:
        if outbox.exists() and any(".data." in f.name for f in outbox.iterdir()):
            done.set()
        time.sleep(0.05)
    pipeline.stop()
    assert done.is_set()


STEP_DBC = """VERSION ""
BS_:
BU_: ECU
BO_ 256 Engine: 4 ECU
 SG_ Speed : 0|16@1+ (1,0) [0|65535] "" Vector__XXX
 SG_ Odo : 16|16@1+ (1,0) [0|65535] "" Vector__XXX
"""


def test_time_stepping_back_keeps_heartbeats_rate_limits_and_batch_age(tmp_path: Path) -> None:
    """An NTP step back of an hour mid-drive (issue 12, item 5): heartbeats and min_interval
    values go on from the step, and no batch holds rows for longer than max age."""
    dbc = tmp_path / "step.dbc"
    dbc.write_text(STEP_DBC)
    start, step = 1_700_000_000.0, 3600.0
    lines = []
    for i in range(200):  # 10 s before the step, 10 s after; Odo changes on every frame
        t = start + i * 0.1 - (step if i >= 100 else 0.0)
        lines.append(f"({t:.3f}) can0 100#{(500).to_bytes(2, 'little').hex()}{i:04x}")
    log = tmp_path / "step.log"
    log.write_text("\n".join(lines) + "\n")
    data = config(tmp_path, replay={"log": str(log), "speed": "max"})
    data["buses"] = [{"name": "can0", "dbc": [str(dbc)]}]
    data["batch"] = {"max_age": 5.0}
    data["signals"] = {
        "heartbeat": 1.0,
        "rules": [{"match": "Engine.Odo", "mode": "min_interval", "interval": 2.0, "heartbeat": 0}],
    }
    pipeline = Pipeline(parse_config(data))
    pipeline.start()
    pipeline.wait()
    pipeline.stop(drain_timeout=10)
    payloads, rows = decode_outbox(tmp_path / "outbox")
    after = start - step
    speed = [r.time for r in rows if r.signal == "Speed" and r.time < start - 1]
    odo = [r.time for r in rows if r.signal == "Odo" and r.time < start - 1]
    # after the step: frames from after + 10 s to after + 20 s
    assert speed == pytest.approx([after + 10 + i for i in range(10)], abs=0.15)
    assert odo == pytest.approx([after + 10 + 2 * i for i in range(5)], abs=0.15)
    assert pipeline.stats().sources["replay"]["time_steps_back"] == 1
    for p in payloads:
        if p.kind == "data":
            assert (p.envelope["t1"] - p.envelope["t0"]) * p.envelope["res"] / 1e9 <= 5.0
