"""What to install when a command needs a library this install left out.

The package has three installs (pyproject.toml): the base (the wire format: ``decode``), the
``edge`` extra (the in-vehicle stack: ``run``, ``demo``, ``simulate``, ``dbc``, ``module``) and
the ``lake`` extra (the cloud half: ``lake``, ``plot``). Commands import their libraries when they
run, so a missing one surfaces as :class:`ModuleNotFoundError` from wherever it is first
imported; :func:`missing_dependency` turns that into one line saying exactly what to install,
instead of a traceback.
"""

from __future__ import annotations

import argparse

__all__ = ["EXTRAS", "MissingDependencyError", "command_name", "missing_dependency"]

#: Top-level import name -> (the distribution pip installs, the extra that brings it).
EXTRAS: dict[str, tuple[str, str]] = {
    "can": ("python-can", "edge"),
    "cantools": ("cantools", "edge"),
    "tenacity": ("tenacity", "edge"),
    "paho": ("paho-mqtt", "edge"),
    "azure": ("azure-iot-device", "edge"),
    "prometheus_client": ("prometheus-client", "edge"),
    "tqdm": ("tqdm", "edge"),
    "isotp": ("can-isotp", "edge"),
    "udsoncan": ("udsoncan", "edge"),
    "pint": ("pint", "edge"),
    "pyarrow": ("pyarrow", "lake"),
    "fastavro": ("fastavro", "lake"),
    "pyspark": ("pyspark", "lake"),
    "duckdb": ("duckdb", "lake"),
    "matplotlib": ("matplotlib", "lake"),
    "vss_tools": ("vss-tools", "vss"),
    "yaml": ("vss-tools", "vss"),  # PyYAML comes with vss-tools
}


class MissingDependencyError(Exception):
    """A command needs a library of an extra this install does not have."""

    def __init__(self, command: str, distribution: str, extra: str) -> None:
        self.command, self.distribution, self.extra = command, distribution, extra
        super().__init__(
            f"can-telemetry {command} needs {distribution}: pip install 'can-telemetry[{extra}]'"
        )


def missing_dependency(exc: ModuleNotFoundError, command: str) -> MissingDependencyError | None:
    """The error to report for ``exc`` raised while ``command`` ran, or None when the missing
    module is none of the extras' libraries (a bug or a broken install: keep the traceback)."""
    top = (exc.name or "").partition(".")[0]
    if top not in EXTRAS:
        return None
    distribution, extra = EXTRAS[top]
    return MissingDependencyError(command, distribution, extra)


def command_name(args: argparse.Namespace) -> str:
    """The command as typed, for messages: ``run``, ``lake ingest``."""
    words = (getattr(args, "command", None), getattr(args, "lake_command", None))
    return " ".join(word for word in words if word)
