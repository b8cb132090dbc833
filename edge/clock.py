"""Injectable time, so that tests control it (a fake clock) instead of sleeping.

Also what the cloud needs to place payloads made before the wall clock was set: a gateway
without RTC boots in 1970 and may spool for hours before NTP sets the date. Ages inside the
module are measured on the monotonic clock (the spool carries it across restarts); payloads say
how the wall clock related to it when they were made (:class:`WallClockWatch`, the envelope's
``ext["clock"]``, docs/format.md).
"""

from __future__ import annotations

import ctypes
import threading
import time
from pathlib import Path
from typing import Any, Protocol

__all__ = ["BOOT_ID", "Clock", "FakeClock", "SystemClock", "WallClockWatch", "kernel_clock_synced"]

#: ``adjtimex(2)``'s answer when the kernel's clock is not synchronized (STA_UNSYNC/CLOCKERR).
_TIME_ERROR = 5


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip().replace("-", "")
    except OSError:
        return ""


#: This boot's id (32 hex digits; empty where the kernel has none): the monotonic clock is one
#: continuous line within a boot, so ``wall - monotonic`` of one boot can be compared.
BOOT_ID = _boot_id()


def _adjtimex() -> Any:
    """libc's ``adjtimex``, looked up once (a ``CDLL`` per call would dlopen and make a ctypes
    class each time: asked for every payload); None where there is none."""
    try:
        return ctypes.CDLL(None, use_errno=True).adjtimex
    except (OSError, AttributeError):
        return None


_ADJTIMEX = _adjtimex()
_Timex = ctypes.c_char * 512  # struct timex is about 208 bytes; all zero: modes = 0, a read


def kernel_clock_synced() -> bool | None:
    """Whether the kernel says the wall clock is synchronized (an NTP/PTP daemon keeps it so),
    read with ``adjtimex(2)`` changing nothing; None where that cannot be asked."""
    if _ADJTIMEX is None:
        return None
    state = _ADJTIMEX(_Timex())
    return None if state < 0 else state != _TIME_ERROR


class Clock(Protocol):
    """Where components get the time from."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin, never going backwards."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch."""
        ...

    def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        ...

    def synchronized(self) -> bool | None:
        """Whether the wall clock is known to be right (None: cannot tell)."""
        ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def synchronized(self) -> bool | None:
        return kernel_clock_synced()


class FakeClock:
    """A clock that moves only when told to (``advance``) or when something sleeps on it.

    ``set_wall`` moves the wall clock alone, as NTP setting the date does.
    """

    def __init__(self, start: float = 1_700_000_000.0, *, synchronized: bool | None = True) -> None:
        self._now = start
        self._wall_offset = 0.0
        self._synchronized = synchronized
        self._lock = threading.Lock()

    def monotonic(self) -> float:
        with self._lock:
            return self._now

    def time(self) -> float:
        with self._lock:
            return self._now + self._wall_offset

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)

    def synchronized(self) -> bool | None:
        with self._lock:
            return self._synchronized

    def advance(self, seconds: float) -> None:
        """Move time forward by ``seconds``."""
        with self._lock:
            self._now += max(0.0, seconds)

    def set_wall(self, when: float, *, synchronized: bool | None = True) -> None:
        """Set the wall clock to ``when`` (the monotonic clock does not move)."""
        with self._lock:
            self._wall_offset = when - self._now
            self._synchronized = synchronized


class WallClockWatch:
    """The envelope's ``ext["clock"]``: how the wall clock related to the monotonic clock when
    a payload was made, so the cloud can re-place payloads stamped before the date was set.

    Schema payloads always carry ``{"boot", "offset", "synced"}``; data payloads carry
    ``{"offset"}`` while the wall clock is not known to be synchronized, and
    ``{"offset", "synced": true}`` once when it becomes so (the reference for the ones before),
    nothing otherwise. ``offset`` is ``wall - monotonic`` in seconds.
    """

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._synced: bool | None = None  # as last seen

    def _offset(self) -> float:
        return round(self._clock.time() - self._clock.monotonic(), 3)

    def schema_ext(self) -> dict[str, Any]:
        """For a schema payload."""
        synced = self._clock.synchronized()
        return {"boot": BOOT_ID, "offset": self._offset(), "synced": bool(synced)}

    def data_ext(self) -> dict[str, Any] | None:
        """For a data payload; None when the clock is synchronized (nothing to correct). Call
        :meth:`spooled` with it once the payload is spooled."""
        # Unknown (no adjtimex) counts as synchronized: no bytes spent on every payload there.
        if self._clock.synchronized() is False:
            return {"offset": self._offset()}
        if self._synced is False:
            return {"offset": self._offset(), "synced": True}
        return None

    def spooled(self, ext: dict[str, Any] | None) -> None:
        """A data payload with ``ext`` (from :meth:`data_ext`) was spooled."""
        self._synced = ext is None or bool(ext.get("synced"))
