"""BusDiagnostics on python-can's virtual bus against the simulated ECUs (edge/simulator/ecus.py):
real can-isotp stacks on both sides, real udsoncan client."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from typing import Any

import can
import pytest

from edge.clock import FakeClock
from edge.config.model import parse_config
from edge.diagnostics.scheduler import BusDiagnostics, RateLimiter
from edge.diagnostics.service import Diagnostics
from edge.diagnostics.transport import DiagnosticTimeout, NegativeResponse, TransportError
from edge.errors import ConfigError
from edge.simulator.ecus import (
    DEMO_VIN,
    ENGINE_PIDS,
    FUNCTIONAL_ID,
    TRANSMISSION_PIDS,
    SimulatedEcus,
)
from edge.wire.diagnostics import DiagRecord
from tests.support.diagnostics import diag_config
from tests.support.waiting import wait_for


class Recorder:
    """Collects emitted records (thread-safe)."""

    def __init__(self) -> None:
        self.records: list[DiagRecord] = []
        self._lock = threading.Lock()

    def __call__(self, records: list[DiagRecord]) -> None:
        with self._lock:
            self.records.extend(records)

    def dtcs(self, event: str) -> set[tuple[str, str]]:
        with self._lock:
            return {(r.ecu, r.name) for r in self.records if r.kind == "dtc" and r.text == event}


@pytest.fixture
def run(vehicle_channel: str) -> Iterator[Any]:
    started: list[Diagnostics] = []

    def start(**overrides: Any) -> tuple[Diagnostics, Recorder]:
        config = parse_config(diag_config(vehicle_channel, **overrides))
        recorder = Recorder()
        diagnostics = Diagnostics(config, recorder)
        diagnostics.start()
        started.append(diagnostics)
        return diagnostics, recorder

    yield start
    for diagnostics in started:
        diagnostics.stop()


def test_reads_vin_dtcs_and_dids_and_reports_each_dtc_once(run: Any, ecus: SimulatedEcus) -> None:
    diagnostics, recorder = run()
    expected = {
        ("TCM", "P0700"),
        ("TCM", "U0100"),
        ("BMS", "P0A80"),
        ("SA00", "SPN 190 FMI 2"),
        ("SA00", "SPN 110 FMI 16"),
    }
    wait_for(lambda: recorder.dtcs("appeared") >= expected, what="every stored DTC")
    vins = [r for r in recorder.records if r.kind == "vin"]
    assert vins and vins[0].text == DEMO_VIN
    dids = [r for r in recorder.records if r.kind == "did"]
    assert [(d.ecu, d.name, d.text) for d in dids] == [("TCM", "VIN", DEMO_VIN)]
    status = {r.name: r.value for r in recorder.records if r.kind == "dtc"}
    assert status["P0700"] == 0x08 and status["U0100"] == 0x28
    time.sleep(1.2)  # two more DTC periods and DM1s: unchanged DTCs are not sent again
    assert sum(r.kind == "dtc" for r in recorder.records) == len(expected)
    stats = diagnostics.stats()["vehicle"]
    assert stats["requests"] == stats["responses"] > 5
    assert stats["j1939"]["transfers"] >= 2


def test_a_dtc_that_appears_or_clears_is_reported_at_once(run: Any, ecus: SimulatedEcus) -> None:
    _, recorder = run()
    wait_for(lambda: ("BMS", "P0A80") in recorder.dtcs("appeared"))
    wait_for(lambda: ("SA00", "SPN 190 FMI 2") in recorder.dtcs("appeared"))
    ecus.uds["BMS"].dtcs = {0x0A9500: 0x09}  # P0A95 appears, P0A80 clears
    ecus.dm1 = []
    wait_for(lambda: ("BMS", "P0A95") in recorder.dtcs("appeared"), what="P0A95")
    wait_for(lambda: ("BMS", "P0A80") in recorder.dtcs("cleared"), what="P0A80 cleared")
    wait_for(lambda: ("SA00", "SPN 190 FMI 2") in recorder.dtcs("cleared"), what="DM1 cleared")
    cleared = next(r for r in recorder.records if r.name == "P0A80" and r.text == "cleared")
    appeared = next(r for r in recorder.records if r.name == "P0A80" and r.text == "appeared")
    assert cleared.first_seen == appeared.time < cleared.time


def test_on_demand_reads_answer_with_current_values(run: Any, ecus: SimulatedEcus) -> None:
    diagnostics, _ = run(
        uds=[
            {"name": "BMS", "request_id": 0x7E4, "response_id": 0x7EC, "dtc_period": 0},
        ]
    )
    assert diagnostics.read_dtcs(["BMS"]) == {"BMS": [{"dtc": "P0A80", "status": 0x2F}]}
    did = diagnostics.read_did("BMS", 0xF195)
    assert did["hex"] == b"BMS-SW-2.3.0".hex().upper()
    assert diagnostics.get_vin(refresh=True)["vin"] == DEMO_VIN
    wait_for(lambda: "SA00" in diagnostics.read_dtcs(), what="the engine's DM1")
    assert diagnostics.read_dtcs()["SA00"] == [
        {"dtc": "SPN 110 FMI 16", "status": 1},
        {"dtc": "SPN 190 FMI 2", "status": 3},
    ]
    with pytest.raises(KeyError):
        diagnostics.read_dtcs(["ABS"])


def test_negative_response_is_named_and_counted(run: Any, ecus: SimulatedEcus) -> None:
    diagnostics, _ = run(
        uds=[
            {"name": "BMS", "request_id": 0x7E4, "response_id": 0x7EC, "dtc_period": 0},
        ]
    )
    with pytest.raises(NegativeResponse) as info:
        diagnostics.read_did("BMS", 0x1234)  # the ECU does not know it
    assert info.value.code == 0x31 and info.value.name == "RequestOutOfRange"
    ecus.faults.negative["BMS"] = (0x19, 0x22)
    with pytest.raises(NegativeResponse, match="ConditionsNotCorrect"):
        diagnostics.read_dtcs(["BMS"])
    assert diagnostics.stats()["vehicle"]["negative_responses"] == 2


def test_silent_ecu_times_out_counted_without_retry_storm(run: Any, ecus: SimulatedEcus) -> None:
    ecus.faults.silent.add("TCM")
    diagnostics, _ = run(timeout=0.2, obd=None, j1939=None)
    time.sleep(2.0)
    stats = diagnostics.stats()["vehicle"]
    assert stats["timeouts"] >= 2
    # DTCs every 0.5 s and the DIDs once (then after a 5 s backoff): no retry in between.
    assert ecus.requests["TCM"] <= 2.0 / 0.5 + 2
    assert ecus.requests["BMS"] >= 3  # the other ECU is still served


def test_lost_flow_control_ends_in_a_timeout_and_the_next_request_works(
    run: Any, ecus: SimulatedEcus
) -> None:
    diagnostics, _ = run(
        timeout=0.3,
        obd=None,
        j1939=None,
        uds=[
            {"name": "TCM", "request_id": 0x7E1, "response_id": 0x7E9, "dtc_period": 0},
        ],
    )
    ecus.faults.drop_flow_control = 1  # the ECU never hears our FC: no consecutive frame comes
    with pytest.raises(DiagnosticTimeout):
        diagnostics.read_did("TCM", 0xF190)  # 20 bytes: a first frame, then FC, then CFs
    assert diagnostics.stats()["vehicle"]["timeouts"] == 1
    time.sleep(1.1)  # the ECU gives up waiting for the FC (N_Bs, 1 s) and is free again
    assert diagnostics.read_did("TCM", 0xF190)["hex"] == DEMO_VIN.encode().hex().upper()


def test_refused_pid_discovery_still_requests_the_configured_pids(
    run: Any, ecus: SimulatedEcus
) -> None:
    ecus.faults.negative["OBD"] = (0x01, 0x12)  # subFunctionNotSupported to every mode 01
    diagnostics, _ = run(uds=[], j1939=None)
    wait_for(lambda: diagnostics.stats()["vehicle"].get("negative_responses", 0) >= 3)
    assert diagnostics.buses[0].supported_pids is None


def test_unsupported_pids_are_not_requested(run: Any, ecus: SimulatedEcus) -> None:
    diagnostics, _ = run(
        uds=[],
        j1939=None,
        obd={"pids": [{"pid": 0x0C, "period": 0.2}, {"pid": 0x42, "period": 0.2}]},
    )
    wait_for(lambda: ecus.requests["OBD"] >= 6)
    assert diagnostics.buses[0].supported_pids == {0x05, 0x0C, 0x0D, 0x11, 0x20, 0x2F}
    stats = diagnostics.stats()["vehicle"]
    assert stats["unsupported_pids"] == 1
    assert stats.get("negative_responses", 0) == stats.get("timeouts", 0) == 0


def test_rate_limit_spaces_every_request(
    run: Any, ecus: SimulatedEcus, vehicle_channel: str
) -> None:
    sent: list[float] = []
    with can.Bus(interface="virtual", channel=vehicle_channel) as spy:
        notifier = can.Notifier(
            spy,
            [
                lambda m: (
                    sent.append(time.monotonic())
                    if m.arbitration_id in (0x7E0, 0x7E1, 0x7E4) and m.data[0] >> 4 != 3
                    else None
                )
            ],
        )
        pids = [{"pid": p, "period": 0.05} for p in (0x05, 0x0C, 0x0D, 0x11)]
        run(max_requests_per_second=5, obd={"pids": pids, "vin": False}, j1939=None)
        time.sleep(2.0)
        notifier.stop()
    # Flow-control frames (PCI 0x3_) belong to an answer's transfer: not requests, not limited.
    window = [t for t in sent if t <= sent[0] + 1.0]
    assert 5 <= len(window) <= 6  # 5 per second, the first at once
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    assert min(gaps) > 0.15  # 1/5 s, less scheduling jitter


def test_rate_limiter_with_a_fake_clock() -> None:
    clock = FakeClock()
    limiter = RateLimiter(10.0, clock)
    start = clock.monotonic()
    for _ in range(5):
        limiter.acquire()
    assert clock.monotonic() - start == pytest.approx(0.4)


def test_condition_gates_requests_until_it_holds(
    run: Any, ecus: SimulatedEcus, vehicle_channel: str
) -> None:
    diagnostics, _ = run(when="ECM_EngineStatus.ECM_EngineSpeed > 500", j1939=None)
    time.sleep(0.8)
    assert sum(ecus.requests.values()) == 0
    assert diagnostics.stats()["vehicle"]["gated"] >= 1
    import cantools

    from edge.simulator.vehicle import DEMO_DBC

    message = cantools.database.load_file(str(DEMO_DBC)).get_message_by_name("ECM_EngineStatus")
    values = {s.name: 0 for s in message.signals} | {"ECM_EngineSpeed": 800}
    data = message.encode(values, strict=False)
    frame = can.Message(arbitration_id=message.frame_id, data=data, is_extended_id=False)
    with can.Bus(interface="virtual", channel=vehicle_channel) as engine:
        engine.send(frame)
        wait_for(lambda: ecus.requests["OBD"] > 0, what="requests once the engine runs")


def test_error_frame_pauses_every_request(
    run: Any, ecus: SimulatedEcus, vehicle_channel: str
) -> None:
    diagnostics, _ = run(error_pause=1.5, j1939=None)
    wait_for(lambda: ecus.requests["OBD"] > 0)
    with can.Bus(interface="virtual", channel=vehicle_channel) as bus:
        bus.send(can.Message(is_error_frame=True))
    wait_for(lambda: diagnostics.stats()["vehicle"].get("pauses"))
    time.sleep(0.3)  # a request in flight may finish
    before = sum(ecus.requests.values())
    time.sleep(1.0)
    assert sum(ecus.requests.values()) == before
    wait_for(lambda: sum(ecus.requests.values()) > before, what="requests after the pause")
    assert diagnostics.stats()["vehicle"]["error_frames"] == 1


def test_j1939_vin_by_request(vehicle_channel: str, ecus: SimulatedEcus) -> None:
    config = parse_config(diag_config(vehicle_channel, obd=None, uds=[]))
    recorder = Recorder()
    bus = BusDiagnostics(config.diagnostics.buses[0], config.buses[0], recorder)
    bus.start()
    try:
        wait_for(lambda: any(r.kind == "vin" for r in recorder.records), what="J1939 VIN")
    finally:
        bus.stop()
    vin = next(r for r in recorder.records if r.kind == "vin")
    assert (vin.text, vin.ecu, vin.source) == (DEMO_VIN, "SA00", 0)
    assert ecus.requests["J1939"] == 1


def test_a_condition_on_an_unknown_signal_stops_start_up(vehicle_channel: str) -> None:
    config = parse_config(diag_config(vehicle_channel, when="ECM_EngineStatus.Nope > 1"))
    with pytest.raises(ConfigError) as info:
        Diagnostics(config, Recorder())
    assert str(info.value) == (
        "diagnostics.buses[0].when: column 1: no signal 'ECM_EngineStatus.Nope' on bus 'vehicle'"
    )


def test_a_bus_that_cannot_be_opened_does_not_stop_anything(vehicle_channel: str) -> None:
    data = diag_config(vehicle_channel, obd=None, j1939=None)
    data["buses"][0].update(interface="socketcan", channel="nosuchcan0")
    diagnostics = Diagnostics(parse_config(data), Recorder())
    diagnostics.start()  # no exception: the schedule's thread keeps trying
    try:
        wait_for(lambda: diagnostics.stats()["vehicle"].get("open_errors", 0) >= 1)
        assert not diagnostics.buses[0].connected
        with pytest.raises(TransportError, match="not open"):
            diagnostics.read_dtcs(["TCM"])
    finally:
        diagnostics.stop()


def test_functional_obd_request_is_answered_by_every_obd_ecu_each_its_own_source(
    run: Any, ecus: SimulatedEcus, vehicle_channel: str
) -> None:
    frames: list[can.Message] = []
    with can.Bus(interface="virtual", channel=vehicle_channel) as spy:
        notifier = can.Notifier(spy, [frames.append])
        pids = [{"pid": 0x0C, "period": 0.3}, {"pid": 0x0D, "period": 0.3}]
        # TCM's UDS channel (0x7E1/0x7E9) is also an OBD ECU's: one stack serves both.
        diagnostics, recorder = run(obd={"functional": True, "pids": pids}, j1939=None)
        bus = diagnostics.buses[0]
        wait_for(lambda: bus.vin is not None, what="the VIN")
        wait_for(lambda: recorder.dtcs("appeared") >= {("TCM", "P0700")}, what="TCM's DTCs")
        wait_for(lambda: diagnostics.stats()["vehicle"].get("responses", 0) >= 6)
        notifier.stop()
    assert bus.obd_ecus == {0x7E8: set(ENGINE_PIDS), 0x7E9: set(TRANSMISSION_PIDS)}
    assert bus.supported_pids == ENGINE_PIDS | TRANSMISSION_PIDS
    [vin] = [r for r in recorder.records if r.kind == "vin"]  # both said the same VIN
    assert (vin.ecu, vin.text) == ("OBD-7E8", DEMO_VIN)
    requests = [f for f in frames if f.arbitration_id == FUNCTIONAL_ID]
    assert requests and all(f.data[0] == 2 for f in requests)  # single frames, 2 bytes
    physical_obd = [
        f
        for f in frames
        if f.arbitration_id in (0x7E0, 0x7E1) and f.data[0] >> 4 == 0 and f.data[1] in (1, 9)
    ]
    assert not physical_obd  # OBD-II only to 0x7DF (UDS to TCM still goes to 0x7E1)
    # 01 0D: the engine (0x7E8) and the transmission (0x7E9) answer; 01 0C: the engine only.
    answers = {(f.arbitration_id, f.data[2]) for f in frames if f.data[:2] == b"\x03\x41"}
    assert {(0x7E8, 0x0D), (0x7E9, 0x0D)} <= answers and (0x7E9, 0x0C) not in answers
    # The VIN answers are multi-frame, each driven by our flow control to 0x7E0 and 0x7E1.
    flow_control = {f.arbitration_id for f in frames if f.data and f.data[0] >> 4 == 3}
    assert {0x7E0, 0x7E1} <= flow_control
    stats = diagnostics.stats()["vehicle"]
    assert stats["obd_ecus"] == 2 and "isotp_errors" not in stats
    assert stats.get("timeouts", 0) == stats.get("vin_mismatches", 0) == 0


def test_functional_obd_with_a_silent_ecu_and_with_none(run: Any, ecus: SimulatedEcus) -> None:
    ecus.faults.silent.add("TCM")
    pids = [{"pid": 0x0D, "period": 0.2}]
    diagnostics, _ = run(obd={"functional": True, "pids": pids, "vin": False}, uds=[], j1939=None)
    wait_for(lambda: diagnostics.stats()["vehicle"].get("responses", 0) >= 4)
    assert diagnostics.buses[0].obd_ecus.keys() == {0x7E8}  # the engine alone answers
    ecus.faults.silent.add("OBD")
    before = ecus.requests["OBD"]
    time.sleep(1.0)
    stats = diagnostics.stats()["vehicle"]
    assert stats["timeouts"] >= 1  # nobody answers: a timeout, counted
    assert stats["obd_missing_answers"] >= 1  # the engine listed 0x0D and did not answer
    # One request per period (0.2 s, each waiting out its 0.5 s timeout): no retry storm.
    assert ecus.requests["OBD"] - before <= 1.0 / 0.5 + 1


def test_functional_obd_vin_mismatch_is_counted_and_sent(run: Any, ecus: SimulatedEcus) -> None:
    ecus.faults.vin["TCM"] = "WSWAPPEDECU000001"  # the transmission came from another car
    diagnostics, recorder = run(obd={"functional": True, "discover": False}, uds=[], j1939=None)
    wait_for(lambda: diagnostics.stats()["vehicle"].get("vin_mismatches", 0) == 1)
    vins = {(r.ecu, r.text) for r in recorder.records if r.kind == "vin"}
    assert vins == {("OBD-7E8", DEMO_VIN), ("OBD-7E9", "WSWAPPEDECU000001")}
    assert diagnostics.buses[0].vin == DEMO_VIN  # the engine ECU's
