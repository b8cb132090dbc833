"""Generated frame streams through the frame sources, against python-can's own readers.

Streams as the field produces them (classic CAN and CAN FD of every length, BRS/ESI, 11- and
29-bit IDs, remote and error frames, a DLC that is not the data's length, several channels by
name and by number, times from 0 or the epoch that step back, jump and pause) are written with
python-can's writers in every format it both writes and reads here, then read through
:class:`ReplaySource` as ``can-telemetry run --replay`` reads them. The reference is what
python-can's ``LogReader`` returns for the same file: the source gives exactly those frames, in
order, with the documented channel mapping (docs/configuration.md, ``[replay]``), minus the
frames its time checks skip and count (docs/delivery.md). The frames then go through the real
:class:`Processor`: ``read = decoded + repeated + skipped + lost`` (docs/counters.md), nothing
lost. The live path: the same streams sent on python-can's virtual bus and read by
:class:`BusSource`. Damaged logs (a garbage line, a file cut mid-record, text that is not UTF-8):
every other frame still read, the damage counted (``bad_lines``)."""

from __future__ import annotations

import gc
import itertools
import math
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import can
import pytest
from can.util import channel2int, dlc2len
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from edge.config.model import BusConfig, ReplayConfig, parse_config
from edge.errors import ConfigError
from edge.ingest.source import (
    CHUNK,
    MAX_TIMESTAMP,
    TIME_JUMP,
    TIME_STEP_BACK,
    BusSource,
    FrameQueue,
    ReplaySource,
    TimeGuard,
)
from edge.pipeline import Pipeline, restart_after_step_back
from edge.processing.processor import Processor
from tests.ingest.test_source import Running, drain
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
DEMO_DBC = ROOT / "dbc" / "demo_vehicle.dbc"
#: IDs of the demo database (standard), and its J1939 message EEC1 (extended)
DEMO_STANDARD = (160, 176, 192, 304, 320, 416, 672, 673, 674, 768, 928, 960, 1248, 1440, 1472)
DEMO_EXTENDED = (0x0CF00400,)
FD_LENGTHS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64)

#: Every format python-can 4.x both writes and reads without an optional package (``.mf4``
#: needs asammdf, which is not installed; ``.blf`` cannot be gzipped), as file suffix.
FORMATS = ("log", "log.gz", "asc", "blf", "csv", "db", "trc", "trc-1.0")
TEXT_FORMATS = ("log", "asc", "csv", "trc")

SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

Fields = tuple[Any, ...]


# --- streams as the field produces them ---------------------------------------------------------


def restrictions(fmt: str) -> dict[str, bool]:
    """What a format's python-can writer or reader cannot carry (not our limitations): the
    generator leaves these out for that format."""
    return {
        # TRCWriter: "Logging error frames / remote frames / CAN FD is not implemented" (it
        # drops them with a logged warning).
        "error": fmt.startswith("trc"),
        "remote": fmt.startswith("trc"),
        "fd": fmt.startswith("trc"),
        # ASCReader reads a CAN FD frame of data length 0 as a remote frame.
        "fd_empty": fmt == "asc",
        # TRCReader 1.0 reads DLC data bytes and drops the frame (IndexError) when there are
        # fewer; 2.x drops a frame with a DLC and no data column.
        "dlc_above_data": fmt == "trc-1.0",
        "dlc_without_data": fmt.startswith("trc"),
    }


@st.composite
def frames(draw: st.DrawFn, channels: Sequence[Any], fmt: str = "") -> can.Message:
    """One frame of a channel among ``channels`` (time set by :func:`streams`)."""
    limits = restrictions(fmt)
    kinds = ["data", "data", "data"]
    kinds += [] if limits["fd"] else ["fd", "fd"]
    kinds += [] if limits["remote"] else ["remote"]
    kinds += [] if limits["error"] else ["error"]
    kind = draw(st.sampled_from(kinds))
    extended = draw(st.booleans())
    known = DEMO_EXTENDED if extended else DEMO_STANDARD
    arbitration_id = draw(
        st.one_of(
            st.sampled_from(DEMO_STANDARD + DEMO_EXTENDED),  # sometimes of the other kind
            st.sampled_from(known),
            st.integers(0, 0x1FFFFFFF if extended else 0x7FF),
        )
    )
    if not extended:
        arbitration_id &= 0x7FF
    channel = draw(st.sampled_from(channels))
    is_rx = draw(st.booleans())
    if kind == "error":
        data = draw(st.sampled_from([b"", bytes(8)]) | st.binary(min_size=8, max_size=8))
        return can.Message(
            arbitration_id=draw(st.integers(0, 0x1FFFFFFF)),
            is_extended_id=False,
            is_error_frame=True,
            data=data,
            channel=channel,
        )
    if kind == "remote":
        return can.Message(
            arbitration_id=arbitration_id,
            is_extended_id=extended,
            is_remote_frame=True,
            dlc=draw(st.integers(0, 8)),
            channel=channel,
            is_rx=is_rx,
        )
    if kind == "fd":
        lengths = [n for n in FD_LENGTHS if n or not limits["fd_empty"]]
        length = draw(st.sampled_from(lengths))
        return can.Message(
            arbitration_id=arbitration_id,
            is_extended_id=extended,
            is_fd=True,
            bitrate_switch=draw(st.booleans()),
            error_state_indicator=draw(st.booleans()),
            data=draw(payloads(length)),
            channel=channel,
            is_rx=is_rx,
        )
    length = draw(st.integers(0, 8))
    data = draw(payloads(length))
    dlcs = [length]
    if not limits["dlc_above_data"] and (length or not limits["dlc_without_data"]):
        # A logger that wrote fewer bytes than the DLC; a raw DLC above 8 (9..15) with 8 bytes.
        dlcs += list(range(length + 1, 9)) + (list(range(9, 16)) if length == 8 else [])
    return can.Message(
        arbitration_id=arbitration_id,
        is_extended_id=extended,
        dlc=draw(st.sampled_from(dlcs)),
        data=data,
        channel=channel,
        is_rx=is_rx,
    )


def payloads(length: int) -> st.SearchStrategy[bytes]:
    """Payloads that repeat (on-change sampling counts ``repeated``) and payloads that differ."""
    return st.one_of(
        st.sampled_from([bytes(length), b"\xff" * length, bytes(range(1, length + 1))]),
        st.binary(min_size=length, max_size=length),
    )


#: Time from one frame to the next: the usual few milliseconds, equal times, jitter between
#: buses, a clock stepped back (NTP, logs joined), pauses (ignition off) and jumps of days.
STEPS = st.one_of(
    st.floats(0.0, 0.01),
    st.just(0.0),
    st.floats(-0.5, 0.0),
    st.sampled_from([-3600.0, -5.0, -1.5, 30.0, 7200.0, 2 * 86_400.0, 1e9]),
)
STARTS = st.one_of(
    st.sampled_from([0.0, 0.001, 12.5, 1_000_000_000.0, 1_700_000_000.123456]),
    st.floats(0.0, 2e9),
)


@st.composite
def streams(
    draw: st.DrawFn, fmt: str = "", channels: Sequence[Any] = ("can0",), max_size: int = 40
) -> list[can.Message]:
    """Frames of ``channels`` with their times."""
    used = draw(st.lists(st.sampled_from(channels), min_size=1, max_size=3, unique=True))
    out = draw(st.lists(frames(used, fmt), min_size=0, max_size=max_size))
    t = draw(STARTS)
    for msg in out:
        msg.timestamp = t
        t = min(max(0.0, t + draw(STEPS)), 3e9)
    return out


LOG_CHANNELS = ("can0", "can1", "vcan0", "powertrain", 0, 1, 2)
BUS_NAMES = ("can0", "can1", "powertrain", "body", "0", "1")
TABLE_KEYS = ("can0", "can1", "vcan0", "0", "1", "2", "None", "powertrain")


@st.composite
def replay_configs(draw: st.DrawFn) -> tuple[list[str], dict[str, str], list[bool]]:
    """Bus names, a ``[replay.channels]`` table (maybe empty) and each bus's ``j1939``."""
    buses = draw(st.lists(st.sampled_from(BUS_NAMES), min_size=1, max_size=3, unique=True))
    table = draw(st.dictionaries(st.sampled_from(TABLE_KEYS), st.sampled_from(buses), max_size=3))
    j1939 = draw(st.lists(st.booleans(), min_size=len(buses), max_size=len(buses)))
    return buses, table, j1939


# --- writing with python-can, reading with python-can ------------------------------------------


def suffix(fmt: str) -> str:
    return ".trc" if fmt == "trc-1.0" else f".{fmt}"


def write_log(path: Path, fmt: str, messages: Sequence[can.Message]) -> Path:
    """``messages`` written with python-can's writer for ``fmt``."""
    if fmt == "trc-1.0":
        trc = can.TRCWriter(str(path))
        trc.file_version = can.TRCFileVersion.V1_0
        writer: can.io.generic.MessageWriter = trc
    else:
        writer = can.Logger(str(path))
    with writer:
        if isinstance(writer, can.CanutilsLogWriter):
            # CanutilsLogWriter writes a frame older than the first with the first's time: a
            # time that steps back is what a candump -L log of a clock stepped back holds.
            writer.last_timestamp = -math.inf
        for msg in messages:
            writer.on_message_received(msg)
    return path


def read_log(path: Path) -> list[can.Message]:
    """What python-can's LogReader returns for ``path``."""
    with can.LogReader(str(path)) as reader:
        return list(reader)


def read_until_error(path: Path) -> tuple[list[can.Message], bool]:
    """What python-can's LogReader returns for ``path`` up to the first record it cannot read,
    and whether there was one."""
    got: list[can.Message] = []
    try:
        with can.LogReader(str(path)) as reader:
            for msg in reader:
                got.append(msg)
    except Exception:
        return got, True
    return got, False


def python_can_opens(path: Path) -> bool:
    """Whether python-can's LogReader opens ``path`` (it may fail reading it later)."""
    with warnings.catch_warnings():
        # BLFReader leaves the file it failed to read open (python-can): closed at collection.
        warnings.simplefilter("ignore", ResourceWarning)
        try:
            with can.LogReader(str(path)):
                return True
        except Exception:
            return False
        finally:
            gc.collect()


def assert_refused(path: Path) -> None:
    """A replay of ``path`` is refused at start-up as a configuration error, with the reason."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # see python_can_opens
        with pytest.raises(ConfigError, match=r"^replay\.log: cannot read"):
            ReplaySource(ReplayConfig(str(path), None), ["can0"])
        gc.collect()


def fields(msg: can.Message, channel: Any = None) -> Fields:
    """Everything a frame carries (``channel`` replaces the frame's own when given)."""
    return (
        msg.timestamp,
        msg.arbitration_id,
        msg.is_extended_id,
        msg.is_remote_frame,
        msg.is_error_frame,
        msg.is_fd,
        msg.bitrate_switch,
        msg.error_state_indicator,
        msg.dlc,
        bytes(msg.data),
        msg.is_rx,
        msg.channel if channel is None else channel,
    )


def kept(fmt: str, msg: can.Message) -> Fields:
    """What python-can's writer and reader for ``fmt`` keep of a generated frame (time apart):
    each difference from the frame itself is a limitation of the format or of python-can."""
    data = bytes(msg.data)
    ch = msg.channel
    number = channel2int(ch)
    if fmt in ("log", "log.gz"):
        if msg.is_error_frame:  # read back with no ID, data or channel
            return (0, True, False, True, False, False, False, 0, b"", True, None)
        name = f"can{ch}" if isinstance(ch, int) else ch
        if msg.is_remote_frame:  # written "R", without its DLC
            return (
                (msg.arbitration_id, msg.is_extended_id, True)
                + (False,) * 4
                + (
                    0,
                    b"",
                    msg.is_rx,
                    name,
                )
            )
        return (
            msg.arbitration_id,
            msg.is_extended_id,
            False,
            False,
            msg.is_fd,
            msg.bitrate_switch,
            msg.error_state_indicator,
            len(data),  # the DLC is not written: the data's length
            data,
            msg.is_rx,
            name,
        )
    if fmt in ("asc", "blf"):
        channel = 0 if number is None else number  # unnumbered: the writer's default, 1st
        if msg.is_error_frame:
            if fmt == "asc":  # "ErrorFrame": channel only
                return (0, True, False, True, False, False, False, 0, b"", True, channel)
            dlc = msg.dlc if msg.dlc <= 8 else 8
            return (
                msg.arbitration_id,
                False,
                False,
                True,
                False,
                False,
                False,
                dlc,  # written as a DLC code, read as it: equal up to 8
                data.ljust(8, b"\0")[:dlc],
                True,
                channel,
            )
        if msg.is_remote_frame:
            return (
                msg.arbitration_id,
                msg.is_extended_id,
                True,
                False,
                False,
                False,
                False,
                msg.dlc,
                b"",
                msg.is_rx,
                channel,
            )
        if msg.is_fd:
            return (*fields(msg, channel)[1:11], channel)
        if fmt == "asc":  # the DLC is read as a length code (9..15 -> 12..64), data up to 8
            length = dlc2len(msg.dlc)
            return (
                msg.arbitration_id,
                msg.is_extended_id,
                False,
                False,
                False,
                False,
                False,
                length,
                data[: min(8, length)],
                msg.is_rx,
                channel,
            )
        # BLF: 8 data bytes (zero padded), read as many as the DLC says
        padded = data.ljust(8, b"\0")[:8][: msg.dlc]
        return (
            msg.arbitration_id,
            msg.is_extended_id,
            False,
            False,
            False,
            False,
            False,
            msg.dlc,
            padded,
            msg.is_rx,
            channel,
        )
    if fmt in ("csv", "db"):  # no channel, no CAN FD flags, no direction
        return (
            msg.arbitration_id,
            msg.is_extended_id,
            msg.is_remote_frame,
            msg.is_error_frame,
            False,
            False,
            False,
            msg.dlc,
            data,
            True,
            None,
        )
    if fmt == "trc":
        return (*fields(msg)[1:11], 1 if number is None else number + 1)  # numbered from 1
    assert fmt == "trc-1.0"  # channel 1, no direction
    return (*fields(msg)[1:10], True, 1)


def written_time(fmt: str, t: float, first: float) -> tuple[float, float]:
    """The time python-can's reader gives a frame written at ``t`` (the first at ``first``),
    and how far off it may be."""
    if fmt in ("log", "log.gz"):
        return t, 2e-6  # "%f": microseconds
    if fmt == "asc":  # relative to the first frame; one before it keeps its own time
        return (t - first if t >= first else t), 2e-6
    if fmt == "blf":  # from the first frame's millisecond, in ns; earlier ones at that start
        start = int(first * 1000) / 1000
        base = start if start >= 631152000 else 0.0  # the header's date: none before 1990
        return base + max(0.0, t - start), 2e-6
    if fmt == "trc":  # offsets in microseconds from a start time in days since 1899
        return first + round((t - first) * 1e6) / 1e6, 2e-5
    if fmt == "trc-1.0":  # offsets in milliseconds from 0
        return t - first, 1e-3
    return t, 0.0  # csv: repr(); db: a REAL


def assert_python_can_round_trip(
    fmt: str, sent: Sequence[can.Message], read: Sequence[can.Message]
) -> None:
    """The generator's frames reach the module: python-can reads back what it wrote, up to the
    limitations :func:`kept` and :func:`written_time` name."""
    assert [fields(m)[1:] for m in read] == [kept(fmt, m) for m in sent]
    if sent:
        first = sent[0].timestamp
        for got, msg in zip(read, sent, strict=True):
            expected, tolerance = written_time(fmt, msg.timestamp, first)
            assert got.timestamp == pytest.approx(expected, abs=tolerance, rel=0)


# --- the module's side ----------------------------------------------------------------------


def documented_bus(channel: object, buses: Sequence[str], table: dict[str, str]) -> str:
    """docs/configuration.md: a frame's bus is its channel in ``channels``; a bus named like
    the channel; with a single bus and no ``channels`` table, that bus. Other channels keep
    their name (as text) and are skipped as ``unknown_bus``."""
    key = str(channel)
    if key in table:
        return table[key]
    if key in buses:
        return key
    if len(buses) == 1 and not table:
        return buses[0]
    return key


def documented_admission(
    times: Sequence[float | None], *, ended: bool
) -> tuple[list[int], int, int]:
    """docs/delivery.md, restated: which frames (by index) a source lets through, how many it
    skips for a bad time and how many jumps it keeps. A time that is not a number, negative or
    after 2100 is bad; a frame more than a day ahead of the last one let through is held until
    the next good frame: near it, time jumped (both go); else the held one alone was bad. When
    the source ``ended`` (a replay), a frame still held goes."""
    passed: list[int] = []
    bad = jumps = 0
    last: float | None = None
    held: int | None = None
    held_time = 0.0
    for i, t in enumerate(times):
        if t is None or not 0.0 <= t <= MAX_TIMESTAMP:
            bad += 1
            continue
        if held is not None:
            if abs(t - held_time) <= TIME_JUMP:
                passed += [held, i]
                jumps += 1
                held, last = None, t
                continue
            bad += 1
            held = None
        if last is not None and t - last > TIME_JUMP:
            held, held_time = i, t
            continue
        passed.append(i)
        last = t
    if held is not None and ended:
        passed.append(held)
        jumps += 1
    return passed, bad, jumps


def collect(queue: FrameQueue) -> list[list[can.Message]]:
    """The chunks a finished source left in ``queue``."""
    chunks: list[list[can.Message]] = []
    while (chunk := queue.get(timeout=0)) is not None:
        chunks.append(chunk)
    return chunks


def assert_steps_back_cut_chunks(chunks: Sequence[Sequence[can.Message]]) -> None:
    """docs/delivery.md: a step back of more than TIME_STEP_BACK starts a new chunk, so that
    the processing stage sees it at a chunk start (where it restarts its timers)."""
    for chunk in chunks:
        for a, b in itertools.pairwise(chunk):
            assert b.timestamp >= a.timestamp - TIME_STEP_BACK, (a.timestamp, b.timestamp)


def processor_for(buses: Sequence[str], j1939: Sequence[bool]) -> Processor:
    config = {
        "vehicle_id": "v",
        "buses": [
            {"name": name, "dbc": [str(DEMO_DBC)], "j1939": flag}
            for name, flag in zip(buses, j1939, strict=True)
        ],
    }
    return Processor(parse_config(config), lambda build: 0)


def assert_accounted(
    processor: Processor, chunks: Sequence[Sequence[can.Message]], buses: Sequence[str]
) -> None:
    """The chunks through the processing stage as the pipeline's loop hands them over: every
    frame read is decoded, repeated, skipped by reason or lost, and none is lost."""
    for chunk in chunks:
        if chunk and chunk[0].timestamp < processor.last_time - TIME_STEP_BACK:
            restart_after_step_back(processor)
        processor.process(chunk)
    processor.flush()
    stats = processor.stats()
    decode = stats.decode
    frames = [m for chunk in chunks for m in chunk]
    assert stats.frames == decode.frames == len(frames)
    assert decode.frames == (
        decode.decoded + decode.repeated + sum(decode.skipped.values()) + decode.lost
    )
    assert (decode.lost, stats.lost_rows) == (0, 0), decode.lost_reasons
    errors = sum(m.is_error_frame for m in frames)
    remote = sum(m.is_remote_frame and not m.is_error_frame for m in frames)
    unknown = sum(
        not (m.is_error_frame or m.is_remote_frame) and m.channel not in buses for m in frames
    )
    skipped = Counter(decode.skipped)
    assert (skipped["error_frame"], skipped["remote_frame"], skipped["unknown_bus"]) == (
        errors,
        remote,
        unknown,
    )


def replay(
    path: Path, buses: Sequence[str], table: dict[str, str], speed: float | None
) -> tuple[ReplaySource, list[list[can.Message]]]:
    """The log read through :class:`ReplaySource` to its end: the source and its chunks."""
    source = ReplaySource(ReplayConfig(str(path), speed, dict(table)), list(buses))
    queue = FrameQueue(max_frames=1_000_000)
    source.run(queue, threading.Event())
    assert source.finished.is_set()
    return source, collect(queue)


def assert_replay_is_the_reference(
    source: ReplaySource,
    chunks: Sequence[Sequence[can.Message]],
    reference: Sequence[can.Message],
    buses: Sequence[str],
    table: dict[str, str],
    *,
    bad_lines: int = 0,
) -> None:
    """``chunks`` are the ``reference`` frames (python-can's), channels mapped as documented,
    minus those the time checks skip; every frame is counted once."""
    expected = [fields(m, documented_bus(m.channel, buses, table)) for m in reference]
    passed, bad, jumps = documented_admission([m.timestamp for m in reference], ended=True)
    got = [fields(m) for chunk in chunks for m in chunk]
    assert got == [expected[i] for i in passed]
    stats = source.stats()
    assert stats["frames"] == len(got)
    assert stats["frames"] + stats["bad_timestamp"] == len(reference)
    assert (stats["bad_timestamp"], stats["time_jumps"]) == (bad, jumps)
    assert stats["bad_lines"] == bad_lines
    assert stats["passes"] == 1
    assert all(isinstance(m.channel, str) for chunk in chunks for m in chunk)
    assert_steps_back_cut_chunks(chunks)


# --- replays of generated logs ------------------------------------------------------------------


@st.composite
def replay_cases(draw: st.DrawFn, fmt: str) -> tuple[list[can.Message], Any, float | None]:
    return (
        draw(streams(fmt, LOG_CHANNELS)),
        draw(replay_configs()),
        draw(st.sampled_from([None, 1e12])),  # as fast as possible; paced (no real waits)
    )


@pytest.mark.parametrize("fmt", FORMATS)
@SETTINGS
@given(data=st.data())
def test_a_replay_gives_exactly_what_python_can_reads_from_the_log(
    fmt: str, data: st.DataObject
) -> None:
    """Frames written by python-can's writer, read through the replay source: exactly the
    frames python-can's LogReader returns, in order, channels mapped as documented, time checks
    applied and counted; then every frame accounted for by the processing stage."""
    sent, (buses, table, j1939), speed = data.draw(replay_cases(fmt))
    with tempfile.TemporaryDirectory() as tmp:
        path = write_log(Path(tmp) / f"drive{suffix(fmt)}", fmt, sent)
        reference = read_log(path)
        assert_python_can_round_trip(fmt, sent, reference)
        source, chunks = replay(path, buses, table, speed)
        plain = ReplaySource(ReplayConfig(str(path), None, dict(table)), list(buses))
        unchecked = [fields(m) for m in plain.messages()]  # messages(): no time checks
    assert unchecked == [fields(m, documented_bus(m.channel, buses, table)) for m in reference]
    assert_replay_is_the_reference(source, chunks, reference, buses, table)
    assert_accounted(processor_for(buses, j1939), chunks, buses)


# --- the live path: python-can's virtual bus ---------------------------------------------------

POISON = st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 1e20, MAX_TIMESTAMP + 1])


@st.composite
def live_streams(draw: st.DrawFn) -> list[can.Message]:
    """A bus's frames, some with a time that is not one (a driver's or a clock's fault)."""
    out = draw(streams("", ("x",), max_size=60))
    for msg in out:
        if draw(st.integers(0, 15)) == 0:
            msg.timestamp = draw(POISON)
    return out


@SETTINGS
@given(sent=live_streams(), j1939=st.booleans())
def test_a_live_bus_gives_every_frame_sent_and_counts_the_rest(
    sent: list[can.Message], j1939: bool
) -> None:
    """Frames sent on python-can's virtual bus (timestamps kept) and read by the bus source:
    exactly those frames, named after the bus, minus the ones the time checks skip (counted);
    then every frame accounted for by the processing stage."""
    channel = f"prop-{time.monotonic_ns()}"
    config = BusConfig(name="powertrain", interface="virtual", channel=channel)
    source = BusSource(config)
    queue = FrameQueue(max_frames=1_000_000)
    passed, bad, jumps = documented_admission([m.timestamp for m in sent], ended=False)
    got: list[can.Message] = []
    sender_bus = can.Bus(interface="virtual", channel=channel, preserve_timestamps=True)
    with Running(source, queue), sender_bus as sender:
        wait_for(lambda: source.connected, 5, "the bus source to open its bus")
        for msg in sent:
            sender.send(msg)
        got = drain(queue, len(passed), timeout=5)
        wait_for(lambda: source.stats()["bad_timestamp"] == bad or None, 5, "the counters")
        assert drain(queue, 1, timeout=0.05) == []
    expected = [(*fields(sent[i], "powertrain")[:10], True, "powertrain") for i in passed]
    assert [fields(m) for m in got] == expected  # is_rx: received, not sent by this bus
    stats = source.stats()
    assert (stats["frames"], stats["bad_timestamp"], stats["time_jumps"]) == (len(got), bad, jumps)
    assert stats["errors"] == 0
    assert_accounted(processor_for(["powertrain"], [j1939]), [got], ["powertrain"])


# --- damaged logs ---------------------------------------------------------------------------------

#: Lines python-can's reader of each text format raises on (checked by the test): what a
#: logger killed mid-line, a disk error or another tool's records leave in a real log.
GARBAGE: dict[str, list[str]] = {
    "log": [
        "garbage",
        "(1700000000.000100) can0 12G#0102",
        "(1700000000.000200) can0 123#0102030405060708_B",  # candump -8: a raw DLC above 8
        "(1700000000.0003",
        "(x) can0 123#01",
    ],
    "asc": [
        "   0.000000 CANFD   Start of measurement",  # CANoe writes it for CAN FD channels
        "   1.000000 1  123             Rx   d 8 00 11 22 Length = 235910 BitCount = 121",
        "   1.000000 1  123             Rx   d",
        "   1.000000 CANFD   1 Rx   123  1 0 8",
    ],
    "csv": ["garbage", "1.0,0x123,0,0,0,2", "1.0,0x12G,0,0,0,1,AQ==", "1.0,0x123,0,0,0,x,AQ=="],
    "trc": [
        "      7      1234.567 DT  1     0123 Rx -  2    0G 01",
        "      7      1234.567 DT  1     01Z3 Rx -  2    01 02",
        "      7      xx.567 DT  1     0123 Rx -  2    01 02",
    ],
}


@st.composite
def damaged_logs(draw: st.DrawFn) -> tuple[str, list[can.Message], list[tuple[int, str]]]:
    """A text format, frames, and garbage lines with where each goes (a line number)."""
    fmt = draw(st.sampled_from(TEXT_FORMATS))
    sent = draw(streams(fmt, ("can0",), max_size=30))
    garbage = draw(
        st.lists(
            st.tuples(st.integers(0, 10_000), st.sampled_from(GARBAGE[fmt])),
            min_size=1,
            max_size=3,
        )
    )
    return fmt, sent, garbage


@SETTINGS
@given(case=damaged_logs())
@example(case=("asc", [can.Message(timestamp=1.0, is_extended_id=False)], [(4, GARBAGE["asc"][0])]))
def test_a_garbage_line_costs_that_line_only(
    case: tuple[str, list[can.Message], list[tuple[int, str]]],
) -> None:
    """docs/delivery.md: a malformed line in a replay log is skipped and counted, and reading
    goes on at the next line: every frame of the other lines is read. (A CANoe ASC log of CAN
    FD channels starts with a line python-can's ASCReader raises on: a log of a car never seen
    before replayed as nothing.)"""
    fmt, sent, garbage = case
    with tempfile.TemporaryDirectory() as tmp:
        clean = write_log(Path(tmp) / f"clean.{fmt}", fmt, sent)
        reference = read_log(clean)
        lines = clean.read_text().splitlines(keepends=True)
        header = len(header_lines(clean, fmt))  # damage in the records, not in the header
        for where, line in sorted(garbage, reverse=True):
            lines.insert(header + min(where, len(lines) - header), line + "\n")
        damaged = Path(tmp) / f"damaged.{fmt}"
        damaged.write_text("".join(lines))
        for _, line in garbage:  # the garbage is garbage to python-can
            alone = Path(tmp) / f"alone.{fmt}"
            alone.write_text("".join([*header_lines(clean, fmt), line + "\n"]))
            assert read_until_error(alone)[1], line
        source, chunks = replay(damaged, ["can0"], {}, None)
    assert_replay_is_the_reference(source, chunks, reference, ["can0"], {}, bad_lines=len(garbage))


def header_lines(path: Path, fmt: str) -> list[str]:
    """The lines of a python-can log before its first frame."""
    lines = path.read_text().splitlines(keepends=True)
    if fmt == "log":
        return []
    if fmt == "csv":
        return lines[:1]
    if fmt == "asc":
        return lines[:4]
    return [line for line in lines if line.startswith(";")]


@st.composite
def cut_logs(draw: st.DrawFn) -> tuple[str, list[can.Message], float]:
    fmt = draw(st.sampled_from(["log", "asc", "csv", "trc", "blf", "log.gz", "db"]))
    return fmt, draw(streams(fmt, ("can0", 1), max_size=60)), draw(st.floats(0.0, 1.0))


@SETTINGS
@given(case=cut_logs())
@example(  # a SQLite log cut mid-page: a row of NULLs, a frame whose time is None
    case=("db", [can.Message(timestamp=0.0, arbitration_id=0xA0, is_extended_id=False)], 0.75)
)
def test_a_log_cut_mid_record_gives_every_whole_record(
    case: tuple[str, list[can.Message], float],
) -> None:
    """A log cut at any byte (the logger lost power): every frame python-can reads before the
    cut is replayed; a record it cannot read there is counted, and the replay ends normally
    (no exception out of the source, nothing read lost)."""
    fmt, sent, fraction = case
    with tempfile.TemporaryDirectory() as tmp:
        path = write_log(Path(tmp) / f"drive{suffix(fmt)}", fmt, sent)
        whole = path.read_bytes()
        cut = whole[: int(len(whole) * fraction)]
        path.write_bytes(cut)
        if not python_can_opens(path):  # a BLF cut inside its header
            assert_refused(path)
            return
        reference, failed = read_until_error(path)
        source, chunks = replay(path, ["can0"], {}, None)
    assert_replay_is_the_reference(source, chunks, reference, ["can0"], {}, bad_lines=int(failed))


# --- regressions --------------------------------------------------------------------------------


def test_a_canoe_fd_asc_log_is_read_after_its_start_line(tmp_path: Path) -> None:
    """CANoe starts the log of a CAN FD channel with ``CANFD Start of measurement``, which
    python-can's ASCReader raises on (python-can issue 1786): the whole log was skipped."""
    path = tmp_path / "canoe.asc"
    path.write_text(
        "date Fri May 05 06:24:08.927000 PM 2024\n"
        "base hex  timestamps absolute\n"
        "internal events logged\n"
        "Begin Triggerblock Fri May 05 06:24:08.846 PM 2024\n"
        "   0.000000 CANFD   Start of measurement\n"
        "   0.000000 CANFD   1 Rx   4B0   1 0 8 8 00 01 02 03 04 05 06 07   0 0 1000 0 0 0 0 0\n"
        "   0.001000 1  123             Rx   d 2 AA BB\n"
        "End TriggerBlock\n"
    )
    source, chunks = replay(path, ["can0"], {}, None)
    got = [m for chunk in chunks for m in chunk]
    assert [(m.arbitration_id, bytes(m.data)) for m in got] == [
        (0x4B0, bytes(range(8))),
        (0x123, b"\xaa\xbb"),
    ]
    assert source.stats()["bad_lines"] == 1


@pytest.mark.parametrize("fmt", TEXT_FORMATS)
def test_a_log_that_is_not_utf8_is_read(tmp_path: Path, fmt: str) -> None:
    """Logs written on Windows (CANoe, PCAN-View) are often cp1252: a German date or comment
    made the text reader raise at its first block, and the whole log was skipped."""
    sent = [
        can.Message(timestamp=1.0 + i, arbitration_id=i, is_extended_id=False, data=b"\x01")
        for i in range(200)
    ]
    clean = write_log(tmp_path / f"clean.{fmt}", fmt, sent)
    lines = clean.read_text().splitlines(keepends=True)
    comment = {"log": None, "asc": "// Bremsdruck über Grenzwert\n", "csv": None}
    comment["trc"] = ";   C:\\Users\\Jürgen\\Fahrt.trc\n"
    if comment[fmt] is not None:
        lines.insert(1 if fmt == "trc" else 3, comment[fmt])
    lines.insert(len(lines) // 2, "(1.5) can0 123#0Ä\n" if fmt == "log" else "Ä\n")
    path = tmp_path / f"windows.{fmt}"
    path.write_bytes("".join(lines).encode("cp1252"))
    source, chunks = replay(path, ["can0"], {}, None)
    got = [m for chunk in chunks for m in chunk]
    assert [m.arbitration_id for m in got] == list(range(200))
    assert source.stats()["bad_lines"] <= 1  # the Ä line, in formats that do not skip it


def test_a_gzipped_log_cut_short_ends_the_replay_normally(tmp_path: Path) -> None:
    """A .log.gz whose writer was killed: gzip raises EOFError, which escaped the source's
    thread (the frames of its last chunk never reached the queue, uncounted)."""
    sent = [
        can.Message(timestamp=1.0 + i / 100, arbitration_id=i % 0x7FF, is_extended_id=False)
        for i in range(3000)
    ]
    path = write_log(tmp_path / "drive.log.gz", "log.gz", sent)
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) * 2 // 3])
    reference, failed = read_until_error(path)
    assert failed and 256 < len(reference) < 3000 and len(reference) % 256
    source, chunks = replay(path, ["can0"], {}, None)
    assert_replay_is_the_reference(source, chunks, reference, ["can0"], {}, bad_lines=1)


def test_a_blf_with_a_broken_object_ends_the_pass_counted(tmp_path: Path) -> None:
    """An uncompressed BLF with a damaged object header: python-can raises BLFParseError,
    which escaped the source's thread."""
    path = tmp_path / "drive.blf"
    with can.BLFWriter(str(path), compression_level=0) as writer:
        for i in range(1000):
            writer.on_message_received(
                can.Message(timestamp=1.0 + i / 100, arbitration_id=i, is_extended_id=False)
            )
    data = bytearray(path.read_bytes())
    at = data.find(b"LOBJ", data.find(b"LOBJ", 2000) + 4)
    data[at : at + 4] = b"XXXX"
    path.write_bytes(data)
    reference, failed = read_until_error(path)
    assert failed
    source, chunks = replay(path, ["can0"], {}, None)
    assert_replay_is_the_reference(source, chunks, reference, ["can0"], {}, bad_lines=1)


@pytest.mark.parametrize(
    ("name", "content"),
    [("drive.txt", b"(1.0) can0 123#01\n"), ("drive.blf", b""), ("drive.blf", b"LOGG")],
)
def test_a_log_python_can_cannot_open_is_a_configuration_error(
    tmp_path: Path, name: str, content: bytes
) -> None:
    """A file of no format python-can reads, or a BLF without a header: refused at start-up
    with the reason, like a missing log (it raised in the source's thread, after start)."""
    path = tmp_path / name
    path.write_bytes(content)
    assert not python_can_opens(path)
    assert_refused(path)


@pytest.mark.parametrize("content", ["", "garbage\n"])
def test_a_looped_log_without_frames_ends(tmp_path: Path, content: str) -> None:
    """``loop = true`` over a log that gives no frame (empty, or nothing readable): the source
    spun through passes forever at full speed, and did not even see ``stop``."""
    path = tmp_path / "empty.log"
    path.write_text(content)
    source = ReplaySource(ReplayConfig(str(path), None, loop=True), ["can0"])
    stop = threading.Event()
    thread = threading.Thread(target=source.run, args=(FrameQueue(), stop), daemon=True)
    thread.start()
    thread.join(5)
    stop.set()
    assert not thread.is_alive()
    assert source.stats()["passes"] == 1


@pytest.mark.parametrize("speed", [None, 1e12])
def test_a_step_back_just_after_a_jump_starts_a_chunk_and_is_counted(
    tmp_path: Path, speed: float | None
) -> None:
    """A jump of days that the next frame confirms while stepping back an hour from it: both
    frames went on in one chunk, the step neither cut nor counted (the processing stage kept
    its timers and batch across it)."""
    jump = 100.0 + 2 * 86_400
    path = tmp_path / "jump.log"
    path.write_text(
        "".join(f"({t:f}) can0 123#01\n" for t in (100.0, 100.5, jump, jump - 3600, jump - 3599))
    )
    source, chunks = replay(path, ["can0"], {}, speed)
    assert [[m.timestamp for m in c] for c in chunks] == [
        [100.0, 100.5, jump],
        [jump - 3600, jump - 3599],
    ]
    stats = source.stats()
    assert (stats["time_jumps"], stats["time_steps_back"], stats["bad_timestamp"]) == (1, 1, 0)


def test_a_time_that_is_no_number_is_a_bad_timestamp() -> None:
    """A frame whose time is None (a damaged SQLite log's row) raised TypeError in the time
    checks, out of the source's thread; it is a bad timestamp like NaN."""
    guard = TimeGuard()
    frames_ = [can.Message(timestamp=t, arbitration_id=1) for t in (1.0, None, 1.5)]  # type: ignore[arg-type]
    assert [[m.timestamp for m in c] for c in guard.split(frames_)] == [[1.0, 1.5]]
    assert guard.split([can.Message(timestamp=None)]) == []  # type: ignore[arg-type]
    assert guard.admit(can.Message(timestamp=None)) == ([], False)  # type: ignore[arg-type]
    assert guard.stats()["bad_timestamp"] == 3


@pytest.mark.parametrize("kind", ["replay", "bus"])
def test_a_source_stopped_with_the_queue_full_counts_only_what_it_handed_over(
    tmp_path: Path, kind: str
) -> None:
    """A source blocked on a full queue when it is stopped: the chunk it could not hand over
    was counted in its frames all the same."""
    sent = [
        can.Message(timestamp=1.0 + i / 1000, arbitration_id=i % 0x800, is_extended_id=False)
        for i in range(3 * CHUNK)
    ]
    queue = FrameQueue(max_frames=CHUNK)  # room for one chunk
    source: ReplaySource | BusSource
    if kind == "replay":
        source = ReplaySource(
            ReplayConfig(str(write_log(tmp_path / "d.log", "log", sent)), None), ["can0"]
        )
        with Running(source, queue):
            wait_for(lambda: source.frames, 5, "a chunk handed over")
            time.sleep(0.3)  # blocked on the full queue
    else:
        channel = f"full-{time.monotonic_ns()}"
        source = BusSource(BusConfig(name="can0", interface="virtual", channel=channel))
        sender_bus = can.Bus(interface="virtual", channel=channel, preserve_timestamps=True)
        with Running(source, queue), sender_bus as sender:
            wait_for(lambda: source.connected, 5, "the bus")
            for msg in sent:
                sender.send(msg)
            wait_for(lambda: source.frames, 5, "a chunk handed over")
            time.sleep(0.3)
    assert source.frames == sum(len(chunk) for chunk in collect(queue)) > 0


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_can_telemetry_run_over_a_generated_log_accounts_for_every_frame(
    data: st.DataObject,
) -> None:
    """The whole module as ``can-telemetry run --replay LOG --speed max`` runs it (spool, file
    uplink): the frames python-can reads from the log are those the processing stage read,
    bar the bad timestamps the source counted, and ``read = decoded + repeated + skipped +
    lost`` with nothing lost."""
    fmt = data.draw(st.sampled_from(FORMATS))
    sent = data.draw(streams(fmt, LOG_CHANNELS))
    buses, table, j1939 = data.draw(replay_configs())
    with tempfile.TemporaryDirectory() as tmp:
        path = write_log(Path(tmp) / f"drive{suffix(fmt)}", fmt, sent)
        reference = read_log(path)
        config = {
            "vehicle_id": "v",
            "buses": [
                {"name": name, "dbc": [str(DEMO_DBC)], "j1939": flag}
                for name, flag in zip(buses, j1939, strict=True)
            ],
            "replay": {"log": str(path), "speed": "max", "channels": table},
            "spool": {"path": str(Path(tmp) / "spool.db")},
            "uplink": {"type": "file", "path": str(Path(tmp) / "outbox")},
        }
        pipeline = Pipeline(parse_config(config))
        pipeline.start()
        pipeline.wait(poll=0.01)
        pipeline.stop(drain_timeout=5)
    stats = pipeline.stats()
    source = stats.sources["replay"]
    decode = stats.decode
    assert (source["bad_lines"], pipeline.failures, pipeline.processing_errors) == (0, {}, 0)
    assert stats.frames == source["frames"] == len(reference) - source["bad_timestamp"]
    assert decode.frames == (
        decode.decoded + decode.repeated + sum(decode.skipped.values()) + decode.lost
    )
    assert (decode.lost, stats.lost_rows) == (0, 0)
