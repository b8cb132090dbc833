"""The single-machine lake ingest (``can-telemetry lake ingest SOURCE... --lake DIR``): no JVM,
the same decode function and the same tables and layout as the Spark jobs (docs/lake.md).

Exactly once, with memory that does not grow with the lake: the (stream, seq) already ingested
are in an on-disk index (:mod:`edge.lake.index`, SQLite beside the tables, a cache of the
``payloads`` and ``quarantine`` tables kept in step by their files), so a payload seen before (a
re-send, the same file twice) is dropped and counted. A run is made atomic by staging and a
journal: every file is first written under ``_staging/<run>/``; then ``_journal/<run>.json``
(written atomically) lists the renames and deletions that publish the run; then the index commits
the run's keys; then the renames are done and the journal removed. A run killed before its
journal exists left only staging files (removed at the next start, the run never happened) and an
uncommitted index transaction (rolled back by SQLite); one killed after is rolled forward at the
next start (each step is idempotent) and its files indexed then if the index had not committed.
One ingest at a time per lake (an exclusive ``flock`` on ``_lock``).

Data payloads whose schema has not arrived are *parked* in ``_parked`` and retried at every
ingest; the same run retries them once more after its last file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import itertools
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from edge.lake.arrow import SchemaBook, decode
from edge.lake.avro import read_source, source_files
from edge.lake.index import KeyIndex
from edge.lake.tables import (
    PARKED,
    PAYLOAD_INPUT,
    PAYLOADS,
    QUARANTINE,
    SCHEMAS,
    SIGNALS,
    SIGNALS_SORT,
    STREAMS,
)

__all__ = ["IngestReport", "gaps", "ingest", "locked", "publish", "read_table", "recover"]

#: Rows staged in memory before a sorted file is written.
_FLUSH_ROWS = 1_000_000


@dataclass
class IngestReport:
    """What one ingest did. Every payload read is counted exactly once in ``payloads`` and in
    one of ``new``, ``duplicates``, ``parked``, ``foreign``, ``corrupt``."""

    run: str
    files: int = 0
    payloads: int = 0
    new: int = 0
    duplicates: int = 0
    parked: int = 0
    unparked: int = 0
    foreign: int = 0
    corrupt: int = 0
    rows: int = 0
    schemas: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The counters, for printing as JSON."""
        return dict(self.__dict__)


def read_table(lake: Path, name: str, columns: Sequence[str] | None = None) -> pa.Table:
    """A table of the lake (empty when it has no file yet), partition column included."""
    from edge.lake.tables import TABLES

    schema, partitioned = TABLES.get(name, (PARKED, False))
    folder = lake / name
    files = sorted(str(p) for p in folder.rglob("*.parquet")) if folder.is_dir() else []
    if not files:
        table = schema.empty_table()
        return table.select(list(columns)) if columns is not None else table
    dataset = ds.dataset(
        files,
        schema=schema,
        format="parquet",
        partitioning=ds.partitioning(pa.schema([schema.field("date")]), flavor="hive")
        if partitioned
        else None,
        partition_base_dir=str(folder) if partitioned else None,
    )
    return dataset.to_table(columns=list(columns) if columns is not None else None)


def gaps(seqs: Iterable[int]) -> list[list[int]]:
    """The [first, last] ranges missing between the smallest and the largest of ``seqs``."""
    ordered = sorted(set(seqs))
    return [[a + 1, b - 1] for a, b in itertools.pairwise(ordered) if b > a + 1]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json(path: Path, data: object) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    with temp.open("w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    _fsync_dir(path.parent)


def recover(lake: Path) -> int:
    """Finish (roll forward) runs whose journal was written, remove staging of runs that never
    got one. Returns the number of runs rolled forward."""
    journal_dir, staging = lake / "_journal", lake / "_staging"
    done = 0
    if journal_dir.is_dir():
        for journal in sorted(journal_dir.glob("*.json")):
            steps = json.loads(journal.read_text())
            _apply(lake, steps)
            journal.unlink()
            shutil.rmtree(staging / journal.stem, ignore_errors=True)
            done += 1
    if staging.is_dir():
        for leftover in staging.iterdir():
            shutil.rmtree(leftover, ignore_errors=True)
    return done


def _apply(lake: Path, steps: dict[str, Any]) -> None:
    """Do a journal's steps; each is idempotent (a rename whose source is gone was done)."""
    for relative in steps["delete"]:
        with contextlib.suppress(FileNotFoundError):
            (lake / relative).unlink()
    for source, target in steps["move"]:
        src, dst = lake / source, lake / target
        if src.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    for folder in {str(Path(t).parent) for _, t in steps["move"]}:
        _fsync_dir(lake / folder)


class _Stage:
    """Files of one run under ``_staging/<run>/``, to be published by the journal."""

    def __init__(self, lake: Path, run: str) -> None:
        self.lake, self.run = lake, run
        self.root = lake / "_staging" / run
        self.moves: list[tuple[str, str]] = []
        self._count = 0

    def write(self, table: str, data: pa.Table, date: dt.date | None = None) -> None:
        """Stage one Parquet file of ``table`` (``date``: its partition; the column is then
        taken from the folder name, not stored)."""
        if data.num_rows == 0:
            return
        folder = Path(table) if date is None else Path(table, f"date={date.isoformat()}")
        if date is not None:
            data = data.drop_columns(["date"])
        name = f"part-{self.run}-{self._count:05d}.parquet"
        self._count += 1
        staged = self.root / folder / name
        staged.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(data, staged, compression="zstd")
        with open(staged, "rb+") as f:
            os.fsync(f.fileno())
        self.moves.append((str(staged.relative_to(self.lake)), str(folder / name)))

    def write_partitioned(self, table: str, data: pa.Table, sort: Any = None) -> None:
        """Stage ``data`` as one file per event date, sorted inside."""
        if data.num_rows == 0:
            return
        for date in pc.unique(data.column("date")).to_pylist():
            part = data.filter(pc.equal(data.column("date"), pa.scalar(date, pa.date32())))
            if date is None:
                raise ValueError(f"{table}: rows without a date")
            self.write(table, part.sort_by(sort) if sort else part, date)


def _run_id() -> str:
    now = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{now}-{secrets.token_hex(3)}"


@contextlib.contextmanager
def locked(lake: Path) -> Iterator[None]:
    """Hold the lake's exclusive lock (``flock`` on ``_lock``): one ingest or repair at a time."""
    lake.mkdir(parents=True, exist_ok=True)
    with (lake / "_lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def ingest(
    sources: Sequence[str | os.PathLike[str]],
    lake: str | os.PathLike[str],
    *,
    on_file: Callable[[Path], None] | None = None,
) -> IngestReport:
    """Decode every payload of ``sources`` (Avro files of IoT Hub routing or Capture, outbox
    ``*.ctl`` files, or folders of them) into the lake, exactly once (see the module docstring).

    A file that cannot be read (not Avro, another Avro schema) is reported in ``errors`` and
    skipped; it never stops the others. ``on_file`` is called after each file (progress, tests).
    """
    root = Path(lake)
    files = source_files(sources)
    with locked(root):
        recover(root)
        return _ingest(files, root, on_file)


def _ingest(files: list[Path], lake: Path, on_file: Callable[[Path], None] | None) -> IngestReport:
    index = KeyIndex(lake)
    try:
        index.sync()
        index.begin()
        return _ingest_indexed(files, lake, index, on_file)
    finally:
        index.close()


def _ingest_indexed(
    files: list[Path], lake: Path, index: KeyIndex, on_file: Callable[[Path], None] | None
) -> IngestReport:
    report = IngestReport(run=_run_id())
    stage = _Stage(lake, report.run)
    schemas_table = read_table(lake, "schemas")
    known_schemas = set(schemas_table.column("schema").to_pylist())
    book = SchemaBook.from_wire(schemas_table.column("wire").to_pylist(), index.vehicles())
    old_parked_files = sorted((lake / "_parked").glob("*.parquet"))
    parked_before = read_table(lake, "_parked")
    new_payloads: list[pa.RecordBatch] = []
    new_quarantine: list[dict[str, Any]] = []
    new_schemas: list[dict[str, Any]] = []
    signals: list[pa.RecordBatch] = []
    staged_rows = 0
    # Payloads (and their rows) that came without a ``vehicle`` property (the outbox) before
    # any schema payload of their stream: named at the end of the run, when a schema payload of
    # theirs that came later in the run names the vehicle (else the device, as decoded).
    unnamed_payloads: list[pa.RecordBatch] = []
    unnamed_rows: list[pa.RecordBatch] = []
    parked: dict[tuple[str, int], dict[str, Any]] = {}

    def take(batch: pa.RecordBatch, retry: bool) -> None:
        nonlocal staged_rows
        decoded = decode(batch, book)
        outcomes = decoded.outcomes
        keep = [False] * outcomes.num_rows
        status = outcomes.column("status").to_pylist()
        streams = outcomes.column("stream").to_pylist()
        seqs = outcomes.column("seq").to_pylist()
        kinds = outcomes.column("kind").to_pylist()
        vehicles = outcomes.column("vehicle").to_pylist()
        if not retry:
            report.payloads += outcomes.num_rows
        for i, state in enumerate(status):
            key = (streams[i], seqs[i])
            if state == "ok":
                if not index.add(*key):
                    report.duplicates += 1
                    continue
                if kinds[i] == "schema":
                    index.note_vehicle(key[0], vehicles[i])
                keep[i] = True
                report.new += 1
                if retry:
                    report.unparked += 1
                if parked.pop(key, None) is not None:  # an earlier copy waiting for its schema
                    report.duplicates += 1
            elif state == "parked":
                if key in parked or key in index:
                    report.duplicates += 1
                    continue
                parked[key] = {name: batch.column(name)[i].as_py() for name in PAYLOAD_INPUT.names}
                parked[key].update(stream=key[0], seq=key[1])
            else:
                setattr(report, state, getattr(report, state) + 1)
                body = outcomes.column("body")[i].as_py() or b""
                digest = hashlib.sha256(body).hexdigest()[:16]
                if not index.add_quarantined(digest):
                    continue
                enqueued = outcomes.column("enqueued")[i].as_py()
                new_quarantine.append(
                    {
                        "date": (enqueued or dt.datetime.now(dt.UTC)).date(),
                        "key": digest,
                        "status": state,
                        "reason": outcomes.column("reason")[i].as_py(),
                        "device": outcomes.column("device")[i].as_py(),
                        "enqueued": enqueued,
                        "origin": outcomes.column("origin")[i].as_py(),
                        "body": body,
                    }
                )
        for schema_id, schema in decoded.schemas.items():
            if schema_id not in known_schemas:
                known_schemas.add(schema_id)
                new_schemas.append(
                    {
                        "schema": schema_id,
                        "wire": msgpack.packb(schema.to_stored(), use_bin_type=True),
                        "buses": list(schema.buses),
                        "messages": len(schema.messages),
                        "signals": schema.signal_count,
                        "first_seen": dt.datetime.now(dt.UTC),
                    }
                )
        properties = batch.column("vehicle").to_pylist()
        unnamed = [
            k and not properties[i] and streams[i] not in book.vehicles for i, k in enumerate(keep)
        ]
        if any(unnamed):
            held = pa.array(unnamed)
            keep = [k and not u for k, u in zip(keep, unnamed, strict=True)]
            unnamed_payloads.append(outcomes.filter(held).select(PAYLOADS.names))
            if decoded.rows.num_rows:
                held_rows = decoded.rows.filter(pc.take(held, decoded.payload_index))
                report.rows += held_rows.num_rows
                unnamed_rows.append(held_rows)
        mask = pa.array(keep)
        new_payloads.append(outcomes.filter(mask).select(PAYLOADS.names))
        rows = decoded.rows
        if rows.num_rows:
            row_keep = pc.take(mask, decoded.payload_index)
            rows = rows.filter(row_keep)
            report.rows += rows.num_rows
            signals.append(rows)
            staged_rows += rows.num_rows
            if staged_rows >= _FLUSH_ROWS:
                flush()

    def flush() -> None:
        nonlocal staged_rows
        if signals:
            stage.write_partitioned(
                "signals", pa.Table.from_batches(signals, SIGNALS), SIGNALS_SORT
            )
        signals.clear()
        staged_rows = 0

    if parked_before.num_rows:
        take(_input(parked_before.to_pylist()), True)
    for path in files:
        try:
            for batch in read_source(path):
                take(batch, False)
        except (ValueError, OSError) as exc:
            report.errors.append(f"{path}: {exc}")
        report.files += 1
        if on_file is not None:
            on_file(path)
    if parked:  # a schema that came later in this run
        waiting = list(parked.values())
        parked.clear()
        take(_input(waiting), True)  # parks again those still without a schema
    report.parked = len(parked)
    report.schemas = len(new_schemas)
    signals.extend(_named(b, book.vehicles) for b in unnamed_rows)
    new_payloads.extend(_named(b, book.vehicles) for b in unnamed_payloads)
    flush()
    payload_table = pa.Table.from_batches(new_payloads, PAYLOADS)
    stage.write_partitioned(
        "payloads",
        payload_table,
        [("vehicle", "ascending"), ("stream", "ascending"), ("seq", "ascending")],
    )
    stage.write_partitioned("quarantine", pa.Table.from_pylist(new_quarantine, QUARANTINE))
    stage.write("schemas", pa.Table.from_pylist(new_schemas, SCHEMAS))
    stage.write("_parked", pa.Table.from_pylist(list(parked.values()), PARKED))
    stage.write("streams", _streams(read_table(lake, "streams"), payload_table, index))
    old_streams = sorted((lake / "streams").glob("*.parquet"))
    publish(
        lake,
        report.run,
        stage.moves,
        [*old_parked_files, *old_streams],
        before_apply=lambda: index.commit(
            (target, lake / staged) for staged, target in stage.moves
        ),
    )
    return report


def publish(
    lake: Path,
    run: str,
    moves: Sequence[tuple[str, str]],
    deletes: Sequence[Path],
    *,
    before_apply: Callable[[], None] | None = None,
) -> None:
    """Make a staged run part of the lake, all or nothing: write its journal (the commit
    point), call ``before_apply`` (the local ingest commits its key index there), delete
    ``deletes``, rename each staged file (``moves``: paths relative to the lake) into place, then
    drop the journal and the run's staging folder."""
    steps = {"move": list(moves), "delete": [str(p.relative_to(lake)) for p in deletes]}
    journal = lake / "_journal" / f"{run}.json"
    journal.parent.mkdir(parents=True, exist_ok=True)
    _write_json(journal, steps)
    if before_apply is not None:
        before_apply()
    _apply(lake, steps)
    journal.unlink()
    shutil.rmtree(lake / "_staging" / run, ignore_errors=True)


def _named(batch: pa.RecordBatch, vehicles: dict[str, str]) -> pa.RecordBatch:
    """``batch`` with the vehicle its stream's schema payload named, where one did."""
    streams, known = batch.column("stream").to_pylist(), batch.column("vehicle").to_pylist()
    named = [vehicles.get(s, v) for s, v in zip(streams, known, strict=True)]
    index = batch.schema.get_field_index("vehicle")
    return batch.set_column(index, "vehicle", pa.array(named, pa.string()))


def _input(parked: list[dict[str, Any]]) -> pa.RecordBatch:
    """Parked payloads as a decode input batch."""
    names = PAYLOAD_INPUT.names
    return pa.RecordBatch.from_pylist([{k: p[k] for k in names} for p in parked], PAYLOAD_INPUT)


def _streams(old: pa.Table, payloads: pa.Table, index: KeyIndex) -> pa.Table:
    """The ``streams`` table: ``old``'s rows, those of the streams ``payloads`` added to brought
    up to date (sequence numbers and gaps from the index, times and names from the rows)."""
    rows = {row["stream"]: row for row in old.to_pylist()}
    columns = payloads.select(["stream", "vehicle", "device", "t0", "t1"]).to_pydict()
    touched: dict[str, dict[str, Any]] = {}
    for stream, vehicle, device, t0, t1 in zip(*columns.values(), strict=True):
        entry = touched.get(stream)
        if entry is None:
            before = rows.get(stream, {})
            entry = touched[stream] = {
                "vehicle": before.get("vehicle"),
                "device": before.get("device"),
                "t0": [x for x in [before.get("first_time")] if x is not None],
                "t1": [x for x in [before.get("last_time")] if x is not None],
            }
        entry["vehicle"] = entry["vehicle"] or vehicle
        entry["device"] = entry["device"] or device
        if t0 is not None:
            entry["t0"].append(t0)
            entry["t1"].append(t1)
    for stream, entry in touched.items():
        keys = index.stream_keys(stream)
        assert keys is not None, stream  # the run added its payloads' keys
        rows[stream] = {
            "stream": stream,
            "vehicle": entry["vehicle"],
            "device": entry["device"],
            "first_seq": keys.first,
            "last_seq": keys.last,
            "payloads": keys.count,
            "missing": sum(b - a + 1 for a, b in keys.gaps),
            "gaps": keys.gaps,
            "first_time": min(entry["t0"]) if entry["t0"] else None,
            "last_time": max(entry["t1"]) if entry["t1"] else None,
        }
    return pa.Table.from_pylist([rows[s] for s in sorted(rows)], STREAMS)
