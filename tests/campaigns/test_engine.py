"""The campaign engine, on the simulator's drive and on real corpus logs: every capture holds
exactly cantools' values of every frame of its window; triggers, intervals, expiry, budgets,
snapshots, ``getSignals``; priority delivery through the real spool, forwarder and mosquitto."""

from __future__ import annotations

import itertools
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import can
import cantools
import pytest

from edge.campaigns.engine import CampaignEngine, raw_frames
from edge.clock import FakeClock
from edge.config.campaigns import CampaignConfig
from edge.config.model import parse_config
from edge.errors import ConfigError
from edge.processing.processor import Processor
from edge.simulator.vehicle import DEMO_DBC, VehicleSimulator
from edge.wire.codec import PayloadReader, Row, unpack
from edge.wire.payload import Payload
from tests.processing.test_processor import frames_of
from tests.support.corpus import LOGS, require_corpus

DB = cantools.database.load_file(str(DEMO_DBC))
STREAM = "7e57" * 8


class Collector:
    """The spool's ``append`` contract with priorities, in memory (seq in append order)."""

    def __init__(self) -> None:
        self.payloads: list[tuple[int, Payload]] = []

    def __call__(self, build: Any, priority: int = 5) -> int:
        seq = len(self.payloads)
        self.payloads.append((priority, build(STREAM, seq)))
        return seq

    def decoded(self) -> list[tuple[dict[str, Any], list[Row]]]:
        """(ext, rows) of every data payload, schemas first as a cloud reader would."""
        decoder = PayloadReader()
        out = []
        ordered = sorted(self.payloads, key=lambda p: p[1].properties["kind"] != "schema")
        for _, payload in ordered:
            decoded, rows = decoder.decode(payload.body)
            if decoded.kind == "data":
                out.append((dict(decoded.envelope.get("ext", {})), rows))
        return out

    def captures(self, campaign: str) -> list[tuple[dict[str, Any], list[Row]]]:
        return [(ext, rows) for ext, rows in self.decoded() if ext.get("campaign") == campaign]


def tick(t: float) -> float:
    return round(t * 1000) * 1_000_000 / 1_000_000_000


def drive(seconds: float, seed: int = 2) -> list[can.Message]:
    return list(VehicleSimulator(seed=seed, start_time=1000.0, channel="can0").frames(seconds))


def config(*campaigns: dict[str, Any], **overrides: Any) -> Any:
    data: dict[str, Any] = {
        "vehicle_id": "test",
        "buses": [{"name": "can0", "dbc": [str(DEMO_DBC)]}],
        "campaigns": list(campaigns),
    }
    data.update(overrides)
    return parse_config(data)


def run(
    cfg: Any, frames: Sequence[can.Message], chunk: int = 500, clock: Any = None
) -> tuple[Processor, Collector]:
    collector = Collector()
    processor = Processor(cfg, collector, clock=clock, campaigns=CampaignEngine)
    for start in range(0, len(frames), chunk):
        processor.process(frames[start : start + chunk])
    processor.flush()
    assert processor.campaigns is not None
    processor.campaigns.flush()
    return processor, collector


def expected_rows(
    db: Any,
    frames: Iterable[can.Message],
    messages: set[str],
    start: float,
    end: float,
    bus: str = "can0",
) -> list[tuple[float, str, str, Any]]:
    """cantools' values of every frame of ``messages`` with start <= t <= end."""
    out = []
    for msg in frames:
        if not start <= msg.timestamp <= end or msg.is_error_frame or msg.is_remote_frame:
            continue
        if msg.channel != bus:
            continue
        try:
            message = db.get_message_by_frame_id(msg.arbitration_id)
        except KeyError:
            continue
        if message.name not in messages or bool(message.is_extended_frame) != msg.is_extended_id:
            continue
        try:
            values = message.decode(bytes(msg.data), decode_choices=False)
        except Exception:
            continue
        for name, value in values.items():
            out.append((tick(msg.timestamp), message.name, name, value))
    return sorted(out)


def actual_rows(rows: Iterable[Row]) -> list[tuple[float, str, str, Any]]:
    return sorted((r.time, r.message, r.signal, r.value) for r in rows)


def speed_edges(frames: Iterable[can.Message], threshold: float) -> list[float]:
    """Independent reference: times ESC_VehicleSpeed rose above ``threshold``."""
    message = DB.get_message_by_name("ESC_Status")
    out, above = [], False
    for msg in frames:
        if msg.arbitration_id != message.frame_id:
            continue
        now = message.decode(bytes(msg.data))["ESC_VehicleSpeed"] > threshold
        if now and not above:
            out.append(msg.timestamp)
        above = now
    return out


FAST = {
    "name": "fast",
    "condition": "ESC_Status.ESC_VehicleSpeed > 20",
    "signals": ["ESC_Status.*", "ESC_BrakeStatus.*"],
    "before": 2.0,
    "after": 1.5,
    "priority": 0,
}


def test_captures_hold_cantools_values_of_every_frame_of_their_window() -> None:
    frames = drive(120)
    processor, collector = run(config(FAST, batch={"max_age": 0.5}), frames, chunk=97)
    captures = collector.captures("fast")
    edges = speed_edges(frames, 20)
    assert edges and [ext["trigger"] for ext, _ in captures] == edges
    for ext, rows in captures:
        assert ext["condition"] == FAST["condition"]
        assert {r.campaign for r in rows} == {"fast"}
        want = expected_rows(
            DB,
            frames,
            {"ESC_Status", "ESC_BrakeStatus"},
            ext["trigger"] - 2.0,
            ext["trigger"] + 1.5,
        )
        assert actual_rows(rows) == want
    # the always campaign's payloads are untouched and say no campaign
    assert any("campaign" not in ext for ext, _ in collector.decoded())
    stats = processor.campaigns.describe()["fast"]  # type: ignore[union-attr]
    assert stats["triggers"] == stats["captures"] == len(edges)


def test_min_interval_and_while_true() -> None:
    frames = drive(90)
    campaign = {**FAST, "trigger": "while_true", "min_interval": 3.0, "after": 0.5}
    processor, collector = run(config(campaign), frames)
    triggers = [ext["trigger"] for ext, _ in collector.captures("fast")]
    assert len(triggers) > 3
    assert all(b - a >= 3.0 for a, b in itertools.pairwise(triggers))
    # reference: the first ESC_Status frame above 20 at least 3 s after the previous trigger
    message = DB.get_message_by_name("ESC_Status")
    want: list[float] = []
    for msg in frames:
        if msg.arbitration_id == message.frame_id:
            fast = message.decode(bytes(msg.data))["ESC_VehicleSpeed"] > 20
            if fast and (not want or msg.timestamp - want[-1] >= 3.0):
                want.append(msg.timestamp)
    assert triggers == want
    counters = processor.campaigns.describe()["fast"]  # type: ignore[union-attr]
    assert counters["suppressed"] > 0


def test_overlapping_captures_are_each_complete() -> None:
    frames = drive(90)
    wide = {**FAST, "trigger": "while_true", "min_interval": 1.0, "before": 3.0, "after": 3.0}
    narrow = {**FAST, "name": "narrow", "before": 0.5, "after": 0.5}
    _, collector = run(config(wide, narrow), frames)
    wides = collector.captures("fast")
    assert len(wides) > 2 and wides[1][0]["trigger"] - wides[0][0]["trigger"] < 6
    for name, before, after in (("fast", 3.0, 3.0), ("narrow", 0.5, 0.5)):
        for ext, rows in collector.captures(name):
            t = ext["trigger"]
            messages = {"ESC_Status", "ESC_BrakeStatus"}
            assert actual_rows(rows) == expected_rows(DB, frames, messages, t - before, t + after)


def test_expiry_stops_a_campaign_by_the_wall_clock() -> None:
    clock = FakeClock(1_800_000_000.0)
    expiry = "2027-01-15T08:00:20Z"  # 1_800_000_020
    campaign = {**FAST, "trigger": "while_true", "min_interval": 1.0, "expiry": expiry}
    frames = drive(60)
    collector = Collector()
    processor = Processor(config(campaign), collector, clock=clock, campaigns=CampaignEngine)
    engine = processor.campaigns
    assert engine is not None
    for start in range(0, len(frames), 500):
        processor.process(frames[start : start + 500])
        clock.advance(500 / 1100)  # about the drive's frame rate: 60 s of wall time in all
    engine.flush()
    last = [ext["trigger"] for ext, _ in collector.captures("fast")][-1]
    assert engine.describe()["fast"]["state"] == "expired"
    assert last < frames[-1].timestamp - 20  # nothing after expiry, though speed stayed high


def test_a_capture_across_a_restart_keeps_what_was_spooled(tmp_path: Path) -> None:
    """Processing stops (as at kill -9) while a capture is open: the payloads spooled before
    stay, the open capture is simply not sent, and a new engine after it duplicates nothing."""
    frames = drive(60)
    edges = speed_edges(frames, 20)
    cut = next(i for i, m in enumerate(frames) if m.timestamp > edges[0] + 0.5)  # inside after
    first = Collector()
    processor = Processor(config(FAST), first, campaigns=CampaignEngine)
    processor.process(frames[:cut])  # then the process dies: no flush
    assert processor.campaigns is not None and len(processor.campaigns._open) == 1
    assert first.captures("fast") == []
    second = Collector()
    processor = Processor(config(FAST), second, campaigns=CampaignEngine)
    processor.process(frames[cut:])
    processor.flush()
    triggers = [ext["trigger"] for ext, _ in second.captures("fast")]
    # the new engine starts from "false": a condition already true is a new rising edge
    assert edges[0] not in triggers and triggers == speed_edges(frames[cut:], 20)


def test_raw_frames_carry_the_window_bytes() -> None:
    frames = drive(60)
    _, collector = run(config({**FAST, "raw_frames": True}), frames)
    decoder = PayloadReader()
    for _, payload in sorted(collector.payloads, key=lambda p: p[1].properties["kind"] != "schema"):
        decoded, _ = decoder.decode(payload.body)
        ext = decoded.envelope.get("ext", {})
        if ext.get("campaign") != "fast":
            continue
        schema = decoder.schemas[decoded.envelope["schema"]]
        got = raw_frames(ext, schema, decoded.envelope["res"])
        t = ext["trigger"]
        ids = {DB.get_message_by_name(n).frame_id for n in ("ESC_Status", "ESC_BrakeStatus")}
        want = [
            (tick(m.timestamp), m.arbitration_id, bytes(m.data))
            for m in frames
            if m.arbitration_id in ids and t - 2.0 <= m.timestamp <= t + 1.5
        ]
        assert sorted((a, b, c) for a, _, _, b, c in got) == sorted(want)


def test_daily_budget_drops_and_counts() -> None:
    frames = drive(120)
    campaign = {**FAST, "trigger": "while_true", "min_interval": 1.0, "daily_bytes": 4000}
    processor, collector = run(config(campaign), frames)
    counters = processor.campaigns.describe()["fast"]  # type: ignore[union-attr]
    assert counters["budgetDropped"] > 0
    assert counters["bytes"] <= 4000
    assert counters["captures"] == len(collector.captures("fast"))
    assert counters["captures"] + counters["budgetDropped"] == counters["triggers"]


def test_periodic_snapshots_hold_the_latest_values() -> None:
    frames = drive(60)
    campaign = {"name": "snap", "collect": "periodic", "period": 10, "signals": ["BMS_Pack*"]}
    _, collector = run(config(campaign), frames, chunk=333)
    snaps = collector.captures("snap")
    assert len(snaps) == 5  # at 10, 20, ... 50 s after the first frame
    message = DB.get_message_by_name("BMS_PackStatus")
    for ext, rows in snaps:
        latest = [m for m in frames if m.arbitration_id == message.frame_id]
        latest = [m for m in latest if m.timestamp <= ext["snapshot"]]
        want = message.decode(bytes(latest[-1].data), decode_choices=False)
        assert {r.signal: r.value for r in rows} == want
        assert {r.time for r in rows} == {tick(latest[-1].timestamp)}


def test_get_signals_and_trigger_by_name() -> None:
    frames = drive(20)
    collector = Collector()
    processor = Processor(config(FAST), collector, campaigns=CampaignEngine)
    engine = processor.campaigns
    assert engine is not None
    processor.process(frames)
    latest = engine.signals(["TCM_GearStatus.*", "ESC_Status.ESC_VehicleSpeed"])
    message = DB.get_message_by_name("TCM_GearStatus")
    last = [m for m in frames if m.arbitration_id == message.frame_id][-1]
    lever = latest["TCM_GearStatus.TCM_GearLever"]
    assert lever["time"] == last.timestamp
    assert lever["choice"] == str(message.decode(bytes(last.data))["TCM_GearLever"])
    assert "ESC_Status.ESC_Counter" not in latest
    capture = engine.trigger("fast")
    ids = {DB.get_message_by_name(n).frame_id for n in ("ESC_Status", "ESC_BrakeStatus")}
    assert capture.trigger == [m for m in frames if m.arbitration_id in ids][-1].timestamp
    processor.process(drive(25)[len(frames) :])
    assert any(ext["condition"] == "capture()" for ext, _ in collector.captures("fast"))
    with pytest.raises(KeyError):
        engine.trigger("nope")


@pytest.mark.parametrize(
    ("condition", "column", "reason"),
    [
        ("ESC_VehicleSpeed >", 19, "syntax"),
        ("NoSuchSignal > 2", 1, "no signal 'NoSuchSignal'"),
        ("TCM_GearLever == 'X'", 18, "no choice 'X'"),
        ("__import__('os')", 1, "unknown function"),
    ],
)
def test_a_bad_condition_stops_start_up_naming_the_field(
    condition: str, column: int, reason: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Processor(config({**FAST, "condition": condition}), Collector(), campaigns=CampaignEngine)
    assert info.value.field == "campaigns[0].condition"
    assert f"column {column}" in info.value.reason and reason in info.value.reason


def test_capture_on_a_real_corpus_log() -> None:
    require_corpus()
    log = next(log for log in LOGS if log.id == "rav4")
    frames = frames_of(log, None, 200_000)
    base = parse_config(log.config())
    bus = base.buses[0]
    db = cantools.database.load_file(bus.databases[0], strict=bus.strict)
    speed = db.get_message_by_name("SPEED")
    values = [
        speed.decode(bytes(m.data))["SPEED"]
        for m in frames
        if m.channel == bus.name and m.arbitration_id == speed.frame_id
    ]
    threshold = round((min(values) + max(values)) / 2, 1)
    campaign = {
        "name": "speed",
        "condition": f"SPEED.SPEED > {threshold}",
        "signals": ["SPEED.*", "WHEEL_SPEEDS.*"],
        "before": 1.0,
        "after": 1.0,
    }
    cfg = parse_config({**log.config(), "campaigns": [campaign]})
    _, collector = run(cfg, frames)
    captures = collector.captures("speed")
    assert captures
    for ext, rows in captures:
        t = ext["trigger"]
        assert not math.isnan(t)
        messages = {"SPEED", "WHEEL_SPEEDS"}
        want = expected_rows(db, frames, messages, t - 1.0, t + 1.0, bus=bus.name)
        assert actual_rows(rows) == want


def test_counters_per_campaign_are_kept() -> None:
    frames = drive(60)
    processor, collector = run(config(FAST), frames)
    counters = processor.campaigns.counters()  # type: ignore[union-attr]
    assert counters["fast"]["payloads"] == len(collector.captures("fast"))
    sizes = defaultdict(int)
    for _, payload in collector.payloads:
        if payload.properties.get("campaign") == "fast" and payload.properties["kind"] == "data":
            sizes["fast"] += len(payload.body)
    assert counters["fast"]["bytes"] == sizes["fast"]
    assert all(unpack(p.body).kind for _, p in collector.payloads)


def steady_hour(seconds: float = 3600.0) -> list[can.Message]:
    """ESC_Status and ESC_BrakeStatus at 10 Hz for ``seconds`` below 20 km/h, then a second at
    30 km/h: a routine hour with one event at its end."""
    status = DB.get_message_by_name("ESC_Status")
    brake = DB.get_message_by_name("ESC_BrakeStatus")
    frames = []
    for i in range(int((seconds + 1) * 10)):
        t = 1000.0 + i / 10
        speed = 10 + 5 * math.sin(i / 600) if t < 1000.0 + seconds else 30.0
        values = {"ESC_VehicleSpeed": round(speed, 2), "ESC_LongAccel": 0, "ESC_YawRate": 0}
        values |= {"ESC_Counter": i % 16, "ESC_Checksum": 0}
        frames.append(
            can.Message(
                timestamp=t,
                arbitration_id=status.frame_id,
                data=status.encode(values),
                is_extended_id=False,
                channel="can0",
            )
        )
        pressure = {
            "ESC_BrakePressure": 0,
            "ESC_BrakePedalPressed": 0,
            "ESC_ABSActive": 0,
            "ESC_ParkingBrake": 0,
        }
        frames.append(
            can.Message(
                timestamp=t + 0.001,
                arbitration_id=brake.frame_id,
                data=brake.encode(pressure),
                is_extended_id=False,
                channel="can0",
            )
        )
    return frames


def test_a_capture_goes_first_behind_an_hour_of_routine_backlog(
    tmp_path: Path, mosquitto_factory: Any, tls_files: Any
) -> None:
    from edge.delivery.forwarder import Forwarder
    from edge.delivery.spool import Spool
    from edge.delivery.uplinks.mqtt import MqttOptions, MqttUplink
    from tests.support.mosquitto import Subscriber, free_port
    from tests.support.tcpproxy import TcpProxy
    from tests.support.waiting import wait_for

    broker = mosquitto_factory("127.0.0.1", free_port())
    spool = Spool(tmp_path / "spool.db")
    processor = Processor(
        config({**FAST, "after": 0.5}, batch={"max_age": 5.0}),
        lambda build, priority=5: spool.append(build, priority=priority),
        campaigns=CampaignEngine,
    )
    # The uplink is down: nothing listens where it connects until the proxy opens there.
    port = free_port()
    options = {"host": "127.0.0.1", "port": port, "ca_file": str(tls_files.ca_file)}
    uplink = MqttUplink(MqttOptions.parse({**options, "keepalive": 5}, "uplink"))
    forwarder = Forwarder(spool, uplink, send_timeout=2, backoff_initial=0.05, backoff_max=0.2)
    forwarder.start()
    try:
        frames = steady_hour()
        for start in range(0, len(frames), 1000):
            processor.process(frames[start : start + 1000])
        wait_for(lambda: forwarder.stats().transient_errors > 0, 10)
        depth = spool.stats().depth
        assert depth > 700  # 720 batches of 5 s, schemas, the capture
        with (
            Subscriber(broker, "#") as subscriber,
            TcpProxy(("127.0.0.1", port), ("127.0.0.1", broker.port)),
        ):
            received = [subscriber.get(timeout=20) for _ in range(depth)]
    finally:
        forwarder.stop()
        uplink.close()
        spool.close()
    properties = [dict(m.properties.UserProperty) for m in received]
    first_data = next(p for p in properties if p["kind"] == "data")
    assert first_data.get("campaign") == "fast" and first_data["priority"] == "0"
    assert [p["kind"] for p in properties[: properties.index(first_data)]] == ["schema"]
    routine = [int(p["seq"]) for p in properties if "priority" not in p]  # the always campaign
    assert routine == sorted(routine) and len(routine) == depth - 2  # order kept within one


def write_log(path: Path, frames: Sequence[can.Message]) -> None:
    with can.Logger(str(path)) as logger:
        for msg in frames:
            logger.on_message_received(msg)


def test_kill_9_while_a_capture_is_open(tmp_path: Path) -> None:
    """A real ``can-telemetry run`` replaying in real time is killed (SIGKILL) while a capture
    is open: what reached the outbox stays, the open capture is simply not sent, and the next
    run numbers on without a gap and sends nothing twice for it."""
    import signal
    import subprocess
    import sys
    import time

    fast = steady_hour(20.0)  # 10-15 km/h for 20 s, then 30 km/h for 1 s: repeat that second
    last = [m for m in fast if m.timestamp >= 1020.0]
    frames = fast + [
        can.Message(
            timestamp=m.timestamp + k,
            arbitration_id=m.arbitration_id,
            data=m.data,
            is_extended_id=False,
            channel="can0",
        )
        for k in range(1, 20)
        for m in last
    ]
    event = 1020.0
    first = [m for m in frames if m.timestamp < event + 8]
    second = [m for m in frames if m.timestamp >= event + 8]
    write_log(tmp_path / "first.log", first)
    write_log(tmp_path / "second.log", second)
    cfg = tmp_path / "car.toml"
    cfg.write_text(
        f"""
vehicle_id = "car1"
[[buses]]
name = "can0"
dbc = "{DEMO_DBC}"
[batch]
max_age = 1.0
[spool]
path = "spool.db"
[uplink]
type = "file"
path = "outbox"
[[campaigns]]
name = "fast"
condition = "ESC_VehicleSpeed > 20"
signals = ["ESC_Status.*"]
before = 2.0
after = 30.0
priority = 0
"""
    )
    outbox = tmp_path / "outbox"

    def run(log: str, speed: str) -> subprocess.Popen[str]:
        command = ["run", "--config", str(cfg), "--replay", str(tmp_path / log)]
        return subprocess.Popen(
            [sys.executable, "-m", "edge", *command, "--speed", speed],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    # 28 s at 4x: the capture opens at 20 s (5 s of wall time) and waits 30 s of frame time.
    process = run("first.log", "4")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and len(list(outbox.glob("*.data.ctl"))) < 18:
        time.sleep(0.05)
    time.sleep(1.0)  # past the event (frame time 1020), before the log's end (1028)
    assert process.poll() is None
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=10)  # reaps it and closes its pipe
    before = {f.name: f.read_bytes() for f in outbox.glob("*.ctl")}
    assert len(before) >= 15
    assert campaign_triggers(before) == set()

    process = run("second.log", "max")
    output, _ = process.communicate(timeout=60)
    assert process.returncode == 0, output
    after = {f.name: f.read_bytes() for f in outbox.glob("*.ctl")}
    assert all(after[name] == body for name, body in before.items())  # nothing lost
    seqs = sorted(int(PAYLOAD_SEQ.search(name)[1]) for name in after)  # type: ignore[index]
    assert seqs == list(range(len(seqs)))  # one stream, gap-free, each once
    triggers = campaign_triggers(after)
    # the killed capture (trigger at the event) is not there; the new run's first frame is
    # above 20 km/h already: a new rising edge, a new capture (flushed at the end of the replay)
    assert triggers == {second[0].timestamp}


PAYLOAD_SEQ = re.compile(r"-(\d{12})\.")


def campaign_triggers(files: dict[str, bytes]) -> set[float]:
    """Trigger times of the captures among outbox files (name -> bytes)."""
    decoder = PayloadReader()
    triggers = set()
    for _, body in sorted(files.items(), key=lambda item: ".schema." not in item[0]):
        decoded, _ = decoder.decode(body)
        ext = decoded.envelope.get("ext", {})
        if ext.get("campaign") == "fast":
            triggers.add(ext["trigger"])
    return triggers


def test_conditions_name_vss_paths_the_configuration_maps() -> None:
    require_corpus()
    from edge.config.model import load_config

    example = Path(__file__).resolve().parents[2] / "examples" / "vss_tesla.toml"
    base = load_config(example)
    probe = Processor(base, Collector(), campaigns=CampaignEngine)
    (link,) = probe.vss.resolve("Vehicle.Speed")
    assert dict(link.transform.spec) == {}  # km/h both: the same threshold on both names
    log = next(log for log in LOGS if log.id == "tesla")
    frames = frames_of(log, None, None)
    dbc_name = f"{link.message}.{link.signal}"
    campaigns = tuple(
        CampaignConfig(
            name=name,
            collect="condition",
            condition=f"{subject} >= 0 and changed({subject})",
            trigger="while_true",
            min_interval=5.0,
            signals=(f"{link.message}.*",),
            before=1.0,
            after=1.0,
        )
        for name, subject in (("vss", "Vehicle.Speed"), ("dbc", dbc_name))
    )
    cfg = replace(base, campaigns=campaigns, replay=None)
    _, collector = run(cfg, frames)
    by_vss = [ext["trigger"] for ext, _ in collector.captures("vss")]
    assert by_vss and by_vss == [ext["trigger"] for ext, _ in collector.captures("dbc")]
    # getSignals answers VSS paths too: the latest frame of the signal, through the mapping.
    processor, _ = run(cfg, frames)
    assert processor.campaigns is not None
    answer = processor.campaigns.signals(["Vehicle.Speed", dbc_name])
    message = next(e.db for e in processor.campaigns._entries if e.db.name == link.message)
    last = [m for m in frames if m.arbitration_id == message.frame_id][-1]
    expected = message.decode(bytes(last.data), decode_choices=False)[link.signal]
    assert answer["Vehicle.Speed"]["value"] == expected == answer[dbc_name]["value"]
    assert answer["Vehicle.Speed"]["time"] == last.timestamp
    assert answer["Vehicle.Speed"]["signal"] == dbc_name
    with pytest.raises(ConfigError, match=r"no signal 'Vehicle\.Nope'"):
        bad = replace(campaigns[0], condition="Vehicle.Nope > 1")
        Processor(replace(base, campaigns=(bad,)), Collector(), campaigns=CampaignEngine)


# -- J1939: campaigns match by PGN, whatever the priority and source address -----------------

EEC1 = DB.get_message_by_name("EEC1")


def j1939_frames(seconds: float = 20.0) -> list[can.Message]:
    """EEC1 (PGN 61444) at 10 Hz from three source addresses, two of them at another priority
    than the database's; the engine at 0x17 passes 2000 rpm at 10 s."""
    frames = []
    for i in range(int(seconds * 10)):
        t = 1000.0 + i / 10
        for k, (priority, source) in enumerate(((3, 0x00), (6, 0x01), (6, 0x17))):
            speed = 900.0 + 20 * k + (1500.0 if source == 0x17 and t >= 1010.0 else 0.0)
            values = {
                "EEC1_EngineTorqueMode": 0,
                "EEC1_DriverDemandTorque": 10 + (i % 7),  # every frame differs
                "EEC1_ActualEngineTorque": 0,
                "EEC1_EngineSpeed": speed,
                "EEC1_SourceAddress": source,
            }
            frame_id = priority << 26 | (EEC1.frame_id & 0x3FFFF00) | source
            frames.append(
                can.Message(
                    timestamp=t + k / 1000,
                    arbitration_id=frame_id,
                    data=EEC1.encode(values),
                    is_extended_id=True,
                    channel="can0",
                )
            )
    return frames


def test_j1939_campaigns_match_any_source_address_and_priority() -> None:
    frames = j1939_frames()
    assert not any(m.arbitration_id == EEC1.frame_id for m in frames[1::3])  # other IDs
    campaign = {
        "name": "rpm",
        "condition": "EEC1.EEC1_EngineSpeed > 2000",
        "signals": ["EEC1.*"],
        "before": 1.0,
        "after": 0.5,
        # the condition reads one series, the latest value from any source address: it is
        # false again at each frame of the others, true at each of 0x17
        "min_interval": 60.0,
    }
    cfg = config(campaign, buses=[{"name": "can0", "dbc": [str(DEMO_DBC)], "j1939": True}])
    processor, collector = run(cfg, frames, chunk=64)
    ((ext, rows),) = collector.captures("rpm")
    trigger = next(
        m.timestamp for m in frames if m.arbitration_id & 0xFF == 0x17 and m.timestamp >= 1010
    )
    assert ext["trigger"] == trigger
    want = sorted(
        (tick(m.timestamp), m.arbitration_id & 0xFF, name, value)
        for m in frames
        if trigger - 1.0 <= m.timestamp <= trigger + 0.5
        for name, value in EEC1.decode(bytes(m.data), decode_choices=False).items()
    )
    got = sorted((r.time, r.source, r.signal, r.value) for r in rows)
    assert got == want and {r.source for r in rows} == {0x00, 0x01, 0x17}
    # the last-known state answers each name from the newest frame, with its source address
    latest = processor.signals(["EEC1.EEC1_EngineSpeed"])["EEC1.EEC1_EngineSpeed"]
    assert (latest["time"], latest["sourceAddress"]) == (frames[-1].timestamp, 0x17)
    history = processor.campaigns.ring_stats()  # type: ignore[union-attr]
    assert history["frames"] > 0 and history["decodeErrors"] == 0


def test_j1939_corpus_truck_campaign_captures_by_pgn() -> None:
    require_corpus()
    log = next(log for log in LOGS if log.id == "j1939-truck")
    frames = frames_of(log, None, 20_000)
    base = parse_config(log.config())
    bus = base.buses[0]
    db = cantools.database.load_file(bus.databases[0], strict=bus.strict)
    eec1 = db.get_message_by_name("EEC1")
    pgn = eec1.frame_id & 0x3FFFF00
    ours = [
        m
        for m in frames
        if m.channel == bus.name and m.is_extended_id and m.arbitration_id & 0x3FFFF00 == pgn
    ]
    assert ours and all(m.arbitration_id != eec1.frame_id for m in ours)  # exact IDs never match
    campaign = {
        "name": "rpm",
        "condition": "EEC1.EngineSpeed >= 0 and changed(EEC1.EngineSpeed)",
        "trigger": "while_true",
        "min_interval": 5.0,
        "signals": ["EEC1.*"],
        "before": 1.0,
        "after": 1.0,
    }
    cfg = parse_config({**log.config(), "campaigns": [campaign]})
    _, collector = run(cfg, frames)
    captures = collector.captures("rpm")
    assert captures
    for ext, rows in captures:
        t = ext["trigger"]
        want = sorted(
            (tick(m.timestamp), m.arbitration_id & 0xFF, name, value)
            for m in ours
            if t - 1.0 <= m.timestamp <= t + 1.0
            for name, value in eec1.decode(bytes(m.data), decode_choices=False).items()
        )
        assert sorted((r.time, r.source, r.signal, r.value) for r in rows) == want


def test_a_capture_larger_than_a_payload_is_split_and_complete() -> None:
    """A 10 s window of every message does not fit in one 4 KB payload: it goes as several,
    each within max_bytes, each saying the same trigger, together exactly cantools' rows."""
    frames = drive(40)
    wide = {**FAST, "signals": ["*"], "before": 5.0, "after": 5.0}
    _, collector = run(config(wide, batch={"max_bytes": 4096}), frames)
    sizes = [
        len(p.body)
        for _, p in collector.payloads
        if p.properties.get("campaign") == "fast" and p.properties["kind"] == "data"
    ]
    by_trigger: dict[float, list[Row]] = defaultdict(list)
    for ext, rows in collector.captures("fast"):
        by_trigger[ext["trigger"]].extend(rows)
    assert list(by_trigger) == speed_edges(frames, 20)
    assert max(sizes) <= 4096 and len(sizes) > 3 * len(by_trigger)  # split, within the limit
    messages = {m.name for m in DB.messages}
    for t, rows in by_trigger.items():
        assert actual_rows(rows) == expected_rows(DB, frames, messages, t - 5.0, t + 5.0)


@pytest.mark.parametrize("recent", [0, 300, 1000])
def test_history_over_a_cap_is_counted_and_the_capture_says_so(
    monkeypatch: pytest.MonkeyPatch, recent: int
) -> None:
    """buffer_frames smaller than the window, which the recent tier does not hold whole: the
    ring keeps its newest frames, counts those it pushed out, and the capture that wanted them
    is counted truncated, holding what was kept."""
    import edge.campaigns.engine as engine_module

    monkeypatch.setattr(engine_module, "RECENT_FRAMES", recent)
    frames = drive(60)
    capped = {**FAST, "before": 5.0, "after": 0.5, "buffer_frames": 100}
    processor, collector = run(config(capped), frames)
    engine = processor.campaigns
    assert engine is not None
    assert engine.ring_stats()["overflow"] > 0
    counters = engine.counters()["fast"]
    assert counters["truncated"] == counters["captures"] >= 1
    for ext, rows in collector.captures("fast"):
        t = ext["trigger"]
        want = expected_rows(DB, frames, {"ESC_Status", "ESC_BrakeStatus"}, t - 5.0, t + 0.5)
        got = actual_rows(rows)
        assert got and set(got) < set(want)  # a later start, nothing invented
        assert max(got) == max(want)  # the end of the window is all there


@pytest.mark.parametrize("budget", [None, 20_000])
def test_captures_by_column_equal_captures_frame_by_frame(
    monkeypatch: pytest.MonkeyPatch, budget: int | None
) -> None:
    """A capture decodes each message's frames of its window at once, by column, no more of
    them at a time than one part holds; frame by frame (the way of multiplexed messages and odd
    lengths) gives the same payloads, parts and counters, with parts cut every few rows and a
    daily budget that cuts a capture short."""
    import edge.campaigns.engine as engine_module

    monkeypatch.setattr(engine_module, "_PART_VALUES", 777)
    frames = drive(60)
    wide = {**FAST, "signals": ["*"], "before": 5.0, "after": 2.0, "raw_frames": True}
    if budget is not None:
        wide["daily_bytes"] = budget
    decoded_at_once: list[int] = []  # values each call decodes: at most about one part's
    by_columns = CampaignEngine._columns_of

    def recorded(decoding: Any, columns: Any, datas: Any) -> Any:
        rows = by_columns(decoding, columns, datas)
        decoded_at_once.append(sum(len(values) for _, values in rows or []))
        return rows

    monkeypatch.setattr(CampaignEngine, "_columns_of", staticmethod(recorded))
    first, by_column = run(config(wide), frames, clock=FakeClock())
    assert decoded_at_once and max(decoded_at_once) < 777 + 64
    monkeypatch.setattr(CampaignEngine, "_columns_of", staticmethod(lambda *args: None))
    processor, by_frame = run(config(wide), frames, clock=FakeClock())
    assert processor.campaigns is not None and first.campaigns is not None
    assert first.campaigns.all_counters() == processor.campaigns.all_counters()
    assert [p.properties for _, p in by_column.payloads] == [
        p.properties for _, p in by_frame.payloads
    ]
    assert by_column.captures("fast") == by_frame.captures("fast")
    assert len(by_column.captures("fast")) > len(speed_edges(frames, 20))  # in parts
    counters = processor.campaigns.counters()["fast"]
    assert counters["rows"] > 0
    if budget is not None:
        assert counters["budgetDropped"] > 0


def test_changed_is_false_when_time_alone_passes() -> None:
    """A condition with ``stale()`` is also evaluated at the end of each chunk, as time passes;
    ``changed(x)`` then says x did not change (no frame is being evaluated), so triggers are
    those of the frames, however the frames are cut into chunks."""
    condition = "changed(ESC_Status.ESC_VehicleSpeed) and not stale(ESC_Status, 10)"
    campaign = {
        "name": "moving",
        "condition": condition,
        "trigger": "while_true",
        "min_interval": 1e-6,  # every frame of the drive is further apart
        "signals": ["ESC_Status.*"],
        "before": 0.0,
        "after": 0.0,
    }
    frames = drive(20.0)
    message = DB.get_message_by_name("ESC_Status")
    changes, previous = 0, None
    for msg in frames:
        if msg.arbitration_id == message.frame_id:
            speed = message.decode(bytes(msg.data), decode_choices=False)["ESC_VehicleSpeed"]
            changes += speed != previous
            previous = speed
    for chunk in (500, 37):
        processor, _ = run(config(campaign), frames, chunk=chunk)
        assert processor.campaigns is not None
        counters = processor.campaigns.counters()["moving"]  # type: ignore[attr-defined]
        assert counters["triggers"] == changes > 10
        assert counters["suppressed"] == 0  # not even a trigger at the frame's own time
