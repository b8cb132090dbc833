"""Captures: the raw frames of the recent past, per message, and the windows cut from them.

Every message a condition campaign collects has a :class:`FrameRing`: its frames (time and data
bytes, as received) for as long as the longest ``before + after`` that needs it, capped in frames
and in bytes. A frame pushed out by a cap before its time is counted in ``overflow`` (a capture
that wanted it then starts later than asked: :attr:`Capture.truncated` says so). Keeping raw
frames rather than decoded values is what makes the pre-trigger history cheap (one append of the
bytes the bus gave) and lossless (the capture decodes every frame of its window when it closes).

A :class:`Capture` is one window ``[trigger - before, trigger + after]`` of one campaign; it is
*open* until frame time passes its end, then it is cut from the rings.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = ["Capture", "FrameRing"]

#: A frame in a ring is one bytes object: its time (a float64) then its data. One object per
#: frame rather than a float and a bytes: about 25 bytes less per frame, 5 MB on 60 s of a
#: whole bus.
_TIME = struct.Struct("<d")
#: What a frame costs in a ring beyond its data: the bytes object's header, its time, the
#: deque's slot.
FRAME_OVERHEAD = 33 + _TIME.size + 8


class FrameRing:
    """Recent frames of one message, oldest first, bounded three ways: ``keep`` seconds,
    ``max_frames`` frames and ``max_bytes`` bytes (see :data:`FRAME_OVERHEAD`)."""

    __slots__ = ("bytes", "frames", "keep", "max_bytes", "max_frames", "overflow")

    def __init__(self, keep: float, max_frames: int, max_bytes: int) -> None:
        self.keep = keep  # seconds of history that must stay
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.frames: deque[bytes] = deque()
        self.bytes = 0
        self.overflow = 0

    def __len__(self) -> int:
        return len(self.frames)

    def push(self, t: float, data: bytes) -> None:
        """Keep a frame; forget frames older than ``keep`` and those over the caps (counted)."""
        frames = self.frames
        frames.append(_TIME.pack(t) + data)
        self.bytes += len(data) + FRAME_OVERHEAD
        horizon = t - self.keep
        time_of = _TIME.unpack_from
        while time_of(frames[0])[0] < horizon:
            self.bytes -= len(frames.popleft()) - _TIME.size + FRAME_OVERHEAD
        while len(frames) > self.max_frames or self.bytes > self.max_bytes:
            self.bytes -= len(frames.popleft()) - _TIME.size + FRAME_OVERHEAD
            self.overflow += 1

    def window(self, start: float, end: float) -> Iterator[tuple[float, bytes]]:
        """The frames with ``start <= t <= end``, oldest first (read the ring, do not change it
        while iterating)."""
        time_of = _TIME.unpack_from
        offset = _TIME.size
        for frame in self.frames:
            t = time_of(frame)[0]
            if t > end:
                return
            if t >= start:
                yield t, frame[offset:]

    def oldest(self) -> float | None:
        """Time of the oldest frame kept."""
        return _TIME.unpack_from(self.frames[0])[0] if self.frames else None


@dataclass(slots=True)
class Capture:
    """One capture window of one campaign (open until frame time passes ``end``)."""

    campaign: str
    trigger: float
    before: float
    after: float
    condition: str
    #: True when a ring had already lost (to its caps) frames the window wanted.
    truncated: bool = False
    #: Messages (by engine index) whose frames the window holds; filled when it closes.
    frames: dict[int, list[tuple[float, bytes]]] = field(default_factory=dict)

    @property
    def start(self) -> float:
        """First frame time of the window."""
        return self.trigger - self.before

    @property
    def end(self) -> float:
        """Last frame time of the window."""
        return self.trigger + self.after
