"""Read SocketCAN frames together with the kernel's count of frames it dropped.

When a CAN_RAW socket's receive buffer is full, the kernel drops the frame and counts it, per
socket. python-can's :class:`~can.interfaces.socketcan.SocketcanBus` cannot report that count.
With the socket option ``SO_RXQ_OVFL`` enabled, the kernel attaches the running total (a
``uint32``, as a ``SOL_SOCKET``/``SO_RXQ_OVFL`` control message) to every frame it queues *after*
a drop, next to the receive timestamp; before the first drop it attaches nothing. So drops show up
only with the next frame that gets through; ``SO_MEMINFO`` reads the total at any time.

:class:`DropCountingReceiver` reads frames from a bus's socket itself (as python-can's
``capture_message`` does) and returns each as a :class:`can.Message` with that total. Read a
socket through it *or* through the bus, not both. :class:`DropCounter` adds those totals up over
the sockets a source opens in turn.

The rest is what a long-running reader needs around python-can's bus: :func:`set_receive_buffer`
(the default buffer holds only a few hundred frames), :func:`link_is_up` (the interface's
administrative state), :func:`require_interface` and :func:`close_unbound_socket` (opening a bus
on a missing interface). Linux only; the module imports everywhere.
"""

from __future__ import annotations

import errno
import select
import socket
import struct
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import can

if TYPE_CHECKING:
    from can.interfaces.socketcan import SocketcanBus

__all__ = [
    "DropCounter",
    "DropCountingReceiver",
    "ReceivedFrame",
    "close_unbound_socket",
    "link_is_up",
    "require_interface",
    "set_receive_buffer",
]

# <asm-generic/socket.h> and <linux/sock_diag.h>; Python's socket module does not name them.
_SO_TIMESTAMP = 29  # struct timeval
_SO_RCVBUFFORCE = 33  # SO_RCVBUF beyond net.core.rmem_max; needs CAP_NET_ADMIN
_SO_TIMESTAMPNS = 35  # struct timespec
_SO_RXQ_OVFL = 40  # uint32: frames dropped so far
_SO_MEMINFO = 55  # uint32[SK_MEMINFO_VARS]
_SK_MEMINFO_DROPS = 8

# <linux/can.h>
_CAN_EFF_FLAG = 0x80000000
_CAN_RTR_FLAG = 0x40000000
_CAN_ERR_FLAG = 0x20000000
_CAN_EFF_MASK = 0x1FFFFFFF
_CAN_SFF_MASK = 0x7FF
_CANFD_BRS = 0x01
_CANFD_ESI = 0x02
_CAN_MTU = 16
_CANFD_MTU = 72
_CAN_MAX_DLEN = 8
_IFF_UP = 0x1  # <linux/if.h>
_COUNTER_WRAP = 1 << 32
# can_id, len, flags (FD only), padding, len8_dlc (classic only), then the data at offset 8
_FRAME_HEADER = struct.Struct("=IBB1xB")
_TIME_PAIR = struct.Struct("@ll")  # timeval and timespec alike: seconds, then µs or ns
_DROP_COUNTER = struct.Struct("=I")

_ANCILLARY_SIZE = (
    socket.CMSG_SPACE(_TIME_PAIR.size) + socket.CMSG_SPACE(_DROP_COUNTER.size)
    if hasattr(socket, "CMSG_SPACE")  # not on Windows
    else 0
)


class ReceivedFrame(NamedTuple):
    """A frame and the socket's drop counter as of the moment the kernel queued the frame."""

    message: can.Message
    #: Frames this socket has lost to a full receive buffer since it was opened (wraps at 2**32).
    dropped_total: int


class DropCountingReceiver:
    """Receives frames from a SocketCAN raw socket along with its receive-queue drop counter.

    ``source`` is a python-can ``SocketcanBus`` (its ``socket`` is used; open it with
    ``fd=True`` to see CAN FD frames) or a bound ``AF_CAN``/``CAN_RAW`` socket. Enables
    ``SO_RXQ_OVFL`` and nanosecond kernel timestamps on it. Errors are raised as python-can
    raises them: :class:`can.CanOperationError` with the ``errno`` as ``error_code``.
    """

    def __init__(self, source: SocketcanBus | socket.socket) -> None:
        if isinstance(source, socket.socket):
            self._socket = source
            self._channel = ""
        else:
            self._socket = source.socket
            self._channel = str(source.channel or "")
        try:
            self._socket.setsockopt(socket.SOL_SOCKET, _SO_RXQ_OVFL, 1)
            self._socket.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
        except OSError as exc:
            raise can.CanOperationError(f"cannot enable SO_RXQ_OVFL: {exc}", exc.errno) from exc

    def recv(self, timeout: float | None = None) -> ReceivedFrame | None:
        """The next frame, or None if none arrives within ``timeout`` seconds (None: wait).

        A pending socket error (``ENETDOWN`` after the link went down, ``ENODEV`` after it was
        deleted) is raised before any frame still queued, once."""
        try:
            if timeout == 0:  # what is queued already: one system call, not two
                try:
                    frame, ancillary, flags, address = self._socket.recvmsg(
                        _CANFD_MTU, _ANCILLARY_SIZE, socket.MSG_DONTWAIT
                    )
                except BlockingIOError:
                    return None
            else:
                readable, _, _ = select.select([self._socket], [], [], timeout)
                if not readable:
                    return None
                frame, ancillary, flags, address = self._socket.recvmsg(_CANFD_MTU, _ANCILLARY_SIZE)
        except OSError as exc:
            raise can.CanOperationError(f"cannot receive: {exc.strerror}", exc.errno) from exc

        timestamp: float | None = None
        dropped_total = 0  # no counter attached: nothing dropped yet
        for level, kind, data in ancillary:
            if level != socket.SOL_SOCKET:
                continue
            if kind == _SO_TIMESTAMPNS:
                seconds, nanoseconds = _TIME_PAIR.unpack_from(data)
                timestamp = seconds + nanoseconds * 1e-9
            elif kind == _SO_TIMESTAMP:
                seconds, microseconds = _TIME_PAIR.unpack_from(data)
                timestamp = seconds + microseconds * 1e-6
            elif kind == _SO_RXQ_OVFL:
                (dropped_total,) = _DROP_COUNTER.unpack_from(data)
        if timestamp is None:  # only if someone turned timestamping off on the socket
            timestamp = time.time()

        channel = self._channel or (address[0] if isinstance(address, tuple) else str(address))
        # The kernel marks frames that were sent on this host (on vcan: all of them).
        is_rx = not flags & socket.MSG_DONTROUTE
        return ReceivedFrame(_parse_frame(frame, timestamp, channel, is_rx), dropped_total)

    def dropped_total(self) -> int:
        """The socket's drop counter now (``SO_MEMINFO``), without waiting for the next frame."""
        try:
            meminfo = self._socket.getsockopt(
                socket.SOL_SOCKET, _SO_MEMINFO, 4 * (_SK_MEMINFO_DROPS + 1)
            )
        except OSError as exc:
            raise can.CanOperationError(f"cannot read SO_MEMINFO: {exc}", exc.errno) from exc
        (dropped,) = _DROP_COUNTER.unpack_from(meminfo, 4 * _SK_MEMINFO_DROPS)
        return int(dropped)


class DropCounter:
    """Frames lost to full receive buffers, added up over the sockets a reader opens in turn.

    Each socket's kernel counter starts at 0 and wraps at 2**32. Readings may come out of order:
    a frame queued before a drop carries the older total, after ``SO_MEMINFO`` read a newer one.
    So a reading counts only when it is ahead of the last one (serial number arithmetic).
    """

    def __init__(self) -> None:
        #: frames dropped so far, over every socket
        self.total = 0
        self._last = 0  # the current socket's last counted reading

    def new_socket(self) -> None:
        """The readings now come from a newly opened socket (whose counter starts at 0)."""
        self._last = 0

    def update(self, reading: int) -> int:
        """Take a reading of the current socket's counter; return :attr:`total`."""
        ahead = (reading - self._last) % _COUNTER_WRAP
        if 0 < ahead < _COUNTER_WRAP // 2:
            self._last = reading % _COUNTER_WRAP
            self.total += ahead
        return self.total


def set_receive_buffer(sock: socket.socket, size: int) -> int:
    """Ask for a receive buffer of ``size`` bytes; return what the socket got.

    Linux reserves twice the size asked for (half of it pays for its bookkeeping) and reports
    that; it stores a classic frame in about 800 bytes of it. Above ``net.core.rmem_max`` only
    a process with ``CAP_NET_ADMIN`` gets the size (``SO_RCVBUFFORCE``); any other gets that
    limit.
    """
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, size)
    except OSError as exc:
        if exc.errno != errno.EPERM:
            raise
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


def link_is_up(channel: str, sysfs: Path = Path("/sys/class/net")) -> bool | None:
    """Whether network interface ``channel`` is administratively up (``ip link set ... up``):
    False when it is down or does not exist, None when that cannot be told (no sysfs)."""
    if not channel or "/" in channel or not sysfs.is_dir():
        return None
    try:
        flags = int((sysfs / channel / "flags").read_text(), 0)
    except FileNotFoundError:
        return False
    except (OSError, ValueError):
        return None
    return bool(flags & _IFF_UP)


def require_interface(channel: str) -> None:
    """Raise ``OSError(ENODEV)`` unless network interface ``channel`` exists.

    Checked before python-can opens a bus, which would log an error of its own on each attempt
    and leave an open socket behind (see :func:`close_unbound_socket`).
    """
    try:
        socket.if_nametoindex(channel)
    except OSError:
        raise OSError(errno.ENODEV, f"no network interface {channel!r}") from None


def close_unbound_socket(exc: BaseException) -> None:
    """Close the socket python-can's ``SocketcanBus`` created and leaves behind when it raises
    ``exc`` from its constructor (binding to a missing interface): left to the garbage
    collector, it would be closed with a ``ResourceWarning`` at some random later time."""
    from can.interfaces.socketcan import SocketcanBus  # importable here: it just raised

    for frame, _ in traceback.walk_tb(exc.__traceback__):
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, SocketcanBus) and isinstance(
            getattr(candidate, "socket", None), socket.socket
        ):
            candidate.socket.close()


def _parse_frame(frame: bytes, timestamp: float, channel: str, is_rx: bool) -> can.Message:
    """A ``struct can_frame`` (16 bytes) or ``struct canfd_frame`` (72 bytes) as a Message."""
    can_id, length, fd_flags, len8_dlc = _FRAME_HEADER.unpack_from(frame)
    is_fd = len(frame) == _CANFD_MTU
    is_extended = bool(can_id & _CAN_EFF_FLAG)
    is_remote = bool(can_id & _CAN_RTR_FLAG)
    dlc = length
    if not is_fd and length == _CAN_MAX_DLEN and _CAN_MAX_DLEN < len8_dlc <= 15:
        dlc = len8_dlc  # a classic frame's raw DLC 9..15, which still carries 8 bytes
    return can.Message(
        timestamp=timestamp,
        arbitration_id=can_id & (_CAN_EFF_MASK if is_extended else _CAN_SFF_MASK),
        is_extended_id=is_extended,
        is_remote_frame=is_remote,
        is_error_frame=bool(can_id & _CAN_ERR_FLAG),
        is_fd=is_fd,
        is_rx=is_rx,
        bitrate_switch=is_fd and bool(fd_flags & _CANFD_BRS),
        error_state_indicator=is_fd and bool(fd_flags & _CANFD_ESI),
        dlc=dlc,
        # A remote frame's length is the requested DLC; it carries no data.
        data=b"" if is_remote else frame[8 : 8 + length],
        channel=channel,
        check=False,
    )
