"""Frame sources on python-can's real virtual bus and on real log files of every format."""

from __future__ import annotations

import itertools
import math
import threading
import time
from pathlib import Path
from typing import Any

import can
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.config.model import BusConfig, ReplayConfig
from edge.errors import ConfigError
from edge.ingest.source import CHUNK, BusSource, FrameQueue, ReplaySource, TimeGuard, open_bus


def drain(queue: FrameQueue, count: int, timeout: float = 5.0) -> list[can.Message]:
    got: list[can.Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        chunk = queue.get(timeout=0.05)
        if chunk:
            got.extend(chunk)
    return got


def frames(n: int, start: float = 1_700_000_000.0, channel: Any = "can0") -> list[can.Message]:
    return [
        can.Message(
            timestamp=start + i * 0.01,
            arbitration_id=0x100 + i % 3,
            is_extended_id=False,
            data=bytes([i % 256, 1, 2, 3]),
            channel=channel,
        )
        for i in range(n)
    ]


class Running:
    """A source running in a thread, stopped at exit."""

    def __init__(self, source: Any, queue: FrameQueue) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=source.run, args=(queue, self.stop), daemon=True)

    def __enter__(self) -> Running:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)
        assert not self.thread.is_alive()


def test_frame_queue_blocks_when_full_and_gives_up_on_stop() -> None:
    queue = FrameQueue(max_frames=CHUNK)  # room for one chunk
    stop = threading.Event()
    assert queue.put([can.Message()], stop)
    result: list[bool] = []
    putter = threading.Thread(target=lambda: result.append(queue.put([can.Message()], stop)))
    putter.start()
    time.sleep(0.2)
    assert putter.is_alive()  # blocked: backpressure, not a silent drop
    stop.set()
    putter.join(2)
    assert result == [False]


def test_bus_source_reads_a_virtual_bus_with_names_and_timestamps(tmp_path: Path) -> None:
    channel = f"test-{time.monotonic_ns()}"
    config = BusConfig(name="powertrain", interface="virtual", channel=channel, databases=("x",))
    queue = FrameQueue()
    source = BusSource(config)
    sender_bus = can.Bus(interface="virtual", channel=channel, preserve_timestamps=True)
    with Running(source, queue), sender_bus as sender:
        time.sleep(0.2)  # the source's bus must exist before frames are sent
        sent = frames(500)
        for msg in sent:
            sender.send(msg)
        got = drain(queue, len(sent))
    assert [m.data for m in got] == [m.data for m in sent]
    assert {m.channel for m in got} == {"powertrain"}
    assert [m.timestamp for m in got] == [m.timestamp for m in sent]  # source time kept


def test_bus_source_applies_can_filters(tmp_path: Path) -> None:
    channel = f"test-{time.monotonic_ns()}"
    config = BusConfig(name="b", interface="virtual", channel=channel, databases=("x",))
    queue = FrameQueue()
    source = BusSource(config, [{"can_id": 0x101, "can_mask": 0x7FF, "extended": False}])
    with Running(source, queue), can.Bus(interface="virtual", channel=channel) as sender:
        time.sleep(0.2)
        for msg in frames(300):
            sender.send(msg)
        got = drain(queue, 100)
        assert drain(queue, 1, timeout=0.3) == []
    assert len(got) == 100 and {m.arbitration_id for m in got} == {0x101}


def test_bus_source_reopens_after_the_bus_fails_and_keeps_reading() -> None:
    channel = f"test-{time.monotonic_ns()}"
    config = BusConfig(name="b", interface="virtual", channel=channel, databases=("x",))
    opened: list[can.BusABC] = []
    attempts = 0

    def opener(cfg: BusConfig, filters: Any) -> can.BusABC:
        nonlocal attempts
        attempts += 1
        if attempts <= 2:
            raise can.CanInterfaceNotImplementedError("interface is down")
        bus = open_bus(cfg, filters)
        opened.append(bus)
        return bus

    queue = FrameQueue()
    source = BusSource(config, opener=opener)
    with Running(source, queue), can.Bus(interface="virtual", channel=channel) as sender:
        deadline = time.monotonic() + 5
        while not opened and time.monotonic() < deadline:
            time.sleep(0.05)
        sender.send(frames(1)[0])
        assert len(drain(queue, 1)) == 1
        opened[0].shutdown()  # the bus dies under the reader
        deadline = time.monotonic() + 5
        while len(opened) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.1)
        sender.send(frames(1)[0])
        assert len(drain(queue, 1)) == 1
    assert source.errors >= 3 and source.reopens >= 1
    assert source.stats()["frames"] == 2


@pytest.mark.parametrize("suffix", [".log", ".asc", ".blf", ".csv", ".trc"])
def test_replay_reads_every_log_format(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"drive{suffix}"
    sent = frames(200, channel=0 if suffix != ".log" else "can0")
    with can.Logger(str(path)) as writer:
        for msg in sent:
            writer.on_message_received(msg)
    replay = ReplaySource(ReplayConfig(str(path), speed=None), ["can0"])
    got = list(replay.messages())
    assert [bytes(m.data) for m in got] == [bytes(m.data) for m in sent]
    assert [m.arbitration_id for m in got] == [m.arbitration_id for m in sent]
    assert {m.channel for m in got} == {"can0"}
    span = got[-1].timestamp - got[0].timestamp
    assert span == pytest.approx(sent[-1].timestamp - sent[0].timestamp, abs=1e-3)


def test_replay_maps_log_channels_to_buses_and_skips_unmapped(tmp_path: Path) -> None:
    path = tmp_path / "two.log"
    with can.Logger(str(path)) as writer:
        for i, msg in enumerate(frames(30)):
            msg.channel = ("can0", "can1", "can9")[i % 3]
            writer.on_message_received(msg)
    config = ReplayConfig(str(path), None, {"can1": "body"})
    replay = ReplaySource(config, ["can0", "body"])
    channels = [m.channel for m in replay.messages()]
    assert channels.count("can0") == 10  # same name as a bus
    assert channels.count("body") == 10  # mapped
    assert channels.count("can9") == 10  # kept: the decoder counts it as unknown_bus
    assert replay.unmapped == {"can9"}


def test_replay_names_each_bus_with_the_configured_name_object(tmp_path: Path) -> None:
    """Frames of one bus carry the configured name itself, whichever log channel they came
    from, so that the processing stage tells buses apart by identity (one table lookup per run
    of frames of a bus, not per frame)."""
    path = tmp_path / "two.log"
    with can.Logger(str(path)) as writer:
        for i, msg in enumerate(frames(30)):
            msg.channel = ("can0", "can1")[i % 2]
            writer.on_message_received(msg)
    names = ["".join(["c", "an0"]), "".join(["bo", "dy"])]  # not interned: made at run time
    mapped = ReplaySource(ReplayConfig(str(path), None, {"can1": "body"}), names)
    assert {id(m.channel) for m in mapped.messages()} == {id(n) for n in names}
    single = ReplaySource(ReplayConfig(str(path), None), names[:1])  # both channels: one bus
    assert {id(m.channel) for m in single.messages()} == {id(names[0])}


def test_replay_paces_at_the_requested_speed(tmp_path: Path) -> None:
    path = tmp_path / "paced.log"
    with can.Logger(str(path)) as writer:
        for msg in frames(51):  # 0.5 s of traffic
            writer.on_message_received(msg)
    queue = FrameQueue()
    replay = ReplaySource(ReplayConfig(str(path), speed=2.0), ["can0"])
    started = time.monotonic()
    with Running(replay, queue):
        got = drain(queue, 51)
        assert replay.finished.wait(5)
    assert len(got) == 51
    assert time.monotonic() - started >= 0.25 * 0.9  # 0.5 s of log at 2x: not faster


def test_replay_as_fast_as_possible_ends_and_loses_nothing(tmp_path: Path) -> None:
    path = tmp_path / "fast.log"
    with can.Logger(str(path)) as writer:
        for msg in frames(5000):
            writer.on_message_received(msg)
    queue = FrameQueue(max_frames=1000)  # far smaller than the log: backpressure, no drops
    replay = ReplaySource(ReplayConfig(str(path), speed=None), ["can0"])
    with Running(replay, queue):
        got = drain(queue, 5000)
    assert len(got) == 5000 and replay.frames == 5000


def test_bus_source_backs_off_from_a_bus_that_fails_as_soon_as_it_is_open() -> None:
    channel = f"test-{time.monotonic_ns()}"
    config = BusConfig(name="b", interface="virtual", channel=channel, databases=("x",))
    opened: list[float] = []

    def opener(cfg: BusConfig, filters: Any) -> can.BusABC:
        bus = open_bus(cfg, filters)
        bus.shutdown()  # reading it fails at once
        opened.append(time.monotonic())
        return bus

    source = BusSource(config, opener=opener, reopen_max=0.4)
    with Running(source, FrameQueue()):
        time.sleep(1.6)
    gaps = [b - a for a, b in itertools.pairwise(opened)]
    # 0.1, 0.2, 0.4, 0.4, ...: not ten times a second
    assert 3 <= len(opened) <= 7, gaps
    assert max(gaps) >= 0.35
    assert len(opened) - 1 <= source.reopens <= len(opened)


def test_bus_source_keeps_an_empty_filter_list() -> None:
    # No selected message: [] is "nothing" (SocketCAN honours it), not None ("everything").
    config = BusConfig(name="b", interface="virtual", channel="x", databases=("x",))
    assert BusSource(config, []).filters == []
    assert BusSource(config).filters is None


def test_bus_source_counters_by_interface() -> None:
    virtual = BusSource(BusConfig(name="a", interface="virtual", databases=("x",)))
    assert set(virtual.stats()) == {
        "frames",
        "errors",
        "reopens",
        "connected",
        "bad_timestamp",
        "time_jumps",
        "time_steps_back",
    }
    socketcan = BusSource(BusConfig(name="b", interface="socketcan", databases=("x",)))
    assert socketcan.stats() == {
        "frames": 0,
        "errors": 0,
        "reopens": 0,
        "connected": False,
        "bad_timestamp": 0,
        "time_jumps": 0,
        "time_steps_back": 0,
        "link_up": False,
        "link_down_events": 0,
        "kernel_dropped": 0,
    }


# --------------------------------------------------------------------------------------------
# Issue 12: poison timestamps, clock steps, malformed logs, loop pacing


def one(t: float) -> can.Message:
    return can.Message(timestamp=t, arbitration_id=0x100, data=b"\x01", channel="can0")


def test_time_guard_skips_and_counts_poison_timestamps() -> None:
    guard = TimeGuard()
    times = [1e9, math.nan, 1e9 + 1, math.inf, -math.inf, -5.0, 1e20, 1e9 + 2]
    times += [1e9 + 40 * 365 * 86400, 1e9 + 3, 1e9 + 4]  # a lone frame decades ahead
    passed = [m.timestamp for t in times for m in guard.admit(one(t))[0]]
    assert passed == [1e9, 1e9 + 1, 1e9 + 2, 1e9 + 3, 1e9 + 4]
    assert guard.stats() == {"bad_timestamp": 6, "time_jumps": 0, "time_steps_back": 0}


def test_time_guard_keeps_a_real_jump_and_reports_a_step_back() -> None:
    guard = TimeGuard()
    boot = 100.0  # a gateway without RTC boots near 1970 ...
    synced = 1_700_000_000.0  # ... and NTP then sets the date: time really jumped
    chunks = guard.split([one(boot), one(boot + 1), one(synced), one(synced + 1)])
    assert [[m.timestamp for m in c] for c in chunks] == [[boot, boot + 1, synced, synced + 1]]
    # An NTP step back of an hour: the step starts a chunk of its own.
    chunks = guard.split([one(synced + 2), one(synced - 3600), one(synced - 3599)])
    assert [len(c) for c in chunks] == [1, 2]
    assert guard.stats() == {"bad_timestamp": 0, "time_jumps": 1, "time_steps_back": 1}


def test_bus_source_counts_poison_timestamps_and_goes_on() -> None:
    channel = f"test-{time.monotonic_ns()}"
    config = BusConfig(name="can0", interface="virtual", channel=channel)
    queue = FrameQueue()
    source = BusSource(config)
    sender_bus = can.Bus(interface="virtual", channel=channel, preserve_timestamps=True)
    with Running(source, queue), sender_bus as sender:
        time.sleep(0.2)
        for t in (1e9, math.nan, 1e9 + 1, 1e20, 1e9 + 2):
            sender.send(one(t))
        got = drain(queue, 3)
    assert [m.timestamp for m in got] == [1e9, 1e9 + 1, 1e9 + 2]
    assert source.stats()["bad_timestamp"] == 2


def write_candump(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_replay_never_waits_for_a_poison_time_or_a_gap(tmp_path: Path) -> None:
    log = write_candump(
        tmp_path / "poison.log",
        [
            "(1000.0) can0 100#01",
            "(nan) can0 100#02",
            "(inf) can0 100#03",
            "(1e20) can0 100#04",
            "(2261700000.0) can0 100#05",  # decades ahead, alone
            "(1000.1) can0 100#06",
            "(1700001000.0) can0 100#07",  # decades ahead, and the log goes on there
            "(1700001000.1) can0 100#08",
        ],
    )
    source = ReplaySource(ReplayConfig(path=str(log), speed=1.0), ["can0"])
    queue = FrameQueue()
    started = time.monotonic()
    source.run(queue, threading.Event())
    assert time.monotonic() - started < 2.0  # paced at real time, but no wait for years
    got = drain(queue, 4, timeout=0.5)
    assert [bytes(m.data) for m in got] == [b"\x01", b"\x06", b"\x07", b"\x08"]
    stats = source.stats()
    assert stats["bad_timestamp"] == 4
    assert stats["time_jumps"] == 1


def test_replay_skips_malformed_lines_and_goes_on(tmp_path: Path) -> None:
    log = write_candump(
        tmp_path / "bad.log",
        [
            "(1.0) can0 100#01",
            "garbage",
            "(1.1) can0 1ZZ#02",
            "(x) can0 100#03",
            "(1.3) can0 100#04",
        ],
    )
    source = ReplaySource(ReplayConfig(path=str(log), speed=None), ["can0"])
    queue = FrameQueue()
    source.run(queue, threading.Event())
    got = drain(queue, 2, timeout=0.5)
    assert [bytes(m.data) for m in got] == [b"\x01", b"\x04"]
    assert source.stats()["bad_lines"] == 3


def test_replay_of_a_missing_log_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        ReplaySource(ReplayConfig(path=str(tmp_path / "nosuch.log")), ["can0"])


def test_replay_loop_keeps_its_speed_and_cuts_chunks_at_each_pass(tmp_path: Path) -> None:
    log = write_candump(
        tmp_path / "short.log", [f"({1000 + i * 0.5:.1f}) can0 100#0{i}" for i in range(5)]
    )
    source = ReplaySource(ReplayConfig(path=str(log), speed=4.0, loop=True), ["can0"])
    queue = FrameQueue()
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(queue, stop), daemon=True)
    thread.start()
    time.sleep(1.2)
    stop.set()
    thread.join(5)
    chunks: list[list[can.Message]] = []
    while (chunk := queue.get(timeout=0)) is not None:
        chunks.append(chunk)
    frames_sent = sum(len(c) for c in chunks)
    # A pass is 0.5 s long at speed 4: about 2.5 passes in 1.2 s, not thousands of frames.
    assert 8 <= frames_sent <= 20
    assert source.stats()["passes"] >= 2
    # Each pass starts a chunk, so the processing stage sees every step back at a chunk start.
    for chunk in chunks:
        times = [m.timestamp for m in chunk]
        assert times == sorted(times)


@given(
    st.lists(
        st.lists(
            st.one_of(
                st.floats(1e9, 1e9 + 5),  # ordinary times, some steps back
                st.sampled_from([math.nan, math.inf, -1.0, 1e20, 3e9]),  # poison
            ),
            max_size=20,
        ),
        max_size=8,
    )
)
def test_time_guard_split_equals_frame_by_frame_admission(chunks: list[list[float]]) -> None:
    """The whole-chunk shortcut of split changes nothing: same frames, cuts and counters."""
    by_chunk, by_frame = TimeGuard(), TimeGuard()
    for times in chunks:
        chunk = [one(t) for t in times]
        expected: list[list[can.Message]] = []
        current: list[can.Message] = []
        for msg in chunk:
            passed, stepped = by_frame.admit(msg)
            if stepped and current:
                expected.append(current)
                current = []
            current.extend(passed)
        if current:
            expected.append(current)
        assert by_chunk.split(chunk) == expected
    assert by_chunk.finish() == by_frame.finish()
    assert by_chunk.stats() == by_frame.stats()


def test_replay_of_a_corrupt_blf_counts_it_and_ends_the_pass(tmp_path: Path) -> None:
    log = tmp_path / "drive.blf"
    with can.Logger(str(log)) as writer:
        for i, msg in enumerate(frames(5000)):
            msg.timestamp = 1000.0 + i * 0.01
            writer.on_message_received(msg)
    damaged = bytearray(log.read_bytes())
    damaged[300:700] = bytes(b ^ 0x5A for b in damaged[300:700])  # inside the first container
    log.write_bytes(damaged)
    source = ReplaySource(ReplayConfig(path=str(log), speed=None), ["can0"])
    source.run(FrameQueue(), threading.Event())  # returns: no exception out of the thread
    assert source.stats()["bad_lines"] == 1
