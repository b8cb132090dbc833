"""The spool against the faults a gateway meets: a full disk (on a real 20 MB tmpfs), commits
rolled back behind its back, corrupt files piling up, a wall clock set after offline spooling."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge.clock import FakeClock
from edge.delivery.forwarder import Forwarder
from edge.delivery.spool import CORRUPT_KEPT, DISK_RESERVE, Spool
from edge.delivery.uplinks.file import FileUplink
from edge.errors import SpoolError
from edge.wire.payload import Payload
from tests.support.smallfs import fill
from tests.support.waiting import wait_for

REPO = Path(__file__).resolve().parents[2]
PAYLOAD = 20_000


def numbered(stream: str, seq: int) -> Payload:
    """A payload that says which (stream, seq) it was built for, padded with noise."""
    head = f"{stream}:{seq}:".encode()
    return Payload(
        head + os.urandom(PAYLOAD - len(head)), {"stream": stream, "seq": str(seq), "kind": "data"}
    )


def fs_free(path: Path) -> int:
    fs = os.statvfs(path)
    return fs.f_bavail * fs.f_frsize


# -- disk full ----------------------------------------------------------------------------------


def test_default_cap_on_a_small_disk_drops_oldest_before_the_disk_is_full(small_fs: Path) -> None:
    # The default max_bytes (1 GB) on 20 MB: the free space, not max_bytes, must bound the spool.
    path = small_fs / "spool.db"
    spool = Spool(path)
    for _ in range(1200):  # 24 MB of payloads
        spool.append(numbered)  # never refused
        assert fs_free(small_fs) >= DISK_RESERVE // 2
    stats = spool.stats()
    assert stats.dropped_full > 0 and stats.next_seq == 1200
    assert stats.depth + stats.dropped_full == 1200
    # The newest are kept, in order, and the forwarder's delete works on the full-ish disk.
    seqs = []
    while (item := spool.oldest()) is not None:
        seqs.append(item.seq)
        spool.ack(item.seq, stream_id=item.stream_id)
    assert seqs == list(range(stats.dropped_full, 1200))
    spool.close()
    Spool(path).close()  # and it opens again


def test_disk_filled_by_someone_else_never_blocks_draining_and_recovers(
    small_fs: Path, tmp_path: Path
) -> None:
    path = small_fs / "spool.db"
    spool = Spool(path)
    for _ in range(200):
        spool.append(numbered)
    filler = small_fs / "filler"
    fill(filler)
    refused = 0
    for _ in range(50):  # new payloads replace old ones while the WAL has room, then are refused
        try:
            spool.append(numbered)
        except SpoolError:
            refused += 1
    kept = spool.stats()
    assert kept.next_seq == 250 - refused and kept.depth + kept.dropped_full == kept.next_seq
    outbox = tmp_path / "outbox"  # on another file system: the cloud is elsewhere
    forwarder = Forwarder(
        spool, FileUplink(outbox, fsync=False), backoff_initial=0.001, backoff_max=0.01
    )
    forwarder.start()
    try:
        # Every payload gets sent although the spool cannot delete them (no resending seq 0).
        wait_for(lambda: forwarder.stats().sent >= kept.depth, what="the backlog sent")
        assert len(list(outbox.iterdir())) == kept.depth
        filler.unlink()  # space comes back: deletes and appends work again by themselves
        wait_for(lambda: spool.stats().depth == 0, what="the spool emptied")
        spool.append(numbered)
        forwarder.wake()
        wait_for(lambda: spool.stats().depth == 0, what="a new payload sent")
    finally:
        forwarder.stop()
        spool.close()
    assert Spool(path).stats().depth == 0


# -- rolled-back commits ------------------------------------------------------------------------


def send_all(spool: Spool, sent: dict[tuple[str, int], bytes]) -> None:
    """What the forwarder does: read, "send" (the cloud keeps the first body of a pair), ack."""
    while (item := spool.oldest()) is not None:
        stream, seq = item.payload.properties["stream"], int(item.payload.properties["seq"])
        first = sent.setdefault((stream, seq), item.payload.body)
        assert first == item.payload.body, f"({stream}, {seq}) reused for another payload"
        spool.ack(item.seq, stream_id=item.stream_id)


def test_a_lost_wal_after_kill_9_starts_a_new_stream(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    Spool(path).close()  # the schema is checkpointed into the main file
    script = textwrap.dedent(
        """
        import os, signal, sys
        from edge.delivery.spool import Spool
        from tests.delivery.test_spool_faults import numbered
        spool = Spool(sys.argv[1])
        for _ in range(5):
            spool.append(numbered)
        while (item := spool.oldest()) is not None:
            print(item.payload.properties["stream"], item.seq, flush=True)  # "sent"
            spool.ack(item.seq, stream_id=item.stream_id)
        os.kill(os.getpid(), signal.SIGKILL)  # before any checkpoint: all of it is in the WAL
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(path)], cwd=REPO, capture_output=True, text=True
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    # Bodies unknown here: any payload under one of these pairs would be another payload.
    sent = {(stream, int(seq)): b"" for stream, seq in map(str.split, done.stdout.splitlines())}
    assert len(sent) == 5
    path.with_name("spool.db-wal").unlink()  # the WAL is lost: the 5 commits with it

    spool = Spool(path)
    assert spool.stream_id not in {stream for stream, _ in sent}
    for _ in range(5):
        spool.append(numbered)
    send_all(spool, sent)
    assert len(sent) == 10
    spool.close()


def test_an_older_copy_of_the_database_starts_a_new_stream(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    sent: dict[tuple[str, int], bytes] = {}
    spool = Spool(path)
    for _ in range(3):
        spool.append(numbered)
    spool.close()
    shutil.copy(path, tmp_path / "backup.db")  # holds seq 0-2, unsent
    spool = Spool(path)
    for _ in range(3):
        spool.append(numbered)
    send_all(spool, sent)  # 0-5 sent
    spool.close()
    shutil.copy(tmp_path / "backup.db", path)  # e.g. a restored image

    spool = Spool(path)
    for _ in range(3):
        spool.append(numbered)
    send_all(spool, sent)  # the old 0-2 again (under their old names: duplicates), then new
    assert len(sent) == 9
    spool.close()
    # A normal restart keeps the stream.
    stream = Spool(path).stream_id
    assert Spool(path).stream_id == stream


def test_a_damaged_mark_is_taken_as_unknown_and_starts_a_new_stream(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path)
    stream = spool.stream_id
    spool.close()
    path.with_name("spool.db.sent").write_bytes(b"\0" * 64)
    assert Spool(path).stream_id != stream


# -- corrupt files moved aside --------------------------------------------------------------------


def test_corrupt_files_kept_aside_are_bounded_and_counted(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    deleted = 0
    for opened in range(5):
        spool = Spool(path)
        for _ in range(10):
            spool.append(numbered)
        spool.close()
        path.write_bytes(b"this is not a database" * 1000)  # the next open moves it aside
        spool = Spool(path)
        stats = spool.stats()
        spool.close()
        assert stats.recovered_corrupt == 1
        assert stats.corrupt_files == min(opened + 1, CORRUPT_KEPT)
        deleted += stats.corrupt_deleted
    assert deleted == 5 - CORRUPT_KEPT
    aside = sorted(tmp_path.glob("spool.db.corrupt-*"))
    assert len(aside) == CORRUPT_KEPT


def test_corrupt_files_beyond_half_the_cap_are_deleted_but_the_newest(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    cap = 1_000_000
    for _ in range(2):
        path.write_bytes(os.urandom(400_000))  # not a database: moved aside at open
        Spool(path, max_bytes=cap).close()
    spool = Spool(path, max_bytes=cap)
    stats = spool.stats()
    assert stats.corrupt_files == 1  # 800 KB aside > 500 KB: the older one went
    assert sum(f.stat().st_size for f in tmp_path.glob("spool.db.corrupt-*")) <= cap // 2
    spool.close()


# -- the wall clock set after offline spooling ----------------------------------------------------

BOOTED_IN_1970 = 3600.0  # an RTC-less gateway's wall clock, an hour after boot


def test_ntp_setting_the_date_deletes_nothing_ttl_runs_on_the_spool_clock(tmp_path: Path) -> None:
    clock = FakeClock(start=BOOTED_IN_1970, synchronized=False)
    path = tmp_path / "spool.db"
    spool = Spool(path, ttl=3600, clock=clock)
    for _ in range(30):  # half an hour offline, a payload a minute
        spool.append(numbered)
        clock.advance(60)
    clock.set_wall(1_796_000_000.0)  # NTP: 56 years later, at once
    stats = spool.stats()
    assert stats.dropped_ttl == 0 and stats.depth == 30
    assert stats.oldest_age == pytest.approx(1800)
    spool.close()

    # A restart (the monotonic clock starts again from near zero after a reboot): the spool clock
    # goes on from where it was, so ages neither reset nor jump.
    clock = FakeClock(start=5.0)
    spool = Spool(path, ttl=3600, clock=clock)
    assert spool.stats().oldest_age == pytest.approx(1800)
    clock.advance(2370)  # spool clock 4170 s: the ten payloads made before 570 s expire
    stats = spool.stats()
    assert (stats.dropped_ttl, stats.depth) == (10, 20)
    assert stats.oldest_age == pytest.approx(4170 - 600)
    spool.close()


def test_a_spool_from_before_the_spool_clock_is_upgraded_without_expiring(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path)
    for _ in range(3):
        spool.append(numbered)
    spool.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:  # as an older version left it
        conn.execute("ALTER TABLE spool DROP COLUMN created_tick")
        conn.execute("ALTER TABLE meta DROP COLUMN clock")
        conn.commit()
    clock = FakeClock()
    clock.set_wall(1e10)  # whatever the wall clock says, the rows count as appended now
    spool = Spool(path, ttl=60, clock=clock)
    assert (spool.stats().depth, spool.stats().oldest_age) == (3, 0.0)
    clock.advance(61)
    assert spool.stats().dropped_ttl == 3
    spool.close()
