"""The forwarder between a real spool file and real uplinks (the file uplink, an in-memory one)."""

from __future__ import annotations

import logging
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from edge.clock import FakeClock
from edge.delivery.forwarder import Forwarder
from edge.delivery.spool import Spool
from edge.delivery.uplinks.base import Uplink
from edge.delivery.uplinks.file import FileUplink
from edge.errors import PermanentUplinkError, RejectedPayloadError, TransientUplinkError
from edge.wire.payload import Payload
from tests.support.waiting import wait_for


def fast(spool: Spool, uplink: Uplink, clock: FakeClock | None = None) -> Forwarder:
    """A forwarder whose retries wait milliseconds."""
    return Forwarder(spool, uplink, backoff_initial=0.001, backoff_max=0.01, clock=clock)


def make(stream: str, seq: int, size: int = 100) -> Payload:
    body = f"{seq}:".encode() + bytes(size)
    return Payload(body, {"stream": stream, "seq": str(seq), "kind": "data"})


class MemoryUplink(Uplink):
    """A real uplink that keeps what it receives in a list; ``fail`` decides each attempt.

    ``fail(attempt, payload)`` returns an exception to raise, or None to accept the payload.
    """

    kind = "memory"

    def __init__(
        self, fail: Callable[[int, Payload], Exception | None] = lambda n, p: None
    ) -> None:
        self.fail = fail
        self.attempts = 0
        self.received: list[Payload] = []
        self._lock = threading.Lock()

    def send(self, payload: Payload, timeout: float) -> None:
        with self._lock:
            self.attempts += 1
            error = self.fail(self.attempts, payload)
            if error is not None:
                raise error
            self.received.append(payload)

    def seqs(self) -> list[int]:
        with self._lock:
            return [int(p.properties["seq"]) for p in self.received]


@pytest.fixture
def spool(tmp_path: Path) -> Iterator[Spool]:
    spool = Spool(tmp_path / "spool.db")
    yield spool
    spool.close()


def fill(spool: Spool, count: int, size: int = 100) -> None:
    for _ in range(count):
        spool.append(lambda s, q: make(s, q, size))


def test_delivers_everything_in_order_to_the_file_uplink(spool: Spool, tmp_path: Path) -> None:
    fill(spool, 50)
    uplink = FileUplink(tmp_path / "outbox")
    forwarder = fast(spool, uplink)
    forwarder.start()
    assert forwarder.drain(10)
    assert forwarder.stop(5)
    files = sorted((tmp_path / "outbox").iterdir())
    assert [f.name for f in files] == [
        f"{spool.stream_id}-{seq:012d}.data.ctl" for seq in range(50)
    ]
    assert all(f.read_bytes() == make("", seq).body for seq, f in enumerate(files))
    stats = forwarder.stats()
    assert (stats.sent, stats.retries, stats.transient_errors) == (50, 0, 0)
    assert spool.stats().depth == 0


def test_transient_failures_are_retried_and_counted(spool: Spool) -> None:
    fill(spool, 20)
    uplink = MemoryUplink(lambda n, p: TransientUplinkError("offline") if n <= 5 else None)
    forwarder = fast(spool, uplink)
    forwarder.start()
    assert forwarder.drain(10)
    forwarder.stop(5)
    assert uplink.seqs() == list(range(20))
    stats = forwarder.stats()
    assert (stats.sent, stats.retries, stats.transient_errors) == (20, 5, 5)
    assert stats.last_error == "TransientUplinkError: offline"


def test_intermittent_failures_keep_order_and_lose_nothing(spool: Spool) -> None:
    fill(spool, 60)
    uplink = MemoryUplink(lambda n, p: TransientUplinkError("flaky") if n % 3 == 0 else None)
    forwarder = fast(spool, uplink)
    forwarder.start()
    assert forwarder.drain(10)
    forwarder.stop(5)
    assert uplink.seqs() == list(range(60))
    assert forwarder.stats().transient_errors == uplink.attempts - 60


def test_a_rejected_payload_is_dead_lettered_and_the_stream_goes_on(spool: Spool) -> None:
    fill(spool, 10)

    def poison(n: int, payload: Payload) -> Exception | None:
        if payload.properties["seq"] in {"3", "4"}:
            return RejectedPayloadError("message too large")
        return None

    uplink = MemoryUplink(poison)
    forwarder = fast(spool, uplink)
    forwarder.start()
    assert forwarder.drain(10)
    forwarder.stop(5)
    assert uplink.seqs() == [0, 1, 2, 5, 6, 7, 8, 9]
    stats = forwarder.stats()
    assert (stats.sent, stats.permanent_errors, stats.retries) == (8, 2, 0)
    assert stats.last_error == "RejectedPayloadError: message too large"
    letters = spool.dead_letters()
    assert [(letter.seq, letter.reason) for letter in letters] == [
        (3, "message too large"),
        (4, "message too large"),
    ]
    assert letters[0].payload == make(spool.stream_id, 3)


def test_an_uplink_refusing_everything_keeps_the_backlog_and_resumes(spool: Spool) -> None:
    fill(spool, 20)
    credentials_ok = threading.Event()
    uplink = MemoryUplink(
        lambda n, p: None if credentials_ok.is_set() else PermanentUplinkError("not authorized")
    )
    forwarder = Forwarder(spool, uplink, backoff_initial=0.001, backoff_max=0.05)
    forwarder.start()
    wait_for(lambda: forwarder.stats().permanent_errors >= 3)
    assert spool.dead_letters() == []  # a broken uplink is no reason to drop data
    assert spool.stats().depth == 20
    assert forwarder.stats().last_error == "PermanentUplinkError: not authorized"
    credentials_ok.set()  # e.g. a renewed certificate: delivery resumes without a restart
    assert forwarder.drain(10)
    forwarder.stop(5)
    assert uplink.seqs() == list(range(20))


def test_stop_interrupts_a_long_backoff(spool: Spool) -> None:
    fill(spool, 1)
    uplink = MemoryUplink(lambda n, p: TransientUplinkError("offline"))
    forwarder = Forwarder(spool, uplink, backoff_initial=30, backoff_max=60)
    forwarder.start()
    wait_for(lambda: forwarder.stats().retries >= 1)  # now waiting up to a minute
    started = time.monotonic()
    assert forwarder.stop(5)
    assert time.monotonic() - started < 0.5
    assert spool.stats().depth == 1  # still spooled for next time


def test_wake_sends_without_waiting_for_the_idle_poll(spool: Spool) -> None:
    uplink = MemoryUplink()
    forwarder = fast(spool, uplink)
    forwarder.start()
    time.sleep(0.05)  # idle now, polling once a second
    started = time.monotonic()
    fill(spool, 1)
    forwarder.wake()
    wait_for(lambda: uplink.seqs() == [0])
    assert time.monotonic() - started < 0.5
    forwarder.stop(5)


def test_appends_while_forwarding_arrive_in_order(spool: Spool) -> None:
    uplink = MemoryUplink(lambda n, p: TransientUplinkError("flaky") if n % 7 == 0 else None)
    forwarder = fast(spool, uplink)
    forwarder.start()
    for _ in range(300):
        spool.append(make)
        forwarder.wake()
    assert forwarder.drain(10)
    forwarder.stop(5)
    assert uplink.seqs() == list(range(300))


def test_a_bug_in_the_uplink_does_not_kill_the_thread(spool: Spool) -> None:
    fill(spool, 3)
    uplink = MemoryUplink(lambda n, p: RuntimeError("bug") if n == 1 else None)
    forwarder = fast(spool, uplink)
    forwarder.start()
    assert forwarder.drain(10)
    forwarder.stop(5)
    assert uplink.seqs() == [0, 1, 2]
    assert forwarder.stats().last_error == "RuntimeError: bug"


def test_drain_times_out_while_offline(spool: Spool) -> None:
    fill(spool, 2)
    forwarder = fast(spool, MemoryUplink(lambda n, p: TransientUplinkError("x")))
    forwarder.start()
    started = time.monotonic()
    assert not forwarder.drain(0.2)
    assert 0.2 <= time.monotonic() - started < 1
    forwarder.stop(5)


def test_last_success_time_comes_from_the_clock(spool: Spool) -> None:
    clock = FakeClock(start=1_800_000_000.0)
    forwarder = fast(spool, MemoryUplink(), clock)
    assert forwarder.stats().last_success_time is None
    fill(spool, 1)
    forwarder.start()
    assert forwarder.drain(10)
    forwarder.stop(5)
    assert forwarder.stats().last_success_time == 1_800_000_000.0


def test_payloads_the_spool_dropped_during_an_outage_are_not_sent(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool.db", max_bytes=300_000)
    online = threading.Event()
    uplink = MemoryUplink(lambda n, p: None if online.is_set() else TransientUplinkError("x"))
    forwarder = fast(spool, uplink)
    forwarder.start()
    fill(spool, 100, size=20_000)  # 2 MB into 300 kB: the first ones are dropped
    online.set()
    assert forwarder.drain(10)
    forwarder.stop(5)
    dropped = spool.stats().dropped_full
    assert dropped > 0
    assert uplink.seqs() == list(range(dropped, 100))
    spool.close()


def test_memory_stays_flat_while_offline(spool: Spool, caplog: pytest.LogCaptureFixture) -> None:
    # The component's memory, not pytest's: an earlier test may have left the root logger at
    # DEBUG, and pytest keeps every captured record (a debug line per retry here).
    caplog.set_level(logging.WARNING, logger="edge")
    online = threading.Event()
    uplink = MemoryUplink(lambda n, p: None if online.is_set() else TransientUplinkError("x"))
    forwarder = fast(spool, uplink)
    forwarder.start()
    fill(spool, 100)  # warm up caches before measuring
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        fill(spool, 10_000, size=1000)  # 10 MB waiting
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    growth = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert growth < 200_000, growth
    assert spool.stats().depth == 10_100
    assert forwarder.stats().retries > 10
    online.set()
    assert forwarder.drain(120)  # 10,100 durable acks: minutes on a loaded 2-core machine
    forwarder.stop(5)
    assert uplink.seqs() == list(range(10_100))
