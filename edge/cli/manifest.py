"""``can-telemetry manifest``: deployment.template.json expanded for ``az iot edge
set-modules``."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_subparser"]


def add_subparser(subparsers: Any) -> None:
    """Add ``manifest`` to the CLI's subparsers."""
    man = subparsers.add_parser("manifest", help="expand deployment.template.json for az iot edge")
    man.add_argument("--template", default="deployment.template.json")
    man.add_argument("--module", default="modules/CanTelemetry/module.json")
    man.add_argument("--platform", default="amd64")
    man.add_argument("--output", "-o", default="config/deployment.amd64.json")
    man.set_defaults(func=_do_manifest)


def _do_manifest(args: argparse.Namespace) -> int:
    from edge.iotedge.manifest import expand_manifest

    path = expand_manifest(args.template, args.module, args.platform, args.output)
    print(path)
    return 0
