"""The lake's repair job: remove the (stream, seq) duplicates that got past the streaming job's
watermark (``can-telemetry lake repair``, docs/lake.md).

The stream forgets a key once its watermark (8 days) has passed the first copy; a re-send that
reaches the hub later than that (a gateway switched off for weeks after a send whose
acknowledgement was lost) is published a second time, in ``payloads`` and ``signals``. This job
finds the keys present more than once in ``payloads`` and rewrites only the event-date partitions
that hold a copy to remove, each key kept once: the first arrival (smallest ``enqueued``, then
the smallest run label: deterministic).

Copies are told apart by the run that published them: every file of the lake is named
``part-{run}-{n}.parquet`` (Spark micro-batch ``s{id}``, batch ``b{time}``, a local run, a
repair ``r{time}d{date}``), a payload's rows in ``signals`` are in files of the same run as its
``payloads`` row, and no run publishes a key twice (both engines deduplicate within a run). A key
whose first copy's run holds it twice anyway is left as it is and counted (``ambiguous``).

Each partition is one step, all or nothing: its kept rows are written by Spark to
``_staging/<run>/`` and published with :func:`edge.lake.local.publish` (a journal lists the
renames of the staged files and the deletion of the partition's old files, in ``payloads`` and
``signals`` together, with the ``streams`` table recomputed; a run killed after its journal is
rolled forward by the next start, one killed before leaves only staging, removed then). A
partition with nothing to remove is not touched. The keys to remove are collected on the
driver: late duplicates are rare, and the list must not change while partitions are rewritten.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from edge.lake.local import locked, publish, read_table, recover
from edge.lake.tables import PAYLOADS, SIGNALS

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["RepairReport", "check_local", "copies_to_remove", "find_copies", "repair"]

#: The run that published a lake file, from its name (``part-{run}-{n}.parquet``).
_RUN_OF_FILE = r"part-(.+)-[0-9]+\.parquet$"
#: The event date of a partitioned table's file, from its folder (``date=YYYY-MM-DD``).
_DATE_OF_FILE = r"/date=([0-9]{4}-[0-9]{2}-[0-9]{2})/[^/]+$"
_KEY = ["stream", "seq"]


@dataclass
class RepairReport:
    """What one repair found and did. ``duplicate_keys``: (stream, seq) present more than once
    in ``payloads`` (in the dates looked at); ``partitions``: the event dates rewritten;
    ``payloads_removed``/``signals_removed``: rows deleted per table; ``ambiguous``: keys left
    as they are (two copies in one run, which no engine writes)."""

    run: str
    engine: str
    duplicate_keys: int = 0
    partitions: list[str] = field(default_factory=list)
    payloads_removed: int = 0
    signals_removed: int = 0
    ambiguous: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The counters, for printing as JSON."""
        return dict(self.__dict__)


def _run_label() -> str:
    return "r" + dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%f")


def _in_range(date: dt.date, start: dt.date | None, end: dt.date | None) -> bool:
    return (start is None or date >= start) and (end is None or date <= end)


def partition_files(
    lake: Path, table: str, start: dt.date | None = None, end: dt.date | None = None
) -> dict[dt.date, list[Path]]:
    """The Parquet files of a date-partitioned ``table``, by event date (within [start, end])."""
    found: dict[dt.date, list[Path]] = {}
    folder = lake / table
    if not folder.is_dir():
        return found
    for part in sorted(folder.glob("date=*")):
        date = dt.date.fromisoformat(part.name.removeprefix("date="))
        files = sorted(part.glob("*.parquet"))
        if files and _in_range(date, start, end):
            found[date] = files
    return found


def check_local(
    lake: str | os.PathLike[str], start: dt.date | None = None, end: dt.date | None = None
) -> RepairReport:
    """The same check without a JVM (pyarrow): count the keys present more than once in
    ``payloads``; rewrites nothing (the single-machine ingest never writes such a key, its index
    has no horizon: a duplicate there was written by the Spark stream)."""
    table = read_table(Path(lake), "payloads", ["date", "stream", "seq"])
    if start is not None:
        table = table.filter(pc.greater_equal(table.column("date"), pa.scalar(start)))
    if end is not None:
        table = table.filter(pc.less_equal(table.column("date"), pa.scalar(end)))
    counts = table.group_by(_KEY).aggregate([("date", "count")])
    twice = pc.sum(pc.greater(counts.column("date_count"), 1)).as_py() or 0
    return RepairReport(run="check", engine="local", duplicate_keys=int(twice))


def _spark_schema(schema: pa.Schema, without: Sequence[str] = ("date",)) -> Any:
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(pa.schema([f for f in schema if f.name not in without]))


def _read_partition(spark: SparkSession, schema: pa.Schema, files: Sequence[Path]) -> DataFrame:
    """Files of a partitioned table (without ``date``) with the run that published each row
    (``run``)."""
    from pyspark.sql import functions as F

    return (
        spark.read.schema(_spark_schema(schema))
        .parquet(*[str(p) for p in files])
        .withColumn("run", F.regexp_extract(F.input_file_name(), _RUN_OF_FILE, 1))
    )


def find_copies(payloads: DataFrame) -> DataFrame:
    """Payload rows (stream, seq, date, run, enqueued) -> one row per copy of a key present more
    than once, ranked by arrival (``rank`` 1: the copy kept) with the first copy's run
    (``kept_run``)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    by_key = Window.partitionBy(*_KEY)
    ranked = by_key.orderBy("enqueued", "run", "date")
    return (
        payloads.select(*_KEY, "date", "run", "enqueued")
        .withColumn("copies", F.count("*").over(by_key))
        .where("copies > 1")
        .withColumn("rank", F.row_number().over(ranked))
        .withColumn("kept_run", F.first("run").over(ranked))
    )


def copies_to_remove(copies: DataFrame) -> tuple[DataFrame, DataFrame]:
    """:func:`find_copies`' rows -> (copies to remove: stream, seq, date, run; ambiguous keys:
    stream, seq, whose kept run holds them twice and which are left as they are)."""
    from pyspark.sql import functions as F

    in_kept_run = F.sum(F.when(F.col("run") == F.col("kept_run"), 1).otherwise(0))
    ambiguous = copies.groupBy(*_KEY).agg(in_kept_run.alias("n")).where("n > 1").select(*_KEY)
    remove = (
        copies.where("run != kept_run")
        .join(ambiguous, _KEY, "left_anti")
        .select(*_KEY, "date", "run")
        .distinct()
    )
    return remove, ambiguous


def _row_count(files: Iterable[Path]) -> int:
    return sum(pq.ParquetFile(p).metadata.num_rows for p in files)


def _write_staged(frame: DataFrame, folder: Path, order: Sequence[str]) -> None:
    frame.drop("run").orderBy(*order).write.mode("overwrite").option("compression", "zstd").parquet(
        str(folder)
    )


def repair(
    spark: SparkSession,
    lake: str | os.PathLike[str],
    *,
    start: dt.date | None = None,
    end: dt.date | None = None,
    after_partition: Callable[[dt.date], None] | None = None,
) -> RepairReport:
    """Remove from ``payloads`` and ``signals`` every copy of a (stream, seq) but its first
    arrival, rewriting only the partitions that hold a copy to remove, one step per partition
    (see the module docstring). ``start``/``end``: only copies whose event date is in that range
    are looked at. ``after_partition`` is called after each partition is published (tests).
    A second run finds nothing and writes nothing."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import LongType, StringType, StructField, StructType

    from edge.lake.spark import write_streams

    root = Path(lake)
    report = RepairReport(run=_run_label(), engine="spark")
    with locked(root):
        recover(root)
        payload_files = partition_files(root, "payloads", start, end)
        if not payload_files:
            return report
        # One read of every file in the range (key columns only), the date from each path.
        every_file = [p for date_files in payload_files.values() for p in date_files]
        payloads = _read_partition(spark, PAYLOADS, every_file).withColumn(
            "date", F.to_date(F.regexp_extract(F.input_file_name(), _DATE_OF_FILE, 1))
        )
        copies = find_copies(payloads).persist()
        remove_frame, ambiguous = copies_to_remove(copies)
        report.duplicate_keys = copies.select(*_KEY).distinct().count()
        report.ambiguous = ambiguous.count()
        remove = remove_frame.collect()  # fixed before any file changes
        copies.unpersist()
        key_schema = StructType(
            [
                StructField("stream", StringType()),
                StructField("seq", LongType()),
                StructField("run", StringType()),
            ]
        )
        dates = sorted({r["date"] for r in remove})
        signal_files = partition_files(root, "signals")
        for date in dates:
            keys = [(r["stream"], r["seq"], r["run"]) for r in remove if r["date"] == date]
            doomed = F.broadcast(spark.createDataFrame(keys, key_schema))
            label = f"{report.run}d{date:%Y%m%d}"
            staging = root / "_staging" / label
            old = [*payload_files.get(date, []), *signal_files.get(date, [])]
            for table, schema, order in (
                ("payloads", PAYLOADS, ("vehicle", "stream", "seq")),
                ("signals", SIGNALS, ("vehicle", "signal", "time")),
            ):
                files = (payload_files if table == "payloads" else signal_files).get(date, [])
                if not files:
                    continue
                folder = staging / table / f"date={date}"
                kept = _read_partition(spark, schema, files).join(
                    doomed, [*_KEY, "run"], "left_anti"
                )
                _write_staged(kept, folder, order)
                # Counted from the Parquet footers, not by more Spark jobs.
                removed = _row_count(files) - _row_count(folder.glob("*.parquet"))
                if table == "payloads":
                    report.payloads_removed += removed
                else:
                    report.signals_removed += removed
            write_streams(spark, root, staging, replaced=old)
            moves = [
                (
                    str(staged.relative_to(root)),
                    str(staged.parent.relative_to(staging) / f"part-{label}-{n:05d}.parquet"),
                )
                for n, staged in enumerate(
                    p for p in sorted(staging.rglob("*.parquet")) if _row_count([p])
                )
            ]
            old += sorted((root / "streams").glob("*.parquet"))
            publish(root, label, moves, old)
            report.partitions.append(date.isoformat())
            if after_partition is not None:
                after_partition(date)
    return report
