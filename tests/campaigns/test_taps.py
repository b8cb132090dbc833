"""The processing stage's taps (issue 11): the Processor's loop hands the campaign engine the
frames of the IDs campaigns use (:meth:`CampaignEngine.frame`), as it meets them. That must be
what the engine does on its own (:meth:`CampaignEngine.process`: every frame looked up in its
own tables): the same captures, snapshots and counters, on every corpus log, for messages the
processing stage decodes and messages it skips, J1939 source addresses included; and a fault of
the engine costs only the engine."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Callable
from typing import Any

import can
import pytest

from edge.campaigns.engine import CampaignEngine
from edge.clock import FakeClock
from edge.config.model import parse_config
from edge.processing.database import load_databases
from edge.processing.decode import Tap, Track, Unusable
from edge.processing.processor import Processor
from tests.campaigns.test_engine import Collector, config, drive, run
from tests.processing.test_processor import frames_of
from tests.support.corpus import LOGS, CorpusLog, require_corpus

CHUNK = 500


def pick_messages(log: CorpusLog, frames: list[can.Message]) -> list[tuple[str, str, float]]:
    """The four busiest messages of the log its databases know (unique names over its buses),
    each with a numeric signal (whose value moves, for the first) and that signal's median:
    (message, signal, median)."""
    processor = Processor(parse_config(log.config()), Collector())
    buses = {b.name: b for b in processor.bus_decoders}
    names = Counter(m.name for b in processor.bus_decoders for m in b._db.messages)
    counts = Counter(
        (m.channel, m.arbitration_id, m.is_extended_id)
        for m in frames
        if not (m.is_error_frame or m.is_remote_frame) and m.channel in buses
    )
    picked: list[tuple[str, str, float]] = []
    for (channel, frame_id, extended), _ in counts.most_common():
        message = buses[str(channel)].message(frame_id, extended)
        if message is None or names[message.name] > 1:
            continue
        if any(name == message.name for name, _, _ in picked):
            continue
        values = numeric_values(message, frames[:20_000], (str(channel), frame_id, extended))
        # a value that moves, or (not for the first) any: its frames still fill the rings
        moving = sorted(n for n, v in values.items() if len(set(v)) > 2)
        moving = moving or (sorted(values) if picked else [])
        if moving:
            signal = moving[0]
            picked.append((message.name, signal, statistics.median(values[signal])))
        if len(picked) == 4:
            break
    return picked


def numeric_values(
    message: Any, frames: list[can.Message], key: tuple[str, int, bool]
) -> dict[str, list[float]]:
    """cantools' numeric values of ``message`` in the frames with ``key`` (bus, frame ID,
    extended), per signal (frames cantools refuses left out)."""
    values: dict[str, list[float]] = {}
    for m in frames:
        if (m.channel, m.arbitration_id, m.is_extended_id) != key:
            continue
        try:
            decoded = message.decode(bytes(m.data), decode_choices=False)
        except Exception:
            continue
        for name, value in decoded.items():
            if isinstance(value, int | float):
                values.setdefault(name, []).append(float(value))
    return values


def campaigns_for(picked: list[tuple[str, str, float]]) -> list[dict[str, Any]]:
    """A rising edge, a while_true change and a periodic snapshot over the picked messages."""
    out: list[dict[str, Any]] = []
    for i, (message, signal, median) in enumerate(picked):
        base = {"name": f"c{i}", "signals": [f"{message}.*"]}
        if i == 3:
            out.append({**base, "collect": "periodic", "period": 1.0})
        elif i == 2:
            condition = f"changed({message}.{signal})"
            out.append(
                {
                    **base,
                    "condition": condition,
                    "trigger": "while_true",
                    "min_interval": 3.0,
                    "before": 0.5,
                    "after": 0.5,
                    "raw_frames": True,
                }
            )
        else:
            out.append(
                {
                    **base,
                    "condition": f"{message}.{signal} > {median!r}",
                    "min_interval": 2.0,
                    "before": 1.0,
                    "after": 0.5,
                }
            )
    return out


def tapped(log: CorpusLog, data: dict[str, Any], frames: list[can.Message]) -> Collector:
    """The campaign payloads of a Processor whose loop taps the engine (the engine appends to
    a spool of its own here, so that sequence numbers, and so sizes, compare)."""
    collector = Collector()

    def engine(cfg: Any, databases: Any, _append: Any, **options: Any) -> CampaignEngine:
        return CampaignEngine(cfg, databases, collector, **options)

    processor = Processor(parse_config(data), Collector(), clock=FakeClock(), campaigns=engine)
    for start in range(0, len(frames), CHUNK):
        processor.process(frames[start : start + CHUNK])
    engine = processor.campaigns
    assert isinstance(engine, CampaignEngine)
    engine.flush()
    collector.counters = engine.counters()  # type: ignore[attr-defined]
    collector.history = engine.ring_stats()  # type: ignore[attr-defined]
    collector.kinds = Counter(  # type: ignore[attr-defined]
        (
            type(entry.entry).__name__
            if isinstance(entry, Tap)
            else "inline"  # a Track whose condition input the loop reads
        )
        for bus in processor.bus_decoders
        for table in (bus.standard, bus.extended)
        for entry in table.values()
        if isinstance(entry, Tap) or (isinstance(entry, Track) and entry.campaign_input)
    )
    return collector


def alone(
    data: dict[str, Any],
    frames: list[can.Message],
    prepare: Callable[[CampaignEngine], object] | None = None,
) -> Collector:
    """The campaign payloads of the engine on its own, on the same chunks (``prepare`` sees the
    engine first)."""
    collector = Collector()
    cfg = parse_config(data)
    databases = [
        (bus.name, load_databases(bus.databases, strict=bus.strict), bus.j1939) for bus in cfg.buses
    ]
    engine = CampaignEngine(cfg, databases, collector, clock=FakeClock())
    if prepare is not None:
        prepare(engine)
    for start in range(0, len(frames), CHUNK):
        engine.process(frames[start : start + CHUNK])
    engine.flush()
    collector.counters = engine.counters()  # type: ignore[attr-defined]
    collector.history = engine.ring_stats()  # type: ignore[attr-defined]
    return collector


@pytest.mark.parametrize("log", LOGS, ids=lambda log: log.id)
def test_the_tapped_loop_gives_what_the_engine_alone_gives(log: CorpusLog) -> None:
    require_corpus()
    frames = frames_of(log, None, 60_000)
    picked = pick_messages(log, frames)
    assert len(picked) >= 2, picked
    data = log.config(campaigns=campaigns_for(picked))
    # the first message only is selected: the others' frames the processing stage skips
    data["signals"] = {"include": [f"{picked[0][0]}.*"]}
    got, want = tapped(log, data, frames), alone(data, frames)
    # the first message is decoded by the processing stage: its input read by the loop itself
    # (inline), or by the engine for a multiplexed message (Tesla's)
    assert got.kinds["inline"] + got.kinds["Track"] >= 1  # type: ignore[attr-defined]
    assert got.kinds["str"] >= 1  # type: ignore[attr-defined]
    assert got.counters == want.counters  # type: ignore[attr-defined]
    assert got.history == want.history  # type: ignore[attr-defined]
    assert got.decoded() == want.decoded()
    assert sum(c["triggers"] for c in got.counters.values()) > 0  # type: ignore[attr-defined]


def test_taps_mark_only_the_ids_campaigns_use() -> None:
    """The IDs of messages no campaign uses hold their plain entry (their frames pay nothing); a
    message campaigns use is tapped whether the processing stage decodes it or skips it, but
    for one whose condition input the loop reads itself (a plain track, its campaign_input
    set)."""
    cfg = config(
        {
            "name": "brake",
            "condition": "ESC_Status.ESC_VehicleSpeed > 20",
            "signals": ["ESC_Status.*", "TCM_GearStatus.*"],
        },
        signals={"include": ["ESC_Status.*", "BMS_PackStatus.*"]},
    )
    processor, collector = run(cfg, drive(20.0))
    (bus,) = processor.bus_decoders
    entries = {
        bus.message(frame_id, False).name: entry  # type: ignore[union-attr]
        for frame_id, entry in bus.standard.items()
        if bus.message(frame_id, False) is not None
    }
    esc, tcm, bms = entries["ESC_Status"], entries["TCM_GearStatus"], entries["BMS_PackStatus"]
    assert type(esc) is Track and esc.campaign_input is not None
    assert isinstance(tcm, Tap) and tcm.entry == "not_selected"
    assert type(bms) is Track
    assert processor.decoder.stats().skipped["not_selected"] > 0
    assert collector.captures("brake")


def test_a_fault_in_the_engine_costs_the_engine_that_frame_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An exception in the engine's handling of a frame is counted in its ``faults``; the
    processing stage decodes and accounts for that frame as ever."""
    cfg = config(
        {
            "name": "brake",
            "condition": "ESC_Status.ESC_VehicleSpeed > 20 or ESC_BrakePressure > 40",
            "signals": ["ESC_Status.*"],
        }
    )
    frames = drive(10.0)
    plain = Processor(config(), Collector())
    for start in range(0, len(frames), 500):
        plain.process(frames[start : start + 500])
    calls = {"n": 0}
    original = CampaignEngine._evaluate

    def flaky(self: CampaignEngine, *args: Any) -> None:
        calls["n"] += 1
        if calls["n"] % 7 == 0:
            raise RuntimeError("a bug of ours")
        original(self, *args)

    monkeypatch.setattr(CampaignEngine, "_evaluate", flaky)
    processor, _ = run(cfg, frames)
    assert processor.campaigns is not None
    faults = processor.campaigns.all_counters()["history"]["faults"]
    assert faults == calls["n"] // 7 > 0
    stats, reference = processor.decoder.stats(), plain.decoder.stats()
    assert (stats.frames, stats.decoded, stats.repeated, stats.lost) == (
        reference.frames,
        reference.decoded,
        reference.repeated,
        0,
    )


def test_an_unusable_message_still_reaches_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """A message the processing stage cannot set up (its frames lost and counted there) is
    still seen by a campaign that uses it: the engine decodes on its own."""
    from edge.processing.decode import BusDecoder

    original = BusDecoder._new_track

    def refuse(self: BusDecoder, message: Any, source_address: int | None) -> Any:
        if message.name == "ESC_Status":
            raise RuntimeError("cannot set up")
        return original(self, message, source_address)

    monkeypatch.setattr(BusDecoder, "_new_track", refuse)
    cfg = config(
        {
            "name": "brake",
            "condition": "ESC_Status.ESC_VehicleSpeed > 20",
            "signals": ["ESC_Status.*"],
        }
    )
    frames = drive(30.0)
    processor, collector = run(cfg, frames)
    (bus,) = processor.bus_decoders
    assert any(isinstance(e, Tap) and isinstance(e.entry, Unusable) for e in bus.standard.values())
    assert processor.decoder.stats().lost > 0
    assert collector.captures("brake")
