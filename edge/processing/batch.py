"""Samples -> columnar batches.

A batch holds one *group* per message (and J1939 source address): a time column (integer ticks
at the configured resolution) and one column per signal that has values, each with the rows it
has values in. A batch is closed by whichever comes first: its age (in frame time, so replays at
any speed cut the same batches; and in wall time, so a silent bus still flushes), or its size.

Size: every sample adds a pessimistic upper bound of its encoded size to ``estimate``. Only
when that bound reaches the byte budget is the batch really encoded and measured (compressed
batches are several times smaller than the bound); the next measurement is then due when the
bound has grown by the measured headroom. The writer measures again at close and splits a batch
that is still too large, so the limit holds whatever the input.

The Processor's fast path adds rows to a group directly and accounts for them with tighter bounds
that know each signal's size (:func:`value_bound`, :data:`COLUMN_BOUND`), sometimes for many rows
at once (:meth:`Batch.counted_rows`); :meth:`Batcher.check` then decides as :meth:`Batcher.add`
does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

from edge.clock import Clock, SystemClock

__all__ = [
    "COLUMN_BOUND",
    "MAX_BATCH_VALUES",
    "TIME_BOUND",
    "Batch",
    "Batcher",
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
#: A batch closes at this many values whatever its size, so that no array of a payload is
#: longer than readers take (:data:`edge.wire.codec.MAX_ARRAY`): data that compresses extremely well
#: (a counter's constant steps) would otherwise fit millions of values in the byte budget.
MAX_BATCH_VALUES = 1_000_000
#: Every value adds at least this much to the estimate (:func:`value_bound`).
_LEAST_VALUE_BOUND = 6


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


class Batcher:
    """Collects samples and decides when the open batch must close.

    ``measure`` returns the encoded (compressed) size of a batch; ``budget`` is the largest
    encoded size allowed.
    """

    def __init__(
        self,
        *,
        budget: int,
        max_age: float,
        ticks_per_second: float,
        measure: Callable[[Batch], int],
        clock: Clock | None = None,
    ) -> None:
        self._budget = budget
        self._max_age = max_age
        self._ticks_per_second = ticks_per_second
        self._age_ticks = max_age * ticks_per_second
        self._measure = measure
        self._clock = clock or SystemClock()
        self._batch = Batch(self._clock.monotonic())
        #: the estimate at which the open batch is measured next
        self.next_measure: float = budget
        #: a frame time before which the open batch cannot be old enough to close
        self.age_due = -math.inf
        self._full = False
        self.measurements = 0
        #: increases each time a batch is taken (rows added directly to a group of the open batch
        #: must know when that batch is gone)
        self.generation = 0

    @property
    def batch(self) -> Batch:
        """The open batch."""
        return self._batch

    def add(self, message_index: int, source_address: int | None, tick: int, items: Any) -> bool:
        """Add a row; returns True when the batch should now be closed (full or old)."""
        n = self.group(message_index, source_address).add(tick, items)
        return self.added(tick, n)

    def group(self, message_index: int, source_address: int | None) -> Group:
        """The group of the open batch for a message (and source address); the caller adds one
        row to it and then calls :meth:`added`."""
        batch = self._batch
        if not batch.groups:
            batch.opened_at = self._clock.monotonic()
        return batch.group(message_index, source_address)

    def added(self, tick: int, n: int) -> bool:
        """Account for a row of ``n`` values at ``tick`` just added to a group of the open batch;
        returns True when the batch should now be closed (full or old)."""
        self._batch.counted(tick, n)
        return self.check(tick)

    def check(self, tick: int) -> bool:
        """Whether the open batch should close now that it holds rows up to ``tick`` (measuring
        it when its estimate has reached :attr:`next_measure`). Rows that are only reserved in
        the estimate (added later) count from their first one: it sets ``first_tick``."""
        batch = self._batch
        if batch.first_tick is None:
            batch.first_tick = tick
        if batch.estimate >= self.next_measure:
            self.measurements += 1
            size = self._measure(batch)
            if size >= self._budget * 0.95 or batch.values >= MAX_BATCH_VALUES:
                self._full = True
            else:
                # measure again before either the bytes or the values may reach their limit
                self.next_measure = batch.estimate + min(
                    self._budget * 0.95 - size,
                    (MAX_BATCH_VALUES - batch.values) * _LEAST_VALUE_BOUND,
                )
        # 1 tick of margin for rounding: a lower bound, checked exactly here
        self.age_due = (batch.first_tick + self._age_ticks - 1) / self._ticks_per_second
        # abs: a batch that time stepped back in (NTP, a replay starting over) closes as soon
        # as it spans max age, instead of waiting for the clock to catch up with its first row
        return self._full or abs(tick - batch.first_tick) >= self._age_ticks

    def expired(self) -> bool:
        """Whether the open batch is older than max age in wall time (a silent bus)."""
        batch = self._batch
        return bool(batch.groups) and self._clock.monotonic() - batch.opened_at >= self._max_age

    def take(self) -> Batch | None:
        """Close the open batch and return it (None when empty); a new one opens."""
        batch = self._batch
        self._batch = Batch(self._clock.monotonic())
        self.generation += 1
        self.next_measure = float(self._budget)
        self.age_due = -math.inf
        self._full = False
        return batch if batch.groups else None
