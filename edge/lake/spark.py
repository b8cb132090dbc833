"""The lake on Apache Spark: a Structured Streaming job and the same logic as a batch job for
backfills, both decoding with :func:`edge.lake.arrow.decode` inside ``mapInArrow`` (docs/lake.md).

The stream::

    binaryFile files (Avro of IoT Hub routing or Capture, outbox *.ctl), checkpointed source
      -> mapInArrow: the files' payloads, each with its key (stream:seq)
      -> withWatermark(enqueued) + dropDuplicatesWithinWatermark(key): checkpointed state
      -> foreachBatch: decode (mapInArrow), write the tables, publish as batch ``s{id}``

Exactly once: Spark's checkpoint replays a micro-batch that did not commit with the same files
and the same id; its files are named by that id and a replay first deletes what an earlier
attempt published (:func:`edge.lake.local.publish` with ``part-s{id}-*`` deletions), so a batch
is in the lake once whatever the kills. Duplicates across batches are dropped by the stateful
deduplication as long as they arrive within the watermark (make it wider than the spool's TTL).

Transformations are functions of DataFrames; paths, checkpoint and trigger come in as
arguments. Publishing renames files on the driver: a local (or mounted) filesystem. On
Databricks/Synapse, Delta Lake's idempotent writes (``txnAppId``/``txnVersion``) replace it.
"""

from __future__ import annotations

import datetime as dt
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from edge.lake import WATERMARK
from edge.lake.arrow import SchemaBook, decode, payload_batch, payload_keys
from edge.lake.avro import read_content
from edge.lake.local import publish, read_table, recover
from edge.lake.tables import (
    KEYED_INPUT,
    OUTCOMES,
    PARKED,
    PAYLOAD_INPUT,
    PAYLOADS,
    QUARANTINE,
    SCHEMAS,
    SIGNALS,
    STREAMS,
)
from edge.wire.schema import Schema

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.streaming.query import StreamingQuery

__all__ = [
    "BINARY_FILES",
    "decode_frame",
    "main",
    "payloads_of_files",
    "process_batch",
    "run_batch",
    "session",
    "start_stream",
    "write_streams",
]

#: The schema of Spark's ``binaryFile`` source.
BINARY_FILES = "path string, modificationTime timestamp, length long, content binary"
_GLOB = "*.{avro,ctl}"


def _spark_type(schema: pa.Schema) -> Any:
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


def session(master: str | None = "local[2]", app: str = "can-telemetry-lake") -> SparkSession:
    """A SparkSession for the lake: UTC, few shuffle partitions, no UI; Python workers run this
    interpreter (the one with edge installed). ``master`` None: the one spark-submit gives."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder if master is None else SparkSession.builder.master(master)
    return (
        builder.appName(app)
        .config("spark.ui.enabled", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.shuffle.partitions", "2")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "4096")
        .getOrCreate()
    )


def _files_to_payloads(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    for files in batches:
        for name, modified, content in zip(
            files.column("path").to_pylist(),
            files.column("modificationTime").to_pylist(),
            files.column("content").to_pylist(),
            strict=True,
        ):
            when = modified.replace(tzinfo=dt.UTC) if modified and not modified.tzinfo else modified
            try:
                for batch in read_content(name, content, when):
                    yield payload_keys(batch)
            except ValueError as exc:  # not Avro, or another Avro schema: a whole file refused
                print(f"edge.lake.spark: skipped {name}: {exc}", file=sys.stderr)


def payloads_of_files(files: DataFrame) -> DataFrame:
    """``binaryFile`` rows -> one row per payload (:data:`KEYED_INPUT`)."""
    return files.mapInArrow(_files_to_payloads, _spark_type(KEYED_INPUT))


def decode_frame(
    payloads: DataFrame, wires: Sequence[bytes], vehicles: dict[str, str]
) -> tuple[DataFrame, DataFrame]:
    """Decode a frame of payloads (PAYLOAD_INPUT columns) with the given schemas (wire forms):
    (signals rows, one outcome per payload). Both call the one decode function."""
    wires = list(wires)
    inputs = payloads.select(*PAYLOAD_INPUT.names)

    def rows(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        book = SchemaBook.from_wire(wires, vehicles)
        for batch in batches:
            yield decode(batch, book).rows

    def outcomes(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        book = SchemaBook.from_wire(wires, vehicles)
        for batch in batches:
            yield decode(batch, book).outcomes

    return (
        inputs.mapInArrow(rows, _spark_type(SIGNALS)),
        inputs.mapInArrow(outcomes, _spark_type(OUTCOMES)),
    )


def _batch_schemas(payloads: DataFrame, book: SchemaBook) -> dict[str, Schema]:
    """The frame's schema payloads, decoded on the driver into ``book`` (they are few and
    small): the schemas by id (the book also learns their streams' vehicles)."""
    bodies = [r.body for r in payloads.where("kind = 'schema'").select("body").collect()]
    return decode(payload_batch(bodies), book).schemas if bodies else {}


def process_batch(payloads: DataFrame, label: str, lake: str | os.PathLike[str]) -> dict[str, int]:
    """Decode one (deduplicated) frame of payloads (:data:`KEYED_INPUT`) into the lake as run
    ``label``; re-running the same label replaces what it published. Returns counters."""
    import msgpack
    from pyspark.sql import functions as F

    root = Path(lake)
    recover(root)
    spark = payloads.sparkSession
    staging = root / "_staging" / label
    # Parked payloads of earlier batches are retried with this one's.
    parked_files = sorted((root / "_parked").glob("*.parquet"))
    frame = payloads.select(*KEYED_INPUT.names)
    if parked_files:
        old = spark.read.schema(_spark_type(PARKED)).parquet(*[str(p) for p in parked_files])
        # A parked payload delivered again (a re-send, the batch job's next run) is in the
        # frame twice: once is what the lake takes.
        frame = frame.unionByName(
            old.withColumn("key", F.concat_ws(":", "stream", F.col("seq").cast("string")))
            .withColumn("kind", F.lit("data"))
            .select(*KEYED_INPUT.names)
        ).dropDuplicates(["key"])
    frame = frame.persist()
    known = read_table(root, "schemas")
    wires = known.column("wire").to_pylist()
    known_ids = set(known.column("schema").to_pylist())
    book = SchemaBook.from_wire(wires, _stream_vehicles(spark, root))
    decoded_schemas = _batch_schemas(frame, book)
    vehicles = book.vehicles
    new_schemas = []
    now = dt.datetime.now(dt.UTC)
    for schema_id, schema in decoded_schemas.items():
        wire = msgpack.packb(schema.to_stored(), use_bin_type=True)
        wires.append(wire)
        if schema_id not in known_ids:
            new_schemas.append(
                {
                    "schema": schema_id,
                    "wire": wire,
                    "buses": list(schema.buses),
                    "messages": len(schema.messages),
                    "signals": schema.signal_count,
                    "first_seen": now,
                }
            )
    rows, outcomes = decode_frame(frame, wires, vehicles)
    outcomes = outcomes.persist()
    (
        rows.repartition("date")
        .sortWithinPartitions("vehicle", "signal", "time")
        .write.mode("overwrite")
        .partitionBy("date")
        .parquet(str(staging / "signals"))
    )
    ok = outcomes.where("status = 'ok'")
    ok.select(*PAYLOADS.names).repartition("date").sortWithinPartitions(
        "vehicle", "stream", "seq"
    ).write.mode("overwrite").partitionBy("date").parquet(str(staging / "payloads"))
    # A message without body is kept as an empty one, as the single-machine ingest keeps it.
    bad = (
        outcomes.where("status in ('foreign', 'corrupt')")
        .withColumn("body", F.coalesce("body", F.lit(b"")))
        .withColumn("key", F.substring(F.sha2("body", 256), 1, 16))
    )
    bad = bad.withColumn("date", F.coalesce("date", F.to_date("enqueued"), F.current_date()))
    # The same bad payload is kept once: not again when an earlier run quarantined it (the
    # files an earlier attempt of this run published are replaced, so they do not count).
    quarantined = [
        str(p)
        for p in (root / "quarantine").rglob("*.parquet")
        if not p.name.startswith(f"part-{label}-")
    ]
    if quarantined:
        keys = spark.read.schema("key string").parquet(*quarantined)
        bad = bad.join(keys, "key", "left_anti")
    bad.select(*QUARANTINE.names).dropDuplicates(["key"]).write.mode("overwrite").partitionBy(
        "date"
    ).parquet(str(staging / "quarantine"))
    outcomes.where("status = 'parked'").select(*PARKED.names).dropDuplicates(
        ["stream", "seq"]
    ).coalesce(1).write.mode("overwrite").parquet(str(staging / "_parked"))
    staging.mkdir(parents=True, exist_ok=True)
    if new_schemas:
        (staging / "schemas").mkdir(parents=True, exist_ok=True)
        pq.write_table(
            pa.Table.from_pylist(new_schemas, SCHEMAS), staging / "schemas" / "part-0.parquet"
        )
    write_streams(spark, root, staging)
    counts = {row["status"]: row["count"] for row in outcomes.groupBy("status").count().collect()}
    frame.unpersist()
    outcomes.unpersist()
    moves, deletes = _publication(root, staging, label)
    publish(root, label, moves, deletes)
    return counts


def _stream_vehicles(spark: SparkSession, root: Path) -> dict[str, str]:
    """The vehicle each stream's schema payloads named, from the lake's ``payloads`` (read by
    Spark; schema payloads are few): a payload without ``vehicle`` property (the outbox) of a
    stream whose schema payload an earlier batch took is named as the local ingest names it."""
    from pyspark.sql.types import StructType

    files = [str(p) for p in (root / "payloads").rglob("*.parquet")]
    if not files:
        return {}
    names = ("stream", "vehicle", "kind")
    columns = StructType([f for f in _spark_type(PAYLOADS).fields if f.name in names])
    rows = (
        spark.read.schema(columns)
        .parquet(*files)
        .where("kind = 'schema' and vehicle is not null")
        .select("stream", "vehicle")
        .distinct()
        .collect()
    )
    return {r["stream"]: r["vehicle"] for r in rows}


def write_streams(
    spark: SparkSession, root: Path, staging: Path, replaced: Iterable[Path] = ()
) -> None:
    """Stage the ``streams`` table from every payload (published, except the ``replaced``
    files, and staged): gaps with a window."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    gone = set(replaced)
    sources = [str(p) for p in (root / "payloads").rglob("*.parquet") if p not in gone]
    sources += [str(p) for p in (staging / "payloads").rglob("*.parquet")]
    schema = _spark_type(PAYLOADS).fields
    columns = [f for f in schema if f.name != "date"]
    from pyspark.sql.types import StructType

    if not sources:
        return
    payloads = spark.read.schema(StructType(columns)).parquet(*sources)
    ordered = Window.partitionBy("stream").orderBy("seq")
    gaps = (
        payloads.withColumn("previous", F.lag("seq").over(ordered))
        .where(F.col("seq") > F.col("previous") + 1)
        .groupBy("stream")
        .agg(
            F.sort_array(F.collect_list(F.array(F.col("previous") + 1, F.col("seq") - 1))).alias(
                "gaps"
            ),
            F.sum(F.col("seq") - F.col("previous") - 1).alias("missing"),
        )
    )
    streams = (
        payloads.groupBy("stream")
        .agg(
            F.max("vehicle").alias("vehicle"),
            F.max("device").alias("device"),
            F.min("seq").alias("first_seq"),
            F.max("seq").alias("last_seq"),
            F.count("*").alias("payloads"),
            F.min("t0").alias("first_time"),
            F.max("t1").alias("last_time"),
        )
        .join(gaps, "stream", "left")
        .withColumn("missing", F.coalesce("missing", F.lit(0)).cast("long"))
        .withColumn("gaps", F.coalesce("gaps", F.array().cast("array<array<bigint>>")))
    )
    streams.select(*STREAMS.names).orderBy("stream").coalesce(1).write.mode("overwrite").parquet(
        str(staging / "streams")
    )


def _publication(root: Path, staging: Path, label: str) -> tuple[list[tuple[str, str]], list[Path]]:
    """Renames of the staged files to ``part-{label}-{n}.parquet`` and the files to delete: an
    earlier attempt's of this label, the parked and streams files this run replaces."""
    moves: list[tuple[str, str]] = []
    for n, staged in enumerate(sorted(staging.rglob("*.parquet"))):
        relative = staged.relative_to(staging)
        target = relative.parent / f"part-{label}-{n:05d}.parquet"
        moves.append((str(staged.relative_to(root)), str(target)))
    deletes = [p for p in root.glob(f"*/**/part-{label}-*.parquet") if "_staging" not in p.parts]
    deletes += [p for p in (root / "_parked").glob("*.parquet")]
    deletes += [p for p in (root / "streams").glob("*.parquet")]
    targets = {root / t for _, t in moves}
    return moves, sorted({p for p in deletes if p not in targets})


def run_batch(
    spark: SparkSession, sources: Sequence[str], lake: str | os.PathLike[str], label: str
) -> dict[str, int]:
    """The batch job (backfills): every payload of ``sources`` (files or folders) not already in
    the lake, deduplicated, decoded and published as run ``label``."""
    files = (
        spark.read.format("binaryFile")
        .option("recursiveFileLookup", "true")
        .option("pathGlobFilter", _GLOB)
        .load(list(sources))
    )
    from pyspark.sql import functions as F
    from pyspark.sql.types import StructType

    payloads = payloads_of_files(files).dropDuplicates(["key"])
    # The lake's keys are read by Spark (executors, column pruning), never collected on the
    # driver: the anti-join scales with the cluster, not with the driver's memory.
    published = [str(p) for p in (Path(lake) / "payloads").rglob("*.parquet")]
    if published:
        columns = StructType(
            [f for f in _spark_type(PAYLOADS).fields if f.name in ("stream", "seq")]
        )
        seen = (
            spark.read.schema(columns)
            .parquet(*published)
            .select(F.concat_ws(":", "stream", F.col("seq").cast("string")).alias("key"))
        )
        payloads = payloads.join(seen, "key", "left_anti")
    return process_batch(payloads, label, lake)


def start_stream(
    spark: SparkSession,
    source: str,
    lake: str | os.PathLike[str],
    checkpoint: str,
    *,
    watermark: str = WATERMARK,
    available_now: bool = False,
    max_files_per_trigger: int | None = None,
) -> StreamingQuery:
    """Start the streaming job on the files arriving under ``source``. ``available_now``: take
    what is there and stop (a scheduled job); else run until stopped."""
    reader = (
        spark.readStream.format("binaryFile")
        .schema(BINARY_FILES)
        .option("recursiveFileLookup", "true")
        .option("pathGlobFilter", _GLOB)
    )
    if max_files_per_trigger:
        reader = reader.option("maxFilesPerTrigger", str(max_files_per_trigger))
    payloads = (
        payloads_of_files(reader.load(source))
        .withWatermark("enqueued", watermark)
        .dropDuplicatesWithinWatermark(["key"])
    )

    def each(batch: DataFrame, batch_id: int) -> None:
        # Spark runs batches without data to move the watermark on: nothing to publish.
        if not batch.isEmpty():
            process_batch(batch, f"s{batch_id:09d}", lake)

    writer = (
        payloads.writeStream.foreachBatch(each)
        .option("checkpointLocation", checkpoint)
        .queryName("can-telemetry-lake")
    )
    if available_now:
        writer = writer.trigger(availableNow=True)
    return writer.start()


def main(argv: Sequence[str] | None = None) -> int:
    """``spark-submit .../edge/lake/spark.py stream|batch|repair ...``: the jobs on the master
    spark-submit gives (see docs/lake.md)."""
    import argparse

    parser = argparse.ArgumentParser(prog="edge/lake/spark.py")
    sub = parser.add_subparsers(dest="job", required=True)
    stream = sub.add_parser("stream")
    stream.add_argument("source")
    stream.add_argument("--lake", required=True)
    stream.add_argument("--checkpoint", required=True)
    stream.add_argument("--watermark", default=WATERMARK)
    stream.add_argument("--available-now", action="store_true")
    batch = sub.add_parser("batch")
    batch.add_argument("sources", nargs="+")
    batch.add_argument("--lake", required=True)
    fix = sub.add_parser("repair")
    fix.add_argument("--lake", required=True)
    fix.add_argument("--from", dest="start", type=dt.date.fromisoformat)
    fix.add_argument("--to", dest="end", type=dt.date.fromisoformat)
    args = parser.parse_args(argv)
    spark = session(None)
    if args.job == "repair":
        from edge.lake.repair import repair

        print(repair(spark, args.lake, start=args.start, end=args.end).as_dict())
        return 0
    if args.job == "stream":
        start_stream(
            spark,
            args.source,
            args.lake,
            args.checkpoint,
            watermark=args.watermark,
            available_now=args.available_now,
        ).awaitTermination()
    else:
        label = "b" + dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S")
        print(run_batch(spark, args.sources, args.lake, label))
    return 0


if __name__ == "__main__":
    sys.exit(main())
