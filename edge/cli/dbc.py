"""``can-telemetry dbc``: the messages (and signals) of a CAN database, and the repairs a
tolerant load made."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from edge.cli.terminal import PrintableWriter

__all__ = ["add_subparser"]


def add_subparser(subparsers: Any) -> None:
    """Add ``dbc`` to the CLI's subparsers."""
    dbc = subparsers.add_parser("dbc", help="list the messages and signals of a CAN database")
    dbc.add_argument("file")
    dbc.add_argument(
        "--no-strict",
        action="store_true",
        help="load as a bus with strict = false does: repair the quirks real DBC files have"
        " and list each repair",
    )
    dbc.add_argument("--signals", action="store_true", help="also list every signal")
    dbc.set_defaults(func=_do_dbc)


def _do_dbc(args: argparse.Namespace) -> int:
    from edge.processing.database import load_database_repaired

    db, repairs = load_database_repaired(args.file, strict=not args.no_strict)
    out: Any = PrintableWriter(sys.stdout)  # names come from the file: no escape sequences
    print(
        f"{args.file}: {len(db.messages)} messages, "
        f"{sum(len(m.signals) for m in db.messages)} signals",
        file=out,
    )
    if repairs:
        print(f"repaired to load ({len(repairs)}; see docs/databases.md):", file=out)
        for repair in repairs:
            print(f"  {repair.describe(args.file)}", file=out)
    print(f"{'id':>10}  {'ext':3} {'fd':2} {'len':>3} {'cycle':>6}  {'name':32} senders", file=out)
    for m in sorted(db.messages, key=lambda m: m.frame_id):
        cycle = f"{m.cycle_time}ms" if m.cycle_time else "-"
        print(
            f"{m.frame_id:>#10x}  {'x' if m.is_extended_frame else '':3} "
            f"{'x' if m.is_fd else '':2} {m.length:>3} {cycle:>6}  {m.name:32} "
            f"{','.join(m.senders)}",
            file=out,
        )
        if args.signals:
            for s in m.signals:
                mux = (
                    "M"
                    if s.is_multiplexer
                    else (f"m{s.multiplexer_ids}" if s.multiplexer_ids else "")
                )
                kind = "float" if s.is_float else ("signed" if s.is_signed else "unsigned")
                order = "BE" if s.byte_order == "big_endian" else "LE"
                choices = f" choices={len(s.choices)}" if s.choices else ""
                print(
                    f"{'':14}{s.name:30} {s.start:>3}|{s.length:<2} {order} {kind:8} "
                    f"x{s.scale:g}+{s.offset:g} [{s.minimum}..{s.maximum}] {s.unit or ''}"
                    f"{choices} {mux}".rstrip(),
                    file=out,
                )
    return 0
