"""The lake on Apache Spark in local mode (a real JVM, Debian's OpenJDK from .ci/setup): the batch
and streaming jobs end with the edge's own decode row for row, exactly once, through duplicates,
shuffled arrival, late schemas, a file ingested twice and a streaming query killed with SIGKILL
(driver and JVM) between publishing a micro-batch and committing it, then restarted."""

from __future__ import annotations

import datetime as dt
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from edge.lake.local import read_table
from tests.support.lake import Fleet, edge_rows, lake_rows, write_avro

pytestmark = [
    pytest.mark.skipif(shutil.which("java") is None, reason="no Java runtime (.ci/setup)"),
    # PySpark 3.5 leaves its local result sockets to the garbage collector (collect()).
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
    pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning"),
    # and checks the pyarrow version with distutils' LooseVersion.
    pytest.mark.filterwarnings("ignore:distutils Version classes:DeprecationWarning"),
]


def test_batch_job_equals_the_edge_and_a_rerun_adds_nothing(
    spark: Any, fleet: Fleet, tmp_path: Path
) -> None:
    from edge.lake.spark import run_batch

    hub = fleet.iothub_folder(tmp_path)
    # The same payloads again in a Capture file (a second route to the same lake).
    write_avro(tmp_path / "capture" / "0.avro", fleet.messages[::2], capture=True)
    lake = tmp_path / "lake"
    counts = run_batch(spark, [str(hub), str(tmp_path / "capture")], lake, "b1")
    assert counts == {"ok": len(fleet.messages)}
    assert lake_rows(lake) == edge_rows(fleet)
    again = run_batch(spark, [str(hub)], lake, "b2")
    assert again == {}
    assert lake_rows(lake) == edge_rows(fleet)
    streams = {s["vehicle"]: s for s in read_table(lake, "streams").to_pylist()}
    assert streams["corpus-j1939-truck"]["last_seq"] == len(fleet.payloads["j1939-truck"]) - 1
    assert all(s["gaps"] == [] for s in streams.values())
    # Event time places the rows, the relative time base by arrival (and says so), as locally.
    signals = read_table(lake, "signals", ["vehicle", "date", "time_base"])
    places = set(zip(*(signals.column(c).to_pylist() for c in signals.column_names), strict=True))
    assert places == {
        ("corpus-kona", dt.date(2026, 12, 6), "relative"),
        ("corpus-j1939-truck", dt.date(2021, 10, 25), "epoch"),
    }


def test_stream_deduplicates_waits_for_late_schemas_and_shows_gaps(
    spark: Any, fleet: Fleet, tmp_path: Path
) -> None:
    from edge.lake.spark import start_stream

    truck = "0b" * 16
    schemas = [m for m in fleet.messages if m[1]["kind"] == "schema"]
    data = [m for m in fleet.messages if m[1]["kind"] == "data"]
    lost = next(m for m in data if m[1]["stream"] == truck and m[1]["seq"] == "5")
    data = [m for m in data if m is not lost]
    random.Random(3).shuffle(data)
    incoming, lake = tmp_path / "incoming", tmp_path / "lake"
    incoming.mkdir()
    query = start_stream(spark, str(incoming), lake, str(tmp_path / "checkpoint"))
    try:
        # Shuffled data over two partitions' files, duplicates within and across them, no schema.
        write_avro(incoming / "0" / "a.avro", data[::2] + data[:4])
        write_avro(incoming / "1" / "a.avro", data[1::2], capture=True)
        query.processAllAvailable()
        assert lake_rows(lake) == []
        assert read_table(lake, "_parked").num_rows == len(data)
        # The schemas arrive later, with byte-identical re-sends of some data, hours later.
        resent = [(b, p, s, t + dt.timedelta(hours=3)) for b, p, s, t in data[:5]]
        write_avro(incoming / "0" / "b.avro", schemas + resent)
        query.processAllAvailable()
        # The same file copied under another name (ingested twice).
        shutil.copy(incoming / "1" / "a.avro", incoming / "1" / "copy.avro")
        query.processAllAvailable()
    finally:
        query.stop()
    expected = [r for r in edge_rows(fleet) if (r[0], r[1]) != (truck, 5)]
    assert lake_rows(lake) == expected
    assert read_table(lake, "_parked").num_rows == 0
    streams = {s["stream"]: s for s in read_table(lake, "streams").to_pylist()}
    assert streams[truck]["gaps"] == [[5, 5]] and streams[truck]["missing"] == 1


_KILLED_STREAM = textwrap.dedent(
    """
    import os, signal, sys
    import edge.lake.local as local
    import edge.lake.spark as job

    real = job.publish

    def publish_then_die(lake, run, moves, deletes):
        real(lake, run, moves, deletes)
        # Published, but Spark has not committed the batch: driver and JVM die together.
        os.killpg(0, signal.SIGKILL)

    job.publish = publish_then_die
    spark = job.session("local[2]", "killed")
    job.start_stream(spark, sys.argv[1], sys.argv[2], sys.argv[3], available_now=True,
                     max_files_per_trigger=1).awaitTermination()
    """
)


def test_stream_killed_after_publishing_a_batch_ends_exactly_once(
    spark: Any, fleet: Fleet, tmp_path: Path
) -> None:
    from edge.lake.spark import start_stream

    hub = fleet.iothub_folder(tmp_path)
    lake, checkpoint = tmp_path / "lake", tmp_path / "checkpoint"
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_STREAM, str(hub), str(lake), str(checkpoint)],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        capture_output=True,
        timeout=600,
        start_new_session=True,  # its own process group: the JVM dies with the driver
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    assert lake_rows(lake)  # the first batch was published before the kill
    assert not (checkpoint / "commits" / "0").exists()
    query = start_stream(spark, str(hub), lake, str(checkpoint), available_now=True)
    query.awaitTermination()
    assert lake_rows(lake) == edge_rows(fleet)


def test_stream_what_gets_past_a_watermark(spark: Any, fleet: Fleet, tmp_path: Path) -> None:
    """The limits docs/lake.md states, with a one-hour watermark instead of days: a re-send
    later than the watermark is published again (and found by the duplicates query), and rows
    older than the watermark are dropped by Spark; the single-machine ingest takes both right."""
    import duckdb

    from edge.lake.local import ingest
    from edge.lake.spark import start_stream

    truck = [m for m in fleet.messages if m[1]["stream"] == "0b" * 16]
    kona = [m for m in fleet.messages if m[1]["stream"] == "0a" * 16]
    assert len(truck) >= 8 and kona
    later = dt.timedelta(hours=5)
    incoming, lake = tmp_path / "incoming", tmp_path / "lake"
    incoming.mkdir()
    batches = [
        truck,
        # Another module's message five hours on: the watermark passes the first copies.
        [(b"x", {}, truck[0][2], truck[0][3] + later)],
        # Re-sends of three payloads, five hours after their first copies.
        [(b, p, s, t + later) for b, p, s, t in truck[5:8]],
        # New payloads whose arrival time is a day behind the watermark.
        [(b, p, s, t - dt.timedelta(days=1)) for b, p, s, t in kona],
    ]
    query = start_stream(spark, str(incoming), lake, str(tmp_path / "cp"), watermark="1 hour")
    files = []
    try:
        for i, messages in enumerate(batches):  # one micro-batch each: the watermark moves
            files.append(write_avro(incoming / f"{i}.avro", messages))
            query.processAllAvailable()
    finally:
        query.stop()
    twice = duckdb.sql(
        f"select stream, seq from read_parquet('{lake}/payloads/*/*.parquet') "
        "group by all having count(*) > 1 order by seq"
    ).fetchall()
    assert twice == [("0b" * 16, int(m[1]["seq"])) for m in truck[5:8]]
    payloads = read_table(lake, "payloads")
    assert payloads.num_rows == len(truck) + 3
    assert read_table(lake, "quarantine").column("status").to_pylist() == ["foreign"]
    assert set(payloads.column("stream").to_pylist()) == {"0b" * 16}  # the late kona: dropped
    # The single machine: every payload once, the late ones included.
    report = ingest(files, tmp_path / "local")
    assert (report.new, report.duplicates, report.foreign) == (len(truck) + len(kona), 3, 1)


def test_the_documented_spark_submit_line_runs_the_batch_job(fleet: Fleet, tmp_path: Path) -> None:
    """docs/lake.md's ``spark-submit ... edge/lake/spark.py batch SOURCE --lake DIR``, as a
    separate driver (its own JVM) on local[2]."""
    import edge.lake.spark

    hub = fleet.iothub_folder(tmp_path)
    lake = tmp_path / "lake"
    submit = Path(sys.executable).with_name("spark-submit")
    assert submit.exists(), "pyspark installs spark-submit beside python"
    done = subprocess.run(
        [
            str(submit),
            "--master",
            "local[2]",
            "--conf",
            f"spark.pyspark.python={sys.executable}",
            edge.lake.spark.__file__,
            "batch",
            str(hub),
            "--lake",
            str(lake),
        ],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "'ok': " in done.stdout
    assert lake_rows(lake) == edge_rows(fleet)
