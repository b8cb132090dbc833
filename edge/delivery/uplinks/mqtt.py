"""The ``mqtt`` uplink: publish each payload to any MQTT broker (paho-mqtt 1.6), QoS 1 by default.

A payload is confirmed when the broker's PUBACK arrives (QoS 1), or when it was written to the
socket (QoS 0, no confirmation at all). The topic comes from a template whose placeholders are
payload properties, e.g. ``vehicles/{vehicle}/telemetry/{kind}``. With MQTT 5 every payload
property also travels as a user property and the content type as the Content Type property;
MQTT 3.1.1 has neither, so only the topic carries metadata there. paho 1.6 does not report an
MQTT 5 PUBACK's reason code, so a broker refusing a publish that way still counts as confirmed.

Connections. One paho client holds one network connection and is thrown away after any failure:
a lost connection, a refused one, a PUBACK that did not come before the deadline. The next send
builds a new client. paho keeps unacknowledged QoS 1 messages inside a client object and sends
them again after a reconnect, so a client reused across an outage would accumulate every
abandoned attempt; a fresh client holds nothing, and nothing reconnects behind the forwarder's
back (its retries and backoff are the only ones). Each connection has a thread of its own that
connects (paho's TCP connect and TLS handshake block, the handshake for up to ``keepalive``)
and then runs paho's network loop; ``send`` only waits on it, never longer than its timeout,
and a discarded connection's thread ends by itself (at the latest when ``keepalive`` expires).
An abandoned publish may still reach the broker once, from the socket it was written to.

Errors: refused credentials or identity (CONNACK 1, 2, 4, 5; MQTT 5: 0x84-0x87, 0x8A, 0x8C),
unusable TLS files and payloads lacking a topic property raise
:class:`~edge.errors.PermanentUplinkError`; everything else (unreachable broker, TLS handshake
or certificate failure, lost connection, timeout) raises
:class:`~edge.errors.TransientUplinkError`. Passwords never appear in reprs, logs or messages.

Options (``[uplink]`` with ``type = "mqtt"``; declared in :mod:`edge.config.uplinks`):

* ``host`` (required); ``port`` (default 8883 with TLS, 1883 without)
* ``tls`` (default true); ``ca_file`` (PEM; default: the system's CAs); ``cert_file`` and
  ``key_file`` (a client certificate, both or neither)
* ``username``, ``password``; ``client_id`` (default ``can-telemetry-<host name>``)
* ``topic`` (default ``vehicles/{vehicle}/telemetry/{kind}``; placeholders: ``kind``,
  ``stream``, ``seq``, ``schema``, ``vehicle``, ``compression``, ``format``)
* ``qos`` (0 or 1, default 1); ``keepalive`` (seconds, default 60; also paho's TLS handshake
  timeout); ``protocol`` (``"5"``, the default, or ``"3.1.1"``)
"""

from __future__ import annotations

import socket
import ssl
import string
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.config.uplinks import MqttOptions
from edge.delivery.uplinks.base import Uplink
from edge.errors import (
    PermanentUplinkError,
    RejectedPayloadError,
    TransientUplinkError,
    UplinkError,
)
from edge.wire.payload import Payload

__all__ = ["MqttOptions", "MqttUplink"]

#: CONNACK codes that retrying with the same settings will not change.
_REFUSED_FOR_GOOD = {
    "3.1.1": {1, 2, 4, 5},  # protocol version, identifier rejected, bad credentials, not authorized
    "5": {0x84, 0x85, 0x86, 0x87, 0x8A, 0x8C},  # version, client id, credentials, auth, banned
}


class MqttUplink(Uplink):
    """Publishes each payload to an MQTT broker and waits for the broker's acknowledgement."""

    kind = "mqtt"
    Options = MqttOptions

    def __init__(self, options: MqttOptions) -> None:
        """Publish as described by ``options``; no network I/O until the first send."""
        self.options = options
        self._client_id = options.client_id or f"can-telemetry-{socket.gethostname()}"
        self._lock = threading.Lock()  # one send at a time
        self._connection: _Connection | None = None

    def __repr__(self) -> str:
        o = self.options
        return f"MqttUplink({o.host}:{o.port}, tls={o.tls}, topic={o.topic!r})"

    def topic(self, payload: Payload) -> str:
        """The topic for ``payload``; RejectedPayloadError if a property it needs is missing or
        would change the topic's structure."""
        values: dict[str, str] = {}
        for _, name, _, _ in string.Formatter().parse(self.options.topic):
            if name is None:
                continue
            value = payload.properties.get(name)
            if not value or any(c in value for c in "/+#\0"):
                raise RejectedPayloadError(
                    f"payload property {name}={value!r} cannot fill the topic {self.options.topic}"
                )
            values[name] = value
        return self.options.topic.format_map(values)

    def send(self, payload: Payload, timeout: float) -> None:
        """Publish ``payload`` and return after the broker acknowledged it (see the module
        docstring); never blocks longer than ``timeout``."""
        deadline = time.monotonic() + timeout
        topic = self.topic(payload)
        properties = self._properties(payload)
        if not self._lock.acquire(timeout=max(timeout, 0.0)):
            raise TransientUplinkError("another send is still in progress")
        try:
            connection = self._connection
            if connection is None or connection.failed:
                if connection is not None:
                    connection.close()
                connection = self._connection = _Connection(self.options, self._client_id)
            try:
                connection.wait_connected(deadline)
                connection.publish(topic, payload.body, properties, deadline)
            except UplinkError:
                connection.close()
                self._connection = None
                raise
        finally:
            self._lock.release()

    def _properties(self, payload: Payload) -> Any:
        if self.options.protocol != "5":
            return None
        properties = Properties(PacketTypes.PUBLISH)
        properties.ContentType = payload.content_type
        if payload.properties:
            properties.UserProperty = list(payload.properties.items())
        return properties

    def close(self) -> None:
        """Disconnect (in the background; returns at once)."""
        with self._lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None


class _Connection:
    """One paho client and its network connection; never reconnects, thrown away when done."""

    def __init__(self, options: MqttOptions, client_id: str) -> None:
        self._options = options
        self._where = f"{options.host}:{options.port}"
        self._cond = threading.Condition()
        self._connected = False
        self._failure: tuple[type[UplinkError], str] | None = None
        self._closed = False
        self._running = False  # paho's loop runs: close() may call disconnect()
        self._acked: set[int] = set()
        v5 = options.protocol == "5"
        self._client = mqtt.Client(
            client_id=client_id,
            clean_session=None if v5 else True,
            protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
            reconnect_on_failure=False,
        )
        self._tls = _tls_context(options) if options.tls else None
        if self._tls is not None:
            self._client.tls_set_context(self._tls)
        if options.username is not None:
            self._client.username_pw_set(options.username, options.password)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_publish = self._on_publish
        # paho's loop runs on our own thread (see _run); with this no-op hook paho never writes
        # from the publishing thread but leaves every write to that loop, as with loop_start().
        self._client.on_socket_register_write = lambda *_: None
        threading.Thread(target=self._run, name="mqtt-connection", daemon=True).start()

    @property
    def failed(self) -> bool:
        """Whether this connection is lost or was refused."""
        with self._cond:
            return self._failure is not None

    def wait_connected(self, deadline: float) -> None:
        """Wait for the broker's CONNACK; raise why there is none."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._connected or self._failure is not None,
                max(deadline - time.monotonic(), 0.0),
            )
            self._raise_failure()
            if not self._connected:
                raise TransientUplinkError(f"no connection to {self._where} before the deadline")

    def publish(self, topic: str, body: bytes, properties: Any, deadline: float) -> None:
        """Publish and wait for the PUBACK (QoS 1) or the write (QoS 0) until ``deadline``."""
        info = self._client.publish(topic, body, qos=self._options.qos, properties=properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise TransientUplinkError(f"publish failed: {mqtt.error_string(info.rc)}")
        with self._cond:
            self._cond.wait_for(
                lambda: info.mid in self._acked or self._failure is not None,
                max(deadline - time.monotonic(), 0.0),
            )
            if info.mid in self._acked:
                self._acked.discard(info.mid)
                return
            self._raise_failure()
        raise TransientUplinkError(f"no acknowledgement from {self._where} before the deadline")

    def close(self) -> None:
        """Ask for a disconnect and return; the connection's thread ends once DISCONNECT is
        written (with a silent peer and a full send buffer: when the keep-alive expires)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            if self._failure is None:
                self._failure = (TransientUplinkError, "connection closed")
            running = self._running
        if running:  # else _run() sees _closed after connecting
            self._client.disconnect()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            kind, reason = self._failure
            raise kind(reason)

    def _fail(self, kind: type[UplinkError], reason: str) -> None:
        with self._cond:
            if self._failure is None:
                self._failure = (kind, reason)
            self._connected = False
            self._cond.notify_all()

    def _run(self) -> None:
        """The connection's thread: connect (TCP, TLS handshake: blocking), then run paho's
        network loop until the connection ends. Not paho's loop_start(): its thread dies of the
        ssl.SSLError a TLS alert raises, and nobody would learn that the connection is gone."""
        try:
            if self._connect():
                self._loop()
        finally:
            self._fail(TransientUplinkError, f"connection to {self._where} ended")
            # Close what paho leaves open, and drop the callbacks (they reference this object)
            # so that the client is freed at once and its __del__ closes its socket pair,
            # rather than the garbage collector finding unclosed sockets some time later.
            sock = self._client.socket()
            if sock is not None:
                sock.close()
            self._client.on_connect = self._client.on_disconnect = None
            self._client.on_publish = None

    def _connect(self) -> bool:
        o = self._options
        try:
            if o.protocol == "5":
                self._client.connect(o.host, o.port, keepalive=o.keepalive, clean_start=True)
            else:  # clean_session=True was set on the client
                self._client.connect(o.host, o.port, keepalive=o.keepalive)
        except (OSError, ValueError) as exc:  # ssl.SSLError and socket timeouts are OSErrors
            if self._tls is not None and self._tls.wrapped is not None:
                self._tls.wrapped.close()  # see _TlsContext
            self._fail(TransientUplinkError, f"cannot connect to {self._where}: {exc}")
            return False
        finally:
            if self._tls is not None:
                self._tls.wrapped = None
        with self._cond:
            # Given up on while connecting: CONNECT is still queued; drop it with the socket,
            # or the broker would hand this client id over from a newer connection to it.
            self._running = not self._closed
            return self._running

    def _loop(self) -> None:
        try:
            while self._client.loop(timeout=1.0) == mqtt.MQTT_ERR_SUCCESS:
                pass
        except Exception as exc:  # paho lets ssl.SSLError (e.g. a TLS alert) escape its loop
            self._fail(TransientUplinkError, f"connection to {self._where} failed: {exc}")

    def _on_connect(
        self, _client: Any, _userdata: Any, _flags: Any, rc: Any, _properties: Any = None
    ) -> None:
        code = int(getattr(rc, "value", rc))  # MQTT 5: a ReasonCodes object
        if code == 0:
            with self._cond:
                self._connected = True
                self._cond.notify_all()
            return
        text = mqtt.connack_string(code) if self._options.protocol != "5" else str(rc)
        permanent = code in _REFUSED_FOR_GOOD[self._options.protocol]
        kind = PermanentUplinkError if permanent else TransientUplinkError
        self._fail(kind, f"{self._where} refused the connection: {text} ({code})")

    def _on_disconnect(
        self, _client: Any, _userdata: Any, rc: Any, _properties: Any = None
    ) -> None:
        reason = mqtt.error_string(rc) if isinstance(rc, int) else str(rc)
        self._fail(TransientUplinkError, f"connection to {self._where} lost: {reason}")

    def _on_publish(self, _client: Any, _userdata: Any, mid: int) -> None:
        with self._cond:
            self._acked.add(mid)
            self._cond.notify_all()


class _TlsContext(ssl.SSLContext):
    """An SSLContext that remembers the socket it wrapped last.

    paho 1.6 neither closes nor keeps the socket of a failed TLS handshake (bad certificate,
    handshake timeout); the connection closes it instead of leaving it to the garbage collector.
    """

    wrapped: ssl.SSLSocket | None = None

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        """Wrap as usual and remember the result."""
        self.wrapped = super().wrap_socket(*args, **kwargs)
        return self.wrapped


def _tls_context(options: MqttOptions) -> _TlsContext:
    """Certificate and host name verification on; PermanentUplinkError for unusable files."""
    context = _TlsContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies certificate and host name
    try:
        if options.ca_file is None:
            context.load_default_certs()
        else:
            context.load_verify_locations(cafile=options.ca_file)
        if options.cert_file is not None:
            context.load_cert_chain(options.cert_file, options.key_file)
    except (OSError, ValueError) as exc:
        raise PermanentUplinkError(f"unusable TLS files: {exc}") from exc
    return context
