"""The processing stage end to end on real recordings: what the cloud decodes from our payloads is
exactly what cantools decodes from the same frames."""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import can
import cantools
import pytest
from cantools.j1939 import pgn_from_frame_id

from edge.config.model import parse_config
from edge.errors import SpoolError
from edge.ingest.source import ReplaySource
from edge.processing.processor import Processor
from edge.wire.codec import PayloadReader
from edge.wire.payload import Payload
from tests.support.corpus import LOGS, CorpusLog, require_corpus

Key = tuple[str, str, Any, str]  # bus, message, source address, signal


class Collector:
    """The spool's ``append`` contract, in memory."""

    def __init__(self) -> None:
        self.payloads: list[Payload] = []

    def __call__(self, build: Any) -> int:
        seq = len(self.payloads)
        self.payloads.append(build("7e57" * 8, seq))
        return seq

    def rows(self) -> dict[Key, list[tuple[float, Any, Any]]]:
        decoder = PayloadReader()
        out: dict[Key, list[tuple[float, Any, Any]]] = defaultdict(list)
        for payload in self.payloads:
            for row in decoder.rows(payload.body):
                out[(row.bus, row.message, row.source, row.signal)].append(
                    (row.time, row.value, row.choice)
                )
        return out


def frames_of(log: CorpusLog, suffix: str | None, limit: int | None) -> list[can.Message]:
    config = parse_config(log.config())
    assert config.replay is not None
    replay = ReplaySource(
        config.replay.__class__(str(log.path(suffix)), None, config.replay.channels),
        [b.name for b in config.buses],
    )
    return list(itertools.islice(replay.messages(), limit))


def tick_time(t: float) -> float:
    return round(t * 1000) * 1_000_000 / 1_000_000_000


def reference(
    log: CorpusLog, frames: Iterable[can.Message]
) -> dict[Key, list[tuple[float, Any, Any]]]:
    """Every value cantools decodes, per signal, in frame order (independent of our decoder)."""
    dbs = {
        b.name: (
            cantools.database.load_file(str(log.path().parents[1] / b.dbc), strict=b.strict),
            b.j1939,
        )
        for b in log.buses
    }
    by_pgn = {
        name: {
            pgn_from_frame_id(m.frame_id): m for m in reversed(db.messages) if m.is_extended_frame
        }
        for name, (db, _) in dbs.items()
    }
    out: dict[Key, list[tuple[float, Any, Any]]] = defaultdict(list)
    for msg in frames:
        if msg.channel not in dbs or msg.is_error_frame or msg.is_remote_frame:
            continue
        db, j1939 = dbs[msg.channel]
        source = None
        try:
            message = db.get_message_by_frame_id(msg.arbitration_id)
            if message.is_extended_frame != msg.is_extended_id:
                raise KeyError
        except KeyError:
            if not (j1939 and msg.is_extended_id):
                continue
            found = by_pgn[msg.channel].get(pgn_from_frame_id(msg.arbitration_id))
            if found is None:
                continue
            message = found
        if j1939 and msg.is_extended_id:
            source = msg.arbitration_id & 0xFF
        try:
            values = message.decode(bytes(msg.data), decode_choices=False)
            named = message.decode(bytes(msg.data), decode_choices=True)
        except Exception:
            continue
        for name, value in values.items():
            choice = named[name]
            choice_name = choice.name if hasattr(choice, "name") else None
            out[(msg.channel, message.name, source, name)].append(
                (msg.timestamp, value, choice_name)
            )
    return out


def on_change(
    values: list[tuple[float, Any, Any]], heartbeat: float
) -> list[tuple[float, Any, Any]]:
    """The lossless on-change + heartbeat sampling of a value sequence, as documented."""
    kept: list[tuple[float, Any, Any]] = []
    last: Any = None
    sent_at = -math.inf
    for t, value, choice in values:
        if not kept or value != last or (heartbeat and t - sent_at >= heartbeat):
            kept.append((tick_time(t), value, choice))
            last, sent_at = value, t
    return kept


def run(log: CorpusLog, frames: list[can.Message], **overrides: Any) -> Collector:
    collector = Collector()
    processor = Processor(parse_config(log.config(**overrides)), collector)
    processor.process(frames)
    processor.flush()
    return collector


@pytest.mark.parametrize("log", LOGS, ids=[log.id for log in LOGS])
def test_default_sampling_is_lossless_on_every_corpus_log(log: CorpusLog) -> None:
    """Default settings (every change + heartbeat): the decoded rows are exactly the changes of
    every signal cantools decodes, at the configured time resolution."""
    require_corpus()
    frames = frames_of(log, None, None)
    expected = {key: on_change(values, 60.0) for key, values in reference(log, frames).items()}
    got = run(log, frames).rows()
    assert expected, "the reference decoded nothing: the corpus mapping is wrong"
    assert set(got) == set(expected)
    for key in expected:
        assert got[key] == expected[key], key


@pytest.mark.parametrize(
    ("log", "suffix"),
    [(log, suffix) for log in LOGS for suffix in (None, *log.extra_formats)],
    ids=[f"{log.id}{suffix or ''}" for log in LOGS for suffix in (None, *log.extra_formats)],
)
def test_every_mode_round_trips_every_value(log: CorpusLog, suffix: str | None) -> None:
    """Mode ``every``: each value cantools decodes comes back, at its frame's time (log formats
    .log/.asc/.blf alike)."""
    require_corpus()
    frames = frames_of(log, suffix, 20_000)
    expected = {
        key: [(tick_time(t), v, c) for t, v, c in values]
        for key, values in reference(log, frames).items()
    }
    got = run(log, frames, signals={"mode": "every", "heartbeat": 0}).rows()
    assert set(got) == set(expected)
    for key in expected:
        assert got[key] == expected[key], key


def test_j1939_truck_is_decoded_by_pgn() -> None:
    """Exact-ID lookup finds nothing on the truck; PGN matching decodes EEC1 and CCVS1 from the
    engine's source address."""
    require_corpus()
    log = next(log for log in LOGS if log.id == "j1939-truck")
    frames = frames_of(log, None, 20_000)
    exact = run(
        log,
        frames,
        buses=[{"name": "can1", "dbc": [str(log.path().parents[1] / log.buses[0].dbc)]}],
    )
    assert exact.rows() == {}
    rows = run(log, frames).rows()
    messages = {key[1] for key in rows}
    assert {"EEC1", "CCVS1"} <= messages
    assert all(key[2] is not None for key in rows)  # the source address is kept


def test_unknown_ids_and_unmapped_channels_are_counted_not_fatal() -> None:
    require_corpus()
    log = next(log for log in LOGS if log.id == "rav4")
    frames = frames_of(log, None, 30_000)
    processor = Processor(parse_config(log.config()), Collector())
    processor.process(frames)
    stats = processor.stats()
    assert stats.decode.skipped["unknown_id"] > 0
    assert stats.decode.skipped["unknown_bus"] > 0  # can128, the TX echo, is mapped to no bus
    assert stats.frames == len(frames)


FIRST, SECOND = "f1" * 16, "5e" * 16  # stream ids: hex, as the spool makes them


class FlakySpool(Collector):
    """The append contract with a spool that refuses some payloads (disk full) and then starts
    a new stream (its file was replaced)."""

    def __init__(self, refuse: set[int], new_stream_at: int) -> None:
        super().__init__()
        self.calls = 0
        self.refuse = refuse
        self.new_stream_at = new_stream_at

    def __call__(self, build: Any) -> int:
        self.calls += 1
        if self.calls in self.refuse:
            raise SpoolError("disk full")
        stream = FIRST if self.calls < self.new_stream_at else SECOND
        seq = sum(1 for p in self.payloads if p.properties["stream"] == stream)
        self.payloads.append(build(stream, seq))
        return seq


def test_a_refused_append_costs_one_payload_and_a_new_stream_gets_its_schema() -> None:
    from edge.simulator.vehicle import DEMO_DBC, VehicleSimulator

    config = parse_config(
        {"buses": [{"name": "can0", "dbc": [str(DEMO_DBC)]}], "batch": {"max_age": 1.0}}
    )
    spool = FlakySpool(refuse={3, 4}, new_stream_at=8)
    processor = Processor(config, spool)
    frames = list(VehicleSimulator(seed=2, start_time=1000.0, channel="can0").frames(12))
    processor.process(frames)
    processor.flush()
    stats = processor.stats()
    assert stats.spool_errors == 2
    assert stats.payload_bytes == sum(len(p.body) for p in spool.payloads)
    kinds = [(p.properties["stream"], p.properties["kind"]) for p in spool.payloads]
    assert kinds[0] == (FIRST, "schema")
    second = [kind for stream, kind in kinds if stream == SECOND]
    assert second[:2] == ["data", "schema"]  # the new stream's schema follows at once
    decoder = PayloadReader()
    rows = [
        r
        for p in sorted(spool.payloads, key=lambda p: p.properties["kind"] != "schema")
        for r in decoder.rows(p.body)
    ]
    assert 0 < len(rows) < stats.samples  # the two refused batches are the only loss


def test_payloads_made_before_the_date_was_set_say_how_to_place_them() -> None:
    from edge.clock import BOOT_ID, FakeClock
    from edge.simulator.vehicle import DEMO_DBC, VehicleSimulator
    from edge.wire.codec import unpack

    config = parse_config(
        {"buses": [{"name": "can0", "dbc": [str(DEMO_DBC)]}], "batch": {"max_age": 1.0}}
    )
    clock = FakeClock(start=3600.0, synchronized=False)  # an RTC-less gateway, an hour after boot
    spool = Collector()
    processor = Processor(config, spool, clock=clock)
    frames = VehicleSimulator(seed=2, start_time=3600.0, channel="can0").frames(2)
    processor.process(list(frames))
    processor.flush()
    clock.advance(10)
    clock.set_wall(1_796_000_000.0)  # NTP sets the date
    for _ in range(2):
        frames = VehicleSimulator(seed=3, start_time=1_796_000_000.0, channel="can0").frames(1)
        processor.process(list(frames))
        processor.flush()
    envelopes = [unpack(p.body) for p in spool.payloads]
    schema = envelopes[0]
    assert schema.kind == "schema"
    assert schema.envelope["ext"]["clock"] == {"boot": BOOT_ID, "offset": 0.0, "synced": False}
    data = [e.envelope.get("ext", {}).get("clock") for e in envelopes if e.kind == "data"]
    offset = 1_796_000_000.0 - 3610.0  # wall - monotonic once the date is right
    assert data[0] == {"offset": 0.0}  # before: wall == monotonic here, both wrong
    assert {"offset": offset, "synced": True} in data  # the reference, once
    assert data[-1] is None  # then nothing: the clock is right
    # What the cloud does: shift the early payload's times by the difference of the offsets.
    assert offset - data[0]["offset"] == pytest.approx(1_796_000_000.0 - 3610.0)


# --- faults of our own (issue 10): a frame, never a chunk --------------------------------------


def accounted(stats: Any) -> int:
    decode = stats.decode
    return decode.decoded + decode.repeated + sum(decode.skipped.values()) + decode.lost


@pytest.mark.parametrize("log", LOGS, ids=[log.id for log in LOGS])
def test_every_frame_of_every_corpus_log_is_accounted_for(log: CorpusLog) -> None:
    """read = decoded + repeated + skipped by reason + lost, with nothing lost."""
    require_corpus()
    frames = frames_of(log, None, 20_000)
    processor = Processor(parse_config(log.config()), Collector())
    for start in range(0, len(frames), 256):
        processor.process(frames[start : start + 256])
    processor.flush()
    stats = processor.stats()
    assert stats.frames == len(frames) == accounted(stats)
    assert stats.decode.lost == 0 and stats.lost_rows == 0


def busiest_fast_message(processor: Processor, frames: list[can.Message]) -> int:
    """The arbitration ID of the commonest message that takes the fast path."""
    counts: dict[int, int] = defaultdict(int)
    for msg in frames:
        counts[msg.arbitration_id] += 1
    bus = processor.bus_decoders[0]
    for frame_id, _ in sorted(counts.items(), key=lambda item: -item[1]):
        track = bus.track(frame_id, False)
        if track is not None and track.deferred:
            return frame_id
    raise AssertionError("no message on the fast path")


def test_a_failing_fast_path_costs_one_frame_and_falls_back_to_cantools(
    caplog: pytest.LogCaptureFixture,
) -> None:
    require_corpus()
    log = next(log for log in LOGS if log.id == "kona")
    frames = frames_of(log, None, 6_000)
    clean = Collector()
    reference = Processor(parse_config(log.config()), clean)
    reference.process(frames)
    reference.flush()

    collector = Collector()
    processor = Processor(parse_config(log.config()), collector)
    frame_id = busiest_fast_message(processor, frames)
    track = processor.bus_decoders[0].track(frame_id, False)
    assert track is not None and track.direct is not None
    real, calls = track.direct, []

    def flaky(data: Any) -> Any:  # a bug in the fast path, on its 5th frame only
        calls.append(data)
        if len(calls) == 5:
            raise RuntimeError("fast path bug")
        return real(data)

    track.direct = flaky
    for start in range(0, len(frames), 256):
        processor.process(frames[start : start + 256])
    processor.flush()
    stats = processor.stats()
    assert stats.decode.lost == 1 and stats.decode.lost_reasons == {"RuntimeError": 1}
    assert stats.frames == len(frames) == accounted(stats)
    assert track.direct is None and not track.deferred  # cantools decodes it from now on
    assert "processing a frame failed" in caplog.text
    # Every other message's rows are exactly the clean run's; the faulty one misses at most
    # the row of the lost frame.
    name = processor.bus_decoders[0].message_name(track)
    got, want = collector.rows(), clean.rows()
    assert {k: v for k, v in got.items() if k[1] != name} == {
        k: v for k, v in want.items() if k[1] != name
    }
    for key, rows in want.items():
        if key[1] == name:
            assert len(want[key]) - len(got[key]) in (0, 1)
            assert set(got[key]) <= set(rows)


def test_a_message_that_cannot_be_set_up_loses_only_its_own_frames(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    require_corpus()
    log = next(log for log in LOGS if log.id == "kona")
    frames = frames_of(log, None, 6_000)
    processor = Processor(parse_config(log.config()), Collector())
    bus = processor.bus_decoders[0]
    victim = busiest_fast_message(processor, frames)
    bus.standard.pop(victim)  # set up again on its next frame, which fails
    real = bus._new_track

    def broken(message: Any, source_address: Any) -> Any:
        if message.frame_id == victim:
            raise KeyError("a bug in setting up")
        return real(message, source_address)

    monkeypatch.setattr(bus, "_new_track", broken)
    processor.process(frames)
    stats = processor.stats()
    victims = sum(
        1
        for m in frames
        if m.arbitration_id == victim and not m.is_extended_id and m.channel == bus.name
    )
    assert stats.decode.lost == victims and stats.decode.lost_reasons == {"setup:KeyError": victims}
    assert stats.frames == len(frames) == accounted(stats)
    assert stats.decode.decoded > 0


def test_unknown_ids_are_remembered_up_to_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bus flooded with random 29-bit IDs does not grow memory without bound (issue 12,
    item 13): past MAX_CACHED_UNKNOWN they are looked up each time, and still counted."""
    import edge.processing.decode

    require_corpus()
    monkeypatch.setattr(edge.processing.decode, "MAX_CACHED_UNKNOWN", 100)
    log = next(log for log in LOGS if log.id == "kona")
    processor = Processor(parse_config(log.config()), Collector())
    frames = [
        can.Message(
            timestamp=i * 0.001, arbitration_id=0x1000000 + i, is_extended_id=True, channel="can0"
        )
        for i in range(1000)
    ]
    processor.process(frames)
    processor.process(frames)
    assert len(processor.bus_decoders[0].extended) == 100
    assert processor.stats().decode.skipped == {"unknown_id": 2000}


def test_campaigns_need_the_engine_handed_in() -> None:
    """The processing stage imports nothing of the campaigns (tests/test_layout.py): whoever
    builds a processor for a configuration with campaigns hands it the engine, and one that
    forgets is told so at once, before any frame."""
    from edge.campaigns.engine import CampaignEngine
    from edge.simulator.vehicle import DEMO_DBC

    bus = {"name": "can0", "dbc": [str(DEMO_DBC)]}
    campaign = {"name": "fast", "condition": "ESC_Status.ESC_VehicleSpeed > 20"}
    config = parse_config({"vehicle_id": "test", "buses": [bus], "campaigns": [campaign]})
    with pytest.raises(ValueError, match="campaigns=CampaignEngine"):
        Processor(config, Collector())
    processor = Processor(config, Collector(), campaigns=CampaignEngine)
    assert isinstance(processor.campaigns, CampaignEngine)
    assert Processor(parse_config({"buses": [bus]}), Collector()).campaigns is None
