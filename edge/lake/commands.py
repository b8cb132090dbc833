"""The lake's commands: ``can-telemetry lake ingest|stream|repair`` and ``can-telemetry plot``.

:func:`register` adds them to the CLI's parser; nothing heavy is imported until a command runs
(pyarrow, Spark and matplotlib come with the ``lake`` extra).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
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
    repair = lake_sub.add_parser(
        "repair",
        help="remove the (stream, seq) duplicates that got past the stream's watermark, "
        "rewriting only the partitions that hold them (run daily, after the stream)",
    )
    repair.add_argument("--lake", required=True)
    repair.add_argument(
        "--engine",
        choices=("spark", "local"),
        default="spark",
        help="spark: find and remove (default); local: find and count only, no JVM",
    )
    repair.add_argument("--master", default="local[2]", help="Spark master (--engine spark)")
    repair.add_argument("--from", dest="start", help="first event date looked at (YYYY-MM-DD)")
    repair.add_argument("--to", dest="end", help="last event date looked at (YYYY-MM-DD)")
    repair.set_defaults(func=_cmd_repair)

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


def _date(text: str | None, option: str) -> dt.date | None:
    if text is None:
        return None
    try:
        return dt.date.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(option, f"not a date (YYYY-MM-DD): {text!r}") from exc


def _cmd_repair(args: argparse.Namespace) -> int:
    start, end = _date(args.start, "--from"), _date(args.end, "--to")
    if not Path(args.lake, "payloads").is_dir():
        raise ConfigError("--lake", f"no lake (no payloads table) at {args.lake}")
    if args.engine == "local":
        from edge.lake.repair import check_local

        report = check_local(args.lake, start, end)
        print(json.dumps(report.as_dict()))
        if report.duplicate_keys:
            print(
                f"can-telemetry: {report.duplicate_keys} (stream, seq) keys are in payloads more "
                "than once; the local engine only counts them: run with --engine spark",
                file=sys.stderr,
            )
            return 1
        return 0
    from edge.lake.repair import repair
    from edge.lake.spark import session

    report = repair(session(args.master), args.lake, start=start, end=end)
    print(json.dumps(report.as_dict()))
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
