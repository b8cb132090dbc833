"""The durable spool: every accepted payload waits here, on disk, until an uplink confirms it.

A car loses connectivity for days and power without warning. The spool is therefore the only
backlog in the system (nothing waits in memory), it is bounded on disk, and it survives a kill -9
or a power cut at any instant.

Storage is one SQLite file (standard library) in WAL mode:

* ``spool`` holds pending payloads keyed by ``seq``, the gap-free sequence number of this stream.
* ``dead_letter`` holds payloads an uplink rejected permanently (see :meth:`Spool.dead_letter`).
* ``meta`` is one row: the stream id, the next sequence number and the persisted counters. It is
  updated in the same transaction as the rows, so numbering continues across restarts without gap.

Durability. "Accepted" means: :meth:`Spool.append` returned. The connection runs with
``PRAGMA synchronous=FULL``: in WAL mode every commit then fsyncs the WAL, so a returned append
survives a power cut. ``NORMAL`` would never corrupt the file either, but it may roll back the last
commits on power loss -- batches the pipeline already considered safe. The cost of FULL is one
fsync per append and per ack. Measured with 20 KB payloads on ext4 (a virtual disk): about 5,500
appends/s with FULL against 11,700 with NORMAL; on eMMC or an SD card an fsync takes milliseconds,
which still leaves hundreds of appends per second for a pipeline that closes a few batches per
second at most.

Flash wear. A new file uses 1 KiB pages (SQLite's default is 4 KiB): a payload costs two small
commits (append, ack) that each rewrite a few b-tree, meta and pointer-map pages in the WAL, and
at 4 KiB those pages, not the payload, were most of what reached the device. Measured with
``benchmarks/wear.py`` (30 minutes of the demo car, 3.6 KB payloads, ext4): bytes written per
payload byte fell from 13.5x to 8.5x with the link up and from 18.8x to 9.2x through an outage,
with the same durability (every commit still fsynced). An existing file keeps its page size.

Disk bound. ``max_bytes`` caps the database plus its ``-wal`` file. The WAL is kept small by
checkpointing every ``max_bytes / 64`` bytes (between 8 pages and 4 MiB) and
truncating it to that size (``journal_size_limit``); the rest is the budget of the database,
measured in real pages (``page_count - freelist_count``). An append that would not fit first
deletes the oldest rows (dead letters first, then pending payloads, never the newest) and counts
them in ``dropped_full``.
Deleted pages are reused, so the file stops growing at the cap; when the spool becomes empty the
free pages are given back to the file system (``auto_vacuum=INCREMENTAL``). Tolerance: db + wal
may exceed ``max_bytes`` by about one transaction (the largest payload plus a few pages); the
``-shm`` index (32 KiB) is not counted.

Age bound (optional). With ``ttl``, pending payloads appended more than ``ttl`` seconds ago are
deleted from the front of the stream and counted in ``dropped_ttl``. Ages (and ``oldest_age``)
are measured on the spool's own clock, never on the wall clock: a gateway without RTC boots in
1970, spools offline, then NTP sets the date, and a wall-clock TTL would delete the whole backlog
at once. The spool clock is the monotonic clock, carried across restarts in ``meta.clock``
(saved with every append and at close); time while the gateway is off does not count.

Disk full (SQLITE_FULL) or an I/O error: the append is refused with :class:`SpoolError` and
nothing already spooled is touched. Deleting old rows would not give the file system any space
back (SQLite keeps the pages), so the remedy is a ``max_bytes`` below the free space, which makes
the cap policy above act first.

Corruption. A file that is not a database, is truncated, fails ``PRAGMA quick_check`` at open, is
not a spool, or reports SQLITE_CORRUPT / SQLITE_NOTADB during operation is moved aside with its
``-wal`` and ``-shm`` to ``<name>.corrupt-<UTC timestamp>`` (kept for inspection), logged, counted
in ``recovered_corrupt``, and a fresh spool with a new stream id takes its place; the operation is
then retried once on it. The new file's counters start at zero, except ``recovered_corrupt``,
which goes on from the count this process knew. At most :data:`CORRUPT_KEPT` such files are kept
(the oldest deleted first, and all but the newest once together they exceed ``max_bytes / 2``),
counted in ``corrupt_deleted``; the free-space budget sees the ones kept. ``quick_check`` walks
the whole file at start-up: 1.6 s for a 200 MB spool from a cold cache here, more on slow flash.

Numbers are never reused. Storage that lies about fsync, a power cut on it, or a lost or
truncated ``-wal`` can roll committed appends back, and the file then reopens at a lower
``next_seq`` in the same stream; payloads built later would go out under (stream, seq) pairs the
cloud already holds for other payloads, and the cloud keeps the first copy. So before a payload
leaves (:meth:`Spool.oldest`) the number after the newest appended one is written, fdatasynced, to
``<name>.sent`` beside the database (one 64-byte record, rewritten in place, only when a
payload beyond the recorded mark goes out: once per batch when live, once per backlog when
draining). At open, a database behind its mark, with another stream id, or without a readable
mark starts a new stream: its pending payloads keep the identity they were built with, new ones
get the new stream id, whose numbers continue from ``next_seq``.

Threads. One connection guarded by one lock: the pipeline appends, the forwarder reads and acks.
Both write, and SQLite allows one writer at a time anyway, so two connections would only add
SQLITE_BUSY handling; a single connection also means no reader ever holds an old snapshot that
would stop a checkpoint, and recovery swaps exactly one object.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sqlite3
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from edge.clock import Clock, SystemClock
from edge.config.campaigns import DEFAULT_PRIORITY
from edge.errors import SpoolError
from edge.wire.payload import Payload

__all__ = ["DeadLetter", "Spool", "SpoolStats", "SpooledPayload"]

_log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: Bumped when the schema changes; a file with another version is moved aside, not migrated.
_SCHEMA_VERSION = 1

#: See the module docstring: a returned append must survive a power cut.
_SYNCHRONOUS = "FULL"

#: Page size of a new spool file: small pages, because what wears flash is the pages each of
#: the two commits per payload rewrites (see "Flash wear" in the module docstring).
_PAGE_SIZE = 1024

#: Largest WAL kept between checkpoints.
_WAL_MAX_BYTES = 4 * 1024 * 1024

#: Estimated bytes a row costs on top of its payload (cell header, pointers, page slack).
ROW_OVERHEAD = 64

#: Bytes of the file system left free by the spool: room for SQLite's -shm index, the
#: transaction in progress beyond the WAL's budget, and a checkpoint growing the file.
DISK_RESERVE = 2 * 1024 * 1024

#: Free pages kept when the spool empties before the rest is given back to the file system.
_VACUUM_SLACK_PAGES = 256

_MIN_MAX_BYTES = 256 * 1024

#: Corrupt spool files (each with its -wal and -shm) kept aside for inspection; older ones are
#: deleted, as are all but the newest when together they exceed ``max_bytes / 2``.
CORRUPT_KEPT = 3

#: Bytes of the ``.sent`` record: a uuid4 hex, a seq and a CRC fit, and it stays in one sector.
_SENT_MARK_SIZE = 64

#: Seconds between two warnings about dropped payloads.
_DROP_LOG_INTERVAL = 60.0

_CORRUPTION_CODES = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})

_SCHEMA = """
CREATE TABLE meta (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    stream_id TEXT NOT NULL,
    next_seq INTEGER NOT NULL,
    dropped_full INTEGER NOT NULL,
    dropped_ttl INTEGER NOT NULL,
    recovered_corrupt INTEGER NOT NULL,
    clock REAL NOT NULL DEFAULT 0
);
CREATE TABLE spool (
    seq INTEGER PRIMARY KEY,
    created_at REAL NOT NULL,
    size INTEGER NOT NULL,
    properties TEXT NOT NULL,
    body BLOB NOT NULL,
    priority INTEGER NOT NULL DEFAULT 5,
    created_tick REAL NOT NULL DEFAULT 0
);
CREATE INDEX spool_order ON spool (priority, seq);
CREATE TABLE dead_letter (
    seq INTEGER PRIMARY KEY,
    created_at REAL NOT NULL,
    failed_at REAL NOT NULL,
    reason TEXT NOT NULL,
    size INTEGER NOT NULL,
    properties TEXT NOT NULL,
    body BLOB NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class SpooledPayload:
    """A pending payload: its sequence number, the payload, and when it was appended."""

    seq: int
    payload: Payload
    created_at: float
    #: The stream the payload belongs to; pass it to :meth:`Spool.ack`.
    stream_id: str


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A payload an uplink rejected permanently, kept for inspection."""

    seq: int
    payload: Payload
    created_at: float
    failed_at: float
    reason: str


@dataclass(frozen=True, slots=True)
class SpoolStats:
    """A snapshot of the spool, for metrics and health."""

    stream_id: str
    #: The sequence number the next append gets.
    next_seq: int
    #: Pending payloads.
    depth: int
    #: Payload bytes (body + properties) pending.
    bytes: int
    #: Seconds since the oldest pending payload was appended; None when empty.
    oldest_age: float | None
    #: Payloads (pending or dead-lettered) deleted to stay under ``max_bytes``.
    dropped_full: int
    #: Pending payloads deleted because they were older than ``ttl``.
    dropped_ttl: int
    #: Spool files found corrupt and moved aside.
    recovered_corrupt: int
    #: Payloads held in the dead-letter table.
    dead_letters: int
    #: Size on disk of the database and its WAL.
    file_bytes: int
    #: Corrupt spool files kept aside for inspection (at most :data:`CORRUPT_KEPT`).
    corrupt_files: int = 0
    #: Corrupt spool files this process deleted to keep that bound.
    corrupt_deleted: int = 0


class _Unusable(Exception):
    """The spool file cannot be used as it is and must be moved aside."""


class Spool:
    """A durable, bounded FIFO of payloads on one SQLite file. See the module docstring."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_bytes: int = 1_000_000_000,
        ttl: float | None = None,
        clock: Clock | None = None,
    ) -> None:
        """Open the spool at ``path``, creating it, or recovering it if it is corrupt.

        ``max_bytes`` bounds the database plus WAL on disk; ``ttl`` (seconds, optional) drops
        pending payloads older than that. Raises SpoolError if no usable spool can be opened.
        """
        if max_bytes < _MIN_MAX_BYTES:
            raise ValueError(f"max_bytes must be at least {_MIN_MAX_BYTES}, got {max_bytes}")
        if ttl is not None and ttl <= 0:
            raise ValueError(f"ttl must be positive, got {ttl}")
        self._path = Path(path)
        self._max_bytes = max_bytes
        self._ttl = ttl
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._lock = threading.Lock()
        self._closed = False
        # Known to this process, so that a file replaced during operation keeps the count.
        self._recovered_corrupt = 0
        self._corrupt_deleted = 0
        self._page_size = 4096
        self._wal_bytes = 0
        self._budget = 0
        self._stream_id = ""
        self._sent_path = _sibling(self._path, ".sent")
        self._wal_path = _sibling(self._path, "-wal")  # made once: appends look at its size
        #: Numbers from this one on were never handed to the forwarder (see the docstring).
        self._sent_mark = 0
        self._tick_base = 0.0  # the spool clock when this file was opened (meta.clock)
        self._tick_origin = 0.0  # the monotonic clock then
        self._unlogged: dict[str, int] = {}
        self._logged_at: dict[str, float] = {}
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"cannot create the folder of {self._path}: {exc}") from exc
        try:
            self._conn = self._connect()
        except _Unusable as exc:
            self._conn = self._replace_corrupt(str(exc))
        self._bound_corrupt()  # files left by earlier runs, or by an older version

    # -- public API -------------------------------------------------------------------------

    @property
    def stream_id(self) -> str:
        """Random id of this spool file's stream; a new file (e.g. after corruption) gets a new
        one, so ``(stream_id, seq)`` identifies a payload globally."""
        return self._stream_id

    @property
    def path(self) -> Path:
        """The spool file."""
        return self._path

    def append(
        self, build: Callable[[str, int], Payload], *, priority: int = DEFAULT_PRIORITY
    ) -> int:
        """Allocate the next gap-free sequence number of this stream, call
        ``build(stream_id, seq)`` to get the Payload, store it durably in one transaction; return
        seq.

        ``build`` runs inside the transaction (so a number is never allocated without its
        payload, and an exception from ``build`` allocates nothing); keep it quick and do not call
        the spool from it. Oldest rows are deleted first when the cap would be exceeded. Raises
        SpoolError if the payload can never fit or the disk refuses the write.

        ``priority`` (0 most urgent ... 9) orders delivery: :meth:`oldest` gives the lowest
        priority number first, then the lowest seq; the cap drops the least urgent first.
        """
        return self._run(lambda conn: self._append(conn, build, priority))

    def oldest(self, *, after: int | None = None) -> SpooledPayload | None:
        """The next pending payload in delivery order (priority, then seq), or None if there is
        none. With ``after`` (a pending seq): the next one after that payload in that order."""
        return self._run(lambda conn: self._oldest(conn, -1 if after is None else after))

    def ack(self, seq: int, *, stream_id: str | None = None) -> None:
        """Remove ``seq`` once the uplink confirmed it. Unknown numbers are ignored.

        With ``stream_id`` (as given by :meth:`oldest`) the ack is ignored when the spool has
        meanwhile been replaced by a new stream, whose numbers mean other payloads.
        """
        self._run(lambda conn: self._remove(conn, seq, stream_id, None))

    def dead_letter(self, seq: int, reason: str, *, stream_id: str | None = None) -> None:
        """Move pending ``seq`` to the dead-letter table with ``reason``; the stream goes on.

        Dead letters are kept for inspection (see :meth:`dead_letters`), count towards
        ``max_bytes``, and are the first rows deleted when space is needed.
        """
        self._run(lambda conn: self._remove(conn, seq, stream_id, reason[:1000]))

    def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Up to ``limit`` dead letters, oldest first."""
        return self._run(lambda conn: self._dead_letters(conn, limit))

    def stats(self) -> SpoolStats:
        """A consistent snapshot of depth, size and counters."""
        return self._run(self._stats)

    def close(self) -> None:
        """Close the file. Further calls raise SpoolError; closing twice is harmless."""
        with self._lock:
            if not self._closed:
                self._closed = True
                with contextlib.suppress(sqlite3.Error):  # so the next run's clock goes on
                    self._conn.execute("UPDATE meta SET clock = ?", (self._tick(),))
                self._conn.close()

    # -- operations (called with the lock held) ---------------------------------------------

    def _append(
        self, conn: sqlite3.Connection, build: Callable[[str, int], Payload], priority: int
    ) -> int:
        with _transaction(conn):
            self._expire(conn)
            (seq,) = conn.execute("SELECT next_seq FROM meta").fetchone()
            payload = build(self._stream_id, seq)
            properties = json.dumps(dict(payload.properties), sort_keys=True)
            size = len(payload.body) + len(properties.encode())
            need = self._round_to_pages(size + ROW_OVERHEAD)
            budget = self._budget_now(conn)
            dropped = self._make_room(conn, need, budget)
            if self._used_bytes(conn) + need > budget:
                raise SpoolError(
                    f"a payload of {size} bytes cannot fit a spool of max_bytes={self._max_bytes}"
                    f" with {budget} bytes usable on the file system"
                )
            tick = self._tick()
            conn.execute(
                "INSERT INTO spool (seq, created_at, size, properties, body, priority,"
                " created_tick) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (seq, self._clock.time(), size, properties, payload.body, priority, tick),
            )
            conn.execute(
                "UPDATE meta SET next_seq = ?, dropped_full = dropped_full + ?, clock = ?",
                (seq + 1, dropped, tick),
            )
        self._warn_dropped("dropped_full", dropped)
        return int(seq)

    def _oldest(self, conn: sqlite3.Connection, after: int) -> SpooledPayload | None:
        if self._ttl is not None:
            with _transaction(conn):
                self._expire(conn)
        # Delivery order is (priority, seq); ``after`` is a position in it (a payload gone
        # meanwhile: the next with a greater seq, as before priorities). Always through the
        # index: sorting the table would read every payload (priority is stored after the body).
        found = conn.execute("SELECT priority FROM spool WHERE seq = ?", (after,)).fetchone()
        where = "(priority, seq) > (?, ?)" if found else "seq > ?"
        row = conn.execute(
            "SELECT seq, created_at, properties, body FROM spool INDEXED BY spool_order"
            f" WHERE {where} ORDER BY priority, seq LIMIT 1",
            (found[0], after) if found else (after,),
        ).fetchone()
        if row is None:
            return None
        seq, created_at, properties, body = row
        if seq >= self._sent_mark:  # it may reach the cloud: never hand its number out again
            (next_seq,) = conn.execute("SELECT next_seq FROM meta").fetchone()
            self._write_sent_mark(next_seq)
        return SpooledPayload(seq, _payload(properties, body), created_at, self._stream_id)

    def _remove(
        self, conn: sqlite3.Connection, seq: int, stream_id: str | None, reason: str | None
    ) -> None:
        if stream_id is not None and stream_id != self._stream_id:
            return
        with _transaction(conn):
            if reason is not None:
                conn.execute(
                    "INSERT INTO dead_letter SELECT seq, created_at, ?, ?, size, properties, body"
                    " FROM spool WHERE seq = ?",
                    (self._clock.time(), reason, seq),
                )
            conn.execute("DELETE FROM spool WHERE seq = ?", (seq,))
        self._vacuum_if_empty(conn)

    def _dead_letters(self, conn: sqlite3.Connection, limit: int) -> list[DeadLetter]:
        rows = conn.execute(
            "SELECT seq, created_at, failed_at, reason, properties, body FROM dead_letter"
            " ORDER BY seq LIMIT ?",
            (limit,),
        ).fetchall()
        return [DeadLetter(s, _payload(p, b), c, f, r) for s, c, f, r, p, b in rows]

    def _stats(self, conn: sqlite3.Connection) -> SpoolStats:
        with _transaction(conn):
            self._expire(conn)
            next_seq, dropped_full, dropped_ttl, recovered = conn.execute(
                "SELECT next_seq, dropped_full, dropped_ttl, recovered_corrupt FROM meta"
            ).fetchone()
            depth, size = conn.execute(
                "SELECT count(*), coalesce(sum(size), 0) FROM spool"
            ).fetchone()
            (dead,) = conn.execute("SELECT count(*) FROM dead_letter").fetchone()
            oldest = conn.execute("SELECT created_tick FROM spool ORDER BY seq LIMIT 1").fetchone()
        age = None if oldest is None else max(0.0, self._tick() - oldest[0])
        return SpoolStats(
            stream_id=self._stream_id,
            next_seq=next_seq,
            depth=depth,
            bytes=size,
            oldest_age=age,
            dropped_full=dropped_full,
            dropped_ttl=dropped_ttl,
            recovered_corrupt=recovered,
            dead_letters=dead,
            file_bytes=_file_size(self._path) + _file_size(self._wal_path),
            corrupt_files=len(self._corrupt_sets()),
            corrupt_deleted=self._corrupt_deleted,
        )

    # -- helpers ----------------------------------------------------------------------------

    def _expire(self, conn: sqlite3.Connection) -> None:
        """Delete pending rows older than the TTL, from the front of the stream."""
        if self._ttl is None:
            return
        cutoff = self._tick() - self._ttl
        last = None
        count = 0
        cursor = conn.execute("SELECT seq, created_tick FROM spool ORDER BY seq")
        for seq, created_tick in cursor:
            if created_tick >= cutoff:
                break
            last = seq
            count += 1
        cursor.close()
        if count:
            conn.execute("DELETE FROM spool WHERE seq <= ?", (last,))
            conn.execute("UPDATE meta SET dropped_ttl = dropped_ttl + ?", (count,))
            self._warn_dropped("dropped_ttl", count)

    def _tick(self) -> float:
        """The spool's clock: seconds of running time, monotonic, carried across restarts in
        ``meta.clock`` (time while the gateway is off does not count)."""
        return self._tick_base + max(0.0, self._clock.monotonic() - self._tick_origin)

    def _warn_dropped(self, counter: str, count: int) -> None:
        """Log drops at most once a minute: a long outage at the cap drops on every append."""
        self._unlogged[counter] = self._unlogged.get(counter, 0) + count
        now = self._clock.monotonic()
        if count and now - self._logged_at.get(counter, -math.inf) >= _DROP_LOG_INTERVAL:
            _log.warning(
                "spool %s: %d payloads dropped (%s; max_bytes=%d, ttl=%s)",
                self._path,
                self._unlogged[counter],
                counter,
                self._max_bytes,
                self._ttl,
            )
            self._unlogged[counter] = 0
            self._logged_at[counter] = now

    def _budget_now(self, conn: sqlite3.Connection) -> int:
        """The database's budget: ``max_bytes`` less the WAL's room, lowered to what the file
        system can still hold less :data:`DISK_RESERVE`.

        Checked at every append (one statvfs) because anything else on the partition (logs,
        other modules) shrinks it too. What the spool already holds counts as available: its
        free pages are reused before the file grows. When something else took the disk, the
        budget is what the spool holds now, so new payloads replace the oldest ones instead of
        the whole backlog being deleted for space the file system would not get back anyway.
        """
        try:
            fs = os.statvfs(self._path.parent)
        except OSError:
            return self._budget
        held = _file_size(self._path) + _file_size(self._wal_path)
        room = held + fs.f_bavail * fs.f_frsize - self._wal_bytes - DISK_RESERVE
        return min(self._budget, max(room, self._used_bytes(conn)))

    def _make_room(self, conn: sqlite3.Connection, need: int, budget: int) -> int:
        """Delete oldest rows (dead letters first) until ``need`` more bytes fit ``budget``."""
        dropped = 0
        while self._used_bytes(conn) + need > budget:
            # Dead letters first, then the least urgent pending payloads, oldest first.
            for table, order in (("dead_letter", "seq"), ("spool", "priority DESC, seq")):
                row = conn.execute(f"SELECT seq FROM {table} ORDER BY {order} LIMIT 1").fetchone()
                if row is not None:
                    conn.execute(f"DELETE FROM {table} WHERE seq = ?", row)
                    dropped += 1
                    break
            else:
                break
        return dropped

    def _used_bytes(self, conn: sqlite3.Connection) -> int:
        (pages,) = conn.execute("PRAGMA page_count").fetchone()
        (free,) = conn.execute("PRAGMA freelist_count").fetchone()
        return int(pages - free) * self._page_size

    def _round_to_pages(self, size: int) -> int:
        return -(-size // self._page_size) * self._page_size

    def _vacuum_if_empty(self, conn: sqlite3.Connection) -> None:
        """Give free pages back to the file system once the backlog is gone.

        Only when empty: then almost no live page has to be moved, whereas vacuuming during a
        drain would rewrite the whole backlog once more.
        """
        (free,) = conn.execute("PRAGMA freelist_count").fetchone()
        if free <= _VACUUM_SLACK_PAGES or conn.execute("SELECT 1 FROM spool").fetchone():
            return
        # In steps that each fit the WAL's budget (checkpointed between them): one vacuum of a
        # large file in one transaction grows the WAL past it, on a disk that may be nearly full.
        step = max(8, self._wal_bytes // self._page_size // 4)
        try:
            while free > 0:
                # executescript steps the statement to the end; execute() would free one page.
                conn.executescript(f"PRAGMA incremental_vacuum({min(step, free)});")
                before, (free,) = free, conn.execute("PRAGMA freelist_count").fetchone()
                if free >= before:
                    break
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # the file shrinks at a checkpoint
        except sqlite3.OperationalError as exc:  # only an optimisation: the delete is done
            _log.info("spool %s: cannot give free pages back now: %s", self._path, exc)

    def _run(self, op: Callable[[sqlite3.Connection], _T]) -> _T:
        """Run ``op`` under the lock, translating SQLite errors; recover from corruption once."""
        with self._lock:
            if self._closed:
                raise SpoolError(f"spool {self._path} is closed")
            try:
                return op(self._conn)
            except sqlite3.Error as exc:
                if not _is_corruption(exc):
                    raise SpoolError(f"spool {self._path}: {exc}") from exc
                self._conn.close()
                self._conn = self._replace_corrupt(str(exc))
            try:
                return op(self._conn)
            except sqlite3.Error as exc:
                raise SpoolError(f"spool {self._path}: {exc}") from exc

    def _replace_corrupt(self, reason: str) -> sqlite3.Connection:
        """Move the unusable file aside and open a fresh spool in its place."""
        target = self._move_aside()
        self._recovered_corrupt += 1
        _log.error(
            "spool %s is unusable (%s): moved aside to %s, starting a new stream",
            self._path,
            reason,
            target,
        )
        self._bound_corrupt()
        try:
            return self._connect()
        except _Unusable as exc:
            raise SpoolError(f"spool {self._path}: a fresh spool is unusable: {exc}") from exc

    def _corrupt_sets(self) -> list[list[Path]]:
        """The corrupt files beside the spool, grouped with their -wal/-shm, oldest first."""
        sets: dict[str, list[Path]] = {}
        for file in self._path.parent.glob(f"{self._path.name}.corrupt-*"):
            base = file.name.removesuffix("-wal").removesuffix("-shm")
            sets.setdefault(base, []).append(file)

        def moved_at(files: list[Path]) -> tuple[float, str]:
            main = min(files, key=lambda f: len(f.name))
            try:  # a rename sets ctime: when it was moved aside, whatever the wall clock said
                return main.stat().st_ctime, main.name
            except OSError:
                return 0.0, main.name

        return sorted(sets.values(), key=moved_at)

    def _bound_corrupt(self) -> None:
        """Delete the oldest corrupt files beyond :data:`CORRUPT_KEPT` sets or, the newest set
        apart, beyond ``max_bytes / 2``; count them in ``corrupt_deleted``."""
        sets = self._corrupt_sets()
        total = sum(_file_size(f) for files in sets for f in files)
        while len(sets) > CORRUPT_KEPT or (len(sets) > 1 and total > self._max_bytes // 2):
            oldest = sets.pop(0)
            for file in oldest:
                total -= _file_size(file)
                with contextlib.suppress(FileNotFoundError):
                    file.unlink()
            self._corrupt_deleted += 1
            _log.warning("spool %s: deleted %s (corrupt, beyond the bound)", self._path, oldest[0])

    def _move_aside(self) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock.time()))
        target = self._path.with_name(f"{self._path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = self._path.with_name(f"{self._path.name}.corrupt-{stamp}-{n}")
        try:
            for suffix in ("", "-wal", "-shm"):
                source = _sibling(self._path, suffix)
                if source.exists():
                    os.replace(source, _sibling(target, suffix))
            _fsync_dir(self._path.parent)
        except OSError as exc:
            raise SpoolError(f"spool {self._path} is corrupt and cannot be moved: {exc}") from exc
        return target

    def _connect(self) -> sqlite3.Connection:
        """Open (creating if needed) and check the spool file; raise _Unusable if corrupt."""
        created = _file_size(self._path) == 0
        try:
            conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise SpoolError(f"cannot open spool {self._path}: {exc}") from exc
        try:
            self._configure(conn, created)
        except _Unusable:
            conn.close()
            raise
        except sqlite3.Error as exc:
            conn.close()
            if _is_corruption(exc):
                raise _Unusable(str(exc)) from exc
            raise SpoolError(f"cannot open spool {self._path}: {exc}") from exc
        return conn

    def _configure(self, conn: sqlite3.Connection, created: bool) -> None:
        # Both only take effect before the first table is created (a new file).
        conn.execute(f"PRAGMA page_size = {_PAGE_SIZE}")
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        (mode,) = conn.execute("PRAGMA journal_mode = WAL").fetchone()
        if mode != "wal":
            raise SpoolError(f"spool {self._path}: cannot enable WAL (journal_mode={mode})")
        conn.execute(f"PRAGMA synchronous = {_SYNCHRONOUS}")
        (self._page_size,) = conn.execute("PRAGMA page_size").fetchone()
        wal_pages = max(8, min(_WAL_MAX_BYTES, self._max_bytes // 64) // self._page_size)
        self._wal_bytes = wal_pages * self._page_size
        self._budget = self._max_bytes - self._wal_bytes
        conn.execute(f"PRAGMA wal_autocheckpoint = {wal_pages}")
        conn.execute(f"PRAGMA journal_size_limit = {self._wal_bytes}")

        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version == 0:
            if conn.execute("SELECT 1 FROM sqlite_master").fetchone() is not None:
                raise _Unusable("not a spool (foreign tables, no schema version)")
            self._create_schema(conn)
        elif version != _SCHEMA_VERSION:
            raise _Unusable(f"unknown spool schema version {version}")
        elif not created:
            (check,) = conn.execute("PRAGMA quick_check(1)").fetchone()
            if check != "ok":
                raise _Unusable(f"quick_check: {check}")
            _add_priority(conn)
            _add_spool_clock(conn)
        row = conn.execute("SELECT stream_id, recovered_corrupt, clock FROM meta").fetchone()
        if row is None:
            raise _Unusable("meta row missing")
        self._stream_id, self._recovered_corrupt, self._tick_base = row
        self._tick_origin = self._clock.monotonic()
        self._check_sent_mark(conn, created)

    def _check_sent_mark(self, conn: sqlite3.Connection, created: bool) -> None:
        """Start a new stream if the database lost commits whose numbers may have been sent."""
        (next_seq,) = conn.execute("SELECT next_seq FROM meta").fetchone()
        mark = _read_sent_mark(self._sent_path)
        behind = mark is None or mark[0] != self._stream_id or mark[1] > next_seq
        if behind and not created:
            old, self._stream_id = self._stream_id, uuid.uuid4().hex
            with _transaction(conn):
                conn.execute("UPDATE meta SET stream_id = ?", (self._stream_id,))
            _log.warning(
                "spool %s: the database is behind what was sent (mark %s, database %s at seq %d):"
                " commits were rolled back or the file was replaced; starting stream %s",
                self._path,
                "unreadable" if mark is None else f"{mark[0]} at seq {mark[1]}",
                old,
                next_seq,
                self._stream_id,
            )
        self._write_sent_mark(next_seq)

    def _write_sent_mark(self, next_seq: int) -> None:
        """Record durably that numbers below ``next_seq`` of this stream may have been sent."""
        record = f"{self._stream_id} {next_seq}"
        line = f"{record} {zlib.crc32(record.encode()):08x}".ljust(_SENT_MARK_SIZE - 1) + "\n"
        new = not self._sent_path.exists()
        try:
            fd = os.open(self._sent_path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, line.encode(), 0)
                os.fdatasync(fd)
            finally:
                os.close(fd)
            if new:
                _fsync_dir(self._path.parent)
        except OSError as exc:
            raise SpoolError(f"spool {self._path}: cannot record what was sent: {exc}") from exc
        self._sent_mark = next_seq

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        with _transaction(conn):
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(
                "INSERT INTO meta (id, stream_id, next_seq, dropped_full, dropped_ttl,"
                " recovered_corrupt) VALUES (0, ?, 0, 0, 0, ?)",
                (uuid.uuid4().hex, self._recovered_corrupt),
            )
            conn.execute(f"PRAGMA user_version = {_SCHEMA_VERSION}")
        # The WAL's directory entry is synced by SQLite; the main file's is ours to sync.
        _fsync_dir(self._path.parent)


def _add_priority(conn: sqlite3.Connection) -> None:
    """Give a spool file from before priorities its ``priority`` column (issue 11): every
    payload already in it gets the default, so its order is kept."""
    columns = [row[1] for row in conn.execute("PRAGMA table_info(spool)")]
    if "priority" in columns:
        return
    with _transaction(conn):
        conn.execute(
            f"ALTER TABLE spool ADD COLUMN priority INTEGER NOT NULL DEFAULT {DEFAULT_PRIORITY}"
        )
        conn.execute("CREATE INDEX spool_order ON spool (priority, seq)")


def _add_spool_clock(conn: sqlite3.Connection) -> None:
    """Give a spool file from before the spool clock its ``clock`` and ``created_tick``
    columns: payloads already in it count as appended now (their wall-clock times may be the
    very times that jumped), so none is expired by the upgrade."""
    columns = [row[1] for row in conn.execute("PRAGMA table_info(spool)")]
    if "created_tick" in columns:
        return
    with _transaction(conn):
        conn.execute("ALTER TABLE meta ADD COLUMN clock REAL NOT NULL DEFAULT 0")
        conn.execute("ALTER TABLE spool ADD COLUMN created_tick REAL NOT NULL DEFAULT 0")


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception (including a failed COMMIT)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def _read_sent_mark(path: Path) -> tuple[str, int] | None:
    """The (stream id, next seq) recorded in a ``.sent`` file; None if missing or damaged."""
    try:
        stream, seq, crc = path.read_text(encoding="ascii").split()
        if int(crc, 16) == zlib.crc32(f"{stream} {seq}".encode()):
            return stream, int(seq)
    except (OSError, ValueError):
        pass
    return None


def _payload(properties: str, body: bytes) -> Payload:
    decoded: Mapping[str, str] = json.loads(properties)
    return Payload(bytes(body), decoded)


def _is_corruption(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _CORRUPTION_CODES


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
