"""A real mosquitto broker for the tests: TLS with certificates made by trustme, started and
stopped per test, on an address of its own.

The azure-iot-device SDK always connects to port 8883 (there is no port option), so every
test that needs "the IoT Hub" gets a loopback address of its own (``127.x.y.z``; the kernel
routes all of 127.0.0.0/8 to ``lo``) and binds port 8883 there. The server certificate names
that address, and the SDK verifies it (``GatewayHostName`` may be an IP address: Python's ssl
matches it against the certificate's IP SANs). Nothing ever binds outside loopback.

Each broker also has a plain listener on ``127.0.0.1`` and a free port, used by the test-side
:class:`Subscriber` to see what arrived. The broker's log is written to the test's folder and
printed when the fixture tears down, which pytest shows only for a failed test.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import queue
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import trustme

__all__ = [
    "AZURE_PORT",
    "Mosquitto",
    "MosquittoFactory",
    "Subscriber",
    "TlsFiles",
    "free_loopback_address",
    "free_port",
    "loopback_address",
    "mosquitto_factory",
    "tls_files",
]

#: The only port the azure-iot-device SDK connects to (MQTT over TLS).
AZURE_PORT = 8883


def free_port(host: str = "127.0.0.1", attempts: int = 200) -> int:
    """A TCP port nobody uses right now at ``host``, below the kernel's ephemeral range: a
    client retrying a port where nothing listens yet (an uplink that is down) takes ephemeral
    source ports, and one of them could be this port when a test then binds it (it once was:
    ``Address already in use``)."""
    low = _ephemeral_low()
    rng = random.Random()
    for _ in range(attempts):
        port = rng.randrange(max(1024, low - 12_000), low)
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port below {low} at {host}")


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (32768 where it cannot be read)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_loopback_address(port: int = AZURE_PORT, attempts: int = 50) -> str:
    """A random ``127.x.y.z`` (never 127.0.0.0/16) where ``port`` can be bound right now.

    Random, so that test runs in parallel (other checkouts, pytest-xdist) rarely collide; the
    bind check catches the rare collision and a listener on the wildcard address.
    """
    for _ in range(attempts):
        address = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as mosquitto does
            try:
                sock.bind((address, port))
            except OSError:
                continue
            return address
    raise RuntimeError(f"no free loopback address with port {port} after {attempts} attempts")


@dataclass(frozen=True)
class TlsFiles:
    """A test CA, the broker's certificate and a client certificate, as PEM files."""

    ca: trustme.CA
    ca_file: Path
    server_cert_file: Path
    server_key_file: Path
    client_cert_file: Path
    client_key_file: Path

    @property
    def ca_pem(self) -> str:
        """The CA certificate as PEM text."""
        return self.ca_file.read_text()

    @classmethod
    def create(cls, folder: Path, *names: str) -> TlsFiles:
        """Make a CA and a server certificate valid for ``localhost``, 127.0.0.1 and ``names``."""
        folder.mkdir(parents=True, exist_ok=True)
        ca = trustme.CA()
        server = ca.issue_cert("localhost", "127.0.0.1", *names)
        client = ca.issue_cert("car1@example.com", common_name="car1")
        files = cls(
            ca=ca,
            ca_file=folder / "ca.pem",
            server_cert_file=folder / "server.pem",
            server_key_file=folder / "server.key",
            client_cert_file=folder / "client.pem",
            client_key_file=folder / "client.key",
        )
        ca.cert_pem.write_to_path(str(files.ca_file))
        server.private_key_pem.write_to_path(str(files.server_key_file))
        client.private_key_pem.write_to_path(str(files.client_key_file))
        for path, leaf in ((files.server_cert_file, server), (files.client_cert_file, client)):
            path.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        return files


def _password_line(user: str, password: str) -> str:
    """A mosquitto password-file line (``$6$``: salted SHA-512, read by mosquitto 2.x)."""
    salt = os.urandom(12)
    digest = hashlib.sha512(password.encode() + salt).digest()
    return f"{user}:$6${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}\n"


class Mosquitto:
    """One mosquitto process with a generated configuration; can stop and start again on the
    same address and ports (for outage tests)."""

    def __init__(
        self,
        folder: Path,
        host: str,
        port: int,
        tls: TlsFiles,
        *,
        users: Mapping[str, str] | None = None,
        require_certificate: bool = False,
        persistent: bool = False,
    ) -> None:
        """``persistent`` keeps sessions and queued messages across a restart (on disk, with no
        queue limit), so a test-side subscriber with a persistent session misses nothing."""
        executable = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.access(executable, os.X_OK):
            pytest.skip("mosquitto is not installed (run .ci/setup)")
        self.executable = executable
        self.folder = folder
        self.host = host
        self.port = port
        self.plain_port = free_port()
        self.tls = tls
        self.users = dict(users or {})
        self.require_certificate = require_certificate
        self.persistent = persistent
        self.log_file = folder / "mosquitto.log"
        self.config_file = folder / "mosquitto.conf"
        self._process: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        self._write_config()

    def change_users(self, users: Mapping[str, str]) -> None:
        """Replace the user names and passwords (from the next start on)."""
        self.users = dict(users)
        self._write_config()

    def _write_config(self) -> None:
        if self.persistent:
            persistence = [
                "persistence true",
                f"persistence_location {self.folder}/",
                "max_queued_messages 0",  # no limit: tests count everything
                "max_queued_bytes 0",
            ]
        else:
            persistence = ["persistence false"]
        lines = [
            f"user {pwd.getpwuid(os.getuid()).pw_name}",  # do not drop privileges when root
            *persistence,
            "log_dest stderr",
            "log_type all",
            "connection_messages true",
            f"allow_anonymous {'false' if self.users else 'true'}",
        ]
        if self.users:
            password_file = self.folder / "passwords"
            password_file.write_text("".join(_password_line(u, p) for u, p in self.users.items()))
            lines.append(f"password_file {password_file}")
        lines += [
            f"listener {self.port} {self.host}",
            f"cafile {self.tls.ca_file}",
            f"certfile {self.tls.server_cert_file}",
            f"keyfile {self.tls.server_key_file}",
            f"require_certificate {'true' if self.require_certificate else 'false'}",
            f"listener {self.plain_port} 127.0.0.1",
        ]
        self.config_file.write_text("\n".join(lines) + "\n")

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Start the broker and wait until it listens."""
        if self.running:
            return
        offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        with self.log_file.open("ab") as log:
            process = self._process = subprocess.Popen(
                [self.executable, "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and process.poll() is None:
            with self.log_file.open("rb") as output:
                output.seek(offset)
                if b" running" in output.read():
                    return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not start on {self.host}:{self.port}:\n{self.log()}")

    def stop(self) -> None:
        """Stop the broker (SIGTERM, then SIGKILL) and wait for it to exit."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def log(self) -> str:
        """Everything the broker logged so far."""
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


class Subscriber:
    """A test-side MQTT v5 client on the broker's plain listener that records what arrives."""

    def __init__(
        self,
        broker: Mosquitto,
        topic: str,
        *,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(client_id="", protocol=mqtt.MQTTv5)
        if username is not None:
            self._client.username_pw_set(username, password)
        self._client.on_message = lambda _c, _u, message: self.messages.put(message)
        self._client.on_subscribe = lambda *_: self._subscribed.set()
        self._client.connect("127.0.0.1", broker.plain_port, keepalive=30)
        self._client.subscribe(topic, qos=1)
        self._client.loop_start()
        if not self._subscribed.wait(5):
            self.close()
            raise RuntimeError(f"could not subscribe to {topic!r}:\n{broker.log()}")

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def get(self, timeout: float = 5.0) -> mqtt.MQTTMessage:
        """The next message that arrived, waiting up to ``timeout`` seconds."""
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no message arrived within {timeout} s") from None

    def close(self) -> None:
        """Disconnect."""
        self._client.disconnect()
        self._client.loop_stop()
        # The callbacks reference this object; without them the client is freed at once and
        # its __del__ closes paho's socket pair (else a ResourceWarning from the collector).
        self._client.on_message = self._client.on_subscribe = None


@pytest.fixture
def loopback_address() -> str:
    """A loopback address of this test's own, with port 8883 free."""
    return free_loopback_address()


@pytest.fixture
def tls_files(tmp_path: Path, loopback_address: str) -> TlsFiles:
    """CA, server and client certificates; the server's also names ``loopback_address``."""
    return TlsFiles.create(tmp_path / "tls", loopback_address)


#: What the ``mosquitto_factory`` fixture gives: ``(host, port, tls=None, **options) -> Mosquitto``.
MosquittoFactory = Callable[..., Mosquitto]


@pytest.fixture
def mosquitto_factory(tmp_path: Path, tls_files: TlsFiles) -> Iterator[MosquittoFactory]:
    """Start brokers: ``mosquitto_factory(host, port, users=..., require_certificate=...)``,
    with the ``tls_files`` certificates unless ``tls=`` gives others.

    Every broker is stopped at teardown and its log printed (pytest shows it on failure).
    """
    brokers: list[Mosquitto] = []

    def start(host: str, port: int, tls: TlsFiles | None = None, **options: Any) -> Mosquitto:
        folder = tmp_path / f"mosquitto{len(brokers)}"
        broker = Mosquitto(folder, host, port, tls or tls_files, **options)
        brokers.append(broker)
        broker.start()
        return broker

    yield start
    for broker in brokers:
        broker.stop()
        sys.stderr.write(f"---- mosquitto {broker.host}:{broker.port} log ----\n{broker.log()}")
