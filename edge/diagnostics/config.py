"""The ``[diagnostics]`` configuration: :mod:`edge.config.diagnostics`, where the configuration
reads it (the configuration sits below the stages). Importable from here too, as before the
move."""

from edge.config.diagnostics import (
    DID_KINDS,
    DiagBusConfig,
    DiagnosticsConfig,
    DidConfig,
    J1939DiagConfig,
    ObdConfig,
    ObdPid,
    UdsEcuConfig,
    parse_diagnostics,
)

__all__ = [
    "DID_KINDS",
    "DiagBusConfig",
    "DiagnosticsConfig",
    "DidConfig",
    "J1939DiagConfig",
    "ObdConfig",
    "ObdPid",
    "UdsEcuConfig",
    "parse_diagnostics",
]
