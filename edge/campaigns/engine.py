"""The campaign engine: conditions, captures and periodic snapshots next to the always-on pipeline.

The engine works in one pass with the processing stage: the
:class:`~edge.processing.processor.Processor` asks :meth:`CampaignEngine.view` once per new frame
ID of a bus, keeps the answer in its own tables, and its loop hands the engine what it needs of
the frames of the IDs campaigns use; frames of every other ID cost the engine nothing.
(:meth:`CampaignEngine.process` is the engine on its own, looking each frame up in its own
tables: tests/campaigns/test_taps.py proves both equal on every corpus log.)

* History costs nothing per frame: after the loop, :meth:`CampaignEngine.chunk` keeps the chunk
  whole (:class:`~edge.campaigns.capture.RecentFrames`) for the longest window; only when that
  spans more frames than :data:`~edge.campaigns.capture.RECENT_FRAMES` are chunks packed into a
  :class:`~edge.campaigns.capture.FrameRing` per message instead (:meth:`CampaignEngine._pack`).
* A condition that is one rising edge of an integer signal against a number, in a message the
  processing stage decodes, is tested by the stage's loop on the raw value it unpacked anyway
  (:meth:`CampaignEngine.inline`, the boundary moved to raw values by :func:`_raw_test`); the
  engine hears only of the frames that change the test (:meth:`CampaignEngine.flip`). Other
  conditions get each frame of their messages (a :class:`~edge.processing.decode.Tap` in the
  stage's tables, :meth:`CampaignEngine.frame`): their inputs are read when the bytes change
  (one C call for a message that is not multiplexed: edge.processing.decode's checked fast
  path), and only the conditions whose inputs changed value are evaluated (``stale()``
  conditions also as time passes).
* A trigger (``rising_edge``: false -> true; ``while_true``: every evaluation that holds) opens a
  :class:`~edge.campaigns.capture.Capture`, unless ``min_interval`` has not passed since the last
  one (counted in ``suppressed``); at the end of the chunk in which frame time passes its end,
  the capture's frames are taken from both tiers of history and every frame of its window is
  decoded into rows of one payload (split like any batch when too large), spooled at the
  campaign's priority: a message's frames at once, by column (one C call per frame), or frame by
  frame for multiplexed messages and frames of another length.
* A periodic campaign spools, every ``period`` seconds of frame time, one row per message: its
  latest frame's values at the first frame of a message campaigns use past that time (found at
  the end of the chunk: :meth:`CampaignEngine._snapshots`).

Messages are found as the processing stage finds them: by frame ID and kind, and on a J1939 bus
by parameter group number, whatever the priority and source address. Each source address of a
J1939 message has its own history and its own rows (with their source address, as decoded data has);
conditions read the latest value from any of them.

Payloads are ordinary data payloads (docs/format.md) against the engine's own schema (the signals
of every campaign), which the engine sends at priority 0 so it always precedes its data. Their
envelope's ``ext`` carries ``campaign`` and, for a capture, ``trigger`` (frame time, seconds) and
``condition``. Times are frame times, so a replay gives the same captures as the drive; ``start``
and ``expiry`` and the daily byte budget go by the wall clock, so an expired campaign stops even
while the car is offline.
"""

from __future__ import annotations

import copy
import logging
import math
import operator
import random
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import can
from cantools.database.can import Database
from cantools.database.can import Message as DbMessage

from edge.campaigns.capture import BLOCK_FRAMES, RECENT_FRAMES, Capture, FrameRing, RecentFrames
from edge.campaigns.expression import (
    ConditionState,
    Expression,
    ExpressionError,
    SignalRef,
    compile_expression,
)
from edge.clock import Clock, SystemClock
from edge.config.campaigns import ALWAYS, CampaignConfig, describe, field_name
from edge.config.model import Config
from edge.delivery.appender import Append, PayloadAppender
from edge.errors import ConfigError, SpoolError, TelemetryError
from edge.processing.batch import Batch
from edge.processing.decode import (
    MAX_CACHED_UNKNOWN,
    InlineInput,
    Track,
    dict_decoder,
    pgn_from_frame_id,
    plain_decoder,
    tuple_decoder,
)
from edge.processing.latest import LatestFrame, latest_signals, matcher
from edge.wire.codec import KIND_DATA, KIND_SCHEMA, Codec
from edge.wire.schema import Schema, build_schema

__all__ = ["SCHEMA_PRIORITY", "CampaignEngine", "CampaignStats", "raw_frames"]

log = logging.getLogger(__name__)

#: Schema payloads of campaigns go first: a capture must never wait for its schema.
SCHEMA_PRIORITY = 0
#: Most values one capture payload holds (see CampaignEngine._emit).
_PART_VALUES = 100_000
#: Most frames of a capture decoded at once (their values as Python objects, twice: a tuple per
#: frame, then per column): a few hundred kB beside the part being filled.
_SLICE_FRAMES = 1024
#: A module global: the engine's per-frame path reads it faster than ``int.from_bytes``.
_from_bytes = int.from_bytes


@dataclass(slots=True)
class CampaignStats:
    """Counters of one campaign (``listCampaigns``, reported properties, /metrics)."""

    triggers: int = 0
    suppressed: int = 0  # triggers within min_interval of the previous one
    captures: int = 0  # captures (or snapshots) spooled
    payloads: int = 0
    bytes: int = 0
    rows: int = 0
    budget_dropped: int = 0  # captures (or snapshots) over the daily byte budget
    truncated: int = 0  # captures whose history had been shortened by a ring's caps
    spool_errors: int = 0

    def as_json(self) -> dict[str, int]:
        """camelCase counters."""
        return {
            "triggers": self.triggers,
            "suppressed": self.suppressed,
            "captures": self.captures,
            "payloads": self.payloads,
            "bytes": self.bytes,
            "rows": self.rows,
            "budgetDropped": self.budget_dropped,
            "truncated": self.truncated,
            "spoolErrors": self.spool_errors,
        }


class _Decoding:
    """How the engine decodes one message's payloads to raw values: exactly as
    ``message.decode(data, False, False)`` (cantools) does."""

    __slots__ = ("by_dict", "length", "names", "plain", "position", "unpack")

    def __init__(self, db: DbMessage) -> None:
        self.length = db.length
        layout = tuple_decoder(db)
        #: a frame of ``length`` bytes -> a tuple of every raw value, ``names`` in order
        self.unpack = layout.decode if layout is not None else None
        self.names: tuple[str, ...] = layout.names if layout is not None else ()
        self.position = {name: i for i, name in enumerate(self.names)}
        self.by_dict = dict_decoder(db)  # a frame of ``length`` bytes -> {name: raw}
        self.plain = plain_decoder(db)  # any frame: cantools itself

    def one(
        self, db: DbMessage, name: str
    ) -> tuple[Callable[[Any], Any], IntegerLayout | None] | None:
        """``read(data)``: the raw value of signal ``name`` in a frame of ``length`` bytes, for a
        message that is not multiplexed, and its :data:`IntegerLayout` when it is an integer
        read by a shift and a mask of the payload as one integer (no value made but the one
        wanted; the engine's loop does that inline); else a layout of that signal alone. None
        when neither gives what cantools gives for the whole message on probe payloads (then
        the whole message is decoded)."""
        if self.unpack is None:
            return None
        try:
            signal = db.get_signal_by_name(name)
            rng = random.Random(db.length)
            probes = [bytes(db.length), b"\xff" * db.length, b"\x55" * db.length]
            probes += [rng.randbytes(db.length) for _ in range(16)]
            layout = _integer_layout(signal, db.length)
            if layout is not None:
                read = _integer_reader(layout)
                if _reads_as_cantools(read, db, name, probes):
                    return read, layout
            lone = _lone_reader(db, signal)
            if lone is not None and _reads_as_cantools(lone, db, name, probes):
                return lone, None
        except Exception:  # cantools refuses the lone signal: the whole message it is
            return None
        return None

    def multiplexed(self, db: DbMessage, name: str) -> Callable[[Any], Any] | None:
        """``read(data)`` of signal ``name`` in a multiplexed message (see
        :func:`_multiplexed_reader`) for frames of ``length`` bytes, when it reads what cantools
        reads on probe payloads; None otherwise."""
        if self.unpack is not None:
            return None
        try:
            read = _multiplexed_reader(db, name)
            if read is not None and _reads_as_cantools(read, db, name, _multiplexed_probes(db)):
                return read
        except Exception:  # a tree cantools builds but this reader does not follow
            return None
        return None

    def values(self, data: bytes | bytearray) -> dict[str, Any]:
        """Raw values by signal name; raises for a frame cantools refuses."""
        if len(data) != self.length:
            return self.plain(data)
        if self.unpack is not None:
            return dict(zip(self.names, self.unpack(data), strict=True))
        return self.by_dict(data)


#: How an integer signal is read from a payload of its message's length:
#: ``int.from_bytes(data, order) >> shift & mask``, minus ``2 * sign`` when the sign bit is set.
IntegerLayout = tuple[Literal["little", "big"], int, int, int]


_MONOTONE = (operator.lt, operator.le, operator.gt, operator.ge)


def _raw_test(
    test: Callable[[Any, Any], bool],
    constant: Any,
    scale: Any,
    offset: Any,
    low: int,
    high: int,
) -> tuple[Callable[[Any, Any], bool], int] | None:
    """``(op, boundary)`` such that ``op(raw, boundary) == test(raw * scale + offset,
    constant)`` for every integer ``raw`` from ``low`` to ``high``, or None (``==``, ``!=``).

    Exact, not solved on paper: ``raw * scale + offset`` never decreases or never increases as
    ``raw`` grows (IEEE rounding is monotone), and so neither does an order comparison of it,
    which therefore changes at most once over the range; that change is found by bisection
    with the very expression the engine computes."""
    if test not in _MONOTONE:
        return None

    def holds(raw: int) -> bool:
        return bool(test(raw * scale + offset, constant))

    first = holds(low)
    if holds(high) == first:  # the same over the whole range (NaN included)
        return operator.ge, (low if first else high + 1)
    lo, hi = low, high  # holds(lo) == first != holds(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if holds(mid) == first:
            lo = mid
        else:
            hi = mid
    return (operator.lt, hi) if first else (operator.ge, hi)


def _integer_layout(signal: Any, length: int) -> IntegerLayout | None:
    """The :data:`IntegerLayout` of an integer ``signal`` in a ``length``-byte payload (a
    little-endian signal from the payload read little-endian; a big-endian one, whose start bit
    cantools counts in network order, from the payload read big-endian); None for a float."""
    if signal.conversion.is_float or signal.length <= 0:
        return None
    bits = signal.length
    sign = 1 << (bits - 1) if signal.is_signed else 0
    if signal.byte_order == "little_endian":
        shift, order = signal.start, "little"
    else:
        start = signal.start
        shift, order = 8 * length - (8 * (start // 8) + (7 - start % 8) + bits), "big"
    if shift < 0:
        return None
    return ("little" if order == "little" else "big"), shift, (1 << bits) - 1, sign


def _integer_reader(layout: IntegerLayout) -> Callable[[Any], int]:
    """``read(data)`` by an :data:`IntegerLayout` (what the engine's loop does inline)."""
    order, shift, mask, sign = layout

    def read(data: Any) -> int:
        value: int = int.from_bytes(data, order) >> shift & mask
        return value - (value & sign) * 2

    return read


def _lone_reader(db: DbMessage, signal: Any) -> Callable[[Any], Any] | None:
    """The raw value of ``signal`` by a cantools layout of that signal alone."""
    lone = DbMessage(
        frame_id=db.frame_id,
        name=db.name,
        length=db.length,
        signals=[copy.copy(signal)],
        is_extended_frame=db.is_extended_frame,
        strict=False,
    )
    layout = tuple_decoder(lone)
    if layout is None or layout.names != (signal.name,):
        return None
    decode = layout.decode

    def read(data: Any) -> Any:
        return decode(data)[0]

    return read


class _Undefined(ValueError):
    """A multiplexer value the message does not define: cantools refuses the frame."""


#: Where an integer is in a payload read as one integer both ways: (0 little-endian, 1
#: big-endian), shift, mask, sign bit (see IntegerLayout).
_Place = tuple[int, int, int, int]
#: A level of a multiplexed message's signal tree as the reader walks it: whether the signal
#: wanted is at this level, and each multiplexer of the level with the level below each of its
#: values.
_Level = tuple[bool, tuple[tuple[_Place, dict[int, "_Level"]], ...]]


def _place(signal: Any, length: int) -> _Place | None:
    layout = _integer_layout(signal, length)
    if layout is None:
        return None
    order, shift, mask, sign = layout
    return (0 if order == "little" else 1), shift, mask, sign


def _multiplexed_reader(db: DbMessage, name: str) -> Callable[[Any], Any] | None:
    """``read(data)``: the raw value of integer signal ``name`` of a multiplexed message, None
    when the frame's multiplexer values leave it out, raising :class:`_Undefined` where
    cantools refuses the frame (a multiplexer value no branch defines), every multiplexer of
    the message checked as cantools checks them (nested ones included). Reads only the
    multiplexers and the signal, by their :data:`IntegerLayout`, from the payload read as one
    integer once per byte order they use, in one call (no call per level); None when one of
    them has no such layout (then the whole message is decoded)."""
    wanted = _place(db.get_signal_by_name(name), db.length)
    if wanted is None:
        return None
    Tree = Sequence[Any]  # signal names, and {multiplexer: {value: tree}}
    orders = {wanted[0]}

    def compile_level(level: Tree) -> _Level | None:
        here = name in [item for item in level if isinstance(item, str)]
        branches = []
        for item in level:
            if isinstance(item, str):
                continue
            for mux, children in item.items():
                here = here or mux == name
                layout = _place(db.get_signal_by_name(mux), db.length)
                if layout is None:
                    return None
                orders.add(layout[0])
                below: dict[int, _Level] = {}
                for value, child in children.items():
                    sub = compile_level(child)
                    if sub is None:
                        return None
                    below[value] = sub
                branches.append((layout, below))
        return here, tuple(branches)

    root = compile_level(db.signal_tree)
    if root is None:
        return None
    from_bytes = int.from_bytes
    message = db.name
    both = len(orders) == 2
    only: Literal["little", "big"] = "little" if orders == {0} else "big"

    def read(data: Any) -> Any:
        if both:
            ints = from_bytes(data, "little"), from_bytes(data, "big")
        else:  # every place uses one byte order: read it once, at either index
            one = from_bytes(data, only)
            ints = one, one
        found = False
        levels = [root]  # the levels the frame's multiplexer values select, to walk
        while levels:
            here, branches = levels.pop()
            found = found or here
            for (order, shift, mask, sign), below in branches:
                value = ints[order] >> shift & mask
                level = below.get(value - (value & sign) * 2)
                if level is None:
                    raise _Undefined(message)
                levels.append(level)
        if not found:
            return None
        order, shift, mask, sign = wanted
        value = ints[order] >> shift & mask
        return value - (value & sign) * 2

    return read


#: At most this many probe payloads per multiplexed input (enough for every branch of the
#: corpus's OBD-II PID trees; the walk stops there however wide or deep a tree is).
_MAX_PROBES = 512


def _multiplexed_probes(db: DbMessage) -> list[bytes]:
    """Payloads that reach every branch of ``db``'s multiplexers, and one undefined value of
    each (random bits elsewhere), up to :data:`_MAX_PROBES`."""
    rng = random.Random(db.length)
    probes = [bytes(db.length), b"\xff" * db.length]
    probes += [rng.randbytes(db.length) for _ in range(8)]

    def put(data: bytes, signal_name: str, value: int) -> bytes:
        layout = _integer_layout(db.get_signal_by_name(signal_name), db.length)
        if layout is None:
            return data
        order, shift, mask, _ = layout
        whole = int.from_bytes(data, order) & ~(mask << shift) | (value & mask) << shift
        return whole.to_bytes(db.length, order)

    def walk(level: Sequence[Any], data: bytes) -> None:
        muxes = [item for item in level if not isinstance(item, str)]
        # the level's other multiplexers defined too: a frame decodes only when all of them are
        defined = data
        for item in muxes:
            for mux, children in item.items():
                if children:
                    defined = put(defined, mux, next(iter(children)))
        for item in muxes:
            for mux, children in item.items():
                values = list(children)
                undefined = min(set(range(len(values) + 1)) - set(values))
                for value in [*values, undefined]:
                    if len(probes) >= _MAX_PROBES:
                        return
                    reached = put(data, mux, value)
                    probes.append(reached)
                    probes.append(put(defined, mux, value))
                    if value in children:
                        walk(children[value], put(rng.randbytes(db.length), mux, value))
                        walk(children[value], reached)
                        walk(children[value], put(defined, mux, value))

    walk(db.signal_tree, rng.randbytes(db.length))
    return probes[:_MAX_PROBES]


def _reads_as_cantools(
    read: Callable[[Any], Any], db: DbMessage, name: str, probes: Sequence[bytes]
) -> bool:
    """Whether ``read`` gives, on every probe payload, what cantools' decode of the whole
    message gives for ``name``: the raw value (the same type, NaN as NaN), None when the frame
    leaves it out, a refusal (:class:`_Undefined`) where cantools refuses the frame."""
    for data in probes:
        try:
            whole: Any = db.decode(data, False, False)
            want = whole.get(name)
        except Exception:
            want = _Undefined
        try:
            got = read(data)
        except _Undefined:
            got = _Undefined
        if got is want:
            continue
        nan = (
            isinstance(got, float)
            and isinstance(want, float)
            and math.isnan(got)
            and math.isnan(want)
        )
        if type(got) is not type(want) or not (got == want or nan):
            return False
    return True


class _Entry:
    """One message of one bus (and, on J1939 buses, one source address), as the engine sees
    it. The entry of a message is the template of its J1939 ``views`` (one per source address:
    see CampaignEngine._resolve); elsewhere its only view is itself."""

    __slots__ = (
        "before",
        "bus",
        "campaigns",
        "db",
        "decode_errors",
        "decoding",
        "index",
        "input_keys",
        "input_last",
        "inputs",
        "j1939",
        "keep",
        "key",
        "last",
        "payload",
        "quick",
        "readers",
        "ring",
        "scaled",
        "schema_index",
        "source_address",
        "track",
        "used",
        "views",
        "watched",
    )

    def __init__(self, index: int, bus: str, db: DbMessage) -> None:
        self.index = index
        self.bus = bus
        self.db = db
        self.key = (bus, db.name)
        self.source_address: int | None = None
        #: a 29-bit message of a J1939 bus: frames of each source address go to a view of it
        self.j1939 = False
        self.views: list[_Entry] = []
        self.last: can.Message | None = None
        #: time and data of the latest frame before the chunk in hand (periodic campaigns')
        self.before: tuple[float, bytes] | None = None
        #: the processing stage's track of these frames when its loop reads the one condition
        #: input (CampaignEngine.inline): then it holds the latest frame, not ``last``
        self.track: Track | None = None
        #: the older part of the history (chunks the recent tier let go), made when first needed
        self.ring: FrameRing | None = None
        #: (seconds, frames, bytes) of the ring each view keeps, None: no ring
        self.keep: tuple[float, int, int] | None = None
        self.inputs: list[tuple[str, tuple[str, str, str]]] = []  # (signal, state key)
        self.watched = False  # a stale() reads its arrival times
        self.campaigns: list[_Campaign] = []  # conditions to evaluate when it changes
        self.payload: bytes | bytearray | None = None
        self.decoding: _Decoding | None = None  # set for the messages campaigns use
        #: the inputs with their scaling: (signal, state key, scale, offset, record every value)
        self.scaled: list[tuple[str, tuple[str, str, str], float, float, bool]] = []
        self.input_keys: list[int] = []  # tuple positions of the inputs (fast path)
        #: the inputs' readers of a multiplexed message (Decoding.multiplexed); [] otherwise
        self.readers: list[Callable[[Any], Any]] = []
        self.input_last: list[Any] = []  # raw value of each input in the previous payload
        #: one input read on its own, recorded only when it changes (see _Quick); None: the
        #: general path
        self.quick: _Quick | None = None
        self.schema_index: int | None = None
        self.decode_errors = 0
        #: a campaign reads, captures or snapshots it (see CampaignEngine._wire)
        self.used = False

    def view(self, source_address: int | None) -> _Entry:
        """A view of this message for one source address: its own ring, payload and latest
        frame; the same conditions, inputs and schema columns."""
        view = _Entry(self.index, self.bus, self.db)
        view.source_address = source_address
        for name in (
            "campaigns",
            "decoding",
            "input_keys",
            "inputs",
            "keep",
            "quick",
            "readers",
            "scaled",
            "schema_index",
            "used",
            "watched",
        ):
            setattr(view, name, getattr(self, name))
        # Every view records each value: the state it writes is the message's, shared by all
        # source addresses, so "unchanged since this view's last frame" says nothing.
        view.scaled = [(s, k, scale, offset, True) for s, k, scale, offset, _ in self.scaled]
        view.input_last = [None] * len(self.scaled)
        self.views.append(view)
        return view

    def latest(self) -> tuple[float, bytes] | None:
        """Time and data of the latest frame of this view (None: none yet)."""
        track = self.track
        if track is not None:
            payload = track.payload
            return None if payload is None else (track.sampler.seen, bytes(payload))
        msg = self.last
        return None if msg is None else (msg.timestamp, bytes(msg.data))


#: The quick path of a condition input (CampaignEngine.frame): frame length, state key,
#: scale, offset, then either ``read`` (None) and the :data:`IntegerLayout` (order, shift, mask,
#: sign) read inline, or ``read(data)`` (a layout of the signal alone, or the reader of a
#: multiplexed signal: None where the frame leaves it out) and placeholders.
_Quick = tuple[int, Any, float, float, "Callable[[Any], Any] | None", Any, int, int, int]


class _Table(dict[int, "_Entry | None"]):
    """Frame ID -> the view of a message campaigns use, or None; filled on first sight."""

    def __init__(self, resolve: Callable[[int], _Entry | None]) -> None:
        super().__init__()
        self._resolve = resolve

    def __missing__(self, frame_id: int) -> _Entry | None:
        entry = self._resolve(frame_id)
        if entry is not None or len(self) < MAX_CACHED_UNKNOWN:
            self[frame_id] = entry
        return entry


@dataclass(slots=True)
class _Campaign:
    """A campaign's configuration, compiled condition and running state."""

    config: CampaignConfig
    index: int  # in config.campaigns
    expression: Expression | None
    #: (entry, [(signal name, schema column)]) for every message holding its signals
    columns: list[tuple[_Entry, list[tuple[str, int]]]]
    stats: CampaignStats = field(default_factory=CampaignStats)
    active: bool = False
    was_true: bool = False
    #: ``(fn, constant)`` of a rising-edge condition that is one signal against a number: the
    #: engine evaluates it only when ``fn(value, constant)`` differs from ``was_true``
    edge: tuple[Callable[[Any, Any], bool], Any] | None = None
    last_trigger: float = -float("inf")
    next_snapshot: float | None = None
    day: int = -1
    day_bytes: int = 0


class CampaignEngine:
    """Runs the condition and periodic campaigns of a configuration. See the module docstring.

    ``databases`` are the Processor's ``(bus name, database, j1939)``; ``append`` is the spool's
    append taking ``priority=``. ``latest`` gives the frames the last-known state is decoded
    from (the Processor's, which include the engine's: :meth:`latest_frames`); by default the
    engine's own. Raises :class:`ConfigError` naming ``campaigns[i].condition`` for a condition
    that does not compile against these databases.
    """

    def __init__(
        self,
        config: Config,
        databases: Sequence[tuple[str, Database, bool]],
        append: Append,
        *,
        clock: Clock | None = None,
        vss: Any = None,
        latest: Callable[[], Iterable[LatestFrame]] | None = None,
    ) -> None:
        self.config = config
        self._vss = vss  # edge.vss.mapping.VssMapping: VSS paths in conditions
        self._latest = latest or self.latest_frames
        self._clock = clock or SystemClock()
        self.lock = threading.RLock()
        batch = config.batch
        self.codec = Codec(
            batch.compression, batch.compression_level, batch.time_resolution, config.vehicle_id
        )
        self._appender = PayloadAppender(append, self.codec)
        self._ticks = self.codec.ticks_per_second
        self._entries: list[_Entry] = []
        self._tables: dict[str, tuple[_Table, _Table]] = {}
        #: the frame IDs whose view keeps history, on any bus (a first look at a frame)
        self._kept_ids: set[int] = set()
        by_name: dict[str, list[_Entry]] = {}
        for bus, db, j1939 in databases:
            entries: dict[int, _Entry] = {}  # by id() of the cantools message
            by_pgn: dict[int, _Entry] = {}
            for message in db.messages:
                entry = _Entry(len(self._entries), bus, message)
                self._entries.append(entry)
                entries[id(message)] = entry
                by_name.setdefault(message.name, []).append(entry)
                if j1939 and message.is_extended_frame:
                    entry.j1939 = True
                    by_pgn.setdefault(pgn_from_frame_id(message.frame_id), entry)
            self._tables[bus] = (
                _Table(self._resolver(db, entries, None, extended=False)),
                _Table(self._resolver(db, entries, by_pgn if j1939 else None, extended=True)),
            )
        self._by_name = by_name
        chosen = [(i, c) for i, c in enumerate(config.campaigns) if c.collect != ALWAYS]
        patterns = matcher([p for _, c in chosen for p in c.signals])
        self.schema: Schema = build_schema(
            databases, lambda _bus, m, s: bool(patterns.match(f"{m.name}.{s.name}"))
        )
        self._schema_index = {
            (self.schema.buses[m.bus], m.name): i for i, m in enumerate(self.schema.messages)
        }
        for entry in self._entries:
            entry.schema_index = self._schema_index.get((entry.bus, entry.db.name))
        self.campaigns: list[_Campaign] = []
        windows: dict[tuple[str, str, str], float] = {}
        for index, campaign in chosen:
            expression = None
            if campaign.collect == "condition":
                try:
                    expression = compile_expression(
                        campaign.condition, self._resolve_signal, self._resolve_message
                    )
                except ExpressionError as exc:
                    raise ConfigError(field_name(index, "condition"), str(exc)) from None
                for key, seconds in expression.windows.items():
                    windows[key] = max(windows.get(key, 0.0), seconds)
            self.campaigns.append(
                _Campaign(campaign, index, expression, self._columns(campaign.signals))
            )
            threshold = expression.threshold if expression is not None else None
            if threshold is not None and campaign.trigger == "rising_edge":
                self.campaigns[-1].edge = threshold[1:]
        self.state = ConditionState(windows)
        self._wire()
        self._open: list[tuple[_Campaign | None, Capture, list[tuple[_Entry, list[Any]]]]] = []
        self._schema_sent_at = -float("inf")
        self.now = -float("inf")  # frame time of the newest frame seen
        #: the frame time after which a snapshot is due (-inf: look at the next frame)
        self._due = -float("inf")
        #: the recent tier of history (all frames, as chunks), for the longest window kept
        self._recent = RecentFrames()
        self._inline: list[_Entry] = []  # views whose input the Processor reads (inline())
        keeps = [e.keep[0] for e in self._entries if e.keep is not None]
        self._keep: float | None = max(keeps) if keeps else None  # None: no history at all
        self.frames = 0
        self.faults = 0  # frames whose handling raised (see frame())
        self.schemas = 0
        self.adhoc = CampaignStats()  # captures the ``capture`` method asks for by signals
        self._refreshed = math.inf  # the wall-clock time of the last refresh (inf: none yet)
        self._next_refresh = -math.inf  # when a start or expiry comes next
        self._refresh(self._clock.time())

    # -- building ------------------------------------------------------------------------------

    def _resolver(
        self,
        db: Database,
        entries: Mapping[int, _Entry],
        by_pgn: Mapping[int, _Entry] | None,
        *,
        extended: bool,
    ) -> Callable[[int], _Entry | None]:
        """Frame ID -> the view of a message campaigns use (None: no campaign uses it), found
        as the processing stage finds it (edge.processing.decode.BusDecoder.message): by ID and
        kind, then on a J1939 bus by PGN; there every source address gets a view of its own."""

        def resolve(frame_id: int) -> _Entry | None:
            try:
                message = db.get_message_by_frame_id(frame_id, force_extended_id=extended)
                entry: _Entry | None = entries.get(id(message))
            except KeyError:
                entry = by_pgn.get(pgn_from_frame_id(frame_id)) if by_pgn is not None else None
            if entry is None or not entry.used:
                return None
            if entry.keep is not None:  # its frames may go into a capture
                self._kept_ids.add(frame_id)
            if by_pgn is not None:  # a J1939 bus, a 29-bit ID: the view of its source address
                return entry.view(frame_id & 0xFF)
            return entry

        return resolve

    def _resolve_signal(self, name: str) -> SignalRef:
        """``Message.Signal`` or a bare signal name (unique over every bus)."""
        found: list[tuple[_Entry, str]] = []
        if "." in name:
            message, _, signal = name.rpartition(".")
            for entry in self._by_name.get(message, []):
                if any(s.name == signal for s in entry.db.signals):
                    found.append((entry, signal))
        else:
            for entry in self._entries:
                if any(s.name == name for s in entry.db.signals):
                    found.append((entry, name))
        if not found and self._vss is not None and self._vss.resolve(name):
            return self._resolve_vss(name)
        if not found:
            raise LookupError(f"no signal {name!r} in the databases")
        if len(found) > 1:
            where = ", ".join(f"{e.bus}:{e.db.name}" for e, _ in found[:4])
            raise LookupError(f"signal {name!r} is ambiguous ({where}): write Message.Signal")
        entry, signal_name = found[0]
        db_signal = entry.db.get_signal_by_name(signal_name)
        choices: dict[str, float] = {}
        for raw, choice in (db_signal.choices or {}).items():
            choices[str(choice)] = float(int(raw) * db_signal.scale + db_signal.offset)
        return SignalRef(entry.bus, entry.db.name, signal_name, choices)

    def _resolve_vss(self, path: str) -> SignalRef:
        """A VSS path the configuration maps: its DBC signal, read through its transform."""
        links = self._vss.resolve(path)
        if len(links) > 1:
            where = ", ".join(f"{link.bus}:{link.message}.{link.signal}" for link in links)
            raise LookupError(f"VSS path {path!r} is fed by several signals ({where})")
        link = links[0]
        apply = link.transform.apply

        def convert(value: float) -> Any:
            return apply(value, None)

        return SignalRef(link.bus, link.message, link.signal, {}, convert)

    def _resolve_message(self, name: str) -> tuple[str, str]:
        entries = self._by_name.get(name, [])
        if not entries:
            raise LookupError(f"no message {name!r} in the databases")
        if len(entries) > 1:
            raise LookupError(f"message {name!r} is on several buses")
        return (entries[0].bus, entries[0].db.name)

    def _columns(self, globs: Sequence[str]) -> list[tuple[_Entry, list[tuple[str, int]]]]:
        """The schema columns of the signals ``globs`` match, per message."""
        match = matcher(globs)
        out = []
        for entry in self._entries:
            if entry.schema_index is None:
                continue
            info = self.schema.messages[entry.schema_index]
            columns = [
                (s.name, i)
                for i, s in enumerate(info.signals)
                if match.match(f"{entry.db.name}.{s.name}")
            ]
            if columns:
                out.append((entry, columns))
        return out

    def _wire(self) -> None:
        """Rings for captured messages, decoding for condition inputs."""
        keep: dict[int, tuple[float, int, int]] = {}
        for campaign in self.campaigns:
            cfg = campaign.config
            if cfg.collect == "condition":
                for entry, _ in campaign.columns:
                    seconds, frames, size = keep.get(entry.index, (0.0, 0, 0))
                    keep[entry.index] = (
                        max(seconds, cfg.before + cfg.after),
                        max(frames, cfg.buffer_frames),
                        max(size, cfg.buffer_bytes),
                    )
            expression = campaign.expression
            if expression is None:
                continue
            for bus, message, signal in expression.inputs:
                entry = self._entry(bus, message)
                key = (bus, message, signal)
                if (signal, key) not in entry.inputs:
                    entry.inputs.append((signal, key))
                if campaign not in entry.campaigns:
                    entry.campaigns.append(campaign)
            for bus, message in expression.messages:
                entry = self._entry(bus, message)
                entry.watched = True
                if campaign not in entry.campaigns:
                    entry.campaigns.append(campaign)
        for index, limits in keep.items():
            self._entries[index].keep = limits
        for campaign in self.campaigns:
            for entry, _ in campaign.columns:
                entry.used = True
        history = self.state.history
        for entry in self._entries:
            entry.used = entry.used or bool(entry.campaigns)
            if not entry.used:
                continue
            decoding = entry.decoding = _Decoding(entry.db)
            for signal, key in entry.inputs:
                info = entry.db.get_signal_by_name(signal)
                entry.scaled.append((signal, key, info.scale, info.offset, key in history))
            if decoding.unpack is not None and all(s in decoding.position for s, _ in entry.inputs):
                entry.input_keys = [decoding.position[s] for s, _ in entry.inputs]
            elif decoding.unpack is None and entry.inputs:
                readers = [decoding.multiplexed(entry.db, s) for s, _ in entry.inputs]
                entry.readers = [r for r in readers if r is not None]
                if len(entry.readers) < len(readers):
                    entry.readers = []  # one input cannot: the whole message is decoded
            entry.input_last = [None] * len(entry.scaled)
            if len(entry.scaled) == 1 and not entry.watched:
                signal, key, scale, offset, every = entry.scaled[0]
                one = None if every else decoding.one(entry.db, signal)
                if one is None and not every and len(entry.readers) == 1:
                    one = entry.readers[0], None  # multiplexed: None where it is absent
                if one is not None:
                    read, layout = one
                    order, shift, mask, sign = layout or ("", 0, 0, 0)
                    entry.quick = (
                        decoding.length,
                        key,
                        scale,
                        offset,
                        None if layout else read,
                        order,
                        shift,
                        mask,
                        sign,
                    )
            if not entry.j1939:  # its own only view (J1939 ones get one per source address)
                entry.views = [entry]

    def _entry(self, bus: str, message: str) -> _Entry:
        return next(e for e in self._by_name[message] if e.bus == bus)

    def _views(self) -> Iterable[_Entry]:
        return (view for entry in self._entries for view in entry.views)

    # -- the frames ----------------------------------------------------------------------------

    def view(self, bus: str, arbitration_id: int, extended: bool) -> _Entry | None:
        """The view of the message campaigns use that frames with this ID on ``bus`` belong to,
        or None: no campaign uses them. The processing stage's tap (edge.processing.decode):
        it asks once per frame ID and hands :meth:`frame` the frames of IDs with a view."""
        pair = self._tables.get(bus)
        if pair is None:
            return None
        return (pair[1] if extended else pair[0])[arbitration_id]

    def process(self, frames: Sequence[can.Message]) -> None:
        """The engine on its own: each data frame of a chunk looked up in its own tables and
        given to :meth:`frame`, then :meth:`chunk`. The Processor does not call this: its loop
        hands the frames of the IDs :meth:`view` names to :meth:`frame` itself, which costs
        nothing for the frames of other messages (tests/campaigns/test_taps.py: equal)."""
        with self.lock:
            tables = self._tables
            last_channel: object = None
            standard: dict[int, _Entry | None] = {}
            extended: dict[int, _Entry | None] = {}
            frame = self.frame
            for msg in frames:
                if msg.is_error_frame or msg.is_remote_frame:
                    continue
                channel = msg.channel
                if channel is not last_channel:
                    pair = tables.get(channel)  # type: ignore[arg-type]
                    if pair is None:
                        continue
                    standard, extended = pair
                    last_channel = channel
                entry = (extended if msg.is_extended_id else standard)[msg.arbitration_id]
                if entry is not None:
                    frame(entry, msg)
            self.chunk(frames)

    def frame(self, entry: _Entry, msg: can.Message) -> None:
        """A data frame of a message campaigns use (``entry``: its :meth:`view`), but for those
        whose one input the processing stage's loop reads itself (:meth:`inline`): kept as the
        latest, and its condition inputs read when its bytes changed. (Its history is the
        chunk it came in: :meth:`chunk`.) Called with :attr:`lock` held (the Processor holds it
        over a chunk). A fault here costs the engine this frame, counted in ``faults``
        (``history``), and never the processing stage."""
        try:
            t = msg.timestamp
            data: Any = msg.data
            entry.last = msg
            if entry.campaigns:
                quick = entry.quick
                if quick is None:
                    if entry.watched or data != entry.payload:
                        self._inputs(entry, data, t)
                elif data != entry.payload:
                    # One input read alone, inline (_Quick): what _inputs does for it, a call
                    # only to evaluate when its value changed.
                    length, key, scale, offset, read, order, shift, mask, sign = quick
                    if len(data) != length:
                        # the general path: its last value is not this path's (it writes none)
                        entry.input_last[0] = None
                        self._inputs(entry, data, t)
                    else:
                        # a reference: a frame's data is not changed once received
                        entry.payload = data
                        if read is None:
                            value = _from_bytes(data, order) >> shift & mask
                            value -= (value & sign) * 2
                        else:  # a lone signal's reader, or a multiplexed one's
                            try:
                                value = read(data)
                            except _Undefined:  # cantools refuses the frame, as _inputs counts
                                entry.decode_errors += 1
                                value = None
                        # state.update() for a key without history: the state's value, which
                        # every source address of a J1939 message writes (None: a multiplexed
                        # signal the frame leaves out, which changes nothing)
                        if value is not None:
                            physical = value * scale + offset
                            state = self.state
                            values = state.values
                            if values.get(key) != physical or physical != physical:
                                values[key] = physical
                                state.now = t
                                changed = state.changed
                                changed.clear()
                                changed.add(key)
                                for campaign in entry.campaigns:
                                    edge = campaign.edge
                                    # a rising edge needs the truth to change: else _evaluate
                                    # would find nothing to do
                                    if edge is not None and (
                                        edge[0](physical, edge[1]) is campaign.was_true
                                    ):
                                        continue
                                    self._evaluate(campaign, t)
            # only the frames of messages campaigns use move the engine's time
            if t > self.now:
                self.now = t
        except Exception as exc:  # a fault of ours: this frame, for the engine only
            self._fault(exc)

    def _fault(self, exc: Exception) -> None:
        self.faults += 1
        if self.faults == 1:
            log.error("campaigns: handling a frame failed; counted in faults", exc_info=exc)
        else:
            log.debug("campaigns: handling a frame failed: %r", exc)

    def inline(self, view: object, track: Track) -> InlineInput | None:
        """How the processing stage's loop may read the one condition input of ``view`` itself,
        from the raw values of ``track`` (the stage's track of the same frames), and hand the
        engine only the values that flip the condition (:meth:`flip`), or None: the loop hands
        it every frame (:meth:`frame`). Possible for an integer signal of a message that is
        not multiplexed, read by one rising-edge condition that compares it with a number
        (``<``, ``<=``, ``>``, ``>=``), and by nothing else (no ``stale()``, no window). The
        comparison is made on the raw value (:func:`_raw_test`): no scaling per frame."""
        if not isinstance(view, _Entry):
            return None
        quick = view.quick
        if quick is None or quick[4] is not None or view.watched or len(view.campaigns) != 1:
            return None
        campaign = view.campaigns[0]
        signal = view.scaled[0][0]
        if campaign.edge is None or not track.deferred or signal not in track.names:
            return None
        _, _, scale, offset, _, _, _, mask, sign = quick
        low, high = (-sign, sign - 1) if sign else (0, mask)
        raw_test = _raw_test(*campaign.edge, scale, offset, low, high)
        if raw_test is None:
            return None
        view.track = track
        self._inline.append(view)
        op, boundary = raw_test  # the test is raw >= boundary, or raw < boundary (inverted)
        return (track.names.index(signal), boundary, op is operator.lt, campaign, view)

    def flip(self, view: object, t: float, raw: Any) -> None:
        """The raw value of an :meth:`inline` input, in a frame at ``t``, makes the test differ
        from the condition's last truth: what :meth:`frame` does with it."""
        assert isinstance(view, _Entry) and view.quick is not None
        try:
            _, key, scale, offset, *_ = view.quick
            state = self.state
            state.values[key] = raw * scale + offset
            state.now = t
            changed = state.changed
            changed.clear()
            changed.add(key)
            for campaign in view.campaigns:
                self._evaluate(campaign, t)
            if t > self.now:
                self.now = t
        except Exception as exc:  # a fault of ours: this frame, for the engine only
            self._fault(exc)

    def chunk(self, frames: Sequence[can.Message]) -> None:
        """After the frames of a chunk (:attr:`lock` held): the snapshots that fell due in it,
        the chunk into the recent history, start and expiry by the wall clock, ``stale()``
        conditions and the captures that ended by the newest frame time; then the history
        trimmed."""
        self.frames += len(frames)
        for view in self._inline:  # the latest frame of the inputs the Processor reads
            seen = view.track.sampler.seen  # type: ignore[union-attr]
            if seen > self.now:
                self.now = seen
        # nothing to keep without a window, or before a frame of a message campaigns use
        keep = self._keep is not None and bool(frames) and self.now != -math.inf
        if keep:
            self._recent.add(frames, self.now)
        if self.now > self._due:
            self._snapshots(frames)
        self._after(self.now)
        if keep:
            assert self._keep is not None
            recent = self._recent
            horizon = self.now - self._keep
            recent.forget_before(horizon)  # older than any window needs
            # the longest window spans more frames than the recent tier holds: pack them all
            limit = RECENT_FRAMES if recent.spanned <= RECENT_FRAMES else 0
            for chunk in recent.over(limit):
                self._pack(chunk, horizon)
        for campaign in self.campaigns:  # where the next chunk's snapshots start from
            if campaign.config.collect == "periodic":
                for entry, _ in campaign.columns:
                    for view in entry.views:
                        view.before = view.latest()

    def _snapshots(self, frames: Sequence[can.Message]) -> None:
        """The snapshots that fell due in ``frames``, each taken as frame by frame: at the
        first frame of a message campaigns use past its time, from each message's latest frame
        then (that frame included), after the captures that ended by then."""
        latest: dict[_Entry, tuple[float, Any]] = {}
        tables = self._tables
        now = -math.inf  # the engine's time at each frame: the newest frame time so far
        for msg in frames:
            if msg.is_error_frame or msg.is_remote_frame:
                continue
            pair = tables.get(msg.channel)  # type: ignore[arg-type]
            if pair is None:
                continue
            view = (pair[1] if msg.is_extended_id else pair[0])[msg.arbitration_id]
            if view is None:
                continue
            t = msg.timestamp
            latest[view] = (t, msg.data)
            if t > now:
                now = t
            if t > self._due:
                self._close_ended(now)
                due = float("inf")
                for campaign in self.campaigns:
                    if campaign.active and campaign.config.collect == "periodic":
                        self._periodic(campaign, t, latest)
                        assert campaign.next_snapshot is not None
                        due = min(due, campaign.next_snapshot)
                self._due = due

    def _pack(self, chunk: Sequence[can.Message], horizon: float) -> None:
        """The frames of ``chunk`` (pushed out of the recent tier by its cap) into the rings of
        their messages, those not older than ``horizon``."""
        tables = self._tables
        kept = self._kept_ids
        last_channel: object = None
        standard: _Table | None = None
        extended: _Table | None = None
        for msg in chunk:
            if msg.arbitration_id not in kept:  # most frames: no view of theirs keeps history
                continue
            if msg.is_error_frame or msg.is_remote_frame or msg.timestamp < horizon:
                continue
            channel = msg.channel
            if channel is not last_channel:
                pair = tables.get(channel)  # type: ignore[arg-type]
                standard, extended = pair if pair is not None else (None, None)
                last_channel = channel
            table = extended if msg.is_extended_id else standard
            if table is None:
                continue
            view = table[msg.arbitration_id]
            if view is None or view.keep is None:
                continue
            ring = view.ring
            if ring is None:
                ring = view.ring = FrameRing(*view.keep)
            times = ring.times
            times.append(msg.timestamp)
            ring.datas.append(msg.data)
            if len(times) >= BLOCK_FRAMES:
                ring.settle()

    def _inputs(self, entry: _Entry, data: bytes | bytearray, t: float) -> None:
        """A frame of a message conditions read, whose payload changed (or whose arrival a
        ``stale()`` watches): update their state and evaluate the conditions if it changed."""
        state = self.state
        state.now = t
        changed = entry.watched
        if changed:
            state.seen[entry.key] = t
        entry.payload = bytes(data)
        if entry.inputs:
            decoding = entry.decoding
            assert decoding is not None
            try:
                if entry.input_keys and len(data) == decoding.length:
                    assert decoding.unpack is not None
                    raw = decoding.unpack(data)
                    values = [raw[i] for i in entry.input_keys]
                elif entry.readers and len(data) == decoding.length:
                    values = [read(data) for read in entry.readers]
                else:
                    by_name = decoding.values(data)
                    values = [by_name.get(signal) for signal, _ in entry.inputs]
            except Exception:  # a frame of another length, an undefined multiplexer value
                entry.decode_errors += 1
                return
            state.changed.clear()
            update = state.update
            last = entry.input_last
            for i, (_signal, key, scale, offset, history) in enumerate(entry.scaled):
                value = values[i]
                if value is None:  # a multiplexed signal absent from this frame
                    continue
                if value == last[i] and not history:
                    continue  # nothing to record: update() would find it unchanged
                last[i] = value
                if update(key, t, value * scale + offset):
                    changed = True
        if changed:
            for campaign in entry.campaigns:
                self._evaluate(campaign, t)

    def _evaluate(self, campaign: _Campaign, t: float) -> None:
        expression = campaign.expression
        if not campaign.active or expression is None:
            return
        truth = expression.test(self.state) is True  # False or unknown: does not hold
        cfg = campaign.config
        fire = truth and (not campaign.was_true or cfg.trigger == "while_true")
        campaign.was_true = truth
        if not fire:
            return
        if t - campaign.last_trigger < cfg.min_interval:
            campaign.stats.suppressed += 1
            return
        campaign.last_trigger = t
        campaign.stats.triggers += 1
        self._open_capture(campaign, t, cfg.before, cfg.after, cfg.condition, campaign.columns)

    def _open_capture(
        self,
        campaign: _Campaign | None,
        t: float,
        before: float,
        after: float,
        condition: str,
        columns: Sequence[tuple[_Entry, list[tuple[str, int]]]],
    ) -> Capture:
        name = campaign.config.name if campaign is not None else "adhoc"
        capture = Capture(name, t, before, after, condition)
        self._open.append((campaign, capture, list(columns)))
        return capture

    def _after(self, now: float) -> None:
        """Per chunk: start/expiry, stale() conditions, snapshots due, captures that ended."""
        self._refresh(self._clock.time())
        for campaign in self.campaigns:
            if not campaign.active:
                continue
            expression = campaign.expression
            if expression is not None and expression.messages:
                self.state.now = now
                self.state.changed.clear()  # time passed: no value changed with it
                self._evaluate(campaign, now)
        self._close_ended(now)

    def _close_ended(self, now: float) -> None:
        """Close the captures that ended by frame time ``now``, in the order they ended
        (whatever the chunks; opened first on a tie)."""
        if self._open:
            ended = [item for item in self._open if now > item[1].end]
            if ended:
                self._open = [item for item in self._open if not now > item[1].end]
                ended.sort(key=lambda item: item[1].end)
                for owner, capture, columns in ended:
                    self._close(owner, capture, columns)

    def _refresh(self, wall: float) -> None:
        """Start and expiry by the wall clock ``wall``: looked at again only once it reaches
        the next start or expiry, or steps back."""
        if self._refreshed <= wall < self._next_refresh:
            return
        self._refreshed = wall
        self._next_refresh = min(
            (
                t
                for campaign in self.campaigns
                for t in (campaign.config.start, campaign.config.expiry)
                if t is not None and t > wall
            ),
            default=math.inf,
        )
        for campaign in self.campaigns:
            active = campaign.config.active(wall)
            if active and not campaign.active:
                campaign.was_true = False  # a rising edge needs a false first
                if campaign.config.collect == "periodic":
                    self._due = -float("inf")  # its schedule starts at the next frame
            campaign.active = active

    def _periodic(
        self, campaign: _Campaign, now: float, latest: Mapping[_Entry, tuple[float, Any]]
    ) -> None:
        period = campaign.config.period
        if campaign.next_snapshot is None:
            campaign.next_snapshot = now + period
            return
        if now < campaign.next_snapshot:
            return
        while campaign.next_snapshot <= now:
            campaign.next_snapshot += period
        groups = []
        for entry, columns in campaign.columns:
            for view in entry.views:  # each source address's latest frame, on J1939 buses
                found = latest.get(view, view.before)  # in this chunk, or before it
                if found is not None:
                    groups.append((view, columns, [found[0]], [bytes(found[1])]))
        ext = {"campaign": campaign.config.name, "snapshot": now}
        self._emit(campaign, ext, campaign.config.priority, groups, raw_wanted=False)

    # -- captures into payloads ----------------------------------------------------------------

    def _close(
        self,
        campaign: _Campaign | None,
        capture: Capture,
        columns: Sequence[tuple[_Entry, list[tuple[str, int]]]],
    ) -> None:
        counters = campaign.stats if campaign is not None else self.adhoc
        for entry, _ in columns:
            for view in entry.views:
                ring = view.ring
                oldest = ring.oldest() if ring is not None else None
                if ring and ring.overflow and oldest is not None and oldest > capture.start:
                    capture.truncated = True
        if capture.truncated:
            counters.truncated += 1
        groups = self._window(columns, capture.start, capture.end)
        ext: dict[str, Any] = {
            "campaign": capture.campaign,
            "trigger": capture.trigger,
            "condition": capture.condition,
        }
        priority = campaign.config.priority if campaign is not None else SCHEMA_PRIORITY
        raw_wanted = campaign is not None and campaign.config.raw_frames
        self._emit(campaign, ext, priority, groups, raw_wanted=raw_wanted)

    def _window(
        self, columns: Sequence[tuple[_Entry, list[tuple[str, int]]]], start: float, end: float
    ) -> Iterator[tuple[_Entry, list[tuple[str, int]], list[float], list[bytes]]]:
        """The frames with ``start <= t <= end`` of every view of the messages of ``columns``
        that keeps history, oldest first, a view at a time: the older ones from its ring, then
        the recent tier's. The recent tier is looked through once, each frame of an ID that
        keeps history given to its view as the processing stage's tap found it (the engine's
        tables), keeping references only: a view's frames are copied out when its turn
        comes, so a long window never holds every message's frames at once."""
        recent: dict[_Entry, tuple[list[float], list[bytes | bytearray]]] = {
            view: ([], []) for entry, _ in columns for view in entry.views if view.keep is not None
        }
        tables = self._tables
        kept = self._kept_ids
        last_channel: object = None
        standard: _Table | None = None
        extended: _Table | None = None
        for chunk in self._recent.chunks():
            for msg in chunk:
                if msg.arbitration_id not in kept:  # most frames: no view keeps them
                    continue
                t = msg.timestamp
                if not start <= t <= end or msg.is_error_frame or msg.is_remote_frame:
                    continue
                channel = msg.channel
                if channel is not last_channel:
                    pair = tables.get(channel)  # type: ignore[arg-type]
                    standard, extended = pair if pair is not None else (None, None)
                    last_channel = channel
                table = extended if msg.is_extended_id else standard
                view = table[msg.arbitration_id] if table is not None else None
                found = recent.get(view) if view is not None else None
                if found is not None:
                    found[0].append(t)
                    found[1].append(msg.data)  # a reference: copied out in the view's turn
        for entry, cols in columns:
            for view in entry.views:
                found = recent.pop(view, None)
                if found is None:
                    continue
                times, datas = view.ring.cut(start, end) if view.ring is not None else ([], [])
                times += found[0]
                datas += map(bytes, found[1])
                yield view, cols, times, datas

    def _emit(
        self,
        campaign: _Campaign | None,
        ext: dict[str, Any],
        priority: int,
        groups: Iterable[tuple[_Entry, list[tuple[str, int]], list[float], list[bytes]]],
        *,
        raw_wanted: bool,
    ) -> None:
        """Decode the frames of ``groups`` (a view, its columns, and its frames' times and data,
        oldest first) into rows (every value cantools gives, as raw integers, floats as they
        are) and spool them as payloads of at most ``max_bytes``, part by part: a long capture
        never holds more than one payload's rows in memory."""
        stats = campaign.stats if campaign is not None else self.adhoc
        raw: dict[tuple[int, int | None, int], list[bytes]] = {}
        batch = Batch(self._clock.monotonic())
        ticks = float(self._ticks)
        state = {"rows": 0, "cut": False}
        for entry, columns, times, datas in groups:
            decoding = entry.decoding
            index = entry.schema_index
            if state["cut"]:
                break
            if decoding is None or index is None or not times:
                continue
            source = entry.source_address
            width = self._width(decoding, columns)
            start = 0
            while start < len(times) and not state.get("cut"):
                # A part closes at _PART_VALUES values: what a capture holds in memory at once
                # stays a few MB whatever its length (a slice is decoded only up to where the
                # part closes). _write splits a part that encodes larger than max_bytes: a part
                # is encoded once (or a few times), not measured as it grows.
                stop = min(len(times), start + _SLICE_FRAMES)
                if width:
                    stop = min(stop, start - (batch.values - _PART_VALUES) // width)
                rows = self._columns_of(decoding, columns, datas[start:stop]) if width else None
                if rows is None:  # frame by frame: another length, a multiplexed message
                    for t, data in zip(times[start:stop], datas[start:stop], strict=True):
                        items = self._items(entry, decoding, columns, data)
                        if not items:
                            continue
                        tick = round(t * ticks)
                        if raw_wanted:
                            raw.setdefault((index, source, tick), []).append(data)
                        state["rows"] += 1
                        batch.add(index, source, tick, items)
                        if batch.values >= _PART_VALUES:
                            self._write(campaign, batch, ext, priority, raw, state)
                            batch = Batch(self._clock.monotonic())
                            if state.get("cut"):  # over the daily budget: no more rows
                                break
                    start = stop
                    continue
                # Every frame of the slice decoded at once: its rows go in by column.
                tick_list = list(map(round, map(ticks.__mul__, times[start:stop])))
                batch.add_rows(index, source, tick_list, rows)
                if raw_wanted:
                    for tick, data in zip(tick_list, datas[start:stop], strict=True):
                        raw.setdefault((index, source, tick), []).append(data)
                state["rows"] += stop - start
                start = stop
                if batch.values >= _PART_VALUES:
                    self._write(campaign, batch, ext, priority, raw, state)
                    batch = Batch(self._clock.monotonic())
        self._write(campaign, batch if batch.groups else None, ext, priority, raw, state)
        if state["rows"]:
            if state["cut"]:
                stats.budget_dropped += 1
            else:
                stats.captures += 1
            stats.rows += state["rows"]

    @staticmethod
    def _width(decoding: _Decoding, columns: list[tuple[str, int]]) -> int:
        """How many of ``columns`` a message's tuple layout gives (0: no layout, frame by
        frame)."""
        if decoding.unpack is None:
            return 0
        return sum(1 for name, _ in columns if name in decoding.position)

    @staticmethod
    def _columns_of(
        decoding: _Decoding, columns: list[tuple[str, int]], datas: list[bytes]
    ) -> list[tuple[int, tuple[Any, ...]]] | None:
        """The values of ``columns`` in every frame of ``datas`` at once, (schema column,
        values) each: one C call per frame and a transposition. None when a frame cannot go
        that way (another length, a payload the layout refuses): then the frames are decoded
        one by one (:meth:`_items`)."""
        unpack = decoding.unpack
        if unpack is None or set(map(len, datas)) != {decoding.length}:
            return None
        position = decoding.position
        try:
            transposed = list(zip(*map(unpack, datas), strict=True))
        except Exception:  # a payload the layout refuses: frame by frame, counted there
            return None
        return [(column, transposed[position[n]]) for n, column in columns if n in position]

    @staticmethod
    def _items(
        entry: _Entry, decoding: _Decoding, columns: list[tuple[str, int]], data: bytes
    ) -> list[tuple[int, Any]]:
        """(schema column, raw value) of ``columns`` in one frame; [] for a frame cantools
        refuses (counted in ``decode_errors``)."""
        try:
            values = decoding.values(data)
        except Exception:  # a frame of another length, an undefined multiplexer value
            entry.decode_errors += 1
            return []
        return [(column, values[name]) for name, column in columns if name in values]

    def _write(
        self,
        campaign: _Campaign | None,
        batch: Batch | None,
        ext: dict[str, Any],
        priority: int,
        raw: Mapping[tuple[int, int | None, int], list[bytes]],
        state: dict[str, Any],
    ) -> None:
        """Spool one part of a capture (or a snapshot) within the daily budget; a part over it
        cuts the capture there (``state["cut"]``)."""
        if batch is None or state["cut"]:
            return
        stats = campaign.stats if campaign is not None else self.adhoc
        parts = self._parts(batch, ext, raw)
        size = sum(self.codec.size(KIND_DATA, envelope, body) for envelope, body in parts)
        if campaign is not None and campaign.config.daily_bytes is not None:
            day = int(self._clock.time() // 86_400)
            if day != campaign.day:
                campaign.day, campaign.day_bytes = day, 0
            if campaign.day_bytes + size > campaign.config.daily_bytes:
                state["cut"] = True
                return
            campaign.day_bytes += size
        if self._clock.monotonic() - self._schema_sent_at >= self.config.batch.schema_interval:
            self._send_schema()
        for envelope, body in parts:
            written = self._spool(KIND_DATA, envelope, body, priority, ext["campaign"])
            if written is None:
                stats.spool_errors += 1
                continue
            stats.payloads += 1
            stats.bytes += written

    def _parts(
        self,
        batch: Batch,
        ext: Mapping[str, Any],
        raw: Mapping[tuple[int, int | None, int], list[bytes]],
    ) -> list[tuple[dict[str, Any], bytes]]:
        """Envelope and body of ``batch``, split in halves until each fits ``max_bytes``; with
        ``raw`` (raw_frames), each part's ``ext["raw"]`` holds the frames of its own rows."""
        codec, schema = self.codec, self.schema
        envelope = codec.envelope(batch, schema)
        envelope["ext"] = dict(ext)
        if raw:
            envelope["ext"]["raw"] = [
                [index, tick, data]
                for (index, source), group in batch.groups.items()
                for tick in dict.fromkeys(group.times)
                for data in raw.get((index, source, tick), ())
            ]
        body = codec.data_body(batch, schema)
        if codec.size(KIND_DATA, envelope, body) > self.config.batch.max_bytes and batch.rows > 1:
            first, second = batch.split()
            return self._parts(first, ext, raw) + self._parts(second, ext, raw)
        return [(envelope, body)]

    def _send_schema(self) -> None:
        envelope = self.codec.envelope(None, self.schema)
        body = self.codec.schema_body(self.schema)
        if self._spool(KIND_SCHEMA, envelope, body, SCHEMA_PRIORITY, None) is not None:
            self.schemas += 1
            self._schema_sent_at = self._clock.monotonic()

    def _spool(
        self,
        kind: int,
        envelope: dict[str, Any],
        body: bytes,
        priority: int,
        campaign: str | None,
    ) -> int | None:
        """Append one payload; its size, or None when the spool refused it (logged)."""
        properties = {"priority": str(priority)}
        if campaign is not None:
            properties["campaign"] = campaign
        try:
            size, new_stream = self._appender.append(
                kind, envelope, body, priority=priority, properties=properties
            )
        except SpoolError as exc:
            log.error("spool refused a campaign payload: %s", exc)
            return None
        if new_stream and kind == KIND_DATA:
            self._send_schema()  # priority 0: delivered before this stream's data all the same
        return size

    # -- operating it --------------------------------------------------------------------------

    def flush(self) -> None:
        """Close every open capture now with the frames it has (shutdown): nothing is lost."""
        with self.lock:
            open_, self._open = self._open, []
            for campaign, capture, columns in open_:
                self._close(campaign, capture, columns)

    def tick(self) -> None:
        """Housekeeping without frames: start/expiry by the wall clock."""
        with self.lock:
            self._refresh(self._clock.time())

    def trigger(self, name: str) -> Capture:
        """Open a capture of campaign ``name`` now (the ``capture`` direct method)."""
        with self.lock:
            for campaign in self.campaigns:
                if campaign.config.name == name:
                    if campaign.config.collect != "condition":
                        raise TelemetryError(f"campaign {name!r} does not capture")
                    campaign.stats.triggers += 1
                    cfg = campaign.config
                    return self._open_capture(
                        campaign, self.now, cfg.before, cfg.after, "capture()", campaign.columns
                    )
            raise KeyError(name)

    def capture(self, signals: Sequence[str], before: float, after: float) -> Capture:
        """An ad hoc capture of ``signals`` (globs): only messages that already have a ring (a
        condition campaign collects them) have history; others have none before now."""
        with self.lock:
            columns = [(e, c) for e, c in self._columns(signals) if e.keep is not None]
            if not columns:
                raise TelemetryError(
                    "no captured message matches: ad hoc captures cover the signals of the "
                    "condition campaigns"
                )
            self.adhoc.triggers += 1
            return self._open_capture(None, self.now, before, after, "capture()", columns)

    def signals(self, globs: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Latest value and time of every signal matching ``globs`` (``getSignals``): the
        last-known state (edge.processing.latest), of every decoded message."""
        return latest_signals(self._latest(), globs, self._vss)

    def latest_frames(self) -> list[LatestFrame]:
        """The latest frame of each message (and source address) campaigns use."""
        with self.lock:
            frames = []
            for view in self._views():
                latest = view.latest()
                if latest is not None:
                    frames.append(
                        LatestFrame(view.bus, view.db, latest[1], latest[0], view.source_address)
                    )
            return frames

    def describe(self) -> dict[str, dict[str, Any]]:
        """State, settings and counters per campaign (``listCampaigns``)."""
        wall = self._clock.time()
        out: dict[str, dict[str, Any]] = {}
        with self.lock:
            for campaign in self.campaigns:
                cfg = campaign.config
                if not cfg.enabled:
                    state = "disabled"
                elif cfg.expiry is not None and wall >= cfg.expiry:
                    state = "expired"
                elif cfg.start is not None and wall < cfg.start:
                    state = "scheduled"
                else:
                    state = "running"
                open_ = sum(1 for c, _, _ in self._open if c is campaign)
                out[cfg.name] = {
                    "state": state,
                    "openCaptures": open_,
                    **describe(cfg),
                    **campaign.stats.as_json(),
                }
        return out

    def counters(self) -> dict[str, dict[str, int]]:
        """Counters per campaign (reported properties and /metrics)."""
        with self.lock:
            out = {c.config.name: c.stats.as_json() for c in self.campaigns}
            out["adhoc"] = self.adhoc.as_json()
            return out

    def all_counters(self) -> dict[str, dict[str, int]]:
        """:meth:`counters` and, under ``history``, :meth:`ring_stats` (PipelineStats)."""
        return {**self.counters(), "history": self.ring_stats()}

    def ring_stats(self) -> dict[str, int]:
        """Frames kept as history (``recent``: in the recent tier, every frame of its chunks;
        the rest packed in rings), the bytes of the rings, and frames their caps pushed out."""
        with self.lock:
            rings = [v.ring for v in self._views() if v.ring is not None]
            return {
                "recent": self._recent.frames,
                "frames": self._recent.frames + sum(len(r) for r in rings),
                "bytes": sum(r.bytes for r in rings),
                "overflow": sum(r.overflow for r in rings),
                "decodeErrors": sum(v.decode_errors for v in self._views()),
                "faults": self.faults,
            }


def raw_frames(
    ext: Mapping[str, Any], schema: Schema, resolution_ns: int
) -> list[tuple[float, str, str, int, bytes]]:
    """The raw frames a ``raw_frames`` capture carries in ``ext["raw"]`` (docs/format.md):
    (time, bus, message, frame id, data) each, ``resolution_ns`` being the envelope's ``res``."""
    out = []
    for index, tick, data in ext.get("raw", ()):
        info = schema.messages[index]
        out.append(
            (tick * resolution_ns / 1e9, schema.buses[info.bus], info.name, info.frame_id, data)
        )
    return out
