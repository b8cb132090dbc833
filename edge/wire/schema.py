"""The signal schema: which messages and signals this module may send, and everything the cloud
needs to turn their raw values into physical values without the DBC (scale, offset, unit,
choices). Data payloads refer to messages and signals by their index in the schema, and to the
schema by its content hash (``schema_id``), so a batch carries no names at all.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgpack

from edge.errors import PayloadError

if TYPE_CHECKING:
    # Types only: importing cantools imports python-can, which the cloud side (edge.lake reads
    # schemas through edge.wire.codec) must not need.
    from cantools.database.can import Database, Message
    from cantools.database.can.signal import Signal

__all__ = ["MessageInfo", "Schema", "SignalInfo", "VssInfo", "build_schema"]

Number = int | float


@dataclass(frozen=True, slots=True)
class SignalInfo:
    """One signal: ``physical = raw * scale + offset`` unless scale is 1 and offset 0."""

    name: str
    scale: Number = 1
    offset: Number = 0
    unit: str = ""
    is_float: bool = False
    choices: Mapping[int, str] | None = None

    def physical(self, raw: Number) -> Number:
        """The physical value exactly as cantools computes it from the raw value."""
        if self.scale == 1 and self.offset == 0:
            return raw
        return raw * self.scale + self.offset

    def choice(self, raw: Number) -> str | None:
        """The choice name of a raw value, looked up as cantools looks it up: by the raw value
        as an integer (a float signal's value truncated; none for NaN and infinities)."""
        choices = self.choices
        if not choices:
            return None
        if type(raw) is float:
            if not math.isfinite(raw):
                return None
            return choices.get(int(raw))
        return choices.get(int(raw))

    def to_wire(self) -> list[Any]:
        """Compact form: ``[name, scale, offset, unit, is_float, choices]``."""
        choices = dict(self.choices) if self.choices else None
        return [self.name, self.scale, self.offset, self.unit, self.is_float, choices]

    @classmethod
    def from_wire(cls, item: Sequence[Any]) -> SignalInfo:
        """Inverse of :meth:`to_wire`."""
        name, scale, offset, unit, is_float, choices = item
        numbers = (int, float)
        if type(name) is not str or type(unit) is not str:
            raise TypeError("signal name and unit must be strings")
        if type(scale) not in numbers or type(offset) not in numbers:
            raise TypeError("signal scale and offset must be numbers")
        if choices is not None and not (
            isinstance(choices, dict)
            and all(type(k) is int and type(v) is str for k, v in choices.items())
        ):
            raise TypeError("signal choices must map integers to strings")
        return cls(name, scale, offset, unit, bool(is_float), choices or None)


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """One message of one bus, with its selected signals (the columns of its group)."""

    bus: int
    name: str
    frame_id: int
    is_extended: bool
    j1939: bool
    signals: tuple[SignalInfo, ...]

    def to_wire(self) -> list[Any]:
        """Compact form: ``[bus, name, frame_id, is_extended, j1939, [signal...]]``."""
        sigs = [s.to_wire() for s in self.signals]
        return [self.bus, self.name, self.frame_id, self.is_extended, self.j1939, sigs]

    @classmethod
    def from_wire(cls, item: Sequence[Any]) -> MessageInfo:
        """Inverse of :meth:`to_wire`."""
        bus, name, frame_id, is_extended, j1939, sigs = item
        if type(bus) is not int or type(name) is not str or type(frame_id) is not int:
            raise TypeError("message bus, name and frame id have the wrong types")
        signals = tuple(SignalInfo.from_wire(s) for s in sigs)
        return cls(int(bus), name, int(frame_id), bool(is_extended), bool(j1939), signals)


@dataclass(frozen=True, slots=True)
class VssInfo:
    """A VSS path fed by one series of the schema (edge/vss/): its value is ``transform``
    (a spec for :func:`edge.wire.transform.compile_spec`) of the series' physical value."""

    message: int
    signal: int
    path: str
    datatype: str
    unit: str = ""
    transform: Mapping[str, Any] = field(default_factory=dict)

    def to_wire(self) -> list[Any]:
        """Compact form: ``[message, signal, path, datatype, unit, transform]``."""
        transform = dict(self.transform)
        return [self.message, self.signal, self.path, self.datatype, self.unit, transform]

    @classmethod
    def from_wire(cls, item: Sequence[Any]) -> VssInfo:
        """Inverse of :meth:`to_wire` (elements after these are ignored: later additions)."""
        message, signal, path, datatype, unit, transform = item[:6]
        if type(message) is not int or type(signal) is not int:
            raise TypeError("VSS message and signal indexes must be integers")
        if not all(type(v) is str for v in (path, datatype, unit)):
            raise TypeError("VSS path, datatype and unit must be strings")
        if not isinstance(transform, dict):
            raise TypeError("VSS transform must be a map")
        return cls(message, signal, path, datatype, unit, transform)


@dataclass(frozen=True, slots=True)
class Schema:
    """The selected messages of every bus, in a fixed order. ``schema_id`` is the first 16 hex
    digits of the SHA-256 of the canonical wire form: equal content, equal id.

    ``vss`` (the VSS paths series feed) is not part of the body nor of the id: it travels in
    the schema payload's envelope ``ext``, where readers that do not know it never look
    (docs/format.md)."""

    buses: tuple[str, ...]
    messages: tuple[MessageInfo, ...]
    schema_id: str = field(init=False, compare=False)
    vss: tuple[VssInfo, ...] = ()

    def __post_init__(self) -> None:
        blob = msgpack.packb(self.to_wire(), use_bin_type=True)
        object.__setattr__(self, "schema_id", hashlib.sha256(blob).hexdigest()[:16])

    def to_wire(self) -> dict[str, Any]:
        """The body of a schema payload (docs/format.md)."""
        return {"buses": list(self.buses), "messages": [m.to_wire() for m in self.messages]}

    def to_stored(self) -> dict[str, Any]:
        """:meth:`to_wire` plus the VSS table under ``vss`` when there is one: what a store of
        schemas (the lake's ``schemas`` table) keeps; :meth:`from_wire` reads it back whole."""
        wire = self.to_wire()
        if self.vss:
            wire["vss"] = [v.to_wire() for v in self.vss]
        return wire

    @classmethod
    def from_wire(cls, body: Mapping[str, Any], vss: Sequence[Any] | None = None) -> Schema:
        """Parse a schema payload body (and its envelope's ``ext["vss"]``, if any; or a
        :meth:`to_stored` form); raises PayloadError when malformed."""
        try:
            buses = tuple(str(b) for b in body["buses"])
            messages = tuple(MessageInfo.from_wire(m) for m in body["messages"])
            if any(not 0 <= m.bus < len(buses) for m in messages):
                raise ValueError("message bus index out of range")
            if vss is None:
                vss = body.get("vss")
            links = tuple(VssInfo.from_wire(v) for v in vss or ())
            for link in links:
                if not 0 <= link.message < len(messages):
                    raise ValueError("VSS message index out of range")
                if not 0 <= link.signal < len(messages[link.message].signals):
                    raise ValueError("VSS signal index out of range")
            return cls(buses, messages, links)
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            text = f"{type(exc).__name__}: {exc}"[:120]
            raise PayloadError(f"malformed schema: {text}") from exc

    @property
    def signal_count(self) -> int:
        """Number of selected signals over all messages."""
        return sum(len(m.signals) for m in self.messages)


def signal_info(signal: Signal) -> SignalInfo:
    """The schema entry of a cantools signal."""
    choices = {int(k): str(v) for k, v in signal.choices.items()} if signal.choices else None
    scale, offset = signal.scale, signal.offset
    conversion = getattr(signal, "conversion", None)
    if not signal.is_float and conversion is not None:
        try:  # cantools computes in integers when scale and offset are whole, however written
            whole = type(conversion.raw_to_scaled(1, decode_choices=False)) is int
        except Exception:  # a conversion that does not take a raw 1: keep what it says
            whole = False
        if whole:
            scale, offset = int(scale), int(offset)
    return SignalInfo(
        name=signal.name,
        scale=scale,
        offset=offset,
        unit=signal.unit or "",
        is_float=bool(signal.is_float),
        choices=choices,
    )


#: ``select(bus_name, message, signal)`` is true when the signal is kept.
Selector = Callable[[str, "Message", "Signal"], bool]


def build_schema(
    buses: Sequence[tuple[str, Database, bool]],
    select: Selector,
) -> Schema:
    """The schema for ``(bus name, database, j1939)`` triples: every message with at least one
    selected signal, with those signals, in database order."""
    messages: list[MessageInfo] = []
    for bus_index, (bus_name, db, j1939) in enumerate(buses):
        for message in db.messages:
            chosen = tuple(signal_info(s) for s in message.signals if select(bus_name, message, s))
            if chosen:
                messages.append(
                    MessageInfo(
                        bus=bus_index,
                        name=message.name,
                        frame_id=message.frame_id,
                        is_extended=bool(message.is_extended_frame),
                        j1939=j1939 and bool(message.is_extended_frame),
                        signals=chosen,
                    )
                )
    return Schema(tuple(name for name, _, _ in buses), tuple(messages))
