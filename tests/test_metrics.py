"""edge.metrics: the real HTTP endpoint scraped and parsed, its values checked against the
pipeline's own counters; /healthz 200, then 503 when the processing stage is stalled or a thread
died."""

from __future__ import annotations

import math
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import can
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge.config.model import parse_config
from edge.ingest.source import FrameQueue, FrameSource
from edge.iotedge.module import EdgeModule, ModuleOptions
from edge.iotedge.twin import ConfigOrigin
from edge.metrics import Health, LossWatch, MetricsServer, ProgressWatch, TelemetryCollector
from edge.pipeline import Pipeline
from edge.processing.processor import PipelineStats
from edge.simulator.vehicle import DEMO_DBC, VehicleSimulator
from tests.support.mosquitto import free_port
from tests.support.waiting import wait_for


def counters(module: EdgeModule) -> PipelineStats:
    """The module's counters (it runs, so there are some)."""
    stats = module.stats()
    assert stats is not None
    return stats


def settings(tmp_path: Path, channel: str, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "vehicle_id": "car1",
        "buses": [
            {
                "name": "vehicle",
                "channel": channel,
                "dbc": str(DEMO_DBC),
                "fd": True,
                "kernel_filters": False,
            }
        ],
        "batch": {"max_age": 0.2},
        "spool": {"path": str(tmp_path / "spool.db")},
        "uplink": {"type": "file", "path": str(tmp_path / "outbox")},
    }
    data.update(changes)
    return data


def start(tmp_path: Path, data: dict[str, Any], **options: Any) -> EdgeModule:
    module = EdgeModule(
        ModuleOptions(
            data_dir=str(tmp_path),
            edge=False,
            metrics_host="127.0.0.1",
            metrics_port=0,
            config_log_level=False,
            **options,
        ),
    )
    config = parse_config(data, base_dir=str(tmp_path))
    module.start((config, ConfigOrigin("file", None, "digest", data)))
    return module


@pytest.fixture
def channel() -> str:
    return f"metrics-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def module(tmp_path: Path, channel: str) -> Iterator[EdgeModule]:
    module = start(tmp_path, settings(tmp_path, channel), stall_after=0.5)
    yield module
    module.stop(drain_timeout=0)


def get(port: int, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, content_type, text = get(port, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def send(channel: str, frames: list[can.Message]) -> None:
    with can.Bus(interface="virtual", channel=channel, preserve_timestamps=True) as bus:
        for msg in frames:
            bus.send(msg)


def drive(module: EdgeModule, channel: str, seconds: float = 1.0) -> int:
    wait_for(lambda: (s := module.stats()) is not None and s.sources["vehicle"]["connected"])
    simulator = VehicleSimulator(seed=4, start_time=1_700_000_000.0, channel=channel)
    frames = list(simulator.frames(seconds))
    unknown = can.Message(
        arbitration_id=0x7FE,
        data=bytes(8),
        is_extended_id=False,
        timestamp=simulator.time,
        channel=channel,
    )
    send(channel, [*frames, unknown])
    wait_for(lambda: counters(module).frames == len(frames) + 1)
    return len(frames) + 1


def test_metrics_are_read_from_the_pipeline_at_scrape_time(
    module: EdgeModule, channel: str
) -> None:
    sent = drive(module, channel)
    wait_for(lambda: counters(module).spool.depth == 0 and counters(module).forwarder.sent > 0)
    port = module.metrics_port
    assert port
    metrics = scrape(port)
    stats = counters(module)
    expected = {
        ("can_telemetry_frames_total", (("bus", "vehicle"),)): sent,
        ("can_telemetry_processed_frames_total", ()): sent,
        ("can_telemetry_decode_skipped_total", (("reason", "unknown_id"),)): 1,
        ("can_telemetry_samples_total", ()): stats.samples,
        ("can_telemetry_batches_total", ()): stats.batches,
        ("can_telemetry_schema_payloads_total", ()): 1,
        ("can_telemetry_raw_bytes_total", ()): 16 * sent,
        ("can_telemetry_payload_bytes_total", ()): stats.payload_bytes,
        ("can_telemetry_spool_depth", ()): 0,
        ("can_telemetry_spool_bytes", ()): 0,
        ("can_telemetry_spool_dropped_total", (("reason", "full"),)): 0,
        ("can_telemetry_spool_dropped_total", (("reason", "ttl"),)): 0,
        ("can_telemetry_spool_errors_total", ()): 0,
        ("can_telemetry_lost_frames_total", ()): 0,
        ("can_telemetry_lost_rows_total", ()): 0,
        ("can_telemetry_spool_recovered_corrupt_total", ()): 0,
        ("can_telemetry_spool_corrupt_files", ()): 0,
        ("can_telemetry_spool_corrupt_deleted_total", ()): 0,
        ("can_telemetry_uplink_sent_total", ()): stats.forwarder.sent,
        ("can_telemetry_uplink_retries_total", ()): 0,
        ("can_telemetry_uplink_errors_total", (("kind", "transient"),)): 0,
        ("can_telemetry_bus_up", (("bus", "vehicle"),)): 1,
        ("can_telemetry_bus_errors_total", (("bus", "vehicle"),)): 0,
        ("can_telemetry_queue_chunks", ()): 0,
        ("can_telemetry_queue_capacity_chunks", ()): 100_000 // 256,
    }
    for key, value in expected.items():
        assert metrics.get(key) == value, key
    assert stats.samples > 0 and stats.batches > 0
    last_send = metrics[("can_telemetry_last_send_timestamp_seconds", ())]
    assert abs(last_send - time.time()) < 60
    assert any(name == "can_telemetry_build_info" for name, _ in metrics)
    assert get(port, "/other")[0] == 404


def test_frames_a_source_skips_are_counted_by_reason(module: EdgeModule, channel: str) -> None:
    wait_for(lambda: (s := module.stats()) is not None and s.sources["vehicle"]["connected"])
    poison = can.Message(timestamp=math.nan, arbitration_id=0x7FE, data=bytes(8), channel=channel)
    send(channel, [poison])
    port = module.metrics_port
    assert port
    key = ("can_telemetry_source_skipped_total", (("bus", "vehicle"), ("reason", "bad_timestamp")))
    wait_for(lambda: scrape(port).get(key) == 1, what="source_skipped{reason=bad_timestamp}")
    assert scrape(port)[("can_telemetry_time_steps_back_total", (("bus", "vehicle"),))] == 0


def test_healthz_fails_while_the_processing_stage_is_stalled(
    module: EdgeModule, channel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = module.metrics_port
    assert port
    assert get(port, "/healthz")[:3:2] == (200, "ok\n")
    drive(module, channel, 0.5)
    processor = module._front.processor  # type: ignore[union-attr]
    release = threading.Event()
    process = processor.process

    def stuck(frames: list[can.Message]) -> None:  # as a deadlock in the processing stage would
        release.wait()
        process(frames)

    monkeypatch.setattr(processor, "process", stuck)
    simulator = VehicleSimulator(seed=9, start_time=1_700_000_100.0, channel=channel)
    send(channel, list(simulator.frames(2.0)))
    wait_for(lambda: module.queue_level().chunks > 0)  # type: ignore[union-attr]
    get(port, "/healthz")  # first look: progress noted
    _, _, body = wait_for(lambda: (r := get(port, "/healthz"))[0] == 503 and r)
    assert body.startswith("processing stalled: no frame taken for")
    assert "chunk(s) queued" in body
    assert module.reported_state()["state"] == "degraded"
    release.set()
    wait_for(lambda: get(port, "/healthz")[0] == 200)
    assert module.reported_state()["state"] == "running"


class BrokenSource(FrameSource):
    """A source whose thread dies of a bug."""

    def run(self, out: FrameQueue, stop: threading.Event) -> None:
        raise RuntimeError("driver bug")


def test_healthz_fails_when_a_source_thread_died(tmp_path: Path, channel: str) -> None:
    module = EdgeModule(
        ModuleOptions(data_dir=str(tmp_path), edge=False, metrics_host="127.0.0.1", metrics_port=0),
        sources=lambda config: [BrokenSource()],
    )
    data = settings(tmp_path, channel)
    module.start(
        (parse_config(data, base_dir=str(tmp_path)), ConfigOrigin("file", None, "d", data))
    )
    try:
        port = module.metrics_port
        assert port
        _, _, body = wait_for(lambda: (r := get(port, "/healthz"))[0] == 503 and r)
        assert body == "thread source-BrokenSource died: RuntimeError: driver bug\n"
    finally:
        module.stop(drain_timeout=0)


def test_progress_watch_tells_stuck_from_idle() -> None:
    now = [0.0]
    watch = ProgressWatch(10.0, lambda: now[0])
    assert watch.check(progress=5, waiting=0) is None
    now[0] = 100.0
    assert watch.check(progress=5, waiting=0) is None  # idle: nothing waiting
    assert watch.check(progress=5, waiting=3) is None
    now[0] = 109.0
    assert watch.check(progress=5, waiting=3) is None
    now[0] = 111.0
    assert watch.check(progress=5, waiting=3) == (
        "processing stalled: no frame taken for 11 s with 3 chunk(s) queued"
    )
    assert watch.check(progress=6, waiting=3) is None  # moving again


def test_a_configured_metrics_port_moves_the_server(tmp_path: Path, channel: str) -> None:
    module = start(tmp_path, settings(tmp_path, channel))
    try:
        old = module.metrics_port
        port = free_port()
        data = settings(tmp_path, channel, metrics_port=port)
        module.apply_config(
            parse_config(data, base_dir=str(tmp_path)), ConfigOrigin("file", None, "e", data)
        )
        assert module.metrics_port == port
        assert get(port, "/healthz")[0] == 200
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{old}/healthz", timeout=1)
    finally:
        module.stop(drain_timeout=0)


def test_the_collector_serves_a_plain_pipeline_too(tmp_path: Path, channel: str) -> None:
    """``can-telemetry run`` could serve metrics the same way: the collector only needs
    ``stats()``."""
    pipeline = Pipeline(parse_config(settings(tmp_path, channel), base_dir=str(tmp_path)))
    server = MetricsServer(
        TelemetryCollector(pipeline.stats), lambda: Health(), host="127.0.0.1", port=0
    )
    pipeline.start()
    server.start()
    try:
        bus = pipeline.config.buses[0].name  # sources are counted under their bus's name
        wait_for(lambda: pipeline.stats().sources[bus]["connected"])
        send(channel, list(VehicleSimulator(seed=1, channel=channel).frames(0.5)))
        wait_for(lambda: pipeline.stats().frames > 0)
        metrics = scrape(server.port)
        frames = pipeline.stats().sources[bus]["frames"]
        assert metrics[("can_telemetry_frames_total", (("bus", bus),))] == frames
        assert get(server.port, "/healthz")[0] == 200
    finally:
        server.stop()
        pipeline.stop()


def test_campaign_counters_are_metrics(tmp_path: Path, channel: str) -> None:
    snap = {"name": "snap", "collect": "periodic", "period": 0.2, "signals": ["BMS_Pack*"]}
    module = start(tmp_path, settings(tmp_path, channel, campaigns=[snap]))
    try:
        drive(module, channel)
        stats = counters(module).campaigns
        assert stats["snap"]["captures"] >= 3
        port = module.metrics_port
        assert port is not None
        metrics = scrape(port)
        event = (("campaign", "snap"), ("event", "captures"))
        assert metrics[("can_telemetry_campaign_events_total", event)] == stats["snap"]["captures"]
        spooled = metrics[("can_telemetry_campaign_bytes_total", (("campaign", "snap"),))]
        assert spooled == stats["snap"]["bytes"] > 0
        assert ("can_telemetry_campaign_history_frames", ()) in metrics
    finally:
        module.stop(drain_timeout=0)


def test_diagnostics_counters_are_metrics(tmp_path: Path, channel: str) -> None:
    """The module's diagnostics (edge/diagnostics/) against the simulated ECUs: their counters
    on /metrics, by bus and event."""
    from edge.simulator.ecus import SimulatedEcus

    diagnostics = {"buses": [{"bus": "vehicle", "obd": {"pids": [{"pid": 0x0C, "period": 0.2}]}}]}
    data = settings(tmp_path, channel, diagnostics=diagnostics)
    pipeline = Pipeline(parse_config(data, base_dir=str(tmp_path)))
    assert pipeline.diagnostics is not None
    server = MetricsServer(
        TelemetryCollector(pipeline.stats, None, pipeline.diagnostics.stats),
        lambda: Health(),
        host="127.0.0.1",
        port=0,
    )
    with can.Bus(interface="virtual", channel=channel) as bus, SimulatedEcus(bus):
        pipeline.start()
        server.start()
        try:
            wait_for(lambda: pipeline.diagnostics.stats()["vehicle"].get("responses", 0) >= 3)
            metrics = scrape(server.port)
        finally:
            server.stop()
            pipeline.stop()
    key = ("can_telemetry_diagnostics_events_total", (("bus", "vehicle"), ("event", "responses")))
    assert metrics[key] >= 3


def test_healthz_fails_while_frames_are_lost_to_a_fault(module: EdgeModule, channel: str) -> None:
    port = module.metrics_port
    assert port
    drive(module, channel, 0.5)
    assert get(port, "/healthz")[0] == 200
    processor = module._front.processor  # type: ignore[union-attr]
    tracks = [t for t in processor.bus_decoders[0].standard.values() if getattr(t, "direct", None)]
    assert tracks

    def bug(data: object) -> object:
        raise ZeroDivisionError("a bug in the fast path")

    for track in tracks:
        track.direct = bug
    simulator = VehicleSimulator(seed=11, start_time=1_700_000_200.0, channel=channel)
    before = counters(module).frames
    frames = list(simulator.frames(1.0))
    send(channel, frames)
    wait_for(lambda: counters(module).frames == before + len(frames))
    _, _, body = wait_for(lambda: (r := get(port, "/healthz"))[0] == 503 and r)
    assert body.startswith("frames lost to processing faults: ")
    metrics = scrape(port)
    lost = metrics[("can_telemetry_lost_frames_total", ())]
    assert 0 < lost <= len(tracks)  # one frame per message, which then falls back to cantools
    assert (
        metrics[("can_telemetry_lost_frames_by_reason_total", (("reason", "ZeroDivisionError"),))]
        == lost
    )
    assert module.reported_state()["state"] == "degraded"
    stats = module.summary()
    assert stats["lostFrames"] == lost and stats["lostReasons"] == {"ZeroDivisionError": lost}


def test_loss_watch_fails_for_a_window_after_the_last_loss() -> None:
    now = [0.0]
    watch = LossWatch(60.0, lambda: now[0])
    assert watch.check(0) is None
    now[0] = 10.0
    assert watch.check(3) == "frames lost to processing faults: 3 so far, the last 0 s ago"
    now[0] = 69.0
    assert watch.check(3) is not None
    now[0] = 70.0
    assert watch.check(3) is None  # the losses stopped: healthy again, the counter stays
    assert watch.check(4) is not None
