"""edge.config.model: TOML (or twin JSON) -> frozen, validated dataclasses. Every bad value is
refused
with a ConfigError whose ``field`` is the exact dotted path of the offending value."""

from __future__ import annotations

import copy
import dataclasses
import os
import socket
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from edge.config.model import (
    BatchConfig,
    BusConfig,
    Config,
    ForwarderConfig,
    ReplayConfig,
    SignalRule,
    SignalsConfig,
    SpoolConfig,
    load_config,
    parse_config,
    parse_speed,
)
from edge.config.uplinks import AzureDeviceOptions, AzureEdgeOptions, MqttOptions
from edge.delivery.uplinks.file import FileUplink
from edge.errors import ConfigError
from edge.processing.database import load_databases

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
SHARED = Path(__file__).resolve().parents[3] / "shared"
BASE = "/srv/car"

# A device connection string of the right shape (the key is base64 of 32 zero bytes).
CONNECTION_STRING = (
    "HostName=hub.azure-devices.net;DeviceId=car-1;"
    "SharedAccessKey=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
)


def minimal() -> dict[str, Any]:
    return {"buses": [{"name": "can0", "dbc": "car.dbc"}]}


def two_buses() -> dict[str, Any]:
    return {
        "buses": [{"name": "can0", "dbc": "a.dbc"}, {"name": "can1", "dbc": "b.dbc"}],
    }


def parse(data: dict[str, Any]) -> Config:
    return parse_config(data, base_dir=BASE)


def refused(data: dict[str, Any]) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse(data)
    return info.value


# --- defaults ------------------------------------------------------------------------------------


def test_minimal_config_gives_the_documented_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOTEDGE_DEVICEID", "car-42")
    config = parse(minimal())
    assert config.vehicle_id == "car-42"
    assert config.buses == (
        BusConfig(
            name="can0",
            interface="virtual",
            channel="can0",
            bitrate=None,
            fd=False,
            data_bitrate=None,
            databases=(f"{BASE}/car.dbc",),
            strict=True,
            j1939=False,
            kernel_filters=True,
            receive_own_messages=False,
            options={},
        ),
    )
    assert config.replay is None
    assert config.signals == SignalsConfig(
        include=("*",),
        exclude=(),
        default=SignalRule(
            match=("*",), buses=(), mode="on_change", deadband=0.0, interval=0.0, heartbeat=60.0
        ),
        rules=(),
    )
    assert config.batch == BatchConfig(
        max_age=5.0,
        max_bytes=200_000,
        time_resolution=0.001,
        compression="zstd",
        compression_level=6,
        schema_interval=3600.0,
    )
    assert config.spool == SpoolConfig(
        path=f"{BASE}/spool/spool.db", max_bytes=1_000_000_000, ttl=None
    )
    assert config.forwarder == ForwarderConfig(
        send_timeout=30.0, backoff_initial=1.0, backoff_max=60.0
    )
    assert config.uplink.kind == "file"
    assert config.uplink.options == FileUplink.Options(
        path=f"{BASE}/outbox", fsync=True, max_files=None
    )
    assert config.queue_frames == 100_000
    assert config.log_level == "INFO"
    assert config.metrics_port is None
    assert config.base_dir == BASE


def test_the_dataclass_defaults_match_the_parsed_defaults() -> None:
    config = parse(minimal())
    assert config.signals == SignalsConfig()
    assert config.batch == BatchConfig()
    assert config.forwarder == ForwarderConfig()
    assert config.spool.max_bytes == SpoolConfig().max_bytes
    assert config.spool.ttl == SpoolConfig().ttl


def test_config_is_immutable() -> None:
    config = parse(minimal())
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.vehicle_id = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.buses[0].bitrate = 1  # type: ignore[misc]


def test_vehicle_id_defaults_to_the_iot_edge_device_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOTEDGE_DEVICEID", "edge-device-7")
    assert parse(minimal()).vehicle_id == "edge-device-7"


def test_vehicle_id_defaults_to_the_host_name_outside_iot_edge(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("IOTEDGE_DEVICEID", raising=False)
    assert parse(minimal()).vehicle_id == socket.gethostname()
    monkeypatch.setenv("IOTEDGE_DEVICEID", "")  # empty counts as unset
    assert parse(minimal()).vehicle_id == socket.gethostname()


def test_vehicle_id_in_the_file_wins_over_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IOTEDGE_DEVICEID", "edge-device-7")
    assert parse({**minimal(), "vehicle_id": "car-1"}).vehicle_id == "car-1"


def test_config_helpers() -> None:
    config = parse(two_buses())
    assert config.bus("can1").databases == (f"{BASE}/b.dbc",)
    with pytest.raises(KeyError):
        config.bus("can9")
    replay = ReplayConfig(path="/logs/drive.log", speed=None)
    replayed = config.with_replay(replay)
    assert replayed.replay == replay
    assert replayed.buses == config.buses
    assert config.replay is None  # the original is unchanged


# --- every section parses ------------------------------------------------------------------------


def full() -> dict[str, Any]:
    return {
        "vehicle_id": "car-1",
        "queue_frames": 50_000,
        "log_level": "DEBUG",
        "metrics_port": 9600,
        "buses": [
            {
                "name": "powertrain",
                "interface": "socketcan",
                "channel": "can0",
                "bitrate": 500_000,
                "fd": True,
                "data_bitrate": 2_000_000,
                "dbc": ["pt.dbc", "/opt/dbc/extra.dbc"],
                "strict": False,
                "j1939": True,
                "kernel_filters": False,
                "receive_own_messages": True,
                "options": {"ignore_rx_error_frames": True, "local_loopback": False},
            },
            {"name": "body", "dbc": "body.dbc"},
        ],
        "replay": {
            "log": "logs/drive.log",
            "speed": 10,
            "channels": {"can0": "powertrain", "can1": "body"},
            "loop": True,
        },
        "signals": {
            "include": ["Engine.*", "Body.*"],
            "exclude": "*.Checksum",
            "mode": "min_interval",
            "interval": 0.5,
            "deadband": 0.1,
            "heartbeat": 30,
            "rules": [
                {"match": "Engine.Speed", "mode": "every"},
                {
                    "match": ["Body.*"],
                    "buses": ["body"],
                    "mode": "on_change",
                    "deadband": 2,
                    "heartbeat": 0,
                },
                {"match": "*", "interval": 5.0},
            ],
        },
        "batch": {
            "max_age": 10,
            "max_bytes": 100_000,
            "time_resolution": 0.0001,
            "compression": "zlib",
            "compression_level": 6,
            "schema_interval": 600,
        },
        "spool": {"path": "/var/lib/ct/spool.db", "max_bytes": 5_000_000, "ttl": 86400},
        "uplink": {
            "type": "file",
            "path": "out",
            "fsync": False,
            "max_files": 1000,
            "send_timeout": 5,
            "backoff_initial": 0.5,
            "backoff_max": 30,
        },
    }


def test_every_section_parses() -> None:
    config = parse(full())
    assert config.vehicle_id == "car-1"
    assert (config.queue_frames, config.log_level, config.metrics_port) == (50_000, "DEBUG", 9600)
    pt, body = config.buses
    assert pt == BusConfig(
        name="powertrain",
        interface="socketcan",
        channel="can0",
        bitrate=500_000,
        fd=True,
        data_bitrate=2_000_000,
        databases=(f"{BASE}/pt.dbc", "/opt/dbc/extra.dbc"),
        strict=False,
        j1939=True,
        kernel_filters=False,
        receive_own_messages=True,
        options={"ignore_rx_error_frames": True, "local_loopback": False},
    )
    assert (body.name, body.channel, body.databases) == ("body", "body", (f"{BASE}/body.dbc",))
    assert config.replay == ReplayConfig(
        path=f"{BASE}/logs/drive.log",
        speed=10.0,
        channels={"can0": "powertrain", "can1": "body"},
        loop=True,
    )
    signals = config.signals
    assert signals.include == ("Engine.*", "Body.*")
    assert signals.exclude == ("*.Checksum",)
    default = SignalRule(
        match=("*",), mode="min_interval", deadband=0.1, interval=0.5, heartbeat=30.0
    )
    assert signals.default == default
    # Each rule starts from the [signals] defaults and overrides what it sets.
    assert signals.rules == (
        SignalRule(
            match=("Engine.Speed",), mode="every", deadband=0.1, interval=0.5, heartbeat=30.0
        ),
        SignalRule(
            match=("Body.*",),
            buses=("body",),
            mode="on_change",
            deadband=2.0,
            interval=0.5,
            heartbeat=0.0,
        ),
        SignalRule(match=("*",), mode="min_interval", deadband=0.1, interval=5.0, heartbeat=30.0),
    )
    assert config.batch == BatchConfig(
        max_age=10.0,
        max_bytes=100_000,
        time_resolution=0.0001,
        compression="zlib",
        compression_level=6,
        schema_interval=600.0,
    )
    assert config.spool == SpoolConfig(path="/var/lib/ct/spool.db", max_bytes=5_000_000, ttl=86400)
    assert config.forwarder == ForwarderConfig(
        send_timeout=5.0, backoff_initial=0.5, backoff_max=30.0
    )
    assert config.uplink.kind == "file"
    assert config.uplink.options == FileUplink.Options(
        path=f"{BASE}/out", fsync=False, max_files=1000
    )


def test_numbers_come_out_as_their_declared_types() -> None:
    config = parse(full())
    assert type(config.batch.max_age) is float
    assert type(config.signals.default.heartbeat) is float
    assert type(config.replay.speed) is float  # type: ignore[union-attr]
    assert type(config.spool.ttl) is float


def test_replay_speed_max_means_as_fast_as_possible() -> None:
    data = minimal()
    data["replay"] = {"log": "drive.log", "speed": "max"}
    replay = parse(data).replay
    assert replay == ReplayConfig(path=f"{BASE}/drive.log", speed=None, channels={}, loop=False)


def test_replay_defaults() -> None:
    data = minimal()
    data["replay"] = {"log": "/logs/drive.asc"}
    assert parse(data).replay == ReplayConfig(path="/logs/drive.asc", speed=1.0)


def test_spool_ttl_zero_means_no_ttl() -> None:
    data = minimal()
    data["spool"] = {"ttl": 0}
    assert parse(data).spool.ttl is None


def test_a_single_string_is_a_list_of_one() -> None:
    data = minimal()
    data["signals"] = {"include": "Engine.*", "rules": [{"match": "*", "buses": "can0"}]}
    signals = parse(data).signals
    assert signals.include == ("Engine.*",)
    assert signals.rules[0].match == ("*",)
    assert signals.rules[0].buses == ("can0",)


def test_min_interval_rule_inherits_the_default_interval() -> None:
    data = minimal()
    data["signals"] = {"interval": 2.0, "rules": [{"match": "*", "mode": "min_interval"}]}
    assert parse(data).signals.rules[0].interval == 2.0


@pytest.mark.parametrize("resolution", [1e-6, 0.00001, 0.0005, 0.001, 0.01, 0.1, 1.0])
def test_whole_microsecond_time_resolutions_are_accepted(resolution: float) -> None:
    data = minimal()
    data["batch"] = {"time_resolution": resolution}
    assert parse(data).batch.time_resolution == resolution


@pytest.mark.parametrize("resolution", [0.000123, 0.000251])
def test_every_whole_microsecond_time_resolution_is_accepted(resolution: float) -> None:
    data = minimal()
    data["batch"] = {"time_resolution": resolution}
    assert parse(data).batch.time_resolution == resolution


@pytest.mark.parametrize(
    ("kind", "options", "expected"),
    [
        ("mqtt", {"host": "broker"}, MqttOptions(host="broker")),
        (
            "mqtt",
            {"host": "broker", "tls": False, "qos": 0, "protocol": "3.1.1", "topic": "t/{seq}"},
            MqttOptions(
                host="broker", port=1883, tls=False, qos=0, protocol="3.1.1", topic="t/{seq}"
            ),
        ),
        ("azure-edge", {}, AzureEdgeOptions()),
        ("azure-edge", {"output": "can", "keep_alive": 120}, AzureEdgeOptions("can", 120)),
        (
            "azure-device",
            {"connection_string": CONNECTION_STRING},
            AzureDeviceOptions(connection_string=CONNECTION_STRING),
        ),
    ],
)
def test_uplink_types_parse_their_options(
    kind: str, options: dict[str, Any], expected: object
) -> None:
    data = minimal()
    data["uplink"] = {"type": kind, "send_timeout": 10, **options}
    config = parse(data)
    assert config.uplink.kind == kind
    assert config.uplink.options == expected
    assert config.forwarder.send_timeout == 10.0


# --- bad values: the exact field -----------------------------------------------------------------

#: A function that builds one (bad) configuration mapping.
Build = Callable[[], dict[str, Any]]


def _put(data: dict[str, Any], path: str, value: object) -> None:
    """Set ``path`` (dotted, with ``[i]`` indexes; missing tables are created) to ``value``."""
    node: Any = data
    parts = path.replace("[", ".[").split(".")
    for part in parts[:-1]:
        node = node[int(part[1:-1])] if part.startswith("[") else node.setdefault(part, {})
    last = parts[-1]
    node[int(last[1:-1]) if last.startswith("[") else last] = value


def _set(path: str, value: object, base: Build = minimal) -> Build:
    """``base()`` with ``path`` set to ``value``."""
    return _with(base, (path, value))


def _two(path: str, value: object) -> Build:
    """The two-bus configuration with ``path`` set to ``value``."""
    return _set(path, value, two_buses)


def _with(base: Build, *changes: tuple[str, object]) -> Build:
    """``base()`` with each ``(path, value)`` of ``changes`` set."""

    def build() -> dict[str, Any]:
        data = base()
        for path, value in changes:
            _put(data, path, value)
        return data

    return build


def _without(key: str) -> Build:
    """The minimal configuration without ``key``."""

    def build() -> dict[str, Any]:
        data = minimal()
        del data[key]
        return data

    return build


MQTT = {"type": "mqtt", "host": "broker"}

BAD: list[tuple[str, Build, str, str]] = [
    # (id, bad configuration, field, part of the reason)
    # root
    ("vehicle_id-type", _set("vehicle_id", 7), "vehicle_id", "expected a non-empty string"),
    ("vehicle_id-empty", _set("vehicle_id", ""), "vehicle_id", "expected a non-empty string"),
    ("queue_frames-low", _set("queue_frames", 999), "queue_frames", "at least 1000"),
    ("queue_frames-float", _set("queue_frames", 1e5), "queue_frames", "expected an integer"),
    ("queue_frames-high", _set("queue_frames", 10**9), "queue_frames", "at most 1000000"),
    ("log_level", _set("log_level", "verbose"), "log_level", "must be one of DEBUG, INFO"),
    ("log_level-lower", _set("log_level", "info"), "log_level", "must be one of"),
    ("metrics_port-high", _set("metrics_port", 70000), "metrics_port", "at most 65535"),
    ("metrics_port-bool", _set("metrics_port", True), "metrics_port", "expected an integer"),
    ("root-unknown", _set("vehicle", "car"), "vehicle", "unknown option"),
    # buses
    ("buses-missing", _without("buses"), "buses", "at least one [[buses]]"),
    ("buses-empty", _set("buses", []), "buses", "at least one [[buses]]"),
    ("buses-table", _set("buses", {"name": "can0"}), "buses", "expected an array of tables"),
    ("bus-not-table", _two("buses[1]", "can1"), "buses[1]", "expected a table"),
    ("bus-name-missing", _two("buses[1]", {"dbc": "b.dbc"}), "buses[1].name", "is required"),
    ("bus-name-duplicate", _two("buses[1].name", "can0"), "buses[1].name", "duplicate bus name"),
    ("bus-interface", _two("buses[1].interface", ""), "buses[1].interface", "non-empty string"),
    ("bus-channel-int", _two("buses[1].channel", 0), "buses[1].channel", "non-empty string"),
    ("bitrate-type", _two("buses[1].bitrate", "fast"), "buses[1].bitrate", "expected an integer"),
    ("bitrate-bool", _two("buses[1].bitrate", True), "buses[1].bitrate", "expected an integer"),
    ("bitrate-low", _two("buses[1].bitrate", 999), "buses[1].bitrate", "at least 1000"),
    ("bitrate-high", _two("buses[1].bitrate", 1_000_001), "buses[1].bitrate", "at most 1000000"),
    ("fd-type", _two("buses[1].fd", "yes"), "buses[1].fd", "expected true or false"),
    (
        "data_bitrate-without-fd",
        _two("buses[1].data_bitrate", 2_000_000),
        "buses[1].data_bitrate",
        "only applies with fd = true",
    ),
    (
        "data_bitrate-high",
        _with(two_buses, ("buses[1].fd", True), ("buses[1].data_bitrate", 16_000_001)),
        "buses[1].data_bitrate",
        "at most 16000000",
    ),
    ("dbc-missing", _two("buses[1]", {"name": "can1"}), "buses[1].dbc", "at least one CAN"),
    ("dbc-empty", _two("buses[1].dbc", []), "buses[1].dbc", "at least one CAN database"),
    ("dbc-type", _two("buses[1].dbc", 5), "buses[1].dbc", "expected a list of strings"),
    ("dbc-item", _two("buses[1].dbc", ["a.dbc", ""]), "buses[1].dbc", "list of strings"),
    ("strict-type", _two("buses[1].strict", "no"), "buses[1].strict", "expected true or false"),
    ("j1939-type", _two("buses[1].j1939", 1), "buses[1].j1939", "expected true or false"),
    ("kernel_filters", _two("buses[1].kernel_filters", 0), "buses[1].kernel_filters", "true or"),
    (
        "receive_own",
        _two("buses[1].receive_own_messages", "x"),
        "buses[1].receive_own_messages",
        "expected true or false",
    ),
    ("options-type", _two("buses[1].options", 5), "buses[1].options", "expected a table"),
    ("bus-unknown", _two("buses[1].bitrat", 500_000), "buses[1].bitrat", "unknown option"),
    # replay
    ("replay-type", _set("replay", "drive.log"), "replay", "expected a table"),
    ("replay-log-missing", _set("replay", {"speed": 2}), "replay.log", "is required"),
    ("replay-log-type", _set("replay", {"log": 5}), "replay.log", "expected a non-empty string"),
    (
        "replay-speed-zero",
        _set("replay", {"log": "a.log", "speed": 0}),
        "replay.speed",
        "greater than 0",
    ),
    (
        "replay-speed-negative",
        _set("replay", {"log": "a.log", "speed": -1.5}),
        "replay.speed",
        "greater than 0",
    ),
    (
        "replay-speed-word",
        _set("replay", {"log": "a.log", "speed": "fast"}),
        "replay.speed",
        "expected a number",
    ),
    (
        "replay-speed-nan",
        _set("replay", {"log": "a.log", "speed": float("nan")}),
        "replay.speed",
        "finite",
    ),
    (
        "replay-channel-no-bus",
        _set("replay", {"log": "a.log", "channels": {"can0": "can0", "vcan5": "can5"}}),
        "replay.channels.vcan5",
        "no bus named 'can5'",
    ),
    (
        "replay-channels-type",
        _set("replay", {"log": "a.log", "channels": ["can0"]}),
        "replay.channels",
        "expected a table",
    ),
    (
        "replay-loop-type",
        _set("replay", {"log": "a.log", "loop": "yes"}),
        "replay.loop",
        "true or false",
    ),
    (
        "replay-unknown",
        _set("replay", {"log": "a.log", "rate": 2}),
        "replay.rate",
        "unknown option",
    ),
    # signals
    ("signals-type", _set("signals", ["*"]), "signals", "expected a table"),
    ("include-type", _set("signals.include", 5), "signals.include", "list of strings"),
    ("exclude-item", _set("signals.exclude", ["a", 1]), "signals.exclude", "list of strings"),
    ("mode", _set("signals.mode", "sometimes"), "signals.mode", "must be one of every"),
    ("deadband-negative", _set("signals.deadband", -1), "signals.deadband", "at least 0.0"),
    ("deadband-inf", _set("signals.deadband", float("inf")), "signals.deadband", "finite"),
    ("interval-negative", _set("signals.interval", -0.1), "signals.interval", "at least 0.0"),
    ("heartbeat-negative", _set("signals.heartbeat", -1), "signals.heartbeat", "at least 0.0"),
    ("heartbeat-nan", _set("signals.heartbeat", float("nan")), "signals.heartbeat", "finite"),
    (
        "min_interval-without-interval",
        _set("signals.mode", "min_interval"),
        "signals.interval",
        "greater than 0 with mode = 'min_interval'",
    ),
    ("signals-match", _set("signals.match", ["*"]), "signals.match", "unknown option"),
    ("signals-unknown", _set("signals.includes", ["*"]), "signals.includes", "unknown option"),
    ("rules-type", _set("signals.rules", {"match": "*"}), "signals.rules", "array of tables"),
    ("rule-type", _set("signals.rules", ["*"]), "signals.rules[0]", "expected a table"),
    (
        "rule-match-missing",
        _set("signals.rules", [{"mode": "every"}]),
        "signals.rules[0].match",
        "is required",
    ),
    (
        "rule-interval-type",
        _set("signals.rules", [{"match": "*", "interval": "1s"}]),
        "signals.rules[0].interval",
        "expected a number",
    ),
    (
        "rule-min_interval-without-interval",
        _set("signals.rules", [{"match": "a.*"}, {"match": "*", "mode": "min_interval"}]),
        "signals.rules[1].interval",
        "greater than 0",
    ),
    (
        "rule-min_interval-zero",
        _set("signals.rules", [{"match": "*", "mode": "min_interval", "interval": 0}]),
        "signals.rules[0].interval",
        "greater than 0",
    ),
    (
        "rule-mode",
        _set("signals.rules", [{"match": "*", "mode": "never"}]),
        "signals.rules[0].mode",
        "must be one of",
    ),
    (
        "rule-bus-unknown",
        _set("signals.rules", [{"match": "*", "buses": ["can0", "can9"]}]),
        "signals.rules[0].buses",
        "no bus named 'can9'",
    ),
    (
        "rule-heartbeat",
        _set("signals.rules", [{"match": "*", "heartbeat": -5}]),
        "signals.rules[0].heartbeat",
        "at least 0.0",
    ),
    (
        "rule-unknown",
        _set("signals.rules", [{"match": "*"}, {"match": "*", "deadbnd": 1}]),
        "signals.rules[1].deadbnd",
        "unknown option",
    ),
    # batch
    ("batch-type", _set("batch", 5), "batch", "expected a table"),
    ("max_bytes-low", _set("batch.max_bytes", 4095), "batch.max_bytes", "at least 4096"),
    ("max_bytes-iot-hub", _set("batch.max_bytes", 256 * 1024), "batch.max_bytes", "at most 253952"),
    ("max_bytes-float", _set("batch.max_bytes", 1e5), "batch.max_bytes", "expected an integer"),
    ("max_age-low", _set("batch.max_age", 0.01), "batch.max_age", "at least 0.05"),
    ("max_age-high", _set("batch.max_age", 3601), "batch.max_age", "at most 3600.0"),
    ("max_age-type", _set("batch.max_age", "5s"), "batch.max_age", "expected a number"),
    ("resolution-low", _set("batch.time_resolution", 0), "batch.time_resolution", "at least"),
    ("resolution-high", _set("batch.time_resolution", 2), "batch.time_resolution", "at most 1.0"),
    (
        "resolution-fraction-of-us",
        _set("batch.time_resolution", 1.5e-6),
        "batch.time_resolution",
        "whole number of microseconds",
    ),
    (
        "resolution-fraction-of-ms",
        _set("batch.time_resolution", 0.0012345),
        "batch.time_resolution",
        "whole number of microseconds",
    ),
    ("compression", _set("batch.compression", "lz4"), "batch.compression", "zstd, zlib, none"),
    ("level-low", _set("batch.compression_level", 0), "batch.compression_level", "at least 1"),
    ("level-high", _set("batch.compression_level", 20), "batch.compression_level", "at most 19"),
    ("schema_interval", _set("batch.schema_interval", 0.5), "batch.schema_interval", "at least"),
    ("batch-unknown", _set("batch.max_size", 1000), "batch.max_size", "unknown option"),
    # spool
    ("spool-path", _set("spool.path", ""), "spool.path", "expected a non-empty string"),
    ("spool-max_bytes", _set("spool.max_bytes", 999_999), "spool.max_bytes", "at least 1000000"),
    ("spool-ttl", _set("spool.ttl", -1), "spool.ttl", "at least 0.0"),
    ("spool-unknown", _set("spool.size", 1), "spool.size", "unknown option"),
    # uplink: forwarder settings and the registry
    ("uplink-type-word", _set("uplink", {"type": 5}), "uplink.type", "non-empty string"),
    ("send_timeout", _set("uplink.send_timeout", 0), "uplink.send_timeout", "at least 0.1"),
    ("backoff_initial", _set("uplink.backoff_initial", 0), "uplink.backoff_initial", "at least"),
    (
        "backoff_max-below-initial",
        _set("uplink", {"backoff_initial": 10, "backoff_max": 5}),
        "uplink.backoff_max",
        "must not be smaller than backoff_initial",
    ),
    # uplink: each type's own options, named under uplink.
    ("file-fsync", _set("uplink.fsync", "yes"), "uplink.fsync", "expected true or false"),
    ("file-max_files", _set("uplink.max_files", 0), "uplink.max_files", "at least 1"),
    ("file-path", _set("uplink.path", 5), "uplink.path", "expected a non-empty string"),
    ("file-unknown", _set("uplink.host", "x"), "uplink.host", "unknown option"),
    ("mqtt-host", _set("uplink", {"type": "mqtt"}), "uplink.host", "is required"),
    ("mqtt-port", _set("uplink", {**MQTT, "port": 70000}), "uplink.port", "at most 65535"),
    ("mqtt-qos", _set("uplink", {**MQTT, "qos": 2}), "uplink.qos", "at most 1"),
    ("mqtt-protocol", _set("uplink", {**MQTT, "protocol": 5}), "uplink.protocol", "non-empty"),
    ("mqtt-topic", _set("uplink", {**MQTT, "topic": "v/{car}"}), "uplink.topic", "placeholder"),
    (
        "mqtt-ca_file",
        _set("uplink", {**MQTT, "ca_file": "certs/ca.pem"}),
        "uplink.ca_file",
        f"no such file: {BASE}/certs/ca.pem",
    ),
    ("mqtt-unknown", _set("uplink", {**MQTT, "hostname": "x"}), "uplink.hostname", "unknown"),
    (
        "azure-edge-keep_alive",
        _set("uplink", {"type": "azure-edge", "keep_alive": 1}),
        "uplink.keep_alive",
        "at least 5",
    ),
    (
        "azure-edge-unknown",
        _set("uplink", {"type": "azure-edge", "connection_string": CONNECTION_STRING}),
        "uplink.connection_string",
        "unknown option",
    ),
    (
        "azure-device-connection_string",
        _set("uplink", {"type": "azure-device"}),
        "uplink.connection_string",
        "is required",
    ),
]


@pytest.mark.parametrize(
    ("build", "field", "reason"), [pytest.param(b, f, r, id=i) for i, b, f, r in BAD]
)
def test_bad_value_names_the_exact_field(build: Build, field: str, reason: str) -> None:
    error = refused(build())
    assert error.field == field
    assert reason in error.reason
    assert str(error) == f"{field}: {error.reason}"


def test_unknown_uplink_type_lists_the_known_ones() -> None:
    data = minimal()
    data["uplink"] = {"type": "kafka"}
    error = refused(data)
    assert error.field == "uplink.type"
    assert "'kafka'" in error.reason
    for known in ("azure-device", "azure-edge", "file", "mqtt"):
        assert known in error.reason


def test_the_mqtt_password_is_never_quoted() -> None:
    data = minimal()
    data["uplink"] = {**MQTT, "password": "hunter2-secret"}
    error = refused(data)  # a password without a username
    assert error.field == "uplink.password"
    assert "hunter2-secret" not in str(error)


def test_the_connection_string_is_never_quoted() -> None:
    data = minimal()
    secret = CONNECTION_STRING.replace("SharedAccessKey", "SharedAccesKey")
    data["uplink"] = {"type": "azure-device", "connection_string": secret}
    error = refused(data)
    assert error.field == "uplink.connection_string"
    assert "car-1" not in str(error)
    assert "AAAA" not in str(error)


def test_the_input_mapping_is_not_modified() -> None:
    data = full()
    snapshot = copy.deepcopy(data)
    parse(data)
    assert data == snapshot


def test_parse_config_refuses_a_root_that_is_not_a_table() -> None:
    with pytest.raises(ConfigError, match="expected a table"):
        parse_config(["buses"])  # type: ignore[arg-type]


# --- --speed -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "speed"), [("max", None), ("1", 1.0), ("0.5", 0.5), ("10", 10.0)])
def test_parse_speed(text: str, speed: float | None) -> None:
    assert parse_speed(text) == speed


@pytest.mark.parametrize("text", ["0", "-1", "fast", "", "nan"])
def test_parse_speed_refuses(text: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_speed(text)
    assert info.value.field == "--speed"


# --- files ---------------------------------------------------------------------------------------


def test_relative_paths_are_resolved_against_the_config_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "etc" / "car"
    (folder / "certs").mkdir(parents=True)
    (folder / "certs" / "ca.pem").write_text("not checked here\n")
    path = folder / "config.toml"
    path.write_text(
        """
[[buses]]
name = "can0"
dbc = ["dbc/pt.dbc", "/opt/dbc/abs.dbc"]

[replay]
log = "../logs/drive.log"

[spool]
path = "state/spool.db"

[uplink]
type = "mqtt"
host = "broker"
ca_file = "certs/ca.pem"
""",
        encoding="utf-8",
    )
    monkeypatch.chdir(tmp_path)  # the working directory must not matter
    config = load_config(path)
    assert config.base_dir == str(folder)
    assert config.buses[0].databases == (str(folder / "dbc/pt.dbc"), "/opt/dbc/abs.dbc")
    assert config.replay is not None
    assert Path(config.replay.path).resolve() == tmp_path / "etc" / "logs" / "drive.log"
    assert config.spool.path == str(folder / "state" / "spool.db")
    assert config.uplink.options.ca_file == str(folder / "certs" / "ca.pem")


def test_the_file_uplink_outbox_defaults_to_outbox_beside_the_config(tmp_path: Path) -> None:
    path = tmp_path / "car.toml"
    path.write_text('[[buses]]\nname = "can0"\ndbc = "car.dbc"\n', encoding="utf-8")
    config = load_config(str(path))
    assert config.uplink.options == FileUplink.Options(path=str(tmp_path / "outbox"))
    assert config.spool.path == str(tmp_path / "spool" / "spool.db")


def test_load_config_through_a_relative_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "car.toml").write_text(
        '[[buses]]\nname = "can0"\ndbc = "car.dbc"\n', encoding="utf-8"
    )
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("conf") / "car.toml")
    assert config.buses[0].databases == (str(tmp_path / "conf" / "car.dbc"),)


def test_errors_from_a_file_name_the_field(tmp_path: Path) -> None:
    path = tmp_path / "car.toml"
    path.write_text(
        '[[buses]]\nname = "can0"\ndbc = "a.dbc"\n\n[[buses]]\nname = "can1"\ndbc = "b.dbc"\n'
        'bitrate = "fast"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.field == "buses[1].bitrate"


def test_nan_and_inf_in_toml_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "car.toml"
    base = '[[buses]]\nname = "can0"\ndbc = "a.dbc"\n'
    for text, field in [
        ("[batch]\nmax_age = nan\n", "batch.max_age"),
        ("[spool]\nttl = inf\n", "spool.ttl"),
    ]:
        path.write_text(base + text, encoding="utf-8")
        with pytest.raises(ConfigError, match="finite") as info:
            load_config(path)
        assert info.value.field == field


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text('[[buses]\nname = "can0"\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "not valid TOML" in str(info.value)
    assert "line 1" in str(info.value)


def test_missing_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "No such file" in str(info.value)


def test_a_folder_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_a_file_that_is_not_utf8_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('vehicle_id = "Müller"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)


# --- the examples --------------------------------------------------------------------------------


def test_example_car_loads() -> None:
    config = load_config(EXAMPLES / "car.toml")
    assert [(b.name, b.interface, b.channel) for b in config.buses] == [
        ("powertrain", "socketcan", "can0"),
        ("body", "socketcan", "can1"),
    ]
    assert config.buses[0].databases != config.buses[1].databases
    assert config.uplink.kind == "azure-edge"
    assert config.signals.rules
    # The bundled database it names is real and loads as configured.
    powertrain = config.buses[0]
    assert Path(powertrain.databases[0]).resolve() == ROOT / "dbc" / "demo_vehicle.dbc"
    assert load_databases(powertrain.databases, strict=powertrain.strict).messages


def test_example_mqtt_loads() -> None:
    config = load_config(EXAMPLES / "mqtt.toml")
    assert config.uplink.kind == "mqtt"
    assert isinstance(config.uplink.options, MqttOptions)
    for bus in config.buses:
        assert load_databases(bus.databases, strict=bus.strict).messages


def test_example_replay_loads() -> None:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: the replay example uses the shared corpus")
    config = load_config(EXAMPLES / "replay.toml")
    assert config.replay is not None
    assert Path(config.replay.path).is_file()
    assert set(config.replay.channels.values()) == {b.name for b in config.buses}
    assert config.uplink.kind == "file"
    for bus in config.buses:
        assert load_databases(bus.databases, strict=bus.strict).messages


def test_example_campaigns_loads_and_compiles() -> None:
    from edge.campaigns.engine import CampaignEngine
    from edge.processing.processor import Processor

    config = load_config(EXAMPLES / "campaigns.toml")
    assert [c.name for c in config.campaigns] == ["harsh-braking", "reverse", "battery"]
    processor = Processor(
        config, lambda build, priority=5: 0, campaigns=CampaignEngine
    )  # conditions resolve
    assert processor.campaigns is not None


def test_example_vss_tesla_loads_and_its_mapping_holds() -> None:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: the VSS example uses the shared corpus")
    from edge.processing.database import load_vss_mapping

    config = load_config(EXAMPLES / "vss_tesla.toml")
    assert config.vss_tree is not None and Path(config.vss_tree).is_file()
    assert len(load_vss_mapping(config).paths()) == 35  # Kuksa's file, unchanged


def test_every_example_is_covered() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.toml")) == [
        "campaigns.toml",
        "car.toml",
        "diagnostics.toml",
        "mqtt.toml",
        "replay.toml",
        "vss_tesla.toml",
    ]


def _doc_snippets() -> list[str]:
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    return [block.split("```", 1)[0] for block in text.split("```toml\n")[1:]]


def test_the_toml_snippets_in_the_docs_are_valid() -> None:
    snippets = _doc_snippets()
    assert len(snippets) >= 5
    for snippet in snippets:
        data = tomllib.loads(snippet)
        # A snippet of one section gets buses to refer to.
        data.setdefault(
            "buses", [{"name": n, "dbc": "x.dbc"} for n in ("powertrain", "body", "radar")]
        )
        parse(data)


# --- the command line ----------------------------------------------------------------------------


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "edge", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env=env,
        check=False,
    )


def test_cli_run_with_a_bad_config_exits_2_naming_the_field(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        '[[buses]]\nname = "can0"\ndbc = "car.dbc"\n\n[[signals.rules]]\nmatch = "*"\n'
        'interval = "often"\n',
        encoding="utf-8",
    )
    result = _run_cli("run", "--config", str(path))
    assert result.returncode == 2, result.stderr
    assert "signals.rules[0].interval" in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_run_with_a_missing_config_exits_2_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"
    result = _run_cli("run", "--config", str(path))
    assert result.returncode == 2, result.stderr
    assert str(path) in result.stderr
    assert "Traceback" not in result.stderr


def test_a_vehicle_id_that_would_break_the_mqtt_topic_is_refused(tmp_path: Path) -> None:
    data = {
        "vehicle_id": "fleet/car+1",
        "buses": [{"name": "can0", "dbc": [str(ROOT / "dbc" / "demo_vehicle.dbc")]}],
        "uplink": {"type": "mqtt", "host": "localhost", "tls": False},
    }
    with pytest.raises(ConfigError) as info:
        parse_config(data, base_dir=str(tmp_path))
    assert info.value.field == "vehicle_id"


def test_a_toml_file_with_a_utf8_byte_order_mark_loads(tmp_path: Path) -> None:
    path = tmp_path / "bom.toml"
    path.write_text(
        'vehicle_id = "bom-car"\n[[buses]]\nname = "can0"\ndbc = ["x.dbc"]\n', encoding="utf-8-sig"
    )
    assert load_config(path).vehicle_id == "bom-car"
