"""edge.runloop: the one run loop of ``run`` and ``module``, around real services (a pipeline on a
replay or a python-can virtual bus, the IoT Edge module), real signals sent to this process and
a real metrics server."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import can
import pytest

from edge.config.model import parse_config
from edge.errors import ConfigError, SpoolError
from edge.iotedge.module import EdgeModule, ModuleOptions
from edge.iotedge.twin import ConfigOrigin
from edge.metrics import Health, MetricsServer, TelemetryCollector
from edge.pipeline import Pipeline
from edge.runloop import run_until_stopped
from edge.simulator.vehicle import DEMO_DBC, VehicleSimulator
from tests.support.waiting import wait_for


def config(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "vehicle_id": "test-car",
        "buses": [{"name": "can0", "dbc": [str(DEMO_DBC)]}],
        "spool": {"path": str(tmp_path / "spool.db")},
        "uplink": {"type": "file", "path": str(tmp_path / "outbox")},
    }
    data.update(extra)
    return data


def handlers() -> tuple[Any, Any]:
    return signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)


@pytest.fixture
def own_handlers() -> Iterator[tuple[Any, Any]]:
    """Handlers of this test's own, to see that the loop puts them back."""

    def ours(signum: int, frame: Any) -> None:
        raise AssertionError(f"signal {signum} reached the test's own handler")

    previous = handlers()
    signal.signal(signal.SIGTERM, ours)
    signal.signal(signal.SIGINT, ours)
    yield handlers()
    signal.signal(signal.SIGTERM, previous[0])
    signal.signal(signal.SIGINT, previous[1])


def metrics_for(pipeline: Pipeline, port: int = 0) -> MetricsServer:
    return MetricsServer(
        TelemetryCollector(pipeline.stats, pipeline.queue_level, lambda: None),
        Health,
        host="127.0.0.1",
        port=port,
    )


def get(port: int, path: str) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as response:
            return str(response.read().decode())
    except (urllib.error.URLError, ConnectionError):
        return None


def test_a_replay_that_ends_by_itself_is_drained(
    tmp_path: Path, own_handlers: tuple[Any, Any]
) -> None:
    log = tmp_path / "drive.log"
    with can.Logger(str(log)) as writer:
        for msg in VehicleSimulator(seed=3, start_time=1_700_000_000.0).frames(10):
            writer.on_message_received(msg)
    pipeline = Pipeline(parse_config(config(tmp_path, replay={"log": str(log), "speed": "max"})))
    drains: list[float] = []

    def stop(seconds: float) -> None:
        drains.append(seconds)
        pipeline.stop(seconds)

    signalled = run_until_stopped(
        pipeline.start, pipeline.wait, stop, drain_timeout=2.0, finished_drain_timeout=7.0
    )
    assert signalled is False
    assert drains == [7.0]  # finished by itself: the longer drain
    stats = pipeline.stats()
    assert stats.spool.depth == 0 and stats.forwarder.sent == stats.batches + stats.schemas > 0
    assert handlers() == own_handlers


def test_sigterm_stops_a_live_pipeline_and_its_metrics(
    tmp_path: Path, own_handlers: tuple[Any, Any]
) -> None:
    data = config(tmp_path)
    data["buses"][0].update(interface="virtual", channel=f"runloop-{time.monotonic_ns()}")
    pipeline = Pipeline(parse_config(data))
    server = metrics_for(pipeline)
    served: list[str] = []

    def operator() -> None:  # what a container runtime does: SIGTERM once the thing runs
        wait_for(pipeline.processing_alive, what="the processing thread")
        served.append(wait_for(lambda: get(server.port, "/metrics"), what="/metrics"))
        os.kill(os.getpid(), signal.SIGTERM)

    thread = threading.Thread(target=operator)
    thread.start()
    signalled = run_until_stopped(pipeline.start, pipeline.wait, pipeline.stop, metrics=server)
    thread.join()
    assert signalled is True
    assert "can_telemetry_frames_total" in served[0]
    assert not pipeline.processing_alive()
    with pytest.raises(SpoolError):  # the pipeline owned its back end: closed
        pipeline.spool.stats()
    assert server.port == 0  # not serving any more (the requested port again)
    assert handlers() == own_handlers


def test_a_taken_metrics_port_refuses_before_anything_starts(
    tmp_path: Path, own_handlers: tuple[Any, Any]
) -> None:
    pipeline = Pipeline(parse_config(config(tmp_path)))
    calls: list[str] = []
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=f"metrics_port: cannot serve on port {port}"):
            run_until_stopped(
                lambda: calls.append("start"),
                lambda stop: calls.append("wait"),
                lambda seconds: calls.append("stop"),
                metrics=metrics_for(pipeline, port),
            )
    assert calls == []  # neither started nor stopped
    assert handlers() == own_handlers  # never replaced
    pipeline.backend.close()


def test_a_failed_start_is_stopped_then_raised(
    tmp_path: Path, own_handlers: tuple[Any, Any]
) -> None:
    (tmp_path / "afile").write_text("")
    data = config(tmp_path, spool={"path": str(tmp_path / "afile" / "spool.db")})
    module = EdgeModule(
        ModuleOptions(data_dir=str(tmp_path), edge=False, metrics_host="127.0.0.1", metrics_port=0)
    )
    origin = ConfigOrigin("file", None, "0" * 64, data)
    waited: list[bool] = []
    with pytest.raises(SpoolError, match="cannot create the folder"):
        run_until_stopped(
            lambda: module.start((parse_config(data), origin)),
            lambda stop: waited.append(True),
            module.stop,
        )
    assert waited == []
    assert module.reported_state()["state"] == "stopping"  # stopped, without waiting
    assert handlers() == own_handlers
