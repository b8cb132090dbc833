"""edge.ingest.socketcan without a CAN kernel: frame parsing, the drop counter arithmetic, link
state
from sysfs, receive buffers, and the receiver on a real (Unix datagram) socket.

What needs vcan is in tests/ingest/test_vcan_kernel.py and tests/ingest/test_source_socketcan.py.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import can
import pytest

from edge.ingest.socketcan import (
    DropCounter,
    DropCountingReceiver,
    _parse_frame,
    link_is_up,
    require_interface,
    set_receive_buffer,
)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="SocketCAN is Linux only")

CAN_EFF_FLAG = 0x80000000
CAN_RTR_FLAG = 0x40000000
CAN_ERR_FLAG = 0x20000000
CANFD_BRS = 0x01
CANFD_ESI = 0x02


def can_frame(
    can_id: int, data: bytes = b"", *, length: int | None = None, len8_dlc: int = 0
) -> bytes:
    """A ``struct can_frame`` (16 bytes) as the kernel hands it over."""
    length = len(data) if length is None else length
    return struct.pack("=IBBBB8s", can_id, length, 0, 0, len8_dlc, data)


def canfd_frame(can_id: int, data: bytes, flags: int = 0) -> bytes:
    """A ``struct canfd_frame`` (72 bytes)."""
    return struct.pack("=IBBBB64s", can_id, len(data), flags, 0, 0, data)


def parse(frame: bytes) -> can.Message:
    return _parse_frame(frame, 1_700_000_000.5, "can0", True)


# --- parsing --------------------------------------------------------------------------------------


def test_classic_frame() -> None:
    msg = parse(can_frame(0x123, b"\x01\x02\x03"))
    assert (msg.arbitration_id, msg.is_extended_id, msg.dlc, bytes(msg.data)) == (
        0x123,
        False,
        3,
        b"\x01\x02\x03",
    )
    assert not (msg.is_fd or msg.is_remote_frame or msg.is_error_frame)
    assert (msg.timestamp, msg.channel, msg.is_rx) == (1_700_000_000.5, "can0", True)


def test_extended_id_keeps_29_bits() -> None:
    msg = parse(can_frame(CAN_EFF_FLAG | 0x1ABCDE12, b"\xaa"))
    assert (msg.arbitration_id, msg.is_extended_id) == (0x1ABCDE12, True)


def test_standard_id_drops_bits_above_11() -> None:
    assert parse(can_frame(0x7FF | 0x1000, b"")).arbitration_id == 0x7FF


def test_remote_frame_has_a_dlc_and_no_data() -> None:
    msg = parse(can_frame(CAN_RTR_FLAG | 0x321, length=5))
    assert msg.is_remote_frame and (msg.arbitration_id, msg.dlc, bytes(msg.data)) == (0x321, 5, b"")


def test_error_frame() -> None:
    msg = parse(can_frame(CAN_ERR_FLAG | 0x4, b"\x00\x01" + bytes(6)))
    assert msg.is_error_frame and msg.arbitration_id == 0x4 and msg.data[1] == 0x01


def test_classic_frame_with_a_raw_dlc_above_8() -> None:
    msg = parse(can_frame(0x1, bytes(8), len8_dlc=13))
    assert (msg.dlc, len(msg.data)) == (13, 8)
    assert parse(can_frame(0x1, bytes(8), len8_dlc=3)).dlc == 8  # only 9..15 mean anything


def test_can_fd_frame_with_flags() -> None:
    payload = bytes(range(64))
    msg = parse(canfd_frame(0x456, payload, CANFD_BRS | CANFD_ESI))
    assert msg.is_fd and msg.bitrate_switch and msg.error_state_indicator
    assert (msg.arbitration_id, msg.dlc, bytes(msg.data)) == (0x456, 64, payload)
    plain = parse(canfd_frame(CAN_EFF_FLAG | 0x10, bytes(12)))
    assert plain.is_fd and plain.is_extended_id and not plain.bitrate_switch
    assert (plain.dlc, len(plain.data)) == (12, 12)


# --- drop counter ---------------------------------------------------------------------------------


def test_drop_counter_adds_up_readings_and_sockets() -> None:
    counter = DropCounter()
    assert counter.update(0) == 0
    assert counter.update(3) == 3
    assert counter.update(3) == 3
    assert counter.update(10) == 10
    counter.new_socket()  # a reopened bus: its counter starts at 0 again
    assert counter.update(0) == 10
    assert counter.update(4) == 14
    assert counter.total == 14


def test_drop_counter_ignores_older_readings() -> None:
    # SO_MEMINFO said 7; a frame queued before the last drops still carries 5.
    counter = DropCounter()
    counter.update(7)
    assert counter.update(5) == 7
    assert counter.update(0) == 7
    assert counter.update(8) == 8


def test_drop_counter_survives_the_kernel_counter_wrapping() -> None:
    counter = DropCounter()
    counter.update(2**31 - 1)
    counter.update(2**32 - 2)
    assert counter.update(1) == 2**32 + 1  # 2**32 - 2 -> 1 is 3 more


# --- link state, interfaces, buffers --------------------------------------------------------------


def test_link_is_up_reads_the_interface_flags(tmp_path: Path) -> None:
    for name, flags in (("can0", "0x40081\n"), ("can1", "0x80\n")):  # IFF_UP is 0x1
        (tmp_path / name).mkdir()
        (tmp_path / name / "flags").write_text(flags)
    assert link_is_up("can0", tmp_path) is True
    assert link_is_up("can1", tmp_path) is False
    assert link_is_up("can9", tmp_path) is False  # no such interface
    assert link_is_up("../etc", tmp_path) is None
    assert link_is_up("", tmp_path) is None
    assert link_is_up("can0", tmp_path / "missing") is None  # no sysfs: cannot tell


@pytest.mark.skipif(not Path("/sys/class/net/lo").exists(), reason="no sysfs")
def test_link_is_up_on_this_host() -> None:
    assert link_is_up("lo") is True


def test_require_interface() -> None:
    require_interface("lo")
    with pytest.raises(OSError) as excinfo:
        require_interface("nosuchcan0")
    assert excinfo.value.errno == errno.ENODEV and "nosuchcan0" in str(excinfo.value)


def test_set_receive_buffer() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        got = set_receive_buffer(sock, 1 << 20)
        if os.geteuid() == 0:  # SO_RCVBUFFORCE; Linux reports twice the size asked for
            assert got == 2 << 20
        else:  # SO_RCVBUF, capped at net.core.rmem_max
            assert 0 < got <= 2 << 20


# --- the receiver on a real socket ----------------------------------------------------------------


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """A Unix datagram socket pair: frames written to the first are read from the second, with
    the kernel's receive timestamp, as from a CAN_RAW socket."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        yield a, b


def test_receiver_reads_frames_with_kernel_timestamps(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    writer, reader = pair
    receiver = DropCountingReceiver(reader)
    assert receiver.recv(0) is None  # nothing queued: no waiting
    assert receiver.recv(0.01) is None
    sent_at = time.time()
    writer.send(can_frame(0x123, b"\x01\x02"))
    writer.send(canfd_frame(0x456, bytes(range(64)), CANFD_BRS))
    time.sleep(0.3)
    first, second = receiver.recv(0), receiver.recv(1.0)
    assert first is not None and second is not None
    assert (first.message.arbitration_id, bytes(first.message.data)) == (0x123, b"\x01\x02")
    assert second.message.is_fd and second.message.bitrate_switch and second.message.dlc == 64
    for received in (first, second):
        assert received.dropped_total == 0
        assert sent_at <= received.message.timestamp < sent_at + 0.2  # not when it was read
    assert receiver.recv(0) is None


def test_receiver_raises_socket_errors_as_can_operation_errors(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    _, reader = pair
    receiver = DropCountingReceiver(reader)
    reader.close()
    with pytest.raises(can.CanOperationError) as excinfo:
        receiver.recv(0)
    assert excinfo.value.error_code == errno.EBADF
