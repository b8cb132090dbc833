"""The project's exception tree.

Exceptions of the libraries underneath (python-can, cantools, SQLite, paho-mqtt, azure-iot-device)
are translated at the boundary into these classes with ``raise ... from exc``; retry logic only
ever looks at our own classes.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DatabaseLoadError",
    "PayloadError",
    "PermanentUplinkError",
    "RejectedPayloadError",
    "SchemaMissingError",
    "SpoolError",
    "TelemetryError",
    "TransientUplinkError",
    "UplinkError",
]


class TelemetryError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(TelemetryError):
    """A configuration value is invalid. ``field`` is its dotted path, e.g. ``buses[0].dbc``."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}" if field else reason)
        self.field = field
        self.reason = reason


class DatabaseLoadError(TelemetryError):
    """A CAN database (DBC, ARXML, KCD, SYM) could not be loaded."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"cannot load CAN database {path}: {reason}")
        self.path = path
        self.reason = reason


class PayloadError(TelemetryError):
    """A payload given to the decoder is malformed, truncated or of an unknown version."""


class SchemaMissingError(PayloadError):
    """A data payload refers to a schema id the decoder has not seen."""

    def __init__(self, schema_id: str) -> None:
        super().__init__(f"schema {schema_id} is unknown: decode its schema payload first")
        self.schema_id = schema_id


class SpoolError(TelemetryError):
    """The local spool cannot be used (and could not be recovered)."""


class UplinkError(TelemetryError):
    """Sending a payload to the cloud failed."""


class TransientUplinkError(UplinkError):
    """A failure that may go away by itself: offline, timeout, broker restarting. Retried."""


class PermanentUplinkError(UplinkError):
    """A failure retrying will not fix: payload rejected, bad credentials. Reported, not retried
    blindly."""


class RejectedPayloadError(PermanentUplinkError):
    """The destination refused *this payload* (too large, unroutable) while the uplink itself
    works: the payload is moved to the spool's dead letters and the stream goes on."""
