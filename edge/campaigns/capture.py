"""Captures: the frames of the recent past, and the windows cut from them.

History is kept in two tiers, so that keeping it costs nothing per frame while windows are short:

* :class:`RecentFrames`: the processing stage's chunks themselves (the lists of python-can
  messages it was handed), kept whole for ``keep`` seconds of frame time, as long as they hold
  at most :data:`RECENT_FRAMES` frames. Keeping a chunk costs one reference, whatever its size; a
  capture looks through the chunks when it closes.
* :class:`FrameRing`, one per message (and J1939 source address) that a capture may need: the
  frames of chunks pushed out of the recent tier by its cap while still needed (windows longer
  than the recent tier holds), packed: time and data bytes, 8 to 12 bytes per frame beyond its
  data, against some 290 for a python-can message. Capped in frames and in bytes; a frame pushed
  out by a cap before its time is counted in ``overflow`` (a capture that wanted it then starts
  later than asked: :attr:`Capture.truncated` says so).

Keeping raw frames rather than decoded values is what makes the pre-trigger history cheap and
lossless (the capture decodes every frame of its window when it closes).

The engine appends a chunk's frames to a ring's ``times`` and ``datas`` lists (two list appends:
no object made per frame) and calls :meth:`FrameRing.settle` when there are
:data:`BLOCK_FRAMES` of them. Settling packs them into a block (an ``array`` of times and one
``bytes`` of the data, with their offsets only when lengths differ), then forgets what is older
than ``keep`` and what is over the caps. So history is trimmed a block at a time, never shorter
than asked, and at most :data:`BLOCK_FRAMES` frames are not packed yet.

A :class:`Capture` is one window ``[trigger - before, trigger + after]`` of one campaign; it is
*open* until frame time passes its end, then it is cut from the history.
"""

from __future__ import annotations

import struct
from array import array
from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from operator import itemgetter

import can

__all__ = [
    "BLOCK_FRAMES",
    "FRAME_OVERHEAD",
    "RECENT_FRAMES",
    "Capture",
    "FrameRing",
    "RecentFrames",
]

#: What a frame costs in a ring beyond its data, as the caps count it: its time (a float64) and
#: its end offset in its block's bytes (a uint32; none when the block's frames are of one length).
FRAME_OVERHEAD = 12
#: Frames appended to a ring are packed into one block once there are this many: few enough that
#: the lists of the unpacked ones stay small, enough that a block's own objects (about 250
#: bytes) cost a few bytes per frame.
BLOCK_FRAMES = 64

#: Most frames the recent tier keeps as the processing stage's chunks (python-can messages, about
#: 240 bytes each with their data: some 8 MB): enough for windows of several seconds of a busy
#: bus at no cost per frame. When the longest window spans more frames than that, every chunk
#: is packed into rings at once instead: keeping some of them whole would cost that memory and
#: save no packing.
RECENT_FRAMES = 32_768

#: A frame of a window: its time and its data.
Frame = tuple[float, bytes]
#: The times and the data of frames, apart.
Frames = tuple[list[float], list[bytes]]
#: Data as a frame carries it (python-can gives a bytearray).
Data = bytes | bytearray


class _Block:
    """Frames packed: ``times[i]``'s data is ``blob[start(i):end(i)]``; ``size`` is the length of
    every frame (then ``ends`` is None), or 0 when they differ (``ends``: cumulative ends)."""

    __slots__ = ("blob", "ends", "ordered", "size", "times")

    def __init__(self, times: list[float], datas: list[bytes | bytearray]) -> None:
        # C-level passes only (array("d", times) parses each item: twice the cost)
        self.times = array("d")
        self.times.frombytes(struct.pack(f"{len(times)}d", *times))
        #: times never step back in it (then it is searched by bisection)
        self.ordered = times == sorted(times)
        self.blob = b"".join(datas)
        lengths = set(map(len, datas))
        self.ends: array[int] | None = None
        if len(lengths) == 1:
            self.size = lengths.pop()
        else:
            self.size = 0
            self.ends = array("I", accumulate(map(len, datas)))

    def datas(self, first: int, stop: int) -> list[bytes]:
        """The data of frames ``first`` to ``stop - 1`` (cut in C when of one length)."""
        if self.ends is None:
            size = self.size
            if not size:
                return [b""] * (stop - first)
            cut = struct.iter_unpack(f"{size}s", self.blob[first * size : stop * size])
            return list(map(itemgetter(0), cut))
        return [self.blob[a:b] for a, b in map(self.span, range(first, stop))]

    def span(self, i: int) -> tuple[int, int]:
        """Start and end of frame ``i``'s data in ``blob``."""
        if self.ends is None:
            return i * self.size, (i + 1) * self.size
        return (self.ends[i - 1] if i else 0), self.ends[i]

    def cost(self, start: int, stop: int) -> int:
        """Bytes (as the caps count them) of frames ``start`` to ``stop - 1``."""
        a, _ = self.span(start)
        b = self.span(stop - 1)[1] if stop > start else a
        return b - a + (stop - start) * FRAME_OVERHEAD


class FrameRing:
    """Recent frames of one message, oldest first, bounded three ways: ``keep`` seconds,
    ``max_frames`` frames and ``max_bytes`` bytes (see :data:`FRAME_OVERHEAD`).

    ``times`` and ``datas`` are the frames appended since the last :meth:`settle` (the engine
    appends to them directly); :meth:`push` is one append and a settle."""

    __slots__ = (
        "_blocks",
        "_head",
        "_packed_bytes",
        "_pending_bytes",
        "count",
        "datas",
        "keep",
        "max_bytes",
        "max_frames",
        "overflow",
        "times",
    )

    def __init__(self, keep: float, max_frames: int, max_bytes: int) -> None:
        self.keep = keep  # seconds of history that must stay
        self.max_frames = max_frames
        self.max_bytes = max_bytes
        self._blocks: deque[_Block] = deque()
        self._head = 0  # frames of the oldest block already forgotten
        self.times: list[float] = []
        self.datas: list[Data] = []
        self.count = 0  # frames in blocks (those in ``times`` not yet)
        self._packed_bytes = 0  # ... and their cost, as the caps count it
        self._pending_bytes = 0  # the cost of those in ``times``, as of the last settle
        self.overflow = 0

    def __len__(self) -> int:
        return self.count + len(self.times)

    @property
    def bytes(self) -> int:
        """What the frames kept cost, as the caps count it (as of the last :meth:`settle`)."""
        return self._packed_bytes + self._pending_bytes

    def push(self, t: float, data: Data) -> None:
        """Keep a frame; forget frames older than ``keep`` and those over the caps (counted)."""
        self.times.append(t)
        self.datas.append(data)
        self.settle()

    def settle(self) -> None:
        """Account for the frames appended since the last call: pack them once there are
        :data:`BLOCK_FRAMES`, then forget what is older than ``keep`` before the newest frame,
        and the oldest frames over the caps (counted in ``overflow``)."""
        times = self.times
        if not times:
            return
        horizon = times[-1] - self.keep
        if len(times) >= BLOCK_FRAMES:
            block = _Block(times, self.datas)
            self._blocks.append(block)
            self.count += len(times)
            self._packed_bytes += len(block.blob) + len(times) * FRAME_OVERHEAD
            self.times, self.datas = [], []
            pending_bytes = 0
        else:
            pending_bytes = sum(map(len, self.datas)) + len(times) * FRAME_OVERHEAD
        self._pending_bytes = pending_bytes
        self._forget_before(horizon)
        excess_frames = len(self) - self.max_frames
        excess_bytes = self.bytes - self.max_bytes
        if excess_frames > 0 or excess_bytes > 0:
            self.overflow += self._drop_oldest(excess_frames, excess_bytes)

    def _forget_before(self, horizon: float) -> None:
        """Forget the leading frames older than ``horizon`` (frame time may step back: the
        first frame not older stops it, as a queue would)."""
        blocks = self._blocks
        while blocks:
            block = blocks[0]
            packed, start = block.times, self._head
            if block.ordered:
                stop = bisect_left(packed, horizon, start)
            else:
                stop = start
                while stop < len(packed) and packed[stop] < horizon:
                    stop += 1
            if stop > start:
                self._packed_bytes -= block.cost(start, stop)
                self.count -= stop - start
            if stop < len(packed):
                self._head = stop
                return
            blocks.popleft()
            self._head = 0
        times = self.times
        stop = 0
        while stop < len(times) and times[stop] < horizon:
            stop += 1
        if stop:
            self._pending_bytes -= sum(map(len, self.datas[:stop])) + stop * FRAME_OVERHEAD
            del times[:stop], self.datas[:stop]

    def _drop_oldest(self, frames: int, size: int) -> int:
        """Forget the oldest frames until ``frames`` frames and ``size`` bytes are gone; how
        many went."""
        dropped = 0
        blocks = self._blocks
        while (frames > dropped or size > 0) and blocks:
            block = blocks[0]
            i = self._head
            cost = block.cost(i, i + 1)
            self._packed_bytes -= cost
            self.count -= 1
            size -= cost
            dropped += 1
            self._head = i + 1
            if self._head == len(block.times):
                blocks.popleft()
                self._head = 0
        times, datas = self.times, self.datas
        while (frames > dropped or size > 0) and times:
            cost = len(datas[0]) + FRAME_OVERHEAD
            self._pending_bytes -= cost
            size -= cost
            del times[0], datas[0]
            dropped += 1
        return dropped

    def window(self, start: float, end: float) -> Iterator[Frame]:
        """The frames with ``start <= t <= end``, oldest first."""
        return zip(*self.cut(start, end), strict=True)

    def cut(self, start: float, end: float) -> Frames:
        """The times and the data of the frames with ``start <= t <= end``, oldest first (in
        the order they came, when frame time stepped back). A block whose times are ordered is
        cut in one slice each, found by bisection, or skipped when its first and last times
        are both outside the window; the frames of other blocks are each looked at."""
        times_out: list[float] = []
        datas_out: list[bytes] = []
        head = self._head
        for block in self._blocks:
            times = block.times
            if block.ordered:
                if times[-1] >= start and times[head] <= end:  # else none is in the window
                    first = bisect_left(times, start, head)
                    stop = bisect_right(times, end, first)
                    times_out += times[first:stop]
                    datas_out += block.datas(first, stop)
            else:
                for i in range(head, len(times)):
                    if start <= times[i] <= end:
                        times_out.append(times[i])
                        datas_out += block.datas(i, i + 1)
            head = 0
        for t, data in zip(self.times, self.datas, strict=True):
            if start <= t <= end:
                times_out.append(t)
                datas_out.append(bytes(data))
        return times_out, datas_out

    def oldest(self) -> float | None:
        """Time of the oldest frame kept."""
        if self._blocks:
            return self._blocks[0].times[self._head]
        return self.times[0] if self.times else None


class RecentFrames:
    """The recent tier of history: the processing stage's chunks of frames, whole, in the order
    they came (see the module docstring). The engine adds each chunk after its loop went through
    it, then forgets the chunks that are too old (:meth:`forget_before`) and takes out those over
    the cap (:meth:`over`)."""

    __slots__ = ("_chunks", "_sizes", "frames", "spanned")

    def __init__(self) -> None:
        #: each chunk with the engine's time once it went through (never decreasing)
        self._chunks: deque[tuple[float, Sequence[can.Message]]] = deque()
        self.frames = 0  # frames in the chunks kept
        #: the engine's time and size of every chunk since the horizon, kept or taken out
        self._sizes: deque[tuple[float, int]] = deque()
        self.spanned = 0  # their frames: what the tier would hold to cover the horizon

    def add(self, chunk: Sequence[can.Message], now: float) -> None:
        """Keep ``chunk`` (a copy of the list: one reference per frame), at engine time
        ``now``."""
        if chunk:
            self._chunks.append((now, tuple(chunk)))
            self.frames += len(chunk)
            self._sizes.append((now, len(chunk)))
            self.spanned += len(chunk)

    def forget_before(self, horizon: float) -> None:
        """Forget the chunks added before engine time ``horizon``. (By the engine's time, not
        their frames': frames of another clock, such as diagnostic answers, may share a chunk.)"""
        chunks = self._chunks
        while chunks and chunks[0][0] < horizon:
            self.frames -= len(chunks.popleft()[1])
        sizes = self._sizes
        while sizes and sizes[0][0] < horizon:
            self.spanned -= sizes.popleft()[1]

    def over(self, limit: int) -> Iterator[Sequence[can.Message]]:
        """Take out the oldest chunks until at most ``limit`` frames are kept."""
        chunks = self._chunks
        while self.frames > limit and chunks:
            _, chunk = chunks.popleft()
            self.frames -= len(chunk)
            yield chunk

    def chunks(self) -> Iterator[Sequence[can.Message]]:
        """The chunks kept, in the order they came."""
        for _, chunk in self._chunks:
            yield chunk


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
