"""can-telemetry: in-vehicle CAN telemetry for Azure IoT Edge.

CAN frames (python-can) -> DBC decode (cantools) -> signal selection and sampling -> columnar
batches (msgpack + zstd) -> durable SQLite spool -> edgeHub, IoT Hub or MQTT.

The public API is what ``__all__`` lists; every other module is an implementation detail.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError as _NotInstalled
from importlib.metadata import version as _version

from edge.config.model import Config, load_config, parse_config
from edge.errors import (
    ConfigError,
    DatabaseLoadError,
    PayloadError,
    PermanentUplinkError,
    RejectedPayloadError,
    SchemaMissingError,
    SpoolError,
    TelemetryError,
    TransientUplinkError,
    UplinkError,
)
from edge.wire.codec import PayloadDecoder, PayloadReader, Row
from edge.wire.payload import Payload

try:
    __version__ = _version("can-telemetry")
except _NotInstalled:  # running from a source tree without installation
    __version__ = "0.0.0+source"

__all__ = [
    "Config",
    "ConfigError",
    "DatabaseLoadError",
    "Payload",
    "PayloadDecoder",
    "PayloadError",
    "PayloadReader",
    "PermanentUplinkError",
    "RejectedPayloadError",
    "Row",
    "SchemaMissingError",
    "SpoolError",
    "TelemetryError",
    "TransientUplinkError",
    "UplinkError",
    "__version__",
    "load_config",
    "parse_config",
]
