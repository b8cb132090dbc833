"""Benchmark of the cloud half (issue 14) on the real-vehicle corpus. Prints markdown.

    .venv/bin/python benchmarks/lake.py [--no-spark]

For every corpus log, the real Processor makes payloads with default settings (every frame);
they go into IoT Hub routing Avro files (edge.lake.avro.write_routing). Then, timed with
``time.perf_counter``:

1. plain loop: ``PayloadReader().rows(body)`` over every payload (the edge's own reader);
2. decode(): the lake's one decode function on one Arrow batch of all payloads (rows as Arrow);
3. local ingest: ``edge.lake.local.ingest`` of the Avro files into a fresh lake, end to end
   (Avro read, decode, dedup, sort, Parquet zstd write, journal, streams);
4. Spark local[2]: the batch job (``edge.lake.spark.run_batch``) into a fresh lake, session
   already started and warmed by one run; rows per second per core = rows/s / 2.

From the corpus's rates (rows and payload bytes per vehicle-hour, over all logs' hours) and the
measured rows per second per core, a sizing table for 5 million cars.
Needs ../shared/corpus (exits 0 saying so without it) and, for Spark, a Java runtime.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CORPUS = ROOT.parent / "shared" / "corpus"
FLEET = 5_000_000
HOUR = 3600.0


def payloads_of(log: Any) -> tuple[list[Any], float]:
    """The log's payloads (default settings) and the log's duration in seconds."""
    from edge.config.model import parse_config
    from edge.ingest.source import ReplaySource
    from edge.processing.processor import Processor

    config = parse_config(log.config())
    assert config.replay is not None
    frames = list(ReplaySource(config.replay, [b.name for b in config.buses]).messages())
    stream = os.urandom(16).hex()
    payloads: list[Any] = []

    def numbered(build: Any) -> int:
        seq = len(payloads)
        payloads.append(build(stream, seq))
        return seq

    processor = Processor(config, numbered)
    for i in range(0, len(frames), 256):
        processor.process(frames[i : i + 256])
    processor.flush()
    return payloads, frames[-1].timestamp - frames[0].timestamp


def timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000:
            return f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} EB"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-spark", action="store_true", help="skip the Spark measurement")
    args = parser.parse_args()
    if not CORPUS.is_dir():
        print(f"corpus not found at {CORPUS}: nothing to measure")
        return 0
    import datetime as dt

    from edge.lake.arrow import SchemaBook, decode, payload_batch
    from edge.lake.avro import write_routing
    from edge.lake.local import ingest, read_table
    from tests.support.corpus import LOGS

    work = Path(tempfile.mkdtemp(prefix="lake-bench-"))
    try:
        hours = rows_total = bytes_total = 0.0
        plain_s = decode_s = 0.0
        lines = []
        when = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)
        for log in LOGS:
            payloads, seconds = payloads_of(log)
            bodies = [p.body for p in payloads]
            t_plain, rows = timed(lambda bodies=bodies: _plain(bodies))
            t_decode, decoded = timed(
                lambda bodies=bodies, device=log.id: decode(
                    payload_batch(bodies, device=device), SchemaBook()
                )
            )
            assert decoded.rows.num_rows == rows, (log.id, decoded.rows.num_rows, rows)
            size = sum(len(b) for b in bodies)
            messages = [
                (p.body, dict(p.properties), {"connectionDeviceId": log.id}, when) for p in payloads
            ]
            folder = work / "hub" / log.id
            folder.mkdir(parents=True)
            with (folder / "00.avro").open("wb") as f:
                write_routing(f, messages)
            hours += seconds / HOUR
            rows_total += rows
            bytes_total += size
            plain_s += t_plain
            decode_s += t_decode
            lines.append(
                f"| {log.id} | {seconds / 60:.1f} min | {len(payloads)} | {rows:,} | "
                f"{rows / t_plain:,.0f} | {rows / t_decode:,.0f} | "
                f"{human_bytes(size / (seconds / HOUR))} |"
            )
        print("## Lake decode on the corpus\n")
        print(
            "| log | duration | payloads | rows | plain loop rows/s | decode() rows/s | "
            "payload bytes per vehicle-hour |"
        )
        print("|---|---|---|---|---|---|---|")
        print("\n".join(lines))
        t_local, report = timed(lambda: ingest([work / "hub"], work / "lake"))
        assert report.rows == rows_total, (report.rows, rows_total)
        parquet = sum(p.stat().st_size for p in (work / "lake" / "signals").rglob("*.parquet"))
        avro = sum(p.stat().st_size for p in (work / "hub").rglob("*.avro"))
        assert read_table(work / "lake", "signals", ["seq"]).num_rows == rows_total
        engines = [
            ("plain PayloadReader loop (1 core)", rows_total / plain_s),
            ("decode(): payloads -> Arrow rows (1 core)", rows_total / decode_s),
            ("local ingest, Avro -> Parquet tables (1 core)", rows_total / t_local),
        ]
        if not args.no_spark and shutil.which("java"):
            from edge.lake.spark import run_batch, session

            spark = session("local[2]", "lake-bench")
            spark.sparkContext.setLogLevel("ERROR")
            run_batch(spark, [str(work / "hub")], work / "warm", "w")
            t_spark, _ = timed(lambda: run_batch(spark, [str(work / "hub")], work / "sp", "b"))
            assert read_table(work / "sp", "signals", ["seq"]).num_rows == rows_total
            spark.stop()
            engines.append(("Spark local[2] batch job, per core", rows_total / t_spark / 2))
        print(
            f"\n## Rows per second per core ({rows_total:,.0f} rows, {hours:.2f} vehicle-hours)\n"
        )
        print("| path | rows/s per core |")
        print("|---|---|")
        for name, rate in engines:
            print(f"| {name} | {rate:,.0f} |")
        per_vh_rows = rows_total / hours
        per_vh_bytes = bytes_total / hours
        per_row_parquet = parquet / rows_total
        print(
            f"\nCorpus rates: {per_vh_rows:,.0f} rows and {human_bytes(per_vh_bytes)} of payloads "
            f"per vehicle-hour; Avro as routed {human_bytes(avro / hours)}/vehicle-hour; "
            f"signals Parquet {per_row_parquet:.2f} bytes/row "
            f"({human_bytes(per_row_parquet * per_vh_rows)}/vehicle-hour)."
        )
        print(f"\n## Sizing for {FLEET:,} cars at the corpus's rates\n")
        print(
            "| driving per car per day | rows per day | cores (local ingest) | "
            "cores (Spark) | payloads landed per day | signals Parquet per day |"
        )
        print("|---|---|---|---|---|---|")
        local_rate = rows_total / t_local
        spark_rate = engines[-1][1] if len(engines) > 3 else None
        for drive_hours in (1, 24):
            rows_day = FLEET * drive_hours * per_vh_rows
            cores_local = rows_day / 86_400 / local_rate
            cores_spark = f"{rows_day / 86_400 / spark_rate:,.0f}" if spark_rate else "-"
            print(
                f"| {drive_hours} h | {rows_day:,.3g} | {cores_local:,.0f} | {cores_spark} | "
                f"{human_bytes(FLEET * drive_hours * avro / hours)} | "
                f"{human_bytes(rows_day * per_row_parquet)} |"
            )
        print(
            "\nCores are busy cores at an even load over the day (no headroom for peaks or "
            "re-processing); storage is before replication."
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _plain(bodies: list[bytes]) -> int:
    from edge.wire.codec import PayloadReader

    decoder = PayloadReader()
    return sum(len(decoder.rows(b)) for b in bodies)


if __name__ == "__main__":
    sys.exit(main())
