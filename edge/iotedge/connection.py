"""The module's one connection to the IoT Edge hub, shared by the twin, the direct methods and
the ``azure-edge`` uplink.

edgeHub (like IoT Hub) accepts one connection per module identity: a second one with the same
identity takes over and the first is dropped. So the twin, the methods and the ``azure-edge``
uplink share the one SDK client of :class:`EdgeConnection`, which connects, attaches the twin and
method handlers, and replaces a client that lost its connection (the SDK's own reconnection is
off, as in the uplink: a fresh client is the cure for paho's stale state). With another uplink
(``file``, ``mqtt``) the connection serves the twin and methods only.

The client comes from the IoT Edge environment (:func:`create_module_client`); what its errors
mean is decided in one place, shared with the Azure uplinks:
:func:`edge.delivery.uplinks.azure_sdk.classify`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from edge.delivery.uplinks.azure import AzureEdgeOptions, AzureEdgeUplink
from edge.delivery.uplinks.azure_sdk import describe, edge_module_client, shutdown_client
from edge.errors import TransientUplinkError

__all__ = ["EdgeConnection", "SharedClientUplink", "create_module_client"]

log = logging.getLogger(__name__)

#: How long ``stop`` waits for the connection's threads.
_SHUTDOWN_TIMEOUT = 5.0


def create_module_client(keep_alive: int = 60) -> Any:
    """A connected IoTHubModuleClient from the IoT Edge environment (outside IoT Edge:
    ``EdgeHubConnectionString`` and ``EdgeModuleCACertificateFile``), with the SDK's own
    reconnection and desired-properties re-fetch off (see the module docstring). Errors of the
    environment are classified by :func:`~edge.delivery.uplinks.azure_sdk.classify`; the SDK's
    connection errors are raised as they are (the ``azure-edge`` uplink classifies them, the
    connection's own thread retries them)."""
    client = edge_module_client(
        keep_alive=keep_alive, connection_retry=False, ensure_desired_properties=False
    )
    try:
        client.connect()
    except BaseException:
        shutdown_client(client)
        raise
    return client


class EdgeConnection:
    """The module's one SDK client, shared by the twin, the methods and the ``azure-edge`` uplink.

    :meth:`client` returns the connected client, creating one (and attaching the handlers through
    ``attach``) when there is none or the last one lost its connection. A thread of its own keeps
    a client connected, with a growing delay after failures, so the twin and the methods work
    even while nothing is being sent.
    """

    def __init__(
        self,
        create: Callable[[], Any],
        attach: Callable[[Any], None],
        *,
        retry_initial: float = 1.0,
        retry_max: float = 60.0,
        poll: float = 1.0,
    ) -> None:
        self._create = create
        self._attach = attach
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._poll = poll
        self._lock = threading.Lock()  # guards _current
        self._create_lock = threading.Lock()  # one client is created at a time
        self._current: Any = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._retiring: list[threading.Thread] = []
        #: Clients created so far (each one is a new connection).
        self.connects = 0
        #: The last failure to connect, None once connected.
        self.last_error: str | None = None

    @property
    def connected(self) -> bool:
        """Whether a client is connected now."""
        return self.current() is not None

    def current(self) -> Any:
        """The connected client, or None; never connects."""
        with self._lock:
            client = self._current
        return client if client is not None and client.connected else None

    def client(self) -> Any:
        """The connected client, connecting now if needed (blocking; raises the SDK's or our
        uplink errors when that fails)."""
        with self._create_lock:
            with self._lock:
                client = self._current
            if client is not None:
                if client.connected:
                    return client
                self.forget(client)
                self._retire(client)
            if self._stop.is_set():
                raise TransientUplinkError("the module is stopping")
            client = self._create()
            try:
                self._attach(client)
            except Exception as exc:
                self._retire(client)
                raise TransientUplinkError(f"cannot attach handlers: {describe(exc)}") from exc
            with self._lock:
                self._current = client
            self.connects += 1
            self.last_error = None
            log.info("connected to the IoT Edge hub (connection %d)", self.connects)
            return client

    def forget(self, client: Any) -> None:
        """``client`` is no longer usable (its owner shuts it down): the next :meth:`client`
        creates a new one."""
        with self._lock:
            if self._current is client:
                self._current = None
        self._wake.set()

    def wake(self) -> None:
        """Look at the connection now (the SDK's ``on_connection_state_change`` handler)."""
        self._wake.set()

    def start(self) -> None:
        """Start keeping a client connected."""
        self._thread = threading.Thread(target=self._run, name="edge-connection", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop, and shut the client down (waiting up to a few seconds)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(_SHUTDOWN_TIMEOUT)
        with self._lock:
            client, self._current = self._current, None
        if client is not None:
            self._retire(client)
        end = time.monotonic() + _SHUTDOWN_TIMEOUT
        for thread in self._retiring:
            thread.join(max(0.0, end - time.monotonic()))

    def _retire(self, client: Any) -> None:
        thread = threading.Thread(
            target=shutdown_client, args=(client,), name="edge-connection-retire", daemon=True
        )
        thread.start()
        self._retiring = [t for t in self._retiring if t.is_alive()] + [thread]

    def _run(self) -> None:
        delay = self._retry_initial
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.client()
            except Exception as exc:
                message = describe(exc)
                if message != self.last_error:
                    log.warning("cannot connect to the IoT Edge hub (retrying): %s", message)
                self.last_error = message
                self._stop.wait(delay)
                delay = min(delay * 2, self._retry_max)
                continue
            delay = self._retry_initial
            self._wake.wait(self._poll)


class SharedClientUplink(AzureEdgeUplink):
    """The ``azure-edge`` uplink sending through the module's :class:`EdgeConnection` instead of
    a client of its own (the module identity may connect only once)."""

    def __init__(self, options: AzureEdgeOptions, connection: EdgeConnection) -> None:
        super().__init__(options)
        self._connection = connection

    def _create_client(self) -> Any:
        return self._connection.client()

    def _retire(self, client: Any) -> None:
        super()._retire(client)  # shut down after a failure, as the uplink always does
        self._connection.forget(client)

    def _release(self, client: Any) -> None:
        """At close, let go of the client without shutting it down: the connection owns it."""
