"""The unit that travels from the batcher through the spool to an uplink."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = ["CONTENT_TYPE", "Payload"]

#: MIME type of every payload body (msgpack, possibly compressed; see docs/format.md).
CONTENT_TYPE = "application/vnd.can-telemetry+msgpack"


@dataclass(frozen=True, slots=True)
class Payload:
    """One encoded message, ready to be spooled and sent.

    ``body`` is the exact bytes of docs/format.md. ``properties`` are small string metadata that
    uplinks send next to the body (IoT Hub application properties, MQTT topic/user properties) so
    cloud routing works without opening the binary body: ``kind`` (``data`` or ``schema``),
    ``stream``, ``seq``, ``schema``, ``vehicle``, ``compression``, ``format``.
    """

    body: bytes
    properties: Mapping[str, str] = field(default_factory=dict)

    @property
    def message_id(self) -> str:
        """A globally unique, stable id: ``{stream}:{seq}`` (for duplicate detection)."""
        return f"{self.properties.get('stream', '')}:{self.properties.get('seq', '')}"

    @property
    def content_type(self) -> str:
        """MIME type of ``body``."""
        return CONTENT_TYPE
