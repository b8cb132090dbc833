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
import io
import logging
import math
import queue
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import can

from edge.config.model import BusConfig, ReplayConfig
from edge.errors import ConfigError
from edge.ingest.socketcan import (
    DropCounter,
    DropCountingReceiver,
    close_unbound_socket,
    link_is_up,
    require_interface,
    set_receive_buffer,
)

__all__ = [
    "MAX_TIMESTAMP",
    "TIME_JUMP",
    "TIME_STEP_BACK",
    "BusSource",
    "FrameQueue",
    "FrameSource",
    "ReplaySource",
    "TimeGuard",
    "open_bus",
]

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


#: Frame times after this (2100-01-01, seconds since the epoch) cannot be true: such frames
#: are counted (``bad_timestamp``) and skipped, like NaN, infinite and negative times.
MAX_TIMESTAMP = 4_102_444_800.0
#: A frame this much (seconds) ahead of the previous one is held until the next frame says
#: whether time really jumped there (a clock set by NTP, logs joined end to end: both kept) or
#: the frame alone is wrong (a poison timestamp: counted and skipped).
TIME_JUMP = 86_400.0
#: A frame this much (seconds) behind the previous one is a step back of the clock (NTP, a
#: replay starting over): it starts a new chunk, so that the processing stage sees the step at a
#: chunk boundary and restarts its timers there. Smaller disorder is jitter between buses.
TIME_STEP_BACK = 1.0


class TimeGuard:
    """Checks the timestamps of one source's frames before they are handed over.

    A frame whose time is not a number, infinite, negative or after :data:`MAX_TIMESTAMP` is
    skipped and counted (``bad_timestamp``). A frame more than :data:`TIME_JUMP` ahead of the
    previous one is held back: when the next frame is close to it, time really jumped (counted
    in ``time_jumps``) and both go on; when the next frame is back near the old time, the held
    frame alone was wrong and counts as a ``bad_timestamp``. A step back of more than
    :data:`TIME_STEP_BACK` is counted (``time_steps_back``) and reported by :meth:`admit`.
    """

    __slots__ = ("_held", "_last", "bad_timestamp", "time_jumps", "time_steps_back")

    def __init__(self) -> None:
        self._last: float | None = None  # time of the last frame let through
        self._held: can.Message | None = None  # a frame far ahead, until the next one judges it
        self.bad_timestamp = 0
        self.time_jumps = 0
        self.time_steps_back = 0

    def admit(self, msg: can.Message) -> tuple[list[can.Message], bool]:
        """The frames to hand over now that ``msg`` arrived (none, it, or a held one and it),
        and whether time stepped back before the last of them (``msg``: a held frame is never
        behind the frame before it, but ``msg`` may step back from it)."""
        t = msg.timestamp
        try:
            good = 0.0 <= t <= MAX_TIMESTAMP  # false for NaN
        except TypeError:  # no number at all: None from a damaged log's record
            good = False
        if not good:
            self.bad_timestamp += 1
            return [], False
        held = self._held
        if held is not None:
            self._held = None
            if abs(t - held.timestamp) <= TIME_JUMP:  # the jump is real: keep both
                self.time_jumps += 1
                self._last = t
                stepped = t < held.timestamp - TIME_STEP_BACK
                if stepped:
                    self.time_steps_back += 1
                return [held, msg], stepped
            self.bad_timestamp += 1  # the held frame stood alone: poison
        last = self._last
        if last is not None and t - last > TIME_JUMP:
            self._held = msg
            return [], False
        self._last = t
        stepped = last is not None and t < last - TIME_STEP_BACK
        if stepped:
            self.time_steps_back += 1
        return [msg], stepped

    def finish(self) -> list[can.Message]:
        """The source ended: a frame still held is let through (nothing came to contradict it)."""
        held, self._held = self._held, None
        if held is None:
            return []
        self.time_jumps += 1
        self._last = held.timestamp
        return [held]

    def split(self, chunk: Chunk) -> list[Chunk]:
        """``chunk`` with bad frames left out, cut where time steps back (see :meth:`admit`)."""
        if not chunk:
            return []
        # The common case in a few C-level passes: every time finite (a NaN or an infinity makes
        # the sum NaN or infinite) and plausible, the chunk spanning less than a step, and no
        # step or jump from the last frame let through: then the chunk goes on as it is.
        times = [m.timestamp for m in chunk]
        try:
            low, high, last = min(times), max(times), self._last
            whole = (
                self._held is None
                and low >= 0.0
                and high <= MAX_TIMESTAMP
                and high - low <= TIME_STEP_BACK
                and abs(sum(times)) < math.inf
                and (last is None or (low >= last - TIME_STEP_BACK and high - last <= TIME_JUMP))
            )
        except TypeError:  # a time that is no number at all: frame by frame
            whole = False
        if whole:
            self._last = times[-1]
            return [chunk]
        chunks: list[Chunk] = []
        current: Chunk = []
        admit = self.admit
        for msg in chunk:
            passed, stepped = admit(msg)
            if stepped:  # cut before the last frame passed
                current.extend(passed[:-1])
                if current:
                    chunks.append(current)
                current = passed[-1:]
            else:
                current.extend(passed)
        if current:
            chunks.append(current)
        return chunks

    def stats(self) -> dict[str, int]:
        """The counters, for a source's statistics."""
        return {
            "bad_timestamp": self.bad_timestamp,
            "time_jumps": self.time_jumps,
            "time_steps_back": self.time_steps_back,
        }


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
    :class:`~edge.ingest.socketcan.DropCountingReceiver`, so frames keep the kernel's receive time
    and
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
        self._guard = TimeGuard()

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
        for part in self._guard.split(chunk):
            self.frames += len(part)  # counted while handed over (a full queue can hold it)
            if not out.put(part, stop):  # stopped first: never handed over, not counted
                self.frames -= len(part)
                return False
        return True

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
            **self._guard.stats(),
        }
        if self._socketcan:
            stats["link_up"] = self.connected and self.link_up
            stats["link_down_events"] = self.link_down_events
            stats["kernel_dropped"] = self._drops.total
        return stats


#: A replay paced at ``speed`` waits at most this long (wall seconds) for the next frame: a log
#: with a gap (ignition off, logs joined end to end, a clock set forwards) goes on at once.
REPLAY_MAX_WAIT = 10.0

#: python-can's readers of text logs parse line by line from the open file: after a line they
#: cannot parse, a new iteration of the same reader goes on at the next line. ASCReader and
#: CSVReader first take one line as the end of a header: they are given one to take. (Other
#: readers, BLF's among them, cannot resume mid-file.)
_RESUMABLE: dict[type[Any], str | None] = {
    can.CanutilsLogReader: None,
    can.TRCReader: None,
    can.ASCReader: "internal events logged\n",
    can.CSVReader: "timestamp,arbitration_id,extended,remote,error,dlc,data\n",
}


class _Resumed:
    """The rest of a text log for a reader that resumes: ``first`` (a line for it to take as
    the end of a header), then the file's lines, counted."""

    def __init__(self, file: Any, first: str | None) -> None:
        self.file = file
        self.lines = 0  # lines of the file read since the reader resumed
        self._lines = self._read(first)

    def _read(self, first: str | None) -> Iterator[str]:
        if first is not None:
            yield first
        for line in self.file:
            self.lines += 1
            yield line

    def __iter__(self) -> Iterator[str]:
        return self._lines

    def __next__(self) -> str:
        return next(self._lines)

    def close(self) -> None:
        self.file.close()


class ReplaySource(FrameSource):
    """Replays a recorded log (any format python-can's LogReader reads: candump ``.log``,
    ``.asc``, ``.blf``, ``.trc``, ``.csv``) at ``speed`` x real time, or as fast as possible
    (``speed=None``). Log channels map to bus names through ``channels``; a log channel equal to
    a bus name maps to it; with a single bus and no ``channels`` table, every channel maps to it.
    Frames of other channels keep their channel name and are counted as ``unknown_bus``.

    Pacing follows the log's times from the first frame, and starts again from the frame after
    a step back (each pass of ``loop``, a clock stepped back in the log) or a gap longer than
    :data:`REPLAY_MAX_WAIT` at this speed. A record the log reader cannot parse is counted
    (``bad_lines``) and skipped; in the text formats (``.log``, ``.asc``, ``.trc``, ``.csv``)
    reading goes on at the next line, in the others (``.blf``) the reader cannot resume mid-file
    and that pass ends there (logged). Bytes of a text log that are not text in its encoding
    (a cp1252 comment) are read as U+FFFD. A ``loop`` ends after a pass that gave no frame.
    Frame times are checked as live ones are (:class:`TimeGuard`). A missing log, or one
    python-can cannot open (an unknown suffix, a BLF without its header), is a configuration
    error (:class:`~edge.errors.ConfigError`, raised here)."""

    def __init__(self, config: ReplayConfig, bus_names: Sequence[str]) -> None:
        if not Path(config.path).is_file():
            raise ConfigError("replay.log", f"no such file: {config.path}")
        try:
            with can.LogReader(config.path):
                pass
        except Exception as exc:  # python-can's reader refuses the file as it is
            raise ConfigError(
                "replay.log", f"cannot read {config.path}: {type(exc).__name__}: {exc}"
            ) from None
        self.config = config
        self._bus_names = list(bus_names)
        self._names = {name: name for name in self._bus_names}  # each name's own object
        self.frames = 0
        self.unmapped: set[str] = set()
        self.finished = threading.Event()
        #: lines of the log that could not be parsed (skipped)
        self.bad_lines = 0
        #: passes over the log begun (more than one with ``loop``)
        self.passes = 0
        self._guard = TimeGuard()

    def _bus_of(self, channel: object) -> str:
        """The bus name of a log channel: the configured name itself (one string object per bus,
        so that the processing stage tells a frame's bus by identity, as it does live)."""
        key = str(channel)
        names = self._names
        mapped = self.config.channels.get(key)
        if mapped is not None:
            return names.get(mapped, mapped)
        if key in names:
            return names[key]
        if len(self._bus_names) == 1 and not self.config.channels:
            return self._bus_names[0]
        if key not in self.unmapped:
            self.unmapped.add(key)
            log.warning("replay: log channel %r maps to no bus; its frames are skipped", key)
        return key

    def messages(self) -> Iterator[can.Message]:
        """The log's frames with their bus names set (no pacing, no time checks)."""
        while True:
            self.passes += 1
            cache: dict[object, str] = {}
            frames = 0
            for msg in self._read_pass():
                channel = msg.channel
                bus = cache.get(channel)
                if bus is None:
                    bus = cache[channel] = self._bus_of(channel)
                msg.channel = bus
                frames += 1
                yield msg
            if not self.config.loop:
                return
            if not frames:  # another pass would give none either: no spinning through passes
                log.warning("replay %s: a pass gave no frame; not looping", self.config.path)
                return

    def _read_pass(self) -> Iterator[can.Message]:
        """One pass over the log, skipping (and counting) records the reader cannot parse."""
        path = self.config.path
        try:
            reader = can.LogReader(path)
        except Exception as exc:  # changed since the start: nothing to read in this pass
            self.bad_lines += 1
            log.error("replay %s: cannot read the log (%s: %s)", path, type(exc).__name__, exc)
            return
        with reader:
            file = getattr(reader, "file", None)
            if isinstance(file, io.TextIOWrapper):
                file.reconfigure(errors="replace")  # a byte that is no text cannot stop a log
            while True:
                try:
                    yield from reader
                    return
                except Exception as exc:  # what the reader raises on a record it cannot parse
                    file = getattr(reader, "file", None)
                    if isinstance(file, _Resumed) and not file.lines:
                        return  # raised again before reading on (a gzip cut short): the same fault
                    self.bad_lines += 1
                    resumable = type(reader) in _RESUMABLE
                    if self.bad_lines == 1 or not resumable:
                        log.warning(
                            "replay %s: skipping a record it cannot read (%s: %s)%s",
                            path,
                            type(exc).__name__,
                            exc,
                            "" if resumable else "; the reader cannot resume: pass ends",
                        )
                    if not resumable:
                        return
                    base = file.file if isinstance(file, _Resumed) else file
                    header = _RESUMABLE[type(reader)]
                    reader.file = _Resumed(base, header)  # type: ignore[attr-defined]

    def run(self, out: FrameQueue, stop: threading.Event) -> None:
        try:
            if self.config.speed is None:
                self._run_at_max(out, stop)
            else:
                self._run_paced(self.config.speed, out, stop)
        finally:
            self.finished.set()

    def _run_at_max(self, out: FrameQueue, stop: threading.Event) -> None:
        """As fast as possible: times are checked a chunk at a time (:meth:`TimeGuard.split`)."""
        guard = self._guard
        chunk: Chunk = []
        for msg in self.messages():
            chunk.append(msg)
            if len(chunk) >= CHUNK:
                if stop.is_set():
                    return
                for part in guard.split(chunk):
                    self._hand_over(part, out, stop)
                chunk = []
        for part in [*guard.split(chunk), guard.finish()]:
            if part:
                self._hand_over(part, out, stop)

    def _run_paced(self, speed: float, out: FrameQueue, stop: threading.Event) -> None:
        """At ``speed`` x the log's time: each frame's time is checked before it is waited for."""
        guard = self._guard
        base_wall = base_log = 0.0  # pacing: the wall time at which log time base_log is due
        last: float | None = None
        chunk: Chunk = []
        for raw in self.messages():
            if stop.is_set():
                return
            admitted, stepped = guard.admit(raw)
            for i, msg in enumerate(admitted, 1):
                if stepped and i == len(admitted) and chunk:  # a step back starts a chunk
                    self._hand_over(chunk, out, stop)
                    chunk = []
                t = msg.timestamp
                if last is None or t < last or (t - last) / speed > REPLAY_MAX_WAIT:
                    base_wall, base_log = time.monotonic(), t
                last = t
                wait = base_wall + (t - base_log) / speed - time.monotonic()
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
        chunk.extend(guard.finish())
        if chunk:
            self._hand_over(chunk, out, stop)

    def _hand_over(self, chunk: Chunk, out: FrameQueue, stop: threading.Event) -> None:
        self.frames += len(chunk)  # counted while handed over (a full queue can hold it)
        if not out.put(chunk, stop):  # stopped first: never handed over, not counted
            self.frames -= len(chunk)

    def stats(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "bad_lines": self.bad_lines,
            "passes": self.passes,
            **self._guard.stats(),
        }
