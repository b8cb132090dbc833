"""Property tests of the lake (docs/lake.md): the corpus is not the world, so payloads are
*generated* the way the edge makes them and delivered the ways the cloud delivers them.

Making (the edge's own writer): generated schemas (integer signals signed and unsigned of 1 to 64
bits and wider, scaled and not, with choices; float32/float64 signals whose values include NaN,
infinities and -0.0; multiplexed messages, whose branch signals have values only in the rows of
their branch; J1939 messages with source addresses; several messages on several buses), rows
batched by the edge's :class:`~edge.processing.batch.Batcher` and encoded by its
:class:`~edge.wire.codec.Codec`, numbered by the spool's append contract through
:class:`~edge.delivery.appender.PayloadAppender`: several vehicles (devices), streams (a restart
opens a new one), schema payloads (again after a schema change, and periodically), campaign
payloads (``ext`` campaign, trigger, condition, raw frames); and the real
:class:`~edge.processing.processor.Processor` with the campaign engine
(:class:`~edge.campaigns.engine.CampaignEngine`: captures with trigger, condition and raw
frames, periodic snapshots) on the simulator's drive.

Delivering (what IoT Hub does): in order or shuffled, split over IoT Hub routing and Event Hubs
Capture Avro files and the ``file`` uplink's outbox, over several ingest runs; duplicated
(re-sends later, in the same and in later runs, the same file twice); with payloads lost (gaps),
schema payloads lost or late, truncated copies and other modules' messages.

The reference is what was generated (the rows each batch held when the edge encoded it, in
physical values by the documented arithmetic), never the lake's own decode. Properties: every
row of a payload that arrived whole (with its schema) is in ``signals`` exactly once, with its
value (bit for bit: NaN, -0.0), time, choice, source and campaign; ``raw`` is the raw integer;
``payloads``, ``streams`` (gaps), ``schemas``, ``quarantine`` and the parked payloads say what
was delivered; the report's counters add up; and the tables do not depend on the order, the
files or the runs the payloads came in. The Spark batch job gives the local ingest's tables.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import itertools
import json
import math
import os
import shutil
import struct
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import msgpack
import pytest
from hypothesis import HealthCheck, Phase, event, given, note, settings
from hypothesis import strategies as st

from edge.clock import FakeClock
from edge.delivery.appender import PayloadAppender
from edge.lake.local import IngestReport, ingest, read_table
from edge.processing.batch import Batch, Batcher
from edge.wire.codec import FORMAT_VERSION, KIND_DATA, KIND_SCHEMA, Codec, peek
from edge.wire.payload import Payload
from edge.wire.schema import MessageInfo, Schema, SignalInfo
from tests.support.lake import hub_messages, write_avro
from tests.wire.test_codec import bits, signal_specs

# A row as the lake must hold it: stream, seq, time, bus, message, signal, value (by its bits),
# unit, choice, source, campaign.
Key = tuple[str, int]
ROW_COLUMNS = (
    "stream",
    "seq",
    "time",
    "bus",
    "message",
    "signal",
    "value",
    "unit",
    "choice",
    "source",
    "campaign",
)


def settings_for(examples: int) -> settings:
    """``examples`` examples (ten times as many with ``DEEP=1``, as
    tests/processing/test_generated_databases.py)."""
    return settings(
        max_examples=examples * (10 if os.environ.get("DEEP") else 1),
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --------------------------------------------------------------------------------------------
# what the edge made


@dataclass
class Made:
    """One payload the edge made, and what it must become in the lake."""

    payload: Payload
    device: str
    vehicle: str
    kind: str
    stream: str
    seq: int
    schema: str
    ext: dict[str, Any] = field(default_factory=dict)
    #: data payloads: t0/t1 in seconds, and the rows the batch held (see :func:`batch_rows`)
    t0: float | None = None
    t1: float | None = None
    rows: list[tuple[Any, ...]] = field(default_factory=list)
    #: for each row (same order): the raw integer of an integer-coded signal (None for floats)
    #: and the signal's scale and offset
    raws: list[tuple[int | None, float, float]] = field(default_factory=list)

    @property
    def key(self) -> Key:
        return (self.stream, self.seq)

    def __repr__(self) -> str:  # short: hypothesis prints examples (and warns of long ones)
        return f"<{self.kind} {self.stream}:{self.seq} of {self.device}, {len(self.rows)} rows>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # hypothesis's printer
        printer.text(repr(self))

    @property
    def campaign(self) -> str | None:
        campaign = self.ext.get("campaign")
        return campaign if isinstance(campaign, str) else None


def physical(signal: SignalInfo, raw: Any) -> Any:
    """docs/format.md: ``raw`` if scale is 1 and offset 0, else ``raw * scale + offset``."""
    if signal.scale == 1 and signal.offset == 0:
        return raw
    return raw * signal.scale + signal.offset


def batch_rows(
    batch: Batch, schema: Schema, res_ns: int, campaign: str | None
) -> tuple[list[tuple[Any, ...]], list[tuple[int | None, float, float]]]:
    """The rows a batch holds, as the lake must store them (value as float64, by its bits;
    time ``tick * res / 1e9``; choice by the raw value), without the payload's stream and seq;
    and each row's raw integer (None for a float signal), scale and offset."""
    rows, raws = [], []
    for (index, source), group in batch.groups.items():
        message = schema.messages[index]
        for signal_index, (row_numbers, values) in group.columns.items():
            signal = message.signals[signal_index]
            for row, raw in zip(row_numbers, values, strict=True):
                value = float(physical(signal, raw))
                choice = signal.choices.get(raw) if signal.choices else None
                time = group.times[row] * res_ns / 10**9
                rows.append(
                    (
                        time,
                        schema.buses[message.bus],
                        message.name,
                        signal.name,
                        bits(value),
                        signal.unit,
                        choice,
                        source,
                        campaign,
                    )
                )
                raws.append(
                    (None if signal.is_float else raw, float(signal.scale), float(signal.offset))
                )
    return rows, raws


def spec_rows(
    schema: Schema, rows: Sequence[RowSpec], res_ns: int, campaign: str | None
) -> Counter[tuple[Any, ...]]:
    """The generated rows as :func:`batch_rows` gives them, straight from the row specs."""
    out: Counter[tuple[Any, ...]] = Counter()
    for message_index, source, tick, items in rows:
        message = schema.messages[message_index]
        for signal_index, raw in items:
            signal = message.signals[signal_index]
            choice = signal.choices.get(raw) if signal.choices else None
            value = bits(float(physical(signal, raw)))
            bus = schema.buses[message.bus]
            row = (tick * res_ns / 10**9, bus, message.name, signal.name, value)
            out[(*row, signal.unit, choice, source, campaign)] += 1
    return out


class Spool:
    """The spool's ``append(build, priority=...)`` contract: numbers each payload in its stream
    (a new stream after a restart goes on from 0)."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.payloads: list[Payload] = []

    def __call__(self, build: Callable[[str, int], Payload], priority: int = 5) -> int:
        seq = len(self.payloads)
        self.payloads.append(build(self.stream, seq))
        return seq


# --- generated schemas and rows -------------------------------------------------------------

#: Signals longer than 64 bits (CAN FD allows up to 512): wide-integer columns (version 3).
WIDE = st.sampled_from([65, 128, 512])
CAMPAIGN_NAMES = st.from_regex(r"[A-Za-z0-9_.-]{1,12}", fullmatch=True)


@dataclass
class MessagePlan:
    """How a generated message's rows are drawn: each signal's value strategy and, for a
    multiplexed message, the branch each signal is in (None: every row; the multiplexer is
    signal 0 and its value names the branch)."""

    values: list[st.SearchStrategy[Any]]
    branches: list[int | None]
    density: int  # in tenths of the rows a (non-multiplexer) signal has a value in


@st.composite
def schemas(draw: st.DrawFn, tag: str) -> tuple[Schema, list[MessagePlan]]:
    """A schema of 1 to 3 messages on 1 or 2 buses (reusing tests/wire/test_codec.py's signal
    specs), some multiplexed, some J1939, some with a signal wider than 64 bits."""
    buses = tuple(f"{tag}bus{i}" for i in range(draw(st.integers(1, 2))))
    messages: list[MessageInfo] = []
    plans: list[MessagePlan] = []
    for m in range(draw(st.integers(1, 3))):
        specs = [draw(signal_specs(f"S{s}")) for s in range(draw(st.integers(1, 4)))]
        if draw(st.integers(0, 5)) == 0:
            length = draw(WIDE)
            low, high = -(2 ** (length - 1)), 2 ** (length - 1) - 1
            specs.append((SignalInfo("Wide", 1, 0, "", False, None), st.integers(low, high)))
        branches: list[int | None] = [None] * len(specs)
        if draw(st.integers(0, 2)) == 0:  # multiplexed: signal 0 selects the branch
            count = draw(st.integers(1, 3))
            named = draw(st.booleans())
            mux = SignalInfo(
                "MUX", choices={i: f"branch{i}" for i in range(count)} if named else None
            )
            specs.insert(0, (mux, st.integers(0, count - 1)))
            branches = [None] + [draw(st.sampled_from([None, *range(count)])) for _ in specs[1:]]
        j1939 = draw(st.booleans())
        messages.append(
            MessageInfo(
                draw(st.integers(0, len(buses) - 1)),
                f"M{m}",
                0x18FEF100 + m if j1939 else 0x100 + m,
                j1939,
                j1939,
                tuple(info for info, _ in specs),
            )
        )
        density = draw(st.sampled_from([10, 10, 2, 5, 8]))
        plans.append(MessagePlan([v for _, v in specs], branches, density))
    return Schema(buses, tuple(messages)), plans


RowSpec = tuple[int, int | None, int, list[tuple[int, Any]]]


@st.composite
def row_specs(
    draw: st.DrawFn, schema: Schema, plans: list[MessagePlan], start: int, ticks_per_s: float
) -> list[RowSpec]:
    """Rows ``(message index, source address, tick, [(signal index, raw)...])`` as the
    processing stage adds them: frame time mostly moving on (sometimes a step back), every row
    with at least one value."""
    rows: list[RowSpec] = []
    tick = start
    for _ in range(draw(st.integers(1, 25))):
        m = draw(st.integers(0, len(plans) - 1))
        plan = plans[m]
        tick += draw(st.one_of(st.integers(0, int(0.3 * ticks_per_s)), st.integers(-50, 50)))
        source = draw(st.integers(0, 255)) if schema.messages[m].j1939 else None
        branch = None
        items: list[tuple[int, Any]] = []
        multiplexed = schema.messages[m].signals[0].name == "MUX"
        if multiplexed:
            branch = draw(plan.values[0])
            items.append((0, branch))
        for i, values in enumerate(plan.values):
            if multiplexed and i == 0:
                continue
            if plan.branches[i] is not None and plan.branches[i] != branch:
                continue
            if draw(st.integers(0, 9)) < plan.density:
                items.append((i, draw(values)))
        if not items:
            i = next((i for i, b in enumerate(plan.branches) if b is None or b == branch), 0)
            items.append((i, draw(plan.values[i])))
        rows.append((m, source, tick, sorted(items)))
    return rows


class Writer:
    """One vehicle's writer of one stream at a time: the batcher decides when a batch closes,
    the codec encodes it (a batch encoding larger than ``max_bytes`` is split in halves, as the
    Processor's ``_write`` does), the appender numbers it in the spool's stream."""

    def __init__(
        self, device: str, vehicle: str, compression: str, resolution: float, max_bytes: int
    ) -> None:
        self.device, self.vehicle = device, vehicle
        self.codec = Codec(compression, 3, resolution, vehicle)
        self.max_bytes = max_bytes
        self.made: list[Made] = []
        self.lost: list[tuple[Any, ...]] = []  # rows of the last data() the codec refused
        self.spool: Spool | None = None
        self.appender: PayloadAppender | None = None

    def restart(self, stream: str) -> None:
        """A new spool file: a new stream, numbered from 0."""
        self.spool = Spool(stream)
        self.appender = PayloadAppender(self.spool, self.codec)

    def _append(self, kind: int, envelope: dict[str, Any], body: bytes, made: Made) -> None:
        assert self.spool is not None and self.appender is not None
        self.appender.append(kind, envelope, body)
        payload = self.spool.payloads[-1]
        made.payload = payload
        made.stream = self.spool.stream
        made.seq = len(self.spool.payloads) - 1
        self.made.append(made)

    def schema_payload(self, schema: Schema) -> None:
        envelope = self.codec.envelope(None, schema)
        made = Made(Payload(b""), self.device, self.vehicle, "schema", "", 0, schema.schema_id)
        self._append(KIND_SCHEMA, envelope, self.codec.schema_body(schema), made)

    def data(
        self, schema: Schema, rows: Sequence[RowSpec], max_age: float, ext: dict[str, Any]
    ) -> None:
        codec = self.codec
        batcher = Batcher(
            budget=self.max_bytes,
            max_age=max_age,
            ticks_per_second=codec.ticks_per_second,
            measure=lambda batch: self._measure(batch, schema),
            clock=FakeClock(),
        )
        made, self.lost = len(self.made), []
        for message_index, source, tick, items in rows:
            if batcher.add(message_index, source, tick, items):
                self._write(batcher.take(), schema, ext)
        self._write(batcher.take(), schema, ext)
        # The batches hold every generated row once (those the codec cannot encode aside), so
        # the lake's reference, the rows of each batch, is the generated rows.
        encoded = Counter(row for m in self.made[made:] for row in m.rows)
        generated = spec_rows(schema, rows, codec.resolution_ns, ext.get("campaign"))
        assert encoded + Counter(self.lost) == generated

    def _measure(self, batch: Batch, schema: Schema) -> int:
        try:
            return self.codec.measure(batch, schema)
        except Exception:  # the Processor's _measure: closed at once, _write isolates the rows
            return self.max_bytes

    def _write(self, batch: Batch | None, schema: Schema, ext: dict[str, Any]) -> None:
        if batch is None:
            return
        codec = self.codec
        envelope = codec.envelope(batch, schema)
        if ext:
            envelope["ext"] = dict(ext)
            if ext.get("raw") == []:  # raw frames: those of this part's rows, as the engine
                envelope["ext"]["raw"] = [
                    [index, tick, bytes([tick % 256, index])]
                    for (index, _), group in batch.groups.items()
                    for tick in dict.fromkeys(group.times)
                ]
        try:
            body = codec.data_body(batch, schema)
        except Exception:  # the Processor's _unencodable: halves, down to single rows (lost)
            if batch.rows > 1:
                for half in batch.split():
                    self._write(half, schema, ext)
            else:
                campaign = ext.get("campaign")
                self.lost += batch_rows(batch, schema, codec.resolution_ns, campaign)[0]
            return
        if codec.body_version != FORMAT_VERSION:
            envelope["version"] = codec.body_version
        if codec.size(KIND_DATA, envelope, body) > self.max_bytes and batch.rows > 1:
            for half in batch.split():
                self._write(half, schema, ext)
            return
        res = codec.resolution_ns
        campaign = envelope.get("ext", {}).get("campaign")
        rows, raws = batch_rows(batch, schema, res, campaign)
        made = Made(
            Payload(b""),
            self.device,
            self.vehicle,
            "data",
            "",
            0,
            schema.schema_id,
            dict(envelope.get("ext", {})),
            int(batch.min_tick) * res / 10**9,
            int(batch.max_tick) * res / 10**9,
            rows,
            raws,
        )
        self._append(KIND_DATA, envelope, body, made)


#: Where a vehicle's clock starts, in seconds: relative (a log without wall clock) or epoch
#: (one just before midnight UTC, so payloads span two dates).
STARTS = st.sampled_from([0.0, 1000.0, 1_767_225_599.5, 1_767_225_000.0, 1_790_000_000.25])


@st.composite
def fleets(draw: st.DrawFn) -> list[Made]:
    """What 1 to 3 vehicles' writers made: per vehicle 1 or 2 streams (a restart), each opening
    with a schema payload; within a stream, data of one schema, then maybe a schema change (a
    new schema payload, then data of the new schema), a periodic re-send of the schema payload,
    campaign payloads (capture: campaign, trigger, condition, raw frames; snapshot)."""
    shared: tuple[Schema, list[MessagePlan]] | None = None
    made: list[Made] = []
    for v in range(draw(st.integers(1, 3))):
        writer = Writer(
            f"device-{v}",
            draw(st.sampled_from([f"vehicle-{v}", f"car {v} ✓", f"VIN{v:014d}"])),
            draw(st.sampled_from(["zstd", "zstd", "zlib", "none"])),
            draw(st.sampled_from([0.001, 0.001, 0.000001, 0.01])),
            draw(st.sampled_from([400, 1000, 4096])),
        )
        ticks = writer.codec.ticks_per_second
        clock = round(draw(STARTS) * ticks)
        for s in range(draw(st.integers(1, 2))):
            writer.restart(f"{v:02x}{s:02x}" + draw(st.sampled_from(["", "ab" * 14, "0" * 28])))
            for epoch in range(draw(st.integers(1, 2))):
                if shared is not None and draw(st.booleans()):
                    schema, plans = shared  # the fleet shares a configuration
                else:
                    schema, plans = draw(schemas(f"v{v}e{epoch}"))
                    shared = shared or (schema, plans)
                writer.schema_payload(schema)
                for _ in range(draw(st.integers(1, 3))):
                    rows = draw(row_specs(schema, plans, clock, ticks))
                    clock = max(r[2] for r in rows) + 1
                    ext: dict[str, Any] = {}
                    kind = draw(st.sampled_from(["always", "always", "capture", "snapshot"]))
                    if kind == "capture":
                        ext = {
                            "campaign": draw(CAMPAIGN_NAMES),
                            "trigger": rows[len(rows) // 2][2] / ticks,
                            "condition": draw(st.sampled_from(["M0.S0 > 1", "capture()", "ü"])),
                        }
                        if draw(st.booleans()):
                            ext["raw"] = []  # filled per part by the writer
                    elif kind == "snapshot":
                        ext = {"campaign": draw(CAMPAIGN_NAMES), "snapshot": clock / ticks}
                    writer.data(schema, rows, draw(st.sampled_from([0.05, 0.5, 60.0])), ext)
                    if draw(st.integers(0, 4)) == 0:  # schema_interval: the schema again
                        writer.schema_payload(schema)
        made.extend(writer.made)
    return made


# --- the real pipeline: the Processor and the campaign engine on the simulator's drive --------


class Recorder:
    """What the codecs were handed (the class's methods wrapped while the pipeline runs): each
    data body's rows, from the batch it encoded, and each payload's envelope."""

    def __init__(self) -> None:
        self.bodies: dict[tuple[bytes, int], tuple[Batch, Schema, int]] = {}
        self.envelopes: dict[bytes, dict[str, Any]] = {}

    @contextmanager
    def recording(self) -> Iterator[None]:
        data_body, pack = Codec.data_body, Codec.pack
        recorder = self

        def recorded_body(self: Codec, batch: Batch, schema: Schema) -> bytes:
            body = data_body(self, batch, schema)
            copy = Batch(0.0)  # the batch as it is now (the open one grows on)
            for (index, source), group in batch.groups.items():
                by_row: list[list[tuple[int, Any]]] = [[] for _ in group.times]
                for signal, (rows, values) in group.columns.items():
                    for row, value in zip(rows, values, strict=True):
                        by_row[row].append((signal, value))
                for tick, items in zip(group.times, by_row, strict=True):
                    copy.add(index, source, tick, items)
            recorder.bodies[(body, int(batch.min_tick))] = (copy, schema, self.resolution_ns)
            return body

        def recorded_pack(
            self: Codec, kind: int, envelope: Any, body: bytes, stream: str, seq: int
        ) -> bytes:
            packed = pack(self, kind, envelope, body, stream, seq)
            recorder.envelopes[packed] = dict(envelope)
            return packed

        with (
            mock.patch.object(Codec, "data_body", recorded_body),
            mock.patch.object(Codec, "pack", recorded_pack),
        ):
            yield

    def made(self, payload: Payload, device: str, vehicle: str) -> Made:
        """A payload the pipeline spooled, with the rows of the batch its body encoded."""
        envelope = self.envelopes[payload.body]
        props = payload.properties
        kind, stream, seq = props["kind"], props["stream"], int(props["seq"])
        ext = dict(envelope.get("ext") or {})
        made = Made(payload, device, vehicle, kind, stream, seq, envelope["schema"], ext)
        if kind == "data":
            body = peek(payload.body).body  # the body bytes, as the codec made them
            batch, schema, res = self.bodies[(body, envelope["t0"])]
            campaign = ext.get("campaign")
            made.rows, made.raws = batch_rows(batch, schema, res, campaign)
            made.t0, made.t1 = envelope["t0"] * res / 10**9, envelope["t1"] * res / 10**9
        return made


#: Campaigns of the demo car: captures on a counter's value (every second or so, with raw frames
#: or not; a multiplexed message among the captured), and periodic snapshots.
@st.composite
def campaigns(draw: st.DrawFn) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if draw(st.booleans()):
        out.append(
            {
                "name": draw(CAMPAIGN_NAMES),
                "condition": f"ESC_Status.ESC_Counter == {draw(st.integers(0, 15))}",
                "signals": ["ESC_Status.*", "BMS_ModuleData.*", "GNSS_Position.*"],
                "before": draw(st.sampled_from([0.0, 0.2, 1.0])),
                "after": draw(st.sampled_from([0.0, 0.3])),
                "min_interval": draw(st.sampled_from([0.5, 2.0])),
                "trigger": draw(st.sampled_from(["rising_edge", "while_true"])),
                "raw_frames": draw(st.booleans()),
            }
        )
    if draw(st.booleans()):
        out.append(
            {
                "name": "snap-" + draw(CAMPAIGN_NAMES),
                "collect": "periodic",
                "period": draw(st.sampled_from([0.5, 2.0])),
                "signals": ["TPMS_TireStatus.*", "BCM_Status.*"],
            }
        )
    return out


@st.composite
def pipelines(draw: st.DrawFn) -> list[Made]:
    """What the real pipeline of 1 or 2 demo cars made of a few seconds of the simulator's
    drive (seeded): the Processor (every signal of the demo DBC: multiplexed messages, floats,
    choices; its schema payloads with the wall clock's ``ext``) and the campaign engine (its own
    schema; captures with trigger, condition and raw frames; snapshots), through the spool's
    contract; a restart (a new stream) halfway through, maybe."""
    from edge.campaigns.engine import CampaignEngine
    from edge.config.model import parse_config
    from edge.processing.processor import Processor
    from edge.simulator.vehicle import DEMO_DBC, VehicleSimulator

    made: list[Made] = []
    recorder = Recorder()
    for v in range(draw(st.integers(1, 2))):
        device, vehicle = f"car-{v}", draw(st.sampled_from([f"demo-{v}", f"Démo {v}"]))
        config = parse_config(
            {
                "vehicle_id": vehicle,
                "buses": [{"name": "can0", "dbc": [str(DEMO_DBC)]}],
                "batch": {
                    "max_bytes": 4096,
                    "max_age": draw(st.sampled_from([0.25, 1.0, 5.0])),
                    "compression": draw(st.sampled_from(["zstd", "zlib", "none"])),
                    "time_resolution": draw(st.sampled_from([0.001, 0.000001])),
                },
                "campaigns": draw(campaigns()),
            }
        )
        simulator = VehicleSimulator(
            seed=draw(st.integers(0, 2**16)), start_time=draw(STARTS), channel="can0"
        )
        frames = list(simulator.frames(draw(st.sampled_from([1.0, 2.5]))))
        restart = draw(st.sampled_from([None, len(frames) // 2]))
        parts = [frames] if restart is None else [frames[:restart], frames[restart:]]
        for s, part in enumerate(parts):
            spool = Spool(f"c{v}{s}" + "0" * 29)
            with recorder.recording():
                processor = Processor(config, spool, clock=FakeClock(), campaigns=CampaignEngine)
                for start in range(0, len(part), 500):
                    processor.process(part[start : start + 500])
                processor.flush()
                if processor.campaigns is not None:
                    processor.campaigns.flush()
            made.extend(recorder.made(p, device, vehicle) for p in spool.payloads)
    return made


# --------------------------------------------------------------------------------------------
# delivering it


#: Messages of other modules (and one without body) that share the hub.
FOREIGN = [b'{"temperature": 21.5}', None, b"\x00\x01", b"C"]


@dataclass
class Read:
    """One message a file carries: a copy of a payload the edge made (``made``; ``cut``: the
    copy is truncated to that many bytes), or another module's message (``made`` None)."""

    body: bytes | None
    made: Made | None
    when: dt.datetime
    cut: int | None = None

    def __repr__(self) -> str:
        cut = "" if self.cut is None else f" cut to {self.cut} bytes"
        return f"<{self.made or 'foreign'}{cut} at {self.when:%d %H:%M:%S}>"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    @property
    def status(self) -> str:
        """What the lake must make of it: ``good``, ``corrupt`` or ``foreign``."""
        if self.made is None:
            return "foreign"
        return "good" if self.cut is None else "corrupt"


@dataclass
class Delivery:
    """Files (with their messages), grouped in ingest runs."""

    runs: list[list[Path]]
    files: dict[Path, list[Read]]
    #: how each file gives arrival times: routing (as written), capture (whole seconds),
    #: outbox (the file's mtime)
    kinds: dict[Path, str]

    def __repr__(self) -> str:
        return "\n".join(
            f"run {n}: " + ", ".join(f"{p.name} ({self.kinds[p]}) {self.files[p]}" for p in run)
            for n, run in enumerate(self.runs)
        )

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(repr(self))

    def reads(self, run: int | None = None) -> list[Read]:
        runs = self.runs if run is None else [self.runs[run]]
        return [r for files in runs for path in files for r in self.files[path]]


def arrival(read: Read, kind: str) -> dt.datetime:
    return read.when.replace(microsecond=0) if kind == "capture" else read.when


@st.composite
def deliveries(draw: st.DrawFn, made: list[Made], root: Path) -> Delivery:
    """The hub's delivery of ``made``: some payloads lost, some twice or three times (re-sends
    up to days later), some with a truncated copy (and maybe no whole one), other modules'
    messages; in order or shuffled; over Avro files (routing or Capture) and outbox files;
    over 1 to 3 ingest runs, maybe with a file ingested again in a later run."""
    by_device: dict[str, list[Made]] = {}
    for m in made:
        by_device.setdefault(m.device, []).append(m)
    start = 0
    messages: list[tuple[Made, Any]] = []
    for device, items in by_device.items():
        hub = hub_messages([m.payload for m in items], device, start)
        start += len(hub)
        messages.extend(zip(items, hub, strict=True))
    reads: list[Read] = []
    # Schema payloads: as sent; or arriving last (after their data, in a later file or run); or
    # all of one vehicle's lost (its data waits, parked, unless another vehicle's schema payload
    # carries the same schema).
    schemas = draw(st.sampled_from(["as sent", "as sent", "last", "lost"]))
    lost_device = draw(st.sampled_from(sorted(by_device)))
    for m, (body, _, _, when) in messages:
        fate = draw(st.sampled_from(["once"] * 6 + ["lost", "twice", "thrice", "cut"]))
        if m.kind == "schema" and schemas == "lost" and m.device == lost_device:
            fate = "lost"
        if m.kind == "schema" and schemas == "last":
            when += dt.timedelta(hours=2)
        if fate == "lost":
            continue
        if fate != "cut" or draw(st.booleans()):
            reads.append(Read(body, m, when))
        for _ in range({"twice": 1, "thrice": 2}.get(fate, 0)):
            later = dt.timedelta(minutes=draw(st.sampled_from([0, 1, 90, 60 * 30, 60 * 24 * 3])))
            reads.append(Read(body, m, when + later))
        if fate == "cut":
            cut = draw(st.integers(2, len(body) - 1))
            reads.append(Read(body[:cut], m, when, cut))
    for _ in range(draw(st.integers(0, 2))):
        when = reads[0].when if reads else dt.datetime(2026, 12, 6, tzinfo=dt.UTC)
        reads.append(Read(draw(st.sampled_from(FOREIGN)), None, when))
    if draw(st.booleans()):
        reads = draw(st.permutations(reads))
    else:
        reads.sort(key=lambda r: r.when)
    # Files: consecutive slices of the arrival order, each an Avro file or outbox files.
    files: dict[Path, list[Read]] = {}
    kinds: dict[Path, str] = {}
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(reads) - 1)), max_size=3)))
    slices = [reads[a:b] for a, b in itertools.pairwise([0, *cuts, len(reads)])]
    for n, part in enumerate(slices):
        kind = draw(st.sampled_from(["routing", "routing", "capture", "outbox"]))
        if kind == "outbox":
            for i, read in enumerate(part):
                if read.made is None or read.body is None:
                    continue  # the outbox holds only the module's own payloads
                m = read.made
                path = root / f"outbox{n}-{i}" / f"{m.stream}-{m.seq:012d}.{m.kind}.ctl"
                path.parent.mkdir(parents=True)
                path.write_bytes(read.body)
                ns = int(read.when.timestamp()) * 10**9 + read.when.microsecond * 1000
                os.utime(path, ns=(ns, ns))
                files[path], kinds[path] = [read], "outbox"
            continue
        path = root / f"hub{n}" / f"{n:02d}.avro"
        hub = [
            (
                r.body,
                dict(r.made.payload.properties) if r.made else {},
                {"connectionDeviceId": r.made.device if r.made else "other-module"},
                r.when,
            )
            for r in part
        ]
        write_avro(path, hub, capture=kind == "capture")
        files[path], kinds[path] = part, kind
    ordered = list(files)
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(ordered) - 1)), max_size=2)))
    runs = [ordered[a:b] for a, b in itertools.pairwise([0, *cuts, len(ordered)])]
    runs = [r for r in runs if r] or [[]]
    if ordered and draw(st.integers(0, 3)) == 0:  # a file ingested again
        runs.append([draw(st.sampled_from(ordered))])
    return Delivery(runs, files, kinds)


# --------------------------------------------------------------------------------------------
# what the lake must hold


def quarantine_key(body: bytes | None) -> str:
    return hashlib.sha256(body or b"").hexdigest()[:16]


@dataclass
class Expected:
    """What the lake must hold after a delivery, from what was generated and delivered."""

    ok: dict[Key, Made]  # payloads that arrived whole, data with its schema
    parked: set[Key]  # data that arrived whole, whose schema never did
    rows: Counter[tuple[Any, ...]]
    quarantine: dict[str, str]  # body key -> status

    @classmethod
    def of(cls, delivery: Delivery) -> Expected:
        reads = delivery.reads()
        good = {r.made.key: r.made for r in reads if r.status == "good" and r.made}
        schemas = {m.schema for m in good.values() if m.kind == "schema"}
        ok = {k: m for k, m in good.items() if m.kind == "schema" or m.schema in schemas}
        rows: Counter[tuple[Any, ...]] = Counter()
        for m in ok.values():
            rows.update((m.stream, m.seq, *row) for row in m.rows)
        quarantine = {quarantine_key(r.body): r.status for r in reads if r.status != "good"}
        return cls(ok, set(good) - set(ok), rows, quarantine)


def lake_rows(lake: Path, any_nan: bool = False) -> Counter[tuple[Any, ...]]:
    """The lake's rows as :func:`batch_rows` gives them, with their stream and seq (values by
    their bits; ``any_nan``: every NaN one)."""
    table = read_table(lake, "signals", list(ROW_COLUMNS))
    columns = [table.column(c).to_pylist() for c in ROW_COLUMNS]
    value = ROW_COLUMNS.index("value")
    rows = Counter(
        tuple(bits(v) if i == value else v for i, v in enumerate(row))
        for row in zip(*columns, strict=True)
    )
    return Counter({nan_as_nan(r): n for r, n in rows.items()}) if any_nan else rows


def nan_as_nan(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row with every NaN value alike."""
    value = ROW_COLUMNS.index("value")
    kind, raw = row[value]
    if kind == "float" and math.isnan(struct.unpack("<d", raw)[0]):
        return (*row[:value], "NaN", *row[value + 1 :])
    return row


def maybe_unnamed(delivery: Delivery) -> set[Key]:
    """Payloads the lake may leave without a vehicle: copies from the outbox (no ``vehicle``
    property, no device) and no schema payload of their stream in the run of their first copy
    or before (docs/lake.md: the stream's schema payload names the vehicle)."""
    first_read: dict[Key, int] = {}
    outboxed: set[Key] = set()
    schema_run: dict[str, int] = {}
    for run, files in enumerate(delivery.runs):
        for path in files:
            for r in delivery.files[path]:
                if r.made is None or r.status != "good":
                    continue
                first_read.setdefault(r.made.key, run)
                if delivery.kinds[path] == "outbox":
                    outboxed.add(r.made.key)
                if r.made.kind == "schema":
                    schema_run.setdefault(r.made.stream, run)
    return {k for k in outboxed if schema_run.get(k[0], len(delivery.runs)) > first_read[k]}


def gaps_of(seqs: set[int]) -> list[list[int]]:
    ordered = sorted(seqs)
    return [[a + 1, b - 1] for a, b in itertools.pairwise(ordered) if b > a + 1]


def day_of(seconds: float) -> dt.date:
    return dt.date(1970, 1, 1) + dt.timedelta(days=math.floor(seconds / 86_400))


def check_lake(lake: Path, delivery: Delivery, reports: list[IngestReport]) -> None:
    """Every property of docs/lake.md that the generated delivery pins down."""
    expected = Expected.of(delivery)
    # signals: every row of every payload that arrived whole, exactly once, exact.
    got = lake_rows(lake)
    assert got == expected.rows, diff(got, expected.rows)
    signals = read_table(lake, "signals").to_pylist()
    arrivals: dict[Key, set[dt.datetime]] = {}
    for path, reads in delivery.files.items():
        for r in reads:
            if r.made is not None and r.status == "good":
                arrivals.setdefault(r.made.key, set()).add(arrival(r, delivery.kinds[path]))
    unnamed = maybe_unnamed(delivery)
    for row in signals:
        made = expected.ok[(row["stream"], row["seq"])]
        assert row["vehicle"] == made.vehicle or (row["vehicle"] is None and made.key in unnamed)
        assert row["device"] in (made.device, None)
        assert row["time_base"] == ("epoch" if made.t0 and made.t0 > 1e9 else "relative")
        if row["time_base"] == "epoch":
            assert row["date"] == day_of(row["time"]), row
        else:
            assert row["date"] in {a.date() for a in arrivals[made.key]}, row
    check_raw(signals, expected)
    # payloads: one row per (stream, seq) that arrived whole (with its schema), as the envelope
    # says.
    payloads = {(p["stream"], p["seq"]): p for p in read_table(lake, "payloads").to_pylist()}
    assert read_table(lake, "payloads").num_rows == len(payloads)
    assert set(payloads) == set(expected.ok)
    for key, p in payloads.items():
        made = expected.ok[key]
        assert (p["kind"], p["schema"]) == (made.kind, made.schema)
        assert p["vehicle"] == made.vehicle or (p["vehicle"] is None and key in unnamed)
        assert p["device"] in (made.device, None)
        assert p["campaign"] == made.campaign
        assert p["rows"] == len(made.rows)
        assert p["bytes"] == len(made.payload.body)
        assert p["enqueued"] in arrivals[key]
        if made.kind == "data":
            assert made.t0 is not None
            assert (p["t0"], p["t1"]) == (made.t0, made.t1)
            assert p["date"] == (
                day_of(made.t0) if p["time_base"] == "epoch" else p["enqueued"].date()
            )
        # The whole ext map, as JSON (byte strings: raw frames, as hex).
        if made.ext:
            assert json.loads(p["ext"]) == json.loads(json.dumps(made.ext, default=bytes.hex))
        else:
            assert p["ext"] is None
    # streams: what arrived of each stream, and the gaps (lost data is visible).
    streams = {s["stream"]: s for s in read_table(lake, "streams").to_pylist()}
    by_stream: dict[str, list[Made]] = {}
    for made in expected.ok.values():
        by_stream.setdefault(made.stream, []).append(made)
    assert set(streams) == set(by_stream)
    for stream, items in by_stream.items():
        s = streams[stream]
        seqs = {m.seq for m in items}
        gaps = gaps_of(seqs)
        assert (s["first_seq"], s["last_seq"], s["payloads"]) == (min(seqs), max(seqs), len(seqs))
        assert (s["gaps"], s["missing"]) == (gaps, sum(b - a + 1 for a, b in gaps))
        named = any(m.kind == "schema" for m in items)
        assert s["vehicle"] == items[0].vehicle or (s["vehicle"] is None and not named)
        t0 = [m.t0 for m in items if m.t0 is not None]
        t1 = [m.t1 for m in items if m.t1 is not None]
        assert (s["first_time"], s["last_time"]) == (min(t0, default=None), max(t1, default=None))
    # schemas: each schema id that arrived, once.
    schemas = read_table(lake, "schemas").column("schema").to_pylist()
    assert sorted(schemas) == sorted({m.schema for m in expected.ok.values() if m.kind == "schema"})
    # parked: data whose schema never came, each once, kept to be retried.
    parked = read_table(lake, "_parked")
    waiting = zip(parked["stream"].to_pylist(), parked["seq"].to_pylist(), strict=True)
    assert sorted(waiting) == sorted(expected.parked)
    # quarantine: each bad body once, with its status.
    quarantine = read_table(lake, "quarantine").to_pylist()
    assert {q["key"]: q["status"] for q in quarantine} == expected.quarantine
    assert len(quarantine) == len(expected.quarantine)
    check_counters(delivery, reports, expected)


def check_counters(delivery: Delivery, reports: list[IngestReport], expected: Expected) -> None:
    """The report: every payload read counted once in ``payloads`` and in one of new,
    duplicates, parked, foreign, corrupt (a payload parked by an earlier run and retried is
    counted again where it ends); summed over the runs, new = what the lake holds, duplicates
    = the extra copies, foreign and corrupt = each such message read."""
    parked_before = 0
    for run, report in enumerate(reports):
        reads = delivery.reads(run)
        note(f"run {run}: {report.as_dict()}")
        assert report.payloads == len(reads)
        assert report.foreign == sum(r.status == "foreign" for r in reads)
        assert report.corrupt == sum(r.status == "corrupt" for r in reads)
        assert (
            report.payloads + parked_before
            == report.new + report.duplicates + report.parked + report.foreign + report.corrupt
        )
        parked_before = report.parked
    good = [r for r in delivery.reads() if r.status == "good"]
    assert sum(r.new for r in reports) == len(expected.ok)
    assert reports[-1].parked == len(expected.parked)
    distinct = {r.made.key for r in good if r.made}
    assert sum(r.duplicates for r in reports) == len(good) - len(distinct)
    assert sum(r.rows for r in reports) == sum(expected.rows.values())


def check_raw(signals: list[dict[str, Any]], expected: Expected) -> None:
    """``raw``: an integer-coded signal's raw integer, null for float signals. It is
    ``round((value - offset) / scale)`` of the float64 physical value (docs/lake.md): exact for
    an unscaled signal within 2**53, for a scaled one while ``4 |raw| + |offset / scale|`` stays
    below 2**51 (beyond, the physical value's rounding may be worth more than half a step)."""
    want: dict[tuple[Any, ...], list[tuple[int | None, float, float]]] = {}
    for made in expected.ok.values():
        for made_row, made_raw in zip(made.rows, made.raws, strict=True):
            want.setdefault((made.stream, made.seq, *made_row), []).append(made_raw)
    for row in signals:
        key = tuple(bits(row[c]) if c == "value" else row[c] for c in ROW_COLUMNS)
        raw, scale, offset = want[key][0]
        unscaled = (scale, offset) == (1, 0) and abs(raw or 0) <= 2**53
        if raw is None:
            assert row["raw"] is None, row
        elif unscaled or 4 * abs(raw) + abs(offset / scale) < 2**51:
            assert row["raw"] == raw, row


#: Columns that depend on which copy of a payload was kept (its arrival, its file): compared
#: by the properties above, not between deliveries.
BY_COPY = {"enqueued", "device", "origin", "first_seen"}


def tables(
    lake: Path, unnamed: set[Key], any_nan: bool = False
) -> dict[str, list[tuple[Any, ...]]]:
    """The lake's tables as sorted tuples, without what depends on the copy kept: arrival and
    device; the date of what is placed by arrival (a relative time base, schema payloads); the
    vehicle of payloads that
    may lack one (:func:`maybe_unnamed`). Values by their bits (``any_nan``: every NaN one)."""

    def value(v: Any) -> Any:
        return "NaN" if any_nan and isinstance(v, float) and math.isnan(v) else bits(v)

    out: dict[str, list[tuple[Any, ...]]] = {}
    for name in ("signals", "payloads", "streams", "schemas", "_parked"):
        rows = []
        for row in read_table(lake, name).to_pylist():
            if name == "_parked":
                row = {"stream": row["stream"], "seq": row["seq"]}
            if "date" in row and row.get("time_base") != "epoch":
                row["date"] = None  # placed by arrival (relative time base, schema payloads)
            if (row.get("stream"), row.get("seq")) in unnamed or name == "streams":
                row["vehicle"] = None
            if name == "schemas":
                row["wire"] = Schema.from_wire(
                    msgpack.unpackb(row["wire"], strict_map_key=False)
                ).schema_id
            values = (value(v) if k == "value" else v for k, v in row.items() if k not in BY_COPY)
            rows.append(tuple(values))
        out[name] = sorted(rows, key=repr)
    return out


def canonical(delivery: Delivery, root: Path) -> list[Path]:
    """Each payload of ``delivery`` that arrived whole, once, in the order the edge made
    them, in one routing file."""
    first: dict[Key, tuple[Made, Read]] = {}
    for r in delivery.reads():
        if r.made is not None and r.status == "good":
            first.setdefault(r.made.key, (r.made, r))
    ordered = sorted(first.values(), key=lambda mr: (mr[0].device, mr[0].stream, mr[0].seq))
    messages = [
        (r.body, dict(m.payload.properties), {"connectionDeviceId": m.device}, r.when)
        for m, r in ordered
    ]
    return [write_avro(root / "canonical.avro", messages)]


def diff(got: Counter[Any], want: Counter[Any]) -> str:
    extra, missing = got - want, want - got
    return f"extra {list(extra.items())[:5]}, missing {list(missing.items())[:5]}"


# --------------------------------------------------------------------------------------------
# the properties


def describe(delivery: Delivery, reports: list[IngestReport]) -> None:
    """Hypothesis events: what the examples covered."""
    reads = delivery.reads()
    event(f"runs: {len(delivery.runs)}")
    event(f"payloads read: {min(len(reads) // 10 * 10, 50)}+")
    for kind in set(delivery.kinds.values()):
        event(f"files: {kind}")
    for name in ("duplicates", "parked", "unparked", "corrupt", "foreign"):
        if sum(getattr(r, name) for r in reports):
            event(f"counted: {name}")
    made = {r.made.key: r.made for r in reads if r.made}
    if any(m.ext.get("raw") for m in made.values()):
        event("raw frames")
    if any(m.campaign for m in made.values()):
        event("campaign payloads")
    values = [struct.unpack("<d", row[4][1])[0] for m in made.values() for row in m.rows]
    if any(math.isnan(v) for v in values):
        event("NaN")
    if any(math.isinf(v) for v in values):
        event("infinity")
    if any(v == 0 and math.copysign(1, v) < 0 for v in values):
        event("-0.0")
    if any(m.payload.properties.get("format") == "3" for m in made.values()):
        event("wide integers (version 3)")
    if any(m.rows and m.t0 is not None and m.t0 > 1e9 for m in made.values()):
        event("epoch time")


def run_and_check(made: list[Made], data: st.DataObject) -> None:
    with workspace() as root:
        delivery = data.draw(deliveries(made, root / "in"))
        note(f"runs: {[[str(p.relative_to(root)) for p in run] for run in delivery.runs]}")
        lake = root / "lake"
        reports = ingest_runs(delivery, lake)
        describe(delivery, reports)
        check_lake(lake, delivery, reports)
        # Order, files, runs, duplicates and bad copies change nothing else: the tables equal
        # those of each payload delivered once, in order, in one run.
        once = root / "once"
        ingest(canonical(delivery, root), once)
        unnamed = maybe_unnamed(delivery)
        assert tables(lake, unnamed) == tables(once, unnamed)


#: Lakes are written in memory when the machine has a tmpfs: what is tested here is what the
#: tables hold, not durability (tests/lake/test_local.py kills ingests mid-run), and each run's
#: fsyncs would cost a disk's latency several times over.
_SHM = Path("/dev/shm")


@contextmanager
def workspace() -> Iterator[Path]:
    """A fresh folder per example (pytest's ``tmp_path`` is one per test, not per example)."""
    memory = _SHM.is_dir() and os.access(_SHM, os.W_OK)
    folder = tempfile.mkdtemp(prefix="lake-properties-", dir=_SHM if memory else None)
    try:
        yield Path(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def ingest_runs(delivery: Delivery, lake: Path) -> list[IngestReport]:
    reports = []
    for files in delivery.runs:
        report = ingest(files, lake)
        assert report.errors == []
        reports.append(report)
    return reports


@settings_for(100)
@given(made=fleets(), data=st.data())
def test_every_row_the_edge_made_lands_exactly_once(made: list[Made], data: st.DataObject) -> None:
    """Generated schemas and rows through the edge's batcher and codec, delivered every way."""
    run_and_check(made, data)


@settings_for(20)
@given(made=pipelines(), data=st.data())
def test_what_the_real_pipeline_made_lands_exactly_once(
    made: list[Made], data: st.DataObject
) -> None:
    """The Processor and the campaign engine on the simulator's drive, delivered every way."""
    assert made
    run_and_check(made, data)


@pytest.mark.skipif(shutil.which("java") is None, reason="no Java runtime (.ci/setup)")
# PySpark 3.5 leaves its local result sockets to the garbage collector, and checks the pyarrow
# version with distutils' LooseVersion (as tests/lake/test_spark.py).
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore:distutils Version classes:DeprecationWarning")
@settings(settings_for(3), phases=[Phase.explicit, Phase.generate])  # no shrinking: Spark is slow
@given(made=fleets(), data=st.data())
def test_the_spark_batch_job_makes_the_local_ingests_tables(
    spark: Any, made: list[Made], data: st.DataObject
) -> None:
    """The same generated delivery, run by run: the Spark batch job (local mode, one job per
    run) makes the local ingest's tables (but for which copy of a duplicate each kept), every
    row exactly once."""
    from edge.lake.spark import run_batch

    with workspace() as root:
        delivery = data.draw(deliveries(made, root / "in"))
        local, lake = root / "local", root / "spark"
        ingest_runs(delivery, local)
        for n, files in enumerate(delivery.runs):
            run_batch(spark, [str(p) for p in files], lake, f"b{n}")
        expected = Expected.of(delivery)
        assert (
            lake_rows(lake, any_nan=True)
            == lake_rows(local, any_nan=True)
            == Counter({nan_as_nan(row): n for row, n in expected.rows.items()})
        )
        # NaN as NaN: Spark writes the canonical NaN whatever its sign and payload bits.
        unnamed = maybe_unnamed(delivery)
        assert tables(lake, unnamed, any_nan=True) == tables(local, unnamed, any_nan=True)
        assert quarantined(lake) == quarantined(local)


def quarantined(lake: Path) -> list[tuple[Any, ...]]:
    """The quarantine's bodies: key, status, body (each bad body once)."""
    rows = read_table(lake, "quarantine", ["key", "status", "body"]).to_pylist()
    return sorted(((q["key"], q["status"], q["body"]) for q in rows), key=repr)


# --------------------------------------------------------------------------------------------
# faults the properties found, kept as minimal examples

SIGNAL = SignalInfo("S", 0.5, -40, "degC", False, {2: "two"})
SCHEMA = Schema(("can0",), (MessageInfo(0, "M", 0x100, False, False, (SIGNAL,)),))


def writer(vehicle: str, stream: str, resolution: float = 0.001) -> Writer:
    """The edge's writer of :data:`SCHEMA` payloads for one vehicle, in ``stream``."""
    edge = Writer("device", vehicle, "zstd", resolution, 4096)
    edge.restart(stream)
    return edge


def outbox(root: Path, made: Sequence[Made]) -> list[Path]:
    """The ``file`` uplink's files of ``made``, named as it names them."""
    paths = []
    for m in made:
        path = root / f"{m.stream}-{m.seq:012d}.{m.kind}.ctl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(m.payload.body)
        paths.append(path)
    return paths


def test_a_payloads_t0_is_its_first_rows_time() -> None:
    """An epoch time in 1 ms ticks times its resolution is beyond float64's integers: t0 was
    computed as ``t0 * res / 1e9`` (the product rounded, then divided: 1790000000.2499998)
    while the rows' times are one division of integers (edge/lake/arrow.py: decode)."""
    from edge.lake.arrow import SchemaBook, decode, payload_batch

    edge = writer("car", "ab")
    edge.schema_payload(SCHEMA)
    edge.data(SCHEMA, [(0, None, 1_790_000_000_250, [(0, 3)])], 60.0, {})
    schema, data = edge.made
    decoded = decode(payload_batch([schema.payload.body, data.payload.body]), SchemaBook())
    assert decoded.rows.column("time").to_pylist() == [1_790_000_000.25]
    assert decoded.outcomes.column("t0").to_pylist()[1] == 1_790_000_000.25 == data.t0


def test_our_magic_cut_short_is_corrupt_not_foreign() -> None:
    """docs/lake.md: foreign is "not our magic bytes"; a payload of ours cut to 2 or 3 bytes
    was foreign (edge/lake/arrow.py: decode)."""
    from edge.lake.arrow import SchemaBook, decode, payload_batch

    decoded = decode(payload_batch([b"CT", b"CT\x02", b"C", b"XY\x02\x00\x00"]), SchemaBook())
    statuses = decoded.outcomes.column("status").to_pylist()
    assert statuses == ["corrupt", "corrupt", "foreign", "foreign"]


def test_a_parked_copy_that_a_whole_copy_supersedes_is_counted_as_a_duplicate(
    tmp_path: Path,
) -> None:
    """A data payload parked (its schema later in the run) and its re-send after the schema: the
    parked copy was dropped and counted nowhere, so ``payloads`` was one more than ``new`` +
    ``duplicates`` + ``parked`` + ... (edge/lake/local.py: _ingest_indexed)."""
    edge = writer("car", "ab")
    edge.schema_payload(SCHEMA)
    edge.data(SCHEMA, [(0, None, 1000, [(0, 2)])], 60.0, {})
    schema, data = hub_messages([m.payload for m in edge.made], "device")
    files = [
        write_avro(tmp_path / "1.avro", [data]),
        write_avro(tmp_path / "2.avro", [schema, data]),
    ]
    report = ingest(files, tmp_path / "lake")
    assert (report.payloads, report.new, report.duplicates, report.parked) == (3, 2, 1, 0)
    assert read_table(tmp_path / "lake", "signals").num_rows == 1


def test_an_outbox_payload_before_its_streams_schema_payload_is_named_by_it(
    tmp_path: Path,
) -> None:
    """The outbox has no ``vehicle`` property: the stream's schema payload names the vehicle.
    A data file decoded before it (its schema known from another vehicle of the fleet, its own
    first schema payload lost, re-sent after the data) stayed without vehicle whatever came
    later in the run (edge/lake/local.py: _ingest_indexed)."""
    a, b = writer("car-a", "aa"), writer("car-b", "bb")
    a.schema_payload(SCHEMA)
    b.schema_payload(SCHEMA)  # lost
    b.data(SCHEMA, [(0, None, 1000, [(0, 2)])], 60.0, {})
    b.schema_payload(SCHEMA)  # schema_interval: again
    outbox(tmp_path / "outbox", [a.made[0], *b.made[1:]])
    ingest([tmp_path / "outbox"], tmp_path / "lake")
    signals = read_table(tmp_path / "lake", "signals").to_pylist()
    assert [(s["stream"], s["vehicle"]) for s in signals] == [("bb", "car-b")]
    payloads = read_table(tmp_path / "lake", "payloads").to_pylist()
    assert {(p["stream"], p["seq"]): p["vehicle"] for p in payloads} == {
        ("aa", 0): "car-a",
        ("bb", 1): "car-b",
        ("bb", 2): "car-b",
    }


def test_raw_frames_are_kept_in_ext_as_hex() -> None:
    """``payloads.ext`` is the whole ext map as JSON: a capture's raw frames (bytes) were
    Python reprs (``"b'\\x01'"``), now lower-case hex (edge/lake/arrow.py: decode)."""
    from edge.lake.arrow import SchemaBook, decode, payload_batch

    edge = writer("car", "ab")
    edge.schema_payload(SCHEMA)
    ext = {"campaign": "c", "trigger": 1.0, "condition": "M.S > 1", "raw": []}
    edge.data(SCHEMA, [(0, None, 1000, [(0, 2)])], 60.0, ext)
    schema, data = edge.made
    decoded = decode(payload_batch([schema.payload.body, data.payload.body]), SchemaBook())
    stored = json.loads(decoded.outcomes.column("ext").to_pylist()[1])
    assert stored["raw"] == [[0, 1000, bytes([1000 % 256, 0]).hex()]]


def test_a_parked_payload_keeps_its_vehicle_property() -> None:
    """The Spark jobs park a payload's outcome and retry it from there: its ``vehicle`` was
    None, so a retried payload was named by its device (edge/lake/arrow.py: decode)."""
    from edge.lake.arrow import SchemaBook, decode, payload_batch

    edge = writer("car", "ab")
    edge.schema_payload(SCHEMA)
    edge.data(SCHEMA, [(0, None, 1000, [(0, 2)])], 60.0, {})
    batch = payload_batch([edge.made[1].payload.body], device="device", vehicle="car")
    outcomes = decode(batch, SchemaBook()).outcomes.to_pylist()
    assert [(o["status"], o["vehicle"], o["device"]) for o in outcomes] == [
        ("parked", "car", "device")
    ]


def test_a_wide_integer_column_of_close_values_reaches_the_lake() -> None:
    from edge.lake.arrow import SchemaBook, decode, payload_batch

    wide = Schema(("can0",), (MessageInfo(0, "M", 0x100, False, False, (SignalInfo("Id"),)),))
    codec = Codec("zstd", 3, 0.001, "car")
    batch = Batch(0.0)
    batch.add(0, None, 1000, [(0, 2**100)])
    body = codec.data_body(batch, wide)
    envelope = {**codec.envelope(batch, wide), "version": codec.body_version}
    schema = codec.pack(KIND_SCHEMA, codec.envelope(None, wide), codec.schema_body(wide), "ab", 0)
    data = codec.pack(KIND_DATA, envelope, body, "ab", 1)
    decoded = decode(payload_batch([schema, data]), SchemaBook())
    assert decoded.rows.column("value").to_pylist() == [float(2**100)]


@pytest.mark.skipif(shutil.which("java") is None, reason="no Java runtime (.ci/setup)")
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.filterwarnings("ignore:distutils Version classes:DeprecationWarning")
def test_spark_batch_runs_keep_each_payload_and_bad_body_once_and_name_the_outbox(
    spark: Any, tmp_path: Path
) -> None:
    """Two runs of the batch job (edge/lake/spark.py: process_batch), where the local ingest
    was right: a parked payload delivered again with its schema was published twice (the parked
    copy and the new one); a bad body already quarantined by the first run was quarantined
    again, and a message without body got a null key (the local ingest keeps it as an empty
    body); an outbox payload (no ``vehicle`` property) whose stream's schema payload the first
    run took had no vehicle."""
    from edge.lake.spark import run_batch

    other = Schema(("can1",), (MessageInfo(0, "N", 0x200, False, False, (SIGNAL,)),))
    a, b = writer("car-a", "aa"), writer("car-b", "bb")
    a.schema_payload(SCHEMA)
    a.data(SCHEMA, [(0, None, 1000, [(0, 1)])], 60.0, {})
    b.schema_payload(other)
    b.data(other, [(0, None, 2000, [(0, 2)])], 60.0, {})
    a_schema, a_data = outbox(tmp_path / "outbox", a.made)
    b_schema, b_data, *_ = hub_messages([m.payload for m in b.made], "device")
    cut = (b_data[0][:-3], *b_data[1:])
    nothing: Any = (None, {}, {"connectionDeviceId": "other"}, b_data[3])
    first = [a_schema, write_avro(tmp_path / "1.avro", [b_data, cut, nothing])]
    second = [a_data, write_avro(tmp_path / "2.avro", [b_schema, b_data, cut, nothing])]
    lake = tmp_path / "lake"
    run_batch(spark, [str(p) for p in first], lake, "b1")
    run_batch(spark, [str(p) for p in second], lake, "b2")
    signals = read_table(lake, "signals").to_pylist()
    assert sorted((s["stream"], s["seq"], s["vehicle"]) for s in signals) == [
        ("aa", 1, "car-a"),
        ("bb", 1, "car-b"),
    ]
    quarantine = read_table(lake, "quarantine").to_pylist()
    assert sorted((q["key"], q["status"], q["body"]) for q in quarantine) == sorted(
        [
            (quarantine_key(cut[0]), "corrupt", cut[0]),
            (quarantine_key(b""), "foreign", b""),
        ]
    )
