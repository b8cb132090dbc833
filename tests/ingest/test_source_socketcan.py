"""The pipeline on SocketCAN: BusSource and Pipeline reading vcan0 and vcan1 on a real kernel.

Run with ``bash .ci/vcan`` (``-k socketcan`` for this file alone), which finds a kernel with vcan
(the host's, or User-Mode Linux). Tests that take links down or delete them need root and put
the links back afterwards. Traffic is paced: under User-Mode Linux python-can moves only about
2,000 frames a second, and an unpaced burst overflows a receive buffer. Frames are compared by
their kernel receive time, which every socket of one host sees alike.
"""

from __future__ import annotations

import errno
import gc
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import can
import pytest
from can.interfaces.socketcan import SocketcanBus

from edge.config.model import BusConfig, parse_config
from edge.ingest.socketcan import DropCountingReceiver, set_receive_buffer
from edge.ingest.source import CHUNK, DEFAULT_RECEIVE_BUFFER, BusSource, FrameQueue, open_bus
from edge.pipeline import Pipeline
from edge.processing.database import load_database
from edge.simulator.vehicle import DEMO_DBC
from edge.wire.codec import PayloadReader, Row, unpack

LINKS = ("vcan0", "vcan1")
CANFD_MTU = 72
WAIT = 10.0  # for something that should happen (generous: User-Mode Linux is slow)
QUIET = 0.3  # to conclude that no (further) frame comes
ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.vcan,
    pytest.mark.skipif(
        not Path("/sys/class/net/vcan0").exists(), reason="no vcan0: run `bash .ci/vcan`"
    ),
]
needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="changing links needs root"
)

#: The second bus's database: a classic, an extended and a 64-byte CAN FD message, and one that
#: the filter tests leave unselected.
BODY_DBC = """\
VERSION ""

NS_ :

BS_:

BU_: BODY

BO_ 291 Body_Status: 8 BODY
 SG_ Body_DoorsOpen : 0|4@1+ (1,0) [0|15] "" Vector__XXX
 SG_ Body_InteriorTemp : 8|16@1- (0.1,-40) [-100|100] "degC" Vector__XXX
 SG_ Body_Counter : 56|8@1+ (1,0) [0|255] "" Vector__XXX

BO_ 292 Body_Unselected: 8 BODY
 SG_ Body_Spare : 0|8@1+ (1,0) [0|255] "" Vector__XXX

BO_ 2566853172 Trailer_Ext: 8 BODY
 SG_ Trailer_Load : 0|16@1+ (0.5,0) [0|30000] "kg" Vector__XXX
 SG_ Trailer_Axles : 16|4@1+ (1,0) [0|15] "" Vector__XXX

BO_ 512 Camera_Wide: 64 BODY
 SG_ Camera_First : 0|16@1+ (1,0) [0|65535] "" Vector__XXX
 SG_ Camera_Middle : 256|32@1- (0.001,0) [-2000000|2000000] "m" Vector__XXX
 SG_ Camera_Last : 496|16@1+ (1,0) [0|65535] "" Vector__XXX

BA_DEF_ BO_  "VFrameFormat" ENUM  "StandardCAN","ExtendedCAN","reserved","J1939PG","reserved",\
"reserved","reserved","reserved","reserved","reserved","reserved","reserved","reserved",\
"reserved","StandardCAN_FD","ExtendedCAN_FD";
BA_DEF_DEF_  "VFrameFormat" "StandardCAN";
BA_ "VFrameFormat" BO_ 2566853172 1;
BA_ "VFrameFormat" BO_ 512 14;
"""
BODY_SELECTED = ["Body_Status.*", "Trailer_Ext.*", "Camera_Wide.*"]


# --- helpers -------------------------------------------------------------------------------------


def ip_link(*args: str) -> None:
    subprocess.run(["ip", "link", *args], check=True, capture_output=True)


@contextmanager
def links_restored() -> Iterator[None]:
    """Puts vcan0 and vcan1 back (present, mtu 72, up) however the block ends."""
    try:
        yield
    finally:
        for link in LINKS:
            if not Path(f"/sys/class/net/{link}").exists():
                ip_link("add", "dev", link, "type", "vcan")
            if Path(f"/sys/class/net/{link}/mtu").read_text().strip() != str(CANFD_MTU):
                ip_link("set", link, "down")
                ip_link("set", link, "mtu", str(CANFD_MTU))
            ip_link("set", link, "up")


def wait_for(condition: Callable[[], bool], timeout: float = WAIT) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def frame(arbitration_id: int, data: bytes = b"", **kwargs: Any) -> can.Message:
    """A message; standard 11-bit ID unless told (python-can's own default is extended)."""
    kwargs.setdefault("is_extended_id", False)
    return can.Message(arbitration_id=arbitration_id, data=data, **kwargs)


def send(bus: can.BusABC, msg: can.Message) -> None:
    """Send, waiting out a full transmit queue (ENOBUFS) and the one ENETDOWN a socket reports
    after its link was down."""
    for _ in range(200):
        try:
            bus.send(msg)
            return
        except can.CanOperationError as exc:
            if exc.error_code not in (errno.ENOBUFS, errno.ENETDOWN):
                raise
            time.sleep(0.005)
    bus.send(msg)


@contextmanager
def socketcan_bus(channel: str) -> Iterator[SocketcanBus]:
    """A CAN FD capable bus with a receive buffer big enough to hold a whole test's traffic."""
    bus = can.Bus(interface="socketcan", channel=channel, fd=True)
    assert isinstance(bus, SocketcanBus)
    try:
        set_receive_buffer(bus.socket, DEFAULT_RECEIVE_BUFFER)
        yield bus
    finally:
        bus.shutdown()


def drain_socket(receiver: DropCountingReceiver) -> list[can.Message]:
    """Everything the kernel queued on a sniffer's socket (which must have lost nothing)."""
    messages = []
    while (received := receiver.recv(QUIET)) is not None:
        messages.append(received.message)
    assert receiver.dropped_total() == 0
    return messages


def drain(queue: FrameQueue, count: int, timeout: float = WAIT) -> list[can.Message]:
    """At least ``count`` frames from ``queue`` (fewer after ``timeout``), then whatever else
    comes within :data:`QUIET`."""
    got: list[can.Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        chunk = queue.get(timeout=0.05)
        if chunk:
            got.extend(chunk)
    while (chunk := queue.get(timeout=QUIET)) is not None:
        got.extend(chunk)
    return got


class Running:
    """A BusSource reading into ``queue`` in a thread, stopped at exit."""

    def __init__(self, source: BusSource, queue: FrameQueue) -> None:
        self.source = source
        self.stop = threading.Event()
        self.thread = threading.Thread(target=source.run, args=(queue, self.stop), daemon=True)

    def __enter__(self) -> Running:
        self.thread.start()
        assert wait_for(lambda: self.source.stats()["link_up"]), self.source.stats()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        assert not self.thread.is_alive()


def full_queue() -> FrameQueue:
    """A queue with room for one chunk, taken: a source reading into it stalls after its first
    chunk until the test takes the placeholder out."""
    queue = FrameQueue(max_frames=CHUNK)
    assert queue.put([frame(0x7FF)], threading.Event())
    return queue


def bus_config(channel: str, **kwargs: Any) -> BusConfig:
    return BusConfig(
        name=f"bus-{channel}",
        interface="socketcan",
        channel=channel,
        fd=True,
        databases=("unused.dbc",),
        **kwargs,
    )


def pipeline_config(tmp_path: Path, buses: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "vehicle_id": "vcan-car",
        "buses": buses,
        "spool": {"path": str(tmp_path / "spool.db")},
        "uplink": {"type": "file", "path": str(tmp_path / "outbox")},
    }
    data.update(extra)
    return data


def body_dbc(tmp_path: Path) -> Path:
    path = tmp_path / "body.dbc"
    path.write_text(BODY_DBC)
    return path


def body_bus(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    bus = {
        "name": "body",
        "interface": "socketcan",
        "channel": "vcan1",
        "fd": True,
        "dbc": [str(body_dbc(tmp_path))],
    }
    bus.update(extra)
    return bus


def source_stats(pipeline: Pipeline) -> list[dict[str, Any]]:
    return list(pipeline.stats().sources.values())


def start(pipeline: Pipeline) -> None:
    pipeline.start()
    assert wait_for(lambda: all(s["link_up"] for s in source_stats(pipeline)))


def outbox_rows(outbox: Path) -> list[Row]:
    decoder = PayloadReader()
    payloads = []
    for path in outbox.glob("*.ctl"):
        data = path.read_bytes()
        envelope = unpack(data).envelope
        payloads.append(((envelope["stream"], envelope["seq"]), data))
    rows: list[Row] = []
    for _, data in sorted(payloads):
        rows.extend(decoder.rows(data))
    return rows


#: A decoded value: bus, message, signal, time in milliseconds, value (rounded well below any
#: signal's resolution, so that cantools' and the payload's float arithmetic compare equal).
Value = tuple[str, str, str, int, float]


def row_value(bus: str, message: str, signal: str, seconds: float, value: float) -> Value:
    return (bus, message, signal, round(seconds * 1000), round(value, 9))


def expected_values(bus: str, db: Any, frames: list[can.Message]) -> Counter[Value]:
    """What the pipeline should deliver for ``frames`` with every signal sampled every time.
    (A counter: a frame sent late may arrive in the same millisecond as the next of its kind.)"""
    values: Counter[Value] = Counter()
    for msg in frames:
        message = db.get_message_by_frame_id(msg.arbitration_id)
        decoded = message.decode(bytes(msg.data), decode_choices=False)
        for name, value in decoded.items():
            values[row_value(bus, message.name, name, msg.timestamp, value)] += 1
    return values


def body_frames(db: Any, count: int) -> Iterator[can.Message]:
    """Frames of the body database with values changing every time: classic, extended, FD."""
    status = db.get_message_by_name("Body_Status")
    trailer = db.get_message_by_name("Trailer_Ext")
    camera = db.get_message_by_name("Camera_Wide")
    for i in range(count):
        yield frame(
            status.frame_id,
            status.encode(
                {"Body_DoorsOpen": i % 16, "Body_InteriorTemp": -20 + i / 2, "Body_Counter": i}
            ),
        )
        yield frame(
            trailer.frame_id,
            trailer.encode({"Trailer_Load": 100 * i + 0.5, "Trailer_Axles": i % 5}),
            is_extended_id=True,
        )
        yield frame(
            camera.frame_id,
            camera.encode(
                {"Camera_First": i, "Camera_Middle": -1000 + 12.345 * i, "Camera_Last": 65535 - i}
            ),
            is_fd=True,
            bitrate_switch=True,
        )


# --- the pipeline ---------------------------------------------------------------------------------


def test_pipeline_decodes_what_two_buses_carry(tmp_path: Path) -> None:
    """vcan0: `can-telemetry simulate` in another process (demo car, CAN FD, J1939); vcan1:
    python-can sending classic, extended and 64-byte CAN FD frames. The outbox holds exactly
    what cantools decodes from the frames a sniffer saw, at their kernel receive times."""
    data = pipeline_config(
        tmp_path,
        [
            {
                "name": "powertrain",
                "interface": "socketcan",
                "channel": "vcan0",
                "fd": True,
                "dbc": [str(DEMO_DBC)],
                "j1939": True,
            },
            body_bus(tmp_path),
        ],
        signals={"mode": "every"},
        batch={"max_age": 3600},
    )
    pipeline = Pipeline(parse_config(data))
    demo_db = load_database(DEMO_DBC)
    body_db = load_database(body_dbc(tmp_path))
    start(pipeline)
    with socketcan_bus("vcan0") as sniff0, socketcan_bus("vcan1") as sniff1:
        simulator = subprocess.Popen(
            [
                *(sys.executable, "-m", "edge", "simulate", "--interface", "socketcan"),
                *("--channel", "vcan0", "--fd", "--duration", "3", "--speed", "1"),
            ],
            cwd=ROOT,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            with socketcan_bus("vcan1") as tx:
                for msg in body_frames(body_db, 40):
                    send(tx, msg)
                    time.sleep(0.01)
            _, stderr = simulator.communicate(timeout=120)
        finally:
            simulator.kill()
            simulator.wait()
        assert simulator.returncode == 0, stderr
        found = re.search(r"sent (\d+) frames", stderr)
        assert found, stderr
        simulated = drain_socket(DropCountingReceiver(sniff0))
        sent = drain_socket(DropCountingReceiver(sniff1))
    assert len(simulated) == int(found.group(1)) > 1000
    assert any(m.is_fd and len(m.data) == 32 for m in simulated)  # ADAS_Objects
    assert any(m.is_extended_id for m in simulated)  # EEC1 (J1939)
    assert len(sent) == 120

    total = len(simulated) + len(sent)
    assert wait_for(lambda: pipeline.stats().frames >= total)
    sources = source_stats(pipeline)
    assert [(s["frames"], s["kernel_dropped"], s["link_up"]) for s in sources] == [
        (len(simulated), 0, True),
        (len(sent), 0, True),
    ]
    pipeline.stop(drain_timeout=10)
    stats = pipeline.stats()
    assert stats.frames == total and not stats.decode.skipped

    rows = outbox_rows(tmp_path / "outbox")
    got = Counter(row_value(r.bus, r.message, r.signal, r.time, r.value) for r in rows)
    expected = expected_values("powertrain", demo_db, simulated)
    expected += expected_values("body", body_db, sent)
    assert got == expected
    # The 64-byte CAN FD frames, down to their last signal.
    last = sorted((r.time, r.value) for r in rows if r.signal == "Camera_Last")
    assert [v for _, v in last] == [65535 - i for i in range(40)]
    assert {r.source for r in rows if r.message == "EEC1"} == {0x00}  # J1939 source address


@pytest.mark.parametrize("kernel_filters", [True, False], ids=["kernel_filters", "no_filters"])
def test_kernel_filters_keep_unselected_frames_out_of_python(
    tmp_path: Path, kernel_filters: bool
) -> None:
    """Selected, unselected and unknown IDs, remote and error frames. With kernel filters only
    frames of selected messages (data and remote) and error frames reach the source; without,
    the decoder counts the rest as unknown_id / not_selected. Nothing crashes either way."""
    data = pipeline_config(
        tmp_path,
        [body_bus(tmp_path, kernel_filters=kernel_filters)],
        signals={"include": BODY_SELECTED},
    )
    pipeline = Pipeline(parse_config(data))
    db = load_database(body_dbc(tmp_path))
    unselected = db.get_message_by_name("Body_Unselected")
    rounds = 10
    start(pipeline)
    with socketcan_bus("vcan1") as tx:
        for i, selected in enumerate(body_frames(db, rounds)):
            send(tx, selected)
            if i % 3:
                continue
            for other in (
                frame(unselected.frame_id, bytes(8)),
                frame(0x7F0, b"\x01\x02"),  # unknown
                frame(0x1ABCDE, b"\x03", is_extended_id=True),  # unknown, extended
                frame(0x123, is_remote_frame=True, dlc=8),  # Body_Status: selected
                frame(unselected.frame_id, is_remote_frame=True, dlc=8),
                # <linux/can/error.h>: CAN_ERR_CRTL (0x4), data[1] CAN_ERR_CRTL_RX_OVERFLOW.
                frame(0x4, b"\x00\x01" + bytes(6), is_error_frame=True),
            ):
                send(tx, other)
                time.sleep(0.002)
    selected_count = 3 * rounds
    if kernel_filters:
        total = selected_count + 2 * rounds
        skipped = {"remote_frame": rounds, "error_frame": rounds}
    else:
        total = selected_count + 6 * rounds
        skipped = {
            "remote_frame": 2 * rounds,
            "error_frame": rounds,
            "not_selected": rounds,
            "unknown_id": 2 * rounds,
        }
    assert wait_for(lambda: pipeline.stats().frames >= total)
    time.sleep(QUIET)  # nothing more comes
    pipeline.stop()
    stats = pipeline.stats()
    assert (stats.frames, source_stats(pipeline)[0]["frames"]) == (total, total)
    assert stats.decode.skipped == skipped
    assert stats.decode.decoded == selected_count


def test_no_selected_message_lets_no_frame_through() -> None:
    """An empty filter list (a bus none of whose messages is selected) is "nothing" on SocketCAN,
    not python-can's "everything"; error frames still come."""
    bus = open_bus(bus_config("vcan1"), [])
    assert isinstance(bus, SocketcanBus)
    try:
        with socketcan_bus("vcan1") as tx:
            send(tx, frame(0x1, b"\x01"))
            send(tx, frame(0x2, is_extended_id=True))
            send(tx, frame(0x4, bytes(8), is_error_frame=True))
        got = drain_socket(DropCountingReceiver(bus))
    finally:
        bus.shutdown()
    assert [(m.arbitration_id, m.is_error_frame) for m in got] == [(0x4, True)]


# --- the source -----------------------------------------------------------------------------------


@needs_root  # without CAP_NET_ADMIN, net.core.rmem_max caps the size
@pytest.mark.parametrize("options", [{}, {"receive_buffer": 1 << 20}], ids=["default", "option"])
def test_open_bus_sizes_the_receive_buffer(options: dict[str, Any]) -> None:
    bus = open_bus(bus_config("vcan0", options=options))
    try:
        got = bus.socket.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)  # type: ignore[attr-defined]
    finally:
        bus.shutdown()
    # Linux reserves (and reports) twice the size asked for.
    assert got == 2 * options.get("receive_buffer", DEFAULT_RECEIVE_BUFFER)


def test_open_bus_on_a_missing_interface_raises_enodev_and_leaves_no_socket() -> None:
    with pytest.raises(OSError) as excinfo:
        open_bus(bus_config("vcan9"))
    assert not isinstance(excinfo.value, can.CanError)
    assert excinfo.value.errno == errno.ENODEV
    del excinfo
    gc.collect()  # an unclosed socket would warn now (an error under filterwarnings)


def test_frames_keep_their_kernel_receive_time_when_read_late() -> None:
    queue = full_queue()
    source = BusSource(bus_config("vcan0"))
    with Running(source, queue), socketcan_bus("vcan0") as tx:
        send(tx, frame(0x1))  # read at once; the source then waits for room in the queue
        assert wait_for(lambda: source.stats()["frames"] == 1)
        sent_at = time.time()
        send(tx, frame(0x2))
        time.sleep(0.5)
        assert queue.get(timeout=1) is not None  # the placeholder: room again
        got = drain(queue, 2)
        read_at = time.time()
    assert [m.arbitration_id for m in got] == [0x1, 0x2]
    late = got[1]
    assert sent_at <= late.timestamp < sent_at + 0.2  # stamped on arrival...
    assert read_at - late.timestamp >= 0.5  # ...not when it was read
    assert late.channel == "bus-vcan0"


def test_receive_buffer_overflow_is_counted() -> None:
    queue = full_queue()
    source = BusSource(bus_config("vcan0", options={"receive_buffer": 0}))  # a few frames
    burst = 200
    with Running(source, queue), socketcan_bus("vcan0") as tx:
        send(tx, frame(0x1))
        assert wait_for(lambda: source.stats()["frames"] == 1)  # and now it waits
        for i in range(burst):
            send(tx, frame(0x100 + i % 16, i.to_bytes(2, "big")))
        assert queue.get(timeout=1) is not None  # the reader goes on
        got = drain(queue, 1)[1:]

        def accounted() -> bool:
            return bool(len(got) + source.stats()["kernel_dropped"] == burst)

        assert wait_for(accounted), (len(got), source.stats())
    dropped = source.stats()["kernel_dropped"]
    assert dropped > 0 and len(got) + dropped == burst
    # What got through is the start of the burst, in order; the rest was lost in the kernel.
    assert [int.from_bytes(m.data, "big") for m in got] == list(range(len(got)))


# --- links going down, coming back, disappearing ------------------------------------------------


@needs_root
def test_link_down_is_reported_and_the_same_socket_reads_on_after_up() -> None:
    queue = FrameQueue()
    source = BusSource(bus_config("vcan0"))
    with links_restored(), Running(source, queue), socketcan_bus("vcan0") as tx:
        send(tx, frame(0x1))
        assert [m.arbitration_id for m in drain(queue, 1)] == [0x1]

        ip_link("set", "vcan0", "down")
        assert wait_for(lambda: not source.stats()["link_up"])
        stats = source.stats()
        assert stats["link_down_events"] == 1 and stats["connected"]
        time.sleep(0.5)  # no busy loop, no reopening while it is down
        assert source.stats() == stats

        ip_link("set", "vcan0", "up")
        assert wait_for(lambda: source.stats()["link_up"])
        send(tx, frame(0x2))
        assert [m.arbitration_id for m in drain(queue, 1)] == [0x2]
    stats = source.stats()
    assert (stats["link_down_events"], stats["reopens"], stats["errors"]) == (1, 0, 0)


@needs_root
def test_deleted_link_is_retried_until_it_is_back() -> None:
    queue = FrameQueue()
    source = BusSource(bus_config("vcan1"), reopen_max=0.4)
    with links_restored(), Running(source, queue):
        with socketcan_bus("vcan1") as tx:
            send(tx, frame(0x1))
            assert [m.arbitration_id for m in drain(queue, 1)] == [0x1]

        ip_link("del", "vcan1")
        assert wait_for(lambda: source.stats()["errors"] >= 4)  # ENODEV, then opening: retrying
        stats = source.stats()
        assert not stats["connected"] and not stats["link_up"] and stats["reopens"] == 1

        ip_link("add", "dev", "vcan1", "type", "vcan")
        ip_link("set", "vcan1", "mtu", str(CANFD_MTU))
        ip_link("set", "vcan1", "up")
        assert wait_for(lambda: source.stats()["link_up"])
        with socketcan_bus("vcan1") as tx:
            send(tx, frame(0x2, bytes(range(64)), is_fd=True))
            got = drain(queue, 1)
    assert [(m.arbitration_id, bytes(m.data)) for m in got] == [(0x2, bytes(range(64)))]
    stats = source.stats()
    assert stats["reopens"] == 1 and stats["frames"] == 2
