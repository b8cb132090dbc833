"""Uplinks to Azure IoT Hub with azure-iot-device 2.x (MQTT over TLS, port 8883).

* ``azure-edge`` (:class:`AzureEdgeUplink`): as an IoT Edge module, to the local edgeHub, which
  stores and forwards to IoT Hub; ``IoTHubModuleClient.create_from_edge_environment()`` and
  ``send_message_to_output(message, output)``.
* ``azure-device`` (:class:`AzureDeviceUplink`): as a device, straight to IoT Hub, or to a
  gateway when the connection string has ``GatewayHostName`` (then ``ca_file`` names the CA that
  signed the gateway's certificate); ``IoTHubDeviceClient.create_from_connection_string()`` and
  ``send_message(message)``.

Each payload becomes one message: the body bytes unchanged, ``message_id`` = the payload's
``{stream}:{seq}`` (lets the cloud drop duplicates of at-least-once delivery), ``content_type`` =
the payload's MIME type, ``content_encoding`` unset (the body is binary msgpack, not text), and
the payload's properties as application properties for IoT Hub routing.

The deadline. The SDK's ``send_message*`` waits for PUBACK with no timeout: when the link goes
silent it blocks until paho's keep-alive notices (up to twice ``keep_alive``), and a connection
attempt into a silent link blocks the SDK's single, process-wide pipeline thread for the TLS
handshake (paho uses ``keep_alive`` as that timeout) and its 60 s CONNACK watchdog. So each
attempt (creating the client included, which also waits for that thread) runs on a worker
thread that the caller waits for until ``timeout`` and then abandons.

An abandoned or failed send poisons its client: paho keeps every unacknowledged QoS 1 message
of a client object and publishes it again after each reconnect, and a PUBACK arriving for an
operation the SDK already failed is kept as an "unknown completion" that could confirm a later,
different message reusing the packet id. So a client is shut down (on a background thread, which
also cancels the abandoned operation) after any failure, and the next send creates a new one;
nothing piles up across an outage. The SDK's own reconnection is off (``connection_retry``):
retrying is the forwarder's job, and a dropped link then fails the send in flight at once.
While MAX_RETIRING retired clients are still shutting down (all waiting for the blocked pipeline
thread), ``send`` waits for one to finish, within its deadline, before creating another.

SDK exceptions map to ours through the one classifier shared with the IoT Edge module,
:func:`edge.delivery.uplinks.azure_sdk.classify`: :class:`~edge.errors.PermanentUplinkError` for
refused credentials (``CredentialError``: CONNACK 4/5), a message over IoT Hub's 256 KB limit,
and a missing or broken IoT Edge environment; everything else (``ConnectionFailedError``,
``ConnectionDroppedError``, ``NoConnectionError``, ``OperationCancelled``, ``OperationTimeout``,
other ``ClientError`` such as an untrusted certificate, a failing IoT Edge workload API) is a
:class:`~edge.errors.TransientUplinkError`.

Options of ``azure-edge``: ``output`` (default ``"telemetry"``), ``keep_alive`` (seconds, default
60). Options of ``azure-device``: ``connection_string`` (required, a secret: never logged, shown
or echoed in errors), ``ca_file`` (PEM file, optional), ``keep_alive``. Both are declared in
:mod:`edge.config.uplinks`.
"""

from __future__ import annotations

import logging
import threading
import time
from abc import abstractmethod
from pathlib import Path
from typing import Any

from azure.iot.device import IoTHubDeviceClient, Message

from edge.config.uplinks import AzureDeviceOptions, AzureEdgeOptions
from edge.delivery.uplinks.azure_sdk import classify, edge_module_client, shutdown_client
from edge.delivery.uplinks.base import Uplink
from edge.errors import PermanentUplinkError, TransientUplinkError
from edge.wire.payload import Payload

__all__ = ["AzureDeviceOptions", "AzureDeviceUplink", "AzureEdgeOptions", "AzureEdgeUplink"]

_log = logging.getLogger(__name__)

#: Retired clients that may still be shutting down when ``send`` creates another.
MAX_RETIRING = 3
#: How long ``close()`` waits for the clients to shut down.
CLOSE_TIMEOUT = 5.0


class _Attempt:
    """One send running on a worker thread, which the caller may walk away from."""

    def __init__(self, client: Any) -> None:
        self.lock = threading.Lock()
        self.finished = threading.Event()
        self.client = client  # None until the worker created one
        self.error: BaseException | None = None
        self.abandoned = False


class _AzureUplink(Uplink):
    """What both Azure uplinks share: one SDK client at a time, every send under a deadline."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # one send at a time
        self._client: Any = None
        self._retiring: list[threading.Thread] = []  # one per client still shutting down

    @abstractmethod
    def _create_client(self) -> Any:
        """A new, unconnected SDK client (the SDK connects on the first send)."""

    @abstractmethod
    def _deliver(self, client: Any, message: Message) -> None:
        """Send ``message`` with ``client``, returning after IoT Hub / edgeHub acknowledged it."""

    def send(self, payload: Payload, timeout: float) -> None:
        """Send ``payload`` as one message and wait for its acknowledgement (see the module
        docstring); TransientUplinkError when that takes longer than ``timeout``."""
        deadline = time.monotonic() + timeout
        if not self._lock.acquire(timeout=max(timeout, 0.0)):
            raise TransientUplinkError("another send is still in progress")
        try:
            self._send(payload, timeout, deadline)
        finally:
            self._lock.release()

    def _send(self, payload: Payload, timeout: float, deadline: float) -> None:
        while self._client is None:  # a new client is needed: bound the ones still retiring
            self._retiring = [t for t in self._retiring if t.is_alive()]
            if len(self._retiring) < MAX_RETIRING:
                break
            if time.monotonic() >= deadline:
                raise TransientUplinkError(
                    f"{len(self._retiring)} earlier connections are still shutting down"
                )
            self._retiring[0].join(max(deadline - time.monotonic(), 0.0))
        attempt = _Attempt(self._client)
        self._client = None  # given back below only if the attempt succeeds
        worker = threading.Thread(
            target=self._run, args=(attempt, _message(payload)), name=f"{self.kind}-send"
        )
        worker.daemon = True
        worker.start()
        if not attempt.finished.wait(max(deadline - time.monotonic(), 0.0)):
            with attempt.lock:
                attempt.abandoned = True
                client = attempt.client
            if client is not None:
                self._retire(client)
            else:  # the worker shuts down the client it is creating
                self._retiring.append(worker)
            raise TransientUplinkError(f"not acknowledged within {timeout:g} s")
        if attempt.error is not None:
            if attempt.client is not None:
                self._retire(attempt.client)
            error = classify(attempt.error)
            if error is attempt.error:
                raise error
            raise error from attempt.error
        self._client = attempt.client

    def _run(self, attempt: _Attempt, message: Message) -> None:
        """The worker: create the client if needed, then deliver."""
        try:
            client = attempt.client
            if client is None:
                client = self._create_client()
                with attempt.lock:
                    abandoned = attempt.abandoned
                    attempt.client = client
                if abandoned:
                    shutdown_client(client)
                    return
            self._deliver(client, message)
        except BaseException as exc:  # handed to the caller's thread
            attempt.error = exc
        finally:
            attempt.finished.set()

    def _retire(self, client: Any) -> None:
        """Shut ``client`` down on a background thread (it may wait for the pipeline thread)."""
        _log.debug("%s uplink: retiring its SDK client", self.kind)
        thread = threading.Thread(
            target=shutdown_client, args=(client,), name=f"{self.kind}-retire"
        )
        thread.daemon = True
        thread.start()
        self._retiring.append(thread)

    def _release(self, client: Any) -> None:
        """Let go of the idle client at :meth:`close`. Default: shut it down; a subclass whose
        clients belong to someone else (a shared connection) only lets go."""
        self._retire(client)

    def close(self) -> None:
        """Let go of the client, waiting up to CLOSE_TIMEOUT seconds for shutdowns in all."""
        with self._lock:
            if self._client is not None:
                self._release(self._client)
                self._client = None
            end = time.monotonic() + CLOSE_TIMEOUT
            for thread in self._retiring:
                thread.join(max(end - time.monotonic(), 0.0))


def _message(payload: Payload) -> Message:
    """The IoT Hub message for ``payload``."""
    message = Message(  # type: ignore[no-untyped-call]  # the SDK's __init__ lacks hints
        payload.body, message_id=payload.message_id, content_type=payload.content_type
    )
    message.custom_properties = dict(payload.properties)
    return message


class AzureEdgeUplink(_AzureUplink):
    """Sends to the local IoT Edge hub as this module's output ``options.output``.

    The client reads its identity and the hub's CA from the IoT Edge environment (``IOTEDGE_*``
    variables and the workload API); outside IoT Edge the SDK falls back to the variables
    ``EdgeHubConnectionString`` and ``EdgeModuleCACertificateFile`` (simulator, tests).
    """

    kind = "azure-edge"
    Options = AzureEdgeOptions

    def __init__(self, options: AzureEdgeOptions | None = None) -> None:
        """Send as an IoT Edge module with ``options`` (defaults if omitted)."""
        super().__init__()
        self.options = options or AzureEdgeOptions()

    def _create_client(self) -> Any:
        return edge_module_client(keep_alive=self.options.keep_alive, connection_retry=False)

    def _deliver(self, client: Any, message: Message) -> None:
        client.send_message_to_output(message, self.options.output)


class AzureDeviceUplink(_AzureUplink):
    """Sends device-to-cloud messages straight to IoT Hub, or through a gateway."""

    kind = "azure-device"
    Options = AzureDeviceOptions

    def __init__(self, options: AzureDeviceOptions) -> None:
        """Send as the device of ``options.connection_string``."""
        super().__init__()
        self.options = options

    def _create_client(self) -> Any:
        extra: dict[str, Any] = {}
        if self.options.ca_file is not None:
            try:
                extra["server_verification_cert"] = Path(self.options.ca_file).read_text()
            except OSError as exc:
                raise PermanentUplinkError(f"cannot read ca_file: {exc}") from exc
        try:
            return IoTHubDeviceClient.create_from_connection_string(
                self.options.connection_string,
                keep_alive=self.options.keep_alive,
                connection_retry=False,
                **extra,
            )
        except ValueError as exc:  # the SDK's messages do not quote the connection string
            raise PermanentUplinkError(f"connection string refused: {exc}") from None

    def _deliver(self, client: Any, message: Message) -> None:
        client.send_message(message)
