"""The columns of a batch: what one data payload carries, before it is encoded.

A :class:`Batch` holds one :class:`Group` per message (and J1939 source address): a time column
(integer ticks) and one column per signal that has values, each with the rows it has values in.
The processing stage fills batches (``edge.processing.batch.Batcher`` decides when one closes) and
the writer (:mod:`edge.wire.codec`) encodes them; the size bounds here are the writer's msgpack
sizes, which the batcher adds up to know when a batch must be measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

__all__ = [
    "COLUMN_BOUND",
    "EPOCH_THRESHOLD",
    "TIME_BOUND",
    "Batch",
    "Group",
    "value_bound",
]

#: Upper bounds, in msgpack bytes, of one time delta and one (row delta, value) pair.
TIME_BOUND = 9
_VALUE_BOUND = 18
_GROUP_BOUND = 24
#: Timestamps above this are seconds since the epoch (after 2001-09-09); below, relative time.
EPOCH_THRESHOLD = 1e9


#: Upper bound of the header of one column in a group: [index, rows | nil, values].
COLUMN_BOUND = 14


def value_bound(length: int, is_float: bool) -> int:
    """A tighter upper bound, in msgpack bytes, than the general one of a (row delta, value)
    pair of a signal of ``length`` bits: row numbers stay below 2**32 (5 bytes); an integer
    signal's deltas lie within +-(2**length - 1); a float goes as a float64."""
    if is_float or length >= 32:
        size = 9
    elif length <= 5:
        size = 1
    elif length <= 7:
        size = 2
    elif length <= 15:
        size = 3
    else:
        size = 5
    return 5 + size


class Group:
    """The rows of one message in one batch."""

    __slots__ = ("columns", "times")

    def __init__(self) -> None:
        self.times: list[int] = []
        # signal index -> (row indexes, raw values)
        self.columns: dict[int, tuple[list[int], list[Any]]] = {}

    def add(self, tick: int, items: Iterable[tuple[int, Any]]) -> int:
        """Append a row; returns the number of values added."""
        row = len(self.times)
        self.times.append(tick)
        columns = self.columns
        n = 0
        for index, value in items:
            column = columns.get(index)
            if column is None:
                column = columns[index] = ([], [])
            column[0].append(row)
            column[1].append(value)
            n += 1
        return n

    def extend(self, ticks: list[int], columns: Iterable[tuple[int, Sequence[Any]]]) -> int:
        """Append ``len(ticks)`` rows at once, every one with a value in each of ``columns``
        (signal index, the rows' values): what as many :meth:`add` give. Returns the number of
        values added."""
        row = len(self.times)
        rows = list(range(row, row + len(ticks)))  # one int object per row, as add() shares
        self.times += ticks
        existing = self.columns
        n = 0
        for index, values in columns:
            column = existing.get(index)
            if column is None:
                column = existing[index] = ([], [])
            column[0].extend(rows)
            column[1].extend(values)
            n += len(values)
        return n


class Batch:
    """Samples collected since the last close."""

    __slots__ = ("estimate", "first_tick", "groups", "max_tick", "min_tick", "opened_at", "values")

    def __init__(self, opened_at: float) -> None:
        self.groups: dict[tuple[int, int | None], Group] = {}
        self.first_tick: int | None = None
        self.min_tick = math.inf
        self.max_tick = -math.inf
        self.values = 0
        self.estimate = 16
        self.opened_at = opened_at

    @property
    def rows(self) -> int:
        """Number of rows over all groups."""
        return sum(len(g.times) for g in self.groups.values())

    def add(self, message_index: int, source_address: int | None, tick: int, items: Any) -> None:
        """Add one row of ``(signal index, raw value)`` items for a message."""
        n = self.group(message_index, source_address).add(tick, items)
        self.counted(tick, n)

    def add_rows(
        self,
        message_index: int,
        source_address: int | None,
        ticks: list[int],
        columns: Iterable[tuple[int, Sequence[Any]]],
    ) -> None:
        """Add rows at once (see :meth:`Group.extend`), as many :meth:`add` calls would."""
        if not ticks:
            return
        n = self.group(message_index, source_address).extend(ticks, columns)
        self.values += n
        self.estimate += TIME_BOUND * len(ticks) + _VALUE_BOUND * n
        if self.first_tick is None:
            self.first_tick = ticks[0]
        low, high = min(ticks), max(ticks)
        if low < self.min_tick:
            self.min_tick = low
        if high > self.max_tick:
            self.max_tick = high

    def group(self, message_index: int, source_address: int | None) -> Group:
        """The group of a message (and source address), created empty on first use."""
        key = (message_index, source_address)
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = Group()
            self.estimate += _GROUP_BOUND
        return group

    def counted(self, tick: int, n: int) -> None:
        """Account for a row of ``n`` values at ``tick`` added to one of the groups."""
        self.values += n
        self.estimate += TIME_BOUND + _VALUE_BOUND * n
        if self.first_tick is None:
            self.first_tick = tick
        if tick < self.min_tick:
            self.min_tick = tick
        if tick > self.max_tick:
            self.max_tick = tick

    def counted_rows(self, rows: int, values: int, value_bytes: int, low: int, high: int) -> None:
        """Account for ``rows`` rows holding ``values`` values (bounded by ``value_bytes``), with
        ticks from ``low`` to ``high``, added to the groups at once (``first_tick`` is set by
        whoever adds the first row: see :meth:`Batcher.check`)."""
        self.values += values
        self.estimate += TIME_BOUND * rows + value_bytes
        if low < self.min_tick:
            self.min_tick = low
        if high > self.max_tick:
            self.max_tick = high

    def split(self) -> tuple[Batch, Batch]:
        """Two batches holding the rows before and from the middle of the time range."""
        ticks = sorted(t for g in self.groups.values() for t in g.times)
        cut = ticks[len(ticks) // 2]
        if cut == ticks[0]:  # many rows at one instant: split by position instead
            return self._split_by(lambda _tick, position: position < len(ticks) // 2)
        return self._split_by(lambda tick, _position: tick < cut)

    def _split_by(self, first: Callable[[int, int], bool]) -> tuple[Batch, Batch]:
        halves = (Batch(self.opened_at), Batch(self.opened_at))
        position = 0
        for (message_index, source_address), group in self.groups.items():
            by_row: list[list[tuple[int, Any]]] = [[] for _ in group.times]
            for index, (rows, values) in group.columns.items():
                for row, value in zip(rows, values, strict=True):
                    by_row[row].append((index, value))
            for tick, items in zip(group.times, by_row, strict=True):
                half = halves[0] if first(tick, position) else halves[1]
                half.add(message_index, source_address, tick, items)
                position += 1
        return halves
