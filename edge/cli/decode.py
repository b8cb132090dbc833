"""``can-telemetry decode``: payload files (or folders of them) read back into rows, as JSON
lines or CSV. (It *reads* payloads, docs/glossary.md; the command keeps the name users know.)"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from edge.cli.terminal import printable
from edge.errors import ConfigError, PayloadError

__all__ = ["add_subparser", "payload_files", "read_payload_files"]


def add_subparser(subparsers: Any) -> None:
    """Add ``decode`` to the CLI's subparsers."""
    dec = subparsers.add_parser("decode", help="turn payload files (or folders of them) into rows")
    dec.add_argument("paths", nargs="+", help="payload files or folders")
    dec.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    dec.add_argument("--output", "-o", help="write here instead of stdout")
    dec.set_defaults(func=_do_decode)


def payload_files(paths: Iterable[str]) -> list[Path]:
    """The files of ``paths``, each folder's (but hidden files) in name order; a path that
    does not exist is a :class:`PayloadError`."""
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(
                sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
            )
        elif p.exists():
            files.append(p)
        else:
            raise PayloadError(f"{p}: no such file or folder")
    return files


def read_payload_files(
    reader: Any, files: Sequence[Path], skipped: list[str]
) -> Iterator[tuple[Path, Iterator[Any]]]:
    """Payload files in stream order (schemas first, then data by stream and seq), each with
    its rows as they are decoded (a malformed payload raises PayloadError while they are read).
    A file that is not a payload, or whose envelope is malformed, is left out and described in
    ``skipped``."""
    from edge.wire.codec import MAGIC, peek

    entries = []
    for f in files:
        try:
            with f.open("rb") as file:
                head = file.read(len(MAGIC))
                if head != MAGIC:
                    skipped.append(f"{f}: not a can-telemetry payload")
                    continue
                payload = peek(head + file.read())
        except OSError as exc:
            skipped.append(f"{f}: cannot read: {exc.strerror or exc}")
            continue
        except PayloadError as exc:
            skipped.append(f"{f}: bad payload: {exc}")
            continue
        env = payload.envelope
        entries.append((payload.kind != "schema", str(env["stream"]), int(env["seq"]), f))
    entries.sort(key=lambda e: e[:3])
    for *_, f in entries:
        yield f, reader.iter_rows(f.read_bytes())


_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _json_row(row: Any) -> str:
    """A row as one line of JSON. JSON has no NaN or infinity: a float that is one is written
    as the string ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``."""
    fields = row._asdict()
    for key, value in fields.items():
        if type(value) is float and not math.isfinite(value):
            fields[key] = _NON_FINITE[repr(value)]
    return json.dumps(fields, separators=(",", ":"), allow_nan=False)


def _do_decode(args: argparse.Namespace) -> int:
    from edge.wire.codec import PayloadReader, Row

    files = payload_files(args.paths)
    decoder = PayloadReader()
    out: TextIO = sys.stdout
    if args.output:
        try:
            out = open(args.output, "w", newline="", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise ConfigError(
                "--output", f"cannot write {args.output}: {exc.strerror or exc}"
            ) from exc
    skipped: list[str] = []
    bad = 0
    try:
        writer = csv.writer(out) if args.format == "csv" else None
        if writer is not None:
            writer.writerow(Row._fields)
        for f, rows in read_payload_files(decoder, files, skipped):
            try:
                for row in rows:
                    if writer is not None:
                        writer.writerow(row)
                    else:
                        out.write(_json_row(row) + "\n")
            except PayloadError as exc:  # rows before the fault were written
                bad += 1
                print(f"can-telemetry: bad payload: {f}: {printable(str(exc))}", file=sys.stderr)
    finally:
        if out is not sys.stdout:
            out.close()
    for line in skipped:
        print(f"can-telemetry: skipped {printable(line)}", file=sys.stderr)
        bad += "bad payload:" in line
    return 3 if bad else 0
