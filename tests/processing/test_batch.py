"""Batches (edge/processing/batch.py): columnar accumulation, splitting, and when the Batcher
closes a
batch; with a real Processor (edge/processing/processor.py), that the byte budget holds under a
burst."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import can
import cantools
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.clock import FakeClock
from edge.config.model import BatchConfig, BusConfig, Compression, Config, SignalRule, SignalsConfig
from edge.processing.batch import MAX_BATCH_VALUES, Batch, Batcher, Group
from edge.processing.processor import Processor
from edge.wire.codec import Codec, PayloadReader, unpack
from edge.wire.payload import Payload
from edge.wire.schema import MessageInfo, Schema, SignalInfo

Items = list[tuple[int, Any]]
RowSpec = tuple[int, int | None, int, Items]


def rows_of(batch: Batch) -> list[tuple[tuple[int, int | None], int, Items]]:
    """Every row of ``batch`` as ``(group key, tick, [(signal index, value)...])``, group by
    group, rows in order."""
    out = []
    for key, group in batch.groups.items():
        by_row: list[Items] = [[] for _ in group.times]
        for index, (rows, values) in group.columns.items():
            assert len(rows) == len(values)
            assert rows == sorted(set(rows))
            for row, value in zip(rows, values, strict=True):
                by_row[row].append((index, value))
        for tick, items in zip(group.times, by_row, strict=True):
            out.append((key, tick, sorted(items)))
    return out


def batch_of(rows: Sequence[RowSpec]) -> Batch:
    batch = Batch(12.5)
    for message_index, source, tick, items in rows:
        batch.add(message_index, source, tick, items)
    return batch


# --------------------------------------------------------------------------------------------
# accumulation


def test_group_keeps_a_time_column_and_sparse_value_columns() -> None:
    group = Group()
    assert group.add(100, [(0, 7), (2, 1.5)]) == 2
    assert group.add(110, [(0, 8)]) == 1
    assert group.add(105, []) == 0
    assert group.add(120, [(2, -0.0), (1, 3)]) == 2
    assert group.times == [100, 110, 105, 120]
    assert group.columns == {0: ([0, 1], [7, 8]), 2: ([0, 3], [1.5, -0.0]), 1: ([3], [3])}


def test_batch_groups_by_message_and_source_address() -> None:
    assert Batch(0.0).rows == 0
    assert Batch(0.0).first_tick is None
    batch = Batch(3.0)
    start = batch.estimate
    batch.add(0, None, 50, [(0, 1), (1, 2)])
    batch.add(1, 0x00, 40, [(0, 10)])
    batch.add(1, 0x3D, 45, iter([(0, 11)]))  # any iterable of items
    batch.add(0, None, 70, [(1, 3)])
    batch.add(1, 0x00, 60, [(0, 12)])
    assert list(batch.groups) == [(0, None), (1, 0x00), (1, 0x3D)]
    assert batch.groups[(0, None)].times == [50, 70]
    assert batch.groups[(0, None)].columns == {0: ([0], [1]), 1: ([0, 1], [2, 3])}
    assert batch.groups[(1, 0x00)].columns == {0: ([0, 1], [10, 12])}
    assert (batch.rows, batch.values) == (5, 6)
    assert (batch.first_tick, batch.min_tick, batch.max_tick) == (50, 40, 70)
    assert batch.opened_at == 3.0
    # Pessimistic: every row and every value adds to the estimate, every new group more.
    assert batch.estimate >= start + 5 * 9 + 6 * 9


# --------------------------------------------------------------------------------------------
# split

row_specs = st.lists(
    st.tuples(
        st.integers(0, 3),
        st.sampled_from([None, 0, 0x3D]),
        st.integers(0, 50),
        st.lists(st.tuples(st.integers(0, 5), st.integers(-100, 100)), max_size=4),
    ).map(lambda r: (r[0], r[1], r[2], sorted(dict(r[3]).items()))),
    min_size=2,
    max_size=60,
)


@settings(max_examples=200, deadline=None)
@given(rows=row_specs)
def test_split_keeps_every_value_once_and_in_order(rows: list[RowSpec]) -> None:
    batch = batch_of(rows)
    first, second = batch.split()

    assert first.rows > 0
    assert second.rows > 0
    assert first.rows + second.rows == batch.rows
    assert first.values + second.values == batch.values
    assert first.opened_at == second.opened_at == batch.opened_at
    whole = rows_of(batch)
    halves = rows_of(first) + rows_of(second)
    assert Counter(map(repr, halves)) == Counter(map(repr, whole))
    # Within each half, each group's rows keep their original order.
    for half in (first, second):
        for key in half.groups:
            original = [(t, i) for k, t, i in whole if k == key]
            kept = [(t, i) for k, t, i in rows_of(half) if k == key]
            assert is_subsequence(kept, original)
    # Cut by time unless at least half of the rows share the earliest instant.
    ticks = sorted(tick for _, _, tick, _ in rows)
    if ticks[len(ticks) // 2] != ticks[0]:
        assert first.max_tick < second.min_tick
    else:
        assert first.rows == len(rows) // 2


def is_subsequence(part: list[Any], whole: list[Any]) -> bool:
    remaining = iter(whole)
    return all(any(item == other for other in remaining) for item in part)


def test_split_of_many_rows_at_one_instant_halves_by_position() -> None:
    rows: list[RowSpec] = [(i % 3, None, 777, [(0, i), (1, -i)]) for i in range(1001)]
    batch = batch_of(rows)
    first, second = batch.split()
    assert (first.rows, second.rows) == (500, 501)
    assert first.min_tick == first.max_tick == second.min_tick == 777
    values = sorted(v for b in (first, second) for _, _, items in rows_of(b) for _, v in items)
    assert values == sorted(v for _, _, _, items in rows for _, v in items)
    # Splitting again and again ends with one row per batch, nothing lost.
    pending, singles = [batch], []
    while pending:
        b = pending.pop()
        if b.rows == 1:
            singles.append(b)
        else:
            pending.extend(b.split())
    assert len(singles) == 1001
    assert sum(b.values for b in singles) == 2002


def test_split_of_two_rows_gives_one_each() -> None:
    for ticks in ((5, 5), (5, 6), (6, 5)):
        first, second = batch_of([(0, None, t, [(0, t)]) for t in ticks]).split()
        assert (first.rows, second.rows) == (1, 1)


# --------------------------------------------------------------------------------------------
# Batcher


def make_batcher(
    clock: FakeClock,
    *,
    budget: int = 1_000_000,
    max_age: float = 1.0,
    measure: Callable[[Batch], int] = lambda batch: 0,
) -> Batcher:
    return Batcher(
        budget=budget, max_age=max_age, ticks_per_second=1000, measure=measure, clock=clock
    )


def test_batcher_closes_on_age_in_frame_time() -> None:
    batcher = make_batcher(FakeClock())
    assert not batcher.add(0, None, 5_000, [(0, 1)])
    assert not batcher.add(0, None, 5_999, [(0, 2)])
    assert batcher.add(0, None, 6_000, [(0, 3)])  # 1.0 s after the first row
    batch = batcher.take()
    assert batch is not None
    assert batch.rows == 3
    # A new batch opens, its age counted from its own first row.
    assert not batcher.add(0, None, 6_001, [(0, 4)])
    assert not batcher.add(0, None, 6_900, [(0, 4)])
    assert batcher.add(0, None, 7_001, [(0, 5)])


def test_age_is_frame_time_not_wall_time() -> None:
    """A replay at high speed cuts the same batches as the live drive."""
    clock = FakeClock()
    batcher = make_batcher(clock)
    for tick in range(5_000, 5_999, 10):
        assert not batcher.add(0, None, tick, [(0, tick)])  # no wall time passes at all
    assert batcher.add(0, None, 6_000, [(0, 1)])


def test_batcher_closes_on_age_when_time_starts_at_zero() -> None:
    # Logs with relative timestamps start at 0.0: frame tick 0.
    batcher = make_batcher(FakeClock())
    assert not batcher.add(0, None, 0, [(0, 1)])
    assert batcher.add(0, None, 5_000, [(0, 2)])


def test_batcher_closes_when_time_steps_back_by_max_age() -> None:
    # NTP steps the clock back: the open batch closes once it spans max age, not when the
    # clock has caught up with its first row (an hour later here).
    batcher = make_batcher(FakeClock())
    assert not batcher.add(0, None, 3_600_000, [(0, 1)])
    assert not batcher.add(0, None, 3_599_500, [(0, 2)])
    assert batcher.add(0, None, 3_599_000, [(0, 3)])
    batcher.take()
    assert not batcher.add(0, None, 3_600_000, [(0, 1)])
    assert batcher.add(0, None, 100, [(0, 2)])


def test_batcher_closes_at_max_batch_values_however_well_they_compress() -> None:
    # Values that compress to nothing (measure says 0 bytes) still close the batch in time for
    # readers, which take arrays up to MAX_ARRAY only.
    batcher = make_batcher(FakeClock(), budget=200_000, max_age=3600.0)
    row = [(i, 1) for i in range(1000)]
    tick = 0
    while not batcher.add(0, None, tick, row):
        tick += 1
    assert MAX_BATCH_VALUES <= batcher.batch.values < MAX_BATCH_VALUES + len(row)
    assert batcher.measurements < 100


def test_batcher_expires_on_wall_clock_when_the_bus_goes_silent() -> None:
    clock = FakeClock()
    batcher = make_batcher(clock, max_age=2.0)
    assert not batcher.expired()  # empty: nothing to flush
    clock.advance(10)
    assert not batcher.expired()
    batcher.add(0, None, 123, [(0, 1)])  # the batch's wall age starts with its first row
    clock.advance(1.99)
    assert not batcher.expired()
    clock.advance(0.01)
    assert batcher.expired()
    batch = batcher.take()
    assert batch is not None
    assert batch.rows == 1
    assert not batcher.expired()
    assert batcher.take() is None


def test_batcher_closes_on_size_measuring_rarely() -> None:
    schema = Schema(
        ("c",),
        (MessageInfo(0, "M", 1, False, False, tuple(SignalInfo(f"s{i}") for i in range(8))),),
    )
    codec = Codec("zstd", 3)
    sizes: list[int] = []

    def measure(batch: Batch) -> int:
        sizes.append(codec.measure(batch, schema))
        return sizes[-1]

    rng = random.Random(7)
    batcher = make_batcher(FakeClock(), budget=8192, max_age=3600, measure=measure)
    tick = 0
    while not batcher.add(0, None, 10_000 + tick, [(i, rng.randrange(256)) for i in range(8)]):
        tick += 1
        assert tick < 10_000, "never closed"
    batch = batcher.take()
    assert batch is not None
    assert sizes[-1] >= 0.95 * 8192
    assert codec.measure(batch, schema) <= 8192
    assert batcher.measurements == len(sizes)
    assert len(sizes) < batch.rows / 5  # the pessimistic estimate spares most encodings
    # The next batch starts from scratch: no measurement until its estimate reaches the budget.
    sizes.clear()
    batcher.add(0, None, 50_000, [(0, 1)])
    assert sizes == []


# --------------------------------------------------------------------------------------------
# the Processor under a burst: the byte budget holds

PLAIN_MESSAGES = 8


def write_burst_dbc(path: Path) -> Path:
    """8 messages of 8 random 8-bit signals (mixed scale, offset and sign) and one multiplexed
    message whose mux switches rarely, which makes dense columns turn sparse at once."""
    rng = random.Random(1)
    conversions = ["(1,0)", "(0.5,-10)", "(0.1,0)", "(2,-100)", "(0.01,5)"]
    lines = ['VERSION ""', "", "NS_ :", "", "BS_:", "", "BU_: ECU", ""]
    for m in range(PLAIN_MESSAGES):
        lines.append(f"BO_ {0x100 + m} Burst{m}: 8 ECU")
        for s in range(8):
            sign = rng.choice("+-")
            conversion = rng.choice(conversions)
            lines.append(f' SG_ B{m}S{s} : {8 * s}|8@1{sign} {conversion} [0|0] "u" Vector__XXX')
        lines.append("")
    lines.append("BO_ 512 Muxed: 8 ECU")
    lines.append(' SG_ Sel M : 0|8@1+ (1,0) [0|1] "" Vector__XXX')
    for mux in (0, 1):
        for s in range(1, 8):
            lines.append(f' SG_ X{mux}S{s} m{mux} : {8 * s}|8@1+ (0.5,0) [0|0] "" Vector__XXX')
    lines.append("")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def burst_frames(count: int, seed: int = 3) -> list[can.Message]:
    """Random payloads (incompressible), 10 kHz, with a stretch of frames at one instant."""
    rng = random.Random(seed)
    frames = []
    for i in range(count):
        t = 1000.0 + (i if not count // 3 <= i < count // 2 else count // 3) * 0.0001
        m = i % (PLAIN_MESSAGES + 1)
        if m == PLAIN_MESSAGES:
            data = bytes([(i // 500) % 2]) + rng.randbytes(7)
            arbitration_id = 512
        else:
            data = rng.randbytes(8)
            arbitration_id = 0x100 + m
        frames.append(frame(arbitration_id, data, t))
    return frames


def frame(arbitration_id: int, data: bytes, timestamp: float) -> can.Message:
    return can.Message(
        arbitration_id=arbitration_id,
        is_extended_id=False,
        data=data,
        timestamp=timestamp,
        channel="can0",
    )


class Collector:
    """The spool's side of ``Processor``'s append: allocate sequence numbers, keep payloads."""

    def __init__(self) -> None:
        self.payloads: list[Payload] = []

    def __call__(self, build: Callable[[str, int], Payload]) -> int:
        seq = len(self.payloads)
        self.payloads.append(build("c0ffee00c0ffee00c0ffee00c0ffee00", seq))
        return seq

    def data(self) -> list[Payload]:
        return [p for p in self.payloads if p.properties["kind"] == "data"]


def burst_config(
    dbc: Path, compression: Compression, max_bytes: int, vehicle: str = "veh-1"
) -> Config:
    return Config(
        vehicle_id=vehicle,
        buses=(BusConfig(name="can0", databases=(str(dbc),)),),
        signals=SignalsConfig(default=SignalRule(match=("*",), mode="every")),
        batch=BatchConfig(max_age=60.0, max_bytes=max_bytes, compression=compression),
    )


def run(processor: Processor, frames: Sequence[can.Message], chunk: int = 500) -> None:
    for start in range(0, len(frames), chunk):
        processor.process(frames[start : start + chunk])
    processor.flush()


@pytest.mark.parametrize("compression", ["none", "zlib", "zstd"])
def test_byte_budget_holds_under_a_burst(tmp_path: Path, compression: Compression) -> None:
    dbc = write_burst_dbc(tmp_path / "burst.dbc")
    frames = burst_frames(4500)
    collector = Collector()
    processor = Processor(burst_config(dbc, compression, 8192), collector, clock=FakeClock())

    run(processor, frames)

    payloads = collector.data()
    assert len(payloads) >= 5
    assert max(len(p.body) for p in payloads) <= 8192
    assert collector.payloads[0].properties["kind"] == "schema"
    assert [int(p.properties["seq"]) for p in collector.payloads] == list(
        range(len(collector.payloads))
    )
    # Every value arrives exactly once and exactly as cantools decodes it.
    decoder = PayloadReader()
    rows = [row for p in collector.payloads for row in decoder.rows(p.body)]
    assert len(rows) == processor.samples == processor.stats().samples
    assert Counter((r.time, r.message, r.signal, r.value) for r in rows) == expected(dbc, frames)


@pytest.mark.parametrize("spread", [0.0001, 0.0], ids=["10kHz", "one-instant"])
def test_burst_through_the_writer_split(tmp_path: Path, spread: float) -> None:
    """Uncompressed, columns that turn dense (the multiplexer switches, and the new mux's
    columns reach 30 % of their group's rows) grow a batch by a nil for every row they lack at
    once, past what the estimate foresaw: the writer measures at close and splits, by time or,
    at one instant, by position."""
    dbc = write_burst_dbc(tmp_path / "burst.dbc")
    rng = random.Random(5)
    frames = [
        frame(512, bytes([(i // 300) % 2]) + rng.randbytes(7), 1000 + i * spread)
        for i in range(3000)
    ]
    collector = Collector()
    processor = Processor(burst_config(dbc, "none", 8192), collector, clock=FakeClock())

    run(processor, frames)

    assert processor.splits > 0
    assert max(len(p.body) for p in collector.data()) <= 8192
    decoder = PayloadReader()
    rows = [row for p in collector.payloads for row in decoder.rows(p.body)]
    assert len(rows) == processor.samples
    assert Counter((r.time, r.message, r.signal, r.value) for r in rows) == expected(dbc, frames)


def test_byte_budget_holds_with_a_long_vehicle_id(tmp_path: Path) -> None:
    """The vehicle id is in every schema envelope and every payload's properties: the size
    checks must count it."""
    dbc = write_burst_dbc(tmp_path / "burst.dbc")
    collector = Collector()
    config = burst_config(dbc, "none", 8192, vehicle="V" * 500)
    processor = Processor(config, collector, clock=FakeClock())
    run(processor, burst_frames(3000))
    assert max(len(p.body) for p in collector.data()) <= 8192


def expected(dbc: Path, frames: Sequence[can.Message]) -> Counter[tuple[float, str, str, Any]]:
    db = cantools.database.load_file(str(dbc))
    assert isinstance(db, cantools.database.can.Database)
    out: Counter[tuple[float, str, str, Any]] = Counter()
    for frame in frames:
        message = db.get_message_by_frame_id(frame.arbitration_id)
        time = round(frame.timestamp * 1000) * 1_000_000 / 10**9
        decoded = cast(dict[str, Any], message.decode(bytes(frame.data), decode_choices=False))
        for name, value in decoded.items():
            out[(time, message.name, name, value)] += 1
    return out


# --------------------------------------------------------------------------------------------
# the Processor and time


def test_processor_closes_on_frame_age(tmp_path: Path) -> None:
    dbc = write_burst_dbc(tmp_path / "burst.dbc")
    config = burst_config(dbc, "zstd", 200_000)
    config = Config(
        vehicle_id=config.vehicle_id,
        buses=config.buses,
        signals=config.signals,
        batch=BatchConfig(max_age=1.0, max_bytes=200_000),
    )
    collector = Collector()
    processor = Processor(config, collector, clock=FakeClock())
    # 3.5 s of frame time and no wall time at all
    processor.process([frame(0x100, bytes([i % 256] * 8), 100 + i * 0.01) for i in range(350)])

    envelopes = [unpack(p.body).envelope for p in collector.data()]
    assert len(envelopes) == 3
    for env in envelopes:
        assert env["t1"] - env["t0"] == 1000  # closed by the row that made it 1 s old
        assert env["tb"] == "relative"


def test_processor_flushes_a_silent_bus_on_wall_clock(tmp_path: Path) -> None:
    dbc = write_burst_dbc(tmp_path / "burst.dbc")
    clock = FakeClock()
    config = burst_config(dbc, "zstd", 200_000)
    collector = Collector()
    processor = Processor(config, collector, clock=clock)
    processor.process([frame(0x101, bytes(8), 1_700_000_000.25)])
    assert collector.data() == []

    clock.advance(59.9)
    processor.tick()
    assert collector.data() == []
    clock.advance(0.1)  # max_age = 60 s of wall time since the batch opened
    processor.tick()
    assert len(collector.data()) == 1
    decoder = PayloadReader()
    for payload in collector.payloads:
        got = decoder.rows(payload.body)
    assert {(r.time, r.message) for r in got} == {(1_700_000_000.25, "Burst1")}
    assert len(got) == 8
    processor.tick()
    assert len(collector.data()) == 1  # nothing left to flush
