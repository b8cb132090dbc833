"""Property tests of the campaign engine on generated frame streams (hypothesis).

Streams are built over the simulator's database: ESC_Status frames whose vehicle speed moves
around a threshold (so conditions fire and stop firing often), ESC_BrakeStatus frames, repeated
payloads, equal timestamps, frames of a message nobody uses (one from another clock, far ahead),
an unknown ID, ESC_Status's ID as an extended one, another bus, remote and error frames, frames
cantools refuses (too short), frames longer than their message (which cantools decodes), and
pauses in frame time longer than the rings keep beyond a window (see the two minimal cases at
the end of this file).

Every capture is checked against a reference computed here by brute force from cantools' decode
of every frame (triggers and ``suppressed``, each window's rows, the counters); then the same
frames in other chunkings, and through the processing stage's taps, must give the same payloads
and counters.
"""

from __future__ import annotations

import itertools
import operator
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from unittest import mock

import can
import pytest
from hypothesis import HealthCheck, assume, event, example, given, note, settings
from hypothesis import strategies as st

from edge.campaigns.engine import CampaignEngine, _raw_test
from edge.clock import FakeClock
from edge.processing.database import load_databases
from edge.processing.processor import Processor
from tests.campaigns.test_engine import DB, Collector, actual_rows, config, expected_rows

DEMO: Any = DB  # a CAN database (cantools types it a union with diagnostics ones)
STATUS = DEMO.get_message_by_name("ESC_Status")
BRAKE = DEMO.get_message_by_name("ESC_BrakeStatus")
ENGINE = DEMO.get_message_by_name("ECM_EngineStatus")  # a message no campaign here uses
SPEED = "ESC_Status.ESC_VehicleSpeed"
CENTER = 2000  # the raw speed (0.01 km/h) generated speeds move around: 20 km/h
START = 1000.0
#: Frame times are on a grid of 1/1024 s (about a millisecond): exact in binary, so that
#: differences of times fall exactly on windows' edges and on min_interval.
STEP = 1 / 1024


def properties(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,  # no example database: failures are shrunk and printed each run
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# -- frame streams ------------------------------------------------------------------------------

#: What a generated frame is (weights by repetition).
KINDS = (
    ("status",) * 6
    + ("repeat",) * 3
    + ("brake",) * 2
    + ("long", "long", "long_brake", "short", "engine", "foreign", "unknown", "extended")
    + ("other_bus",)
    + ("remote", "error")
)
#: One generated frame: kind, STEPs since the previous frame, raw speed, a small number.
Spec = tuple[str, int, int, int]


def status_data(speed: int, small: int) -> bytes:
    values = {
        "ESC_VehicleSpeed": speed,
        "ESC_LongAccel": 0,
        "ESC_YawRate": 0,
        "ESC_Counter": small,  # few values: equal payloads are common
        "ESC_Checksum": 0,
    }
    return bytes(STATUS.encode(values, scaling=False, strict=False))


def brake_data(speed: int, small: int) -> bytes:
    values = {
        "ESC_BrakePressure": speed % 4096,
        "ESC_BrakePedalPressed": small & 1,
        "ESC_ABSActive": 0,
        "ESC_ParkingBrake": small >> 1 & 1,
    }
    return bytes(BRAKE.encode(values, scaling=False, strict=False))


def message(
    t: float,
    frame_id: int,
    data: bytes,
    *,
    extended: bool = False,
    channel: str = "can0",
    **flags: Any,
) -> can.Message:
    return can.Message(
        timestamp=t,
        arbitration_id=frame_id,
        data=data,
        is_extended_id=extended,
        channel=channel,
        **flags,
    )


def status(t: float, speed: int, extra: bytes = b"", small: int = 0) -> can.Message:
    """An ESC_Status frame (``extra``: bytes beyond the message's 8, which cantools ignores)."""
    return message(t, STATUS.frame_id, status_data(speed, small) + extra)


def build(specs: Sequence[Spec]) -> list[can.Message]:
    """The frames ``specs`` describe, on the STEP grid of frame time from START."""
    frames: list[can.Message] = []
    steps = 0
    last_status: bytes | None = None
    for kind, dt, speed, small in specs:
        steps += dt
        t = START + steps * STEP
        if kind == "repeat" and last_status is not None:  # the same payload again
            frames.append(message(t, STATUS.frame_id, last_status))
        elif kind in ("status", "repeat"):
            last_status = status_data(speed, small)
            frames.append(message(t, STATUS.frame_id, last_status))
        elif kind == "long":  # longer than the message: cantools decodes it (excess ignored)
            last_status = status_data(speed, small) + bytes(1 + small)
            frames.append(message(t, STATUS.frame_id, last_status))
        elif kind == "short":  # shorter than the message: cantools refuses it
            frame_id = STATUS.frame_id if small & 1 else BRAKE.frame_id
            frames.append(message(t, frame_id, status_data(speed, small)[: speed % 8]))
        elif kind == "brake":
            frames.append(message(t, BRAKE.frame_id, brake_data(speed, small)))
        elif kind == "long_brake":
            frames.append(message(t, BRAKE.frame_id, brake_data(speed, small) + bytes(4)))
        elif kind == "engine":
            values = {s.name: 0 for s in ENGINE.signals} | {"ECM_EngineSpeed": speed}
            data = bytes(ENGINE.encode(values, scaling=False, strict=False))
            frames.append(message(t, ENGINE.frame_id, data))
        elif kind == "foreign":  # a message nobody uses, from another clock far ahead
            frames.append(message(t + 10_000.0, ENGINE.frame_id, bytes(8)))
        elif kind == "unknown":  # an ID no database has, of any length
            frames.append(message(t, 0x7FF, bytes([small]) * (speed % 9)))
        elif kind == "extended":  # ESC_Status's ID, extended: no message of the database
            frames.append(message(t, STATUS.frame_id, status_data(speed, small), extended=True))
        elif kind == "other_bus":  # a bus the configuration does not have
            frames.append(message(t, STATUS.frame_id, status_data(speed, small), channel="can1"))
        elif kind == "remote":
            frames.append(message(t, STATUS.frame_id, b"", is_remote_frame=True, dlc=8))
        elif kind == "error":
            frames.append(message(t, 0, b"", is_error_frame=True))
    return frames


@st.composite
def streams(
    draw: st.DrawFn,
    *,
    max_frames: int = 250,
    spread: int = 4,
) -> list[can.Message]:
    """Up to ``max_frames`` frames whose ESC_Status speeds are mostly within ``spread`` raw
    steps of CENTER; frame time moves on by 0, a few ms, up to 2.5 s, or pauses 5 to 20 s."""
    steps = st.one_of(
        st.just(0),
        st.integers(1, 40),
        st.integers(1, 40),
        st.integers(41, 2500),
        st.integers(5 * 1024, 20 * 1024),
    )
    speeds = st.one_of(st.integers(CENTER - spread, CENTER + spread), st.integers(0, 30_000))
    spec = st.tuples(st.sampled_from(KINDS), steps, speeds, st.integers(0, 3))
    size = draw(st.integers(1, max_frames))
    specs = draw(st.lists(spec, min_size=size, max_size=size))
    frames = build(specs)
    event(f"frames: {len(frames) // 100 * 100}+")
    return frames


# -- the engine, alone and in the processing stage ------------------------------------------------

_DATABASES: dict[str, Any] = {}


def databases(cfg: Any) -> list[tuple[str, Any, bool]]:
    """The configuration's databases, loaded once (the engine does not change them)."""
    out = []
    for bus in cfg.buses:
        key = repr((bus.databases, bus.strict))
        if key not in _DATABASES:
            _DATABASES[key] = load_databases(bus.databases, strict=bus.strict)
        out.append((bus.name, _DATABASES[key], bus.j1939))
    return out


def chunked(frames: Sequence[can.Message], sizes: Sequence[int]) -> list[Sequence[can.Message]]:
    """``frames`` cut in chunks of ``sizes`` (cycled), the last one what is left."""
    chunks, start, i = [], 0, 0
    while start < len(frames):
        size = max(1, sizes[i % len(sizes)])
        chunks.append(frames[start : start + size])
        start, i = start + size, i + 1
    return chunks


ALL_AT_ONCE = (1_000_000,)


def alone(
    campaigns: Sequence[dict[str, Any]],
    frames: Sequence[can.Message],
    sizes: Sequence[int] = ALL_AT_ONCE,
    *,
    flush: bool = True,
) -> tuple[CampaignEngine, Collector]:
    """The engine on its own (:meth:`CampaignEngine.process`) over ``frames`` in chunks."""
    cfg = config(*campaigns)
    collector = Collector()
    engine = CampaignEngine(cfg, databases(cfg), collector, clock=FakeClock())
    for chunk in chunked(frames, sizes):
        engine.process(chunk)
    if flush:
        engine.flush()
    return engine, collector


def in_processor(
    campaigns: Sequence[dict[str, Any]],
    frames: Sequence[can.Message],
    sizes: Sequence[int] = ALL_AT_ONCE,
) -> tuple[CampaignEngine, Collector]:
    """The engine inside the Processor, whose loop taps it the frames of the IDs it uses (the
    engine spools to a collector of its own, as in tests/campaigns/test_taps.py)."""
    collector = Collector()

    def factory(
        config: Any,
        databases: Any,
        append: Any,
        *,
        clock: Any = None,
        vss: Any = None,
        latest: Any = None,
    ) -> CampaignEngine:
        return CampaignEngine(config, databases, collector, clock=clock, vss=vss, latest=latest)

    cfg = config(*campaigns)
    processor = Processor(cfg, Collector(), clock=FakeClock(), campaigns=factory)
    for chunk in chunked(frames, sizes):
        processor.process(chunk)
    processor.flush()
    engine = processor.campaigns
    assert isinstance(engine, CampaignEngine)
    engine.flush()
    return engine, collector


# -- the reference ------------------------------------------------------------------------------

OPS: dict[str, Callable[[Any, Any], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


def is_frame_of(msg: can.Message, msg_def: Any) -> bool:
    """A data frame of ``msg_def`` on can0 (whatever its length)."""
    return (
        msg.channel == "can0"
        and not (msg.is_error_frame or msg.is_remote_frame)
        and msg.arbitration_id == msg_def.frame_id
        and msg.is_extended_id == bool(msg_def.is_extended_frame)
    )


def decodes(msg: can.Message, msg_def: Any) -> dict[str, Any] | None:
    """cantools' physical values of a frame of ``msg_def``; None when cantools refuses it."""
    try:
        return dict(msg_def.decode(bytes(msg.data), decode_choices=False))
    except Exception:
        return None


def speeds(frames: Sequence[can.Message]) -> list[tuple[float, Any]]:
    """(time, cantools' ESC_VehicleSpeed) of every ESC_Status frame cantools decodes."""
    out = []
    for msg in frames:
        if is_frame_of(msg, STATUS) and (values := decodes(msg, STATUS)) is not None:
            out.append((msg.timestamp, values["ESC_VehicleSpeed"]))
    return out


@dataclass
class Reference:
    triggers: list[float]
    suppressed: int


def reference(
    values: Sequence[tuple[float, Any]],
    test: Callable[[Any], bool],
    trigger: str,
    min_interval: float,
) -> Reference:
    """Triggers by brute force: the condition is ``test`` of the latest value (false before the
    first); it is evaluated when that value changes. ``rising_edge`` fires where it goes from
    false to true, ``while_true`` at every evaluation that holds; a firing within
    ``min_interval`` of the previous trigger is suppressed."""
    triggers: list[float] = []
    suppressed = 0
    last = -float("inf")
    was_true = False
    current: Any = None
    for t, value in values:
        if trigger == "rising_edge":
            truth = test(value)
            fire = truth and not was_true
            was_true = truth
        else:
            if value == current:
                continue  # nothing changed: not evaluated
            current = value
            fire = test(value)
        if not fire:
            continue
        if t - last < min_interval:
            suppressed += 1
            continue
        triggers.append(t)
        last = t
    return Reference(triggers, suppressed)


def reference_of(campaign: dict[str, Any], frames: Sequence[can.Message]) -> Reference:
    """The reference of a campaign ``ESC_Status.ESC_VehicleSpeed <op> <constant>``."""
    subject, op, constant = campaign["condition"].split()
    assert subject == SPEED
    test, threshold = OPS[op], float(constant)
    return reference(
        speeds(frames),
        lambda value: test(value, threshold),
        campaign.get("trigger", "rising_edge"),
        campaign.get("min_interval", 0.0),
    )


def captured_messages(campaign: dict[str, Any]) -> list[Any]:
    return [DEMO.get_message_by_name(glob.split(".")[0]) for glob in campaign["signals"]]


def window_frames(
    frames: Sequence[can.Message], messages: Sequence[Any], t: float, campaign: dict[str, Any]
) -> int:
    """How many frames of ``messages`` cantools decodes in the window of a trigger at ``t`` of
    ``campaign`` (the capture's rows)."""
    start, end = t - campaign.get("before", 0.0), t + campaign.get("after", 0.0)
    return sum(
        1
        for msg in frames
        if start <= msg.timestamp <= end
        for msg_def in messages
        if is_frame_of(msg, msg_def) and decodes(msg, msg_def) is not None
    )


def nonempty(
    campaign: dict[str, Any], frames: Sequence[can.Message], triggers: Sequence[float]
) -> list[float]:
    """The ``triggers`` whose window holds a frame of the captured messages: the others give no
    payload and are not counted in ``captures``."""
    messages = captured_messages(campaign)
    return [t for t in triggers if window_frames(frames, messages, t, campaign)]


def captured(collector: Collector, name: str) -> tuple[list[float], dict[float, list[Any]]]:
    """The triggers of ``name``'s capture payloads in spooling order (a capture split in several
    payloads once) and the rows of every payload of each trigger time."""
    order: list[float] = []
    rows: dict[float, list[Any]] = defaultdict(list)
    for ext, payload_rows in collector.captures(name):
        t = ext["trigger"]
        if not order or order[-1] != t:
            order.append(t)
        rows[t].extend(payload_rows)
        assert {r.campaign for r in payload_rows} == {name}
    return order, rows


def check_captures(
    engine: CampaignEngine,
    collector: Collector,
    campaign: dict[str, Any],
    frames: Sequence[can.Message],
    want: Reference,
) -> None:
    """The campaign's payloads and counters are exactly the reference's captures: the rows of
    each are cantools' values of every frame of the captured messages in its window."""
    name = campaign["name"]
    before, after = campaign.get("before", 0.0), campaign.get("after", 0.0)
    messages = captured_messages(campaign)
    names = {m.name for m in messages}
    order, rows = captured(collector, name)
    full = nonempty(campaign, frames, want.triggers)
    # each trigger with a frame in its window gives a capture (no frame: no payload), in order
    assert order == list(dict.fromkeys(full))
    counts = Counter(want.triggers)  # rising edges at one frame time: a capture each
    for t, got in rows.items():
        window = expected_rows(DB, frames, names, t - before, t + after)
        assert actual_rows(got) == sorted(window * counts[t]), f"capture at {t}"
    for ext, _ in collector.captures(name):
        assert ext["condition"] == campaign["condition"]
    stats = engine.counters()[name]
    payloads = len(collector.captures(name))
    assert stats == {
        "triggers": len(want.triggers),
        "suppressed": want.suppressed,
        "captures": len(full),
        "payloads": payloads,
        "bytes": stats["bytes"],
        "rows": sum(window_frames(frames, messages, t, campaign) for t in full),
        "budgetDropped": 0,
        "truncated": 0,
        "spoolErrors": 0,
    }
    assert (stats["bytes"] > 0) == (payloads > 0)


def engine_time(frames: Sequence[can.Message], campaign: dict[str, Any]) -> float:
    """Frame time of the newest frame of a message the campaign uses: the engine's time (frames
    of other messages do not move it)."""
    used = [STATUS, *captured_messages(campaign)]
    times = [m.timestamp for m in frames if any(is_frame_of(m, d) for d in used)]
    return max(times, default=-float("inf"))


# -- campaigns ----------------------------------------------------------------------------------

CAPTURED = st.sampled_from(
    [["ESC_Status.*"], ["ESC_BrakeStatus.*"], ["ESC_Status.*", "ESC_BrakeStatus.*"]]
)
#: Constants around CENTER (km/h): on raw values and between them.
CONSTANTS = st.sampled_from(["19.97", "19.985", "20", "20.0", "20.01", "20.015", "20.04"])
#: Seconds, most of them exact in binary (see STEP).
SECONDS = st.sampled_from([0.0, STEP, 0.01, 0.0625, 0.2, 0.5, 1.0, 2.5])


@st.composite
def threshold_campaigns(
    draw: st.DrawFn, name: str = "speed", trigger: str | None = None
) -> dict[str, Any]:
    """A condition campaign ``ESC_Status.ESC_VehicleSpeed <op> <constant>``."""
    trigger = trigger or draw(st.sampled_from(["rising_edge", "while_true"]))
    interval = draw(SECONDS)
    if trigger == "while_true" and interval == 0:
        interval = 0.05  # required > 0
    return {
        "name": name,
        "condition": f"{SPEED} {draw(st.sampled_from(sorted(OPS)))} {draw(CONSTANTS)}",
        "trigger": trigger,
        "min_interval": interval,
        "before": draw(SECONDS),
        "after": draw(SECONDS),
        "signals": draw(CAPTURED),
    }


#: Campaigns beside a threshold one in the invariance tests: conditions on two messages, with
#: history (prev, max), changed(); and a periodic snapshot.
OTHERS: list[dict[str, Any]] = [
    {
        "name": "braking",
        "condition": f"changed({SPEED}) and ESC_BrakeStatus.ESC_BrakePressure > 100",
        "trigger": "while_true",
        "min_interval": 0.02,
        "signals": ["ESC_BrakeStatus.*"],
        "before": 0.3,
        "after": 0.1,
        "raw_frames": True,
    },
    {
        "name": "accelerating",
        "condition": f"{SPEED} - prev({SPEED}, 0.05) > 0.02 or max({SPEED}, 0.2) > 250",
        "signals": ["ESC_Status.ESC_VehicleSpeed", "ESC_BrakeStatus.*"],
        "before": 1.0,
        "after": 0.5,
        "min_interval": 0.1,
    },
    {"name": "snapshot", "collect": "periodic", "period": 0.5, "signals": ["ESC_*"]},
]


def outcome(engine: CampaignEngine, collector: Collector) -> dict[str, Any]:
    """Everything the engine gave: every payload's ext and rows, in order, and its counters
    (per campaign, and the history's but for the frames it holds: the recent tier keeps whole
    chunks, so how many depends on the chunks)."""
    counters = engine.all_counters()
    history = counters["history"]
    del history["frames"], history["recent"]
    return {"payloads": collector.decoded(), "counters": counters}


# -- 1. the reference model ---------------------------------------------------------------------


EDGES = {
    "name": "speed",
    "condition": f"{SPEED} > 20",
    "trigger": "while_true",
    "min_interval": 64 * STEP,
    "before": 64 * STEP,
    "after": 64 * STEP,
    "signals": ["ESC_Status.*", "ESC_BrakeStatus.*"],
}


@properties(300)
@given(campaign=threshold_campaigns(), frames=streams())
# exactly min_interval after a trigger (fires), a step later (suppressed); frames on the
# windows' edges, and at the end's frame time after the one that ends a window
@example(
    campaign=EDGES,
    frames=build(
        [
            ("brake", 0, 1, 0),
            ("status", 0, 2001, 0),
            ("brake", 64, 5, 0),
            ("status", 0, 2002, 0),
            ("status", 1, 2003, 0),
            ("brake", 63, 7, 1),
            ("status", 0, 1990, 0),
            ("brake", 1, 9, 0),
        ]
    ),
)
# two rising edges at one frame time, min_interval 0: two captures of the same frames
@example(
    campaign={**EDGES, "trigger": "rising_edge", "min_interval": 0.0, "before": 0.0},
    frames=build(
        [
            ("status", 0, 2001, 0),
            ("status", 0, 1999, 1),
            ("status", 0, 2001, 2),
            ("status", 64, 2001, 3),
            ("status", 1, 1999, 0),
        ]
    ),
)
def test_captures_are_the_reference_model(
    campaign: dict[str, Any], frames: list[can.Message]
) -> None:
    """Triggers, suppressed, and every capture's rows are the brute-force reference's; a
    capture still open at the end is spooled by flush() with the frames that came, once."""
    want = reference_of(campaign, frames)
    note(f"reference: triggers {want.triggers}, suppressed {want.suppressed}")
    event(f"triggers: {min(len(want.triggers), 5)}, suppressed: {min(want.suppressed, 3)}")
    engine, collector = alone([campaign], frames, flush=False)
    # Before flush(): a capture is out once frame time (of the messages the engine uses)
    # passed its end; the others are open.
    now = engine_time(frames, campaign)
    ended = [t for t in want.triggers if now > t + campaign["after"]]
    assert engine.describe()["speed"]["openCaptures"] == len(want.triggers) - len(ended)
    order, _ = captured(collector, "speed")
    assert order == list(dict.fromkeys(nonempty(campaign, frames, ended)))
    # A clean stop: the open captures go with the frames they have, which is their whole
    # window's worth of what came (the reference counts every frame).
    event(f"open at the end: {min(len(want.triggers) - len(ended), 3)}")
    engine.flush()
    assert engine.describe()["speed"]["openCaptures"] == 0
    check_captures(engine, collector, campaign, frames, want)
    spooled = len(collector.payloads)
    engine.flush()
    assert len(collector.payloads) == spooled  # nothing twice


# -- 2. chunking does not matter ----------------------------------------------------------------


@properties(60)
@given(
    campaign=threshold_campaigns(),
    frames=streams(),
    sizes=st.lists(st.integers(1, 80), min_size=1, max_size=20),
)
def test_chunking_changes_nothing(
    campaign: dict[str, Any], frames: list[can.Message], sizes: list[int]
) -> None:
    """The same frames in chunks of one, of random sizes and all at once: the same payloads
    (ext and rows) and counters, frames of every kind and length included."""
    campaigns = [campaign, *OTHERS]
    whole = outcome(*alone(campaigns, frames))
    event(f"payloads: {min(len(whole['payloads']), 10)}")
    assert outcome(*alone(campaigns, frames, (1,))) == whole
    assert outcome(*alone(campaigns, frames, sizes)) == whole


@properties(60)
@given(
    campaign=threshold_campaigns(),
    frames=streams(),
    sizes=st.lists(st.integers(1, 80), min_size=1, max_size=20),
    limit=st.sampled_from([0, 1, 7, 64]),
)
def test_the_recent_tier_changes_nothing(
    campaign: dict[str, Any], frames: list[can.Message], sizes: list[int], limit: int
) -> None:
    """History kept as chunks (the recent tier) or packed in rings, or part of each as the
    recent tier fills and empties (a cap of a few frames): the same payloads and counters."""
    campaigns = [campaign, *OTHERS]
    kept = outcome(*in_processor(campaigns, frames, sizes))
    with mock.patch("edge.campaigns.engine.RECENT_FRAMES", limit):
        packed = outcome(*in_processor(campaigns, frames, sizes))
    for got in (kept, packed):
        del got["counters"]["history"]["bytes"]  # the rings' bytes: only packed frames count
    assert packed == kept


# -- 3. alone and in the processing stage -------------------------------------------------------


@properties(40)
@given(
    campaign=threshold_campaigns(),
    frames=streams(),
    sizes=st.lists(st.integers(1, 120), min_size=1, max_size=10),
)
def test_the_processing_stage_taps_give_what_the_engine_alone_gives(
    campaign: dict[str, Any], frames: list[can.Message], sizes: list[int]
) -> None:
    """CampaignEngine.process() alone and the Processor, whose loop hands the engine the frames
    of the IDs it taps: the same payloads and counters, on the same chunks."""
    campaigns = [campaign, *OTHERS]
    got = outcome(*in_processor(campaigns, frames, sizes))
    assert got == outcome(*alone(campaigns, frames, sizes))


# -- 4. overlapping captures --------------------------------------------------------------------


@properties(60)
@given(
    wide=threshold_campaigns(name="wide", trigger="while_true"),
    narrow=threshold_campaigns(name="narrow", trigger="rising_edge"),
    interval=st.sampled_from([STEP, 0.01, 0.0625]),
    span=st.tuples(st.sampled_from([0.5, 1.0, 3.0]), st.sampled_from([0.5, 1.0, 3.0])),
    frames=streams(spread=2),
)
def test_overlapping_captures_are_each_complete(
    wide: dict[str, Any],
    narrow: dict[str, Any],
    interval: float,
    span: tuple[float, float],
    frames: list[can.Message],
) -> None:
    """``while_true`` with a short min_interval and long windows, beside another campaign on
    the same messages: captures overlap, and each holds every frame of its window."""
    both = ["ESC_Status.*", "ESC_BrakeStatus.*"]
    names = {"ESC_Status", "ESC_BrakeStatus"}
    before, after = span
    wide = {**wide, "min_interval": interval, "before": before, "after": after, "signals": both}
    narrow = {**narrow, "signals": both}
    want = reference_of(wide, frames)
    full = nonempty(wide, frames, want.triggers)
    # consecutive captures whose windows share frames
    shared = [
        (a, b)
        for a, b in itertools.pairwise(full)
        if a < b and expected_rows(DB, frames, names, b - before, a + after)
    ]
    assume(shared)
    event(f"overlapping pairs: {min(len(shared), 5)}")
    engine, collector = alone([wide, narrow], frames)
    check_captures(engine, collector, wide, frames, want)
    check_captures(engine, collector, narrow, frames, reference_of(narrow, frames))
    # every frame in the windows of two captures is in both
    _, rows = captured(collector, "wide")
    for a, b in shared:
        common = set(actual_rows(rows[a])) & set(actual_rows(rows[b]))
        assert set(expected_rows(DB, frames, names, b - before, a + after)) <= common


# -- two cases the properties found: minimal -------------------------------------------------

RISING = {"name": "speed", "condition": f"{SPEED} > 20", "signals": ["ESC_Status.*"]}


@pytest.mark.parametrize("extra", [b"", b"\0"], ids=["8-byte-frames", "9-byte-frames"])
@pytest.mark.parametrize("trigger", ["rising_edge", "while_true"])
def test_frames_of_another_length_move_the_condition(extra: bytes, trigger: str) -> None:
    """10 km/h, 30 km/h, 10 km/h, 30 km/h on ESC_Status: the condition ``speed > 20`` goes
    from false to true twice, whether the 30 km/h frames have 8 bytes or 9 (cantools decodes
    both). The 8-byte frames take the quick path (one input read inline), the 9-byte ones the
    general one (``_inputs``), which must not take the second 30 km/h frame for unchanged from
    the first: the quick path changed the condition's value in between."""
    campaign = {**RISING, "trigger": trigger, "min_interval": 0.01}
    frames = [
        status(1000.0, 1000),
        status(1000.1, 3000, extra),
        status(1000.2, 1000),
        status(1000.3, 3000, extra),
    ]
    want = reference_of(campaign, frames)
    assert want.triggers == [1000.1, 1000.3]
    engine, collector = alone([campaign], frames)
    check_captures(engine, collector, campaign, frames, want)


@pytest.mark.parametrize("before_pause", [62, 63], ids=lambda n: f"{n}-frames")
def test_a_pause_longer_than_the_ring_slack_loses_no_capture(before_pause: int) -> None:
    """A capture at 1000.0 (window [1000.0, 1000.5]) of ESC_Status frames every millisecond,
    then the bus pauses 6 s: the frame after the pause closes the capture, which holds every
    frame before the pause. With 63 frames before it, that frame is the ring's 64th, whose
    settling forgets what is older than 1006.0 - 5.5: the capture must be cut from the ring
    before that."""
    campaign = {**RISING, "before": 0.0, "after": 0.5}
    frames = [status(1000.0 + i / 1000, 3000) for i in range(before_pause)]
    frames.append(status(1006.0, 3000))
    want = reference_of(campaign, frames)
    assert want.triggers == [1000.0]
    engine, collector = alone([campaign], frames)
    check_captures(engine, collector, campaign, frames, want)


# -- 5. the loop's comparison on raw values -----------------------------------------------------

NUMBERS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.integers(-(10**6), 10**6),
    st.sampled_from([0, 0.0, -0.0, 1, 0.1, 0.01, -0.5, 1e-300, 1e300, 2**-30]),
)


@properties(500)
@given(
    test=st.sampled_from([operator.lt, operator.le, operator.gt, operator.ge]),
    constant=NUMBERS,
    scale=NUMBERS,
    offset=NUMBERS,
    bits=st.integers(1, 64),
    signed=st.booleans(),
    data=st.data(),
)
def test_the_raw_comparison_is_the_conditions_comparison(
    test: Callable[[Any, Any], bool],
    constant: Any,
    scale: Any,
    offset: Any,
    bits: int,
    signed: bool,
    data: st.DataObject,
) -> None:
    """What the processing stage's loop tests on a raw value (CampaignEngine.inline) is what
    the condition gives on its scaled value, for every raw value of the signal: checked at the
    range's ends, around the boundary found and at random values."""
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    found = _raw_test(test, constant, scale, offset, low, high)
    assert found is not None
    op, boundary = found
    probes = {low, high, boundary - 1, boundary, boundary + 1}
    probes |= set(data.draw(st.lists(st.integers(low, high), max_size=20)))
    for raw in sorted(r for r in probes if low <= r <= high):
        assert op(raw, boundary) == test(raw * scale + offset, constant), raw


def test_equality_is_not_moved_to_raw_values() -> None:
    assert _raw_test(operator.eq, 1.0, 0.5, 0, 0, 255) is None
    assert _raw_test(operator.ne, 1.0, 0.5, 0, 0, 255) is None
