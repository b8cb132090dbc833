"""Which signals are kept, and when a value is worth sending.

Modes, per signal (configured by glob on ``Message.Signal``; the first matching rule wins):

- ``every``: each decoded value.
- ``on_change``: a value that differs from the last one sent by more than ``deadband``
  (absolute, in physical units; 0 = any change). The default, which is lossless: the last sent
  value of every signal is its value until the next one.
- ``min_interval``: like on_change, but at most one value per ``interval`` seconds; a change held
  back is sent with the first frame after the interval (the latest value wins).
- ``heartbeat`` (any mode): after ``heartbeat`` seconds without a value sent, the current value
  is sent again, so the cloud can tell "unchanged" from "gone". Heartbeats ride on frames: a
  message that stops arriving sends nothing more.

All times are frame times, so a replay at any speed gives the same samples as the live drive.
When frame time steps back (an NTP step, a replay starting over), rate limits and heartbeats
count from the step instead of waiting for the clock to catch up
(:meth:`TrackSampler.restart_timers`, called on a frame more than
:data:`~edge.ingest.source.TIME_STEP_BACK` older than the newest one sampled, and by the pipeline
for
the frames the processing stage does not show the sampler).

NaN: a float signal that becomes NaN, or stops being NaN, has changed (whatever the deadband);
NaN followed by NaN has not.
"""

from __future__ import annotations

import fnmatch
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cantools.database.can import Message
from cantools.database.can.signal import Signal

from edge.config.model import SignalRule, SignalsConfig
from edge.ingest.source import TIME_STEP_BACK
from edge.processing.batch import Group
from edge.wire.schema import MessageInfo

if TYPE_CHECKING:
    from edge.vss.mapping import VssMapping

__all__ = ["Policy", "Selection", "TrackSampler"]

_EVERY, _ON_CHANGE, _MIN_INTERVAL = 0, 1, 2
_MODE_CODES = {"every": _EVERY, "on_change": _ON_CHANGE, "min_interval": _MIN_INTERVAL}


@dataclass(frozen=True, slots=True)
class Policy:
    """How one signal is sampled (deadband in physical units; times in seconds)."""

    mode: str
    deadband: float = 0.0
    interval: float = 0.0
    heartbeat: float = 0.0


def _compile(patterns: Sequence[str]) -> re.Pattern[str]:
    if not patterns:
        return re.compile(r"(?!)")
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


class Selection:
    """Resolves the configured include/exclude globs and rules for each signal.

    With a VSS mapping, globs also match the VSS paths a signal feeds (``Vehicle.Speed``,
    ``Vehicle.Powertrain.*``), and a mapped signal no rule matches takes its mapping's
    ``interval_ms`` as a ``min_interval`` rate limit (the smallest of its paths'; Kuksa's
    implicit 1000 ms when absent is not applied: the edge stays lossless unless told)."""

    def __init__(self, config: SignalsConfig, vss: VssMapping | None = None) -> None:
        self._include = _compile(config.include)
        self._exclude = _compile(config.exclude)
        self._rules = [(_compile(r.match), frozenset(r.buses), r) for r in config.rules]
        self._default = config.default
        self._vss = vss

    def policy(self, bus: str, message: Message, signal: Signal) -> Policy | None:
        """The policy of ``signal`` on ``bus``, or None when it is not selected."""
        name = f"{message.name}.{signal.name}"
        links = self._vss.of_signal(bus, message.name, signal.name) if self._vss else ()
        if links:
            return self._mapped_policy(bus, [name, *(link.path for link in links)], links)
        if not self._include.match(name) or self._exclude.match(name):
            return None
        rule: SignalRule = self._default
        for pattern, buses, candidate in self._rules:
            if (not buses or bus in buses) and pattern.match(name):
                rule = candidate
                break
        return Policy(rule.mode, rule.deadband, rule.interval, rule.heartbeat)

    def _mapped_policy(self, bus: str, names: list[str], links: Sequence[Any]) -> Policy | None:
        if not any(self._include.match(n) for n in names):
            return None
        if any(self._exclude.match(n) for n in names):
            return None
        for pattern, buses, rule in self._rules:
            if (not buses or bus in buses) and any(pattern.match(n) for n in names):
                return Policy(rule.mode, rule.deadband, rule.interval, rule.heartbeat)
        rule = self._default
        intervals = [link.interval_ms for link in links if link.interval_ms]
        if intervals:
            return Policy("min_interval", rule.deadband, min(intervals) / 1000, rule.heartbeat)
        return Policy(rule.mode, rule.deadband, rule.interval, rule.heartbeat)

    def selects(self, bus: str, message: Message, signal: Signal) -> bool:
        """Whether ``signal`` is kept at all."""
        return self.policy(bus, message, signal) is not None


_first = operator.itemgetter(0)
Sample = tuple[int, int | float]  # (column, raw value)


class TrackSampler:
    """The sampling state of one message (of one source address): the last value sent and when,
    per selected signal. ``sample`` returns the ``(column, raw value)`` pairs to send.

    Deferred sampling. When every signal is sampled ``on_change`` without a deadband (the
    lossless default, ``fast``), the last value sent of each signal is simply its value in the
    previous frame, so there is no per-signal decision to make frame by frame: the caller only
    appends the selected values of each frame whose values differ from the previous frame's to
    ``pending_rows`` (with its time in ``pending_times``), and :meth:`settle` later turns the
    pending rows into columns, one tight pass per signal, keeping exactly the values that
    changed. Heartbeats stay exact: ``next_check`` is a lower bound of the first time
    a heartbeat can be due (sending only moves the true bound later); the caller settles and then
    takes the full evaluation (:meth:`sample_raw`) for a frame at or after it, which recomputes
    the bound.
    """

    __slots__ = (
        "_any_float",
        "_deadbands",
        "_floats",
        "_heartbeats",
        "_index",
        "_intervals",
        "_last",
        "_modes",
        "_names",
        "_newest",
        "_sent_at",
        "fast",
        "last_raw",
        "next_check",
        "pending_rows",
        "pending_times",
        "repeats",
        "seen",
        "select",
        "width",
    )

    def __init__(self, info: MessageInfo, policies: Sequence[Policy]) -> None:
        self._names = [s.name for s in info.signals]
        self._floats = [s.is_float for s in info.signals]  # only these can be NaN
        self._any_float = any(self._floats)
        #: pending rows the last settle found equal to their predecessor (NaN != NaN: the
        #: Processor's loop compares tuples, in which two NaNs differ)
        self.repeats = 0
        self.width = len(self._names)
        self._index = {name: i for i, name in enumerate(self._names)}
        self._modes = [_MODE_CODES[p.mode] for p in policies]
        # Values are compared raw: a physical deadband becomes a raw one.
        self._deadbands = [
            p.deadband / abs(s.scale) if p.deadband and s.scale else 0.0
            for p, s in zip(policies, info.signals, strict=True)
        ]
        self._intervals = [p.interval for p in policies]
        self._heartbeats = [p.heartbeat for p in policies]
        self._last: list[int | float | None] = [None] * len(policies)
        self._sent_at = [-math.inf] * len(policies)
        self._newest = -math.inf  # time of the newest frame sampled in full
        #: frames before this time that repeat their predecessor can produce no sample
        self.next_check = -math.inf
        #: every signal on_change without deadband: rows may be deferred (see the class doc)
        self.fast = all(m == _ON_CHANGE for m in self._modes) and not any(self._deadbands)
        #: picks this sampler's signals, in column order, out of a decoded tuple (None: as is)
        self.select: Callable[[tuple[Any, ...]], tuple[Any, ...]] | None = None
        #: the selected values of the previous frame, in column order (fast path)
        self.last_raw: tuple[Any, ...] | None = None
        #: frames not sampled yet (fast path): their times, and their selected values
        self.pending_times: list[float] = []
        self.pending_rows: list[tuple[Any, ...]] = []
        #: time of the latest frame decoded or repeated (set by the Processor, for the
        #: last-known state: not sampling state)
        self.seen = -math.inf

    def restart_timers(self) -> None:
        """Frame time stepped back: every rate limit and heartbeat is over, so the next frame
        sends the current values again (anchoring them after the step) and timers count from
        there. Pending rows must be settled first."""
        self._sent_at = [-math.inf] * len(self._sent_at)
        self.next_check = -math.inf

    def bind(self, positions: Sequence[int], width: int) -> None:
        """Values will come as tuples of ``width`` values, column ``i`` at ``positions[i]``."""
        if list(positions) == list(range(width)):
            self.select = None
        elif len(positions) == 1:
            (only,) = positions
            self.select = lambda raw: (raw[only],)
        else:
            self.select = operator.itemgetter(*positions)

    def sample(self, t: float, values: Mapping[str, int | float], repeated: bool) -> list[Sample]:
        """The columns to send for a frame at time ``t`` whose raw signal values are ``values``.

        ``repeated`` says the frame's payload equals the previous one of this message: then only
        heartbeats, held-back changes and ``every`` signals can produce output, and when none is
        due (the common case) this returns at once.
        """
        if repeated and t < self.next_check:
            return []
        if t < self._newest - TIME_STEP_BACK:
            self.restart_timers()
        self._newest = t
        if self.fast:
            return self._changes(t, values)
        index = self._index
        if len(values) < len(index):  # multiplexed: look at the signals present only
            present = sorted((index[n], v) for n, v in values.items() if n in index)
            return self._evaluate(t, present)
        return self._evaluate(t, [(i, values.get(n)) for i, n in enumerate(self._names)])

    def _changes(self, t: float, values: Mapping[str, int | float]) -> list[Sample]:
        """:meth:`_evaluate` for a ``fast`` sampler (on_change, no deadband): the same output,
        looking only at the signals present (a multiplexed frame holds few of them)."""
        index, last, sent_at, heartbeats = self._index, self._last, self._sent_at, self._heartbeats
        out: list[Sample] = []
        next_check = math.inf
        for name, value in values.items():
            i = index.get(name)
            if i is None or value is None:
                continue
            heartbeat = heartbeats[i]
            previous = last[i]
            if (value != previous and (value == value or previous == previous)) or (
                heartbeat and t - sent_at[i] >= heartbeat
            ):
                out.append((i, value))
                last[i] = value
                sent_at[i] = t
            if heartbeat and sent_at[i] + heartbeat < next_check:
                next_check = sent_at[i] + heartbeat
        self.next_check = next_check
        if len(out) > 1:
            out.sort(key=_first)  # column order, as the full evaluation gives it
        return out

    def sample_raw(self, t: float, raw: tuple[Any, ...], repeated: bool) -> list[Sample]:
        """:meth:`sample` for values decoded as a tuple (see :meth:`bind`)."""
        if repeated and t < self.next_check:
            return []
        assert not self.pending_rows, "settle the pending rows first"
        if t < self._newest - TIME_STEP_BACK:
            self.restart_timers()
        self._newest = t
        selected = raw if self.select is None else self.select(raw)
        out = self._evaluate(t, enumerate(selected))
        if self.fast:  # on_change without deadband: what was last sent is what was last seen
            self.last_raw = selected
        return out

    def settle(self, group: Group, ticks_per_second: float) -> tuple[list[int], int, int]:
        """Sample the pending rows into ``group`` (rows appended in order, each with the values
        that changed): returns ``(values added per column, lowest tick, highest tick)``. Every
        pending row differs from its predecessor, so each one gets at least one value."""
        rows = self.pending_rows
        times = self.pending_times
        self.repeats = 0
        if self._any_float:
            rows, times = self._changed(rows, times)
            self.repeats = len(self.pending_rows) - len(rows)
            if not rows:
                self.pending_rows, self.pending_times = [], []
                return [0] * len(self._last), 0, 0
        ticks = [round(t * ticks_per_second) for t in times]
        first_row = len(group.times)
        group.times.extend(ticks)
        columns = group.columns
        last, sent_at, floats = self._last, self._sent_at, self._floats
        sent: list[int] = []
        # Column by column (zip transposes in C): a tight loop with everything in locals beats
        # C-level passes (map, itertools.compress) here, measured on Python 3.11.
        n = len(rows)
        for i, cells in enumerate(zip(*rows, strict=True)):
            previous = last[i]
            # Unchanged all along (most columns): seen in one C pass. A column whose last value
            # differs has changed: no pass (a counter, a GNSS fix).
            if cells[-1] == previous and cells.count(previous) == n:
                sent.append(0)
                continue
            row_numbers: list[int] = []
            values: list[Any] = []
            row = first_row
            if floats[i]:
                for value in cells:
                    # NaN != NaN: only a change to or from NaN is one
                    if value != previous and (value == value or previous == previous):
                        row_numbers.append(row)
                        values.append(value)
                        previous = value
                    row += 1
            else:  # integers: the plain comparison (most columns; this loop is the hot one)
                for value in cells:
                    if value != previous:
                        row_numbers.append(row)
                        values.append(value)
                        previous = value
                    row += 1
            sent.append(len(values))
            if not values:
                continue
            sent_at[i] = times[row_numbers[-1] - first_row]
            column = columns.get(i)
            if column is None:
                columns[i] = (row_numbers, values)
            else:
                column[0].extend(row_numbers)
                column[1].extend(values)
        self._last = list(rows[-1])
        self.pending_rows = []
        self.pending_times = []
        return sent, min(ticks), max(ticks)

    def _changed(
        self, rows: list[tuple[Any, ...]], times: list[float]
    ) -> tuple[list[tuple[Any, ...]], list[float]]:
        """The rows (and their times) that differ from their predecessor, NaN equal to NaN."""
        previous: tuple[Any, ...] = tuple(self._last)
        kept_rows: list[tuple[Any, ...]] = []
        kept_times: list[float] = []
        for t, row in zip(times, rows, strict=True):
            if row != previous and not all(
                a == b or (a != a and b != b) for a, b in zip(row, previous, strict=True)
            ):
                kept_rows.append(row)
                kept_times.append(t)
            previous = row
        return kept_rows, kept_times

    def _evaluate(self, t: float, values: Iterable[tuple[int, int | float | None]]) -> list[Sample]:
        out: list[Sample] = []
        next_check = math.inf
        last, sent_at = self._last, self._sent_at
        for i, value in values:
            if value is None:  # a multiplexed signal absent from this frame
                continue
            mode = self._modes[i]
            previous = last[i]
            heartbeat = self._heartbeats[i]
            send = False
            if mode == _EVERY or previous is None:
                send = True
            elif (
                value != previous
                and (value == value or previous == previous)  # NaN to NaN is no change
                and (
                    not (deadband := self._deadbands[i])
                    or not abs(value - previous) <= deadband  # true for a change to/from NaN
                )
            ):
                if mode == _ON_CHANGE or t - sent_at[i] >= self._intervals[i]:
                    send = True
                else:  # held back by the rate limit: look again when the interval is over
                    next_check = min(next_check, sent_at[i] + self._intervals[i])
            elif heartbeat and t - sent_at[i] >= heartbeat:
                send = True
            if send:
                out.append((i, value))
                last[i] = value
                sent_at[i] = t
            if mode == _EVERY:
                next_check = -math.inf
            elif heartbeat:
                next_check = min(next_check, sent_at[i] + heartbeat)
        self.next_check = next_check
        return out
