"""The project's exception tree.

Exceptions of the libraries underneath (python-can, cantools, SQLite, paho-mqtt, azure-iot-device)
are translated at the boundary into these classes with ``raise ... from exc``; retry logic only
ever looks at our own classes.
"""

from __future__ import annotations

import logging
import re

__all__ = [
    "ConfigError",
    "DatabaseLoadError",
    "PayloadError",
    "PermanentUplinkError",
    "RejectedPayloadError",
    "SchemaMissingError",
    "SecretsFilter",
    "SpoolError",
    "TelemetryError",
    "TransientUplinkError",
    "UplinkError",
    "scrub_secrets",
]

#: Values of secret keys in connection strings, SAS tokens and URLs, and base64 keys ending in
#: "=" (a pasted shared access key), wherever they appear in a message.
_SECRETS = re.compile(
    r"(?i)\b(SharedAccessKey|SharedAccessSignature|sig|password|passwd|sas_token)(\s*[=:]\s*)"
    r"[^;&\s'\",}]+"
    r"|SharedAccessSignature\s+[^\s'\",}]+"
    r"|[A-Za-z0-9+/]{16,}={1,2}(?![A-Za-z0-9+/=])"
)


def scrub_secrets(text: str) -> str:
    """``text`` with shared access keys, signatures and passwords replaced by ``***``.

    Applied to what leaves the process as text (log lines, reported errors), as a second line
    of defence: messages are written not to quote secrets in the first place.
    """
    return _SECRETS.sub(lambda m: f"{m[1]}{m[2]}***" if m[1] else "***", text)


class SecretsFilter(logging.Filter):
    """A logging filter (for handlers) that passes every record with its secrets scrubbed."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Render the message (and traceback) now, scrubbed; always keep the record."""
        record.msg, record.args = scrub_secrets(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub_secrets(record.exc_text)
        return True


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
