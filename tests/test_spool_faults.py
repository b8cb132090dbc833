"""The spool against the faults a gateway meets: a full disk (on a real 20 MB tmpfs), commits
rolled back behind its back, corrupt files piling up, a wall clock set after offline spooling."""

from __future__ import annotations

import os
from pathlib import Path

from edge.errors import SpoolError
from edge.forwarder import Forwarder
from edge.payload import Payload
from edge.spool import DISK_RESERVE, Spool
from edge.uplinks.file import FileUplink
from tests.support.smallfs import fill
from tests.support.waiting import wait_for

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
    assert refused > 0
    kept = spool.stats()
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
