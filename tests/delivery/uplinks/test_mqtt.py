"""The mqtt uplink against a real mosquitto over TLS: delivery, outages, black holes, refusals."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.delivery.uplinks.mqtt import MqttOptions, MqttUplink
from edge.errors import ConfigError, PermanentUplinkError, TransientUplinkError
from edge.wire.payload import CONTENT_TYPE, Payload
from tests.support.mosquitto import Mosquitto, MosquittoFactory, Subscriber, TlsFiles, free_port
from tests.support.tcpproxy import TcpProxy

SLACK = 1.0  # generous: a send may end this much after its timeout
BODY = bytes(range(256)) * 4  # binary, with NUL and 0xff bytes
PROPERTIES = {
    "kind": "data",
    "stream": "s1",
    "seq": "42",
    "vehicle": "car1",
    "schema": "5f3a",
    "compression": "zstd",
    "format": "1",
}
PASSWORD = "s3cret-Pa55word"


def payload(seq: int = 42, body: bytes = BODY) -> Payload:
    return Payload(body=body, properties={**PROPERTIES, "seq": str(seq)})


def options(tls_files: TlsFiles, port: int, **overrides: Any) -> MqttOptions:
    table = {"host": "127.0.0.1", "port": port, "ca_file": str(tls_files.ca_file), "keepalive": 5}
    return MqttOptions.parse({**table, **overrides}, "uplink")


@pytest.fixture
def broker(mosquitto_factory: MosquittoFactory) -> Mosquitto:
    return mosquitto_factory("127.0.0.1", free_port())


UplinkFactory = Callable[[MqttOptions], MqttUplink]


@pytest.fixture
def uplink_factory() -> Iterator[UplinkFactory]:
    """Make uplinks that are closed after the test."""
    uplinks: list[MqttUplink] = []

    def make(opts: MqttOptions) -> MqttUplink:
        uplinks.append(MqttUplink(opts))
        return uplinks[-1]

    yield make
    for uplink in uplinks:
        uplink.close()


def assert_raises_within(kind: type[Exception], uplink: MqttUplink, timeout: float) -> Exception:
    start = time.monotonic()
    with pytest.raises(kind) as info:
        uplink.send(payload(), timeout=timeout)
    assert time.monotonic() - start < timeout + SLACK
    return info.value


# -- options ---------------------------------------------------------------------------------


def test_parse_defaults() -> None:
    opts = MqttOptions.parse({"host": "broker.example"}, "uplink")
    assert opts == MqttOptions(host="broker.example")
    assert (opts.port, opts.tls, opts.qos, opts.protocol) == (8883, True, 1, "5")
    assert MqttOptions.parse({"host": "h", "tls": False}, "uplink").port == 1883
    assert MqttUplink.parse_options({"host": "h"}, "uplink") == MqttOptions(host="h")


@pytest.mark.parametrize(
    ("table", "field", "reason"),
    [
        ({}, "uplink.host", "required"),
        ({"host": ""}, "uplink.host", "non-empty string"),
        ({"host": "h", "port": 0}, "uplink.port", "at least 1"),
        ({"host": "h", "port": "1883"}, "uplink.port", "integer"),
        ({"host": "h", "qos": 2}, "uplink.qos", "at most 1"),
        ({"host": "h", "keepalive": 1}, "uplink.keepalive", "at least 5"),
        ({"host": "h", "protocol": "3.1"}, "uplink.protocol", "one of 5, 3.1.1"),
        ({"host": "h", "ca_file": "/nonexistent/ca.pem"}, "uplink.ca_file", "no such file"),
        ({"host": "h", "tls": False, "ca_file": "x"}, "uplink.ca_file", "tls = true"),
        ({"host": "h", "topic": "a/+/{kind}"}, "uplink.topic", "wildcards"),
        ({"host": "h", "topic": "a/{nope}"}, "uplink.topic", "unknown placeholder {nope}"),
        ({"host": "h", "topic": "a/{kind!r}"}, "uplink.topic", "unknown placeholder"),
        ({"host": "h", "topic": "a/{kind"}, "uplink.topic", "placeholder syntax"),
        ({"host": "h", "password": "p"}, "uplink.password", "needs a username"),
        ({"host": "h", "surprise": 1}, "uplink.surprise", "unknown option"),
    ],
)
def test_parse_rejects(table: dict[str, object], field: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        MqttOptions.parse(table, "uplink")
    assert info.value.field == field
    assert reason in info.value.reason


def test_parse_requires_cert_and_key_together(tls_files: TlsFiles) -> None:
    with pytest.raises(ConfigError, match="go together"):
        MqttOptions.parse({"host": "h", "cert_file": str(tls_files.client_cert_file)}, "u")


def test_password_never_shown(tls_files: TlsFiles) -> None:
    opts = options(tls_files, 1, username="car1", password=PASSWORD)
    assert PASSWORD not in repr(opts)
    assert PASSWORD not in repr(MqttUplink(opts))
    with pytest.raises(ConfigError) as info:
        MqttOptions.parse({"host": "h", "username": "u", "password": 12345678}, "uplink")
    assert "12345678" not in str(info.value)


# -- delivery --------------------------------------------------------------------------------


def test_send_over_tls_with_mqtt5_properties(
    broker: Mosquitto, tls_files: TlsFiles, uplink_factory: UplinkFactory
) -> None:
    uplink = uplink_factory(options(tls_files, broker.port))
    with Subscriber(broker, "vehicles/#") as subscriber:
        uplink.send(payload(), timeout=5)
        message = subscriber.get()
    assert message.topic == "vehicles/car1/telemetry/data"
    assert message.payload == BODY
    assert message.qos == 1
    assert message.properties.ContentType == CONTENT_TYPE
    assert dict(message.properties.UserProperty) == PROPERTIES


def test_send_mqtt311_with_password_and_custom_topic(
    mosquitto_factory: MosquittoFactory, tls_files: TlsFiles, uplink_factory: UplinkFactory
) -> None:
    broker = mosquitto_factory("127.0.0.1", free_port(), users={"car1": PASSWORD})
    opts = options(
        tls_files,
        broker.port,
        protocol="3.1.1",
        username="car1",
        password=PASSWORD,
        topic="fleet/{vehicle}/{stream}/{seq}",
    )
    uplink = uplink_factory(opts)
    with Subscriber(broker, "fleet/#", username="car1", password=PASSWORD) as subscriber:
        for seq in (1, 2):
            uplink.send(payload(seq), timeout=5)
        topics = [subscriber.get().topic for _ in range(2)]
    assert topics == ["fleet/car1/s1/1", "fleet/car1/s1/2"]


def test_send_with_client_certificate(
    mosquitto_factory: MosquittoFactory, tls_files: TlsFiles, uplink_factory: UplinkFactory
) -> None:
    broker = mosquitto_factory("127.0.0.1", free_port(), require_certificate=True)
    client_cert = {
        "cert_file": str(tls_files.client_cert_file),
        "key_file": str(tls_files.client_key_file),
    }
    with Subscriber(broker, "#") as subscriber:
        uplink_factory(options(tls_files, broker.port, **client_cert)).send(payload(), 5)
        assert subscriber.get().payload == BODY
        without = uplink_factory(options(tls_files, broker.port))
        assert_raises_within(TransientUplinkError, without, timeout=3)


def test_qos0_returns_once_written(
    broker: Mosquitto, tls_files: TlsFiles, uplink_factory: UplinkFactory
) -> None:
    uplink = uplink_factory(options(tls_files, broker.port, qos=0))
    with Subscriber(broker, "#") as subscriber:
        uplink.send(payload(), timeout=5)
        assert subscriber.get().payload == BODY


# -- failures --------------------------------------------------------------------------------


def test_refused_credentials_are_permanent_and_not_logged(
    mosquitto_factory: MosquittoFactory,
    tls_files: TlsFiles,
    uplink_factory: UplinkFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    broker = mosquitto_factory("127.0.0.1", free_port(), users={"car1": "the-right-one"})
    for protocol in ("3.1.1", "5"):
        opts = options(
            tls_files, broker.port, protocol=protocol, username="car1", password=PASSWORD
        )
        uplink = uplink_factory(opts)
        error = assert_raises_within(PermanentUplinkError, uplink, timeout=5)
        assert "refused" in str(error)
        assert PASSWORD not in f"{error!s} {error!r} {uplink!r} {caplog.text}"


def test_nothing_listening_is_transient(tls_files: TlsFiles, uplink_factory: UplinkFactory) -> None:
    uplink = uplink_factory(options(tls_files, free_port()))
    error = assert_raises_within(TransientUplinkError, uplink, timeout=3)
    assert "cannot connect" in str(error)


def test_untrusted_server_certificate_is_transient(
    broker: Mosquitto, tmp_path: Path, uplink_factory: UplinkFactory
) -> None:
    other = TlsFiles.create(tmp_path / "other")
    uplink = uplink_factory(options(other, broker.port))
    error = assert_raises_within(TransientUplinkError, uplink, timeout=3)
    assert "CERTIFICATE_VERIFY_FAILED" in str(error)


def test_payload_without_topic_property_is_permanent(tls_files: TlsFiles) -> None:
    uplink = MqttUplink(options(tls_files, 1))
    for bad in ({"kind": "data"}, {**PROPERTIES, "vehicle": "a/b"}):
        with pytest.raises(PermanentUplinkError, match="vehicle"):
            uplink.send(Payload(BODY, bad), timeout=1)


def test_broker_restart(
    broker: Mosquitto, tls_files: TlsFiles, uplink_factory: UplinkFactory
) -> None:
    uplink = uplink_factory(options(tls_files, broker.port))
    uplink.send(payload(1), timeout=5)
    broker.stop()
    assert_raises_within(TransientUplinkError, uplink, timeout=2)
    assert_raises_within(TransientUplinkError, uplink, timeout=2)
    broker.start()
    with Subscriber(broker, "#") as subscriber:
        uplink.send(payload(2), timeout=5)
        assert subscriber.get().payload == BODY


def mqtt_threads() -> int:
    return sum(t.name.startswith("mqtt-") for t in threading.enumerate())


def test_black_hole_times_out_then_recovers_without_leftovers(
    broker: Mosquitto, tls_files: TlsFiles, uplink_factory: UplinkFactory
) -> None:
    with (
        Subscriber(broker, "#") as subscriber,
        TcpProxy(("127.0.0.1", free_port()), ("127.0.0.1", broker.port)) as proxy,
    ):
        baseline = mqtt_threads()
        uplink = uplink_factory(options(tls_files, proxy.listen[1]))
        uplink.send(payload(1), timeout=5)
        assert subscriber.get().payload == BODY

        proxy.blackhole()
        for _ in range(3):  # an open but silent connection, then connection attempts into it
            error = assert_raises_within(TransientUplinkError, uplink, timeout=1)
            assert "before the deadline" in str(error)

        proxy.resume()
        uplink.send(payload(2, b"after the outage"), timeout=5)
        bodies: list[bytes] = []
        while b"after the outage" not in bodies:
            bodies.append(subscriber.get().payload)
        # The first abandoned publish may arrive too (it sat in a socket): at-least-once.
        assert set(bodies) <= {BODY, b"after the outage"}

        uplink.close()
        deadline = time.monotonic() + 15  # a connect stuck in the black hole ends at keepalive
        while mqtt_threads() > baseline and time.monotonic() < deadline:
            time.sleep(0.05)
        assert mqtt_threads() == baseline
