"""The last-known state: the latest value of every decoded signal (the ``getSignals`` method).

Nothing is decoded for it while frames flow: the processing stage already keeps, per message
(and J1939 source address), the payload of its latest decoded frame and that frame's time, and
the campaign engine keeps the latest frame of the messages only campaigns use. Asked, this module
decodes those frames with cantools (physical values, as cantools gives them) and answers the
signals matching the globs, and the mapped VSS paths (through the mapping's transform).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cantools.database.can import Message as DbMessage

__all__ = ["LatestFrame", "latest_signals", "matcher"]


@dataclass(frozen=True, slots=True)
class LatestFrame:
    """The latest frame of one message on one bus (and J1939 source address)."""

    bus: str
    message: DbMessage
    data: bytes
    time: float
    source_address: int | None = None


def matcher(patterns: Sequence[str]) -> re.Pattern[str]:
    """One regular expression for globs (none: matches nothing)."""
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns) or r"(?!)")


def _physical(message: DbMessage, data: bytes) -> dict[str, Any]:
    """cantools' values of one frame (numbers: choices not decoded); raises for a bad frame."""
    values: Any = message.decode(data, decode_choices=False, scaling=True)
    return dict(values)


def _choice(signal: Any, value: Any) -> str | None:
    if not signal.choices:
        return None
    choice = signal.choices.get(round((float(value) - signal.offset) / signal.scale))
    return None if choice is None else str(choice)


def latest_signals(
    frames: Iterable[LatestFrame], globs: Iterable[str], vss: Any = None
) -> dict[str, dict[str, Any]]:
    """Latest value, unit, choice, time and bus of every signal matching ``globs``
    (``Message.Signal``), and of every mapped VSS path matching them (``vss``: an
    :class:`edge.vss.mapping.VssMapping`). Where several frames answer one name (J1939 source
    addresses, a message on two buses), the newest does."""
    match = matcher(list(globs))
    newest: dict[tuple[str, str], LatestFrame] = {}  # by (bus, message): for VSS links
    out: dict[str, dict[str, Any]] = {}
    ordered = sorted(frames, key=lambda f: f.time)  # newer answers overwrite older ones
    for frame in ordered:
        message = frame.message
        newest[(frame.bus, message.name)] = frame
        wanted = [s for s in message.signals if match.match(f"{message.name}.{s.name}")]
        if not wanted:
            continue
        try:
            values = _physical(message, frame.data)
        except Exception:  # a frame cantools refuses (its length, a multiplexer value)
            continue
        for signal in wanted:
            if signal.name not in values:
                continue
            value = values[signal.name]
            answer = {
                "value": value,
                "unit": signal.unit or "",
                "choice": _choice(signal, value),
                "time": frame.time,
                "bus": frame.bus,
            }
            if frame.source_address is not None:
                answer["sourceAddress"] = frame.source_address
            out[f"{message.name}.{signal.name}"] = answer
    if vss is not None:
        out.update(_vss_signals(newest, match, vss))
    return out


def _vss_signals(
    newest: dict[tuple[str, str], LatestFrame], match: re.Pattern[str], vss: Any
) -> dict[str, dict[str, Any]]:
    """The latest value of every mapped VSS path matching ``match``: its signal's latest frame
    through the mapping's transform (the newest, when several buses feed a path)."""
    out: dict[str, dict[str, Any]] = {}
    for path in vss.paths():
        if not match.match(path):
            continue
        for link in vss.resolve(path):
            frame = newest.get((link.bus, link.message))
            if frame is None or frame.time < out.get(path, {}).get("time", -1e300):
                continue
            try:
                physical = _physical(frame.message, frame.data)[link.signal]
            except Exception:  # a frame cantools refuses, a multiplexed signal absent
                continue
            signal = frame.message.get_signal_by_name(link.signal)
            value = link.transform.apply(physical, _choice(signal, physical))
            if value is None:
                continue
            out[path] = {
                "value": value,
                "unit": link.unit,
                "choice": value if isinstance(value, str) else None,
                "time": frame.time,
                "bus": frame.bus,
                "signal": f"{link.message}.{link.signal}",
            }
    return out
