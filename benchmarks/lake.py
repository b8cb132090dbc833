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

    .venv/bin/python benchmarks/lake.py --memory ROUNDS [--per-round N] [--code DIR]

Memory of the single-machine ingest as the lake grows (no corpus needed): each round is one
routing Avro file of N new payloads (10 streams; small data payloads of the demo re-numbered,
so that keys, not rows, make the lake grow), ingested by a fresh process, as the CLI is. For
each round: the lake's payloads after it, the process's peak Python heap (tracemalloc: Python
objects, such as a set of keys) and peak RSS (Arrow buffers and SQLite's cache included), the
index's size, the run's time; then round 1's file again (every payload a duplicate). ``--code``
measures another checkout's edge/ (e.g. one before the index, to compare).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
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
    parser.add_argument("--memory", type=int, metavar="ROUNDS", help="measure memory instead")
    parser.add_argument("--per-round", type=int, default=50_000, help="payloads per round")
    parser.add_argument("--code", type=Path, default=ROOT, help="checkout whose edge/ to measure")
    args = parser.parse_args()
    if args.memory:
        return memory(args.memory, args.per_round, args.code)
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


_STREAMS = 10

# One ingest in a fresh interpreter, measured from inside: argv = code root, source, lake.
_INGEST = """
import json, resource, sys, time, tracemalloc
sys.path.insert(0, sys.argv[1])
from edge.lake.local import ingest
tracemalloc.start()
start = time.perf_counter()
report = ingest([sys.argv[2]], sys.argv[3])
seconds = time.perf_counter() - start
print(json.dumps({
    "new": report.new, "duplicates": report.duplicates, "seconds": seconds,
    "python_peak": tracemalloc.get_traced_memory()[1],
    "max_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
}))
"""


def _templates(work: Path) -> tuple[bytes, bytes]:
    """A schema payload and the smallest data payload of a short demo drive."""
    from edge.wire.codec import unpack

    outbox = work / "demo"
    subprocess.run(
        [sys.executable, "-m", "edge", "demo", "--duration", "30", "--outbox", str(outbox)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    bodies = [p.read_bytes() for p in sorted((outbox / "outbox").glob("*.ctl"))]
    schema = next(b for b in bodies if unpack(b).kind == "schema")
    schema_id = unpack(schema).envelope["schema"]
    data = [
        b for b in bodies if unpack(b).kind == "data" and unpack(b).envelope["schema"] == schema_id
    ]
    return schema, min(data, key=len)


def _renumbered(payload: bytes, stream: str, seq: int) -> bytes:
    """``payload`` with another stream and sequence number (the envelope re-packed, the
    compressed body as it is)."""
    import msgpack

    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(payload[5:])
    fields = unpacker.unpack()
    body = payload[5 + unpacker.tell() :]
    fields[1], fields[2] = bytes.fromhex(stream), seq
    return payload[:5] + msgpack.packb(fields, use_bin_type=True) + body


def memory(rounds: int, per_round: int, code: Path) -> int:
    """The ``--memory`` measurement (see the module docstring)."""
    import datetime as dt

    from edge.lake.avro import write_routing

    work = Path(tempfile.mkdtemp(prefix="lake-memory-"))
    try:
        schema, data = _templates(work)
        streams = [os.urandom(16).hex() for _ in range(_STREAMS)]
        per_stream = per_round // _STREAMS
        when = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)
        lake = work / "lake"
        print(f"## Lake ingest memory ({per_round:,} new payloads a round, code: {code})\n")
        print("| round | payloads in the lake | peak Python heap | peak RSS | index | seconds |")
        print("|---|---|---|---|---|---|")
        first = work / "round-1.avro"
        total = 0
        for r in range(1, rounds + 1):
            messages = []
            for stream in streams:
                start = (r - 1) * per_stream
                for seq in range(start, start + per_stream):
                    body = _renumbered(schema if seq == 0 else data, stream, seq)
                    messages.append((body, {}, {"connectionDeviceId": stream[:8]}, when))
            source = work / f"round-{r}.avro"
            with source.open("wb") as f:
                write_routing(f, messages)
            result = _measure(code, source, lake)
            total += result["new"]
            _print_round(str(r), total, result, lake)
            if r > 1:
                source.unlink()
        result = _measure(code, first, lake)
        assert result["new"] == 0 and result["duplicates"] == per_stream * _STREAMS, result
        _print_round("1 again", total, result, lake)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def _measure(code: Path, source: Path, lake: Path) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-c", _INGEST, str(code), str(source), str(lake)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _print_round(label: str, total: int, result: dict[str, Any], lake: Path) -> None:
    from edge.lake.index import INDEX_FILE

    index = lake / INDEX_FILE
    size = human_bytes(index.stat().st_size) if index.exists() else "-"
    print(
        f"| {label} | {total:,} | {result['python_peak'] / 2**20:,.1f} MiB | "
        f"{result['max_rss'] / 2**20:,.0f} MiB | {size} | {result['seconds']:.1f} |",
        flush=True,
    )


def _plain(bodies: list[bytes]) -> int:
    from edge.wire.codec import PayloadReader

    decoder = PayloadReader()
    return sum(len(decoder.rows(b)) for b in bodies)


if __name__ == "__main__":
    sys.exit(main())
