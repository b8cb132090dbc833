"""What diagnostics add to the stream: DTC events, the VIN and DID values, as
:class:`DiagRecord` objects, and their wire form in a data payload's envelope ``ext`` map
(key ``diag``, docs/format.md).

Each record travels as an array::

    [time, bus, ecu, kind, name, value, text, first_seen | nil, source | nil]

``time`` and ``first_seen`` are integer ticks of the envelope's ``res`` relative to its ``t0``;
``kind`` is ``dtc``, ``vin`` or ``did``. The diagnostics stage (edge/diagnostics/) makes the
records; the codec's reader turns them back into rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["EXT_KEY", "KINDS", "DiagRecord", "records_from_wire", "records_to_wire"]

#: The key of the envelope's ``ext`` map that carries diagnostics records.
EXT_KEY = "diag"
KINDS = ("dtc", "vin", "did")


@dataclass(frozen=True, slots=True)
class DiagRecord:
    """One diagnostic fact.

    * ``dtc``: ``name`` is the DTC's text (``P0301``, ``U0100-1A``, ``SPN 190 FMI 2``),
      ``value`` its UDS status byte (J1939: occurrence count), ``text`` the event:
      ``appeared``, ``changed`` (status bits) or ``cleared``; ``first_seen`` when it appeared.
    * ``vin``: ``name`` is ``VIN``, ``text`` the VIN, ``value`` 0.
    * ``did``: ``name`` the DID's configured name, ``text`` its value as text (ASCII or hex),
      ``value`` its unsigned integer value for ``uint`` DIDs, else its length in bytes.
    """

    time: float
    bus: str
    ecu: str
    kind: str
    name: str
    value: int
    text: str
    first_seen: float | None = None
    source: int | None = None


def records_to_wire(records: Sequence[DiagRecord], t0: int, res_ns: int) -> list[list[Any]]:
    """The ``ext["diag"]`` list for ``records`` in a payload whose envelope has ``t0``/``res``."""
    per_second = 1e9 / res_ns

    def tick(t: float) -> int:
        return round(t * per_second) - t0

    return [
        [
            tick(r.time),
            r.bus,
            r.ecu,
            r.kind,
            r.name,
            r.value,
            r.text,
            None if r.first_seen is None else tick(r.first_seen),
            r.source,
        ]
        for r in records
    ]


def records_from_wire(items: object, t0: int, res_ns: int) -> list[DiagRecord]:
    """Records back from an ``ext["diag"]`` list. Raises ValueError for a malformed one."""
    if not isinstance(items, list):
        raise ValueError("ext.diag is not a list")
    out = []
    for item in items:
        if not isinstance(item, list) or len(item) < 9:
            raise ValueError("ext.diag record is not an array of 9 elements")
        dt, bus, ecu, kind, name, value, text, first, source = item[:9]
        if type(dt) is not int or (first is not None and type(first) is not int):
            raise ValueError("ext.diag record time is not an integer")
        if not all(type(s) is str for s in (bus, ecu, kind, name, text)):
            raise ValueError("ext.diag record bus/ecu/kind/name/text is not a string")
        if type(value) is not int or (source is not None and type(source) is not int):
            raise ValueError("ext.diag record value/source is not an integer")
        out.append(
            DiagRecord(
                time=(t0 + dt) * res_ns / 1e9,
                bus=bus,
                ecu=ecu,
                kind=kind,
                name=name,
                value=value,
                text=text,
                first_seen=None if first is None else (t0 + first) * res_ns / 1e9,
                source=source,
            )
        )
    return out
