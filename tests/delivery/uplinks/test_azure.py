"""The Azure uplinks with the real azure-iot-device SDK against a real TLS mosquitto posing as
edgeHub / IoT Hub on port 8883 of a loopback address of the test's own.

Outside IoT Edge, ``create_from_edge_environment()`` reads ``EdgeHubConnectionString`` (with
``GatewayHostName``: where it connects) and ``EdgeModuleCACertificateFile``; the SDK verifies the
broker's certificate against that CA and the gateway address (an IP address works).
"""

from __future__ import annotations

import base64
import gc
import logging
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.delivery.uplinks.azure import (
    MAX_RETIRING,
    AzureDeviceOptions,
    AzureDeviceUplink,
    AzureEdgeOptions,
    AzureEdgeUplink,
)
from edge.errors import ConfigError, PermanentUplinkError, TransientUplinkError
from edge.wire.payload import CONTENT_TYPE, Payload
from tests.support.mosquitto import (
    AZURE_PORT,
    Mosquitto,
    MosquittoFactory,
    Subscriber,
    TlsFiles,
    free_port,
)
from tests.support.tcpproxy import TcpProxy

# paho 1.6 inside the SDK leaves sockets to the garbage collector, which closes them with a
# ResourceWarning: the socket of a failed TLS handshake, and the socket pair of every connection
# (the SDK's objects are cyclic, so paho's __del__ may come after the sockets' own). The
# ``closing`` fixture collects them before its test ends, under these filters.
_SOCKETS = r"<(ssl\.SSLSocket|socket\.socket) "
pytestmark = [
    pytest.mark.filterwarnings(f"ignore:unclosed {_SOCKETS}:ResourceWarning"),
    pytest.mark.filterwarnings(
        f"ignore:Exception ignored in. {_SOCKETS}:pytest.PytestUnraisableExceptionWarning"
    ),
]

SLACK = 1.0  # generous: a send may end this much after its timeout
KEY = base64.b64encode(b"a shared access key of 32 bytes!").decode()
#: A key pasted after a stray ';': it ends with "==", so it parses as Key=value.
PASTED = base64.b64encode(b"a pasted key of 31 bytes, no!!!").decode()
BODY = bytes(range(256)) * 4
PROPERTIES = {"kind": "data", "stream": "s1", "seq": "42", "vehicle": "car 1/ä", "format": "1"}
EDGE_TOPIC = "devices/car1/modules/CanTelemetry/messages/events/#"


def payload(body: bytes = BODY, seq: int = 42) -> Payload:
    return Payload(body=body, properties={**PROPERTIES, "seq": str(seq)})


def connection_string(gateway: str, key: str = KEY, module: bool = True) -> str:
    text = f"HostName=myhub.azure-devices.net;GatewayHostName={gateway};DeviceId=car1;"
    return text + ("ModuleId=CanTelemetry;" if module else "") + f"SharedAccessKey={key}"


def topic_properties(topic: str) -> dict[str, str]:
    """The properties the SDK URL-encodes after the topic's last slash."""
    return dict(urllib.parse.parse_qsl(topic.rsplit("/", 1)[1], strict_parsing=True))


@pytest.fixture
def edge_env(monkeypatch: pytest.MonkeyPatch, loopback_address: str, tls_files: TlsFiles) -> None:
    """The IoT Edge development variables, pointing the module at ``loopback_address``."""
    for name in ("IOTHUBHOSTNAME", "DEVICEID", "MODULEID", "GATEWAYHOSTNAME", "WORKLOADURI"):
        monkeypatch.delenv(f"IOTEDGE_{name}", raising=False)
    monkeypatch.setenv("EdgeHubConnectionString", connection_string(loopback_address))
    monkeypatch.setenv("EdgeModuleCACertificateFile", str(tls_files.ca_file))


@pytest.fixture
def hub(mosquitto_factory: MosquittoFactory, loopback_address: str) -> Mosquitto:
    """A broker standing in for edgeHub / IoT Hub on port 8883."""
    return mosquitto_factory(loopback_address, AZURE_PORT)


@pytest.fixture
def closing() -> Iterator[list[Any]]:
    """Uplinks to close after the test; then the garbage the SDK leaves is collected."""
    uplinks: list[Any] = []
    yield uplinks
    for uplink in uplinks:
        uplink.close()  # waits for retired clients
    gc.collect()  # sockets leaked by paho go now, under this module's warning filters


@pytest.fixture
def edge_uplink(edge_env: None, closing: list[Any]) -> AzureEdgeUplink:
    uplink = AzureEdgeUplink(AzureEdgeOptions(keep_alive=5))
    closing.append(uplink)
    return uplink


def assert_raises_within(
    kind: type[Exception], uplink: Any, timeout: float, body: bytes = b"doomed"
) -> Exception:
    start = time.monotonic()
    with pytest.raises(kind) as info:
        uplink.send(payload(body), timeout=timeout)
    assert time.monotonic() - start < timeout + SLACK
    return info.value


# -- options ---------------------------------------------------------------------------------


def test_parse_options(tls_files: TlsFiles) -> None:
    assert AzureEdgeUplink.parse_options({}, "uplink") == AzureEdgeOptions("telemetry", 60)
    assert AzureEdgeOptions.parse({"output": "o2", "keep_alive": 30}, "u").output == "o2"
    table = {"connection_string": connection_string("gw", module=False), "ca_file": "x"}
    with pytest.raises(ConfigError, match="ca_file: no such file"):
        AzureDeviceUplink.parse_options(table, "uplink")
    options = AzureDeviceOptions.parse({**table, "ca_file": str(tls_files.ca_file)}, "uplink")
    assert options.ca_file == str(tls_files.ca_file)
    assert KEY not in repr(options)
    assert KEY not in repr(AzureDeviceUplink(options))


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "is required"),
        (42, "non-empty string"),
        (f"HostName=h;DeviceId=d;SharedAccessKey={KEY};HostName=x", "Key=value pairs"),
        (f"HostName=h;DeviceId=d;SharedAccessKey={KEY};x509=true", "part 4 has an unsupported"),
        (f"HostName=h;DeviceId=d;SharedAccessKey={KEY};{PASTED}", "part 4 has an unsupported"),
        (f"HostName=h;SharedAccessKey={KEY}", "missing DeviceId"),
        (f"HostName=h;DeviceId=d;ModuleId=m;SharedAccessKey={KEY}", "module connection string"),
        ("HostName=h;DeviceId=d;SharedAccessKey=not*base64", "not valid base64"),
    ],
)
def test_parse_rejects_connection_strings_without_quoting_them(value: Any, reason: str) -> None:
    table = {} if value is None else {"connection_string": value}
    with pytest.raises(ConfigError) as info:
        AzureDeviceOptions.parse(table, "uplink")
    assert info.value.field == "uplink.connection_string"
    assert reason in info.value.reason
    assert KEY not in str(info.value) and "not*base64" not in str(info.value)
    assert PASTED.rstrip("=") not in str(info.value)


@pytest.mark.parametrize(
    ("table", "field"),
    [({"keep_alive": 4}, "uplink.keep_alive"), ({"output": ""}, "uplink.output")],
)
def test_parse_rejects_edge_options(table: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        AzureEdgeOptions.parse(table, "uplink")
    assert info.value.field == field


# -- delivery --------------------------------------------------------------------------------


def test_edge_send_delivers_body_and_properties(
    hub: Mosquitto, edge_uplink: AzureEdgeUplink
) -> None:
    with Subscriber(hub, EDGE_TOPIC) as subscriber:
        edge_uplink.send(payload(), timeout=5)
        edge_uplink.send(payload(b"second", seq=43), timeout=5)  # same connection
        first, second = subscriber.get(), subscriber.get()
    assert first.payload == BODY
    assert second.payload == b"second"
    assert topic_properties(first.topic) == {
        "$.on": "telemetry",
        "$.mid": "s1:42",
        "$.ct": CONTENT_TYPE,  # and no $.ce: the body is binary
        **PROPERTIES,
    }
    assert topic_properties(second.topic)["$.mid"] == "s1:43"
    assert "New client connected" in hub.log()
    assert hub.log().count("New client connected") == 2  # the subscriber and one uplink


def test_device_send_through_gateway(
    hub: Mosquitto, loopback_address: str, tls_files: TlsFiles, closing: list[Any]
) -> None:
    table = {
        "connection_string": connection_string(loopback_address, module=False),
        "ca_file": str(tls_files.ca_file),
        "keep_alive": 5,
    }
    uplink = AzureDeviceUplink.from_options(AzureDeviceUplink.parse_options(table, "uplink"))
    closing.append(uplink)
    with Subscriber(hub, "devices/car1/messages/events/#") as subscriber:
        uplink.send(payload(), timeout=5)
        message = subscriber.get()
    assert message.payload == BODY
    assert topic_properties(message.topic) == {"$.mid": "s1:42", "$.ct": CONTENT_TYPE, **PROPERTIES}


# -- failures --------------------------------------------------------------------------------


def test_refused_credentials_are_permanent_and_not_logged(
    mosquitto_factory: MosquittoFactory,
    loopback_address: str,
    edge_uplink: AzureEdgeUplink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    mosquitto_factory(loopback_address, AZURE_PORT, users={"someone": "else"})
    error = assert_raises_within(PermanentUplinkError, edge_uplink, timeout=5)
    assert "credentials refused" in str(error)
    assert KEY not in f"{error!s} {error!r} {edge_uplink!r} {caplog.text}"


def test_oversized_message_is_permanent(hub: Mosquitto, edge_uplink: AzureEdgeUplink) -> None:
    with pytest.raises(PermanentUplinkError, match="256 KB"):
        edge_uplink.send(payload(bytes(300_000)), timeout=5)


def test_missing_edge_environment_is_permanent(
    monkeypatch: pytest.MonkeyPatch, edge_uplink: AzureEdgeUplink
) -> None:
    monkeypatch.delenv("EdgeHubConnectionString")
    with pytest.raises(PermanentUplinkError, match="IoT Edge environment"):
        edge_uplink.send(payload(), timeout=5)


def test_untrusted_hub_is_transient(
    hub: Mosquitto, edge_uplink: AzureEdgeUplink, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    other = TlsFiles.create(tmp_path / "other")
    monkeypatch.setenv("EdgeModuleCACertificateFile", str(other.ca_file))
    assert_raises_within(TransientUplinkError, edge_uplink, timeout=5)


def test_gateway_address_is_checked_against_the_certificate(
    mosquitto_factory: MosquittoFactory,
    loopback_address: str,
    edge_uplink: AzureEdgeUplink,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    tls = TlsFiles.create(tmp_path / "no-ip")  # for localhost and 127.0.0.1 only
    mosquitto_factory(loopback_address, AZURE_PORT, tls=tls)
    monkeypatch.setenv("EdgeModuleCACertificateFile", str(tls.ca_file))
    error = assert_raises_within(TransientUplinkError, edge_uplink, timeout=5)
    assert f"not valid for '{loopback_address}'" in str(error)


def test_hub_restart(hub: Mosquitto, edge_uplink: AzureEdgeUplink) -> None:
    edge_uplink.send(payload(), timeout=5)
    hub.stop()
    for _ in range(2):  # first the connection in use, then new ones
        error = assert_raises_within(TransientUplinkError, edge_uplink, timeout=2)
        assert "Connection" in str(error) or "acknowledged" in str(error)
    hub.start()
    with Subscriber(hub, EDGE_TOPIC) as subscriber:
        edge_uplink.send(payload(b"after restart"), timeout=5)
        assert subscriber.get().payload == b"after restart"


def uplink_threads() -> int:
    return sum(t.name.startswith("azure-edge-") for t in threading.enumerate())


def test_black_hole_meets_the_deadline_then_recovers(
    mosquitto_factory: MosquittoFactory, loopback_address: str, edge_uplink: AzureEdgeUplink
) -> None:
    hub = mosquitto_factory("127.0.0.1", free_port())
    with (
        TcpProxy((loopback_address, AZURE_PORT), ("127.0.0.1", hub.port)) as proxy,
        Subscriber(hub, EDGE_TOPIC) as subscriber,
    ):
        edge_uplink.send(payload(b"before"), timeout=5)
        assert subscriber.get().payload == b"before"

        proxy.blackhole()
        # The open connection goes silent, then new clients try to connect into the hole (and
        # block the SDK's one pipeline thread in the TLS handshake for keep_alive seconds).
        doomed = [f"doomed {i}".encode() for i in range(MAX_RETIRING + 2)]
        error = assert_raises_within(TransientUplinkError, edge_uplink, 0.5, doomed[0])
        assert "not acknowledged within 0.5 s" in str(error)  # the deadline, nothing sooner
        for body in doomed[1:]:
            error = assert_raises_within(TransientUplinkError, edge_uplink, 0.5, body)
            assert "not acknowledged within 0.5 s" in str(error) or "shutting down" in str(error)
        assert uplink_threads() <= 2 * MAX_RETIRING + 1  # retired clients do not pile up

        proxy.resume()
        # Delivery resumes, as the forwarder sees it: a transient failure right after the link
        # comes back (a retired client finishing its connect takes the client id over) is
        # retried. Each attempt has its own body, so "never sent twice" stays checkable.
        attempts = [f"after {i}".encode() for i in range(5)]
        delivered = None
        for body in attempts:
            try:
                edge_uplink.send(payload(body), timeout=10)
            except TransientUplinkError:
                continue
            delivered = body
            break
        assert delivered is not None, "no send succeeded after the link came back"
        bodies = []
        while delivered not in bodies:
            bodies.append(subscriber.get().payload)
        time.sleep(0.5)  # anything still on its way
        bodies += [m.payload for m in list(subscriber.messages.queue)]
    # An abandoned message may still arrive, once (at-least-once: the forwarder sends it again
    # anyway), but a retired client never sends it again after a reconnect.
    assert bodies.count(delivered) == 1
    assert all(bodies.count(body) <= 1 for body in doomed + attempts)
