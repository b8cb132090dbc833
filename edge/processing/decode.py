"""CAN frame -> raw signal values, with cantools.

A :class:`Track` is one message of one bus (and, on J1939 buses, of one source address): the
decoder finds it by frame ID, decodes the payload to *raw* values (no scaling, no choice names:
the cloud applies scale and offset from the schema, so nothing is lost to float rounding) and
remembers the last payload, so a frame that repeats its predecessor (most CAN frames do) is not
decoded again.

Speed. ``Message.decode`` spends most of its time around the decoding rather than in it (length
checks, merging dicts, a Python loop over the signals to apply scaling we do not want). A track
therefore decodes with cantools' own compiled ``bitstruct`` layout directly: for a message that is
not multiplexed, one C call returns a tuple of every raw value (:func:`tuple_decoder`); for a
multiplexed one, :func:`dict_decoder` walks cantools' codec tree without the extra work. Both give
exactly what ``message.decode(data, False, False)`` gives (checked when the track is created, and
over the corpus by tests/processing/test_fused.py); any message they do not cover, or that fails the
check, is decoded by cantools itself.

Frames that cannot be decoded are counted by reason and skipped; the stream never stops for a bad
frame. Reasons: ``error_frame``, ``remote_frame``, ``unknown_id`` (not in the database),
``not_selected`` (no signal of it is kept), ``short_frame``, ``decode_error`` (cantools refuses
the payload, e.g. a multiplexer value the database does not define), ``unknown_bus``.

Faults of our own. A frame whose handling raises anything else (a bug, in the fast path or not)
is *lost*: counted apart (``Decoder.lost``, by exception type in ``lost_reasons``), and its
message falls back to cantools' own decoding for good (:meth:`Track.fall_back`, logged once).
A message that cannot even be set up is :class:`Unusable`: its frames are lost and counted. So
``frames = decoded + repeated + skipped + lost`` always holds (docs/counters.md).

A message is found as cantools finds it: by frame ID *and* kind (an 11-bit ID and a 29-bit ID of
the same number are different messages; a 29-bit ID below 0x800 is still a 29-bit ID), with the
database's frame ID mask; on J1939 buses, else by parameter group number.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, cast

import bitstruct  # type: ignore[import-untyped]
import can
from cantools.database.can import Database, Message
from cantools.database.errors import DecodeError

from edge.processing.sample import Policy, Selection, TrackSampler
from edge.wire.schema import MessageInfo, Schema

__all__ = [
    "MAX_CACHED_UNKNOWN",
    "UNKNOWN_ID",
    "BusDecoder",
    "DecodeStats",
    "Decoder",
    "InlineHook",
    "InlineInput",
    "Tap",
    "TapHook",
    "Track",
    "TupleLayout",
    "Unusable",
    "dict_decoder",
    "plain_decoder",
    "tuple_decoder",
]

log = logging.getLogger(__name__)

RawValues = dict[str, Any]
TupleDecoder = Callable[[bytes | bytearray], tuple[Any, ...]]
DictDecoder = Callable[[bytes | bytearray], RawValues]


# --- raw decoding straight from cantools' compiled layout -------------------------------------


def _start_bit(signal: Any) -> int:
    """Network-order start bit (cantools.database.utils.start_bit)."""
    start = int(signal.start)
    if signal.byte_order == "big_endian":
        return 8 * (start // 8) + (7 - (start % 8))
    return start


def _field(signal: Any) -> str:
    kind = "f" if signal.conversion.is_float else "s" if signal.is_signed else "u"
    return f"{kind}{signal.length}"


def _layouts(signals: Sequence[Any], length: int) -> tuple[tuple[str, list[str]], ...]:
    """The two bitstruct layouts cantools compiles for ``signals`` in a ``length``-byte frame
    (``create_encode_decode_formats``): big-endian signals read from the payload as it is,
    little-endian ones from the reversed payload; same fields, same padding, same order."""
    total = 8 * length
    big: list[str] = []
    big_names: list[str] = []
    start = 0
    for signal in sorted((s for s in signals if s.byte_order == "big_endian"), key=_start_bit):
        if _start_bit(signal) - start > 0:
            big.append(f"p{_start_bit(signal) - start}")
        big.append(_field(signal))
        big_names.append(signal.name)
        start = _start_bit(signal) + signal.length
    if start < total:
        big.append(f"p{total - start}")
    little: list[str] = []
    little_names: list[str] = []
    end = total
    for signal in reversed(signals):
        if signal.byte_order == "big_endian":
            continue
        if end - (signal.start + signal.length) > 0:
            little.append(f"p{end - (signal.start + signal.length)}")
        little.append(_field(signal))
        little_names.append(signal.name)
        end = signal.start
    if end > 0:
        little.append(f"p{end}")
    return ("".join(big), big_names), ("".join(little), little_names)


def _compile(layout: str) -> Any:
    """Compiled as cantools compiles it: with the C module, or pure Python for what it refuses."""
    try:
        import bitstruct.c  # type: ignore[import-untyped]

        return bitstruct.c.compile(layout)
    except Exception:
        return bitstruct.compile(layout)


def _root_codec(message: Message) -> dict[str, Any] | None:
    """cantools' codec tree of ``message`` (a private attribute: None if it is not as expected)."""
    codec = getattr(message, "_codecs", None)
    if not isinstance(codec, dict) or not {"signals", "formats", "multiplexers"} <= codec.keys():
        return None
    return codec


def _same_values(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Equal raw values, of equal types, NaN equal to NaN."""
    if a.keys() != b.keys():
        return False
    for name, x in a.items():
        y = b[name]
        if type(x) is not type(y):
            return False
        if x != y and not (isinstance(x, float) and math.isnan(x) and math.isnan(y)):
            return False
    return True


def _probes(length: int) -> list[bytes]:
    rng = random.Random(length)
    fixed = [bytes(length), b"\xff" * length, b"\x55" * length, b"\xaa" * length]
    return [*fixed, bytes(range(1, length + 1)), *(rng.randbytes(length) for _ in range(8))]


def _agrees(message: Message, decode: DictDecoder) -> bool:
    """Whether ``decode`` gives what cantools gives on a few payloads (errors included)."""
    for data in _probes(message.length):
        try:
            expected = cast(RawValues, message.decode(data, False, False))
        except DecodeError:
            try:
                decode(data)
            except DecodeError:
                continue
            except Exception:
                return False
            return False
        try:
            got = decode(data)
        except Exception:
            return False
        if not _same_values(got, expected):
            return False
    return True


class TupleLayout(NamedTuple):
    """How to decode a message's payload into a tuple of raw values (see :func:`tuple_decoder`).
    ``decode(data)`` does it all; ``unpack`` is the one C call behind it when there is one, to be
    given the reversed payload when ``reverse`` (little-endian signals only)."""

    decode: TupleDecoder
    names: tuple[str, ...]
    unpack: TupleDecoder
    reverse: bool


def tuple_decoder(message: Message) -> TupleLayout | None:
    """The layout whose ``decode(data)`` returns the raw value of every signal of ``message``
    as a tuple, ``names`` in the same order, for a payload of exactly ``message.length`` bytes:
    ``dict(zip(names, decode(data))) == message.decode(data, False, False)``. None for a
    multiplexed or container message, or one the fast path does not reproduce exactly (cantools
    then decodes it)."""
    codec = _root_codec(message)
    if codec is None or codec["multiplexers"] or message.is_container or not message.signals:
        return None
    try:
        (big, big_names), (little, little_names) = _layouts(codec["signals"], message.length)
        compiled = _compile(big), _compile(little)
    except Exception:
        return None
    if any(c.calcsize() != 8 * message.length for c in compiled):
        return None  # signals beyond the frame or overlapping: cantools cannot unpack them
    unpack_big, unpack_little = compiled[0].unpack, compiled[1].unpack
    decode: TupleDecoder
    if not little_names:
        decode = unpack_big
        layout = (unpack_big, False)
    elif not big_names:

        def decode(data: bytes | bytearray) -> tuple[Any, ...]:
            return unpack_little(data[::-1])  # type: ignore[no-any-return]

        layout = (unpack_little, True)
    else:

        def decode(data: bytes | bytearray) -> tuple[Any, ...]:
            return unpack_big(data) + unpack_little(data[::-1])  # type: ignore[no-any-return]

        layout = (decode, False)
    names = (*big_names, *little_names)

    def as_dict(data: bytes | bytearray) -> RawValues:
        return dict(zip(names, decode(data), strict=True))

    if not _agrees(message, as_dict):
        log.debug("%s: fast decoding differs from cantools; cantools decodes it", message.name)
        return None
    return TupleLayout(decode, names, *layout)


def plain_decoder(message: Message) -> DictDecoder:
    """cantools' own ``message.decode(data, False, False)``: the reference every faster path is
    checked against, and the path a message falls back to when a faster one fails."""

    def plain(data: bytes | bytearray) -> RawValues:
        return cast(RawValues, message.decode(bytes(data), False, False))

    return plain


def dict_decoder(message: Message) -> DictDecoder:
    """``decode(data)`` equal to ``message.decode(data, False, False)`` for a payload of exactly
    ``message.length`` bytes (DecodeError for a multiplexer value the database does not define),
    walking cantools' codec tree without its per-signal scaling loop. Falls back to cantools'
    ``decode`` when the tree is not as expected or the result would differ."""
    codec = _root_codec(message)
    plain = plain_decoder(message)
    if codec is None or message.is_container:
        return plain

    def compile_node(node: dict[str, Any]) -> tuple[Any, Any, list[tuple[str, dict[int, Any]]]]:
        # Only the unpackers that have signals to read (every node has both layouts).
        orders = {signal.byte_order for signal in node["signals"]}
        big = node["formats"].big_endian.unpack if "big_endian" in orders else None
        little = node["formats"].little_endian.unpack if "little_endian" in orders else None
        muxes = [
            (signal, {value: compile_node(child) for value, child in children.items()})
            for signal, children in node["multiplexers"].items()
        ]
        return big, little, muxes

    def walk(node: tuple[Any, Any, list[tuple[str, dict[int, Any]]]], data: Any) -> RawValues:
        big, little, muxes = node
        try:
            values: RawValues = big(data) if big is not None else {}
            if little is not None:
                values.update(little(data[::-1]))
        except (ValueError, bitstruct.Error) as exc:
            raise DecodeError("unpacking failed") from exc
        for signal, children in muxes:
            mux = int(values[signal])
            child = children.get(mux)
            if child is None:
                raise DecodeError(f"undefined multiplexer value {mux} of {signal}")
            values.update(walk(child, data))
        return values

    root = compile_node(codec)

    def fast(data: bytes | bytearray) -> RawValues:
        return walk(root, data)

    return fast if _agrees(message, fast) else plain


def pgn_from_frame_id(frame_id: int) -> int:
    """The J1939 parameter group number of a 29-bit frame ID: extended data page, data page, PDU
    format, and PDU specific only when it is a group extension (PDU2, format >= 240)."""
    pdu_format = (frame_id >> 16) & 0xFF
    pdu_specific = (frame_id >> 8) & 0xFF if pdu_format >= 240 else 0
    return (frame_id >> 8) & 0x30000 | pdu_format << 8 | pdu_specific


#: Why frames of an ID the databases do not know are skipped: the commonest reason by far, which
#: the Processor's loop counts by identity (``is``) instead of by name.
UNKNOWN_ID = "unknown_id"
_J1939_PGN_MASK = 0x3FFFF00
#: Unknown IDs remembered per bus and kind (11/29-bit) so that their frames cost one lookup; past
#: this (a bus flooded with random 29-bit IDs), unknown IDs are looked up every time instead of
#: growing memory without bound.
MAX_CACHED_UNKNOWN = 16384


class Unusable:
    """A message no decoding path can be set up for (an error of ours, or a database cantools
    loads but cannot decode with): its frames are lost, counted under ``reason``."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class Tap:
    """In a bus's tables in place of the ``entry`` (a :class:`Track`, a skip reason or an
    :class:`Unusable`) of a frame ID whose frames a campaign uses: ``view`` is what the campaign
    stage keeps of them (see :data:`TapHook`). The Processor's loop tells it apart by class, so
    that the frames of every other ID pay nothing for campaigns, and tracks stay of one class
    (the interpreter's attribute caches are per class: a second class of track at the loop's
    attribute reads would slow every frame)."""

    __slots__ = ("entry", "view")

    def __init__(self, entry: Track | str | Unusable, view: object) -> None:
        self.entry = entry
        self.view = view


class Track:
    """One message as seen on one bus (and one J1939 source address).

    The last decoded values are ``raw``, a tuple in ``names`` order, when the message has a tuple
    decoder (``unpack``: not multiplexed), else a dict; ``values`` gives them as a dict either
    way. ``deferred`` says the Processor may defer its sampling (see TrackSampler); it does not
    for a track that shares its batch group with another (``shared``: J1939 frames of one PGN
    and source address with different priorities), whose rows must interleave in frame order.
    ``group`` and ``generation`` are the Processor's place for this track in the open batch.
    """

    __slots__ = (
        "_values",
        "campaign_input",
        "decode",
        "deferred",
        "direct",
        "generation",
        "group",
        "length",
        "message_index",
        "names",
        "payload",
        "raw",
        "repeated",
        "reverse",
        "sampler",
        "shared",
        "source_address",
        "unpack",
        "width",
    )

    def __init__(
        self,
        message: Message,
        message_index: int,
        sampler: TrackSampler,
        source_address: int | None,
        decoders: tuple[DictDecoder, TupleLayout | None] | None = None,
    ) -> None:
        if decoders is None:
            decoders = (dict_decoder(message), tuple_decoder(message))
        self.decode: DictDecoder = decoders[0]
        self.unpack: TupleDecoder | None = None
        self.names: tuple[str, ...] = ()
        #: a campaign condition's one input, read by the Processor's loop (:data:`InlineInput`)
        self.campaign_input: InlineInput | None = None
        self.direct: TupleDecoder | None = None  # the C call of ``unpack``...
        self.reverse = False  # ...given the reversed payload
        if decoders[1] is not None:
            self.unpack, self.names, self.direct, self.reverse = decoders[1]
        self.length: int = message.length
        self.message_index = message_index
        self.sampler = sampler
        self.source_address = source_address
        self.payload: bytes | bytearray | None = None
        self.repeated = False
        self.raw: tuple[Any, ...] = ()
        self._values: RawValues = {}
        self.width = sampler.width  # selected signals
        self.deferred = self.unpack is not None and sampler.fast
        self.shared = False
        self.group: Any = None
        self.generation = -1

    @property
    def values(self) -> RawValues:
        """The raw value of each signal of the last decoded payload (multiplexed signals that
        were absent from it are missing)."""
        if self.unpack is not None:
            return dict(zip(self.names, self.raw, strict=True)) if self.raw else {}
        return self._values

    def decode_payload(self, data: bytes | bytearray) -> None:
        """Decode a payload of exactly ``length`` bytes into ``raw`` or ``values``. Raises
        DecodeError."""
        if self.unpack is not None:
            self.raw = self.unpack(data)
        else:
            self._values = self.decode(data)

    def fall_back(self, message: Message) -> None:
        """From now on decode with cantools itself and sample value by value (no tuple layout,
        no deferred rows): the path of last resort after a faster one failed. The next frame is
        decoded afresh. Pending rows must be settled first."""
        self.decode = plain_decoder(message)
        self.unpack = self.direct = None
        self.names = ()
        self.reverse = False
        self.raw = ()
        self.deferred = False
        self.payload = None
        self.repeated = False


#: What the processing stage asks the campaign stage once per new frame ID of a bus: (bus,
#: frame ID, extended) -> what the stage keeps of its frames, or None (no campaign uses them).
TapHook = Callable[[str, int, bool], object]
#: A campaign condition's one input that the Processor's loop reads itself from a track's raw
#: values, where the campaign stage would decode it again: its position in ``Track.raw``, and
#: the condition's comparison moved to raw values: ``raw >= boundary``, or its negation when
#: ``inverted`` (``raw < boundary``); then the object whose ``was_true`` is the condition's last
#: truth, and the view to hand the campaign stage's ``flip`` when the test differs from it
#: (see edge.processing.fused).
InlineInput = tuple[int, int, bool, Any, object]
#: Asked for the track of a tapped frame ID: (the tap's view, the track) -> the input the loop
#: reads for the campaign stage, or None.
InlineHook = Callable[[object, "Track"], InlineInput | None]


@dataclass(frozen=True, slots=True)
class DecodeStats:
    """Counters since start: ``frames = decoded + repeated + sum(skipped) + lost``."""

    frames: int
    decoded: int
    repeated: int
    skipped: Mapping[str, int] = field(default_factory=dict)
    lost: int = 0
    lost_reasons: Mapping[str, int] = field(default_factory=dict)


class BusDecoder:
    """Decoding state of one bus."""

    def __init__(
        self,
        bus_index: int,
        name: str,
        database: Database,
        schema: Schema,
        selection: Selection,
        *,
        j1939: bool = False,
        tap: TapHook | None = None,
        inline: InlineHook | None = None,
    ) -> None:
        """``tap`` is asked once per new frame ID whether a campaign uses its frames (then its
        table entry is a :class:`Tap`), ``inline`` whether the Processor's loop reads their
        condition input itself (then the entry is the track, its ``campaign_input`` set)."""
        self.name = name
        self._tap = tap
        self._inline = inline
        self._db = database
        self._j1939 = j1939
        self._selection = selection
        #: frame ID -> its track, or why its frames are skipped (a ``DecodeStats.skipped`` key),
        #: or :class:`Unusable`, any of them in a :class:`Tap` when a campaign uses the ID
        #: (:meth:`entry` looks through it), for 11-bit and 29-bit IDs apart; IDs not seen yet
        #: are absent
        #: (and unknown IDs past ``MAX_CACHED_UNKNOWN``). Read by the
        #: Processor's loop (two tables keyed by the ID itself: no key to compute per frame).
        self.standard: dict[int, Track | str | Unusable | Tap] = {}
        self.extended: dict[int, Track | str | Unusable | Tap] = {}
        self._decoders: dict[int, tuple[DictDecoder, TupleLayout | None]] = {}
        self._group_tracks: dict[tuple[int, int | None], Track] = {}
        # Schema index of each selected message of this bus, by cantools message, and the
        # message of each schema index. The schema lists them in database order, so they are
        # paired in order: a database may define two messages of one name (cantools keeps both,
        # each under its own frame ID).
        self._selected: dict[int, tuple[int, MessageInfo]] = {}
        #: the cantools message of each schema index of this bus
        self.messages_by_index: dict[int, Message] = {}
        mine = iter([(i, info) for i, info in enumerate(schema.messages) if info.bus == bus_index])
        wanted = next(mine, None)
        for message in database.messages:
            if wanted is not None and (wanted[1].name, wanted[1].frame_id) == (
                message.name,
                message.frame_id,
            ):
                self._selected[id(message)] = wanted
                self.messages_by_index[wanted[0]] = message
                wanted = next(mine, None)
        if wanted is not None:
            raise ValueError(f"schema message {wanted[1].name} is not in bus {name}'s database")
        self._messages: dict[int, Message] = {}  # by id(Track), for fall_back
        self._by_pgn: dict[int, Message] = {}
        if j1939:
            for message in database.messages:
                if message.is_extended_frame:
                    self._by_pgn.setdefault(pgn_from_frame_id(message.frame_id), message)

    def frame_ids(self) -> list[tuple[int, int, bool]]:
        """Kernel filters for the selected messages: ``(can_id, can_mask, extended)``. On J1939
        buses the mask keeps the PGN and ignores priority and source address."""
        filters = []
        for index, info in self._selected.values():
            message = self.messages_by_index[index]
            if info.j1939:
                filters.append((message.frame_id & _J1939_PGN_MASK, _J1939_PGN_MASK, True))
            else:
                mask = 0x1FFFFFFF if info.is_extended else 0x7FF
                filters.append((message.frame_id, mask, info.is_extended))
        return filters

    def track(self, arbitration_id: int, extended: bool) -> Track | None:
        """The track of a frame ID (created on first sight), or None: skipped (the reason is
        :meth:`skip_reason`) or lost (:meth:`unusable`)."""
        table = self.extended if extended else self.standard
        known = self.entry(arbitration_id, extended)
        if known is not None:
            return known if isinstance(known, Track) else None
        message = self.message(arbitration_id, extended)
        source_address: int | None = None
        if message is not None and self._j1939 and extended:
            source_address = arbitration_id & 0xFF
        if message is None:
            if len(table) < MAX_CACHED_UNKNOWN:
                table[arbitration_id] = UNKNOWN_ID
            return None
        entry: Track | str | Unusable
        if id(message) not in self._selected:
            entry = "not_selected"
        else:
            try:
                entry = self._new_track(message, source_address)
            except Exception as exc:  # a bug of ours, or a message cantools cannot handle
                log.error(
                    "message %s (%#x): cannot be decoded (%r); its frames are lost and counted",
                    message.name,
                    arbitration_id,
                    exc,
                )
                entry = Unusable(f"setup:{type(exc).__name__}")
        view = self._tap(self.name, arbitration_id, extended) if self._tap is not None else None
        if view is not None and self._inline is not None and isinstance(entry, Track):
            entry.campaign_input = self._inline(view, entry)
            if entry.campaign_input is not None:  # the loop reads it: no tap needed
                view = None
        table[arbitration_id] = entry if view is None else Tap(entry, view)
        return entry if isinstance(entry, Track) else None

    def entry(self, arbitration_id: int, extended: bool) -> Track | str | Unusable | None:
        """The table entry of a frame ID (through a :class:`Tap`); None before first sight."""
        entry = (self.extended if extended else self.standard).get(arbitration_id)
        return entry.entry if isinstance(entry, Tap) else entry

    def tracks(self) -> list[Track]:
        """The tracks set up so far."""
        entries = (*self.standard.values(), *self.extended.values())
        unwrapped = (e.entry if isinstance(e, Tap) else e for e in entries)
        return [e for e in unwrapped if isinstance(e, Track)]

    def message(self, arbitration_id: int, extended: bool) -> Message | None:
        """The message a frame ID stands for, as cantools finds it (ID and kind, frame ID mask),
        else on J1939 buses by PGN; None when the database has none."""
        try:
            return self._db.get_message_by_frame_id(arbitration_id, force_extended_id=extended)
        except KeyError:
            pass
        if extended and self._j1939:
            return self._by_pgn.get(pgn_from_frame_id(arbitration_id))
        return None

    def _new_track(self, message: Message, source_address: int | None) -> Track:
        index, info = self._selected[id(message)]
        policies: list[Policy] = []
        for signal_info in info.signals:
            policy = self._selection.policy(
                self.name, message, message.get_signal_by_name(signal_info.name)
            )
            assert policy is not None  # the schema holds selected signals only
            policies.append(policy)
        decoders = self._decoders.get(id(message))
        if decoders is None:  # shared by the tracks of one message (J1939 source addresses)
            layout = tuple_decoder(message)
            if layout is not None and not {s.name for s in info.signals} <= set(layout.names):
                # Signals cantools never decodes (e.g. multiplexed ones of a message whose
                # multiplexer is not marked as one): decoded value by value, as cantools does.
                layout = None
            decoders = self._decoders[id(message)] = (dict_decoder(message), layout)
        sampler = TrackSampler(info, policies)
        if decoders[1] is not None:
            names = decoders[1].names
            position = {name: i for i, name in enumerate(names)}
            sampler.bind([position[s.name] for s in info.signals], len(names))
        track = Track(message, index, sampler, source_address, decoders)
        self._messages[id(track)] = message
        other = self._group_tracks.setdefault((index, source_address), track)
        if other is not track:
            other.shared = track.shared = True
            other.deferred = track.deferred = False
        return track

    def fall_back(self, track: Track) -> None:
        """Switch ``track`` to cantools' own decoding for good (see :meth:`Track.fall_back`)."""
        track.fall_back(self._messages[id(track)])

    def message_name(self, track: Track) -> str:
        """The name of the message ``track`` decodes."""
        return str(self._messages[id(track)].name)

    def unusable(self, arbitration_id: int, extended: bool) -> Unusable | None:
        """The :class:`Unusable` entry of a frame ID, if its message could not be set up."""
        entry = self.entry(arbitration_id, extended)
        return entry if isinstance(entry, Unusable) else None

    def skip_reason(self, arbitration_id: int, extended: bool) -> str:
        """Why frames with this ID are skipped."""
        reason = self.entry(arbitration_id, extended)
        return reason if isinstance(reason, str) else UNKNOWN_ID


class Decoder:
    """Decodes frames of every configured bus. Sources set ``msg.channel`` to the bus name."""

    def __init__(self, buses: Sequence[BusDecoder]) -> None:
        self._buses = {b.name: b for b in buses}
        self.frames = 0
        self.decoded = 0
        self.repeated = 0
        self.skipped: Counter[str] = Counter()
        self.lost = 0
        self.lost_reasons: Counter[str] = Counter()

    def bus(self, name: str) -> BusDecoder:
        """The decoder of bus ``name``."""
        return self._buses[name]

    def decode(self, msg: can.Message) -> Track | None:
        """The track of ``msg`` with ``values`` set to its raw signal values and ``repeated`` set
        when the payload equals the previous one (then ``values`` are reused, not decoded again),
        or None when the frame is skipped (counted by reason)."""
        self.frames += 1
        if msg.is_error_frame:
            self.skipped["error_frame"] += 1
            return None
        if msg.is_remote_frame:
            self.skipped["remote_frame"] += 1
            return None
        bus = self._buses.get(msg.channel)  # type: ignore[arg-type]
        if bus is None:
            self.skipped["unknown_bus"] += 1
            return None
        track = bus.track(msg.arbitration_id, msg.is_extended_id)
        if track is None:
            unusable = bus.unusable(msg.arbitration_id, msg.is_extended_id)
            if unusable is not None:
                self.lose(unusable.reason)
            else:
                self.skipped[bus.skip_reason(msg.arbitration_id, msg.is_extended_id)] += 1
            return None
        return track if self.update(track, msg) else None

    def lose(self, reason: str) -> None:
        """Count a frame lost to a fault of ours (already counted in ``frames``)."""
        self.lost += 1
        self.lost_reasons[reason] += 1

    def update(self, track: Track, msg: can.Message) -> bool:
        """Decode ``msg``, a frame of ``track`` (already counted in ``frames``), as
        :meth:`decode` does; False when it is skipped (counted by reason)."""
        data = msg.data
        if data == track.payload:
            self.repeated += 1
            track.repeated = True
            return True
        if len(data) != track.length:
            if len(data) < track.length:
                self.skipped["short_frame"] += 1
                return False
            data = data[: track.length]  # as cantools: bytes beyond the message are ignored
        try:
            track.decode_payload(data)
        except DecodeError:
            self.skipped["decode_error"] += 1
            return False
        track.payload = bytes(msg.data)
        track.repeated = False
        self.decoded += 1
        return True

    def stats(self) -> DecodeStats:
        """A snapshot of the counters."""
        return DecodeStats(
            self.frames,
            self.decoded,
            self.repeated,
            dict(self.skipped),
            self.lost,
            dict(self.lost_reasons),
        )
