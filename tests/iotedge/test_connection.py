"""edge.iotedge.connection: the module's one connection to edgeHub, with the real azure-iot-device
SDK against a real TLS mosquitto playing edgeHub (tests/support/iothub.py)."""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from edge.delivery.uplinks.azure import AzureEdgeOptions
from edge.errors import PermanentUplinkError, TransientUplinkError
from edge.iotedge.connection import EdgeConnection, SharedClientUplink, create_module_client
from edge.wire.payload import Payload
from tests.support.iothub import SDK_WARNINGS
from tests.support.mosquitto import Mosquitto, Subscriber
from tests.support.waiting import wait_for

# paho 1.6 inside the SDK also leaves each client's socket pair to the garbage collector (see
# tests/delivery/uplinks/test_azure.py); the hub fixture collects them when its test ends.
pytestmark = [
    *SDK_WARNINGS,
    pytest.mark.filterwarnings("ignore:unclosed <socket.socket :ResourceWarning"),
    pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <socket.socket :pytest.PytestUnraisableExceptionWarning"
    ),
]

EDGE_TOPIC = "devices/car1/modules/CanTelemetry/messages/events/#"


class Attached:
    """The handlers a module attaches to each new client: here, noting the clients and waking the
    connection when one loses its link (as the module's ``_attach`` does)."""

    def __init__(self) -> None:
        self.clients: list[Any] = []
        self.connection: EdgeConnection | None = None

    def __call__(self, client: Any) -> None:
        assert self.connection is not None
        client.on_connection_state_change = self.connection.wake
        self.clients.append(client)


@pytest.fixture
def attached() -> Attached:
    return Attached()


@pytest.fixture
def connection(attached: Attached) -> Iterator[EdgeConnection]:
    connection = EdgeConnection(
        functools.partial(create_module_client, 5),
        attached,
        retry_initial=0.05,
        retry_max=0.2,
        poll=0.1,
    )
    attached.connection = connection
    yield connection
    connection.stop()


def test_keeps_one_client_connected_and_replaces_a_lost_one(
    hub: Mosquitto, connection: EdgeConnection, attached: Attached
) -> None:
    connection.start()
    first = wait_for(connection.current, what="a connected client")
    assert attached.clients == [first] and connection.connects == 1
    assert connection.client() is first  # the same client while it is connected

    hub.stop()  # edgeHub restarts: the SDK's own reconnection is off, so the link stays down
    wait_for(lambda: not connection.connected, what="the lost connection")
    hub.start()
    second = wait_for(connection.current, timeout=20, what="a new client")
    assert second is not first and attached.clients == [first, second]
    assert connection.connects == 2 and connection.last_error is None

    connection.stop()
    assert connection.current() is None
    assert not second.connected  # shut down


def test_without_an_environment_it_keeps_trying_and_says_why(
    monkeypatch: pytest.MonkeyPatch, connection: EdgeConnection
) -> None:
    for name in ("IOTHUBHOSTNAME", "DEVICEID", "MODULEID", "GATEWAYHOSTNAME", "WORKLOADURI"):
        monkeypatch.delenv(f"IOTEDGE_{name}", raising=False)
    monkeypatch.delenv("EdgeHubConnectionString", raising=False)
    with pytest.raises(PermanentUplinkError, match="IoT Edge environment"):
        connection.client()
    connection.start()
    wait_for(lambda: connection.last_error, what="the reason")
    assert "IoT Edge environment" in str(connection.last_error)
    assert not connection.connected and connection.connects == 0


def test_a_client_whose_handlers_cannot_be_attached_is_not_kept(hub: Mosquitto) -> None:
    created: list[Any] = []

    def create() -> Any:
        created.append(create_module_client(5))
        return created[-1]

    def attach(client: Any) -> None:
        raise RuntimeError("no handlers today")

    connection = EdgeConnection(create, attach)
    try:
        with pytest.raises(TransientUplinkError, match="cannot attach handlers"):
            connection.client()
        assert connection.current() is None and connection.connects == 0
    finally:
        connection.stop()  # waits for the retired client's shutdown
    assert len(created) == 1 and not created[0].connected


def test_the_uplink_sends_through_the_connection_and_leaves_it_open(
    hub: Mosquitto, connection: EdgeConnection
) -> None:
    uplink = SharedClientUplink(AzureEdgeOptions(keep_alive=5), connection)
    payload = Payload(body=b"\x00\x01", properties={"kind": "data", "stream": "s", "seq": "7"})
    with Subscriber(hub, EDGE_TOPIC) as telemetry:
        uplink.send(payload, timeout=10)
        assert telemetry.get().payload == b"\x00\x01"
    client = connection.current()
    assert client is not None and connection.connects == 1  # one identity, one connection
    uplink.close()
    assert connection.current() is client  # the uplink let go; the connection still owns it


def test_concurrent_callers_share_one_new_client(
    hub: Mosquitto, connection: EdgeConnection
) -> None:
    clients: list[Any] = []
    threads = [threading.Thread(target=lambda: clients.append(connection.client())) for _ in "abc"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(clients) == 3 and len({id(c) for c in clients}) == 1
    assert connection.connects == 1
