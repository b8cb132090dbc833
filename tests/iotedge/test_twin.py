"""edge.iotedge.twin: desired properties -> a validated configuration; refusals and reported
properties.

The protocol tests use the real azure-iot-device SDK against a real TLS mosquitto (port 8883 of a
loopback address of the test's own) and :class:`IoTHubResponder`, a paho client on the broker's
plain listener that plays IoT Hub's part of the twin and direct-method MQTT protocol:

* ``$iothub/twin/GET/?$rid=R`` -> ``$iothub/twin/res/200/?$rid=R`` with the whole twin;
* ``$iothub/twin/PATCH/properties/reported/?$rid=R`` -> ``$iothub/twin/res/204/?$rid=R&$version=V``
  (the patch merged into the reported document);
* desired changes -> ``$iothub/twin/PATCH/properties/desired/?$version=V``;
* ``$iothub/methods/POST/{name}/?$rid=R`` out, ``$iothub/methods/res/{status}/?$rid=R`` back.

These are the topics the SDK subscribes to and publishes on (azure/iot/device/iothub/pipeline/
mqtt_topic_iothub.py).
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge.config.model import Config
from edge.errors import ConfigError
from edge.iotedge.connection import create_module_client
from edge.iotedge.twin import (
    SAVED_CONFIG,
    ConfigOrigin,
    DesiredProperties,
    TwinAgent,
    config_digest,
    merge_patch,
    parse_desired,
    save_config,
    saved_config,
)
from edge.simulator.vehicle import DEMO_DBC
from tests.support.iothub import SDK_WARNINGS, IoTHubResponder, hub_merge
from tests.support.mosquitto import Mosquitto

pytestmark = SDK_WARNINGS

ROOT = Path(__file__).resolve().parents[2]


# -- configurations --------------------------------------------------------------------------


def twin_config(tmp_path: Path, **changes: Any) -> dict[str, Any]:
    """A working ``config`` object: the bundled demo database by name, a file uplink."""
    config: dict[str, Any] = {
        "vehicle_id": "car1",
        "buses": [
            {
                "name": "vehicle",
                "interface": "virtual",
                "channel": "twin",
                "dbc": "demo_vehicle.dbc",
            }
        ],
        "spool": {"path": "spool.db"},
        "uplink": {"type": "file", "path": "outbox"},
    }
    config.update(changes)
    return config


class RecordingTarget:
    """A ConfigTarget that records what it is given (the module is tested in test_module.py)."""

    def __init__(self) -> None:
        self.applied: list[tuple[Config, ConfigOrigin]] = []
        self.fail_with: Exception | None = None

    def apply_config(self, config: Config, origin: ConfigOrigin) -> None:
        if self.fail_with is not None:
            raise self.fail_with
        self.applied.append((config, origin))

    def reported_state(self) -> dict[str, Any]:
        return {"state": "running", "stateReason": None, "stats": {"frames": len(self.applied)}}


# -- merge patches and versions ----------------------------------------------------------------


def test_merge_patch_follows_rfc_7386() -> None:
    target = {"config": {"batch": {"max_age": 5, "compression": "zstd"}, "buses": [1, 2]}}
    patch = {"config": {"batch": {"max_age": 2, "compression": None}, "buses": [3]}, "$version": 4}
    merged = merge_patch(target, patch)
    assert merged == {"config": {"batch": {"max_age": 2}, "buses": [3]}}
    assert target["config"]["batch"] == {"max_age": 5, "compression": "zstd"}  # untouched
    assert merge_patch({"a": {"b": 1}}, {"a": 7}) == {"a": 7}
    assert merge_patch({"a": 7}, {"a": {"b": None, "c": 1}}) == {"a": {"c": 1}}


def test_desired_properties_merge_next_versions_and_report_gaps() -> None:
    desired = DesiredProperties()
    assert desired.apply_patch({"x": 1, "$version": 2}) == "gap"  # no full twin yet
    desired.replace({"config": {"a": 1}, "$version": 3})
    assert desired.apply_patch({"config": {"b": 2}, "$version": 4}) == "merged"
    assert desired.document == {"config": {"a": 1, "b": 2}}
    assert desired.apply_patch({"config": {"b": 3}, "$version": 4}) == "stale"
    assert desired.apply_patch({"config": {"b": 3}, "$version": 6}) == "gap"
    assert desired.apply_patch({"config": {"b": 3}}) == "gap"
    assert desired.version == 4


# -- validation -------------------------------------------------------------------------------


def test_bundled_database_by_name(tmp_path: Path) -> None:
    desired = parse_desired(
        {"config": twin_config(tmp_path), "$version": 3}, base_dir=str(tmp_path)
    )
    assert desired is not None
    assert desired.config.buses[0].databases == (str(DEMO_DBC),)
    assert desired.config.spool.path == str(tmp_path / "spool.db")  # relative to the data folder
    assert desired.sha256 == config_digest(twin_config(tmp_path))


def test_a_database_in_the_data_folder_wins_over_a_bundled_one(tmp_path: Path) -> None:
    (tmp_path / "demo_vehicle.dbc").write_bytes(DEMO_DBC.read_bytes())
    desired = parse_desired({"config": twin_config(tmp_path)}, base_dir=str(tmp_path))
    assert desired is not None
    assert desired.config.buses[0].databases == (str(tmp_path / "demo_vehicle.dbc"),)


def test_no_config_means_nothing_to_apply(tmp_path: Path) -> None:
    assert parse_desired({"$version": 1}, base_dir=str(tmp_path)) is None


@pytest.mark.parametrize(
    ("desired", "field", "reason"),
    [
        ({"confg": {}}, "confg", "unknown option (only 'config' is read)"),
        ({"config": [1]}, "config", "expected an object"),
        ({"config": {"batch": {"max_age": "fast"}}}, "config.batch.max_age", "expected a number"),
        ({"config": {"batch": {"max_age": 0}}}, "config.batch.max_age", "at least"),
        ({"config": {"batch": {"max_sise": 1}}}, "config.batch.max_sise", "unknown option"),
        ({"config": {"buses": []}}, "config.buses", "at least one"),
        (
            {"config": {"buses": [{"name": "v", "dbc": "nope.dbc"}]}},
            "config.buses[0].dbc",
            "no such CAN database",
        ),
        (
            {"config": {"buses": [{"name": "v", "dbc": "/etc/hostname"}]}},
            "config.buses[0].dbc",
            "cannot load CAN database",
        ),
        ({"config": {"uplink": {"type": "kafka"}}}, "config.uplink.type", "unknown uplink"),
        ({"config": {"replay": {"log": "drive.log"}}}, "config.replay.log", "no such file"),
    ],
)
def test_malformed_desired_properties_are_refused_with_the_field(
    tmp_path: Path, desired: dict[str, Any], field: str, reason: str
) -> None:
    document = copy.deepcopy(desired)
    if isinstance(document.get("config"), dict):
        document["config"] = {**twin_config(tmp_path), **document["config"]}
    with pytest.raises(ConfigError) as info:
        parse_desired(document, base_dir=str(tmp_path))
    assert info.value.field == field
    assert reason in info.value.reason


def test_the_deployment_templates_desired_config_is_valid(tmp_path: Path) -> None:
    template = json.loads((ROOT / "deployment.template.json").read_text())
    desired = template["modulesContent"]["CanTelemetry"]["properties.desired"]
    parsed = parse_desired(desired, base_dir=str(tmp_path))
    assert parsed is not None
    assert parsed.config.uplink.kind == "azure-edge"
    assert parsed.config.spool.path == str(tmp_path / "spool.db")


# -- the agent, without a connection -------------------------------------------------------------


def agent_for(tmp_path: Path, target: RecordingTarget) -> TwinAgent:
    return TwinAgent(target, base_dir=str(tmp_path), client=lambda: None, wall_clock=lambda: 1e9)


def test_refused_version_keeps_the_running_config_and_is_reported(tmp_path: Path) -> None:
    target = RecordingTarget()
    agent = agent_for(tmp_path, target)
    agent.receive_twin({"desired": {"config": twin_config(tmp_path), "$version": 2}})
    assert len(target.applied) == 1
    agent.receive_patch({"config": {"batch": {"max_age": "fast"}}, "$version": 3})
    assert len(target.applied) == 1
    reported = agent.reported()
    assert reported["config"]["desiredVersion"] == 2
    assert reported["config"]["refused"] == {
        "desiredVersion": 3,
        "field": "config.batch.max_age",
        "reason": "expected a number, got 'fast'",
        "at": "2001-09-09T01:46:40Z",
    }
    # The bad value stays in the desired document until it is changed.
    agent.receive_patch({"config": {"vehicle_id": "car2"}, "$version": 4})
    assert len(target.applied) == 1
    assert agent.refusal is not None and agent.refusal.desired_version == 4
    agent.receive_patch({"config": {"batch": {"max_age": 2.5}}, "$version": 5})
    assert target.applied[-1][0].batch.max_age == 2.5
    assert target.applied[-1][0].vehicle_id == "car2"
    assert agent.reported()["config"]["refused"] is None
    assert agent.reported()["config"]["desiredVersion"] == 5


def test_same_configuration_is_not_applied_twice(tmp_path: Path) -> None:
    target = RecordingTarget()
    agent = agent_for(tmp_path, target)
    agent.receive_twin({"desired": {"config": twin_config(tmp_path), "$version": 2}})
    agent.receive_twin({"desired": {"config": twin_config(tmp_path), "$version": 5}})
    assert len(target.applied) == 1
    assert agent.reported()["config"]["desiredVersion"] == 5


def test_failure_to_apply_is_a_refusal(tmp_path: Path) -> None:
    target = RecordingTarget()
    target.fail_with = ConfigError("spool.path", "cannot change while the module runs")
    agent = agent_for(tmp_path, target)
    agent.receive_twin({"desired": {"config": twin_config(tmp_path), "$version": 2}})
    assert agent.refusal is not None
    assert agent.refusal.field == "config.spool.path"
    target.fail_with = RuntimeError("a bug")
    agent.receive_patch({"config": {"vehicle_id": "x"}, "$version": 3})
    assert agent.refusal.desired_version == 3
    assert agent.refusal.reason == "internal error: RuntimeError: a bug"
    assert agent.origin is None


# -- fuzzing: no patch shape crashes the agent ----------------------------------------------------

JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**53), max_value=2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
JSON = st.recursive(
    JSON_LEAVES,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
PATHS = st.sampled_from(
    [
        (),
        ("vehicle_id",),
        ("buses",),
        ("buses", 0, "dbc"),
        ("buses", 0, "fd"),
        ("buses", 0, "bitrate"),
        ("buses", 0, "options"),
        ("signals",),
        ("signals", "mode"),
        ("signals", "rules"),
        ("batch", "max_age"),
        ("batch", "max_bytes"),
        ("batch", "compression"),
        ("spool", "max_bytes"),
        ("spool", "ttl"),
        ("uplink",),
        ("uplink", "type"),
        ("uplink", "host"),
        ("uplink", "port"),
        ("queue_frames",),
        ("metrics_port",),
        ("replay",),
        ("unknown_key",),
    ]
)


def _set(document: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """A merge patch that sets ``path`` of the config to ``value``."""
    patch: Any = value
    for key in reversed(path):
        if isinstance(key, int):  # arrays are replaced as a whole by a merge patch
            buses = copy.deepcopy(document["config"]["buses"])
            buses[0] = hub_merge(buses[0], patch) if isinstance(patch, dict) else patch
            patch = buses
        else:
            patch = {key: patch}
    return {"config": patch}


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(changes=st.lists(st.tuples(PATHS, JSON), min_size=1, max_size=4), top=JSON)
def test_no_patch_shape_crashes_the_agent(
    tmp_path: Path, changes: list[tuple[tuple[Any, ...], Any]], top: Any
) -> None:
    target = RecordingTarget()
    agent = agent_for(tmp_path, target)
    document = {"config": twin_config(tmp_path)}
    agent.receive_twin({"desired": {**document, "$version": 1}})
    assert len(target.applied) == 1
    version = 1
    patches = [_set(document, path, value) for path, value in changes] + [top, {"other": top}]
    for patch in patches:
        version += 1
        body = {**patch, "$version": version} if isinstance(patch, dict) else patch
        agent.receive_patch(body)  # must not raise, whatever the patch
        reported = agent.reported()
        json.dumps(reported)  # always serialisable
        refused = reported["config"]["refused"]
        if refused is not None:
            assert refused["field"] and refused["reason"]
            top_keys = set(top) if isinstance(top, dict) else set()
            assert refused["field"].startswith("config") or refused["field"] in {
                "other",
                '""',
                *top_keys,
            }
        # Whatever was applied last is a valid configuration.
        assert isinstance(target.applied[-1][0], Config)


# -- the saved configuration -----------------------------------------------------------------


def test_the_saved_configuration_round_trips_owner_only(tmp_path: Path) -> None:
    document = twin_config(tmp_path)
    origin = ConfigOrigin("twin", 4, config_digest(document), document, applied_at=1.0)
    assert saved_config(str(tmp_path)) is None  # nothing saved yet
    save_config(str(tmp_path), origin)
    assert (tmp_path / SAVED_CONFIG).stat().st_mode & 0o777 == 0o600
    loaded = saved_config(str(tmp_path))
    assert loaded is not None
    config, saved = loaded
    assert config.vehicle_id == "car1" and config.buses[0].name == "vehicle"
    assert (saved.source, saved.desired_version, saved.sha256) == ("saved", 4, origin.sha256)
    assert dict(saved.document) == document


@pytest.mark.parametrize(
    "content",
    [
        "not json",
        '{"desiredVersion": 1}',  # no config
        '{"config": {"buses": [], "nonsense": 1}}',  # no longer valid
        "[]",
    ],
)
def test_a_saved_configuration_that_cannot_be_used_is_ignored(
    tmp_path: Path, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / SAVED_CONFIG).write_text(content)
    assert saved_config(str(tmp_path)) is None
    assert "ignoring the saved configuration" in caplog.text


def test_a_configuration_that_cannot_be_saved_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "afile").write_text("")
    document = twin_config(tmp_path)
    origin = ConfigOrigin("twin", 1, config_digest(document), document)
    save_config(str(tmp_path / "afile"), origin)  # a file where the folder should be
    assert "cannot save the configuration" in caplog.text


# -- the agent with the real SDK ------------------------------------------------------------------


def test_agent_over_the_sdk_applies_patches_refetches_after_a_gap_and_reports(
    hub: Mosquitto, tmp_path: Path
) -> None:
    target = RecordingTarget()
    with IoTHubResponder(hub, {"config": twin_config(tmp_path)}) as responder:
        client = create_module_client(keep_alive=5)
        agent = TwinAgent(target, base_dir=str(tmp_path), client=lambda: client, report_interval=60)
        try:
            client.on_twin_desired_properties_patch_received = agent.on_patch
            agent.start()
            agent.on_connected(client)
            reported = responder.wait_reported(
                lambda r: r.get("config", {}).get("desiredVersion") == 1
            )
            assert reported["state"] == "running"
            assert reported["software"]["name"] == "can-telemetry"
            assert len(target.applied) == 1 and responder.gets == 1

            version = responder.patch_desired({"config": {"batch": {"max_age": 1.5}}})
            responder.wait_reported(lambda r: r["config"]["desiredVersion"] == version)
            assert target.applied[-1][0].batch.max_age == 1.5
            assert responder.gets == 1  # merged, no fetch

            version = responder.patch_desired({"config": {"vehicle_id": "car9"}}, skip=1)
            responder.wait_reported(lambda r: r["config"]["desiredVersion"] == version)
            assert responder.gets == 2  # a version was missed: the whole twin was fetched
            assert target.applied[-1][0].vehicle_id == "car9"

            version = responder.patch_desired({"config": {"batch": {"compression": "lz4"}}})
            reported = responder.wait_reported(lambda r: r["config"].get("refused") is not None)
            assert reported["config"]["refused"]["desiredVersion"] == version
            assert reported["config"]["refused"]["field"] == "config.batch.compression"
            assert reported["config"]["desiredVersion"] == version - 1
            assert len(target.applied) == 3

            responder.patch_desired({"config": {"batch": {"compression": "zlib"}}})
            reported = responder.wait_reported(lambda r: "refused" not in r["config"])
            assert target.applied[-1][0].batch.compression == "zlib"
        finally:
            agent.stop()
            client.shutdown()


def test_an_agent_without_a_connection_waits_instead_of_spinning(tmp_path: Path) -> None:
    asked = []

    def no_client() -> None:
        asked.append(time.monotonic())

    agent = TwinAgent(
        RecordingTarget(), base_dir=str(tmp_path), client=no_client, report_interval=0.2
    )
    agent.start()
    try:
        agent.on_patch({"config": {}, "$version": 3})  # no twin to fetch: merged as it is
        time.sleep(1.0)
    finally:
        agent.stop()
    assert 3 <= len(asked) <= 12  # about one try per interval, not a busy loop
    assert agent.refusal is not None and agent.refusal.field == "config.buses"
