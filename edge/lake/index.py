"""The lake's key index: which (stream, seq) and which quarantined bodies are already in the lake,
on disk in SQLite (``_index.sqlite`` beside the tables), so the single-machine ingest's memory does
not grow with the lake.

The tables stay the truth; the index is a cache of two of them, kept in step by their files. Each
indexed Parquet file of ``payloads`` and ``quarantine`` is listed with its size and mtime; before a
run, :meth:`KeyIndex.sync` compares that list with the folders: a file that appeared (published by
the Spark jobs, or by a local run killed between its journal and the index's commit) has its keys
read and added; a file that went or changed (a Spark batch replayed) has its keys dropped (with
those of the run that wrote it, whose other files are read again). So a lost, stale or missing
index is rebuilt from the tables, never trusted over them.

A run adds its keys inside one SQLite transaction (a duplicate within the run is refused by the
primary key, like one from an earlier run) and commits it, with its files' list, after its journal
is written and before its files are renamed into place (:func:`edge.lake.local.publish`): a run
killed before the journal leaves nothing in the index (SQLite rolls the transaction back), one
killed after is rolled forward and its files are found by the next sync if the commit did not
happen.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

__all__ = ["INDEX_FILE", "KeyIndex", "StreamKeys", "SyncReport"]

#: The index's file, in the lake's folder.
INDEX_FILE = "_index.sqlite"
#: The tables whose keys the index holds.
_INDEXED = ("payloads", "quarantine")

_SCHEMA = """
create table if not exists streams (
    id integer primary key,
    stream text not null unique,
    vehicle text  -- the vehicle its schema payload named (for decoding its data payloads)
);
create table if not exists keys (
    stream integer not null,
    seq integer not null,
    unit integer not null,
    primary key (stream, seq)
) without rowid;
create table if not exists quarantine_keys (
    key text primary key,
    unit integer not null
) without rowid;
create table if not exists units (id integer primary key);
create table if not exists files (
    path text primary key,
    size integer not null,
    mtime_ns integer not null,
    unit integer not null
);
"""


@dataclass(frozen=True)
class SyncReport:
    """What :meth:`KeyIndex.sync` did: files read into the index, files dropped from it."""

    added: int
    dropped: int


@dataclass(frozen=True)
class StreamKeys:
    """What the index knows of one stream's sequence numbers."""

    first: int
    last: int
    count: int
    gaps: list[list[int]]


class KeyIndex:
    """The on-disk key index of one lake (see the module docstring). Not thread-safe; one per
    ingest, under the lake's lock."""

    def __init__(self, lake: Path) -> None:
        self.lake = lake
        self._db = sqlite3.connect(lake / INDEX_FILE, isolation_level=None)
        self._db.executescript(_SCHEMA)
        self._ids: dict[str, int] = {}
        self._unit: int | None = None

    def close(self) -> None:
        """Roll back what was not committed and close the file."""
        if self._db.in_transaction:
            self._db.execute("rollback")
        self._db.close()

    # -- keeping in step with the tables' files ------------------------------------------------

    def _files_on_disk(self) -> dict[str, tuple[int, int]]:
        found: dict[str, tuple[int, int]] = {}
        for table in _INDEXED:
            folder = self.lake / table
            if not folder.is_dir():
                continue
            for path in folder.rglob("*.parquet"):
                stat = path.stat()
                found[path.relative_to(self.lake).as_posix()] = (stat.st_size, stat.st_mtime_ns)
        return found

    def sync(self) -> SyncReport:
        """Bring the index in step with the ``payloads`` and ``quarantine`` files (committed)."""
        on_disk = self._files_on_disk()
        stale: set[int] = set()
        for path, size, mtime_ns, unit in self._db.execute(
            "select path, size, mtime_ns, unit from files"
        ):
            if on_disk.get(path) != (size, mtime_ns):
                stale.add(unit)
        self._db.execute("begin immediate")
        try:
            dropped = 0
            if stale:
                marks = ",".join("?" * len(stale))
                units = sorted(stale)
                dropped = self._db.execute(
                    f"select count(*) from files where unit in ({marks})", units
                ).fetchone()[0]
                for table in ("keys", "quarantine_keys", "files", "units"):
                    column = "id" if table == "units" else "unit"
                    self._db.execute(f"delete from {table} where {column} in ({marks})", units)
            indexed = {path for (path,) in self._db.execute("select path from files")}
            added = 0
            for path, (size, mtime_ns) in sorted(on_disk.items()):
                if path in indexed:
                    continue
                unit = self._new_unit()
                self._read_file(path, unit)
                self._db.execute(
                    "insert into files values (?, ?, ?, ?)", (path, size, mtime_ns, unit)
                )
                added += 1
            self._db.execute("commit")
        except BaseException:
            self._db.execute("rollback")
            raise
        return SyncReport(added=added, dropped=dropped)

    def _read_file(self, relative: str, unit: int) -> None:
        """Add the keys of one table file (read a batch at a time)."""
        path = self.lake / relative
        if relative.startswith("quarantine/"):
            for batch in pq.ParquetFile(path).iter_batches(columns=["key"]):
                self._db.executemany(
                    "insert or ignore into quarantine_keys values (?, ?)",
                    ((key, unit) for key in batch.column("key").to_pylist()),
                )
            return
        for batch in pq.ParquetFile(path).iter_batches(
            columns=["stream", "seq", "kind", "vehicle"]
        ):
            streams, seqs = batch.column("stream").to_pylist(), batch.column("seq").to_pylist()
            self._db.executemany(
                "insert or ignore into keys values (?, ?, ?)",
                ((self.stream_id(s), q, unit) for s, q in zip(streams, seqs, strict=True)),
            )
            schemas = batch.filter(pc.equal(batch.column("kind"), "schema"))
            for stream, vehicle in zip(
                schemas.column("stream").to_pylist(),
                schemas.column("vehicle").to_pylist(),
                strict=True,
            ):
                self.note_vehicle(stream, vehicle)

    def _new_unit(self) -> int:
        unit = self._db.execute("insert into units default values").lastrowid
        assert unit is not None
        return unit

    # -- a run ---------------------------------------------------------------------------------

    def begin(self) -> None:
        """Start a run: what it adds is visible to it and kept only by :meth:`commit`."""
        self._db.execute("begin immediate")
        self._unit = self._new_unit()

    def stream_id(self, stream: str) -> int:
        """The index's number for ``stream`` (added if new)."""
        known = self._ids.get(stream)
        if known is not None:
            return known
        row = self._db.execute("select id from streams where stream = ?", (stream,)).fetchone()
        if row is None:
            cursor = self._db.execute("insert into streams (stream) values (?)", (stream,))
            assert cursor.lastrowid is not None
            row = (cursor.lastrowid,)
        self._ids[stream] = row[0]
        return int(row[0])

    def add(self, stream: str, seq: int) -> bool:
        """Add a payload's key; False when it was there already (a duplicate)."""
        cursor = self._db.execute(
            "insert or ignore into keys values (?, ?, ?)", (self.stream_id(stream), seq, self._unit)
        )
        return cursor.rowcount == 1

    def __contains__(self, key: tuple[str, int]) -> bool:
        stream, seq = key
        row = self._db.execute(
            "select 1 from keys join streams on streams.id = keys.stream "
            "where streams.stream = ? and keys.seq = ?",
            (stream, seq),
        ).fetchone()
        return row is not None

    def add_quarantined(self, key: str) -> bool:
        """Add a quarantined body's key; False when it was there already."""
        cursor = self._db.execute(
            "insert or ignore into quarantine_keys values (?, ?)", (key, self._unit)
        )
        return cursor.rowcount == 1

    def note_vehicle(self, stream: str, vehicle: str | None) -> None:
        """Remember the vehicle a stream's schema payload named (the first one kept)."""
        if vehicle:
            self._db.execute(
                "update streams set vehicle = ? where id = ? and vehicle is null",
                (vehicle, self.stream_id(stream)),
            )

    def vehicles(self) -> dict[str, str]:
        """Each stream's vehicle, as its schema payload named it."""
        return dict(self._db.execute("select stream, vehicle from streams where vehicle not null"))

    def stream_keys(self, stream: str) -> StreamKeys | None:
        """First, last and count of a stream's sequence numbers, and the ranges missing between
        them (computed in SQLite: a window over the primary key, nothing held here)."""
        sid = self.stream_id(stream)
        first, last, count = self._db.execute(
            "select min(seq), max(seq), count(*) from keys where stream = ?", (sid,)
        ).fetchone()
        if not count:
            return None
        gaps = [
            [a, b]
            for a, b in self._db.execute(
                "select seq + 1, next - 1 from (select seq, lead(seq) over (order by seq) as next "
                "from keys where stream = ?) where next > seq + 1",
                (sid,),
            )
        ]
        return StreamKeys(first=first, last=last, count=count, gaps=gaps)

    def commit(self, files: Iterable[tuple[str, Path]]) -> None:
        """Keep the run: list its published files (path relative to the lake, and the staged
        file whose size and mtime the published one will have) and commit."""
        for relative, staged in files:
            if relative.split("/", 1)[0] not in _INDEXED:
                continue
            stat = staged.stat()
            self._db.execute(
                "insert or replace into files values (?, ?, ?, ?)",
                (relative, stat.st_size, stat.st_mtime_ns, self._unit),
            )
        self._db.execute("commit")
        self._unit = None

    def keys(self) -> Iterator[tuple[str, int]]:
        """Every payload key (for checks and tests; streamed from SQLite)."""
        yield from self._db.execute(
            "select streams.stream, keys.seq from keys join streams on streams.id = keys.stream"
        )
