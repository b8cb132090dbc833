"""The demo vehicle database and the simulator that drives it (edge/simulator/vehicle.py)."""

from __future__ import annotations

import itertools
import statistics
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import can
import cantools
import pytest
from cantools.database.can import Database, Message

from edge.simulator.vehicle import DEMO_DBC, VehicleSimulator, run_simulation
from tests.support.corpus import require_corpus

CYCLE_TIMES_MS = {10, 20, 50, 100, 1000}

# --------------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture(scope="module")
def db() -> Database:
    database = cantools.database.load_file(DEMO_DBC, strict=True)
    assert isinstance(database, Database)
    return database


@pytest.fixture(scope="module")
def drive() -> list[can.Message]:
    """Two minutes of the demo car (seed 1: parks, pulls away, turns, stops, engine rests)."""
    return list(VehicleSimulator(seed=1).frames(120.0))


@pytest.fixture(scope="module")
def decoded(
    db: Database, drive: list[can.Message]
) -> dict[str, list[tuple[float, dict[str, Any]]]]:
    """Message name -> [(timestamp, raw-choice decoded signals)] of the drive."""
    result: dict[str, list[tuple[float, dict[str, Any]]]] = defaultdict(list)
    for frame in drive:
        message = _message_of(db, frame)
        result[message.name].append((frame.timestamp, _decode(message, frame)))
    return result


def _message_of(db: Database, frame: can.Message) -> Message:
    for message in db.messages:
        if (
            message.frame_id == frame.arbitration_id
            and message.is_extended_frame == frame.is_extended_id
        ):
            return message
    raise AssertionError(f"frame {frame} is not in the database")


def _decode(message: Message, frame: can.Message) -> dict[str, Any]:
    """Raw-choice values (numbers, not labels) of one frame."""
    values = message.decode(bytes(frame.data), decode_choices=False)
    assert isinstance(values, dict)
    return values


def _load_string(text: str, strict: bool = True) -> Database:
    database = cantools.database.load_string(text, database_format="dbc", strict=strict)
    assert isinstance(database, Database)
    return database


def _signal_series(
    decoded: dict[str, list[tuple[float, dict[str, Any]]]], message: str, signal: str
) -> list[Any]:
    return [values[signal] for _, values in decoded[message] if signal in values]


def _assert_in_range(message: Message, values: dict[str, Any]) -> None:
    for name, value in values.items():
        signal = message.get_signal_by_name(name)
        tolerance = abs(signal.scale) * 1e-6
        if signal.choices and signal.conversion.numeric_scaled_to_raw(value) in signal.choices:
            continue
        if signal.minimum is not None:
            assert value >= signal.minimum - tolerance, (message.name, name, value)
        if signal.maximum is not None:
            assert value <= signal.maximum + tolerance, (message.name, name, value)


@pytest.fixture
def virtual_pair() -> Iterator[tuple[can.BusABC, can.BusABC]]:
    channel = f"test-simulate-{uuid.uuid4()}"
    sender = can.Bus(interface="virtual", channel=channel, preserve_timestamps=True)
    receiver = can.Bus(interface="virtual", channel=channel, preserve_timestamps=True)
    try:
        yield sender, receiver
    finally:
        sender.shutdown()
        receiver.shutdown()


def _drain(bus: can.BusABC) -> list[can.Message]:
    received = []
    while (frame := bus.recv(timeout=0.2)) is not None:
        received.append(frame)
    return received


def _key(frame: can.Message) -> tuple[float, int, bool, bool, bytes]:
    return (
        round(frame.timestamp, 9),
        frame.arbitration_id,
        frame.is_extended_id,
        frame.is_fd,
        bytes(frame.data),
    )


# --------------------------------------------------------------------------------------------
# The database


def test_demo_dbc_is_found_in_the_repository() -> None:
    assert DEMO_DBC.is_file()
    assert DEMO_DBC.name == "demo_vehicle.dbc"


def test_demo_dbc_loads_strictly_with_the_expected_shape(db: Database) -> None:
    signals = [s for m in db.messages for s in m.signals]
    assert 15 <= len(db.messages) <= 20
    assert 80 <= len(signals) <= 100
    for message in db.messages:
        assert message.cycle_time in CYCLE_TIMES_MS, message.name
        assert message.senders, message.name
        assert message.comment, message.name
    for signal in signals:
        assert signal.comment, signal.name


def test_demo_dbc_covers_the_interesting_cases(db: Database) -> None:
    speed = db.get_message_by_name("ESC_Status").get_signal_by_name("ESC_VehicleSpeed")
    assert (speed.scale, speed.unit) == (0.01, "km/h")
    rpm = db.get_message_by_name("ECM_EngineStatus").get_signal_by_name("ECM_EngineSpeed")
    assert rpm.scale == 0.25
    angle = db.get_message_by_name("EPS_SteeringAngle").get_signal_by_name("EPS_SteeringWheelAngle")
    assert (angle.byte_order, angle.is_signed) == ("big_endian", True)
    lever = db.get_message_by_name("TCM_GearStatus").get_signal_by_name("TCM_GearLever")
    assert lever.choices is not None
    assert [str(v) for v in lever.choices.values()] == ["P", "R", "N", "D"]
    current = db.get_message_by_name("BMS_PackStatus").get_signal_by_name("BMS_PackCurrent")
    assert current.is_signed
    coolant = db.get_message_by_name("ECM_Temperatures").get_signal_by_name("ECM_CoolantTemp")
    assert coolant.offset == -40
    assert {s.name for m in db.messages for s in m.signals if s.is_float} == {
        "BCM_AmbientTemp",
        "GNSS_Latitude",
        "GNSS_Longitude",
    }

    tpms = db.get_message_by_name("TPMS_TireStatus")
    assert tpms.is_multiplexed()
    cascaded: Any = db.get_message_by_name("BMS_ModuleData").signal_tree
    assert cascaded[0]["BMS_DataType"][0][0]["BMS_VoltageBlock"][1] == [
        f"BMS_Module{i}Voltage" for i in range(5, 9)
    ]

    eec1 = db.get_message_by_name("EEC1")
    assert (eec1.frame_id, eec1.is_extended_frame, eec1.protocol) == (0x0CF00400, True, "j1939")
    assert [m.protocol for m in db.messages].count("j1939") == 1

    fd = [m for m in db.messages if m.is_fd]
    assert [m.name for m in fd] == ["ADAS_Objects"]
    assert fd[0].length == 32


# --------------------------------------------------------------------------------------------
# Frames


def test_every_message_is_produced(db: Database, drive: list[can.Message]) -> None:
    produced = {(f.arbitration_id, f.is_extended_id) for f in drive}
    assert produced == {(m.frame_id, m.is_extended_frame) for m in db.messages}
    assert VehicleSimulator().skipped == ()


def test_values_are_in_range_and_decode(db: Database, drive: list[can.Message]) -> None:
    for frame in drive:
        message = _message_of(db, frame)
        assert len(frame.data) == message.length
        _assert_in_range(message, _decode(message, frame))


def test_timestamps_are_ordered_and_follow_the_cycle_times(
    db: Database, drive: list[can.Message]
) -> None:
    stamps = [f.timestamp for f in drive]
    assert stamps == sorted(stamps)
    assert stamps[0] >= 0.0 and stamps[-1] < 120.0
    by_id: dict[tuple[int, bool], list[float]] = defaultdict(list)
    for frame in drive:
        by_id[frame.arbitration_id, frame.is_extended_id].append(frame.timestamp)
    for message in db.messages:
        assert message.cycle_time is not None
        period = message.cycle_time / 1000
        gaps = [
            b - a for a, b in itertools.pairwise(by_id[message.frame_id, message.is_extended_frame])
        ]
        assert statistics.mean(gaps) == pytest.approx(period, rel=0.02), message.name
        assert min(gaps) > 0.85 * period and max(gaps) < 1.15 * period, message.name
        assert len(set(gaps)) > 1, f"{message.name} has no jitter"


def test_a_message_without_cycle_time_is_sent_every_100_ms() -> None:
    database = _load_string(
        'VERSION ""\nBS_:\nBU_: A\nBO_ 256 Plain: 2 A\n SG_ Value : 0|16@1+ (1,0) [0|1000] "" A\n'
    )
    stamps = [f.timestamp for f in VehicleSimulator(database, seed=3).frames(10.0)]
    assert statistics.mean(b - a for a, b in itertools.pairwise(stamps)) == pytest.approx(
        0.1, rel=0.02
    )


def test_start_time_and_channel_are_applied() -> None:
    frames = list(VehicleSimulator(seed=2, start_time=1_700_000_000.0, channel="can7").frames(2.0))
    assert all(1_700_000_000.0 <= f.timestamp < 1_700_000_002.0 for f in frames)
    assert {f.channel for f in frames} == {"can7"}


def test_payload_repeat_share_is_realistic(drive: list[can.Message]) -> None:
    previous: dict[tuple[int, bool], bytes] = {}
    repeats = 0
    for frame in drive:
        key = (frame.arbitration_id, frame.is_extended_id)
        repeats += previous.get(key) == bytes(frame.data)
        previous[key] = bytes(frame.data)
    assert 0.3 <= repeats / len(drive) <= 0.8


def test_same_seed_same_frames_other_seed_other_frames() -> None:
    first = [_key(f) for f in VehicleSimulator(seed=7).frames(10.0)]
    again = [_key(f) for f in VehicleSimulator(seed=7).frames(10.0)]
    other = [_key(f) for f in VehicleSimulator(seed=8).frames(10.0)]
    assert first == again
    assert first != other


def test_a_second_call_continues_the_drive() -> None:
    simulator = VehicleSimulator(seed=5)
    in_two = list(simulator.frames(4.0)) + list(simulator.frames(6.0))
    assert simulator.time == 10.0
    assert [_key(f) for f in in_two] == [_key(f) for f in VehicleSimulator(seed=5).frames(10.0)]


def test_multiplexed_messages_cycle_through_their_values(
    decoded: dict[str, list[tuple[float, dict[str, Any]]]],
) -> None:
    wheels = _signal_series(decoded, "TPMS_TireStatus", "TPMS_WheelIndex")
    assert wheels[:8] == [wheels[0], *(((wheels[0] + i) % 4) for i in range(1, 8))]
    combinations = [
        (v["BMS_DataType"], v.get("BMS_VoltageBlock", v.get("BMS_TempBlock")))
        for _, v in decoded["BMS_ModuleData"]
    ]
    assert set(combinations[:4]) == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert combinations[4:8] == combinations[:4]


def test_j1939_frames_are_extended_and_padded(db: Database, drive: list[can.Message]) -> None:
    eec1 = [f for f in drive if f.is_extended_id]
    assert eec1 and {f.arbitration_id for f in eec1} == {0x0CF00400}
    assert all(f.data[6:] == b"\xff\xff" and f.data[0] & 0xF0 == 0xF0 for f in eec1)
    assert all(not f.is_fd for f in eec1)


def test_fd_frames_are_fd_with_bitrate_switch(drive: list[can.Message]) -> None:
    fd = [f for f in drive if f.is_fd]
    assert fd and {f.arbitration_id for f in fd} == {0x300}
    assert all(f.bitrate_switch and len(f.data) == 32 and f.dlc == 32 for f in fd)
    assert all(len(f.data) <= 8 and not f.bitrate_switch for f in drive if not f.is_fd)


def test_rolling_counter_increments_and_checksum_matches(
    drive: list[can.Message], decoded: dict[str, list[tuple[float, dict[str, Any]]]]
) -> None:
    counters = _signal_series(decoded, "ESC_Status", "ESC_Counter")
    assert all(b == (a + 1) % 16 for a, b in itertools.pairwise(counters))
    for frame in drive:
        if frame.arbitration_id == 0x130:
            assert frame.data[7] == (sum(frame.data[:7]) & 0xFF) ^ 0xFF


def test_the_drive_is_physically_consistent(
    decoded: dict[str, list[tuple[float, dict[str, Any]]]],
) -> None:
    speeds = _signal_series(decoded, "ESC_Status", "ESC_VehicleSpeed")
    assert speeds[0] == 0.0 and max(speeds) > 40.0
    assert any(a > 0.0 and b == 0.0 for a, b in itertools.pairwise(speeds)), "never stops"
    assert set(_signal_series(decoded, "TCM_GearStatus", "TCM_GearLever")) >= {0, 3}

    # Wheel speeds agree with the vehicle speed of about the same instant.
    speed_at = dict((round(t, 1), v["ESC_VehicleSpeed"]) for t, v in decoded["ESC_Status"])
    for t, wheels in decoded["ABS_WheelSpeeds"][::50]:
        reference = speed_at.get(round(t, 1))
        if reference is not None:
            mean = statistics.mean(wheels.values())
            assert mean == pytest.approx(reference, abs=2.0)

    # Forward gears only in D, and higher gears only at higher speeds.
    states = list(
        zip(
            _signal_series(decoded, "TCM_GearStatus", "TCM_GearLever"),
            _signal_series(decoded, "TCM_GearStatus", "TCM_CurrentGear"),
            strict=True,
        )
    )
    assert all((gear >= 1) == (lever == 3) for lever, gear in states)
    assert {gear for _, gear in states} >= {1, 2, 3}

    # The brake switch follows the pressure; the turn lamps flash; the engine rests at lights.
    brakes = [
        (v["ESC_BrakePressure"], v["ESC_BrakePedalPressed"]) for _, v in decoded["ESC_BrakeStatus"]
    ]
    assert all(
        (pressure > 1.0) == bool(pressed)
        for pressure, pressed in brakes
        if abs(pressure - 1.0) > 0.1
    )
    lamps = _signal_series(decoded, "BCM_Status", "BCM_TurnIndicatorLeft")
    lamps += _signal_series(decoded, "BCM_Status", "BCM_TurnIndicatorRight")
    assert 0 < sum(lamps) < len(lamps) / 2
    engine = [
        (v["ECM_EngineSpeed"], v["ECM_EngineRunning"]) for _, v in decoded["ECM_EngineStatus"]
    ]
    assert any(rpm == 0.0 and not on for rpm, on in engine)
    assert all(rpm >= 200 for rpm, on in engine if on)  # cranking, then idle or above

    # Slow things change slowly.
    soc = _signal_series(decoded, "BMS_PackStatus", "BMS_SOC")
    assert 0.0 < abs(soc[-1] - soc[0]) < 3.0
    coolant = _signal_series(decoded, "ECM_Temperatures", "ECM_CoolantTemp")
    assert max(abs(b - a) for a, b in itertools.pairwise(coolant)) <= 2.0


def test_at_least_a_few_thousand_frames_per_second() -> None:
    # The target is >= 20,000 frames/s; the bound here only catches gross regressions.
    simulator = VehicleSimulator(seed=9)
    started = time.perf_counter()
    count = sum(1 for _ in simulator.frames(20.0))
    assert count / (time.perf_counter() - started) > 5_000


# --------------------------------------------------------------------------------------------
# Any other database


def test_random_walk_on_a_corpus_database_stays_in_range() -> None:
    path = require_corpus() / "tesla_model3" / "Model3CAN_kuksa.dbc"
    database = cantools.database.load_file(path, strict=True)
    assert isinstance(database, Database)
    simulator = VehicleSimulator(database, seed=4)
    frames = list(simulator.frames(15.0))

    assert simulator.skipped == ()
    produced = Counter((f.arbitration_id, f.is_extended_id) for f in frames)
    assert set(produced) == {(m.frame_id, m.is_extended_frame) for m in database.messages}
    changed: dict[str, set[object]] = defaultdict(set)
    for frame in frames:
        message = _message_of(database, frame)
        values = _decode(message, frame)
        _assert_in_range(message, values)
        for name, value in values.items():
            changed[name].add(value)
    assert sum(len(v) > 1 for v in changed.values()) > len(changed) / 4, "too few signals move"


def test_broken_messages_of_a_lenient_database_are_skipped() -> None:
    database = _load_string(
        'VERSION ""\nBS_:\nBU_: A\n'
        'BO_ 1 Overlap: 8 A\n SG_ Wide : 0|16@1+ (1,0) [0|65535] "" A\n'
        ' SG_ Inner : 4|8@1+ (1,0) [0|255] "" A\n'
        'BO_ 2 Fine: 1 A\n SG_ Flag : 0|1@1+ (1,0) [0|1] "" A\n',
        strict=False,
    )
    simulator = VehicleSimulator(database)
    assert simulator.skipped == ("Overlap",)
    assert {f.arbitration_id for f in simulator.frames(1.0)} == {2}


# --------------------------------------------------------------------------------------------
# Sending on a bus


def test_run_simulation_delivers_every_frame(
    virtual_pair: tuple[can.BusABC, can.BusABC],
) -> None:
    sender, receiver = virtual_pair
    expected = list(VehicleSimulator(seed=6, start_time=1_000.0).frames(3.0))

    sent = run_simulation(sender, VehicleSimulator(seed=6, start_time=1_000.0), 3.0, speed=None)

    received = _drain(receiver)
    assert sent == len(expected) == len(received)
    assert [_key(f) for f in received] == [_key(f) for f in expected]


def test_run_simulation_paces_frames_in_real_time(
    virtual_pair: tuple[can.BusABC, can.BusABC],
) -> None:
    sender, receiver = virtual_pair
    started = time.monotonic()
    sent = run_simulation(sender, VehicleSimulator(seed=6), 0.5, speed=1.0)
    elapsed = time.monotonic() - started
    assert sent == len(_drain(receiver)) > 0
    assert 0.4 <= elapsed < 5.0

    started = time.monotonic()
    run_simulation(sender, VehicleSimulator(seed=6), 1.0, speed=4.0)
    assert 0.2 <= time.monotonic() - started < 5.0


def test_run_simulation_stops_when_asked(virtual_pair: tuple[can.BusABC, can.BusABC]) -> None:
    sender, _ = virtual_pair
    stop = threading.Event()
    simulator = VehicleSimulator(seed=6)  # built first: under load it may take the whole 0.3 s
    timer = threading.Timer(0.3, stop.set)
    timer.start()
    started = time.monotonic()
    try:
        sent = run_simulation(sender, simulator, 60.0, speed=1.0, stop=stop)
    finally:
        timer.cancel()
    assert time.monotonic() - started < 5.0
    assert 0 < sent < 1_000

    assert run_simulation(sender, VehicleSimulator(seed=6), 60.0, speed=None, stop=stop) == 0


def test_run_simulation_rejects_a_non_positive_speed(
    virtual_pair: tuple[can.BusABC, can.BusABC],
) -> None:
    with pytest.raises(ValueError, match="speed"):
        run_simulation(virtual_pair[0], VehicleSimulator(), 1.0, speed=0.0)


def test_the_demo_drive_has_a_harsh_braking_and_a_reverse_manoeuvre() -> None:
    """Events worth capturing (issue 11's demo campaigns) within the first 5 minutes, whatever
    the seed (two of them here: 13 s each)."""
    import cantools

    from edge.simulator.vehicle import DEMO_DBC, VehicleSimulator

    db = cantools.database.load_file(str(DEMO_DBC))
    brake = db.get_message_by_name("ESC_BrakeStatus")
    status = db.get_message_by_name("ESC_Status")
    gear = db.get_message_by_name("TCM_GearStatus")
    for seed in (1, 7):
        pressure = decel = 0.0
        reverse = False
        for msg in VehicleSimulator(seed=seed, start_time=0.0).frames(300):
            if msg.arbitration_id == brake.frame_id:
                pressure = max(pressure, brake.decode(msg.data)["ESC_BrakePressure"])
            elif msg.arbitration_id == status.frame_id:
                decel = min(decel, status.decode(msg.data)["ESC_LongAccel"])
            elif msg.arbitration_id == gear.frame_id:
                reverse = reverse or gear.decode(msg.data)["TCM_GearLever"] == "R"
        assert pressure > 60 and decel < -6 and reverse, seed
