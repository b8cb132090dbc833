"""The file uplink on a real folder, including a kill -9 in the middle of writes."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edge.delivery.uplinks.file import FileUplink
from edge.errors import ConfigError, PermanentUplinkError, TransientUplinkError
from edge.wire.payload import Payload

REPO = Path(__file__).resolve().parents[3]
STREAM = "0123456789abcdef0123456789abcdef"


def payload(seq: int, kind: str = "data", body: bytes = b"body") -> Payload:
    return Payload(body, {"stream": STREAM, "seq": str(seq), "kind": kind, "vehicle": "v1"})


def test_writes_one_file_per_payload_holding_exactly_the_body(tmp_path: Path) -> None:
    uplink = FileUplink(tmp_path / "outbox")
    uplink.send(payload(7, body=b"\x00\x01binary"), timeout=1)
    uplink.send(payload(8, kind="schema"), timeout=1)
    assert sorted(p.name for p in (tmp_path / "outbox").iterdir()) == [
        f"{STREAM}-000000000007.data.ctl",
        f"{STREAM}-000000000008.schema.ctl",
    ]
    assert (tmp_path / "outbox" / f"{STREAM}-000000000007.data.ctl").read_bytes() == (
        b"\x00\x01binary"
    )


def test_names_sort_in_stream_order(tmp_path: Path) -> None:
    uplink = FileUplink(tmp_path, fsync=False)
    for seq in (10, 9, 100, 1):
        uplink.send(payload(seq), timeout=1)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert [int(n.split("-")[1].split(".")[0]) for n in names] == [1, 9, 10, 100]


def test_resending_replaces_the_same_file(tmp_path: Path) -> None:
    uplink = FileUplink(tmp_path)
    uplink.send(payload(1, body=b"first"), timeout=1)
    uplink.send(payload(1, body=b"first"), timeout=1)
    assert [p.read_bytes() for p in tmp_path.iterdir()] == [b"first"]


def test_max_files_refuses_transiently_until_the_consumer_reads(tmp_path: Path) -> None:
    uplink = FileUplink(tmp_path, max_files=2)
    uplink.send(payload(1), timeout=1)
    uplink.send(payload(2), timeout=1)
    with pytest.raises(TransientUplinkError, match="max_files"):
        uplink.send(payload(3), timeout=1)
    uplink.send(payload(2), timeout=1)  # a re-send does not add a file
    (tmp_path / f"{STREAM}-000000000001.data.ctl").unlink()  # the consumer took one
    uplink.send(payload(3), timeout=1)
    assert len(list(tmp_path.iterdir())) == 2


@pytest.mark.parametrize(
    "properties",
    [
        {"seq": "1", "kind": "data"},
        {"stream": "../../etc", "seq": "1", "kind": "data"},
        {"stream": STREAM, "seq": "-1", "kind": "data"},
        {"stream": STREAM, "seq": "1", "kind": "da/ta"},
        {"stream": STREAM, "seq": "1"},
    ],
)
def test_unnameable_payload_is_a_permanent_error(
    tmp_path: Path, properties: dict[str, str]
) -> None:
    uplink = FileUplink(tmp_path)
    with pytest.raises(PermanentUplinkError):
        uplink.send(Payload(b"x", properties), timeout=1)
    assert list(tmp_path.iterdir()) == []


def test_io_errors_are_transient(tmp_path: Path) -> None:
    uplink = FileUplink(tmp_path / "outbox")
    (tmp_path / "outbox").rmdir()  # e.g. an unmounted stick
    with pytest.raises(TransientUplinkError, match="cannot write"):
        uplink.send(payload(1), timeout=1)
    (tmp_path / "outbox").mkdir()
    uplink.send(payload(1), timeout=1)


def test_stale_temporary_files_are_removed_at_start(tmp_path: Path) -> None:
    stale = tmp_path / f".{STREAM}-000000000001.data.ctl.1a2b3c4d.ctl.tmp"
    stale.write_bytes(b"half")
    other = tmp_path / ".keep"
    other.write_bytes(b"")
    FileUplink(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".keep"]


def test_parse_options() -> None:
    options = FileUplink.parse_options({"path": "/var/outbox"}, "uplink")
    assert options == FileUplink.Options(path="/var/outbox", fsync=True, max_files=None)
    options = FileUplink.parse_options({"path": "o", "fsync": False, "max_files": 10}, "uplink")
    assert options == FileUplink.Options(path="o", fsync=False, max_files=10)


@pytest.mark.parametrize(
    ("table", "field"),
    [
        ({}, "uplink.path"),
        ({"path": ""}, "uplink.path"),
        ({"path": 3}, "uplink.path"),
        ({"path": "o", "fsync": "yes"}, "uplink.fsync"),
        ({"path": "o", "max_files": 0}, "uplink.max_files"),
        ({"path": "o", "max_files": 1.5}, "uplink.max_files"),
        ({"path": "o", "maxfiles": 3}, "uplink.maxfiles"),
    ],
)
def test_parse_options_names_the_bad_field(table: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError) as info:
        FileUplink.parse_options(table, "uplink")
    assert info.value.field == field


def test_from_options(tmp_path: Path) -> None:
    options = FileUplink.parse_options({"path": str(tmp_path / "o"), "max_files": 1}, "uplink")
    uplink = FileUplink.from_options(options)
    assert uplink.kind == "file" and uplink.path == tmp_path / "o"
    uplink.send(payload(1), timeout=1)
    with pytest.raises(TransientUplinkError):
        uplink.send(payload(2), timeout=1)


WRITER = textwrap.dedent(
    """
    import hashlib, os, random, sys
    from edge.wire.payload import Payload
    from edge.delivery.uplinks.file import FileUplink

    uplink = FileUplink(sys.argv[1])
    seq = 0
    while True:
        data = random.randbytes(random.randrange(1, 200_000))
        props = {"stream": "s", "seq": str(seq), "kind": "data"}
        uplink.send(Payload(hashlib.sha256(data).digest() + data, props), timeout=1)
        os.write(1, b"%d\\n" % seq)
        seq += 1
    """
)


def test_kill_9_never_leaves_a_partial_file(tmp_path: Path) -> None:
    for round_ in range(4):
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE
        )
        assert child.stdout is not None
        lines = [child.stdout.readline() for _ in range(5 + 7 * round_)]
        child.send_signal(signal.SIGKILL)
        # Not communicate(): it reads the raw pipe and misses what readline() already buffered.
        lines += child.stdout.read().splitlines()
        child.stdout.close()
        child.wait(timeout=30)
        confirmed = [int(line) for line in lines]
        for seq in confirmed:
            assert (tmp_path / f"s-{seq:012d}.data.ctl").exists()
        for path in tmp_path.iterdir():
            if not path.name.startswith("."):
                body = path.read_bytes()
                assert hashlib.sha256(body[32:]).digest() == body[:32], path.name
    FileUplink(tmp_path)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
