"""edge.iotedge.methods: getStats, flush, getConfig; 400 for a bad payload, 404 for an unknown
method.

The handlers are plain functions, tested here on a real module (virtual bus, real spool, file
uplink) without the SDK; then through the real azure-iot-device SDK against a real TLS mosquitto,
with tests/iotedge/test_twin.py's IoTHubResponder invoking the methods as IoT Hub does.
"""

from __future__ import annotations

import gc
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import can
import cantools
import pytest

from edge.config.model import parse_config
from edge.iotedge.methods import METHOD_NAMES, DirectMethods, redact
from edge.iotedge.module import EdgeModule, ModuleOptions
from edge.iotedge.twin import ConfigOrigin
from edge.processing.processor import PipelineStats
from edge.simulator.vehicle import DEMO_DBC, VehicleSimulator
from tests.support.iothub import SDK_WARNINGS, IoTHubResponder
from tests.support.mosquitto import Mosquitto, free_port
from tests.support.waiting import wait_for

pytestmark = SDK_WARNINGS


def counters(module: EdgeModule) -> PipelineStats:
    """The module's counters (it runs, so there are some)."""
    stats = module.stats()
    assert stats is not None
    return stats


def settings(tmp_path: Path, channel: str, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "vehicle_id": "car1",
        "buses": [{"name": "vehicle", "channel": channel, "dbc": str(DEMO_DBC), "fd": True}],
        "batch": {"max_age": 600.0},  # batches close only when flushed
        "spool": {"path": str(tmp_path / "spool.db")},
        "uplink": {"type": "file", "path": str(tmp_path / "outbox")},
    }
    data.update(changes)
    return data


def drive(module: EdgeModule, channel: str, seconds: float = 1.0) -> int:
    wait_for(lambda: (s := module.stats()) is not None and s.sources["vehicle"]["connected"])
    simulator = VehicleSimulator(seed=2, start_time=1_700_000_000.0, channel=channel)
    frames = list(simulator.frames(seconds))
    with can.Bus(interface="virtual", channel=channel, preserve_timestamps=True) as bus:
        for msg in frames:
            bus.send(msg)
    wait_for(lambda: counters(module).frames == len(frames))
    return len(frames)


@pytest.fixture
def channel() -> str:
    return f"methods-{uuid.uuid4().hex[:8]}"


def start(tmp_path: Path, data: dict[str, Any], *, edge: bool = False) -> EdgeModule:
    options = ModuleOptions(
        data_dir=str(tmp_path),
        edge=edge,
        metrics_host="127.0.0.1",
        metrics_port=0,
        report_interval=0.3,
        keep_alive=5,
        config_log_level=False,
    )
    module = EdgeModule(options)
    config = parse_config(data, base_dir=str(tmp_path))
    module.start((config, ConfigOrigin("file", None, "digest", data)))
    return module


@pytest.fixture
def module(tmp_path: Path, channel: str) -> Iterator[EdgeModule]:
    module = start(tmp_path, settings(tmp_path, channel))
    yield module
    module.stop(drain_timeout=0)


# -- the handlers ---------------------------------------------------------------------------------


def test_get_stats(module: EdgeModule, channel: str) -> None:
    sent = drive(module, channel)
    status, answer = module.methods.handle("getStats", None)
    assert status == 200
    assert answer["frames"] == sent
    assert answer["buses"] == [{"bus": "vehicle", "frames": sent, "connected": True, "errors": 0}]
    assert answer["rawBytes"] == 16 * sent
    assert {
        "samples",
        "batches",
        "payloadBytes",
        "spoolDepth",
        "spoolBytes",
        "droppedBatches",
        "sent",
        "retries",
        "lastSendTime",
        "decodeSkipped",
    } <= set(answer)
    json.dumps(answer)
    assert module.methods.handle("getStats", {})[0] == 200


def test_flush_closes_the_open_batch_and_waits_for_the_send(
    module: EdgeModule, channel: str, tmp_path: Path
) -> None:
    drive(module, channel)
    assert counters(module).batches == 0  # max_age is ten minutes
    status, answer = module.methods.handle("flush", {"wait": 5})
    assert (status, answer) == (200, {"flushed": True, "spoolDepth": 0, "drained": True})
    assert counters(module).batches == 1
    assert len(list((tmp_path / "outbox").glob("*.data.ctl"))) == 1


@pytest.mark.parametrize(
    ("name", "payload", "error"),
    [
        ("flush", {"wait": "soon"}, "payload.wait: expected a number, got 'soon'"),
        ("flush", {"wait": 61}, "payload.wait: must be at most 60.0, got 61"),
        ("flush", {"wait": -1}, "payload.wait: must be at least 0.0, got -1"),
        ("flush", {"now": True}, "payload.now: unknown option"),
        ("flush", [1], "payload: expected an object or nothing, got list"),
        ("getStats", {"all": True}, "payload.all: unknown option"),
        ("getConfig", "everything", "payload: expected an object or nothing, got str"),
    ],
)
def test_bad_payloads_are_answered_with_400(
    module: EdgeModule, name: str, payload: Any, error: str
) -> None:
    assert module.methods.handle(name, payload) == (400, {"error": error})


def test_unknown_methods_are_answered_with_404(module: EdgeModule) -> None:
    status, answer = module.methods.handle("reboot", {})
    assert status == 404
    assert answer == {
        "error": "unknown method 'reboot'",
        "methods": [
            "getStats",
            "flush",
            "getConfig",
            "readDtcs",
            "readDid",
            "getVin",
            "getSignals",
            "capture",
            "listCampaigns",
        ],
    }


def test_get_config_hides_secrets(tmp_path: Path, channel: str) -> None:
    uplink = {
        "type": "mqtt",
        "host": "127.0.0.1",
        "port": free_port(),
        "tls": False,
        "username": "car1",
        "password": "s3cret",
    }
    module = start(tmp_path, settings(tmp_path, channel, uplink=uplink))
    try:
        status, answer = module.methods.handle("getConfig", None)
    finally:
        module.stop(drain_timeout=0)
    assert status == 200
    assert answer["source"] == "file"
    assert answer["config"]["uplink"]["password"] == "***"
    assert answer["config"]["uplink"]["username"] == "car1"
    assert "s3cret" not in json.dumps(answer)
    assert redact({"a": [{"connection_string": "x"}]}) == {"a": [{"connection_string": "***"}]}


def test_a_failing_method_is_answered_with_500_and_flush_without_config_with_409(
    module: EdgeModule, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def broken() -> dict[str, Any]:
        raise RuntimeError("counters unavailable")

    monkeypatch.setattr(module, "summary", broken)
    assert module.methods.handle("getStats", None) == (
        500,
        {"error": "RuntimeError: counters unavailable"},
    )
    idle = EdgeModule(ModuleOptions(data_dir=str(tmp_path / "idle"), edge=False))
    status, answer = DirectMethods(idle).handle("flush", None)
    assert status == 409
    assert "no configuration yet" in answer["error"]


# -- through the SDK ------------------------------------------------------------------------------


def test_methods_over_the_sdk(hub: Mosquitto, tmp_path: Path, channel: str) -> None:
    data = settings(tmp_path, channel)
    with IoTHubResponder(hub) as responder:
        module = start(tmp_path, data, edge=True)
        try:
            wait_for(lambda: module.connection is not None and module.connection.connected)
            sent = drive(module, channel)

            status, answer = responder.invoke("getStats", {})
            assert status == 200 and answer["frames"] == sent

            assert responder.invoke("flush", {"wait": 5}) == (
                200,
                {"flushed": True, "spoolDepth": 0, "drained": True},
            )
            assert len(list((tmp_path / "outbox").glob("*.data.ctl"))) == 1

            status, answer = responder.invoke("flush", {"wait": "x"})
            assert status == 400 and answer["error"].startswith("payload.wait:")
            status, answer = responder.invoke("getConfig", [1])
            assert status == 400
            status, answer = responder.invoke("reboot")
            assert status == 404 and answer["methods"] == list(METHOD_NAMES)
            status, answer = responder.invoke("getConfig")  # no payload at all: JSON null
            assert status == 200 and answer["source"] == "file"

            # IoT Hub only sends JSON; a payload that is not JSON is dropped inside the SDK
            # (a background exception) and never reaches a handler, so nothing answers ...
            with pytest.raises(AssertionError, match="no response"):
                responder.invoke("getStats", raw=b"not json", timeout=1.0)
            # ... and the client goes on working.
            assert responder.invoke("getStats", {})[0] == 200
        finally:
            module.stop(drain_timeout=0)
            gc.collect()


def test_a_waiting_method_does_not_hold_the_sdk(
    hub: Mosquitto, tmp_path: Path, channel: str
) -> None:
    """The SDK's handlers only queue: a flush waiting on a dead uplink does not delay a twin
    patch, which the twin's own thread applies meanwhile."""
    dead = {
        "type": "mqtt",
        "host": "127.0.0.1",
        "port": free_port(),
        "tls": False,
        "backoff_initial": 0.05,
        "backoff_max": 0.2,
    }
    desired = {"config": {**settings(tmp_path, channel, uplink=dead)}}
    with IoTHubResponder(hub, desired) as responder:
        module = start(tmp_path, settings(tmp_path, channel), edge=True)
        try:
            responder.wait_reported(lambda r: r.get("config", {}).get("desiredVersion") == 1)
            drive(module, channel)
            result: list[Any] = []
            caller = threading.Thread(
                target=lambda: result.append(responder.invoke("flush", {"wait": 2}))
            )
            started = time.monotonic()
            caller.start()
            time.sleep(0.2)  # the flush is waiting now
            version = responder.patch_desired({"config": {"batch": {"max_age": 300.0}}})
            responder.wait_reported(lambda r: r["config"]["desiredVersion"] == version)
            applied_after = time.monotonic() - started
            caller.join(10)
            assert result and result[0][0] == 200 and result[0][1]["drained"] is False
            assert applied_after < 1.5  # well before the flush answered (after 2 s)
        finally:
            module.stop(drain_timeout=0)
            gc.collect()


# -- diagnostics (edge/diagnostics/): a real module, simulated ECUs on the same virtual bus ------


def diagnostics_table(**changes: Any) -> dict[str, Any]:
    table: dict[str, Any] = {
        "bus": "vehicle",
        "timeout": 0.3,
        "max_requests_per_second": 100,
        "obd": {"pids": [{"pid": 0x0C, "period": 1.0}]},
        "uds": [
            {"name": "TCM", "request_id": 0x7E1, "response_id": 0x7E9, "dtc_period": 0},
            {
                "name": "BMS",
                "request_id": 0x7E4,
                "response_id": 0x7EC,
                "dtc_period": 0,
                "dids": [{"did": 0xF195, "name": "software", "kind": "ascii"}],
            },
        ],
    }
    table.update(changes)
    return {"buses": [table]}


@pytest.fixture
def diag_module(tmp_path: Path, channel: str, ecus_on: Any) -> Iterator[EdgeModule]:
    module = start(tmp_path, settings(tmp_path, channel, diagnostics=diagnostics_table()))
    yield module
    module.stop(drain_timeout=0)


@pytest.fixture
def ecus_on(channel: str) -> Iterator[Any]:
    from edge.simulator.ecus import SimulatedEcus

    with can.Bus(interface="virtual", channel=channel) as bus, SimulatedEcus(bus) as ecus:
        yield ecus


def test_diagnostics_methods_read_dtcs_did_and_vin(diag_module: EdgeModule) -> None:
    from edge.simulator.ecus import DEMO_VIN

    handle = diag_module.methods.handle
    assert handle("readDtcs", {"ecus": ["BMS"]}) == (
        200,
        {"BMS": [{"dtc": "P0A80", "status": 0x2F}]},
    )
    status, answer = handle("readDtcs", None)
    assert status == 200 and set(answer) == {"TCM", "BMS"}
    assert [d["dtc"] for d in answer["TCM"]] == ["P0700", "U0100"]
    assert handle("readDid", {"ecu": "BMS", "did": "F195"}) == (
        200,
        {
            "ecu": "BMS",
            "did": "F195",
            "hex": b"BMS-SW-2.3.0".hex().upper(),
            "name": "software",
            "value": 12,
            "text": "BMS-SW-2.3.0",
        },
    )
    assert handle("getVin", {}) == (200, {"vin": DEMO_VIN, "bus": "vehicle"})
    stats = handle("getStats", None)[1]["diagnostics"]["vehicle"]
    assert stats["requests"] >= 4


@pytest.mark.parametrize(
    ("payload", "status", "error"),
    [
        ({"ecus": ["ABS"]}, 400, "unknown ECU 'ABS'"),
        ({"ecus": "BMS", "clear": True}, 403, "allow_clear is off"),
        ({"ecus": [1]}, 400, "payload.ecus: expected a list of strings"),
    ],
)
def test_read_dtcs_refuses_bad_input(
    diag_module: EdgeModule, payload: Any, status: int, error: str
) -> None:
    got, answer = diag_module.methods.handle("readDtcs", payload)
    assert got == status and error in answer["error"]


def test_read_did_answers_bad_input_nrc_and_timeout(diag_module: EdgeModule, ecus_on: Any) -> None:
    handle = diag_module.methods.handle
    assert handle("readDid", {"ecu": "BMS", "did": "xyz"})[0] == 400
    assert handle("readDid", {"ecu": "BMS", "did": 0x10000})[0] == 400
    assert handle("readDid", {"ecu": "BMS"}) == (400, {"error": "payload.did: is required"})
    status, answer = handle("readDid", {"ecu": "BMS", "did": 0x1234})
    assert (status, answer["nrc"], answer["nrcName"]) == (422, 0x31, "RequestOutOfRange")
    ecus_on.faults.silent.add("TCM")
    status, answer = handle("readDid", {"ecu": "TCM", "did": "0xF190"})
    assert status == 408 and "no answer" in answer["error"]


def test_clear_dtcs_needs_the_option_and_the_argument(
    tmp_path: Path, channel: str, ecus_on: Any
) -> None:
    data = settings(tmp_path, channel, diagnostics=diagnostics_table(allow_clear=True))
    module = start(tmp_path, data)
    try:
        assert module.methods.handle("readDtcs", {"ecus": ["BMS"]})[1]["BMS"] != []
        assert ecus_on.uds["BMS"].clears == 0
        assert module.methods.handle("readDtcs", {"ecus": ["BMS"], "clear": True}) == (
            200,
            {"BMS": []},
        )
        assert ecus_on.uds["BMS"].clears == 1 and ecus_on.uds["TCM"].clears == 0
    finally:
        module.stop(drain_timeout=0)


def test_diagnostics_methods_without_diagnostics_answer_409(module: EdgeModule) -> None:
    status, answer = module.methods.handle("getVin", None)
    assert status == 409 and "not enabled" in answer["error"]


# -- campaigns (edge/campaigns/): getSignals, capture, listCampaigns ---------------------------

CAMPAIGNS = [
    {
        "name": "fast",
        "condition": "ESC_VehicleSpeed > 1000",  # never: captures come from the method
        "signals": ["ESC_Status.*"],
        "before": 0.5,
        "after": 0.2,
        "priority": 0,
    },
    {"name": "snap", "collect": "periodic", "period": 0.5, "signals": ["BMS_PackStatus.*"]},
]


def test_campaign_methods(tmp_path: Path, channel: str) -> None:
    module = start(tmp_path, settings(tmp_path, channel, campaigns=CAMPAIGNS))
    try:
        drive(module, channel)
        handle = module.methods.handle
        status, answer = handle("getSignals", {"signals": ["ESC_Status.ESC_Vehicle*", "TCM_*"]})
        assert status == 200 and not answer["truncated"]
        assert set(answer["signals"]) == {
            "ESC_Status.ESC_VehicleSpeed",
            "TCM_GearStatus.TCM_GearLever",
            "TCM_GearStatus.TCM_CurrentGear",
            "TCM_GearStatus.TCM_OilTemp",
            "TCM_GearStatus.TCM_ConverterLocked",
        }
        lever = answer["signals"]["TCM_GearStatus.TCM_GearLever"]
        assert lever["choice"] in {"P", "R", "N", "D"} and lever["unit"] == ""
        json.dumps(answer)

        status, answer = handle("capture", {"campaign": "fast"})
        assert status == 200 and answer["end"] == answer["trigger"] + 0.2
        adhoc_request = {"signals": ["ESC_Status.*"], "before": 0.3, "after": 0.2}
        status, adhoc = handle("capture", adhoc_request)
        assert status == 200 and adhoc["campaign"] == "adhoc"
        assert handle("capture", {"campaign": "nope"})[0] == 400
        assert handle("capture", {"campaign": "snap"})[0] == 409  # it does not capture
        assert handle("capture", {})[0] == 400
        assert handle("capture", {"campaign": "fast", "after": -1})[0] == 400

        # one more second of driving, after the first: frame time passes the captures' ends
        later = VehicleSimulator(seed=3, start_time=1_700_000_001.5, channel=channel).frames(1.0)
        before = counters(module).frames
        sent = list(later)
        with can.Bus(interface="virtual", channel=channel, preserve_timestamps=True) as bus:
            for msg in sent:
                bus.send(msg)
        wait_for(lambda: counters(module).frames == before + len(sent))
        status, answer = handle("listCampaigns", None)
        assert status == 200
        fast, snap = answer["campaigns"]["fast"], answer["campaigns"]["snap"]
        assert (fast["state"], fast["triggers"], fast["captures"]) == ("running", 1, 1)
        assert fast["openCaptures"] == 0 and fast["bytes"] > 0
        assert snap["captures"] >= 2
        assert answer["history"]["frames"] > 0
        stats = handle("getStats", None)[1]
        assert stats["campaigns"]["fast"]["captures"] == 1
        assert stats["campaigns"]["adhoc"]["captures"] == 1
    finally:
        module.stop(drain_timeout=0)


def test_campaign_methods_without_campaigns_answer_409(module: EdgeModule) -> None:
    for name, payload in (
        ("capture", {"campaign": "x"}),
        ("listCampaigns", None),
    ):
        status, answer = module.methods.handle(name, payload)
        assert status == 409 and "no campaign" in answer["error"]


def test_get_signals_answers_without_campaigns(tmp_path: Path, channel: str) -> None:
    """The last-known state is the processing stage's: a plain run (the default campaign, the
    ``[signals]`` table) answers, with cantools' values of the latest frame of each message."""
    module = start(tmp_path, settings(tmp_path, channel))
    try:
        status, answer = module.methods.handle("getSignals", None)
        assert status == 200 and answer["signals"] == {}  # nothing decoded yet
        drive(module, channel)
        sent = list(VehicleSimulator(seed=2, start_time=1_700_000_000.0).frames(1.0))
        status, answer = module.methods.handle("getSignals", {"signals": ["ESC_Status.*", "TCM_*"]})
        assert status == 200 and not answer["truncated"]
        found = answer["signals"]
        db = cantools.database.load_file(str(DEMO_DBC))
        messages = ["ESC_Status", "TCM_GearStatus"]
        assert {name.split(".")[0] for name in found} == set(messages)
        for name in messages:
            message = db.get_message_by_name(name)
            last = [m for m in sent if m.arbitration_id == message.frame_id][-1]
            values = message.decode(bytes(last.data), decode_choices=False)
            for signal, value in values.items():
                answer_ = found[f"{name}.{signal}"]
                assert (answer_["value"], answer_["time"]) == (value, last.timestamp)
                assert answer_["bus"] == "vehicle"
        json.dumps(answer)
    finally:
        module.stop(drain_timeout=0)
