"""``can-telemetry module``: the Azure IoT Edge module (edge/iotedge/module.py), which parses its
own arguments."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_subparser"]


def add_subparser(subparsers: Any) -> None:
    """Add ``module`` to the CLI's subparsers."""
    mod = subparsers.add_parser(
        "module",
        add_help=False,  # `can-telemetry module --help` shows the module's own options
        help="run as an Azure IoT Edge module: module twin, direct methods, /metrics, /healthz",
    )
    mod.set_defaults(func=_do_module, own_arguments=True)


def _do_module(args: argparse.Namespace) -> int:
    from edge.iotedge.module import main_module

    module_args = list(args.module_args)
    if args.log_level and "--log-level" not in module_args:
        module_args = ["--log-level", args.log_level, *module_args]
    return main_module(module_args)
