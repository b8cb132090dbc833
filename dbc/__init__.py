"""CAN databases shipped with can-telemetry (installed as the ``edge.dbc`` package)."""
