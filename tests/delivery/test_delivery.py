"""The delivery guarantee, end to end, with real parts: simulated traffic through the whole module
(a real :class:`Pipeline`, or the real ``can-telemetry run`` process), a real spool file and a
real uplink (mqtt, or azure-edge with the real SDK) to a real TLS mosquitto, with faults
injected: the broker stopped and started again, the link black-holed, credentials refused, the
module killed with SIGKILL, the spool's byte cap reached, the spool file corrupted.

Every test ends with the same check, on what a test-side subscriber received on the real broker:
every batch delivered, in order, none lost. Deduplicated by ``(stream, seq)`` (delivery is
at-least-once; a duplicate must be byte-identical), the sequence numbers of each stream are
exactly ``0..N-1`` (at the cap: exactly those the spool did not count as dropped), they first
arrived in that order, their rows are the rows the module produced (those of an uninterrupted
in-process run over the same log; the kill and cap tests, whose traffic is not one such run,
check that every payload decodes), and the spool is empty at the end. docs/delivery.md states
the guarantee these tests prove.

The broker keeps its state across a restart (``persistence true``) and the subscriber has a
persistent session, so a message that reaches the broker while the subscriber is reconnecting is
queued for it rather than lost to the test: every gap seen here is the module's.
"""

from __future__ import annotations

import functools
import gc
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import can
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.config.model import Config, parse_config
from edge.delivery.spool import Spool, SpoolStats
from edge.pipeline import Pipeline
from edge.processing.processor import Processor
from edge.simulator.vehicle import DEMO_DBC, VehicleSimulator
from edge.wire.codec import PayloadReader, Row, unpack
from tests.support.iothub import PAHO_THREAD_SSL_ERRORS
from tests.support.mosquitto import AZURE_PORT, Mosquitto, TlsFiles, free_port
from tests.support.tcpproxy import TcpProxy

# paho 1.6 inside the azure-iot-device SDK leaves sockets to the garbage collector (see
# tests/delivery/uplinks/test_azure.py); the ``collect_garbage`` fixture collects them under these
# filters.
_SOCKETS = r"<(ssl\.SSLSocket|socket\.socket) "
pytestmark = [
    pytest.mark.filterwarnings(f"ignore:unclosed {_SOCKETS}:ResourceWarning"),
    pytest.mark.filterwarnings(
        f"ignore:Exception ignored in. {_SOCKETS}:pytest.PytestUnraisableExceptionWarning"
    ),
]

REPO = Path(__file__).resolve().parents[2]
SEED = 20240611
START_TIME = 1_700_000_000.0
#: Retry fast, and give up on a silent link soon: the faults below last about a second.
FAST_RETRIES = {"send_timeout": 1.5, "backoff_initial": 0.05, "backoff_max": 0.5}
#: Generous bounds on waiting loops (never a timing assertion).
WAIT = 30.0
MQTT_TOPIC = "vehicles/#"
EDGE_TOPIC = "devices/car1/modules/CanTelemetry/messages/events/#"
UPLINKS = ["mqtt", "azure-edge"]

Streams = dict[str, dict[int, bytes]]


# -- the broker and the subscriber -----------------------------------------------------------


BrokerFactory = Callable[..., Mosquitto]


@pytest.fixture
def brokers(mosquitto_factory: Any) -> BrokerFactory:
    """Start persistent brokers: ``brokers(host, port, users=None)``."""
    return functools.partial(mosquitto_factory, persistent=True)


class Collector:
    """A test-side MQTT v5 subscriber on the broker's plain listener that records every payload.

    Its session is persistent (fixed client id, ``clean_start`` false, a session expiry) and paho
    reconnects it after a broker restart: what the broker accepted while it was away waits in the
    session for it.
    """

    def __init__(
        self,
        broker: Mosquitto,
        topic: str,
        *,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.topic = topic
        self._lock = threading.Lock()
        self._bodies: list[bytes] = []
        self._subscribed = threading.Event()
        self._client = mqtt.Client(client_id=f"collector-{uuid.uuid4().hex}", protocol=mqtt.MQTTv5)
        self._client.reconnect_delay_set(0.05, 0.5)
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        session = Properties(PacketTypes.CONNECT)
        session.SessionExpiryInterval = 3600
        self._client.connect(
            "127.0.0.1", broker.plain_port, keepalive=30, clean_start=False, properties=session
        )
        self._client.loop_start()
        if not self._subscribed.wait(5):
            self.close()
            raise RuntimeError(f"could not subscribe to {topic!r}:\n{broker.log()}")

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _on_connect(self, client: mqtt.Client, _userdata: Any, *_args: Any) -> None:
        client.subscribe(self.topic, qos=1)  # again after a reconnect: harmless

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: Any) -> None:
        with self._lock:
            self._bodies.append(bytes(message.payload))

    @property
    def bodies(self) -> list[bytes]:
        """Every payload received so far, duplicates included, in arrival order."""
        with self._lock:
            return list(self._bodies)

    def streams(self) -> Streams:
        """What arrived, checked and deduplicated (see :func:`deduplicate`)."""
        return deduplicate(self.bodies)

    def wait_for(self, stream: str | None, count: int, timeout: float = WAIT) -> Streams:
        """Wait until ``count`` distinct payloads of ``stream`` (None: of any one stream)
        arrived."""

        def enough() -> bool:
            streams = self.streams()
            if stream is None:
                return any(len(seqs) >= count for seqs in streams.values())
            return len(streams.get(stream, {})) >= count

        wait_until(enough, f"{count} payloads of stream {stream}", timeout)
        return self.streams()

    def close(self) -> None:
        """Disconnect."""
        self._client.disconnect()
        self._client.loop_stop()
        self._client.on_connect = self._client.on_message = self._client.on_subscribe = None


# -- the check every test ends with ------------------------------------------------------------


def deduplicate(bodies: Sequence[bytes]) -> Streams:
    """``{stream: {seq: body}}`` in order of first arrival, asserting that a duplicate is
    byte-identical to the first copy (at-least-once) and that each stream's sequence numbers
    first arrived in increasing order (the forwarder sends a payload only after the previous one
    was confirmed)."""
    streams: Streams = {}
    for body in bodies:
        envelope = unpack(body).envelope
        stream, seq = str(envelope["stream"]), int(envelope["seq"])
        seen = streams.setdefault(stream, {})
        if seq in seen:
            assert seen[seq] == body, f"duplicate {stream}:{seq} differs from the first copy"
            continue
        assert not seen or seq > next(reversed(seen)), f"{stream}:{seq} arrived out of order"
        seen[seq] = body
    return streams


def assert_every_batch_delivered(payloads: Mapping[int, bytes], count: int) -> None:
    """Every batch delivered, in order, none lost: exactly ``0..count-1``."""
    missing = sorted(set(range(count)) - set(payloads))
    assert not missing, f"{len(missing)} of {count} payloads lost: {missing[:20]}"
    assert list(payloads) == list(range(count)), "unexpected sequence numbers"


def rows_of(payloads: Mapping[int, bytes]) -> Counter[Row]:
    """Every row of a stream's payloads (its schema payloads decoded first, in seq order)."""
    decoder = PayloadReader()
    rows: Counter[Row] = Counter()
    for seq in sorted(payloads):
        rows.update(decoder.rows(payloads[seq]))
    return rows


def reference_rows(config: Config, log: Path) -> Counter[Row]:
    """The rows an uninterrupted in-process run makes of ``log`` (no spool, no uplink)."""
    bodies: list[bytes] = []

    def append(build: Callable[[str, int], Any]) -> int:
        bodies.append(build("0123456789abcdef0123456789abcdef", len(bodies)).body)
        return len(bodies) - 1

    processor = Processor(config, append)
    with can.LogReader(str(log)) as reader:
        frames = list(reader)
    for frame in frames:
        frame.channel = config.buses[0].name
    processor.process(frames)
    processor.flush()
    return rows_of(dict(enumerate(bodies)))


def assert_spool_empty(path: Path) -> SpoolStats:
    """The spool file, opened afresh, holds nothing; its stats."""
    spool = Spool(path)
    try:
        stats = spool.stats()
    finally:
        spool.close()
    assert (stats.depth, stats.dead_letters) == (0, 0)
    return stats


# -- helpers -------------------------------------------------------------------------------------


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll ``condition`` until true; fail after ``timeout`` seconds (a generous bound)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        time.sleep(0.02)


def write_log(path: Path, seconds: float, seed: int = SEED) -> int:
    """A candump log of ``seconds`` of simulated driving; the number of frames."""
    simulator = VehicleSimulator(seed=seed, start_time=START_TIME, channel="can0")
    count = 0
    with can.Logger(str(path)) as writer:
        for frame in simulator.frames(seconds):
            writer.on_message_received(frame)
            count += 1
    return count


def uplink_table(kind: str, address: str, tls_files: TlsFiles) -> dict[str, Any]:
    """The ``[uplink]`` table: the module always talks to ``address:8883`` over TLS."""
    if kind == "azure-edge":
        return {"type": "azure-edge", "keep_alive": 5, **FAST_RETRIES}
    return {
        "type": "mqtt",
        "host": address,
        "port": AZURE_PORT,
        "ca_file": str(tls_files.ca_file),
        "client_id": "car1-can-telemetry",
        "keepalive": 5,
        **FAST_RETRIES,
    }


def module_config(tmp_path: Path, uplink: dict[str, Any], **tables: Any) -> dict[str, Any]:
    """A configuration mapping of the module: the demo car on ``can0``, a spool file in
    ``tmp_path``, 0.5 s batches; ``tables`` replace or add top-level entries."""
    data: dict[str, Any] = {
        "vehicle_id": "car1",
        "buses": [{"name": "can0", "dbc": [str(DEMO_DBC)], "j1939": True}],
        "batch": {"max_age": 0.5},
        "spool": {"path": str(tmp_path / "spool" / "spool.db")},
        "uplink": uplink,
    }
    data.update(tables)
    return data


@pytest.fixture(autouse=True)
def edge_env(monkeypatch: pytest.MonkeyPatch, loopback_address: str, tls_files: TlsFiles) -> None:
    """The IoT Edge development variables, pointing azure-edge at ``loopback_address``."""
    for name in ("IOTHUBHOSTNAME", "DEVICEID", "MODULEID", "GATEWAYHOSTNAME", "WORKLOADURI"):
        monkeypatch.delenv(f"IOTEDGE_{name}", raising=False)
    monkeypatch.setenv(
        "EdgeHubConnectionString",
        f"HostName=hub.azure-devices.net;GatewayHostName={loopback_address};DeviceId=car1;"
        "ModuleId=CanTelemetry;SharedAccessKey=YSBzaGFyZWQgYWNjZXNzIGtleSBvZiAzMiBieXRlcyE=",
    )
    monkeypatch.setenv("EdgeModuleCACertificateFile", str(tls_files.ca_file))


@pytest.fixture(autouse=True)
def collect_garbage() -> Iterator[None]:
    """Collect the sockets the SDK leaves behind before the test ends (see pytestmark)."""
    yield
    gc.collect()


@pytest.fixture
def drive_log(tmp_path: Path) -> Path:
    """A minute of simulated driving as a candump log (3 s at speed 20)."""
    log = tmp_path / "drive.log"
    write_log(log, 60.0)
    return log


def topic_of(kind: str) -> str:
    return EDGE_TOPIC if kind == "azure-edge" else MQTT_TOPIC


def finish(pipeline: Pipeline) -> None:
    """Let the replay end, then stop, sending what is spooled first."""
    wait_until(pipeline.sources_finished, "end of the replay")
    pipeline.stop(drain_timeout=WAIT)


def assert_delivered_run(
    collector: Collector, pipeline: Pipeline, reference: Counter[Row]
) -> dict[int, bytes]:
    """The common ending of the in-process tests: every batch of the (one) stream delivered,
    in order, none lost, with the rows the module produced, and the spool empty."""
    stats = pipeline.stats()
    stream, count = stats.spool.stream_id, stats.spool.next_seq
    assert stats.spool.depth == 0
    payloads = collector.wait_for(stream, count)[stream]
    assert set(collector.streams()) == {stream}
    assert_every_batch_delivered(payloads, count)
    rows = rows_of(payloads)
    assert sum(rows.values()) == stats.samples > 0
    assert rows == reference
    reopened = assert_spool_empty(Path(pipeline.config.spool.path))
    assert (reopened.stream_id, reopened.next_seq) == (stream, count)
    return payloads


# -- 1. the broker stops and starts again mid-stream ---------------------------------------------


@PAHO_THREAD_SSL_ERRORS
@pytest.mark.parametrize("kind", UPLINKS)
def test_broker_restart_mid_stream_loses_nothing(
    kind: str,
    brokers: BrokerFactory,
    loopback_address: str,
    tls_files: TlsFiles,
    tmp_path: Path,
    drive_log: Path,
) -> None:
    broker = brokers(loopback_address, AZURE_PORT)
    data = module_config(
        tmp_path,
        uplink_table(kind, loopback_address, tls_files),
        replay={"log": str(drive_log), "speed": 20},
    )
    config = parse_config(data)
    with Collector(broker, topic_of(kind)) as collector:
        pipeline = Pipeline(config)
        pipeline.start()
        try:
            collector.wait_for(None, 10)
            broker.stop()
            wait_until(
                lambda: (
                    pipeline.spool.stats().depth >= 20
                    and pipeline.forwarder.stats().transient_errors > 0
                ),
                "backlog during the outage",
            )
            broker.start()
            finish(pipeline)
        finally:
            pipeline.stop()
        forwarder = pipeline.stats().forwarder
        assert forwarder.transient_errors > 0 and forwarder.retries > 0
        assert_delivered_run(collector, pipeline, reference_rows(config, drive_log))


# -- 2. the link goes silent: sends hit their deadline -------------------------------------------


@PAHO_THREAD_SSL_ERRORS
@pytest.mark.parametrize("kind", UPLINKS)
def test_black_hole_hits_the_deadline_then_delivery_resumes(
    kind: str,
    brokers: BrokerFactory,
    loopback_address: str,
    tls_files: TlsFiles,
    tmp_path: Path,
    drive_log: Path,
) -> None:
    broker = brokers("127.0.0.1", free_port())
    data = module_config(
        tmp_path,
        uplink_table(kind, loopback_address, tls_files),
        replay={"log": str(drive_log), "speed": 20},
    )
    config = parse_config(data)
    with (
        TcpProxy((loopback_address, AZURE_PORT), ("127.0.0.1", broker.port)) as proxy,
        Collector(broker, topic_of(kind)) as collector,
    ):
        pipeline = Pipeline(config)
        pipeline.start()
        try:
            collector.wait_for(None, 10)
            proxy.blackhole()
            wait_until(
                lambda: (
                    pipeline.forwarder.stats().transient_errors >= 2
                    and pipeline.spool.stats().depth >= 10
                ),
                "sends failing at their deadline",
            )
            during = pipeline.forwarder.stats()
            proxy.resume()
            finish(pipeline)
        finally:
            pipeline.stop()
        assert during.last_error is not None
        assert "TransientUplinkError" in during.last_error
        forwarder = pipeline.stats().forwarder
        assert forwarder.transient_errors >= 2 and forwarder.retries >= 2
        assert forwarder.permanent_errors == 0
        assert_delivered_run(collector, pipeline, reference_rows(config, drive_log))


# -- refused credentials: nothing is sent, nothing is dropped ----------------------------------


def test_refused_credentials_keep_the_backlog_until_they_are_accepted(
    brokers: BrokerFactory,
    loopback_address: str,
    tls_files: TlsFiles,
    tmp_path: Path,
    drive_log: Path,
) -> None:
    """A broker that refuses the module's password is a PermanentUplinkError: nothing is
    dead-lettered or dropped, the backlog stays in the spool and the same payload is tried again
    every ``backoff_max``, so once the broker accepts the password (rotated on the server side)
    delivery resumes without a restart of the module."""
    reader = {"collector": "collector-password"}
    broker = brokers(loopback_address, AZURE_PORT, users={**reader, "car1": "the-new-password"})
    uplink = uplink_table("mqtt", loopback_address, tls_files)
    uplink.update(username="car1", password="the-old-password")
    config = parse_config(
        module_config(tmp_path, uplink, replay={"log": str(drive_log), "speed": 20})
    )
    with Collector(
        broker, MQTT_TOPIC, username="collector", password="collector-password"
    ) as collector:
        pipeline = Pipeline(config)
        pipeline.start()
        try:
            wait_until(
                lambda: (
                    pipeline.forwarder.stats().permanent_errors >= 2
                    and pipeline.spool.stats().depth >= 10
                ),
                "refused sends",
            )
            refused = pipeline.spool.stats()
            assert not collector.bodies
            broker.stop()
            broker.change_users({**reader, "car1": "the-old-password"})
            broker.start()
            finish(pipeline)
        finally:
            pipeline.stop()
        assert refused.dead_letters == 0 and refused.dropped_full == 0
        assert refused.next_seq == refused.depth  # every payload kept
        forwarder = pipeline.stats().forwarder
        assert forwarder.permanent_errors >= 2
        assert_delivered_run(collector, pipeline, reference_rows(config, drive_log))


# -- 3. kill -9 at random moments, restart --------------------------------------------------------


def snapshot(spool_path: Path) -> tuple[str, int, dict[int, bytes]]:
    """``(stream id, next seq, {seq: body} pending)`` of a spool file left by a killed module."""
    spool = Spool(spool_path)
    try:
        stats = spool.stats()
        assert stats.recovered_corrupt == 0, "a kill -9 left a corrupt spool"
        pending: dict[int, bytes] = {}
        item = spool.oldest()
        while item is not None:
            pending[item.seq] = item.payload.body
            item = spool.oldest(after=item.seq)
    finally:
        spool.close()
    return stats.stream_id, stats.next_seq, pending


def start_module(config_file: Path, log: Path, output: Path) -> subprocess.Popen[bytes]:
    """``can-telemetry run`` as a child process, its stderr in ``output``; waits until it
    runs."""
    command = [sys.executable, "-m", "edge", "run", "--config", str(config_file)]
    command += ["--replay", str(log), "--speed", "10"]
    with output.open("wb") as sink:
        process = subprocess.Popen(
            command, cwd=REPO, stdin=subprocess.DEVNULL, stdout=sink, stderr=subprocess.STDOUT
        )

    def running() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the module exited with {process.returncode}:\n{output_of()}")
        return b"running:" in output.read_bytes()

    def output_of() -> str:
        return output.read_text(errors="replace")

    try:
        wait_until(running, "start of the module")
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process


def test_kill_9_at_random_moments_loses_nothing_spooled(
    brokers: BrokerFactory, loopback_address: str, tls_files: TlsFiles, tmp_path: Path
) -> None:
    """Frames the module held in memory at the instant of a kill (the open batch, the frame
    queue) are lost: that is the documented price of a crash. What is asserted is the spool's
    contract: everything accepted into it before each kill is delivered, byte for byte, and the
    sequence goes on without a gap across restarts. Each restart replays the log from its start,
    so later runs send the same frames again under new sequence numbers, as a car would send
    new ones."""
    rng = random.Random(SEED)
    log = tmp_path / "drive.log"
    write_log(log, 30.0)  # 3 s per run at speed 10
    broker = brokers(loopback_address, AZURE_PORT)
    spool_path = tmp_path / "spool" / "spool.db"
    config_file = tmp_path / "module.toml"
    config_file.write_text(
        f"""
        vehicle_id = "car1"
        log_level = "INFO"

        [[buses]]
        name = "can0"
        dbc = ["{DEMO_DBC}"]
        j1939 = true

        [batch]
        max_age = 0.5

        [spool]
        path = "{spool_path}"

        [uplink]
        type = "mqtt"
        host = "{loopback_address}"
        port = {AZURE_PORT}
        ca_file = "{tls_files.ca_file}"
        client_id = "car1-can-telemetry"
        keepalive = 5
        send_timeout = {FAST_RETRIES["send_timeout"]}
        backoff_initial = {FAST_RETRIES["backoff_initial"]}
        backoff_max = {FAST_RETRIES["backoff_max"]}
        """  # TOML ignores the indentation
    )
    accepted: dict[int, bytes] = {}  # what the spool held at a kill, still to be delivered
    streams: set[str] = set()
    next_seqs = []
    with Collector(broker, MQTT_TOPIC) as collector:
        for run in range(4):
            if run == 1:
                broker.stop()  # this run is killed in an outage, with a backlog on disk
            elif run == 2:
                broker.start()
            output = tmp_path / f"run{run}.out"
            process = start_module(config_file, log, output)
            try:
                if run < 3:
                    time.sleep(rng.uniform(0.2, 2.5))  # the kill point, not a timing assertion
                    process.send_signal(signal.SIGKILL)
                    assert process.wait(timeout=10) == -signal.SIGKILL
                else:
                    assert process.wait(timeout=WAIT) == 0, output.read_text(errors="replace")
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
            stream, next_seq, pending = snapshot(spool_path)
            if run == 1:
                assert pending, "the outage left nothing spooled"
            if run == 3:
                assert not pending, "the last run ended with a backlog"
            accepted.update(pending)
            assert b"Traceback" not in output.read_bytes(), output.read_text(errors="replace")
            streams.add(stream)
            next_seqs.append(next_seq)

        assert len(streams) == 1, "a restart must continue the stream, not start another"
        assert next_seqs == sorted(next_seqs)
        (stream,) = streams
        count = next_seqs[-1]
        payloads = collector.wait_for(stream, count)[stream]
    assert_every_batch_delivered(payloads, count)
    for seq, body in accepted.items():
        assert payloads[seq] == body, f"{stream}:{seq} changed between spool and delivery"
    rows_of(payloads)  # every payload decodes, its schema came before it


# -- 4. a long outage reaches the spool's byte cap -----------------------------------------------


def disk_use(path: Path) -> int:
    """Bytes of the spool's database and WAL (what ``max_bytes`` bounds)."""
    return sum(os.stat(p).st_size for p in (path, path.with_name(path.name + "-wal")) if p.exists())


def test_outage_at_the_byte_cap_drops_oldest_and_keeps_newest(
    brokers: BrokerFactory, loopback_address: str, tls_files: TlsFiles, tmp_path: Path
) -> None:
    max_bytes = 1_000_000
    channel = f"delivery-{uuid.uuid4().hex}"
    data = module_config(
        tmp_path,
        uplink_table("mqtt", loopback_address, tls_files),
        # Every sample kept, uncompressed, in 2 s batches: 4 KB per second of driving.
        batch={"max_age": 2.0, "compression": "none"},
        signals={"mode": "every"},
        spool={"path": str(tmp_path / "spool" / "spool.db"), "max_bytes": max_bytes},
    )
    data["buses"][0].update(interface="virtual", channel=channel)
    config = parse_config(data)
    spool_path = Path(config.spool.path)
    broker = brokers(loopback_address, AZURE_PORT)
    simulator = VehicleSimulator(seed=SEED, start_time=START_TIME, channel=channel)
    largest_disk_use = 0
    with (
        Collector(broker, MQTT_TOPIC) as collector,
        can.Bus(interface="virtual", channel=channel, preserve_timestamps=True) as bus,
    ):
        pipeline = Pipeline(config)
        pipeline.start()
        sent = 0

        def drive(seconds: float) -> None:
            nonlocal sent, largest_disk_use
            for frame in simulator.frames(seconds):
                bus.send(frame)
                sent += 1
                if sent % 5000 == 0:
                    largest_disk_use = max(largest_disk_use, disk_use(spool_path))
            wait_until(lambda: pipeline.processor.decoder.frames >= sent, "frames processed")
            pipeline.processor.flush()

        try:
            wait_until(lambda: pipeline.forwarder.stats().sent > 0, "the schema delivered")
            drive(20.0)  # online: delivered at once
            wait_until(lambda: pipeline.spool.stats().depth == 0, "delivery before the outage")
            broker.stop()
            before = pipeline.spool.stats().next_seq
            drive(360.0)  # offline: 1.5 MB of payloads for a 1 MB spool
            largest_disk_use = max(largest_disk_use, disk_use(spool_path))
            during = pipeline.spool.stats()
            broker.start()
            pipeline.forwarder.wake()
            wait_until(lambda: pipeline.spool.stats().depth == 0, "the backlog drained")
        finally:
            pipeline.stop(drain_timeout=WAIT)
        count = during.next_seq
        payloads = collector.wait_for(during.stream_id, count - during.dropped_full)[
            during.stream_id
        ]

    # Oldest dropped and counted: the dropped payloads are exactly the first ones of the outage.
    assert during.dropped_full > 0 and during.dropped_ttl == 0 and during.dead_letters == 0
    assert count == before + during.dropped_full + during.depth
    first_kept = before + during.dropped_full
    assert list(payloads) == [*range(before), *range(first_kept, count)]
    # Newest kept, up to the cap: what was delivered after the gap fills most of it.
    kept_bytes = sum(len(payloads[seq]) for seq in range(first_kept, count))
    assert kept_bytes > 0.6 * max_bytes, kept_bytes
    # Disk use within the cap, give or take one transaction (docs/delivery.md).
    tolerance = max(len(body) for body in payloads.values()) + 16 * 4096
    assert largest_disk_use <= max_bytes + tolerance, (largest_disk_use, tolerance)
    assert during.file_bytes <= max_bytes + tolerance
    rows_of(payloads)  # every kept payload decodes
    assert assert_spool_empty(spool_path).dropped_full == during.dropped_full


# -- 5. a corrupt spool file ---------------------------------------------------------------------


def garble_header(path: Path) -> None:
    with path.open("r+b") as file:
        file.write(os.urandom(100))  # the SQLite header is the first 100 bytes


def truncate(path: Path) -> None:
    os.truncate(path, path.stat().st_size // 2)


@pytest.mark.parametrize("corrupt", [garble_header, truncate], ids=["garbled", "truncated"])
def test_corrupt_spool_is_moved_aside_and_a_new_stream_delivered(
    corrupt: Callable[[Path], None],
    brokers: BrokerFactory,
    loopback_address: str,
    tls_files: TlsFiles,
    tmp_path: Path,
    drive_log: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = brokers(loopback_address, AZURE_PORT)
    broker.stop()  # the first run spools everything: the file to corrupt holds a backlog
    data = module_config(
        tmp_path,
        uplink_table("mqtt", loopback_address, tls_files),
        replay={"log": str(drive_log), "speed": "max"},
    )
    config = parse_config(data)
    spool_path = Path(config.spool.path)
    first = Pipeline(config)
    first.start()
    try:
        wait_until(first.sources_finished, "end of the replay")
    finally:
        first.stop()
    old = first.stats().spool
    assert old.depth > 0 and old.next_seq == old.depth
    assert not spool_path.with_name(spool_path.name + "-wal").exists()  # closed cleanly
    corrupt(spool_path)
    corrupted = spool_path.read_bytes()

    broker.start()
    with Collector(broker, MQTT_TOPIC) as collector:
        second = Pipeline(config)
        second.start()
        try:
            finish(second)
        finally:
            second.stop()
        new = second.stats().spool
        assert new.recovered_corrupt == 1
        assert new.stream_id != old.stream_id
        assert_delivered_run(collector, second, reference_rows(config, drive_log))
    assert assert_spool_empty(spool_path).recovered_corrupt == 1  # persisted in the new file
    (aside,) = spool_path.parent.glob(f"{spool_path.name}.corrupt-*")
    assert aside.read_bytes() == corrupted  # kept as found, for inspection
    assert any(
        r.levelname == "ERROR" and "unusable" in r.getMessage() and str(aside) in r.getMessage()
        for r in caplog.records
    )
