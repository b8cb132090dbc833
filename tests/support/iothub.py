"""A stand-in for IoT Hub / edgeHub in tests: a real TLS mosquitto where the azure-iot-device SDK
connects (port 8883 of a loopback address of the test's own), and :class:`IoTHubResponder`, a
paho client on the broker's plain listener that plays IoT Hub's part of the twin and
direct-method MQTT protocol:

* ``$iothub/twin/GET/?$rid=R`` -> ``$iothub/twin/res/200/?$rid=R`` with the whole twin;
* ``$iothub/twin/PATCH/properties/reported/?$rid=R`` -> ``$iothub/twin/res/204/?$rid=R&$version=V``
  (the patch merged into the reported document);
* desired changes -> ``$iothub/twin/PATCH/properties/desired/?$version=V``;
* ``$iothub/methods/POST/{name}/?$rid=R`` out, ``$iothub/methods/res/{status}/?$rid=R`` back.

These are the topics the SDK subscribes to and publishes on (azure/iot/device/iothub/pipeline/
mqtt_topic_iothub.py).
"""

from __future__ import annotations

import base64
import copy
import gc
import itertools
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from tests.support.mosquitto import AZURE_PORT, Mosquitto, TlsFiles

# paho 1.6's network thread (loop_start, which the SDK uses: "(_thread_main)") dies of the
# ssl.SSLError that writing to a connection its peer closed raises
# (eclipse-paho/paho.mqtt.python#750; our own MQTT uplink does not use that thread for this
# reason). The Azure uplinks abandon such a client at their deadline and make another, which is
# what the tests check; only SSL errors of that thread are let go.
PAHO_THREAD_SSL_ERRORS = pytest.mark.filterwarnings(
    r"ignore:(?s)Exception in thread [^\n]*\(_thread_main\)\n.*\nssl\.SSL\w*Error\b"
    ":pytest.PytestUnhandledThreadExceptionWarning"
)
# paho 1.6 (inside the SDK) leaves sockets to the garbage collector (see test_uplinks_azure.py).
SDK_WARNINGS = [
    pytest.mark.filterwarnings("ignore:unclosed <ssl.SSLSocket:ResourceWarning"),
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <ssl.SSLSocket:pytest.PytestUnraisableExceptionWarning"
    ),
    PAHO_THREAD_SSL_ERRORS,
]
KEY = base64.b64encode(b"a shared access key of 32 bytes!").decode()


def hub_merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """IoT Hub's merge of a twin patch (written here independently of edge.iotedge.twin)."""
    result = dict(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):  # nulls inside a new object are not stored either
            current = result.get(key)
            result[key] = hub_merge(current if isinstance(current, dict) else {}, value)
        else:
            result[key] = copy.deepcopy(value)
    return result


class IoTHubResponder:
    """IoT Hub's part of the twin and direct-method protocols, on the broker's plain listener."""

    def __init__(self, broker: Mosquitto, desired: dict[str, Any] | None = None) -> None:
        self.broker = broker
        self.desired: dict[str, Any] = copy.deepcopy(desired or {})
        self.desired_version = 1
        self.reported: dict[str, Any] = {}
        self.reported_version = 1
        self.gets = 0
        self.reported_patches = 0
        self._condition = threading.Condition()
        self._responses: dict[str, tuple[int, Any]] = {}
        self._rids = itertools.count(1)
        self._client = mqtt.Client(client_id="iothub", protocol=mqtt.MQTTv311)
        self._client.on_message = self._on_message
        subscribed = threading.Event()
        self._client.on_subscribe = lambda *_: subscribed.set()
        self._client.connect("127.0.0.1", broker.plain_port, keepalive=30)
        self._client.subscribe(
            [
                ("$iothub/twin/GET/#", 1),
                ("$iothub/twin/PATCH/properties/reported/#", 1),
                ("$iothub/methods/res/#", 1),
            ]
        )
        self._client.loop_start()
        if not subscribed.wait(5):
            raise RuntimeError(f"responder could not subscribe:\n{broker.log()}")

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def __enter__(self) -> IoTHubResponder:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _on_message(self, _client: Any, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        topic = message.topic
        rid = topic.split("$rid=", 1)[1].split("&", 1)[0] if "$rid=" in topic else ""
        if topic.startswith("$iothub/twin/GET/"):
            with self._condition:
                self.gets += 1
                twin = {
                    "desired": {**self.desired, "$version": self.desired_version},
                    "reported": {**self.reported, "$version": self.reported_version},
                }
            self._client.publish(f"$iothub/twin/res/200/?$rid={rid}", json.dumps(twin), qos=1)
        elif topic.startswith("$iothub/twin/PATCH/properties/reported/"):
            patch = json.loads(message.payload)
            with self._condition:
                self.reported = hub_merge(self.reported, patch)
                self.reported_version += 1
                self.reported_patches += 1
                version = self.reported_version
                self._condition.notify_all()
            self._client.publish(f"$iothub/twin/res/204/?$rid={rid}&$version={version}", b"", qos=1)
        elif topic.startswith("$iothub/methods/res/"):
            status = int(topic.split("/")[3])
            payload = json.loads(message.payload) if message.payload else None
            with self._condition:
                self._responses[rid] = (status, payload)
                self._condition.notify_all()

    def patch_desired(self, patch: dict[str, Any], *, skip: int = 0) -> int:
        """Change the desired properties and send the patch; ``skip`` versions are lost on the
        way (as if sent while the module was offline). Returns the new ``$version``."""
        with self._condition:
            self.desired = hub_merge(self.desired, patch)
            self.desired_version += 1 + skip
            version = self.desired_version
        body = json.dumps({**patch, "$version": version})
        self._client.publish(f"$iothub/twin/PATCH/properties/desired/?$version={version}", body, 1)
        return version

    def invoke(
        self, method: str, payload: Any = None, *, raw: bytes | None = None, timeout: float = 10.0
    ) -> tuple[int, Any]:
        """Call a direct method and wait for its response."""
        rid = str(next(self._rids))
        body = raw if raw is not None else json.dumps(payload).encode()
        self._client.publish(f"$iothub/methods/POST/{method}/?$rid={rid}", body, qos=1)
        with self._condition:
            if not self._condition.wait_for(lambda: rid in self._responses, timeout):
                raise AssertionError(f"no response to {method} within {timeout} s")
            return self._responses.pop(rid)

    def wait_reported(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 10.0
    ) -> dict[str, Any]:
        """The reported document once ``predicate`` holds for it."""
        with self._condition:
            if not self._condition.wait_for(lambda: predicate(self.reported), timeout):
                raise AssertionError(f"reported properties never matched: {self.reported}")
            return copy.deepcopy(self.reported)


def connection_string(gateway: str) -> str:
    return (
        f"HostName=myhub.azure-devices.net;GatewayHostName={gateway};DeviceId=car1;"
        f"ModuleId=CanTelemetry;SharedAccessKey={KEY}"
    )


def edge_hub(
    mosquitto_factory: Any,
    loopback_address: str,
    tls_files: TlsFiles,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Mosquitto]:
    """A broker standing in for edgeHub on port 8883 of ``loopback_address``, and the IoT Edge
    development variables pointing the SDK at it (the body of each test file's ``hub`` fixture)."""
    for name in ("IOTHUBHOSTNAME", "DEVICEID", "MODULEID", "GATEWAYHOSTNAME", "WORKLOADURI"):
        monkeypatch.delenv(f"IOTEDGE_{name}", raising=False)
    monkeypatch.setenv("EdgeHubConnectionString", connection_string(loopback_address))
    monkeypatch.setenv("EdgeModuleCACertificateFile", str(tls_files.ca_file))
    yield mosquitto_factory(loopback_address, AZURE_PORT)
    gc.collect()  # sockets paho left behind go now, under the SDK_WARNINGS filters


@pytest.fixture
def hub(
    mosquitto_factory: Any,
    loopback_address: str,
    tls_files: TlsFiles,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Mosquitto]:
    """The edgeHub stand-in, with the SDK's environment pointing at it."""
    yield from edge_hub(mosquitto_factory, loopback_address, tls_files, monkeypatch)
