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

import logging
import queue
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import can

from edge.config import BusConfig, ReplayConfig

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


def open_bus(config: BusConfig, filters: Sequence[Mapping[str, Any]] | None = None) -> can.BusABC:
    """Open the python-can bus a :class:`BusConfig` describes."""
    kwargs: dict[str, Any] = dict(config.options)
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
    return can.Bus(
        interface=config.interface,
        channel=config.channel,
        can_filters=list(filters) if filters else None,
        **kwargs,
    )


class BusSource(FrameSource):
    """Reads a live python-can bus. When the bus fails (interface down, device unplugged, driver
    error) it logs, counts, closes the bus and opens it again with a growing delay (capped), so a
    flaky interface never needs a process restart."""

    def __init__(
        self,
        config: BusConfig,
        filters: Sequence[Mapping[str, Any]] | None = None,
        *,
        opener: Callable[[BusConfig, Sequence[Mapping[str, Any]] | None], can.BusABC] = open_bus,
        reopen_max: float = 5.0,
    ) -> None:
        self.config = config
        self.filters = list(filters) if filters else None
        self._opener = opener
        self._reopen_max = reopen_max
        self.frames = 0
        self.errors = 0
        self.reopens = 0
        self.connected = False
        self.last_error = ""

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
            delay = 0.1
            try:
                self._read(bus, out, stop)
            except (can.CanError, OSError) as exc:
                self._failed(f"bus {name} failed: {exc}")
                self.reopens += 1
            finally:
                self.connected = False
                bus.shutdown()
            stop.wait(delay)

    def _failed(self, message: str) -> None:
        self.errors += 1
        if message != self.last_error:
            log.error("%s (retrying)", message)
        self.last_error = message

    def _read(self, bus: can.BusABC, out: FrameQueue, stop: threading.Event) -> None:
        name = self.config.name
        recv = bus.recv
        while not stop.is_set():
            msg = recv(0.1)
            if msg is None:
                continue
            chunk = [msg]
            while len(chunk) < CHUNK:  # take what is already waiting, without blocking
                msg = recv(0)
                if msg is None:
                    break
                chunk.append(msg)
            for m in chunk:
                m.channel = name
            self.frames += len(chunk)
            if not out.put(chunk, stop):
                return

    def stats(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "errors": self.errors,
            "reopens": self.reopens,
            "connected": self.connected,
        }


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
