"""The spool on a real SQLite file: order, gap-free numbering, cap, TTL, corruption, kill -9."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections import deque
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from edge.clock import FakeClock
from edge.delivery.spool import Spool
from edge.errors import SpoolError
from edge.wire.payload import Payload

REPO = Path(__file__).resolve().parents[2]


def checked_payload(stream: str, seq: int, size: int = 100) -> Payload:
    """A payload whose body starts with the SHA-256 of the rest, so damage is detectable."""
    data = random.randbytes(size)
    props = {"stream": stream, "seq": str(seq), "kind": "data"}
    return Payload(hashlib.sha256(data).digest() + data, props)


def intact(payload: Payload) -> bool:
    return hashlib.sha256(payload.body[32:]).digest() == payload.body[:32]


def consume(spool: Spool) -> list[int]:
    """Ack everything pending, oldest first, checking each payload; return the seqs seen."""
    seen = []
    while (item := spool.oldest()) is not None:
        assert intact(item.payload), item.seq
        assert item.payload.properties["seq"] == str(item.seq)
        assert item.payload.properties["stream"] == spool.stream_id == item.stream_id
        seen.append(item.seq)
        spool.ack(item.seq, stream_id=item.stream_id)
    return seen


def disk_bytes(path: Path) -> int:
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def test_fifo_with_gap_free_numbers_that_continue_after_reopen(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path)
    stream = spool.stream_id
    assert [spool.append(checked_payload) for _ in range(5)] == [0, 1, 2, 3, 4]
    first = spool.oldest()
    assert first is not None and first.seq == 0 and first.stream_id == stream
    spool.ack(0)
    spool.ack(0)  # acking twice is harmless
    spool.close()

    spool = Spool(path)
    assert spool.stream_id == stream
    assert spool.append(checked_payload) == 5
    assert consume(spool) == [1, 2, 3, 4, 5]
    assert spool.stats().next_seq == 6
    spool.close()


def test_payload_round_trips_exactly(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    body = bytes(range(256)) * 10
    spool.append(lambda stream, seq: Payload(body, {"kind": "schema", "stream": stream}))
    item = spool.oldest()
    assert item is not None
    assert item.payload == Payload(body, {"kind": "schema", "stream": spool.stream_id})
    spool.close()


def test_failing_build_allocates_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")

    def broken(stream: str, seq: int) -> Payload:
        raise ValueError("encoder bug")

    with pytest.raises(ValueError, match="encoder bug"):
        spool.append(broken)
    assert spool.append(checked_payload) == 0
    assert spool.stats().depth == 1
    spool.close()


def test_stats(tmp_path: Path) -> None:
    clock = FakeClock()
    spool = Spool(tmp_path / "spool.db", clock=clock)
    empty = spool.stats()
    assert (empty.depth, empty.bytes, empty.oldest_age, empty.next_seq) == (0, 0, None, 0)
    spool.append(lambda s, q: Payload(b"x" * 1000, {"k": "v"}))
    clock.advance(7)
    spool.append(lambda s, q: Payload(b"x" * 1000, {}))
    stats = spool.stats()
    assert stats.depth == 2
    assert stats.bytes == 1000 + len('{"k": "v"}') + 1000 + len("{}")
    assert stats.oldest_age == 7
    assert stats.next_seq == 2
    assert stats.stream_id == spool.stream_id
    assert stats.file_bytes == disk_bytes(tmp_path / "spool.db")
    spool.close()


def test_closed_spool_refuses(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    spool.close()
    spool.close()
    with pytest.raises(SpoolError, match="closed"):
        spool.append(checked_payload)


def test_one_appender_and_one_consumer_thread(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    total = 400
    received: list[int] = []

    def consumer() -> None:
        while len(received) < total:
            item = spool.oldest()
            if item is not None:
                assert intact(item.payload)
                received.append(item.seq)
                spool.ack(item.seq, stream_id=item.stream_id)

    thread = threading.Thread(target=consumer)
    thread.start()
    for _ in range(total):
        spool.append(checked_payload)
    thread.join(timeout=30)
    assert received == list(range(total))
    spool.close()


# -- the disk cap --------------------------------------------------------------------------------

CAP = 2_000_000
#: db + wal may pass the cap by about one transaction (a 20 KB payload and a few pages).
CAP_TOLERANCE = 64 * 1024


def test_cap_drops_oldest_keeps_newest_and_bounds_the_file(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path, max_bytes=CAP)
    sizes = []
    for _ in range(400):  # 8 MB into a 2 MB spool: a long outage
        spool.append(lambda s, q: checked_payload(s, q, 20_000))
        sizes.append(disk_bytes(path))
    assert max(sizes) <= CAP + CAP_TOLERANCE
    # It stopped growing once full (give or take an interior page of the b-tree).
    assert sizes[-1] <= max(sizes[:200]) + 2 * 1024
    stats = spool.stats()
    assert stats.dropped_full > 0
    assert stats.depth + stats.dropped_full == 400
    assert stats.depth * 20_000 > CAP * 0.8  # the space is actually used
    spool.close()

    spool = Spool(path, max_bytes=CAP)
    assert spool.stats().dropped_full == stats.dropped_full  # counters are persisted
    assert consume(spool) == list(range(stats.dropped_full, 400))  # the newest survived
    spool.close()


def test_small_payloads_respect_the_cap_too(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path, max_bytes=262_144)
    for _ in range(3000):
        spool.append(lambda s, q: checked_payload(s, q, 150))
    assert disk_bytes(path) <= 262_144 + CAP_TOLERANCE
    stats = spool.stats()
    assert stats.dropped_full > 0 and stats.depth + stats.dropped_full == 3000
    spool.close()


def test_payload_larger_than_the_cap_is_refused_without_dropping(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=300_000)
    spool.append(checked_payload)
    with pytest.raises(SpoolError, match="cannot fit"):
        spool.append(lambda s, q: Payload(bytes(400_000), {}))
    stats = spool.stats()
    assert (stats.depth, stats.dropped_full, stats.next_seq) == (1, 0, 1)
    spool.close()


def test_file_shrinks_when_a_backlog_is_drained(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path, max_bytes=CAP)
    for _ in range(60):
        spool.append(lambda s, q: checked_payload(s, q, 20_000))
    full = disk_bytes(path)
    consume(spool)
    assert disk_bytes(path) < full / 10
    spool.close()


def test_disk_refusing_writes_raises_spool_error_and_loses_nothing(tmp_path: Path) -> None:
    # A real write failure: the file-size rlimit makes the kernel refuse to grow the WAL.
    script = textwrap.dedent(
        """
        import os, resource, sys
        from edge.errors import SpoolError
        from edge.wire.payload import Payload
        from edge.delivery.spool import Spool

        path = sys.argv[1]
        spool = Spool(path)
        make = lambda stream, seq: Payload(bytes([seq % 256]) * 20000, {})
        for _ in range(20):
            spool.append(make)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(path + "-wal") + 50000, hard))
        try:
            for _ in range(100):
                spool.append(make)
            sys.exit("never refused")
        except SpoolError as exc:
            print("refused:", exc)
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        last = spool.append(make)
        seqs = []
        while (item := spool.oldest()) is not None:
            assert item.payload.body == bytes([item.seq % 256]) * 20000
            seqs.append(item.seq)
            spool.ack(item.seq)
        assert seqs == list(range(last + 1)), seqs
        print("intact", last)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "spool.db")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "refused: spool" in done.stdout and "intact" in done.stdout


# -- TTL -----------------------------------------------------------------------------------------


def test_ttl_drops_expired_payloads_and_counts_them(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "spool.db"
    spool = Spool(path, ttl=3600, clock=clock)
    for _ in range(3):
        spool.append(checked_payload)
    clock.advance(1800)
    spool.append(checked_payload)  # seq 3
    clock.advance(1801)  # 0..2 are now older than an hour, 3 is not
    item = spool.oldest()
    assert item is not None and item.seq == 3
    stats = spool.stats()
    assert (stats.depth, stats.dropped_ttl) == (1, 3)
    spool.close()

    spool = Spool(path, ttl=3600, clock=clock)
    assert spool.stats().dropped_ttl == 3
    clock.advance(3600)
    assert spool.append(checked_payload) == 4
    assert consume(spool) == [4]
    assert spool.stats().dropped_ttl == 4
    spool.close()


# -- dead letters --------------------------------------------------------------------------------


def test_dead_letter_moves_the_payload_aside_and_the_stream_goes_on(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "spool.db"
    spool = Spool(path, clock=clock)
    for _ in range(3):
        spool.append(checked_payload)
    first = spool.oldest()
    assert first is not None
    clock.advance(5)
    spool.dead_letter(first.seq, "rejected: too large", stream_id=first.stream_id)
    assert consume(spool) == [1, 2]
    spool.close()

    spool = Spool(path, clock=clock)
    assert spool.stats().dead_letters == 1
    (letter,) = spool.dead_letters()
    assert (letter.seq, letter.reason, letter.payload) == (0, "rejected: too large", first.payload)
    assert letter.failed_at - letter.created_at == 5
    spool.close()


def test_dead_letters_are_dropped_first_when_full(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=CAP)
    for _ in range(10):
        spool.append(lambda s, q: checked_payload(s, q, 20_000))
    for seq in range(5):
        spool.dead_letter(seq, "poison")
    for _ in range(200):
        spool.append(lambda s, q: checked_payload(s, q, 20_000))
    stats = spool.stats()
    assert stats.dead_letters == 0
    assert stats.depth + stats.dropped_full == 210
    spool.close()


# -- corruption ----------------------------------------------------------------------------------


def moved_aside(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".corrupt-*"))


def filled(path: Path, count: int = 50, size: int = 20_000) -> str:
    spool = Spool(path)
    for _ in range(count):
        spool.append(lambda s, q: checked_payload(s, q, size))
    stream = spool.stream_id
    spool.close()
    return stream


def assert_fresh(spool: Spool, old_stream: str | None) -> None:
    stats = spool.stats()
    assert stats.recovered_corrupt == 1
    assert stats.depth == 0 and stats.next_seq == 0
    assert spool.stream_id != old_stream
    assert spool.append(checked_payload) == 0
    assert consume(spool) == [0]


def test_garbage_file_is_moved_aside_and_a_new_stream_starts(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    garbage = random.Random(1).randbytes(50_000)
    path.write_bytes(garbage)
    spool = Spool(path)
    assert_fresh(spool, None)
    (aside,) = moved_aside(path)
    assert aside.read_bytes() == garbage  # kept for inspection
    spool.close()


def test_truncated_file_is_moved_aside(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    stream = filled(path)
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)
    spool = Spool(path)
    assert_fresh(spool, stream)
    assert len(moved_aside(path)) == 1
    spool.close()


def test_damaged_pages_fail_quick_check_at_open(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    stream = filled(path)
    with path.open("r+b") as f:
        f.seek(4096 * 3)
        f.write(random.Random(2).randbytes(4096 * 20))
    spool = Spool(path)
    assert_fresh(spool, stream)
    spool.close()


def test_a_foreign_database_is_not_used(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE other (x)")
    conn.close()
    spool = Spool(path)
    assert_fresh(spool, None)
    spool.close()


def test_corruption_during_operation_recovers_and_ignores_stale_acks(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    filled(path, count=200)  # 4 MB: more than SQLite's page cache
    spool = Spool(path)
    old_stream = spool.stream_id
    with path.open("r+b") as f:
        f.seek(4096 * 3)
        f.write(random.Random(3).randbytes(4096 * 900))
    stale = None
    for _ in range(200):
        item = spool.oldest()
        if item is None:
            break
        stale = item
        spool.ack(item.seq, stream_id=item.stream_id)
    assert spool.stream_id != old_stream
    assert spool.stats().recovered_corrupt == 1
    assert len(moved_aside(path)) == 1
    assert spool.append(checked_payload) == 0
    assert stale is not None and stale.stream_id == old_stream
    spool.ack(0, stream_id=old_stream)  # an ack meant for the old stream must not remove seq 0
    assert consume(spool) == [0]
    spool.close()


def test_recovery_count_carries_over_to_the_next_file(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    path.write_bytes(b"not a database" * 100)
    Spool(path).close()
    path.write_bytes(b"still not a database" * 100)
    spool = Spool(path)
    assert spool.stats().recovered_corrupt == 1  # the first count was in the file it replaced
    spool.close()
    spool = Spool(path)
    assert spool.stats().recovered_corrupt == 1
    assert len(moved_aside(path)) == 2
    spool.close()


# -- kill -9 -------------------------------------------------------------------------------------

APPENDER = textwrap.dedent(
    """
    import hashlib, os, random, sys, threading
    from edge.wire.payload import Payload
    from edge.delivery.spool import Spool

    spool = Spool(sys.argv[1])

    def build(stream, seq):
        data = random.randbytes(random.randrange(10, 30000))
        props = {"stream": stream, "seq": str(seq), "kind": "data"}
        return Payload(hashlib.sha256(data).digest() + data, props)

    def acker():
        while True:
            item = spool.oldest()
            if item is not None and random.random() < 0.3:
                spool.ack(item.seq)
                os.write(1, b"K %d\\n" % item.seq)

    threading.Thread(target=acker, daemon=True).start()
    while True:
        os.write(1, b"A %d\\n" % spool.append(build))
    """
)


def test_kill_9_at_random_points_loses_nothing_and_leaves_no_gap(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    rng = random.Random(9)
    next_seq = 0
    stream = None
    for _round in range(6):
        child = subprocess.Popen(
            [sys.executable, "-c", APPENDER, str(path)],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert child.stdout is not None
        target = rng.randrange(5, 400)
        lines = [child.stdout.readline() for _ in range(target)]
        child.send_signal(signal.SIGKILL)
        # The rest through the same buffered reader: communicate() reads the raw pipe and would
        # miss lines readline() had already buffered (which made this test flaky).
        lines += child.stdout.read().splitlines(keepends=True)
        assert child.stderr is not None
        err = child.stderr.read()
        child.stdout.close()
        child.stderr.close()
        assert child.wait(timeout=30) == -signal.SIGKILL, err.decode()
        appended = [int(line.split()[1]) for line in lines if line.startswith(b"A ")]
        acked = {int(line.split()[1]) for line in lines if line.startswith(b"K ")}
        assert appended and appended[0] == next_seq  # numbering continued from the last round

        spool = Spool(path)
        stats = spool.stats()
        assert stats.recovered_corrupt == 0
        assert stream in (None, spool.stream_id)
        stream = spool.stream_id
        # At most one append committed but not reported before the kill.
        assert stats.next_seq in (appended[-1] + 1, appended[-1] + 2)
        present = consume(spool)  # also checks every checksum
        first = present[0] if present else stats.next_seq
        assert present == list(range(first, stats.next_seq))  # contiguous up to the newest
        assert not acked & set(present)
        unreported_acks = set(appended) - acked - set(present)
        assert len(unreported_acks) <= 1  # the acker may die between ack and report
        assert all(seq < first for seq in unreported_acks)
        next_seq = stats.next_seq
        spool.close()


# -- random operations (hypothesis) --------------------------------------------------------------


class SpoolModel(RuleBasedStateMachine):
    """Random appends, acks, dead letters and reopens against a deque of expected seqs."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp()
        self.path = Path(self.dir) / "spool.db"
        self.spool = Spool(self.path)
        self.pending: deque[int] = deque()
        self.next_seq = 0

    @rule(size=st.integers(0, 5000))
    def append(self, size: int) -> None:
        seq = self.spool.append(lambda s, q: checked_payload(s, q, size))
        assert seq == self.next_seq
        self.pending.append(seq)
        self.next_seq += 1

    @rule()
    def ack_oldest(self) -> None:
        item = self.spool.oldest()
        if self.pending:
            assert item is not None and item.seq == self.pending.popleft()
            assert intact(item.payload)
            self.spool.ack(item.seq)
        else:
            assert item is None

    @rule()
    def dead_letter_oldest(self) -> None:
        item = self.spool.oldest()
        if item is not None:
            self.spool.dead_letter(item.seq, "poison")
            self.pending.popleft()

    @rule()
    def reopen(self) -> None:
        self.spool.close()
        self.spool = Spool(self.path)

    @invariant()
    def matches_model(self) -> None:
        stats = self.spool.stats()
        assert (stats.depth, stats.next_seq) == (len(self.pending), self.next_seq)

    def teardown(self) -> None:
        self.spool.close()
        shutil.rmtree(self.dir)


TestSpoolModel = SpoolModel.TestCase
TestSpoolModel.settings = settings(max_examples=25, stateful_step_count=30, deadline=None)


def test_no_leftover_files_beside_the_spool(tmp_path: Path) -> None:
    path = tmp_path / "spool.db"
    spool = Spool(path)
    spool.append(checked_payload)
    spool.close()
    # The WAL is checkpointed and removed on close; the mark of what was sent stays.
    assert sorted(os.listdir(tmp_path)) == ["spool.db", "spool.db.sent"]


# -- priorities (issue 11: campaigns) ------------------------------------------------------------


def test_delivery_order_is_priority_then_seq(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db")
    for priority in (5, 5, 9, 0, 5, 0):
        spool.append(checked_payload, priority=priority)
    first = spool.oldest()
    assert first is not None and first.seq == 3
    walked = [first.seq]
    while (item := spool.oldest(after=walked[-1])) is not None:
        walked.append(item.seq)
    assert walked == [3, 5, 0, 1, 4, 2]
    assert consume(spool) == [3, 5, 0, 1, 4, 2]
    spool.close()


def test_the_cap_drops_the_least_urgent_first(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=262_144)
    spool.append(lambda s, q: checked_payload(s, q, 150), priority=0)
    for _ in range(3000):
        spool.append(lambda s, q: checked_payload(s, q, 150), priority=5)
    assert spool.stats().dropped_full > 0
    first = spool.oldest()
    assert first is not None and first.seq == 0  # the urgent one is still there
    spool.close()


def test_a_spool_from_before_priorities_gets_the_column_and_keeps_its_order(
    tmp_path: Path,
) -> None:
    path = tmp_path / "spool.db"
    filled(path, count=5, size=100)
    with sqlite3.connect(path) as conn:  # as version 1 files were made before issue 11
        conn.execute("DROP INDEX spool_order")
        conn.execute("ALTER TABLE spool DROP COLUMN priority")
    conn.close()
    spool = Spool(path)
    spool.append(checked_payload, priority=0)
    assert consume(spool) == [5, 0, 1, 2, 3, 4]
    spool.close()
