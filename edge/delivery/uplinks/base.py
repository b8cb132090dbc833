"""The uplink interface: one method to implement, and options declared once.

An uplink takes one payload and either returns once the far side has *confirmed* it (edgeHub /
IoT Hub acknowledged the message, the MQTT broker sent PUBACK, the file is renamed into place),
or raises :class:`~edge.errors.TransientUplinkError` (try again later) or
:class:`~edge.errors.PermanentUplinkError` (this payload or these credentials will never work).
It must never block longer than ``timeout`` seconds.

Its settings are its ``Options`` class: a frozen dataclass deriving from
:class:`~edge.config.uplinks.UplinkOptions` whose fields, types and defaults *are* the options
of its ``[uplink]`` table (:mod:`edge.config.uplinks`, where the built-in uplinks' options are
declared, so that the configuration reads them without importing this stage).
:meth:`Uplink.parse_options` and :meth:`Uplink.from_options` use it. ``Rule`` and
``UplinkOptions`` are importable from here too, for uplinks other packages write.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, cast

from edge.config.uplinks import Rule, UplinkOptions
from edge.errors import ConfigError
from edge.wire.payload import Payload

__all__ = ["Rule", "Uplink", "UplinkOptions"]


class Uplink(ABC):
    """Sends payloads to one destination."""

    #: Registry name, e.g. ``"file"``, ``"mqtt"``, ``"azure-edge"``.
    kind: ClassVar[str] = ""
    #: Its options: a frozen dataclass deriving from :class:`UplinkOptions`.
    Options: ClassVar[type[UplinkOptions]]

    @classmethod
    def parse_options(cls, table: Mapping[str, object], field: str) -> Any:
        """Validate this uplink's ``[uplink]`` table (without ``type``) into its ``Options``
        (:meth:`UplinkOptions.parse`), raising ConfigError naming ``{field}.{key}``; an uplink
        that declares no ``Options`` is a ConfigError on ``{field}.type``."""
        options_class: type[UplinkOptions] | None = getattr(cls, "Options", None)
        if options_class is None:
            raise ConfigError(
                f"{field}.type", f"uplink {cls.kind!r} ({cls.__qualname__}) declares no Options"
            )
        return options_class.parse(table, field)

    @classmethod
    def from_options(cls, options: Any) -> Uplink:
        """Build the uplink from its parsed options; cheap, no network I/O. Default:
        ``cls(options)``, for an uplink whose constructor takes its Options."""
        return cast(Callable[[Any], Uplink], cls)(options)

    @abstractmethod
    def send(self, payload: Payload, timeout: float) -> None:
        """Deliver ``payload`` and return only after the destination confirmed it.

        Raises TransientUplinkError or PermanentUplinkError; never blocks past ``timeout``.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections. Default: nothing to do."""
