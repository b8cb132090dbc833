"""SocketCAN on a real kernel: what python-can and the kernel actually do, and
edge.ingest.socketcan.

These tests document the behaviour the pipeline's SocketCAN source is built on. They need vcan0
and vcan1 up with mtu 72 (CAN FD capable); run them with ``bash .ci/vcan``, which finds a kernel
that has vcan (the host's, or User-Mode Linux). Tests that take links down or delete them need
root and put the links back afterwards. Traffic is a few frames at a time: system calls are slow
under User-Mode Linux, and an unpaced burst overflows a receive buffer.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import can
import pytest
from can.interfaces.socketcan import SocketcanBus

from edge.ingest.socketcan import DropCountingReceiver, close_unbound_socket

LINKS = ("vcan0", "vcan1")
CANFD_MTU = 72
WAIT = 2.0  # for a frame that should come (generous: User-Mode Linux is slow)
QUIET = 0.2  # to conclude that no (further) frame comes

pytestmark = [
    pytest.mark.vcan,
    pytest.mark.skipif(
        not Path("/sys/class/net/vcan0").exists(), reason="no vcan0: run `bash .ci/vcan`"
    ),
]
needs_root = pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0, reason="changing links needs root"
)

OpenBus = Callable[..., SocketcanBus]


@pytest.fixture
def open_bus() -> Iterator[OpenBus]:
    """Opens CAN FD capable python-can SocketCAN buses (vcan0 unless told) and shuts them down."""
    buses: list[SocketcanBus] = []

    def _open(channel: str = "vcan0", **kwargs: Any) -> SocketcanBus:
        kwargs.setdefault("fd", True)
        bus = can.Bus(interface="socketcan", channel=channel, **kwargs)
        assert isinstance(bus, SocketcanBus)
        buses.append(bus)
        return bus

    yield _open
    for bus in buses:
        bus.shutdown()


@pytest.fixture
def restore_links() -> Iterator[None]:
    """Puts vcan0 and vcan1 back (present, mtu 72, up) after a test that changes them."""
    yield
    for link in LINKS:
        if not Path(f"/sys/class/net/{link}").exists():
            ip_link("add", "dev", link, "type", "vcan")
        ip_link("set", link, "down")
        ip_link("set", link, "mtu", str(CANFD_MTU))
        ip_link("set", link, "up")


def ip_link(*args: str) -> None:
    subprocess.run(["ip", "link", *args], check=True, capture_output=True)


def open_bus_and_fail(channel: str) -> OSError:
    """Opens a bus that cannot be opened; returns the error."""
    with pytest.raises(OSError) as excinfo:
        can.Bus(interface="socketcan", channel=channel, fd=True)
    # python-can does not close the socket it failed to bind; it leaves it to the garbage
    # collector, whose ResourceWarning is an error under this project's filterwarnings. A source
    # that reopens a bus in a loop must close it: edge.ingest.socketcan.close_unbound_socket does.
    leaked = [
        tb_frame.f_locals["self"].socket
        for tb_frame, _ in traceback.walk_tb(excinfo.tb)
        if isinstance(tb_frame.f_locals.get("self"), SocketcanBus)
    ]
    assert leaked and leaked[0].fileno() != -1
    close_unbound_socket(excinfo.value)
    assert leaked[0].fileno() == -1
    return excinfo.value


def frame(arbitration_id: int, data: bytes = b"", **kwargs: Any) -> can.Message:
    """A message; standard 11-bit ID unless told (python-can's own default is extended)."""
    kwargs.setdefault("is_extended_id", False)
    return can.Message(arbitration_id=arbitration_id, data=data, **kwargs)


def drain(receiver: DropCountingReceiver) -> list[can.Message]:
    """Everything the kernel queued on the receiver's socket."""
    messages = []
    while (received := receiver.recv(QUIET)) is not None:
        messages.append(received.message)
    return messages


# --- frames ---------------------------------------------------------------------------------------


def test_classic_frame(open_bus: OpenBus) -> None:
    tx, rx = open_bus(), open_bus()
    tx.send(frame(0x123, b"\x01\x02\x03\x04\x05\x06\x07\x08"))
    msg = rx.recv(WAIT)
    assert msg is not None
    assert (msg.arbitration_id, msg.is_extended_id, msg.dlc) == (0x123, False, 8)
    assert msg.data == b"\x01\x02\x03\x04\x05\x06\x07\x08"
    assert not msg.is_fd and not msg.is_remote_frame and not msg.is_error_frame
    assert msg.channel == "vcan0"
    # On vcan every frame was sent by this host, so the kernel flags it as local and python-can
    # reports is_rx=False even for frames another socket sent: do not filter on is_rx.
    assert msg.is_rx is False


def test_extended_id(open_bus: OpenBus) -> None:
    tx, rx = open_bus(), open_bus()
    tx.send(frame(0x1ABCDE12, b"\xaa", is_extended_id=True))
    msg = rx.recv(WAIT)
    assert msg is not None
    assert (msg.arbitration_id, msg.is_extended_id, bytes(msg.data)) == (0x1ABCDE12, True, b"\xaa")


def test_can_fd_frame_with_bitrate_switch(open_bus: OpenBus) -> None:
    tx, rx = open_bus(), open_bus()
    payload = bytes(range(64))
    tx.send(frame(0x456, payload, is_fd=True, bitrate_switch=True))
    # 10 bytes is no CAN FD length: the frame goes out with 12, padded with zeros.
    tx.send(frame(0x457, b"\xff" * 10, is_fd=True))
    msg, padded = rx.recv(WAIT), rx.recv(WAIT)
    assert msg is not None and padded is not None
    assert msg.is_fd and msg.bitrate_switch and not msg.error_state_indicator
    assert (msg.arbitration_id, msg.dlc, bytes(msg.data)) == (0x456, 64, payload)
    assert padded.is_fd and not padded.bitrate_switch
    assert (padded.dlc, bytes(padded.data)) == (12, b"\xff" * 10 + b"\x00\x00")


def test_socket_without_fd_neither_sees_nor_sends_fd_frames(open_bus: OpenBus) -> None:
    tx, classic_rx = open_bus(), open_bus(fd=False)
    tx.send(frame(0x1, bytes(12), is_fd=True))
    tx.send(frame(0x2, b"\x02"))
    msg = classic_rx.recv(WAIT)
    assert msg is not None and msg.arbitration_id == 0x2  # the FD frame was skipped, uncounted
    with pytest.raises(can.CanOperationError) as excinfo:
        classic_rx.send(frame(0x3, bytes(12), is_fd=True))
    assert excinfo.value.error_code == errno.EINVAL


def test_remote_frame(open_bus: OpenBus) -> None:
    tx, rx = open_bus(), open_bus()
    tx.send(frame(0x321, is_remote_frame=True, dlc=5))
    msg = rx.recv(WAIT)
    assert msg is not None
    assert msg.is_remote_frame and (msg.arbitration_id, msg.dlc, bytes(msg.data)) == (0x321, 5, b"")


def test_error_frames_are_never_generated_by_vcan_but_can_be_injected(open_bus: OpenBus) -> None:
    tx, rx, ignoring = open_bus(), open_bus(), open_bus(ignore_rx_error_frames=True)
    # <linux/can/error.h>: class CAN_ERR_CRTL (0x4), data[1] CAN_ERR_CRTL_RX_OVERFLOW (0x01).
    error = frame(0x4, b"\x00\x01" + bytes(6), is_error_frame=True)
    tx.send(error)
    tx.send(frame(0x7, b"\x07"))
    msg = rx.recv(WAIT)
    assert msg is not None
    assert msg.is_error_frame and (msg.arbitration_id, msg.data) == (0x4, error.data)
    after = ignoring.recv(WAIT)  # ignore_rx_error_frames: the kernel does not deliver them
    assert after is not None and after.arbitration_id == 0x7 and not after.is_error_frame


def test_timestamp_is_the_kernels_time_of_arrival(open_bus: OpenBus) -> None:
    tx, rx = open_bus(), open_bus()
    sent_at = time.time()
    tx.send(frame(0x1))
    time.sleep(0.5)
    msg = rx.recv(WAIT)
    read_at = time.time()
    assert msg is not None
    # Stamped when the frame arrived, not when Python read it half a second later.
    assert sent_at <= msg.timestamp < sent_at + 0.2
    assert read_at - msg.timestamp >= 0.5


# --- kernel filters -------------------------------------------------------------------------------


def test_kernel_filters_keep_other_frames_out_of_the_socket(open_bus: OpenBus) -> None:
    tx = open_bus()
    standard_only = open_bus(can_filters=[{"can_id": 0x100, "can_mask": 0x7F0, "extended": False}])
    either = open_bus(can_filters=[{"can_id": 0x100, "can_mask": 0x7F0}])
    for msg in (frame(0x100), frame(0x10F), frame(0x110), frame(0x200), frame(0x105)):
        tx.send(msg)
    tx.send(frame(0x105, is_extended_id=True))
    # Reading the socket itself, not through python-can (which could filter in Python), shows
    # what the kernel let into it.
    got = [(m.arbitration_id, m.is_extended_id) for m in drain(DropCountingReceiver(standard_only))]
    assert got == [(0x100, False), (0x10F, False), (0x105, False)]
    # Without "extended", the filter matches the low bits of 29-bit IDs as well.
    got = [(m.arbitration_id, m.is_extended_id) for m in drain(DropCountingReceiver(either))]
    assert got == [(0x100, False), (0x10F, False), (0x105, False), (0x105, True)]


def test_set_filters_at_runtime(open_bus: OpenBus) -> None:
    tx, rx = open_bus(), open_bus()
    receiver = DropCountingReceiver(rx)
    tx.send(frame(0x1))
    rx.set_filters([{"can_id": 0x5, "can_mask": 0x7FF, "extended": False}])
    tx.send(frame(0x1))
    tx.send(frame(0x5))
    # A filter applies to frames arriving after it is set; the queue is not purged.
    assert [m.arbitration_id for m in drain(receiver)] == [0x1, 0x5]
    rx.set_filters(None)
    tx.send(frame(0x1))
    assert [m.arbitration_id for m in drain(receiver)] == [0x1]


# --- drop counter (SO_RXQ_OVFL) -------------------------------------------------------------------


def overflow(tx: SocketcanBus, rx: SocketcanBus, burst: int) -> None:
    """Shrink rx's receive buffer to the minimum (a few frames) and send a burst it can't hold."""
    rx.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 0)
    for i in range(burst):
        tx.send(frame(i, bytes(8)))


def test_drop_counter_counts_frames_lost_to_a_full_receive_buffer(open_bus: OpenBus) -> None:
    tx, rx = open_bus(), open_bus()
    receiver = DropCountingReceiver(rx)
    assert receiver.dropped_total() == 0
    overflow(tx, rx, burst=50)

    queued = []
    while (received := receiver.recv(QUIET)) is not None:
        queued.append(received)
    # Those frames were queued before the first drop, so they carry no count.
    assert queued and all(r.dropped_total == 0 for r in queued)
    dropped = 50 - len(queued)
    assert dropped > 0
    assert [r.message.arbitration_id for r in queued] == list(range(len(queued)))
    assert receiver.dropped_total() == dropped  # SO_MEMINFO: known at once

    # The next frame that gets in carries the running total...
    tx.send(frame(0x7FF, b"\x01"))
    received = receiver.recv(WAIT)
    assert received is not None
    assert received.dropped_total == dropped and received.message.arbitration_id == 0x7FF
    assert received.message.data == b"\x01" and received.message.channel == "vcan0"
    assert abs(received.message.timestamp - time.time()) < 5
    # ...and so does every later one; it never resets.
    tx.send(frame(0x7FE))
    received = receiver.recv(WAIT)
    assert received is not None and received.dropped_total == dropped


def test_python_can_recv_ignores_the_drop_counter(open_bus: OpenBus) -> None:
    tx, rx = open_bus(), open_bus()
    receiver = DropCountingReceiver(rx)
    overflow(tx, rx, burst=30)
    while receiver.recv(QUIET) is not None:
        pass
    # python-can's ancillary buffer only fits the timestamp, which the kernel puts first, so it
    # truncates the counter (MSG_CTRUNC) and python-can's recv keeps working.
    tx.send(frame(0x42))
    msg = rx.recv(WAIT)
    assert msg is not None and msg.arbitration_id == 0x42
    assert receiver.dropped_total() > 0


def test_receiver_on_a_raw_socket_bound_to_every_interface(open_bus: OpenBus) -> None:
    tx0, tx1 = open_bus("vcan0"), open_bus("vcan1")
    with socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW) as sock:
        sock.setsockopt(socket.SOL_CAN_RAW, socket.CAN_RAW_FD_FRAMES, 1)
        sock.bind(("",))
        receiver = DropCountingReceiver(sock)
        tx0.send(frame(0x10, bytes(range(20)), is_fd=True, bitrate_switch=True))
        tx1.send(frame(0x11, b"\x11", is_extended_id=True))
        first, second = receiver.recv(WAIT), receiver.recv(WAIT)
    assert first is not None and second is not None
    assert (first.message.channel, second.message.channel) == ("vcan0", "vcan1")
    assert first.message.is_fd and first.message.bitrate_switch
    assert (first.message.dlc, bytes(first.message.data)) == (20, bytes(range(20)))
    assert (second.message.arbitration_id, second.message.is_extended_id) == (0x11, True)


# --- links going down, coming back, disappearing ------------------------------------------------


@needs_root
@pytest.mark.usefixtures("restore_links")
def test_link_down_raises_enetdown_once_and_the_same_bus_works_after_up(
    open_bus: OpenBus,
) -> None:
    tx, rx = open_bus(), open_bus()
    tx.send(frame(0x1))
    ip_link("set", "vcan0", "down")

    with pytest.raises(can.CanOperationError) as excinfo:
        rx.recv(WAIT)
    assert excinfo.value.error_code == errno.ENETDOWN
    assert isinstance(excinfo.value.__cause__, OSError)
    # The error is reported once; frames queued before it are still there.
    before = rx.recv(WAIT)
    assert before is not None and before.arbitration_id == 0x1
    assert rx.recv(QUIET) is None
    for _ in range(2):  # sending fails for as long as the link is down
        with pytest.raises(can.CanOperationError) as excinfo:
            tx.send(frame(0x2))
        assert excinfo.value.error_code == errno.ENETDOWN

    ip_link("set", "vcan0", "up")
    tx.send(frame(0x3))  # no reopening needed
    after = rx.recv(WAIT)
    assert after is not None and after.arbitration_id == 0x3


@needs_root
@pytest.mark.usefixtures("restore_links")
def test_link_flap_leaves_a_pending_enetdown_on_every_socket(open_bus: OpenBus) -> None:
    tx, rx = open_bus(), open_bus()
    ip_link("set", "vcan0", "down")
    ip_link("set", "vcan0", "up")
    # Neither socket was used while the link was down: each reports the error on its next call,
    # although the link is up again. After that, both work.
    with pytest.raises(can.CanOperationError) as excinfo:
        tx.send(frame(0x1))
    assert excinfo.value.error_code == errno.ENETDOWN
    tx.send(frame(0x2))
    with pytest.raises(can.CanOperationError) as excinfo:
        rx.recv(WAIT)
    assert excinfo.value.error_code == errno.ENETDOWN
    msg = rx.recv(WAIT)
    assert msg is not None and msg.arbitration_id == 0x2


@needs_root
@pytest.mark.usefixtures("restore_links")
def test_link_down_wakes_a_blocked_recv(open_bus: OpenBus) -> None:
    rx = open_bus()
    outcome: list[BaseException | can.Message | None] = []

    def receive() -> None:
        try:
            outcome.append(rx.recv(timeout=30))
        except can.CanOperationError as exc:
            outcome.append(exc)

    reader = threading.Thread(target=receive)
    reader.start()
    time.sleep(0.3)
    went_down = time.monotonic()
    ip_link("set", "vcan0", "down")
    reader.join(timeout=10)
    assert not reader.is_alive() and time.monotonic() - went_down < 5
    [error] = outcome
    assert isinstance(error, can.CanOperationError) and error.error_code == errno.ENETDOWN


@needs_root
@pytest.mark.usefixtures("restore_links")
def test_deleted_link_raises_enodev_and_the_bus_must_be_reopened(open_bus: OpenBus) -> None:
    tx, rx = open_bus("vcan1"), open_bus("vcan1")
    ip_link("del", "vcan1")

    with pytest.raises(can.CanOperationError) as excinfo:
        rx.recv(WAIT)
    assert excinfo.value.error_code == errno.ENODEV
    assert rx.recv(QUIET) is None  # reported once; the socket is now bound to nothing
    with pytest.raises(can.CanOperationError) as excinfo:
        tx.send(frame(0x1))
    assert excinfo.value.error_code == errno.ENXIO
    # Opening a bus on a missing link raises a bare OSError, not a CanError.
    error = open_bus_and_fail("vcan1")
    assert not isinstance(error, can.CanError) and error.errno == errno.ENODEV

    ip_link("add", "dev", "vcan1", "type", "vcan")
    ip_link("set", "vcan1", "mtu", str(CANFD_MTU))
    ip_link("set", "vcan1", "up")
    # Same name, new interface: the old buses stay dead.
    with pytest.raises(can.CanOperationError) as excinfo:
        tx.send(frame(0x2))
    assert excinfo.value.error_code == errno.ENXIO
    new_tx, new_rx = open_bus("vcan1"), open_bus("vcan1")
    new_tx.send(frame(0x3))
    msg = new_rx.recv(WAIT)
    assert msg is not None and msg.arbitration_id == 0x3
    assert rx.recv(QUIET) is None
