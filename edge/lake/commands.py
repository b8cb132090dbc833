"""The lake's commands: ``can-telemetry lake ingest|stream`` and ``can-telemetry plot``.

:func:`register` adds them to the CLI's parser; nothing heavy is imported until a command runs
(pyarrow, Spark and matplotlib come with the ``lake`` extra).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from edge.errors import ConfigError
from edge.lake import WATERMARK

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add ``lake`` and ``plot`` to the CLI's subparsers."""
    lake = sub.add_parser(
        "lake", help="the cloud half: IoT Hub payloads into Parquet tables (docs/lake.md)"
    )
    lake_sub = lake.add_subparsers(dest="lake_command", required=True)
    ing = lake_sub.add_parser(
        "ingest",
        help="decode Avro files of IoT Hub routing or Capture, outbox payloads, or folders of "
        "them into the lake, exactly once",
    )
    ing.add_argument("sources", nargs="+", help="files or folders (*.avro, *.ctl)")
    ing.add_argument("--lake", required=True, help="the lake's folder (created if missing)")
    ing.add_argument(
        "--engine",
        choices=("local", "spark"),
        default="local",
        help="local: this process, no JVM (default); spark: the Spark batch job",
    )
    ing.add_argument("--master", default="local[2]", help="Spark master (--engine spark)")
    ing.set_defaults(func=_cmd_ingest)
    stream = lake_sub.add_parser(
        "stream", help="the Spark Structured Streaming job on a folder the hub writes to"
    )
    stream.add_argument("source", help="folder the Avro files arrive in")
    stream.add_argument("--lake", required=True)
    stream.add_argument("--checkpoint", required=True, help="Spark checkpoint folder")
    stream.add_argument("--master", default="local[2]")
    stream.add_argument(
        "--watermark",
        default=WATERMARK,
        help=f"how long duplicates are remembered (default {WATERMARK}: wider than the spool's "
        "TTL, docs/lake.md)",
    )
    stream.add_argument(
        "--available-now", action="store_true", help="take what is there, then stop"
    )
    stream.set_defaults(func=_cmd_stream)

    plot = sub.add_parser("plot", help="draw signals over time (PNG or SVG)")
    plot.add_argument("sources", nargs="+", help="a lake folder, an outbox, payload/Avro files")
    plot.add_argument("--vehicle", help="only this vehicle")
    plot.add_argument("--signal", action="append", help="signal name glob (repeatable)")
    plot.add_argument("--from", dest="start", help="ISO time or seconds")
    plot.add_argument("--to", dest="end", help="ISO time or seconds")
    plot.add_argument("--output", "-o", required=True, help="image file (.png or .svg)")
    plot.add_argument("--max-signals", type=int, default=12, help="at most this many panels")
    plot.set_defaults(func=_cmd_plot)


def _cmd_ingest(args: argparse.Namespace) -> int:
    if args.engine == "spark":
        import datetime as dt

        from edge.lake.spark import run_batch, session

        label = "b" + dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        counts = run_batch(session(args.master), args.sources, args.lake, label)
        print(json.dumps({"run": label, **counts}))
        return 0
    from edge.lake.local import ingest

    try:
        report = ingest(args.sources, args.lake)
    except FileNotFoundError as exc:
        raise ConfigError("sources", str(exc)) from exc
    print(json.dumps(report.as_dict()))
    for error in report.errors:
        print(f"can-telemetry: skipped {error}", file=sys.stderr)
    return 1 if report.errors else 0


def _cmd_stream(args: argparse.Namespace) -> int:
    from edge.lake.spark import session, start_stream

    spark = session(args.master)
    query = start_stream(
        spark,
        args.source,
        args.lake,
        args.checkpoint,
        watermark=args.watermark,
        available_now=args.available_now,
    )
    query.awaitTermination()
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from edge.lake.plot import draw, load_rows, parse_when

    rows = load_rows(
        args.sources,
        vehicle=args.vehicle,
        signals=args.signal,
        start=parse_when(args.start, "--from"),
        end=parse_when(args.end, "--to"),
    )
    if rows.num_rows == 0:
        raise ConfigError("--signal", "no rows match (check --vehicle, --signal, --from/--to)")
    drawn = draw(rows, args.output, max_signals=args.max_signals)
    print(f"{args.output}: {drawn} signals, {rows.num_rows} values")
    return 0
