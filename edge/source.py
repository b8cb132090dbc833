"""Where frames come from: live python-can buses, or a recorded log replayed.

Each source runs in its own thread and hands frames over in chunks (one queue operation per
chunk, not per frame) through a bounded :class:`FrameQueue`. Every frame leaves a source with
``msg.channel`` set to the configured bus name and its timestamp as the source gave it (kernel
receive time on SocketCAN, the log's time in a replay).

Backpressure: a source blocks when the queue is full instead of dropping in Python. A replay then
simply slows down; a live bus's frames wait in the driver's or kernel's receive buffer, where
overflow is counted (``SO_RXQ_OVFL`` on SocketCAN), which is where a user can see it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import queue
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import can

from edge.config import BusConfig, ReplayConfig
from edge.socketcan import (
    DropCounter,
    DropCountingReceiver,
    close_unbound_socket,
    link_is_up,
    require_interface,
    set_receive_buffer,
)

__all__ = ["BusSource", "FrameQueue", "FrameSource", "ReplaySource", "open_bus"]

log = logging.getLogger(__name__)

CHUNK = 256
Chunk = list[can.Message]


class FrameQueue:
    """A bounded hand-over of frame chunks from source threads to the processing thread."""

    def __init__(self, max_frames: int = 100_000) -> None:
        self._queue: queue.Queue[Chunk] = queue.Queue(maxsize=max(1, max_frames // CHUNK))

    def put(self, chunk: Chunk, stop: threading.Event) -> bool:
        """Block until there is room (or ``stop`` is set: returns False)."""
        while not stop.is_set():
            try:
                self._queue.put(chunk, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def get(self, timeout: float) -> Chunk | None:
        """The next chunk, or None after ``timeout`` seconds."""
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            return None

    def qsize(self) -> int:
        """Chunks waiting (approximate)."""
        return self._queue.qsize()


class FrameSource(ABC):
    """Produces frames until stopped or exhausted."""

    #: frames handed over so far
    frames: int = 0

    @abstractmethod
    def run(self, out: FrameQueue, stop: threading.Event) -> None:
        """Read frames into ``out`` until ``stop`` is set or the source ends."""

    def stats(self) -> dict[str, Any]:
        """Counters for diagnostics."""
        return {"frames": self.frames}


#: Receive buffer asked for on SocketCAN (bytes; the bus option ``receive_buffer``): Linux
#: reserves twice that, room for about 10,000 frames, some seconds of a busy bus while the reader
#: waits. The kernel's default holds about 280.
DEFAULT_RECEIVE_BUFFER = 4 * 1024 * 1024
_MAX_RECEIVE_BUFFER = 1 << 30  # Linux keeps twice the size in an int

#: Socket errors in a row (no frame, no quiet read between them) after which a SocketCAN bus is
#: reopened even if each says only "network is down".
_LINK_ERRORS_BEFORE_REOPEN = 3


def open_bus(config: BusConfig, filters: Sequence[Mapping[str, Any]] | None = None) -> can.BusABC:
    """Open the python-can bus a :class:`BusConfig` describes.

    ``filters`` are python-can ``can_filters``; None lets every frame through, and so does an
    empty list except on SocketCAN, where it lets none through (no message is selected).

    On SocketCAN ``config.receive_buffer`` (bytes, default :data:`DEFAULT_RECEIVE_BUFFER`; also
    accepted as the option ``receive_buffer``) sizes the socket's receive buffer and is not
    passed to python-can; a missing interface
    raises ``OSError(ENODEV)`` without python-can's own error log and leaves no socket behind.
    """
    kwargs: dict[str, Any] = dict(config.options)
    socketcan = config.interface == "socketcan"
    receive_buffer = DEFAULT_RECEIVE_BUFFER
    if socketcan:
        receive_buffer = kwargs.pop("receive_buffer", DEFAULT_RECEIVE_BUFFER)
        if config.receive_buffer is not None:
            receive_buffer = config.receive_buffer
        if (
            isinstance(receive_buffer, bool)
            or not isinstance(receive_buffer, int)
            or not 0 <= receive_buffer <= _MAX_RECEIVE_BUFFER
        ):
            raise ValueError(
                f"receive_buffer must be a number of bytes up to {_MAX_RECEIVE_BUFFER}, "
                f"got {receive_buffer!r}"
            )
        if config.channel:
            require_interface(config.channel)
    if config.bitrate is not None:
        kwargs["bitrate"] = config.bitrate
    if config.fd:
        kwargs["fd"] = True
        if config.data_bitrate is not None:
            kwargs["data_bitrate"] = config.data_bitrate
    if config.interface == "virtual":
        kwargs.setdefault("preserve_timestamps", True)
    if config.receive_own_messages:
        kwargs["receive_own_messages"] = True
    try:
        bus = can.Bus(
            interface=config.interface,
            channel=config.channel,
            can_filters=list(filters) if filters else None,
            **kwargs,
        )
    except Exception as exc:
        if socketcan:
            close_unbound_socket(exc)
        raise
    if socketcan:
        try:
            sock: socket.socket = bus.socket  # type: ignore[attr-defined]
            if filters is not None and not filters:
                # A filter list of length 0 (python-can would make it "pass all").
                sock.setsockopt(socket.SOL_CAN_RAW, socket.CAN_RAW_FILTER, b"")
            got = set_receive_buffer(sock, receive_buffer)
        except BaseException:
            bus.shutdown()
            raise
        if got < 2 * receive_buffer:
            log.warning(
                "bus %s: receive buffer is %d bytes, not the %d asked for (without "
                "CAP_NET_ADMIN Linux caps it at net.core.rmem_max)",
                config.name,
                got,
                2 * receive_buffer,
            )
    return bus


class BusSource(FrameSource):
    """Reads a live python-can bus. When the bus fails (interface down, device unplugged, driver
    error) it logs, counts, closes the bus and opens it again with a growing delay (capped), so a
    flaky interface never needs a process restart.

    On SocketCAN (see docs/socketcan.md) it reads the socket through
    :class:`~edge.socketcan.DropCountingReceiver`, so frames keep the kernel's receive time and
    the frames the kernel dropped because the receive buffer was full are counted
    (``kernel_dropped``). A link set down (``ip link set can0 down``) is not a failure: it is
    reported (``link_up``, ``link_down_events``) and the same socket is read on, which delivers
    again once the link is up. A deleted interface (``ENODEV``), any other socket error, or
    repeated errors make it close and reopen the bus, retrying until the interface is back.
    """

    def __init__(
        self,
        config: BusConfig,
        filters: Sequence[Mapping[str, Any]] | None = None,
        *,
        opener: Callable[[BusConfig, Sequence[Mapping[str, Any]] | None], can.BusABC] = open_bus,
        reopen_max: float = 5.0,
    ) -> None:
        self.config = config
        self.filters = list(filters) if filters is not None else None
        self._opener = opener
        self._reopen_max = reopen_max
        self.frames = 0
        self.errors = 0
        self.reopens = 0
        self.connected = False
        self.last_error = ""
        #: SocketCAN: whether the interface was up when last looked at
        self.link_up = False
        #: SocketCAN: how often the socket reported the link going down
        self.link_down_events = 0
        self._drops = DropCounter()
        self._socketcan = config.interface == "socketcan"

    def run(self, out: FrameQueue, stop: threading.Event) -> None:
        delay = 0.1
        name = self.config.name
        while not stop.is_set():
            try:
                bus = self._opener(self.config, self.filters)
            except (can.CanError, OSError, ValueError) as exc:
                self._failed(f"cannot open {self.config.interface}:{self.config.channel}: {exc}")
                stop.wait(delay)
                delay = min(delay * 2, self._reopen_max)
                continue
            self.connected = True
            if self.errors:
                log.warning("bus %s: open again", name)
            frames_before, opened_at = self.frames, time.monotonic()
            try:
                sock = getattr(bus, "socket", None)
                if self._socketcan and isinstance(sock, socket.socket):
                    self._read_socketcan(sock, out, stop)
                else:
                    self._read(bus, out, stop)
            except (can.CanError, OSError) as exc:
                self._failed(f"bus {name} failed: {exc}")
                self.reopens += 1
            except Exception as exc:  # a bug in a driver must not end the source either
                message = f"bus {name} failed: {type(exc).__name__}: {exc}"
                if message != self.last_error:
                    log.exception("bus %s: unexpected error", name)
                self._failed(message)
                self.reopens += 1
            finally:
                self.connected = False
                self.link_up = False
                try:
                    bus.shutdown()
                except Exception as exc:
                    log.warning("bus %s: closing it failed: %s", name, exc)
            # Retry soon after a bus that worked for a while; back off from one that keeps
            # failing as soon as it is open.
            worked = self.frames > frames_before or time.monotonic() - opened_at > self._reopen_max
            if worked:
                delay = 0.1
            stop.wait(delay)
            if not worked:
                delay = min(delay * 2, self._reopen_max)

    def _failed(self, message: str) -> None:
        self.errors += 1
        if message != self.last_error:
            log.error("%s (retrying)", message)
        self.last_error = message

    def _hand_over(self, chunk: Chunk, out: FrameQueue, stop: threading.Event) -> bool:
        name = self.config.name
        for m in chunk:
            m.channel = name
        self.frames += len(chunk)
        return out.put(chunk, stop)

    def _read(self, bus: can.BusABC, out: FrameQueue, stop: threading.Event) -> None:
        """Read until ``stop``; raise when the bus fails (after handing over what was read)."""
        recv = bus.recv
        while not stop.is_set():
            chunk: Chunk = []
            failure: Exception | None = None
            try:
                msg = recv(0.1)
                if msg is None:
                    continue
                chunk.append(msg)
                while len(chunk) < CHUNK:  # take what is already waiting, without blocking
                    msg = recv(0)
                    if msg is None:
                        break
                    chunk.append(msg)
            except (can.CanError, OSError) as exc:
                if not chunk:
                    raise
                failure = exc
            if not self._hand_over(chunk, out, stop):
                return
            if failure is not None:
                raise failure

    def _read_socketcan(self, sock: socket.socket, out: FrameQueue, stop: threading.Event) -> None:
        """:meth:`_read` for a SocketCAN socket: kernel drop counter, link down and up."""
        receiver = DropCountingReceiver(sock)
        recv = receiver.recv
        drops = self._drops
        drops.new_socket()
        self.link_up = link_is_up(self.config.channel) is not False
        if not self.link_up:
            log.warning("bus %s: link %s is down", self.config.name, self.config.channel)
        meminfo = True  # whether SO_MEMINFO works (Linux 3.9 and later)
        errors = 0  # in a row
        try:
            while not stop.is_set():
                chunk: Chunk = []
                failure: can.CanOperationError | None = None
                dropped: int | None = None
                try:
                    received = recv(0.1)
                    if received is None:  # quiet: catch up with the counter and the link
                        errors = 0
                        if meminfo:
                            try:
                                drops.update(receiver.dropped_total())
                            except can.CanOperationError:
                                meminfo = False
                        if not self.link_up:
                            self._link_state(link_is_up(self.config.channel))
                        continue
                    chunk.append(received.message)
                    dropped = received.dropped_total
                    while len(chunk) < CHUNK:
                        received = recv(0)
                        if received is None:
                            break
                        chunk.append(received.message)
                        dropped = received.dropped_total
                    errors = 0
                except can.CanOperationError as exc:
                    failure = exc
                if dropped:
                    drops.update(dropped)
                if chunk:
                    if not self.link_up:
                        self._link_state(link_is_up(self.config.channel), frames=True)
                    if not self._hand_over(chunk, out, stop):
                        return
                if failure is not None:
                    errors += 1
                    if failure.error_code != errno.ENETDOWN or errors >= _LINK_ERRORS_BEFORE_REOPEN:
                        raise failure
                    self._link_down()
        finally:
            if meminfo:
                with contextlib.suppress(can.CanError):
                    drops.update(receiver.dropped_total())  # the socket's last word

    def _link_down(self) -> None:
        self.link_down_events += 1
        if self.link_up:
            log.warning(
                "bus %s: link %s went down; waiting for it to come up",
                self.config.name,
                self.config.channel,
            )
        self.link_up = False

    def _link_state(self, up: bool | None, *, frames: bool = False) -> None:
        """While the link is known to be down: ``up`` is what sysfs says now (None: cannot
        tell, then frames arriving say it is up; frames queued before it went down do not)."""
        if up or (up is None and frames):
            self.link_up = True
            log.info("bus %s: link %s is up again", self.config.name, self.config.channel)

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = {
            "frames": self.frames,
            "errors": self.errors,
            "reopens": self.reopens,
            "connected": self.connected,
        }
        if self._socketcan:
            stats["link_up"] = self.connected and self.link_up
            stats["link_down_events"] = self.link_down_events
            stats["kernel_dropped"] = self._drops.total
        return stats


class ReplaySource(FrameSource):
    """Replays a recorded log (any format python-can's LogReader reads: candump ``.log``,
    ``.asc``, ``.blf``, ``.trc``, ``.csv``) at ``speed`` x real time, or as fast as possible
    (``speed=None``). Log channels map to bus names through ``channels``; a log channel equal to
    a bus name maps to it; with a single bus and no ``channels`` table, every channel maps to it.
    Frames of other channels keep their channel name and are counted as ``unknown_bus``."""

    def __init__(self, config: ReplayConfig, bus_names: Sequence[str]) -> None:
        self.config = config
        self._bus_names = list(bus_names)
        self.frames = 0
        self.unmapped: set[str] = set()
        self.finished = threading.Event()

    def _bus_of(self, channel: object) -> str:
        key = str(channel)
        mapped = self.config.channels.get(key)
        if mapped is not None:
            return mapped
        if key in self._bus_names:
            return key
        if len(self._bus_names) == 1 and not self.config.channels:
            return self._bus_names[0]
        if key not in self.unmapped:
            self.unmapped.add(key)
            log.warning("replay: log channel %r maps to no bus; its frames are skipped", key)
        return key

    def messages(self) -> Iterator[can.Message]:
        """The log's frames with their bus names set (no pacing)."""
        while True:
            with can.LogReader(self.config.path) as reader:
                cache: dict[object, str] = {}
                for msg in reader:
                    channel = msg.channel
                    bus = cache.get(channel)
                    if bus is None:
                        bus = cache[channel] = self._bus_of(channel)
                    msg.channel = bus
                    yield msg
            if not self.config.loop:
                return

    def run(self, out: FrameQueue, stop: threading.Event) -> None:
        speed = self.config.speed
        start_wall = time.monotonic()
        first: float | None = None
        chunk: Chunk = []
        try:
            for msg in self.messages():
                if stop.is_set():
                    return
                if speed is not None:
                    if first is None:
                        first = msg.timestamp
                    due = start_wall + (msg.timestamp - first) / speed
                    wait = due - time.monotonic()
                    if wait > 0.002:
                        if chunk:
                            self._hand_over(chunk, out, stop)
                            chunk = []
                        if stop.wait(wait):
                            return
                chunk.append(msg)
                if len(chunk) >= CHUNK:
                    self._hand_over(chunk, out, stop)
                    chunk = []
            if chunk:
                self._hand_over(chunk, out, stop)
        finally:
            self.finished.set()

    def _hand_over(self, chunk: Chunk, out: FrameQueue, stop: threading.Event) -> None:
        self.frames += len(chunk)
        out.put(chunk, stop)
