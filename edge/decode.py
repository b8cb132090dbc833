"""CAN frame -> raw signal values, with cantools.

A :class:`Track` is one message of one bus (and, on J1939 buses, of one source address): the
decoder finds it by frame ID, decodes the payload to *raw* values (no scaling, no choice names:
the cloud applies scale and offset from the schema, so nothing is lost to float rounding) and
remembers the last payload, so a frame that repeats its predecessor (most CAN frames do) is not
decoded again.

Frames that cannot be decoded are counted by reason and skipped; the stream never stops for a bad
frame. Reasons: ``error_frame``, ``remote_frame``, ``unknown_id`` (not in the database),
``not_selected`` (no signal of it is kept), ``short_frame``, ``decode_error`` (e.g. a multiplexer
value the database does not define), ``unknown_bus``.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import can
from cantools.database.can import Database, Message
from cantools.database.errors import DecodeError

from edge.sample import Policy, Selection, TrackSampler
from edge.schema import MessageInfo, Schema

__all__ = ["BusDecoder", "DecodeStats", "Decoder", "Track"]

log = logging.getLogger(__name__)

def pgn_from_frame_id(frame_id: int) -> int:
    """The J1939 parameter group number of a 29-bit frame ID: extended data page, data page, PDU
    format, and PDU specific only when it is a group extension (PDU2, format >= 240)."""
    pdu_format = (frame_id >> 16) & 0xFF
    pdu_specific = (frame_id >> 8) & 0xFF if pdu_format >= 240 else 0
    return (frame_id >> 8) & 0x30000 | pdu_format << 8 | pdu_specific


_EXTENDED = 1 << 29  # key bit that keeps 11-bit and 29-bit IDs with the same number apart
_J1939_PGN_MASK = 0x3FFFF00


class Track:
    """One message as seen on one bus (and one J1939 source address)."""

    __slots__ = (
        "decode",
        "length",
        "message_index",
        "payload",
        "repeated",
        "sampler",
        "source_address",
        "values",
    )

    def __init__(
        self,
        message: Message,
        message_index: int,
        sampler: TrackSampler,
        source_address: int | None,
    ) -> None:
        self.decode: Any = message.decode
        self.length: int = message.length
        self.message_index = message_index
        self.sampler = sampler
        self.source_address = source_address
        self.payload: bytes | bytearray | None = None
        self.repeated = False
        self.values: dict[str, Any] = {}


@dataclass(frozen=True, slots=True)
class DecodeStats:
    """Counters since start."""

    frames: int
    decoded: int
    repeated: int
    skipped: Mapping[str, int] = field(default_factory=dict)


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
    ) -> None:
        self.name = name
        self._db = database
        self._j1939 = j1939
        self._selection = selection
        self._tracks: dict[int, Track | None] = {}
        self._skipped_reason: dict[int, str] = {}
        # Schema index of each selected message of this bus, by cantools message.
        self._selected: dict[int, tuple[int, MessageInfo]] = {}
        by_name = {m.name: m for m in database.messages}
        for index, info in enumerate(schema.messages):
            if info.bus == bus_index:
                self._selected[id(by_name[info.name])] = (index, info)
        self._by_pgn: dict[int, Message] = {}
        if j1939:
            for message in database.messages:
                if message.is_extended_frame:
                    self._by_pgn.setdefault(pgn_from_frame_id(message.frame_id), message)

    def frame_ids(self) -> list[tuple[int, int, bool]]:
        """Kernel filters for the selected messages: ``(can_id, can_mask, extended)``. On J1939
        buses the mask keeps the PGN and ignores priority and source address."""
        filters = []
        by_name = {m.name: m for m in self._db.messages}
        for _, info in self._selected.values():
            message = by_name[info.name]
            if info.j1939:
                filters.append((message.frame_id & _J1939_PGN_MASK, _J1939_PGN_MASK, True))
            else:
                mask = 0x1FFFFFFF if info.is_extended else 0x7FF
                filters.append((message.frame_id, mask, info.is_extended))
        return filters

    def track(self, arbitration_id: int, extended: bool) -> Track | None:
        """The track of a frame ID (created on first sight), or None (reason recorded)."""
        key = arbitration_id | _EXTENDED if extended else arbitration_id
        if key in self._tracks:
            return self._tracks[key]
        message: Message | None = None
        source_address: int | None = None
        try:
            message = self._db.get_message_by_frame_id(arbitration_id)
            if bool(message.is_extended_frame) != extended:
                message = None
        except KeyError:
            pass
        if message is None and extended and self._j1939:
            message = self._by_pgn.get(pgn_from_frame_id(arbitration_id))
        if message is not None and self._j1939 and extended:
            source_address = arbitration_id & 0xFF
        track: Track | None = None
        if message is None:
            self._skipped_reason[key] = "unknown_id"
        elif id(message) not in self._selected:
            self._skipped_reason[key] = "not_selected"
        else:
            index, info = self._selected[id(message)]
            policies: list[Policy] = []
            for signal_info in info.signals:
                policy = self._selection.policy(
                    self.name, message, message.get_signal_by_name(signal_info.name)
                )
                assert policy is not None  # the schema holds selected signals only
                policies.append(policy)
            track = Track(message, index, TrackSampler(info, policies), source_address)
        self._tracks[key] = track
        return track

    def skip_reason(self, arbitration_id: int, extended: bool) -> str:
        """Why frames with this ID are skipped."""
        key = arbitration_id | _EXTENDED if extended else arbitration_id
        return self._skipped_reason.get(key, "unknown_id")


class Decoder:
    """Decodes frames of every configured bus. Sources set ``msg.channel`` to the bus name."""

    def __init__(self, buses: Sequence[BusDecoder]) -> None:
        self._buses = {b.name: b for b in buses}
        self.frames = 0
        self.decoded = 0
        self.repeated = 0
        self.skipped: Counter[str] = Counter()

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
            self.skipped[bus.skip_reason(msg.arbitration_id, msg.is_extended_id)] += 1
            return None
        data = msg.data
        if data == track.payload:
            self.repeated += 1
            track.repeated = True
            return track
        if len(data) < track.length:
            self.skipped["short_frame"] += 1
            return None
        try:
            track.values = track.decode(data, False, False)
        except DecodeError:
            self.skipped["decode_error"] += 1
            return None
        track.payload = bytes(data)
        track.repeated = False
        self.decoded += 1
        return track

    def stats(self) -> DecodeStats:
        """A snapshot of the counters."""
        return DecodeStats(self.frames, self.decoded, self.repeated, dict(self.skipped))
