"""The processing stage and the campaign engine's readers against cantools, on *generated*
databases (hypothesis): the corpus tests (test_differential.py, test_fused.py,
tests/campaigns/test_multiplexed_inputs.py) cover the ~220 databases of the corpus; the world has
more.

Databases are generated as DBC text, loaded with ``cantools.database.load_string`` strictly and
not, and also built in memory from cantools' own ``Database``/``Message``/``Signal`` objects:
little- and big-endian signals anywhere in the frame (big-endian start bits anywhere in their
byte), lengths 1..64, signed and unsigned, IEEE float 32/64 (and 16), integer, float and negative
scales and offsets, choices (on multiplexers too, which adds empty branches), messages of 0..8
bytes and CAN FD lengths, 11-bit and 29-bit IDs (one number as both), plain, multiplexed
(``M``/``m3``), extended-multiplexed (``SG_MUL_VAL_``: a signal in several branches), nested
(``m3M``) and twin (two multiplexers at the root) messages, signals that leave gaps, signals
whose multiplexer is not one (cantools never decodes them); and, loaded non-strictly,
overlapping signals and signals beyond their frame. Frames carry random payloads of the
message's length (multiplexers set to a branch the database defines, or not), repeated
payloads, payloads with one byte changed, payloads of other lengths (shorter ones cantools
refuses, longer ones it decodes), unknown IDs, error and remote frames. ``DEEP=1`` runs ten
times as many examples.

Properties:

1. the raw decoders (``tuple_decoder``, ``dict_decoder``, ``plain_decoder``) give what
   ``message.decode(data, False, False)`` gives, value for value and type for type, and refuse
   what it refuses; every row the :class:`Processor` emits is what cantools' ``decode`` gives
   (physical value, type, choice, time), frames cantools refuses are skipped and counted by
   reason, repeated payloads counted as such, and ``frames = decoded + repeated + skipped``
   with nothing lost (as test_differential's ``check``, with choices named signal by signal);
2. the campaign engine's readers (``_Decoding.one``, ``.multiplexed``, ``.values``) give
   cantools' raw values, None where the frame leaves a signal out, and refuse exactly the frames
   cantools refuses; they exist for every integer signal cantools decodes in a message it
   would load strictly;
3. the fused hot loop and the plain steps give the same rows and counters.

Discrepancies found (now mended) are kept as minimal tests at the end of the file.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections import Counter, OrderedDict, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import can
import cantools
from cantools.database.can import Database, Message, Signal
from cantools.database.conversion import BaseConversion
from cantools.database.errors import DecodeError
from hypothesis import HealthCheck, given, note, settings
from hypothesis import event as hypothesis_event
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context

from edge.campaigns.engine import _Decoding, _integer_layout, _integer_reader, _Undefined
from edge.config.model import parse_config
from edge.processing.decode import dict_decoder, plain_decoder, tuple_decoder
from edge.processing.processor import Processor
from tests.processing.test_differential import Loaded, on_change, run, tick
from tests.processing.test_fused import PlainProcessor, fused_and_plain
from tests.processing.test_processor import Collector

FD_LENGTHS = (12, 16, 20, 24, 32, 48, 64)
LENGTHS = (*range(9), *FD_LENGTHS)
STEP = 0.001  # seconds between frames: one tick of the default 1 ms resolution
START = 1_700_000_000.0


def event(text: str) -> None:
    """Hypothesis's ``event``, also callable from the plain tests that share the checks."""
    if currently_in_test_context():
        hypothesis_event(text)


def properties(examples: int) -> settings:
    """Hypothesis settings: ``examples`` examples (ten times as many with DEEP=1)."""
    return settings(
        max_examples=examples * (10 if os.environ.get("DEEP") else 1),
        deadline=None,
        database=None,  # no example database: failures are shrunk and printed each run
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --- generated databases ------------------------------------------------------------------------


@dataclass(frozen=True)
class Sig:
    """One signal as a DBC ``SG_`` line (and its ``VAL_``, ``SIG_VALTYPE_``, ``SG_MUL_VAL_``)."""

    name: str
    start: int  # DBC start bit: the LSB (little-endian) or the MSB in sawtooth order (big)
    length: int
    little: bool
    signed: bool = False
    kind: int = 0  # SIG_VALTYPE_: 0 integer, 1 IEEE float, 2 IEEE double
    scale: str = "1"
    offset: str = "0"
    choices: tuple[tuple[int, str], ...] = ()
    multiplexer: bool = False
    parent: str | None = None  # the multiplexer it is in (None: at the root)
    ids: tuple[int, ...] = ()  # the parent's values it is in


@dataclass(frozen=True)
class Msg:
    name: str
    frame_id: int
    extended: bool
    length: int
    signals: tuple[Sig, ...] = ()
    #: "plain"; "simple" (markers only); "extended" (SG_MUL_VAL_ for every multiplexed signal:
    #: several values each); "nested" (a multiplexer in a branch of the first) or "twin" (two
    #: multiplexers at the root), with SG_MUL_VAL_ throughout
    mode: str = "plain"


@dataclass(frozen=True)
class Generated:
    messages: tuple[Msg, ...]
    strict: bool
    text: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "text", dbc_text(self.messages))


def network_start(start: int, little: bool) -> int:
    """Where a signal starts in network bit order (cantools' ``start_bit``)."""
    return start if little else 8 * (start // 8) + 7 - start % 8


def bit_indices(start: int, length: int, little: bool) -> list[int]:
    """The bits of a signal, its least significant first, as ``8 * byte + bit`` indices."""
    if little:
        return [start + j for j in range(length)]
    first = network_start(start, little)
    positions = [first + length - 1 - j for j in range(length)]
    return [8 * (p // 8) + 7 - p % 8 for p in positions]


def dbc_id(message: Msg) -> int:
    return message.frame_id | (0x80000000 if message.extended else 0)


def ranges(ids: Sequence[int]) -> str:
    """``SG_MUL_VAL_`` ranges of ``ids``: ``1-1, 3-5``."""
    out: list[str] = []
    values = sorted(ids)
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        out.append(f"{values[i]}-{values[j]}")
        i = j + 1
    return ", ".join(out)


def dbc_text(messages: Sequence[Msg]) -> str:
    lines = ['VERSION ""', "", "NS_ :", "", "BS_:", "", "BU_: N", ""]
    vals: list[str] = []
    types: list[str] = []
    muls: list[str] = []
    for m in messages:
        lines.append(f"BO_ {dbc_id(m)} {m.name}: {m.length} N")
        for s in m.signals:
            marker = ""
            if s.parent is not None:
                marker = f"m{s.ids[0]}"
            if s.multiplexer:
                marker += "M"
            marker = f" {marker}" if marker else ""
            lines.append(
                f" SG_ {s.name}{marker} : {s.start}|{s.length}@{int(s.little)}"
                f'{"-" if s.signed else "+"} ({s.scale},{s.offset}) [0|0] "" N'
            )
            if s.choices:
                named = " ".join(f'{k} "{v}"' for k, v in s.choices)
                vals.append(f"VAL_ {dbc_id(m)} {s.name} {named} ;")
            if s.kind:
                types.append(f"SIG_VALTYPE_ {dbc_id(m)} {s.name} : {s.kind};")
            if s.parent is not None and m.mode != "simple":
                muls.append(f"SG_MUL_VAL_ {dbc_id(m)} {s.name} {s.parent} {ranges(s.ids)};")
        lines.append("")
    fd = [m for m in messages if m.length > 8]
    if fd:
        lines.append(
            'BA_DEF_ BO_ "VFrameFormat" ENUM "StandardCAN","ExtendedCAN","reserved","J1939PG",'
            + ",".join(['"reserved"'] * 10)
            + ',"StandardCAN_FD","ExtendedCAN_FD";'
        )
        lines.append('BA_DEF_DEF_ "VFrameFormat" "StandardCAN";')
        for m in fd:
            lines.append(f'BA_ "VFrameFormat" BO_ {dbc_id(m)} {15 if m.extended else 14};')
    return "\n".join([*lines, *vals, *types, *muls, ""])


def number(text: str) -> int | float:
    """A DBC number as cantools parses it."""
    try:
        return int(text)
    except ValueError:
        return float(text)


SCALES = ("1", "1", "2", "-1", "-3", "10", "0.5", "0.1", "-0.25", "1e-05", "3.0517578125e-05")
SCALES_INTEGRAL_FLOAT = ("1.0", "2.0", "-4.0")
OFFSETS = ("0", "0", "-40", "1000", "0.5", "-273.15", "1e+3", "0.0", "-40.0")


@st.composite
def conversions(draw: st.DrawFn) -> tuple[str, str]:
    scale = draw(st.sampled_from(SCALES + SCALES_INTEGRAL_FLOAT))
    if draw(st.integers(0, 9)) == 0:
        scale = repr(draw(st.floats(1e-9, 1e6)) * draw(st.sampled_from((1, -1))))
    offset = draw(st.sampled_from(OFFSETS))
    if draw(st.integers(0, 9)) == 0:
        offset = repr(draw(st.floats(-1e9, 1e9, allow_nan=False)))
    return scale, offset


def raw_range(length: int, signed: bool) -> tuple[int, int]:
    return (-(2 ** (length - 1)), 2 ** (length - 1) - 1) if signed else (0, 2**length - 1)


@st.composite
def choice_tables(draw: st.DrawFn, length: int, signed: bool) -> tuple[tuple[int, str], ...]:
    low, high = raw_range(min(length, 64), signed)
    keys = draw(
        st.lists(
            st.one_of(st.integers(max(low, -8), min(high, 8)), st.integers(low, high)),
            min_size=1,
            max_size=min(4, high - low + 1),
            unique=True,
        )
    )
    return tuple((k, f"c{i}") for i, k in enumerate(sorted(keys)))


class Layout:
    """Bits taken, per scope (the root, each branch): where a signal may go."""

    def __init__(self, draw: st.DrawFn, length: int, strict: bool) -> None:
        self.draw = draw
        self.bits = 8 * length
        self.strict = strict

    def place(
        self, taken: set[int], name: str, *, multiplexer: bool = False, **more: Any
    ) -> Sig | None:
        """A signal of random shape somewhere its scope leaves free (in strict databases),
        anywhere (sometimes overlapping, sometimes beyond the frame) in the others; None when it
        does not fit."""
        draw = self.draw
        kind = 0 if multiplexer else draw(st.sampled_from((0, 0, 0, 0, 0, 1, 2)))
        if kind:  # a half float too: cantools reads 16-bit "IEEE float" signals as such
            length = 64 if kind == 2 else draw(st.sampled_from((32, 32, 32, 16)))
        elif multiplexer:
            length = draw(st.one_of(st.integers(1, 4), st.integers(1, 12)))
        else:
            length = draw(st.one_of(st.integers(1, 16), st.integers(1, 64)))
        little = draw(st.booleans())
        beyond = not self.strict and draw(st.integers(0, 24)) == 0
        if beyond:  # anywhere, even beyond the frame: cantools refuses every frame
            start = draw(st.integers(0, max(self.bits, 8) - 1))
        else:
            if length > self.bits:
                return None
            first = draw(st.integers(0, self.bits - length))
            start = first if little else 8 * (first // 8) + 7 - first % 8
        bits = set(bit_indices(start, length, little))
        overlap = not self.strict and draw(st.integers(0, 5)) == 0
        if bits & taken and not overlap:
            return None
        taken |= bits
        signed = draw(st.booleans()) if kind == 0 and not (multiplexer and length == 1) else False
        if multiplexer:
            signed = signed and draw(st.booleans())
        scale, offset = ("1", "0") if multiplexer else draw(conversions())
        choices: tuple[tuple[int, str], ...] = ()
        if draw(st.integers(0, 3)) == 0 and (kind == 0 or draw(st.booleans())):
            choices = draw(choice_tables(length if kind == 0 else 16, signed or kind > 0))
        sig = Sig(
            name, start, length, little, signed, kind, scale, offset, choices, multiplexer, **more
        )
        return sig


@st.composite
def messages(draw: st.DrawFn, index: int, frame_id: int, extended: bool, strict: bool) -> Msg:
    length = draw(st.sampled_from(LENGTHS))
    mode = draw(st.sampled_from(("plain", "plain", "simple", "extended", "nested", "twin")))
    if length == 0:
        mode = "plain"
    layout = Layout(draw, length, strict)
    names = (f"S{i}" for i in range(1000))
    root: set[int] = set()
    signals: list[Sig] = []

    def add(sig: Sig | None) -> Sig | None:
        if sig is not None:
            signals.append(sig)
        return sig

    for _ in range(draw(st.integers(0, 6 if mode == "plain" else 3))):
        add(layout.place(root, next(names)))
    if mode != "plain":
        mux = add(layout.place(root, "MUX", multiplexer=True))
        if mux is not None:
            low, high = raw_range(mux.length, mux.signed)
            values = draw(
                st.lists(st.integers(max(low, 0), high), min_size=1, max_size=4, unique=True)
            )
            branches = {v: set(root) for v in values}
            for _ in range(draw(st.integers(0, 2 * len(values)))):
                if mode == "simple":
                    ids = [draw(st.sampled_from(values))]
                else:
                    ids = draw(st.lists(st.sampled_from(values), min_size=1, unique=True))
                taken = set().union(*(branches[v] for v in ids))
                sig = add(layout.place(taken, next(names), parent="MUX", ids=tuple(ids)))
                if sig is not None:
                    for v in ids:
                        branches[v] |= taken
            if mode in ("nested", "twin"):
                if mode == "nested":  # a multiplexer in one branch of the first
                    value = draw(st.sampled_from(values))
                    scope = branches[value]
                    more: dict[str, Any] = {"parent": "MUX", "ids": (value,)}
                else:  # a second multiplexer at the root, clear of the first's branches
                    scope = set().union(*branches.values())
                    more = {}
                sub = add(layout.place(scope, "SUB", multiplexer=True, **more))
                if sub is not None:
                    low, high = raw_range(sub.length, sub.signed)
                    subvalues = draw(
                        st.lists(
                            st.integers(max(low, 0), high), min_size=1, max_size=3, unique=True
                        )
                    )
                    for v in subvalues:
                        below = set(scope)
                        for _ in range(draw(st.integers(0, 2))):
                            add(layout.place(below, next(names), parent="SUB", ids=(v,)))
                    plain = [s for s in signals if s.parent is None and not s.multiplexer]
                    orphan = draw(st.booleans())
                    if plain and orphan:
                        # a signal whose multiplexer is a plain signal: cantools never decodes it
                        # (with two multiplexers, every multiplexed signal names its own)
                        parent = draw(st.sampled_from(plain)).name
                        add(layout.place(set(), next(names), parent=parent, ids=(1,)))
    if mode != "plain" and not any(s.multiplexer for s in signals):
        mode = "plain"
        signals = [s for s in signals if s.parent is None]
    return Msg(f"M{index}", frame_id, extended, length, tuple(signals), mode)


@st.composite
def databases(draw: st.DrawFn, strict: bool | None = None) -> Generated:
    if strict is None:
        strict = draw(st.booleans())
    keys = draw(
        st.lists(
            st.one_of(
                st.tuples(st.integers(0, 0x7FF), st.booleans()),
                st.tuples(st.integers(0x800, 0x1FFFFFFF), st.just(True)),
            ),
            min_size=1,
            max_size=4,
            unique=True,
        )
    )
    generated = [
        draw(messages(i, frame_id, extended, strict)) for i, (frame_id, extended) in enumerate(keys)
    ]
    return Generated(tuple(generated), strict)


def loads(text: str, strict: bool) -> Database:
    db = cantools.database.load_string(text, "dbc", strict=strict)
    assert isinstance(db, Database)
    return db


def load(generated: Generated) -> Database:
    return loads(generated.text, generated.strict)


def choices(s: Sig) -> Any:
    """``s``'s value table as cantools keeps it."""
    return OrderedDict(s.choices) if s.choices else None


def build(generated: Generated) -> Database:
    """The same database built from cantools' objects, without DBC text."""
    out = []
    for m in generated.messages:
        signals = [
            Signal(
                name=s.name,
                start=s.start,
                length=s.length,
                byte_order="little_endian" if s.little else "big_endian",
                is_signed=s.signed,
                conversion=BaseConversion.factory(
                    scale=number(s.scale),
                    offset=number(s.offset),
                    choices=choices(s),
                    is_float=s.kind > 0,
                ),
                is_multiplexer=s.multiplexer,
                multiplexer_ids=list(s.ids) if s.parent is not None else None,
                multiplexer_signal=s.parent,
            )
            for s in m.signals
        ]
        out.append(
            Message(
                frame_id=m.frame_id,
                name=m.name,
                length=m.length,
                signals=signals,
                is_extended_frame=m.extended,
                is_fd=m.length > 8,
                strict=generated.strict,
            )
        )
    return Database(messages=out, strict=generated.strict)


# --- generated frames ---------------------------------------------------------------------------


def put(data: bytearray, signal: Signal, value: int) -> None:
    """Write ``value`` (two's complement) into the bits of ``signal`` that ``data`` has."""
    little = signal.byte_order == "little_endian"
    for j, index in enumerate(bit_indices(signal.start, signal.length, little)):
        if index < 8 * len(data):
            byte, bit = divmod(index, 8)
            if value >> j & 1:
                data[byte] |= 1 << bit
            else:
                data[byte] &= ~(1 << bit)


def steer(draw: st.DrawFn, message: Message, tree: Sequence[Any], data: bytearray) -> None:
    """Set the multiplexers of ``tree`` in ``data``: mostly to a value the database defines (and
    then the ones below it), sometimes to any value."""
    for node in tree:
        if not isinstance(node, dict):
            continue
        ((name, children),) = node.items()
        signal = message.get_signal_by_name(name)
        if children and draw(st.integers(0, 4)):
            value = draw(st.sampled_from(sorted(children)))
        else:
            value = draw(st.integers(*raw_range(signal.length, signal.is_signed)))
        put(data, signal, value)
        if value in children:
            steer(draw, message, children[value], data)


@st.composite
def payloads(draw: st.DrawFn, message: Message, length: int | None = None) -> bytes:
    """A payload of ``message`` (of ``length`` bytes, by default the message's)."""
    if length is None:
        length = message.length
    fill = draw(st.sampled_from(("random", "random", "random", "random", "zeros", "ones")))
    if fill == "random":
        data = bytearray(draw(st.binary(min_size=length, max_size=length)))
    else:
        data = bytearray((b"\0" if fill == "zeros" else b"\xff") * length)
    if message.is_multiplexed() and draw(st.integers(0, 3)):
        steer(draw, message, message.signal_tree, data)
    return bytes(data)


#: What a generated frame is (weights by repetition).
KINDS = (
    *("payload",) * 5,
    *("repeat", "mutate") * 2,
    *("length",) * 2,
    *("unknown", "error", "remote"),
)


@st.composite
def frame_lists(
    draw: st.DrawFn, db: Database, most: int = 40, step: float = STEP
) -> list[can.Message]:
    """Frames of ``db``'s messages on bus ``can0``, ``step`` seconds apart."""
    out: list[can.Message] = []
    last: dict[int, bytes] = {}
    for i in range(draw(st.integers(1, most))):
        t = round(START + (i + 1) * step, 3)
        kind = draw(st.sampled_from(KINDS))
        if kind in ("error", "remote"):
            out.append(
                can.Message(
                    timestamp=t,
                    arbitration_id=draw(st.integers(0, 0x7FF)),
                    is_extended_id=False,
                    is_error_frame=kind == "error",
                    is_remote_frame=kind == "remote",
                    channel="can0",
                    check=False,
                )
            )
            continue
        if kind == "unknown":
            extended = draw(st.booleans())
            frame_id = draw(st.integers(0, 0x1FFFFFFF if extended else 0x7FF))
            data = draw(st.binary(max_size=8))
        else:
            number = draw(st.integers(0, len(db.messages) - 1))
            message = db.messages[number]
            frame_id, extended = message.frame_id, bool(message.is_extended_frame)
            if frame_id <= 0x7FF and draw(st.integers(0, 9)) == 0:
                extended = not extended  # the same number as the other kind of ID
            if kind == "repeat" and number in last:
                data = last[number]
            elif kind == "mutate" and last.get(number):  # one byte of the last payload changed
                changed = bytearray(last[number])
                changed[draw(st.integers(0, len(changed) - 1))] = draw(st.integers(0, 255))
                data = last[number] = bytes(changed)
            else:
                length = message.length
                if kind == "length":
                    length = draw(st.sampled_from([n for n in LENGTHS if n != length]))
                data = last[number] = draw(payloads(message, length))
        out.append(
            can.Message(
                timestamp=t,
                arbitration_id=frame_id,
                is_extended_id=extended,
                data=data,
                is_fd=len(data) > 8,
                channel="can0",
                check=False,
            )
        )
    return out


# --- comparing with cantools ---------------------------------------------------------------------

REFUSED = object()  # cantools refuses the frame


def same(a: Any, b: Any) -> bool:
    """Equal values of equal types (NaN equal to NaN)."""
    if type(a) is not type(b):
        return False
    return bool(a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)))


def same_values(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)


def expect(message: Message, data: bytes) -> Any:
    """cantools' raw values of ``data``, or REFUSED."""
    try:
        values = message.decode(data, False, False)
    except DecodeError:
        return REFUSED
    assert isinstance(values, dict)
    return values


def agrees(got: Any, want: Any) -> bool:
    """Both refused, or the same values."""
    if got is REFUSED or want is REFUSED:
        return got is want
    return same_values(got, want)


def outcome(decode: Callable[[Any], Any], data: bytes | bytearray) -> Any:
    """What a decoder of ours gives: its values, or REFUSED for a DecodeError (anything else
    it raises propagates: a fault)."""
    try:
        return decode(data)
    except DecodeError:
        return REFUSED


def strictly_loadable(message: Message) -> bool:
    """Whether ``message`` is one cantools would load strictly (its signals fit and do not
    overlap), whatever the flag it was loaded with."""
    try:
        message.refresh(strict=True)
    except Exception:
        return False
    finally:
        message.refresh(strict=False)
    return True


def decoded_names(tree: Sequence[Any]) -> set[str]:
    """The signals cantools decodes in some frame: those of its signal tree (a signal whose
    multiplexer is not one is not in it)."""
    out: set[str] = set()
    for node in tree:
        if isinstance(node, str):
            out.add(node)
            continue
        for name, children in node.items():
            out.add(name)
            for child in children.values():
                out |= decoded_names(child)
    return out


def summary(db: Database) -> None:
    for message in db.messages:
        kind = "multiplexed" if message.is_multiplexed() else "plain"
        event(f"{kind}, {'CAN FD' if message.length > 8 else 'classic'}")


# --- 1. the raw decoders and the processing stage ----------------------------------------------


@properties(200)
@given(generated=databases(), source=st.sampled_from(("dbc", "objects")), data=st.data())
def test_raw_decoders_equal_cantools(
    generated: Generated, source: str, data: st.DataObject
) -> None:
    """``tuple_decoder`` (where it takes a message), ``dict_decoder`` and ``plain_decoder`` give
    what ``message.decode(data, False, False)`` gives, type for type, on payloads of the
    message's length, and refuse (DecodeError) exactly what cantools refuses; the tuple decoder
    takes every plain message cantools would load strictly."""
    note(generated.text)
    db = load(generated) if source == "dbc" else build(generated)
    summary(db)
    for message in db.messages:
        loadable = strictly_loadable(message)
        fast_tuple = tuple_decoder(message)
        fast_dict = dict_decoder(message)
        plain = plain_decoder(message)
        if fast_tuple is not None:
            assert not message.is_multiplexed()
            assert len(set(fast_tuple.names)) == len(fast_tuple.names)
        elif loadable and message.signals and not message.is_multiplexed():
            raise AssertionError(f"{message.name}: the fast path refuses a plain message")
        for payload in data.draw(st.lists(payloads(message), min_size=1, max_size=12)):
            want = expect(message, payload)
            for decode in (fast_dict, plain):
                got = outcome(decode, bytearray(payload))  # frames carry bytearrays
                assert agrees(got, want), (message.name, payload.hex(), got, want)
            if fast_tuple is None:
                continue
            assert want is not REFUSED, (message.name, payload.hex())  # it takes no such message
            raw = fast_tuple.decode(bytearray(payload))
            direct = fast_tuple.unpack(bytearray(payload[::-1] if fast_tuple.reverse else payload))
            assert all(map(same, direct, raw))
            values = dict(zip(fast_tuple.names, raw, strict=True))
            assert same_values(values, want), (message.name, payload.hex(), values, want)


def written(generated: Generated, folder: str) -> Loaded:
    """``generated`` as a DBC file, with the database cantools loads from its text."""
    path = Path(folder) / "generated.dbc"
    path.write_text(generated.text)
    return Loaded(path, load(generated), generated.strict)


Row = tuple[float, Any, Any, Any]  # time, physical value, choice, raw value


@dataclass
class Reference:
    """What the processing stage must give for frames of ``db``, from cantools alone: the rows
    of every signal of every frame cantools decodes, and the counters."""

    db: Database
    rows: dict[tuple[str, str], list[Row]] = field(default_factory=lambda: defaultdict(list))
    decoded: int = 0
    repeated: int = 0
    skipped: Counter[str] = field(default_factory=Counter)

    def add(self, msg: can.Message, last: dict[int, bytes]) -> None:
        if msg.is_error_frame or msg.is_remote_frame:
            self.skipped["error_frame" if msg.is_error_frame else "remote_frame"] += 1
            return
        try:
            message = self.db.get_message_by_frame_id(
                msg.arbitration_id, force_extended_id=msg.is_extended_id
            )
        except KeyError:
            self.skipped["unknown_id"] += 1
            return
        if not message.signals:
            self.skipped["not_selected"] += 1  # nothing of it is kept
            return
        data = bytes(msg.data)
        if last.get(id(message)) == data:
            self.repeated += 1  # not decoded again: its values are the last ones
        elif expect(message, data) is REFUSED:
            self.skipped["short_frame" if len(data) < message.length else "decode_error"] += 1
            return
        else:
            self.decoded += 1
            last[id(message)] = data
        physical = message.decode(data, decode_choices=False)
        raw = message.decode(data, False, False)
        assert isinstance(physical, dict) and isinstance(raw, dict)
        for name, value in physical.items():
            signal = message.get_signal_by_name(name)
            try:  # the choice as cantools' decode names it, signal by signal
                named = signal.conversion.raw_to_scaled(cast(Any, raw[name]), True)
            except (ValueError, OverflowError):  # a NaN or infinite float has no choice
                named = None
            choice = getattr(named, "name", None)
            self.rows[(message.name, name)].append((tick(msg.timestamp), value, choice, raw[name]))


def reference(db: Database, frames: Sequence[can.Message]) -> Reference:
    out = Reference(db)
    last: dict[int, bytes] = {}
    for msg in frames:
        out.add(msg, last)
    return out


def check_stage(loaded: Loaded, frames: list[can.Message]) -> None:
    """The Processor gives, in ``every`` and lossless ``on_change`` modes, the rows and counters
    cantools gives for ``frames``."""
    want = reference(loaded.db, frames)
    event(f"frames decoded: {'some' if want.decoded else 'none'}")
    for reason in want.skipped:
        event(f"frames skipped: {reason}")
    if any(loaded.db.get_message_by_name(name).is_multiplexed() for name, _ in want.rows):
        event("frames decoded: multiplexed")
    for mode in ("every", "on_change"):
        rows, stats = run(loaded, frames, mode, False)
        decode = stats.decode
        assert stats.frames == len(frames)
        assert decode.lost == 0 and stats.lost_rows == 0, decode.lost_reasons
        assert (decode.decoded, decode.repeated) == (want.decoded, want.repeated), mode
        assert decode.skipped == dict(want.skipped), mode
        assert decode.decoded + decode.repeated + sum(decode.skipped.values()) == len(frames)
        expected: dict[tuple[str, Any, str], list[Row]] = {
            (name, None, signal): values if mode == "every" else on_change(values)
            for (name, signal), values in want.rows.items()
        }
        assert rows.keys() == expected.keys(), mode
        for key, values in expected.items():
            got = rows[key]
            assert len(got) == len(values), (mode, key, got, values)
            for w, g in zip(values, got, strict=True):
                assert w[0] == g[0] and same(w[1], g[1]) and w[2] == g[2], (mode, key, w, g)


@properties(120)
@given(generated=databases(), data=st.data())
def test_processing_stage_equals_cantools(generated: Generated, data: st.DataObject) -> None:
    """The Processor over generated frames, in ``every`` and lossless ``on_change`` modes (read
    back from its payloads): every row is cantools' ``decode`` of its frame (physical value of
    the same type, choice, time), frames cantools refuses are skipped and counted by reason
    (short, undecodable, unknown ID, error, remote, a message without signals), repeated
    payloads counted as such, ``frames = decoded + repeated + skipped``, nothing lost."""
    note(generated.text)
    with tempfile.TemporaryDirectory() as folder:
        loaded = written(generated, folder)
        frames = data.draw(frame_lists(loaded.db))
        note("\n".join(map(str, frames)))
        summary(loaded.db)
        check_stage(loaded, frames)


# --- 2. the campaign engine's readers ----------------------------------------------------------


def oversized(message: Message) -> bool:
    """Whether a layout of cantools' codec tree of ``message`` is longer than the frame (signals
    of one byte order overlapping, or beyond the frame): cantools refuses ("unpacking failed")
    every frame that reaches it."""
    bits = 8 * message.length

    def walk(node: dict[str, Any]) -> bool:
        formats = node["formats"]
        if max(formats.big_endian.calcsize(), formats.little_endian.calcsize()) > bits:
            return True
        return any(walk(c) for cs in node["multiplexers"].values() for c in cs.values())

    codecs = message._codecs
    assert codecs is not None
    return walk(cast(dict[str, Any], codecs))


def sibling_multiplexers(tree: Sequence[Any]) -> bool:
    """Whether a level of a signal tree has more than one multiplexer."""
    muxes = [node for node in tree if isinstance(node, dict)]
    return len(muxes) > 1 or any(
        sibling_multiplexers(child)
        for node in muxes
        for children in node.values()
        for child in children.values()
    )


def read_outcome(read: Callable[[Any], Any], data: bytes) -> Any:
    try:
        return read(bytearray(data))  # frames carry bytearrays
    except _Undefined:
        return REFUSED


@properties(200)
@given(generated=databases(), source=st.sampled_from(("dbc", "objects")), data=st.data())
def test_campaign_readers_equal_cantools(
    generated: Generated, source: str, data: st.DataObject
) -> None:
    """``_Decoding(message)``: ``values`` gives cantools' raw values of a frame of any length
    and refuses (DecodeError) what cantools refuses; ``one`` (messages that are not
    multiplexed: None for the others) reads a signal's raw value as cantools does, by the
    signal's :data:`IntegerLayout` when it gives one; ``multiplexed`` (None for messages with a
    tuple layout) reads cantools' raw value, None where the frame's multiplexers leave the
    signal out, and refuses (``_Undefined``) exactly the frames cantools refuses. Both readers
    exist for every integer signal of a message cantools would load strictly."""
    note(generated.text)
    db = load(generated) if source == "dbc" else build(generated)
    summary(db)
    for message in db.messages:
        loadable = strictly_loadable(message)
        decoding = _Decoding(message)
        exact = data.draw(st.lists(payloads(message), min_size=1, max_size=10))
        others = [
            data.draw(payloads(message, n))
            for n in data.draw(st.lists(st.sampled_from(LENGTHS), max_size=3))
        ]
        wanted = [expect(message, payload) for payload in exact]
        for payload in exact + others:
            want = expect(message, payload)
            got = outcome(decoding.values, bytearray(payload))
            assert agrees(got, want), (message.name, payload.hex(), got, want)
        multiplexers = [s for s in message.signals if s.is_multiplexer]
        decoded = decoded_names(message.signal_tree)
        for signal in message.signals:
            name = signal.name
            # Readers are promised where cantools decodes the signal, in a strict database:
            # one that is never decoded reads as never there (one: None; multiplexed: None)
            promised = loadable and name in decoded
            values = [REFUSED if w is REFUSED else w.get(name) for w in wanted]
            one = decoding.one(message, name)
            if decoding.unpack is None:
                assert one is None, name
            else:
                assert one is not None or not promised, name
                assert REFUSED not in values  # a tuple layout: cantools decodes every payload
            if one is not None:
                read, layout = one
                if layout is not None:
                    assert layout == _integer_layout(signal, message.length)
                    assert [_integer_reader(layout)(p) for p in exact] == values, name
                got = [read_outcome(read, p) for p in exact]
                assert all(map(same, got, values)), (name, got, values)
            reader = decoding.multiplexed(message, name)
            if decoding.unpack is not None:
                assert reader is None, name
            elif promised and not any(s.is_float for s in (signal, *multiplexers)):
                assert reader is not None, name
            if reader is None:
                continue
            event("multiplexed reader")
            for p, w in zip(exact, values, strict=True):
                g = read_outcome(reader, p)
                assert g is w or same(g, w), (name, p.hex(), g, w)


# --- 3. the fused path against the plain steps ---------------------------------------------------


def nan_after_nan(db: Database, frames: Sequence[can.Message]) -> bool:
    """Whether a frame of ``frames`` is decoded with a float signal NaN after the previous
    frame of its message decoded with it NaN, from another payload."""
    last: dict[int, tuple[bytes, dict[str, Any]]] = {}
    for msg in frames:
        if msg.is_error_frame or msg.is_remote_frame:
            continue
        try:
            message = db.get_message_by_frame_id(
                msg.arbitration_id, force_extended_id=msg.is_extended_id
            )
        except KeyError:
            continue
        data = bytes(msg.data)
        values = expect(message, data)
        if values is REFUSED or last.get(id(message), (None,))[0] == data:
            continue
        if id(message) in last:
            before = last[id(message)][1]
            for name, value in values.items():
                old = before.get(name)
                nan = isinstance(value, float) and math.isnan(value)
                if nan and isinstance(old, float) and math.isnan(old):
                    return True
        last[id(message)] = data, values
    return False


SETTINGS: dict[str, dict[str, Any]] = {
    "default": {},
    "every": {"signals": {"mode": "every", "heartbeat": 0}},
    "heartbeats": {"signals": {"heartbeat": 0.004}},
    "some-signals": {"signals": {"exclude": ["*.S1", "*.S4", "*.MUX"]}},
    "deadband": {"signals": {"rules": [{"match": ["*.S0"], "mode": "on_change", "deadband": 2}]}},
    "rate-limited": {
        "signals": {"rules": [{"match": ["*"], "mode": "min_interval", "interval": 0.003}]}
    },
    "small-batches": {"batch": {"max_bytes": 4096, "max_age": 0.05}},
}


@properties(120)
@given(
    generated=databases(),
    setting=st.sampled_from(sorted(SETTINGS)),
    step=st.sampled_from((0.001, 0.0005, 0.02)),
    chunk=st.integers(1, 50),
    data=st.data(),
)
def test_fused_path_equals_plain_steps(
    generated: Generated, setting: str, step: float, chunk: int, data: st.DataObject
) -> None:
    """The Processor's hot loop and the plain steps (``_process_one`` for every frame) give the
    same rows (value, type, choice, time) and the same counters, whatever the chunks."""
    note(generated.text)
    with tempfile.TemporaryDirectory() as folder:
        loaded = written(generated, folder)
        frames = data.draw(frame_lists(loaded.db, step=step))
        note("\n".join(map(str, frames)))
        config = {
            "vehicle_id": "generated",
            "buses": [
                {
                    "name": "can0",
                    "dbc": [str(loaded.path)],
                    "strict": loaded.strict,
                    "kernel_filters": False,
                }
            ],
            **SETTINGS[setting],
        }
        fused, plain = fused_and_plain(config, frames, chunk)
    (fast_rows, fast_counters), (plain_rows, plain_counters) = fused, plain
    event(f"rows: {'some' if plain_rows else 'none'}")
    if nan_after_nan(loaded.db, frames):
        event("NaN after NaN")  # once a row of its own (test_nan_after_nan_adds_no_empty_row)
    assert fast_counters == plain_counters
    assert fast_counters[1].lost == 0
    assert fast_rows.keys() == plain_rows.keys()
    for key, plain in plain_rows.items():
        fast = fast_rows[key]
        assert len(fast) == len(plain), key
        for f, p in zip(fast, plain, strict=True):
            assert f[0] == p[0] and same(f[1], p[1]) and f[2] == p[2], (key, f, p)


# --- discrepancies found, minimal ----------------------------------------------------------------


def dbc(body: str) -> str:
    return f'VERSION ""\n\nNS_ :\n\nBS_:\n\nBU_: N\n\n{body}'


def frame(t: float, frame_id: int, data: bytes) -> can.Message:
    return can.Message(
        timestamp=t, arbitration_id=frame_id, is_extended_id=False, data=data, channel="can0"
    )


def processed(text: str, frames: list[can.Message], cls: type[Processor]) -> Processor:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "minimal.dbc"
        path.write_text(text)
        config = {
            "vehicle_id": "minimal",
            "buses": [{"name": "can0", "dbc": [str(path)], "kernel_filters": False}],
        }
        processor = cls(parse_config(config), Collector())
        processor.process(frames)
        processor.flush()
        return processor


def test_integral_float_scale_with_choices_keeps_cantools_integers() -> None:
    """``(2.0,0)`` on an integer signal with a value table: cantools decodes 0x03 as the int 6
    (``signal.scale`` says 2.0, but NamedSignalConversion delegates to
    ``BaseConversion.factory(2.0, 0)``, a LinearIntegerConversion); the processing stage sends
    6.0 (``SignalInfo.physical``: ``raw * 2.0 + 0``). The same signal without the ``VAL_`` line
    is an int in both. Also ``(1.0,5.0)``, ``(2,0.0)``: any integral scale and offset, one
    written as a float, not 1 and 0."""
    text = dbc('BO_ 1 M: 1 N\n SG_ B : 0|8@1+ (2.0,0) [0|0] "" N\n\nVAL_ 1 B 1 "one" ;\n')
    db = loads(text, strict=True)
    assert db.messages[0].decode(b"\x03", decode_choices=False) == {"B": 6}
    with tempfile.TemporaryDirectory() as folder:
        generated = Path(folder) / "minimal.dbc"
        generated.write_text(text)
        check_stage(Loaded(generated, db, True), [frame(START, 1, b"\x03")])


def test_nan_after_nan_adds_no_empty_row() -> None:
    """A float signal NaN in two frames with different payloads (here its NaN bits differ; in
    general any bit beside it: a gap, an excluded signal): no change in lossless on_change
    mode. The plain steps keep one row; the fused path (Processor.process) appends a pending
    row (``selected == sampler.last_raw`` is False: two NaN objects), which
    ``TrackSampler.settle`` fills with no value: the batch gets a second row time (1001) with
    nothing in it and ``rows`` is 2 (``samples`` is 1 on both paths; the values read back are
    the same)."""
    text = dbc('BO_ 1 M: 4 N\n SG_ F : 0|32@1+ (1,0) [0|0] "" N\n\nSIG_VALTYPE_ 1 F : 1;\n')
    frames = [frame(START, 1, b"\xff\xff\xff\xff"), frame(START + STEP, 1, b"\x00\xff\xff\xff")]
    plain = processed(text, frames, PlainProcessor)
    fused = processed(text, frames, Processor)
    assert (plain.stats().samples, plain.stats().rows) == (1, 1)
    assert (fused.stats().samples, fused.stats().rows) == (1, 1)


def test_multiplexed_reader_refuses_unpackable_frames() -> None:
    """A non-strict database whose message cantools never decodes (A and B overlap: its
    little-endian layout is 9 bits in an 8-bit frame, "unpacking failed"), with two
    multiplexers at the root, each with one value (from its value table). The probes reach
    MUX=0 or SUB=1, never both; on 0x08 (MUX=0, SUB=1) ``_Decoding.multiplexed`` reads MUX=0,
    SUB=1, A=0 where cantools refuses the frame (and the processing stage counts it
    ``decode_error``): a condition on them would see values from frames nothing decodes."""
    text = dbc(
        "BO_ 1 M: 1 N\n"
        ' SG_ A : 0|1@1+ (1,0) [0|0] "" N\n'
        ' SG_ B : 0|1@1+ (1,0) [0|0] "" N\n'
        ' SG_ MUX M : 1|2@1+ (1,0) [0|0] "" N\n'
        ' SG_ SUB M : 3|2@1+ (1,0) [0|0] "" N\n\n'
        'VAL_ 1 MUX 0 "x" ;\n'
        'VAL_ 1 SUB 1 "y" ;\n'
    )
    message = loads(text, strict=False).messages[0]
    assert expect(message, b"\x08") is REFUSED
    decoding = _Decoding(message)
    for name in ("MUX", "SUB", "A"):
        reader = decoding.multiplexed(message, name)
        assert reader is None or read_outcome(reader, b"\x08") is REFUSED, name
