"""edge.iotedge.module: the IoT Edge module end to end, with the real azure-iot-device SDK against
a real
TLS mosquitto playing edgeHub (see tests/iotedge/test_twin.py for :class:`IoTHubResponder`), real
python-can
virtual buses, a real spool file and real payloads."""

from __future__ import annotations

import base64
import gc
import json
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import can
import pytest

from edge.errors import ConfigError
from edge.iotedge.module import EdgeModule, ModuleOptions
from edge.iotedge.twin import SAVED_CONFIG
from edge.processing.processor import PipelineStats
from edge.simulator.vehicle import VehicleSimulator
from edge.wire.codec import PayloadReader
from tests.support.iothub import SDK_WARNINGS, IoTHubResponder
from tests.support.mosquitto import Mosquitto, Subscriber, free_port
from tests.support.waiting import wait_for

pytestmark = SDK_WARNINGS


ROOT = Path(__file__).resolve().parents[2]
EDGE_TOPIC = "devices/car1/modules/CanTelemetry/messages/events/#"
PAYLOAD_NAME = re.compile(r"(?P<stream>[A-Za-z0-9_-]+)-(?P<seq>\d{12})\.(?P<kind>\w+)\.ctl")


def counters(module: EdgeModule) -> PipelineStats:
    """The module's counters (it runs, so there are some)."""
    stats = module.stats()
    assert stats is not None
    return stats


class Car:
    """Simulated traffic on a python-can virtual bus."""

    def __init__(self, channel: str) -> None:
        self.channel = channel
        self.simulator = VehicleSimulator(seed=5, start_time=1_700_000_000.0, channel=channel)
        self.sent = 0

    def drive(self, seconds: float) -> int:
        with can.Bus(interface="virtual", channel=self.channel, preserve_timestamps=True) as bus:
            frames = list(self.simulator.frames(seconds))
            for msg in frames:
                bus.send(msg)
        self.sent += len(frames)
        return len(frames)


def config(channel: str, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "vehicle_id": "car1",
        "buses": [
            {
                "name": "vehicle",
                "interface": "virtual",
                "channel": channel,
                "dbc": "demo_vehicle.dbc",
                "fd": True,
                "j1939": True,
            }
        ],
        "batch": {"max_age": 0.2},
        "spool": {"path": "spool.db"},
        "uplink": {
            "type": "azure-edge",
            "keep_alive": 5,
            "send_timeout": 5.0,
            "backoff_initial": 0.05,
            "backoff_max": 0.5,
        },
    }
    data.update(changes)
    return data


@pytest.fixture
def channel() -> str:
    return f"module-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def module(tmp_path: Path) -> Iterator[EdgeModule]:
    module = EdgeModule(
        ModuleOptions(
            data_dir=str(tmp_path / "data"),
            metrics_host="127.0.0.1",
            metrics_port=0,
            report_interval=0.3,
            keep_alive=5,
            config_log_level=False,
        )
    )
    yield module
    module.stop(drain_timeout=0)
    gc.collect()


def bus_open(module: EdgeModule, bus: str = "vehicle") -> bool:
    stats = counters(module)
    return stats is not None and bool(stats.sources.get(bus, {}).get("connected"))


def outbox_payloads(outbox: Path) -> list[tuple[str, int, str, bytes]]:
    found = []
    for file in outbox.glob("*.ctl"):
        match = PAYLOAD_NAME.fullmatch(file.name)
        assert match, file.name
        found.append((match["stream"], int(match["seq"]), match["kind"], file.read_bytes()))
    return sorted(found)


def decode_rows(bodies: list[bytes]) -> int:
    decoder = PayloadReader()
    return sum(len(decoder.rows(body)) for body in bodies)


def test_the_twin_configures_the_module_which_sends_through_its_one_connection(
    hub: Mosquitto, module: EdgeModule, channel: str
) -> None:
    car = Car(channel)
    with (
        IoTHubResponder(hub, {"config": config(channel)}) as responder,
        Subscriber(hub, EDGE_TOPIC) as telemetry,
    ):
        module.start()
        reported = responder.wait_reported(
            lambda r: r.get("state") == "running" and r["config"]["desiredVersion"] == 1
        )
        assert reported["config"]["source"] == "twin"
        assert "refused" not in reported["config"]
        wait_for(lambda: bus_open(module), what="the virtual bus to open")
        car.drive(3.0)
        wait_for(lambda: counters(module).frames == car.sent, what="every frame processed")
        module.flush()
        bodies: list[bytes] = []

        def everything_arrived() -> bool:
            bodies.extend(m.payload for m in drain(telemetry))
            stats = counters(module)
            return stats.spool.depth == 0 and len(bodies) == stats.batches + stats.schemas

        wait_for(everything_arrived, what="the payloads to arrive")
        stats = counters(module)
        assert decode_rows(bodies) == stats.samples > 0
        # Reported stats are snapshots: wait for one taken after the last send.
        reported = responder.wait_reported(
            lambda r: r["stats"]["frames"] == car.sent and r["stats"]["sent"] == len(bodies)
        )
        assert reported["stats"]["buses"] == [
            {"bus": "vehicle", "frames": car.sent, "connected": True, "errors": 0}
        ]
        assert reported["stats"]["sent"] == len(bodies)
        assert reported["stats"]["rawBytes"] == 16 * car.sent
        assert reported["stats"]["lastSendTime"].endswith("Z")
    # Twin, methods and telemetry shared one MQTT connection (a second would take over the first).
    assert hub.log().count("as car1/CanTelemetry") == 1
    assert module.connection is not None and module.connection.connects == 1


def drain(subscriber: Subscriber) -> list[Any]:
    messages = []
    while not subscriber.messages.empty():
        messages.append(subscriber.messages.get())
    return messages


def test_a_desired_patch_is_applied_live_and_no_spooled_payload_is_lost(
    hub: Mosquitto, module: EdgeModule, channel: str, tmp_path: Path
) -> None:
    car = Car(channel)
    dead = {
        "type": "mqtt",
        "host": "127.0.0.1",
        "port": free_port(),
        "tls": False,
        "send_timeout": 1.0,
        "backoff_initial": 0.05,
        "backoff_max": 0.2,
    }
    with IoTHubResponder(hub, {"config": config(channel, uplink=dead)}) as responder:
        module.start()
        responder.wait_reported(lambda r: r.get("config", {}).get("desiredVersion") == 1)
        wait_for(lambda: bus_open(module), what="the virtual bus to open")
        car.drive(2.0)
        wait_for(lambda: counters(module).frames == car.sent, what="every frame processed")
        module.flush()
        spool = module.spool
        assert spool is not None
        depth = wait_for(lambda: module.spool_depth() >= 2 and module.spool_depth())
        stream = spool.stream_id

        # A change of the processing settings: the same spool goes on, the batch is flushed.
        version = responder.patch_desired(
            {"config": {"batch": {"max_age": 0.3}, "signals": {"exclude": ["*Checksum*"]}}}
        )
        responder.wait_reported(lambda r: r["config"]["desiredVersion"] == version)
        assert module.config is not None and module.config.batch.max_age == 0.3
        assert module.config.signals.exclude == ("*Checksum*",)
        assert module.spool is spool and spool.stream_id == stream
        assert module.spool_depth() >= depth
        wait_for(lambda: bus_open(module), what="the new source to open")
        car.drive(2.0)
        wait_for(lambda: counters(module).frames == car.sent, what="frames after the change")
        module.flush()

        # A new uplink: the forwarder starts again on the same spool file and sends it all.
        version = responder.patch_desired(
            {
                "config": {
                    "uplink": {
                        "type": "file",
                        "path": "outbox",
                        "host": None,
                        "port": None,
                        "tls": None,
                    }
                }
            }
        )
        responder.wait_reported(lambda r: r["config"]["desiredVersion"] == version)
        assert module.config is not None and module.config.uplink.kind == "file"
        wait_for(lambda: module.spool_depth() == 0, what="the backlog to be sent")
        payloads = outbox_payloads(tmp_path / "data" / "outbox")
        assert {p[0] for p in payloads} == {stream}  # the same stream, so the same spool file
        assert [p[1] for p in payloads] == list(range(len(payloads)))  # no gap
        stats = counters(module)
        assert stats.frames == car.sent  # counters carried across both changes
        assert decode_rows([p[3] for p in payloads]) == stats.samples
        assert stats.spool.dropped_full == stats.spool.dropped_ttl == 0


def test_invalid_patches_are_refused_reported_and_the_module_keeps_running(
    hub: Mosquitto, module: EdgeModule, channel: str
) -> None:
    car = Car(channel)
    with IoTHubResponder(hub, {"config": config(channel)}) as responder:
        module.start()
        responder.wait_reported(lambda r: r.get("config", {}).get("desiredVersion") == 1)
        running = module.config

        version = responder.patch_desired({"config": {"batch": {"max_age": "fast"}}})
        reported = responder.wait_reported(lambda r: "refused" in r["config"])
        assert reported["config"]["refused"]["desiredVersion"] == version
        assert reported["config"]["refused"]["field"] == "config.batch.max_age"
        assert reported["config"]["refused"]["reason"] == "expected a number, got 'fast'"
        assert reported["config"]["desiredVersion"] == 1
        assert module.config is running

        version = responder.patch_desired(
            {"config": {"batch": {"max_age": 1.0}, "buses": [{"name": "vehicle", "dbc": "x.dbc"}]}}
        )
        reported = responder.wait_reported(
            lambda r: r["config"].get("refused", {}).get("desiredVersion") == version
        )
        assert reported["config"]["refused"]["field"] == "config.buses[0].dbc"
        assert "no such CAN database" in reported["config"]["refused"]["reason"]

        responder.patch_desired(
            {"config": {"buses": config(channel)["buses"], "spool": {"path": "elsewhere.db"}}}
        )
        reported = responder.wait_reported(
            lambda r: r["config"].get("refused", {}).get("field") == "config.spool.path"
        )
        assert "cannot change while the module runs" in reported["config"]["refused"]["reason"]
        assert module.config is running

        wait_for(lambda: bus_open(module), what="the virtual bus to open")
        car.drive(1.0)
        wait_for(lambda: counters(module).frames == car.sent, what="data still flowing")
        status, answer = responder.invoke("getConfig", {})
        assert status == 200
        assert answer["refused"]["field"] == "config.spool.path"
        assert answer["desiredVersion"] == 1

        version = responder.patch_desired({"config": {"spool": {"path": "spool.db"}}})
        reported = responder.wait_reported(lambda r: r["config"]["desiredVersion"] == version)
        assert "refused" not in reported["config"]
        assert module.config is not None and module.config is not running
        assert module.config.batch.max_age == 1.0


def test_the_last_twin_config_is_used_when_starting_without_connectivity(
    hub: Mosquitto, tmp_path: Path, channel: str
) -> None:
    options = ModuleOptions(
        data_dir=str(tmp_path), metrics_host="127.0.0.1", metrics_port=0, report_interval=0.3
    )
    first = EdgeModule(options)
    with IoTHubResponder(
        hub, {"config": config(channel, uplink={"type": "file", "path": "out"})}
    ) as responder:
        first.start()
        responder.wait_reported(lambda r: r.get("config", {}).get("desiredVersion") == 1)
        first.stop(drain_timeout=0)
    saved = json.loads((tmp_path / SAVED_CONFIG).read_text())
    assert saved["desiredVersion"] == 1

    def offline() -> Any:
        raise ConnectionRefusedError("no edgeHub")

    second = EdgeModule(options, create_client=offline)
    try:
        initial = second.saved_config()
        assert initial is not None and initial[1].source == "saved"
        second.start(initial)
        car = Car(channel)
        wait_for(lambda: bus_open(second), what="the virtual bus to open")
        car.drive(1.0)
        wait_for(lambda: counters(second).frames == car.sent, what="frames while offline")
        assert second.reported_state()["state"] == "running"
        assert second.config_info()["source"] == "saved"
    finally:
        second.stop(drain_timeout=0)


# -- the entry point ------------------------------------------------------------------------------


def run_module(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "edge.iotedge.module", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_python_dash_m_edge_module_runs_until_sigterm(tmp_path: Path, channel: str) -> None:
    (tmp_path / "car.toml").write_text(
        f'[[buses]]\nname = "vehicle"\nchannel = "{channel}"\n'
        f'dbc = "{ROOT / "dbc" / "demo_vehicle.dbc"}"\n'
        '[uplink]\ntype = "file"\npath = "outbox"\n'
    )
    port = free_port()
    process = run_module(
        "--no-edge",
        "--config",
        str(tmp_path / "car.toml"),
        "--metrics-host",
        "127.0.0.1",
        "--data-dir",
        str(tmp_path),
        env={"CAN_TELEMETRY_METRICS_PORT": str(port)},
    )
    try:

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    return bool(r.status == 200)
            except (urllib.error.URLError, ConnectionError):
                return False

        wait_for(healthy, timeout=20, what="/healthz")
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=20)
    finally:
        process.kill()
    assert process.returncode == 0, output
    assert "module running" in output and "stopping" in output


def test_a_bad_config_file_exits_with_status_2(tmp_path: Path) -> None:
    (tmp_path / "bad.toml").write_text('[[buses]]\nname = "v"\ndbc = "x.dbc"\nbitrate = "fast"\n')
    process = run_module(
        "--no-edge",
        "--config",
        str(tmp_path / "bad.toml"),
        "--metrics-port",
        "0",
        "--data-dir",
        str(tmp_path),
    )
    output, _ = process.communicate(timeout=20)
    assert process.returncode == 2
    assert "buses[0].bitrate: expected an integer" in output


def test_spool_path_cannot_change_while_running(tmp_path: Path, channel: str) -> None:
    from edge.config.model import parse_config
    from edge.iotedge.twin import ConfigOrigin

    options = ModuleOptions(
        data_dir=str(tmp_path), edge=False, metrics_host="127.0.0.1", metrics_port=0
    )
    module = EdgeModule(options)
    data = config(channel, uplink={"type": "file", "path": str(tmp_path / "out")})
    data["buses"][0]["dbc"] = str(ROOT / "dbc" / "demo_vehicle.dbc")
    first = parse_config(data, base_dir=str(tmp_path))
    module.start((first, ConfigOrigin("file", None, "a", data)))
    try:
        moved = parse_config({**data, "spool": {"path": "other.db"}}, base_dir=str(tmp_path))
        with pytest.raises(ConfigError, match="cannot change while the module runs"):
            module.apply_config(moved, ConfigOrigin("file", None, "b", data))
        assert module.config is first
    finally:
        module.stop(drain_timeout=0)


def test_a_spool_that_cannot_be_opened_exits_with_status_1_not_as_a_config_error(
    tmp_path: Path,
) -> None:
    (tmp_path / "blocker").write_text("a file where the spool's folder should be")
    (tmp_path / "car.toml").write_text(
        '[[buses]]\nname = "vehicle"\nchannel = "x"\n'
        f'dbc = "{ROOT / "dbc" / "demo_vehicle.dbc"}"\n'
        '[spool]\npath = "blocker/spool.db"\n[uplink]\ntype = "file"\npath = "outbox"\n'
    )
    process = run_module("--no-edge", "--config", str(tmp_path / "car.toml"), "--metrics-port", "0")
    output, _ = process.communicate(timeout=20)
    assert process.returncode == 1, output
    assert "cannot use the spool" in output and "configuration error" not in output
    assert "Traceback" not in output


def test_no_secret_in_logs_errors_reported_properties_or_method_answers(
    hub: Mosquitto,
    module: EdgeModule,
    channel: str,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from edge.cli import main

    password = f"pw-{uuid.uuid4().hex}"
    pasted = base64.b64encode(os.urandom(31)).decode()  # a key ending in "=="
    assert pasted.endswith("==")
    secrets = (password, pasted, pasted.rstrip("="))
    mqtt = {"type": "mqtt", "host": "127.0.0.1", "port": free_port(), "tls": False}
    mqtt.update(username="car1", password=password, backoff_initial=0.05, backoff_max=0.2)
    key = base64.b64encode(os.urandom(32)).decode()
    azure = {"type": "azure-device", "host": None, "port": None, "tls": None}
    azure.update(username=None, password=None)
    azure["connection_string"] = f"HostName=h;DeviceId=car1;SharedAccessKey={key};{pasted}"
    answers = []
    with IoTHubResponder(hub, {"config": config(channel, uplink=mqtt)}) as responder:
        module.start()
        responder.wait_reported(lambda r: r.get("config", {}).get("desiredVersion") == 1)
        saved = tmp_path / "data" / SAVED_CONFIG
        assert saved.stat().st_mode & 0o777 == 0o600  # it holds the password: owner only
        version = responder.patch_desired({"config": {"uplink": azure}})
        reported = responder.wait_reported(lambda r: "refused" in r["config"])
        assert reported["config"]["refused"]["desiredVersion"] == version
        assert reported["config"]["refused"]["field"] == "config.uplink.connection_string"
        for method in ("getConfig", "getStats", "flush"):
            answers.append(responder.invoke(method, {}))
        reported = responder.wait_reported(lambda r: r["stats"].get("at") is not None)
    # The same pasted key in a file given to `can-telemetry run`.
    bad = config(channel, uplink=azure)
    toml = (
        f'vehicle_id = "car1"\n[[buses]]\nname = "v"\nchannel = "{channel}"\n'
        f'dbc = "{ROOT / "dbc" / "demo_vehicle.dbc"}"\n[uplink]\ntype = "azure-device"\n'
        f'connection_string = "{bad["uplink"]["connection_string"]}"\n'
    )
    (tmp_path / "car.toml").write_text(toml)
    assert main(["run", "--config", str(tmp_path / "car.toml")]) == 2
    out, err = capfd.readouterr()
    assert "connection_string" in err  # the error is there, without the key
    channels = {
        "logs": caplog.text,
        "stdout and stderr": out + err,
        "reported properties": json.dumps(reported),
        "method answers": json.dumps(answers),
    }
    for name, text in channels.items():
        for secret in secrets:
            assert secret not in text, f"a secret in the {name}"
        assert key not in text, f"the shared access key in the {name}"


def test_campaigns_change_live_while_frames_flow(tmp_path: Path, channel: str) -> None:
    """Add, change and remove campaigns through apply_config (what a twin update does) while a
    car drives: the always campaign loses no row, campaign counters go on, a bad condition is
    refused naming the campaign, the column and the reason, and the running config stays."""
    from edge.config.model import parse_config
    from edge.iotedge.twin import ConfigOrigin

    snap = {"name": "snap", "collect": "periodic", "period": 0.3, "signals": ["BMS_Pack*"]}
    fast = {"name": "fast", "condition": "ESC_VehicleSpeed >= 0", "signals": ["ESC_Status.*"]}
    outbox = tmp_path / "out"
    data = config(channel, uplink={"type": "file", "path": str(outbox)}, campaigns=[snap])
    data["buses"][0]["dbc"] = str(ROOT / "dbc" / "demo_vehicle.dbc")
    data["batch"] = {"max_age": 600.0}
    module = EdgeModule(
        ModuleOptions(data_dir=str(tmp_path), edge=False, metrics_host="127.0.0.1", metrics_port=0)
    )

    def apply(campaigns: list[dict[str, Any]], digest: str) -> None:
        changed = {**data, "campaigns": campaigns}
        parsed = parse_config(changed, base_dir=str(tmp_path))
        module.apply_config(parsed, ConfigOrigin("twin", 1, digest, changed))

    first = parse_config(data, base_dir=str(tmp_path))
    module.start((first, ConfigOrigin("file", None, "a", data)))
    car = Car(channel)
    try:
        wait_for(lambda: bus_open(module))
        car.drive(2.0)
        wait_for(lambda: counters(module).frames == car.sent)
        before = counters(module).campaigns["snap"]["captures"]
        assert before >= 3
        apply([snap, fast], "b")  # add
        wait_for(lambda: bus_open(module))
        car.drive(2.0)
        wait_for(lambda: counters(module).frames == car.sent)
        apply([{**snap, "period": 0.5}], "c")  # change one, remove the other
        wait_for(lambda: bus_open(module))
        car.drive(2.0)
        wait_for(lambda: counters(module).frames == car.sent)
        stats = counters(module).campaigns
        assert stats["snap"]["captures"] >= before + 6  # counted on across two rebuilds
        assert stats["fast"]["captures"] >= 1  # kept after its removal
        current = module.config
        with pytest.raises(ConfigError) as info:
            apply([{**fast, "condition": "ESC_VehicleSpeed >> > 1"}], "d")
        assert info.value.field == "campaigns[0].condition"
        assert "column 21" in info.value.reason and "syntax" in info.value.reason
        with pytest.raises(ConfigError, match=r"campaigns\[0\].condition: column 1: no signal"):
            apply([{**fast, "condition": "Nope > 1"}], "e")
        assert module.config is current
        module.flush()  # settles the rows the processor defers
        always = counters(module).samples  # every value the always campaign kept
    finally:
        module.stop(drain_timeout=5)
    decoder = PayloadReader()
    plain = [
        r
        for _, _, _, body in outbox_payloads(outbox)
        for r in decoder.rows(body)
        if r.campaign is None
    ]
    assert len(plain) == always
