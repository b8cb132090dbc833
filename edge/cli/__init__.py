"""The ``can-telemetry`` command. The only place that configures logging.

Each command is a module of this package (``run.py``, ``demo.py``, ...), as cantools'
``subparsers/`` are: its ``add_subparser(subparsers)`` adds the command's parser, whose ``func``
default is the command's ``_do_<command>(args)``, which returns the exit status. A command
imports what it needs when it runs, so ``--help`` and every other command start without it. This
module keeps what they share: the top-level parser, logging, and the exit status of each kind of
error.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from edge import __version__
from edge.cli import dbc, decode, demo, manifest, module, run, simulate
from edge.cli.requires import command_name, missing_dependency
from edge.cli.terminal import printable
from edge.errors import (
    ConfigError,
    DatabaseLoadError,
    PayloadError,
    SecretsFilter,
    TelemetryError,
    scrub_secrets,
)

__all__ = ["main"]

#: The commands, in the order ``--help`` lists them (``lake`` and ``plot`` follow: their code is
#: the lake's, edge/lake/commands.py).
_COMMANDS = (run, demo, simulate, dbc, decode, manifest, module)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``can-telemetry``; returns the exit status."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # A command that parses its own arguments (``module``) sets ``own_arguments``.
    if extra and not getattr(args, "own_arguments", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.module_args = extra
    logging.basicConfig(
        level=getattr(logging, args.log_level or "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(SecretsFilter())
    try:
        result: int = args.func(args)
        return result
    except (ConfigError, DatabaseLoadError) as exc:
        message = printable(scrub_secrets(str(exc)))
        print(f"can-telemetry: configuration error: {message}", file=sys.stderr)
        return 2
    except PayloadError as exc:
        print(f"can-telemetry: bad payload: {printable(str(exc))}", file=sys.stderr)
        return 3
    except TelemetryError as exc:
        print(f"can-telemetry: {printable(scrub_secrets(str(exc)))}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as exc:  # a library of an extra this install left out
        missing = missing_dependency(exc, command_name(args))
        if missing is None:
            raise
        print(missing, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="can-telemetry",
        description="In-vehicle CAN telemetry for Azure IoT Edge: CAN frames -> DBC decode -> "
        "signal selection -> compact batches -> durable spool -> cloud.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("CAN_TELEMETRY_LOG_LEVEL"),
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="log level (default: $CAN_TELEMETRY_LOG_LEVEL, then the config's log_level for "
        "run, WARNING otherwise)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command in _COMMANDS:
        command.add_subparser(sub)

    # `lake ingest|stream` and `plot` (edge/lake/commands.py; their libraries load when run).
    from edge.lake.commands import register as register_lake

    register_lake(sub)
    return parser


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
