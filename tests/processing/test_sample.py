"""Selection globs and the sampling modes."""

from __future__ import annotations

import math

import cantools
import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge.config.model import SignalRule, SignalsConfig
from edge.processing.batch import Group
from edge.processing.sample import Policy, Selection, TrackSampler
from edge.wire.schema import MessageInfo, SignalInfo

DBC = """VERSION ""
BS_:
BU_: ECU
BO_ 256 Engine: 8 ECU
 SG_ Speed : 0|16@1+ (0.01,0) [0|655.35] "km/h" Vector__XXX
 SG_ Rpm : 16|16@1+ (0.25,0) [0|16383.75] "rpm" Vector__XXX
 SG_ Counter : 32|4@1+ (1,0) [0|15] "" Vector__XXX
 SG_ Checksum : 56|8@1+ (1,0) [0|255] "" Vector__XXX
BO_ 257 Body: 2 ECU
 SG_ Door : 0|1@1+ (1,0) [0|1] "" Vector__XXX
"""


@pytest.fixture(scope="module")
def db() -> cantools.database.can.Database:
    return cantools.database.load_string(DBC)


def names(selection: Selection, db: cantools.database.can.Database, bus: str = "can0") -> set[str]:
    return {
        f"{m.name}.{s.name}" for m in db.messages for s in m.signals if selection.selects(bus, m, s)
    }


def test_default_keeps_everything_on_change_with_heartbeat(
    db: cantools.database.can.Database,
) -> None:
    selection = Selection(SignalsConfig())
    assert len(names(selection, db)) == 5
    engine = db.get_message_by_name("Engine")
    assert selection.policy("can0", engine, engine.signals[0]) == Policy("on_change", 0, 0, 60)


def test_include_exclude_globs(db: cantools.database.can.Database) -> None:
    selection = Selection(SignalsConfig(include=("Engine.*",), exclude=("*.Checksum", "*.Counter")))
    assert names(selection, db) == {"Engine.Speed", "Engine.Rpm"}


def test_first_matching_rule_wins_and_rules_can_target_buses(
    db: cantools.database.can.Database,
) -> None:
    rules = (
        SignalRule(match=("Engine.Rpm",), buses=("can1",), mode="every"),
        SignalRule(match=("Engine.R*",), mode="min_interval", interval=0.5),
        SignalRule(match=("Engine.*",), mode="every"),
    )
    selection = Selection(SignalsConfig(rules=rules))
    engine = db.get_message_by_name("Engine")
    rpm = engine.get_signal_by_name("Rpm")
    assert selection.policy("can1", engine, rpm) == Policy("every", 0, 0, 60)
    assert selection.policy("can0", engine, rpm) == Policy("min_interval", 0, 0.5, 60)
    speed = engine.get_signal_by_name("Speed")
    assert selection.policy("can0", engine, speed) == Policy("every", 0, 0, 60)


INFO = MessageInfo(
    bus=0,
    name="Engine",
    frame_id=256,
    is_extended=False,
    j1939=False,
    signals=(SignalInfo("Speed", 0.01, 0, "km/h"), SignalInfo("Rpm", 0.25, 0, "rpm")),
)


def sampler(*policies: Policy) -> TrackSampler:
    return TrackSampler(INFO, policies)


def test_on_change_sends_first_value_and_changes_only() -> None:
    s = sampler(Policy("on_change"), Policy("on_change"))
    assert s.sample(0.0, {"Speed": 100, "Rpm": 800}, False) == [(0, 100), (1, 800)]
    assert s.sample(0.01, {"Speed": 100, "Rpm": 800}, False) == []
    assert s.sample(0.02, {"Speed": 101, "Rpm": 800}, False) == [(0, 101)]


def test_deadband_is_in_physical_units() -> None:
    s = sampler(Policy("on_change", deadband=0.5), Policy("on_change"))  # 0.5 km/h = 50 raw
    s.sample(0.0, {"Speed": 1000, "Rpm": 0}, False)
    assert s.sample(0.1, {"Speed": 1050, "Rpm": 0}, False) == []  # within the deadband
    assert s.sample(0.2, {"Speed": 1051, "Rpm": 0}, False) == [(0, 1051)]
    assert s.sample(0.3, {"Speed": 1010, "Rpm": 0}, False) == []  # compared with the last *sent*


def test_min_interval_rate_limits_and_sends_the_held_back_value_later() -> None:
    s = sampler(Policy("min_interval", interval=1.0), Policy("on_change"))
    assert s.sample(0.0, {"Speed": 1, "Rpm": 0}, False) == [(0, 1), (1, 0)]
    assert s.sample(0.5, {"Speed": 2, "Rpm": 0}, False) == []
    assert s.sample(0.9, {"Speed": 3, "Rpm": 0}, False) == []
    # The payload no longer changes, but the held-back value goes out once the interval is over.
    assert s.sample(1.0, {"Speed": 3, "Rpm": 0}, True) == [(0, 3)]
    assert s.sample(1.1, {"Speed": 3, "Rpm": 0}, True) == []


def test_heartbeat_resends_unchanged_values_even_on_repeated_frames() -> None:
    s = sampler(Policy("on_change", heartbeat=10), Policy("on_change", heartbeat=0))
    s.sample(0.0, {"Speed": 5, "Rpm": 7}, False)
    assert s.sample(9.99, {"Speed": 5, "Rpm": 7}, True) == []
    assert s.sample(10.0, {"Speed": 5, "Rpm": 7}, True) == [(0, 5)]
    assert s.sample(15.0, {"Speed": 6, "Rpm": 7}, False) == [(0, 6)]
    assert s.sample(24.0, {"Speed": 6, "Rpm": 7}, True) == []
    assert s.sample(25.0, {"Speed": 6, "Rpm": 7}, True) == [(0, 6)]


def test_every_sends_each_value_even_when_the_payload_repeats() -> None:
    s = sampler(Policy("every"), Policy("on_change"))
    s.sample(0.0, {"Speed": 5, "Rpm": 7}, False)
    assert s.sample(0.01, {"Speed": 5, "Rpm": 7}, True) == [(0, 5)]


def test_absent_multiplexed_signals_are_skipped() -> None:
    s = sampler(Policy("on_change"), Policy("on_change"))
    assert s.sample(0.0, {"Rpm": 7}, False) == [(1, 7)]
    assert s.sample(0.1, {"Speed": 1}, False) == [(0, 1)]


@given(st.lists(st.tuples(st.integers(0, 3), st.booleans()), min_size=1, max_size=200))
def test_repeated_fast_path_never_changes_the_output(steps: list[tuple[int, bool]]) -> None:
    """Telling the sampler a frame repeats its predecessor is an optimisation only: the output
    equals that of evaluating every frame in full."""
    fast = sampler(Policy("on_change", heartbeat=0.05), Policy("min_interval", interval=0.03))
    full = sampler(Policy("on_change", heartbeat=0.05), Policy("min_interval", interval=0.03))
    values = {"Speed": 0, "Rpm": 0}
    previous: dict[str, int] | None = None
    for i, (value, bump) in enumerate(steps):
        if bump:
            values = {"Speed": value, "Rpm": value * 2}
        t = i * 0.01
        repeated = previous == values
        assert fast.sample(t, dict(values), repeated) == full.sample(t, dict(values), False)
        previous = dict(values)


# --------------------------------------------------------------------------------------------
# Issue 12: time stepping back, NaN


def test_min_interval_and_heartbeat_go_on_after_time_steps_back() -> None:
    s = sampler(Policy("min_interval", interval=1.0), Policy("on_change", heartbeat=2.0))
    assert s.sample(3600.0, {"Speed": 1, "Rpm": 7}, False) == [(0, 1), (1, 7)]
    # NTP steps the clock back an hour: a change is not held back for an hour ...
    assert s.sample(0.0, {"Speed": 2, "Rpm": 7}, False) == [(0, 2), (1, 7)]
    # ... and the rate limit and heartbeat count from the step.
    assert s.sample(0.5, {"Speed": 3, "Rpm": 7}, False) == []
    assert s.sample(1.0, {"Speed": 3, "Rpm": 7}, True) == [(0, 3)]
    assert s.sample(2.0, {"Speed": 3, "Rpm": 7}, True) == [(1, 7)]


def test_restart_timers_makes_repeated_frames_look_again() -> None:
    s = sampler(Policy("on_change", heartbeat=2.0), Policy("on_change", heartbeat=2.0))
    s.sample(3600.0, {"Speed": 1, "Rpm": 7}, False)
    assert s.next_check == 3602.0
    s.restart_timers()
    assert s.next_check == -math.inf  # the hot loop takes the next frame the full way
    assert s.sample(0.0, {"Speed": 1, "Rpm": 7}, True) == [(0, 1), (1, 7)]
    assert s.next_check == 2.0


NAN = math.nan


@pytest.mark.parametrize(
    "policy",
    [Policy("on_change"), Policy("on_change", deadband=0.5), Policy("min_interval", interval=0)],
)
def test_a_change_to_or_from_nan_is_a_change_nan_to_nan_is_not(policy: Policy) -> None:
    s = sampler(policy, Policy("on_change"))
    out = [s.sample(t, {"Speed": v, "Rpm": 0}, False) for t, v in enumerate([NAN, NAN, 5.0])]
    assert [[str(v) for _, v in o if _ == 0] for o in out] == [["nan"], [], ["5.0"]]
    out = [s.sample(t, {"Speed": v, "Rpm": 0}, False) for t, v in enumerate([NAN, NAN, 7.0], 3)]
    assert [[str(v) for _, v in o if _ == 0] for o in out] == [["nan"], [], ["7.0"]]


FLOAT_INFO = MessageInfo(  # NaN and infinities only come from float signals
    bus=0,
    name="Imu",
    frame_id=257,
    is_extended=False,
    j1939=False,
    signals=(SignalInfo("Accel", is_float=True), SignalInfo("Counter")),
)


def test_deferred_settle_treats_nan_like_the_full_evaluation() -> None:
    deferred = TrackSampler(FLOAT_INFO, (Policy("on_change"), Policy("on_change")))
    assert deferred.fast
    deferred.sample_raw(0.0, (1.0, 0), False)
    values = [NAN, NAN, 2.0, NAN, math.inf, math.inf]
    deferred.pending_times = [float(i + 1) for i in range(len(values))]
    deferred.pending_rows = [(v, i) for i, v in enumerate(values, 1)]
    group = Group()
    deferred.settle(group, 1000)
    rows, sent = group.columns[0]
    assert [str(v) for v in sent] == ["nan", "2.0", "nan", "inf"]
    assert rows == [0, 2, 3, 4]


SHARED_NAN = float("nan")  # one NaN object: settle's unchanged-column check compares by identity


@given(
    st.lists(
        st.tuples(
            st.sampled_from([1.0, 2.0, math.inf, NAN, SHARED_NAN]),
            st.integers(0, 2),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_deferred_settle_sends_what_frame_by_frame_sampling_sends(
    rows: list[tuple[float, int]],
) -> None:
    """Settling pending rows (unchanged columns skipped in one pass) gives every column the
    values the full evaluation gives frame by frame, and a row only to the frames that give a
    value: a row the loop deferred because two NaNs differ as objects (NaN != NaN) is none."""
    policies = (Policy("on_change"), Policy("on_change"))
    rows = [(SHARED_NAN, 0), *rows]
    rows = [r for i, r in enumerate(rows) if i == 0 or r != rows[i - 1]]  # what the loop defers
    reference = TrackSampler(FLOAT_INFO, policies)
    expected: dict[int, list[tuple[int, str]]] = {0: [], 1: []}
    times: list[int] = []  # the row times: the frames that gave a value
    for n, row in enumerate(rows):
        samples = reference.sample_raw(float(n), row, False)
        if samples:
            times.append(n)
        for column, value in samples:
            expected[column].append((len(times) - 1, str(value)))
    deferred = TrackSampler(FLOAT_INFO, policies)
    deferred.sample_raw(0.0, rows[0], False)
    group = Group()
    group.times.append(0)
    deferred.pending_times = [float(n) for n in range(1, len(rows))]
    deferred.pending_rows = rows[1:]
    if deferred.pending_rows:
        deferred.settle(group, 1)
    got: dict[int, list[tuple[int, str]]] = {0: [(0, str(rows[0][0]))], 1: [(0, "0")]}
    for column, (numbers, values) in group.columns.items():
        got[column] += [(n, str(v)) for n, v in zip(numbers, values, strict=True)]
    assert got == expected
    assert group.times == times
    assert deferred.repeats == len(rows) - len(times)
