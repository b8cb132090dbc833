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

from collections import deque
from dataclasses import dataclass, field

__all__ = ["Capture", "FrameRing"]

#: What a frame costs in a ring beyond its data: a float, a bytes object header, two slots.
FRAME_OVERHEAD = 33 + 24 + 16


class FrameRing:
    """Recent frames of one message: times and data, oldest first, bounded three ways."""

    __slots__ = ("bytes", "data", "keep", "max_bytes", "max_frames", "overflow", "times")

    def __init__(self, keep: float, max_frames: int, max_bytes: int) -> None:
        self.keep = keep  # seconds of history that must stay
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self.times: deque[float] = deque()
        self.data: deque[bytes] = deque()
        self.bytes = 0
        self.overflow = 0

    def push(self, t: float, data: bytes) -> None:
        """Keep a frame; forget frames older than ``keep`` and those over the caps (counted)."""
        times, datas = self.times, self.data
        times.append(t)
        datas.append(data)
        self.bytes += len(data) + FRAME_OVERHEAD
        horizon = t - self.keep
        while times[0] < horizon:
            times.popleft()
            self.bytes -= len(datas.popleft()) + FRAME_OVERHEAD
        while len(times) > self.max_frames or self.bytes > self.max_bytes:
            times.popleft()
            self.bytes -= len(datas.popleft()) + FRAME_OVERHEAD
            self.overflow += 1

    def window(self, start: float, end: float) -> list[tuple[float, bytes]]:
        """The frames with ``start <= t <= end``, oldest first."""
        out = []
        for t, data in zip(self.times, self.data, strict=True):
            if t > end:
                break
            if t >= start:
                out.append((t, data))
        return out

    def oldest(self) -> float | None:
        """Time of the oldest frame kept."""
        return self.times[0] if self.times else None


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
