"""The uplink interface: one method to implement.

An uplink takes one payload and either returns once the far side has *confirmed* it (edgeHub /
IoT Hub acknowledged the message, the MQTT broker sent PUBACK, the file is renamed into place),
or raises :class:`~edge.errors.TransientUplinkError` (try again later) or
:class:`~edge.errors.PermanentUplinkError` (this payload or these credentials will never work).
It must never block longer than ``timeout`` seconds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Any

from edge.wire.payload import Payload

__all__ = ["Uplink"]


class Uplink(ABC):
    """Sends payloads to one destination."""

    #: Registry name, e.g. ``"file"``, ``"mqtt"``, ``"azure-edge"``.
    kind: str = ""

    @classmethod
    def parse_options(cls, table: Mapping[str, object], field: str) -> Any:
        """Validate this uplink's ``[uplink]`` table (without ``type``) into its frozen options
        object, raising ConfigError naming ``{field}.{key}``. Called once, at configuration
        load, so a bad option stops start-up instead of the first send."""
        raise NotImplementedError(f"{cls.__name__} does not define parse_options")

    @classmethod
    def from_options(cls, options: Any) -> Uplink:
        """Build the uplink from its parsed options; cheap, no network I/O."""
        raise NotImplementedError(f"{cls.__name__} does not define from_options")

    @abstractmethod
    def send(self, payload: Payload, timeout: float) -> None:
        """Deliver ``payload`` and return only after the destination confirmed it.

        Raises TransientUplinkError or PermanentUplinkError; never blocks past ``timeout``.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Default: nothing to do."""
