"""Samples -> columnar batches: when the open batch closes.

The batch itself (:class:`~edge.wire.columns.Batch`: a group of columns per message) is the
wire format's; this module decides when one closes: by its age (in frame time, so replays at
any speed cut the same batches; and in wall time, so a silent bus still flushes), or its size.

Size: every sample adds a pessimistic upper bound of its encoded size to ``estimate``. Only
when that bound reaches the byte budget is the batch really encoded and measured (compressed
batches are several times smaller than the bound); the next measurement is then due when the
bound has grown by the measured headroom. The writer measures again at close and splits a batch
that is still too large, so the limit holds whatever the input.

The Processor's fast path adds rows to a group directly and accounts for them with tighter bounds
that know each signal's size (:func:`value_bound`, :data:`COLUMN_BOUND`), sometimes for many rows
at once (:meth:`Batch.counted_rows`); :meth:`Batcher.check` then decides as :meth:`Batcher.add`
does. ``Batch``, ``Group`` and the bounds are re-exported here for the stage's own use.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from edge.clock import Clock, SystemClock
from edge.wire.columns import (
    COLUMN_BOUND,
    TIME_BOUND,
    Batch,
    Group,
    value_bound,
)

__all__ = [
    "COLUMN_BOUND",
    "MAX_BATCH_VALUES",
    "TIME_BOUND",
    "Batch",
    "Batcher",
    "Group",
    "value_bound",
]

#: A batch closes at this many values whatever its size, so that no array of a payload is
#: longer than readers take (:data:`edge.wire.codec.MAX_ARRAY`): data that compresses extremely well
#: (a counter's constant steps) would otherwise fit millions of values in the byte budget.
MAX_BATCH_VALUES = 1_000_000
#: Every value adds at least this much to the estimate (:func:`value_bound`).
_LEAST_VALUE_BOUND = 6


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
