"""How fast a backlog drains once the link is back: after a long outage the spool holds many
minutes of driving, and the forwarder must send it at many times real time.

The backlog is made by the real processor: ``--minutes`` of simulated driving (the demo car, the
default configuration: 5 s batches, zstd) decoded, sampled, batched and appended to a real spool
file, as during an outage. A copy of that file is then drained by the real forwarder through
each uplink, and the wall time until the spool is empty is measured:

* ``mqtt``: a local mosquitto over TLS, QoS 1 (every payload waits for its PUBACK), with a
  subscriber counting what arrives;
* ``azure-edge``: the real azure-iot-device SDK against the same kind of broker on port 8883
  (standing in for edgeHub), with a subscriber counting what arrives;
* ``file``: an outbox folder, each payload fsynced and renamed into place.

Every ack is a synchronous (``synchronous=FULL``) SQLite commit, so the disk's fsync latency
bounds the rate. Prints a markdown table. Needs mosquitto for the broker rows (they are skipped,
with a message, without it) and the test extras (``pip install -e '.[test]'``)::

    .venv/bin/python benchmarks/drain.py [--minutes 30] [--max-age 5] [--uplinks mqtt,file]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests.support: the brokers the tests use

from edge.config.model import Config, parse_config  # noqa: E402
from edge.delivery.forwarder import Forwarder  # noqa: E402
from edge.delivery.spool import Spool  # noqa: E402
from edge.delivery.uplinks.base import Uplink  # noqa: E402
from edge.processing.processor import Processor  # noqa: E402
from edge.simulator.vehicle import DEMO_DBC, VehicleSimulator  # noqa: E402

SPOOL_BYTES = 2_000_000_000
CHUNK_SECONDS = 10.0
START_TIME = 1_700_000_000.0  # a fixed drive: the same backlog on every run
UPLINKS = ("mqtt", "azure-edge", "file")


@dataclass(frozen=True)
class Backlog:
    """What the outage left in the spool."""

    path: Path
    payloads: int
    bytes: int
    seconds: float
    frames: int


@dataclass(frozen=True)
class Drained:
    """One drain: the uplink, the wall time, and how many payloads the far side saw."""

    uplink: str
    seconds: float
    sent: int
    received: int


def fill(path: Path, config: Config, minutes: float) -> Backlog:
    """Spool ``minutes`` of simulated driving through the real processor, nothing sent."""
    spool = Spool(path, max_bytes=SPOOL_BYTES)
    processor = Processor(config, spool.append)
    seconds = minutes * 60.0
    simulator = VehicleSimulator(seed=1, start_time=START_TIME, channel="can0")
    done = 0.0
    while done < seconds:
        step = min(CHUNK_SECONDS, seconds - done)
        processor.process(list(simulator.frames(step)))
        done += step
    processor.flush()
    stats = spool.stats()
    spool.close()
    return Backlog(path, stats.depth, stats.bytes, seconds, processor.stats().frames)


def drain(backlog: Backlog, folder: Path, uplink: Uplink, received: Callable[[], int]) -> float:
    """Forward a copy of the backlog through ``uplink``; the wall seconds until it is empty."""
    path = folder / "spool.db"
    shutil.copyfile(backlog.path, path)
    spool = Spool(path, max_bytes=SPOOL_BYTES)
    forwarder = Forwarder(spool, uplink, send_timeout=30.0, backoff_initial=0.1, backoff_max=1.0)
    try:
        start = time.perf_counter()
        forwarder.start()
        if not forwarder.drain(timeout=600.0):
            raise RuntimeError(f"{uplink.kind}: the backlog did not drain within 600 s")
        elapsed = time.perf_counter() - start
        deadline = time.monotonic() + 10
        while received() < backlog.payloads and time.monotonic() < deadline:
            time.sleep(0.01)  # the last messages on their way to the counting subscriber
    finally:
        forwarder.stop()
        uplink.close()
        spool.close()
    if forwarder.stats().sent != backlog.payloads:
        raise RuntimeError(f"{uplink.kind}: sent {forwarder.stats().sent} of {backlog.payloads}")
    return elapsed


@contextmanager
def broker(folder: Path, host: str, port: int) -> Iterator[tuple[Any, Any]]:
    """A TLS mosquitto as the tests start it, without per-message logging; its TLS files."""
    from tests.support.mosquitto import Mosquitto, TlsFiles

    class QuietMosquitto(Mosquitto):
        def _write_config(self, require_certificate: bool) -> None:
            super()._write_config(require_certificate)
            text = self.config_file.read_text().replace("log_type all", "log_type information")
            self.config_file.write_text(text)

    tls = TlsFiles.create(folder / "tls", host)
    server = QuietMosquitto(folder / "broker", host, port, tls)
    server.start()
    try:
        yield server, tls
    finally:
        server.stop()


def run_mqtt(backlog: Backlog, folder: Path) -> Drained:
    from edge.delivery.uplinks.mqtt import MqttOptions, MqttUplink
    from tests.support.mosquitto import Subscriber, free_port

    with broker(folder, "127.0.0.1", free_port()) as (server, tls):
        options = MqttOptions.parse(
            {"host": "127.0.0.1", "port": server.port, "ca_file": str(tls.ca_file)}, "uplink"
        )
        with Subscriber(server, "vehicles/#") as subscriber:
            seconds = drain(backlog, folder, MqttUplink(options), subscriber.messages.qsize)
            received = subscriber.messages.qsize()
    return Drained("mqtt", seconds, backlog.payloads, received)


def run_azure_edge(backlog: Backlog, folder: Path) -> Drained:
    from edge.delivery.uplinks.azure import AzureEdgeOptions, AzureEdgeUplink
    from tests.support.mosquitto import AZURE_PORT, Subscriber, free_loopback_address

    host = free_loopback_address()
    with broker(folder, host, AZURE_PORT) as (server, tls):
        # Outside IoT Edge the SDK reads these (the names are the SDK's, not upper case).
        os.environ.update(
            EdgeHubConnectionString=(
                f"HostName=hub.azure-devices.net;GatewayHostName={host};DeviceId=car1;"
                "ModuleId=CanTelemetry;SharedAccessKey=YSBzaGFyZWQgYWNjZXNzIGtleSBvZiAzMiBieXRlcyE="
            ),
            EdgeModuleCACertificateFile=str(tls.ca_file),
        )
        uplink = AzureEdgeUplink(AzureEdgeOptions())
        topic = "devices/car1/modules/CanTelemetry/messages/events/#"
        with Subscriber(server, topic) as subscriber:
            seconds = drain(backlog, folder, uplink, subscriber.messages.qsize)
            received = subscriber.messages.qsize()
    return Drained("azure-edge", seconds, backlog.payloads, received)


def run_file(backlog: Backlog, folder: Path) -> Drained:
    from edge.delivery.uplinks.file import FileUplink

    outbox = folder / "outbox"
    uplink = FileUplink(outbox)

    def received() -> int:
        return sum(1 for name in os.listdir(outbox) if not name.startswith("."))

    seconds = drain(backlog, folder, uplink, received)
    return Drained("file (fsync)", seconds, backlog.payloads, received())


RUNNERS: dict[str, Callable[[Backlog, Path], Drained]] = {
    "mqtt": run_mqtt,
    "azure-edge": run_azure_edge,
    "file": run_file,
}


def table(backlog: Backlog, results: list[Drained]) -> str:
    """The results as a markdown table."""
    mb = backlog.bytes / 1e6
    lines = [
        "| uplink | backlog payloads | backlog MB | driving | drain s (median) | payloads/s | MB/s "
        "| x real time |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.uplink} | {backlog.payloads} | {mb:.2f} | {backlog.seconds / 60:.0f} min "
            f"| {r.seconds:.2f} | {backlog.payloads / r.seconds:.0f} | {mb / r.seconds:.2f} "
            f"| {backlog.seconds / r.seconds:.0f}x |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help="simulated driving to spool")
    parser.add_argument("--max-age", type=float, default=5.0, help="batch.max_age (seconds)")
    parser.add_argument("--uplinks", default=",".join(UPLINKS), help="comma-separated")
    parser.add_argument("--repeat", type=int, default=3, help="drains per uplink (median shown)")
    args = parser.parse_args()
    wanted = [u.strip() for u in args.uplinks.split(",") if u.strip()]
    unknown = sorted(set(wanted) - set(RUNNERS))
    if unknown:
        parser.error(f"unknown uplinks {unknown}; known: {', '.join(RUNNERS)}")
    if shutil.which("mosquitto") is None and not os.access("/usr/sbin/mosquitto", os.X_OK):
        needs_broker = [u for u in wanted if u != "file"]
        if needs_broker:
            print(f"mosquitto is not installed (run .ci/setup): skipping {', '.join(needs_broker)}")
        wanted = [u for u in wanted if u == "file"]
        if not wanted:
            return 0

    with tempfile.TemporaryDirectory(prefix="drain-") as tmp:
        folder = Path(tmp)
        config = parse_config(
            {
                "vehicle_id": "bench-car",
                "buses": [{"name": "can0", "dbc": [str(DEMO_DBC)], "j1939": True}],
                "batch": {"max_age": args.max_age},
                "uplink": {"type": "file", "path": str(folder / "unused")},
            }
        )
        print(
            f"spooling {args.minutes:g} min of simulated driving (batch.max_age={args.max_age:g} s)"
        )
        start = time.perf_counter()
        backlog = fill(folder / "backlog.db", config, args.minutes)
        print(
            f"backlog: {backlog.payloads} payloads, {backlog.bytes / 1e6:.2f} MB "
            f"({backlog.frames} frames) in {time.perf_counter() - start:.1f} s"
        )
        results = []
        for name in wanted:
            runs = []
            for i in range(max(1, args.repeat)):
                work = folder / f"{name}-{i}"
                work.mkdir()
                run = RUNNERS[name](backlog, work)
                if run.received < backlog.payloads:
                    raise RuntimeError(f"{name}: {run.received} of {backlog.payloads} arrived")
                runs.append(run)
            runs.sort(key=lambda r: r.seconds)
            times = ", ".join(f"{r.seconds:.2f}" for r in runs)
            print(f"{name}: drained in {times} s")
            results.append(runs[len(runs) // 2])
    print()
    print(
        f"Python {platform.python_version()}, {os.cpu_count()} CPUs, spool and outbox in "
        f"{tempfile.gettempdir()}"
    )
    print()
    print(table(backlog, results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
