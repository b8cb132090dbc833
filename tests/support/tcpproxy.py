"""A small TCP proxy that can go silent: the network outage a car meets in a tunnel.

``blackhole()`` stops moving bytes in both directions and stops accepting, but closes nothing:
clients keep an open socket that simply never answers (new connection attempts complete the TCP
handshake in the kernel backlog and then hang the same way). Nothing is lost: unread bytes wait
in the kernel's buffers and ``resume()`` lets them flow again, as TCP would after a short
outage. ``drop_connections()`` closes every proxied
connection at once (a reset middlebox).
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from types import TracebackType

__all__ = ["TcpProxy"]


class TcpProxy:
    """Forwards TCP connections from ``listen`` to ``upstream`` on a background thread."""

    def __init__(self, listen: tuple[str, int], upstream: tuple[str, int]) -> None:
        self.listen = listen
        self.upstream = upstream
        self._listener = socket.create_server(listen)
        self._wake_r, self._wake_w = socket.socketpair()
        self._peers: dict[socket.socket, socket.socket] = {}
        self._lock = threading.Lock()
        self._forwarding = True
        self._stopping = False
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, name=f"tcpproxy-{listen}", daemon=True)
        self._thread.start()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def blackhole(self) -> None:
        """Stop forwarding and accepting; keep every connection open and silent."""
        self._set(forwarding=False)

    def resume(self) -> None:
        """Forward again, including whatever queued up while black-holed."""
        self._set(forwarding=True)

    def drop_connections(self) -> None:
        """Close every proxied connection (both sides)."""
        with self._lock:
            socks = list(self._peers)
            self._peers.clear()
        for sock in socks:
            sock.close()
        self._wake()

    def close(self) -> None:
        """Stop the proxy and close every socket."""
        with self._lock:
            self._stopping = True
        self._wake()
        self._thread.join(timeout=5)
        self.drop_connections()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def _set(self, *, forwarding: bool) -> None:
        with self._lock:
            self._forwarding = forwarding
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # closed already
            self._wake_w.send(b"x")

    def _serve(self) -> None:
        while True:
            with self._lock:
                if self._stopping:
                    return
                forwarding = self._forwarding
                peers = list(self._peers)
            watched = [self._wake_r, *([self._listener, *peers] if forwarding else [])]
            try:
                readable, _, _ = select.select(watched, [], [], 1.0)
            except (OSError, ValueError):  # a socket closed under us by drop_connections()
                continue
            for sock in readable:
                if sock is self._wake_r:
                    self._wake_r.recv(4096)
                elif sock is self._listener:
                    self._accept()
                else:
                    self._pump(sock)

    def _accept(self) -> None:
        client, _ = self._listener.accept()
        self.accepted += 1
        try:
            server = socket.create_connection(self.upstream, timeout=2)
        except OSError:
            client.close()  # upstream down: the client sees its connection closed at once
            return
        server.settimeout(None)
        with self._lock:
            self._peers[client] = server
            self._peers[server] = client

    def _pump(self, sock: socket.socket) -> None:
        with self._lock:
            other = self._peers.get(sock)
        if other is None:
            return
        try:
            data = sock.recv(65536)
            if data:
                other.sendall(data)
                return
        except OSError:
            pass
        with self._lock:
            self._peers.pop(sock, None)
            self._peers.pop(other, None)
        sock.close()
        other.close()
