"""Property tests of configuration validation: the rule "a bad config stops start-up naming the
field; a bad remote update (module twin desired properties) is refused and reported while the
running config stays".

* Generated valid configurations (every section: buses, replay, signals and rules, batch, spool,
  each uplink type, campaigns of each kind, diagnostics, VSS) parse, deterministically, and the
  same from TOML (``load_config``) as from a mapping (``parse_config``).
* Mutations of a valid configuration (a key removed or misspelt, a value of another type, numbers
  out of range, unknown keys at any depth, values swapped, lists emptied, shortened or
  duplicated, nested garbage) either parse or raise :class:`ConfigError` whose field is a place
  of the input (or a key missing from it); never another exception, from a mapping or from a
  TOML file alike. Where the mutation says which field is bad, the error names exactly that
  field.
* Twin updates go through the module's own path (``TwinAgent.receive_patch`` ->
  ``parse_desired`` -> ``EdgeModule.apply_config``): an invalid one is refused, reported under
  ``config.refused`` and the running configuration is the very same object; a valid one is
  applied.

The bugs these properties found (now mended) are kept at the end as minimal tests.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import gc
import json
import math
import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import can
import cantools
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

import edge.iotedge.module as module_module
from edge.config.model import Config, load_config, parse_config
from edge.errors import ConfigError
from edge.iotedge.module import EdgeModule, ModuleOptions
from edge.iotedge.twin import SAVED_CONFIG, Refusal, parse_desired
from edge.processing.database import load_vss_mapping
from tests.support.iothub import hub_merge
from tests.support.waiting import wait_for

Key = str | int
Path_ = tuple[Key, ...]

FAST = settings(max_examples=50, deadline=None, database=None)

# -- paths in a document ----------------------------------------------------------------------


def render(path: Path_) -> str:
    """A path as ConfigError names it: ``buses[0].dbc``."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text = f"{text}.{part}" if text else part
    return text


def walk(node: Any, path: Path_ = ()) -> Iterator[tuple[Path_, Any]]:
    """Every node of a document with its path, the root first."""
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, (*path, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, (*path, i))


def get(doc: Any, path: Path_) -> Any:
    for part in path:
        doc = doc[part]
    return doc


def put(doc: Any, path: Path_, value: Any) -> None:
    get(doc, path[:-1])[path[-1]] = value


def located(field: str, doc: Any) -> bool:
    """Whether ``field`` names a node of ``doc``, or a key missing from one of its tables (or
    from a table missing itself: ``spool.path`` without a ``spool`` table)."""
    if field == "<root>":
        return True
    for path, node in walk(doc):
        prefix = render(path)
        if field == prefix:
            return True
        if isinstance(node, dict) and (not prefix or field.startswith(prefix + ".")):
            rest = field[len(prefix) + 1 :] if prefix else field
            first = rest.split(".", 1)[0]
            if first and first not in node and "[" not in rest:
                return True
    return False


def within(field: str, path: Path_) -> bool:
    """Whether ``field`` is ``path`` or below it."""
    prefix = render(path)
    return not prefix or field == prefix or field.startswith((prefix + ".", prefix + "["))


def passthrough(path: Path_) -> bool:
    """Inside a table passed on unchecked: ``buses[i].options``, or ``replay.channels``'s keys."""
    return any(
        (path[i] == "options" and i >= 2 and path[i - 2] == "buses")
        or (path[i] == "channels" and i >= 1 and path[i - 1] == "replay")
        for i in range(len(path))
    )


# -- strategies: valid configurations ---------------------------------------------------------

TEXT = st.text(
    st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=12
)
LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
NAME = st.builds(  # [A-Za-z][A-Za-z0-9_-]{0,11}
    str.__add__, st.sampled_from(LETTERS), st.text(LETTERS + "0123456789_-", max_size=11)
)
DBC_FILE = st.builds(
    "{}.{}".format,
    st.text(LETTERS[:26] + "0123456789_", min_size=1, max_size=8),
    st.sampled_from(["dbc", "kcd", "arxml", "sym"]),
) | st.sampled_from(["/opt/dbc/pt.dbc", "../dbc/demo_vehicle.dbc", "vehicle/body.dbc"])
GLOB = st.sampled_from(
    ["*", "ESC_*", "*.Checksum", "*Counter*", "Engine.?peed", "[AB]*", "BMS_PackStatus.*"]
)
CONDITION = st.sampled_from(
    [
        "ESC_Status.ESC_VehicleSpeed > 20",
        "TCM_GearStatus.TCM_GearLever == 'R'",
        "ESC_VehicleSpeed > 20 and (ESC_BrakePressure - prev(ESC_BrakePressure, 0.5)) > 40",
        "changed(TCM_GearStatus.TCM_CurrentGear)",
        "stale(ESC_Status, 2)",
        "abs(EPS_SteeringAngle.EPS_SteeringWheelAngle) > 90",
        "avg(BMS_PackStatus.BMS_SOC, 10) < 20",
        "min(ECM_EngineStatus.ECM_EngineSpeed, 5) > 3000 or not ESC_BrakeStatus.ESC_ABSActive",
        "0 < ECM_Temperatures.ECM_CoolantTemp < 120",
        "max(ESC_Status.ESC_LongAccel, 1) * 2 >= 9.81",
        "ECM_EngineStatus.ECM_EngineRunning == 1",
    ]
)
BUNDLED_MAPPINGS = ("demo_vehicle.json", "vw_mqb.json", "vw_pq.json")


def number(low: float, high: float | None = None, *, exclude_low: bool = False) -> Any:
    """A number in range, as a float or (when one fits) an integer: JSON and TOML give both."""
    floats = st.floats(low, high, exclude_min=exclude_low, allow_nan=False, allow_infinity=False)
    first = math.floor(low) + 1 if exclude_low or low != math.floor(low) else int(low)
    last = int(high) if high is not None else 10**9
    ints = st.integers(first, last) if first <= last else st.nothing()
    return floats | ints


def str_list(element: st.SearchStrategy[str], min_size: int = 1) -> Any:
    """A list of strings, or one string (a list of one)."""
    lists = st.lists(element, min_size=min_size, max_size=3)
    return lists | element if min_size <= 1 else lists


class Draw:
    """Optional keys: each one present or not."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw = draw

    def maybe(self, table: dict[str, Any], key: str, strategy: st.SearchStrategy[Any]) -> None:
        if self.draw(st.booleans()):
            table[key] = self.draw(strategy)


@st.composite
def buses(draw: st.DrawFn) -> list[dict[str, Any]]:
    names = draw(st.lists(NAME, min_size=1, max_size=3, unique=True))
    d = Draw(draw)
    result = []
    for name in names:
        bus: dict[str, Any] = {"name": name, "dbc": draw(str_list(DBC_FILE))}
        d.maybe(bus, "interface", st.sampled_from(["virtual", "socketcan", "pcan", "kvaser"]))
        d.maybe(bus, "channel", TEXT)
        d.maybe(bus, "bitrate", st.integers(1000, 1_000_000))
        d.maybe(bus, "fd", st.booleans())
        if bus.get("fd"):
            d.maybe(bus, "data_bitrate", st.integers(1000, 16_000_000))
        for key in ("strict", "j1939", "kernel_filters", "receive_own_messages"):
            d.maybe(bus, key, st.booleans())
        d.maybe(bus, "receive_buffer", st.integers(0, 1 << 30))
        d.maybe(
            bus,
            "options",
            st.dictionaries(
                TEXT, st.booleans() | st.integers(-(2**63), 2**63 - 1) | TEXT, max_size=3
            ),
        )
        d.maybe(bus, "vss_mapping", str_list(st.sampled_from(BUNDLED_MAPPINGS), 0))
        result.append(bus)
    return result


@st.composite
def signals(draw: st.DrawFn, bus_names: list[str], *, include: bool) -> dict[str, Any]:
    d = Draw(draw)
    table: dict[str, Any] = {}
    if include:
        d.maybe(table, "include", str_list(GLOB, 0))
    d.maybe(table, "exclude", str_list(GLOB, 0))
    d.maybe(table, "mode", st.sampled_from(["every", "on_change", "min_interval"]))
    d.maybe(table, "deadband", number(0, 1e6))
    d.maybe(table, "heartbeat", number(0, 1e6))
    if table.get("mode") == "min_interval":
        table["interval"] = draw(number(0, 1e6, exclude_low=True))
    else:
        d.maybe(table, "interval", number(0, 1e6))
    default_mode = table.get("mode", "on_change")
    default_interval = table.get("interval", 0)
    rules = []
    for _ in range(draw(st.integers(0, 3))):
        rule: dict[str, Any] = {"match": draw(str_list(GLOB))}
        d.maybe(rule, "buses", str_list(st.sampled_from(bus_names), 0))
        d.maybe(rule, "mode", st.sampled_from(["every", "on_change", "min_interval"]))
        d.maybe(rule, "deadband", number(0, 1e6))
        d.maybe(rule, "heartbeat", number(0, 1e6))
        if rule.get("mode", default_mode) == "min_interval":
            if "mode" in rule or draw(st.booleans()) or default_interval <= 0:
                rule["interval"] = draw(number(0, 1e6, exclude_low=True))
        else:
            d.maybe(rule, "interval", number(0, 1e6))
        rules.append(rule)
    if draw(st.booleans()) or rules:
        table["rules"] = rules
    return table


def batch() -> Any:
    return st.fixed_dictionaries(
        {},
        optional={
            "max_age": number(0.05, 3600),
            "max_bytes": st.integers(4096, 256 * 1024 - 8 * 1024),
            "time_resolution": st.integers(1, 1_000_000).map(lambda us: us / 1e6),
            "compression": st.sampled_from(["zstd", "zlib", "none"]),
            "compression_level": st.integers(1, 19),
            "schema_interval": number(1, 1e9),
        },
    )


def spool() -> Any:
    return st.fixed_dictionaries(
        {},
        optional={
            "path": st.sampled_from(["spool/spool.db", "/var/lib/can-telemetry/spool.db", "s.db"]),
            "max_bytes": st.integers(1_000_000, 2**62),
            "ttl": number(0, 1e9),
        },
    )


# A device connection string's key: base64 of 32 bytes.
ACCESS_KEY = st.binary(min_size=32, max_size=32).map(lambda b: base64.b64encode(b).decode())
TOPIC = st.lists(
    st.sampled_from(["vehicles", "{vehicle}", "{kind}", "{stream}", "{seq}", "t", "{schema}"]),
    min_size=1,
    max_size=4,
).map("/".join)


@st.composite
def uplink(draw: st.DrawFn) -> dict[str, Any]:
    d = Draw(draw)
    kind = draw(st.sampled_from(["file", "mqtt", "azure-edge", "azure-device", None]))
    table: dict[str, Any] = {} if kind is None else {"type": kind}
    d.maybe(table, "send_timeout", number(0.1, 1e6))
    initial = draw(st.none() | number(0.01, 1e4))
    if initial is not None:
        table["backoff_initial"] = initial
    if (initial is not None and initial > 60) or draw(st.booleans()):  # default 60
        table["backoff_max"] = draw(number(max(0.01, initial or 1.0), 1e5))
    if kind in ("file", None):
        d.maybe(table, "path", st.sampled_from(["outbox", "/tmp/outbox", "out/box"]))
        d.maybe(table, "fsync", st.booleans())
        d.maybe(table, "max_files", st.integers(1, 10**9))
    elif kind == "mqtt":
        table["host"] = draw(st.sampled_from(["broker", "localhost", "10.0.0.1"]))
        d.maybe(table, "port", st.integers(1, 65535))
        d.maybe(table, "tls", st.booleans())
        if table.get("tls", True):
            d.maybe(table, "ca_file", st.just("ca.pem"))
            if draw(st.booleans()):
                table.update(cert_file="client.pem", key_file="client.key")
        if draw(st.booleans()):
            table["username"] = draw(TEXT)
            d.maybe(table, "password", TEXT)
        d.maybe(table, "client_id", TEXT)
        d.maybe(table, "topic", TOPIC)
        d.maybe(table, "qos", st.integers(0, 1))
        d.maybe(table, "keepalive", st.integers(5, 65535))
        d.maybe(table, "protocol", st.sampled_from(["5", "3.1.1"]))
    elif kind == "azure-edge":
        d.maybe(table, "output", TEXT)
        d.maybe(table, "keep_alive", st.integers(5, 1740))
    else:
        parts = [
            f"HostName={draw(NAME)}.azure-devices.net",
            f"DeviceId={draw(NAME)}",
            f"SharedAccessKey={draw(ACCESS_KEY)}",
        ]
        if draw(st.booleans()):
            parts.append(f"GatewayHostName={draw(NAME)}")
        table["connection_string"] = ";".join(draw(st.permutations(parts)))
        d.maybe(table, "ca_file", st.just("ca.pem"))
        d.maybe(table, "keep_alive", st.integers(5, 1740))
    return table


@st.composite
def times(draw: st.DrawFn) -> tuple[Any, Any]:
    """``start`` < ``expiry``: RFC 3339 strings with a zone, or (as TOML gives) datetimes."""
    start = draw(st.integers(0, 4_000_000_000))
    expiry = start + draw(st.integers(1, 10**8))

    def form(seconds: int) -> Any:
        zone = dt.timezone(dt.timedelta(minutes=draw(st.integers(-23 * 60, 23 * 60))))
        moment = dt.datetime.fromtimestamp(seconds, zone)
        style = draw(st.sampled_from(["Z", "offset", "datetime"]))
        if style == "datetime":
            return moment
        if style == "Z":
            return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")
        return moment.isoformat()

    return form(start), form(expiry)


@st.composite
def campaigns(draw: st.DrawFn, *, always: bool) -> list[dict[str, Any]]:
    names = draw(
        st.lists(
            st.text(LETTERS + "0123456789_.-", min_size=1, max_size=64).filter(
                lambda n: n != "always"
            ),
            max_size=3,
            unique=True,
        )
    )
    d = Draw(draw)
    result = []
    kinds = [(n, draw(st.sampled_from(["condition", "periodic"]))) for n in names]
    if always:
        kinds.insert(draw(st.integers(0, len(kinds))), ("always", "always"))
    for name, collect in kinds:
        campaign: dict[str, Any] = {"name": name}
        if collect != "condition" or draw(st.booleans()):
            campaign["collect"] = collect
        d.maybe(campaign, "signals", str_list(GLOB, 0))
        d.maybe(campaign, "enabled", st.booleans())
        if draw(st.booleans()):
            start, expiry = draw(times())
            campaign.update(start=start, expiry=expiry)
        d.maybe(campaign, "priority", st.integers(0, 9))
        d.maybe(campaign, "daily_bytes", st.integers(1000, 2**62))
        d.maybe(campaign, "buffer_frames", st.integers(10, 10_000_000))
        d.maybe(campaign, "buffer_bytes", st.integers(1000, 1 << 30))
        if collect == "periodic":
            campaign["period"] = draw(number(0.1, 86_400))
        if collect == "condition":
            campaign["condition"] = draw(CONDITION)
            d.maybe(campaign, "trigger", st.sampled_from(["rising_edge", "while_true"]))
            if campaign.get("trigger") == "while_true":
                campaign["min_interval"] = draw(number(0, 86_400, exclude_low=True))
            else:
                d.maybe(campaign, "min_interval", number(0, 86_400))
            d.maybe(campaign, "before", number(0, 600))
            d.maybe(campaign, "after", number(0, 600))
            d.maybe(campaign, "raw_frames", st.booleans())
        result.append(campaign)
    return result


@st.composite
def diagnostics(draw: st.DrawFn, bus_names: list[str]) -> dict[str, Any]:
    d = Draw(draw)
    entries = []
    for bus in draw(st.lists(st.sampled_from(bus_names), max_size=len(bus_names), unique=True)):
        entry: dict[str, Any] = {"bus": bus}
        d.maybe(entry, "max_requests_per_second", number(0, 1000, exclude_low=True))
        d.maybe(entry, "error_pause", number(0, 3600))
        d.maybe(entry, "timeout", number(0.05, 30))
        d.maybe(entry, "when", CONDITION)
        d.maybe(entry, "allow_clear", st.booleans())
        asks = draw(st.sets(st.sampled_from(["obd", "uds", "j1939"]), min_size=1))
        if "obd" in asks:
            obd: dict[str, Any] = {}
            d.maybe(obd, "functional", st.booleans())
            if not obd.get("functional"):
                # Different ids (ISO-TP refuses equal ones: bug E), defaults 0x7E0 and 0x7E8.
                d.maybe(obd, "request_id", st.integers(0, 0x7FF))
                d.maybe(obd, "response_id", st.integers(0, 0x7FF))
                request = obd.get("request_id", 0x7E0)
                if obd.get("response_id", 0x7E8) == request:
                    obd["response_id"] = request ^ 1
            pid = st.fixed_dictionaries({"pid": st.integers(1, 0xFF), "period": number(0.05, 1e6)})
            d.maybe(obd, "pids", st.lists(pid, max_size=3))
            d.maybe(obd, "vin", st.booleans())
            d.maybe(obd, "discover", st.booleans())
            entry["obd"] = obd
        if "uds" in asks:
            ecus = []
            for name in draw(st.lists(NAME, min_size=1, max_size=2, unique=True)):
                extended = draw(st.booleans())
                top = 0x1FFFFFFF if extended else 0x7FF
                ids = draw(st.lists(st.integers(0, top), min_size=2, max_size=2, unique=True))
                ecu: dict[str, Any] = {"name": name, "request_id": ids[0], "response_id": ids[1]}
                if extended or draw(st.booleans()):
                    ecu["extended_id"] = extended
                d.maybe(ecu, "dtc_period", number(0, 1e6))
                d.maybe(ecu, "dtc_status_mask", st.integers(1, 0xFF))
                d.maybe(ecu, "did_period", number(0, 1e6))
                did = st.fixed_dictionaries(
                    {"did": st.integers(0, 0xFFFF)},
                    optional={"name": TEXT, "kind": st.sampled_from(["ascii", "hex", "uint"])},
                )
                d.maybe(ecu, "dids", st.lists(did, max_size=3))
                ecus.append(ecu)
            entry["uds"] = ecus
        if "j1939" in asks:
            entry["j1939"] = draw(
                st.fixed_dictionaries(
                    {},
                    optional={
                        "dm1": st.booleans(),
                        "vin": st.booleans(),
                        "source_address": st.integers(0, 0xFD),
                    },
                )
            )
        entries.append(entry)
    keep = draw(st.booleans())  # an empty [diagnostics] table, or none at all
    return {"buses": entries} if entries or keep else {}


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid configuration mapping, as TOML or a twin's JSON gives it."""
    d = Draw(draw)
    doc: dict[str, Any] = {"buses": draw(buses())}
    names = [b["name"] for b in doc["buses"]]
    d.maybe(doc, "vehicle_id", NAME)
    d.maybe(doc, "queue_frames", st.integers(1000, 1_000_000))
    d.maybe(doc, "log_level", st.sampled_from(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]))
    d.maybe(doc, "metrics_port", st.integers(0, 65535))
    d.maybe(doc, "vss_tree", st.sampled_from(["vss/vss-4.2.json", "/opt/vss.json", "tree.vspec"]))
    if draw(st.booleans()):
        replay: dict[str, Any] = {"log": draw(st.sampled_from(["drive.log", "/logs/a.asc"]))}
        d.maybe(replay, "speed", number(0, 1e6, exclude_low=True) | st.just("max"))
        d.maybe(replay, "channels", st.dictionaries(TEXT, st.sampled_from(names), max_size=3))
        d.maybe(replay, "loop", st.booleans())
        doc["replay"] = replay
    always = draw(st.booleans())
    d.maybe(doc, "signals", signals(names, include=not always))
    d.maybe(doc, "batch", batch())
    d.maybe(doc, "spool", spool())
    d.maybe(doc, "uplink", uplink())
    if always or draw(st.booleans()):
        doc["campaigns"] = draw(campaigns(always=always))
    d.maybe(doc, "diagnostics", diagnostics(names))
    return doc


# -- strategies: mutations ----------------------------------------------------------------------

DEEP_EXPRESSION = "-" * 5000 + "1"
# fmt: off
WEIRD_NUMBERS: list[Any] = [
    0, 1, -1, 7, 2**31, 2**63, -(2**63), 10**30, 10**400, -(10**400),
    0.0, -0.0, 0.5, -0.5, 5e-324, 1e300, -1e300, 1.7976931348623157e308,
    float("nan"), float("inf"), float("-inf"),
]
WEIRD_STRINGS: list[Any] = [
    "", " ", "0", "1.5", "true", "null", "max", "*", ".", "..", "/", "a\x00b", "\u202e", "é",
    "日本語", "💥", "{vehicle}/+#", "x" * 300, "é" * 200, "x" * 5000, DEEP_EXPRESSION,
]
WEIRD_OTHERS: list[Any] = [
    None, True, False, [], [None], [1, "a"], [[]], {}, {"": None}, {"x": [1, {"y": {}}]},
    dt.date(2026, 1, 1), dt.time(12, 0), dt.datetime(2026, 1, 1),
    dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
]
# fmt: on
WEIRD = WEIRD_OTHERS + WEIRD_NUMBERS + WEIRD_STRINGS
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=16)
    | st.sampled_from(WEIRD),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(), children, max_size=3)
    ),
    max_leaves=10,
)


def nest(depth: int) -> Any:
    value: Any = "leaf"
    for i in range(depth):
        value = {"a": value} if i % 2 else [value, 1]
    return value


GARBAGE = JSON | st.integers(1, 60).map(nest)
UNKNOWN_KEY = st.text(max_size=10).map(lambda s: "unknown" + s) | st.sampled_from(
    ["max_sise", "bitrat", "deadbnd", "hostname", "includes", "rate", "size", "Name", "DBC"]
)


def others(value: Any, path: Path_) -> list[Any]:
    """Values of another JSON (or TOML) type than ``value`` that no option accepts where it is.

    Not None: an optional key given null is as if absent (a twin's merge patch deletes it).
    """
    containers: list[Any] = [{}, {"k": 1}, [1], [None], [[]]]
    if isinstance(value, bool):
        return [0, 1, 1.0, "true", "", None, *containers]
    if isinstance(value, int | float):
        return [True, False, "7", "", "1e3", dt.date(2026, 1, 1), *containers]
    if isinstance(value, dt.datetime):
        return [True, 7, 1.5, "", "yesterday", dt.date(2026, 1, 1), *containers]
    if path[-2:] == ("replay", "speed"):  # "max"
        return [True, False, "fast", "", *containers]
    return [True, False, 0, 7, -2.5, *containers]  # strings (and items of string lists)


def expected_field(path: Path_) -> str:
    """The field a bad value at ``path`` is named by: a string list's item names the list."""
    return render(path[:-1]) if isinstance(path[-1], int) else render(path)


def scalar_leaves(doc: dict[str, Any]) -> list[Path_]:
    return [
        p for p, node in walk(doc) if p and not isinstance(node, dict | list) and not passthrough(p)
    ]


@st.composite
def wrong_type(draw: st.DrawFn, doc: dict[str, Any]) -> tuple[dict[str, Any], Path_, Any]:
    """``doc`` with one value (or string list item) replaced by one of another type."""
    path = draw(st.sampled_from(scalar_leaves(doc)))
    value = draw(st.sampled_from(others(get(doc, path), path)))
    mutated = copy.deepcopy(doc)
    put(mutated, path, value)
    return mutated, path, value


def numeric_leaves(doc: dict[str, Any]) -> list[Path_]:
    return [
        p
        for p in scalar_leaves(doc)
        if isinstance(get(doc, p), int | float) and not isinstance(get(doc, p), bool)
    ]


@st.composite
def unknown_key(draw: st.DrawFn, doc: dict[str, Any]) -> tuple[dict[str, Any], Path_, Any]:
    """``doc`` with a key no option has added to one of its tables (root included)."""
    tables = [p for p, node in walk(doc) if isinstance(node, dict)]
    path = draw(st.sampled_from(tables))
    key = draw(UNKNOWN_KEY.filter(lambda k: k not in get(doc, path)))
    value = draw(GARBAGE)
    mutated = copy.deepcopy(doc)
    get(mutated, path)[key] = value
    return mutated, (*path, key), value


MUTATIONS = (
    "remove",
    "rename",
    "replace",
    "garbage",
    "numbers",
    "strings",
    "swap",
    "unknown",
    "empty",
    "duplicate",
    "drop_item",
)


def misspelt(key: str) -> list[str]:
    """Typos of ``key`` that are no option's name anywhere (none has capitals, '-' or a
    trailing '_')."""
    return [k for k in {key.upper(), key + "_", key.replace("_", "-")} if k != key]


@st.composite
def mutated(draw: st.DrawFn, doc: dict[str, Any], *, count: int = 3) -> dict[str, Any]:
    """``doc`` after 1 to ``count`` mutations of any kind, anywhere."""
    doc = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, count))):
        kind = draw(st.sampled_from(MUTATIONS))
        nodes = list(walk(doc))
        inner = [p for p, _ in nodes if p]
        keys = [p for p in inner if isinstance(p[-1], str)]
        leaves = [p for p, node in nodes if p and not isinstance(node, dict | list)]
        numbers = [p for p in leaves if type(get(doc, p)) in (int, float)]
        strings = [p for p in leaves if isinstance(get(doc, p), str)]
        lists = [p for p, node in nodes if isinstance(node, list)]
        if kind in ("remove", "rename") and keys:
            path = draw(st.sampled_from(keys))
            table = get(doc, path[:-1])
            value = table.pop(path[-1])
            if kind == "rename":
                table[draw(st.sampled_from(misspelt(str(path[-1]))))] = value
        elif kind in ("replace", "garbage", "numbers", "strings") and inner:
            targets = {"numbers": numbers, "strings": strings}.get(kind) or inner
            value = draw(
                {
                    "replace": st.sampled_from(WEIRD),
                    "garbage": GARBAGE,
                    "numbers": st.sampled_from(WEIRD_NUMBERS) | st.integers() | st.floats(),
                    "strings": st.text() | st.sampled_from(WEIRD_STRINGS),
                }[kind]
            )
            put(doc, draw(st.sampled_from(targets)), value)
        elif kind == "swap" and len(leaves) >= 2:
            one, other = draw(
                st.lists(st.sampled_from(leaves), min_size=2, max_size=2, unique=True)
            )
            first, second = get(doc, one), get(doc, other)
            put(doc, one, second)
            put(doc, other, first)
        elif kind == "unknown":
            doc, _, _ = draw(unknown_key(doc))
        elif kind in ("empty", "duplicate", "drop_item"):
            candidates = [p for p in lists if get(doc, p) or kind == "empty"]
            if candidates:
                path = draw(st.sampled_from(candidates))
                items = get(doc, path)
                if kind == "empty":
                    items.clear()
                elif kind == "duplicate":
                    items.insert(draw(st.integers(0, len(items))), copy.deepcopy(items[0]))
                else:
                    del items[draw(st.integers(0, len(items) - 1))]
    return doc


# -- helpers --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The configuration's folder, with the files options may name (TLS files)."""
    folder = tmp_path_factory.mktemp("config")
    for name in ("ca.pem", "client.pem", "client.key"):
        (folder / name).write_text("-----BEGIN CERTIFICATE-----\n")
    return folder.resolve()


def parse_or_error(doc: Any, base: Path) -> Config | ConfigError | None:
    """The parsed configuration or the ConfigError (checked to say why). Any other exception
    fails the test."""
    try:
        return parse_config(doc, base_dir=str(base))
    except ConfigError as exc:
        assert exc.reason, "a ConfigError says why"
        assert str(exc) == (f"{exc.field}: {exc.reason}" if exc.field else exc.reason)
        return exc


def toml(doc: dict[str, Any]) -> str | None:
    """``doc`` as TOML (inline tables and arrays), or None when TOML cannot say it (null, an
    integer beyond 64 bits)."""

    def text(v: str) -> str:
        return json.dumps(v, ensure_ascii=False).replace("\x7f", "\\u007f")

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int) and -(2**63) <= v < 2**63:
            return str(v)
        if isinstance(v, float):
            return repr(v)  # nan, inf, -inf are TOML too
        if isinstance(v, str):
            return text(v)
        if isinstance(v, dt.datetime | dt.date | dt.time):
            return v.isoformat()
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{text(k)} = {value(x)}" for k, x in v.items()) + "}"
        raise ValueError(v)

    try:
        return "".join(f"{text(k)} = {value(v)}\n" for k, v in doc.items())
    except ValueError:
        return None


# -- 1. valid configurations ------------------------------------------------------------------


@settings(max_examples=80, deadline=None, database=None)
@given(doc=configs())
def test_valid_configurations_parse_deterministically_from_a_mapping_and_from_toml(
    doc: dict[str, Any], base: Path
) -> None:
    snapshot = copy.deepcopy(doc)
    config = parse_config(doc, base_dir=str(base))
    assert doc == snapshot, "the input is not modified"
    assert parse_config(copy.deepcopy(doc), base_dir=str(base)) == config
    # What was given is what is in effect.
    assert [b.name for b in config.buses] == [b["name"] for b in doc["buses"]]
    for bus, table in zip(config.buses, doc["buses"], strict=True):
        assert bus.channel == table.get("channel", table["name"])
        assert len(bus.databases) == (len(table["dbc"]) if isinstance(table["dbc"], list) else 1)
        assert bus.fd == table.get("fd", False)
        assert dict(bus.options) == table.get("options", {})
    for key, value in doc.get("batch", {}).items():
        assert getattr(config.batch, key) == value
    assert config.uplink.kind == doc.get("uplink", {}).get("type", "file")
    assert [(c.name, c.collect) for c in config.campaigns] == [
        (c["name"], c.get("collect", "condition")) for c in doc.get("campaigns", [])
    ]
    assert [b.bus for b in config.diagnostics.buses] == [
        b["bus"] for b in doc.get("diagnostics", {}).get("buses", [])
    ]
    assert len(config.signals.rules) == len(doc.get("signals", {}).get("rules", []))
    # The same file, as TOML: start-up reads it into the same configuration.
    path = base / "config.toml"
    path.write_text(toml(doc) or "", encoding="utf-8")
    assert load_config(path) == config


# -- 2. mutations ---------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, database=None)
@given(data=st.data(), doc=configs())
def test_any_mutation_parses_or_is_a_config_error_naming_a_place_of_the_input(
    data: st.DataObject, doc: dict[str, Any], base: Path
) -> None:
    bad = data.draw(mutated(doc))
    result = parse_or_error(bad, base)
    if isinstance(result, ConfigError):
        assert located(result.field, bad), f"{result.field!r} is not a place of the input"
    # Deterministic either way.
    again = parse_or_error(copy.deepcopy(bad), base)
    if isinstance(result, ConfigError):
        assert isinstance(again, ConfigError)
        assert (again.field, again.reason) == (result.field, result.reason)
    else:
        assert again == result


@FAST
@given(data=st.data(), doc=configs())
def test_a_mutated_toml_file_stops_start_up_naming_the_same_field(
    data: st.DataObject, doc: dict[str, Any], base: Path
) -> None:
    bad = data.draw(mutated(doc))
    text = toml(bad)
    if text is None:
        event("not TOML (a null, or an integer beyond 64 bits)")
        return
    path = base / "bad.toml"
    path.write_text(text, encoding="utf-8")
    expected = parse_or_error(tomllib.loads(text), base)
    try:
        started: Config | ConfigError | None = load_config(path)
    except ConfigError as exc:
        started = exc
    if isinstance(expected, ConfigError):
        assert isinstance(started, ConfigError)
        assert (started.field, started.reason) == (expected.field, expected.reason)
        assert located(started.field, bad)
    else:
        assert started == expected


@FAST
@given(data=st.data(), doc=configs())
def test_a_value_of_another_type_is_refused_naming_exactly_its_field(
    data: st.DataObject, doc: dict[str, Any], base: Path
) -> None:
    bad, path, _ = data.draw(wrong_type(doc))
    result = parse_or_error(bad, base)
    assert isinstance(result, ConfigError), f"{render(path)} = {get(bad, path)!r} was accepted"
    assert result.field == expected_field(path)


@FAST
@given(data=st.data(), doc=configs())
def test_a_negative_number_is_refused_naming_exactly_its_field(
    data: st.DataObject, doc: dict[str, Any], base: Path
) -> None:
    leaves = numeric_leaves(doc)
    path = data.draw(st.sampled_from(leaves)) if leaves else ("queue_frames",)
    value = data.draw(
        st.sampled_from([-1, -0.5, -5e-324, -1e300, -(10**400), -(2**63)])
        | st.integers(max_value=-1)
        | st.floats(max_value=-1e-300, allow_nan=False)
    )
    bad = copy.deepcopy(doc)
    put(bad, path, value)
    result = parse_or_error(bad, base)
    assert isinstance(result, ConfigError), f"{render(path)} = {value!r} was accepted"
    assert result.field == render(path)


@FAST
@given(data=st.data(), doc=configs())
def test_zero_or_an_enormous_number_is_accepted_or_refused_in_its_own_table(
    data: st.DataObject, doc: dict[str, Any], base: Path
) -> None:
    leaves = numeric_leaves(doc)
    path = data.draw(st.sampled_from(leaves)) if leaves else ("queue_frames",)
    value = data.draw(
        st.sampled_from([0, 0.0, 5e-324, 2**63, 10**30, 10**400, 1e300, 1.7976931348623157e308])
    )
    bad = copy.deepcopy(doc)
    put(bad, path, value)
    result = parse_or_error(bad, base)
    if isinstance(result, ConfigError):
        assert within(result.field, path[:-1]), (result.field, render(path))


@FAST
@given(data=st.data(), doc=configs())
def test_an_unknown_key_at_any_depth_is_refused_naming_it(
    data: st.DataObject, doc: dict[str, Any], base: Path
) -> None:
    bad, path, value = data.draw(unknown_key(doc))
    result = parse_or_error(bad, base)
    if passthrough(path) and path[-2] == "options":  # passed to python-can unchecked
        assert isinstance(result, Config)
        assert result.buses[int(path[1])].options[str(path[-1])] is value
        return
    if passthrough(path):  # replay.channels: log channel = a bus name
        if value in [b["name"] for b in doc["buses"]]:
            assert isinstance(result, Config)
            assert result.replay is not None and result.replay.channels[str(path[-1])] == value
            return
        assert isinstance(result, ConfigError)
        assert result.field == render(path)
        assert "no bus named" in result.reason
        return
    assert isinstance(result, ConfigError), f"{render(path)} was accepted"
    assert result.field == render(path)
    assert result.reason == "unknown option"


def shape(path: Path_) -> Path_:
    """``path`` with its list indexes as ``#``."""
    return tuple("#" if isinstance(p, int) else p for p in path)


DIAG = ("diagnostics", "buses", "#")
#: Keys without a default (present only where they apply: ``condition`` in condition campaigns,
#: ``host`` in an mqtt uplink...).
REQUIRED = {
    ("buses",),
    ("buses", "#", "name"),
    ("buses", "#", "dbc"),
    ("replay", "log"),
    ("signals", "rules", "#", "match"),
    ("campaigns", "#", "name"),
    ("campaigns", "#", "condition"),
    ("campaigns", "#", "period"),
    ("uplink", "host"),
    ("uplink", "connection_string"),
    (*DIAG, "bus"),
    (*DIAG, "obd", "pids", "#", "pid"),
    (*DIAG, "obd", "pids", "#", "period"),
    (*DIAG, "uds", "#", "name"),
    (*DIAG, "uds", "#", "request_id"),
    (*DIAG, "uds", "#", "response_id"),
    (*DIAG, "uds", "#", "dids", "#", "did"),
}


@FAST
@given(data=st.data(), doc=configs())
def test_a_removed_key_is_defaulted_or_refused_in_its_own_table(
    data: st.DataObject, doc: dict[str, Any], base: Path
) -> None:
    keys = [p for p, _ in walk(doc) if p and isinstance(p[-1], str) and not passthrough(p)]
    path = data.draw(st.sampled_from(keys))
    bad = copy.deepcopy(doc)
    del get(bad, path[:-1])[path[-1]]
    result = parse_or_error(bad, base)
    if shape(path) in REQUIRED:
        assert isinstance(result, ConfigError), f"{render(path)} is required"
        assert result.field == render(path)
        assert "required" in result.reason
    elif isinstance(result, ConfigError):
        assert within(result.field, path[:-1]), (result.field, render(path))


@FAST
@given(data=st.data(), doc=configs())
def test_a_misspelt_key_is_never_accepted(
    data: st.DataObject, doc: dict[str, Any], base: Path
) -> None:
    keys = [p for p, _ in walk(doc) if p and isinstance(p[-1], str) and not passthrough(p)]
    path = data.draw(st.sampled_from(keys))
    typo = data.draw(st.sampled_from(misspelt(str(path[-1]))))
    bad = copy.deepcopy(doc)
    table = get(bad, path[:-1])
    table[typo] = table.pop(path[-1])
    result = parse_or_error(bad, base)
    assert isinstance(result, ConfigError), f"{render(path)} spelt {typo!r} was accepted"
    # The typo itself, or what its absence breaks in the same table.
    assert within(result.field, path[:-1]), (result.field, render(path))
    assert result.reason != "unknown option" or result.field == render((*path[:-1], typo))


#: Lists whose items are unique by name (bus, campaign, diagnostics bus, UDS ECU).
UNIQUE = {("buses",), ("campaigns",), DIAG[:-1], (*DIAG, "uds")}


@FAST
@given(data=st.data(), doc=configs(), duplicate=st.booleans())
def test_an_emptied_or_duplicated_list_is_accepted_or_refused_at_the_list(
    data: st.DataObject, doc: dict[str, Any], duplicate: bool, base: Path
) -> None:
    lists = [p for p, node in walk(doc) if p and isinstance(node, list) and not passthrough(p)]
    path = data.draw(st.sampled_from(lists))
    bad = copy.deepcopy(doc)
    items = get(bad, path)
    if duplicate and items:
        items.append(copy.deepcopy(items[data.draw(st.integers(0, len(items) - 1))]))
        result = parse_or_error(bad, base)
        if shape(path) in UNIQUE:
            assert isinstance(result, ConfigError), f"a duplicate in {render(path)} was accepted"
            assert result.field.startswith(render(path) + "[")
            assert "duplicate" in result.reason or "twice" in result.reason
        elif isinstance(result, ConfigError):
            assert within(result.field, path)
        return
    items.clear()
    result = parse_or_error(bad, base)
    if shape(path) in {("buses",), ("buses", "#", "dbc")}:  # at least one
        assert isinstance(result, ConfigError), f"an empty {render(path)} was accepted"
        assert result.field == render(path)
    elif isinstance(result, ConfigError):
        # A list that must not be empty: "asks for nothing" names a sibling.
        assert within(result.field, path[:-1]), (result.field, render(path))


# -- 3. twin updates, through the module's own code path ------------------------------------------

CHANNEL = f"props-{uuid.uuid4().hex[:8]}"
BASELINE: dict[str, Any] = {
    "vehicle_id": "car1",
    "buses": [
        {"name": "vehicle", "interface": "virtual", "channel": CHANNEL, "dbc": "demo_vehicle.dbc"}
    ],
    "signals": {
        "exclude": ["*Counter*", "*Checksum*"],
        "rules": [{"match": "ESC_Status.*", "mode": "min_interval", "interval": 0.1}],
    },
    "batch": {"max_age": 5.0, "compression": "zstd"},
    "spool": {"path": "spool.db", "max_bytes": 10_000_000},
    "uplink": {"type": "file", "path": "outbox", "fsync": False, "backoff_initial": 0.5},
    "campaigns": [
        {"name": "braking", "condition": "ESC_BrakeStatus.ESC_BrakePressure > 40", "before": 2.0},
        {"name": "battery", "collect": "periodic", "period": 60.0, "signals": ["BMS_*"]},
    ],
}


class Hub:
    """IoT Hub's side of the module twin: the desired document and its ``$version``. It hands
    each full twin or patch to the module's TwinAgent as the agent's thread does (the module is
    never connected), so updates take the module's own path: ``TwinAgent`` ->
    ``parse_desired`` -> ``EdgeModule.apply_config``."""

    def __init__(self, module: EdgeModule) -> None:
        assert module.twin is not None
        self.module = module
        self.agent = module.twin
        self.document: dict[str, Any] = {}
        self.version = 0

    def replace(self, config: dict[str, Any]) -> int:
        """A full twin (what the agent fetches on every connection); its ``$version``."""
        self.version += 1
        self.document = {"config": copy.deepcopy(config)}
        self.agent.receive_twin({"desired": {**self.document, "$version": self.version}})
        return self.version

    def patch(self, body: dict[str, Any]) -> int:
        """A desired-properties patch (RFC 7386, merged here as IoT Hub does); its
        ``$version``."""
        self.version += 1
        self.document = hub_merge(self.document, body)
        self.agent.receive_patch({**body, "$version": self.version})
        return self.version

    def reset(self) -> None:
        """Back to BASELINE (applied only when it differs from what runs)."""
        self.replace(BASELINE)
        assert self.agent.refusal is None
        assert self.module.config is not None


def start_module(data_dir: Path, config: dict[str, Any] = BASELINE) -> Hub:
    """An IoT Edge module running ``config`` from its twin."""
    module = EdgeModule(
        ModuleOptions(
            data_dir=str(data_dir), metrics_host="127.0.0.1", metrics_port=0, config_log_level=False
        )
    )
    hub = Hub(module)
    hub.replace(config)
    assert hub.agent.refusal is None and module.config is not None
    return hub


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    hub = start_module(tmp_path_factory.mktemp("module"))
    yield hub
    hub.module.stop(drain_timeout=0)
    gc.collect()


def diff(old: Any, new: Any) -> Any:
    """A merge patch (RFC 7386) from ``old`` to ``new`` (a null in ``new`` cannot be said: it
    deletes)."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    body = {k: None for k in old if k not in new}
    for key, value in new.items():
        if key not in old or repr(old[key]) != repr(value):
            body[key] = diff(old.get(key), value)
    return body


def twin_json(value: Any) -> Any:
    """``value`` as a twin can hold it: JSON (dates become strings, NaN stays a float)."""
    return json.loads(json.dumps(value, default=str))


Snapshot = tuple[Config | None, Any, str]


def running(hub: Hub) -> Snapshot:
    """What runs: the configuration, where it came from, and the copy saved for a restart."""
    saved = Path(hub.module.options.data_dir, SAVED_CONFIG).read_text(encoding="utf-8")
    return hub.module.config, hub.agent.origin, saved


def assert_refused_and_kept(hub: Hub, before: Snapshot, version: int) -> Refusal:
    """The update ``version`` was refused, reported, and the running configuration kept."""
    refusal = hub.agent.refusal
    assert refusal is not None and refusal.desired_version == version
    config, origin, saved = running(hub)
    assert config is before[0], "the running configuration was replaced"
    assert origin == before[1]
    assert saved == before[2], "the saved configuration changed"
    reported = hub.agent.reported()
    assert reported["state"] in ("running", "degraded")  # not "unconfigured"
    assert reported["config"]["desiredVersion"] == origin.desired_version
    assert reported["config"]["refused"]["desiredVersion"] == version
    assert reported["config"]["refused"]["field"] == refusal.field
    assert reported["config"]["refused"]["reason"] == refusal.reason
    return refusal


def assert_applied(hub: Hub, version: int) -> None:
    """The update ``version`` runs: exactly the configuration the twin's document says."""
    assert hub.agent.refusal is None
    data_dir = hub.module.options.data_dir
    expected = parse_desired(hub.document, base_dir=data_dir)
    assert expected is not None
    assert hub.module.config == expected.config
    origin = hub.agent.origin
    assert origin is not None
    assert origin.desired_version == version and origin.sha256 == expected.sha256
    reported = hub.agent.reported()
    assert reported["config"]["desiredVersion"] == version
    assert reported["config"]["refused"] is None
    # Degraded: running, with a bus that cannot be opened (an interface python-can lacks).
    assert reported["state"] in ("running", "degraded")
    saved = json.loads(Path(data_dir, SAVED_CONFIG).read_text(encoding="utf-8"))
    assert saved["sha256"] == origin.sha256


@st.composite
def invalid_updates(draw: st.DrawFn) -> tuple[dict[str, Any], str]:
    """A change of BASELINE that must be refused, and the field (as the twin names it) the
    refusal must name: a value of another type, a negative number, an unknown key, or what only
    applying finds (a signal the databases lack, a VSS mapping that does not fit, a gate on no
    signal, the spool moved)."""
    kind = draw(st.sampled_from(["type", "negative", "unknown", "apply"]))
    doc = twin_json(BASELINE)
    if kind == "type":
        bad, path, _ = draw(wrong_type(doc))
        bad = twin_json(bad)
        if get(bad, path) is None:  # JSON has no date: it became a string
            put(bad, path, [1])
        return bad, "config." + expected_field(path)
    if kind == "negative":
        path = draw(st.sampled_from(numeric_leaves(doc)))
        bad = copy.deepcopy(doc)
        put(bad, path, draw(st.sampled_from([-1, -0.5, -1e300, -(2**63)])))
        return bad, "config." + render(path)
    if kind == "unknown":
        bad, path, value = draw(unknown_key(doc))
        if value is None:  # a null in a patch deletes: say something
            put(bad, path, 0)
        return twin_json(bad), "config." + render(path)
    unknown = draw(st.from_regex(r"[A-Z][a-z]{2,8}_[A-Z][a-z]{2,8}", fullmatch=True))
    bus = {**BASELINE["buses"][0]}
    choices: list[tuple[dict[str, Any], str]] = [
        ({"campaigns": [{"name": "x", "condition": f"{unknown} > 1"}]}, "campaigns[0].condition"),
        (
            {
                "diagnostics": {
                    "buses": [{"bus": "vehicle", "when": f"{unknown} == 1", "j1939": {}}]
                }
            },
            "diagnostics.buses[0].when",
        ),
        ({"buses": [{**bus, "vss_mapping": "vw_mqb.json"}]}, "buses[0].vss_mapping"),
        ({"buses": [{**bus, "dbc": f"{unknown}.dbc"}]}, "buses[0].dbc"),
        ({"spool": {"path": f"{unknown}.db"}}, "spool.path"),
        ({"replay": {"log": f"{unknown}.log"}}, "replay.log"),
    ]
    change, field = draw(st.sampled_from(choices))
    return {**doc, **change}, "config." + field


@settings(max_examples=40, deadline=None, database=None)
@given(update=invalid_updates())
def test_an_invalid_twin_update_is_refused_reported_and_the_running_config_stays(
    hub: Hub, update: tuple[dict[str, Any], str]
) -> None:
    hub.reset()
    document, field = update
    before = running(hub)
    version = hub.patch({"config": diff(BASELINE, document)})
    refusal = assert_refused_and_kept(hub, before, version)
    assert refusal.field == field
    assert not refusal.reason.startswith("internal error"), refusal.reason
    # It stays refused while the bad value is in the desired document ...
    version = hub.patch({"config": {"queue_frames": 5000}})
    assert_refused_and_kept(hub, before, version)
    # ... until the document is valid again: here the running one, which is not applied again.
    version = hub.patch({"config": diff(hub.document["config"], BASELINE)})
    assert_applied(hub, version)
    assert hub.module.config is before[0]


@st.composite
def valid_updates(draw: st.DrawFn) -> dict[str, Any]:
    """A merge patch of whole sections with valid values only (each section carries all its
    keys, null for the absent ones, so that what an earlier update left cannot mix in)."""

    def whole(table: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
        return {k: table.get(k) for k in keys}

    body: dict[str, Any] = {}
    keys: tuple[str, ...]
    sections = draw(
        st.sets(st.sampled_from(["batch", "spool", "uplink", "signals", "misc", "diag", "bus"]))
    )
    if "batch" in sections:
        keys = ("max_age", "max_bytes", "time_resolution", "compression", "compression_level")
        body["batch"] = whole(draw(batch()), (*keys, "schema_interval"))
    if "spool" in sections:
        table = draw(spool())
        body["spool"] = {**whole(table, ("max_bytes", "ttl")), "path": "spool.db"}
    if "uplink" in sections:
        table = {k: v for k, v in draw(uplink()).items() if k not in ("type", "path")}
        keys = ("send_timeout", "backoff_initial", "backoff_max")
        body["uplink"] = {**whole(table, keys), "type": "file", "path": "outbox", "fsync": False}
    if "signals" in sections:
        always = draw(st.booleans())
        table = draw(signals(["vehicle"], include=not always))
        keys = ("include", "exclude", "mode", "deadband", "interval", "heartbeat", "rules")
        body["signals"] = whole(table, keys)
        body["campaigns"] = twin_json(draw(campaigns(always=always)))
    if "misc" in sections:
        body["vehicle_id"] = draw(NAME)
        body["queue_frames"] = draw(st.integers(1000, 1_000_000))
        body["log_level"] = draw(st.sampled_from(["DEBUG", "INFO", "WARNING"]))
    if "diag" in sections:
        table = draw(diagnostics(["vehicle"]))
        # The shortest timeout: stopping a bus's diagnostics waits for the request in flight.
        body["diagnostics"] = {"buses": [{**b, "timeout": 0.05} for b in table.get("buses", [])]}
    if "bus" in sections:
        bus = {**BASELINE["buses"][0]}
        for key in ("strict", "j1939", "kernel_filters", "receive_own_messages", "fd"):
            bus[key] = draw(st.booleans())
        if draw(st.booleans()):
            bus["vss_mapping"] = "demo_vehicle.json"
        body["buses"] = [bus]
    return body


@settings(max_examples=15, deadline=None, database=None)
@given(body=valid_updates())
def test_a_valid_twin_update_is_applied(hub: Hub, body: dict[str, Any]) -> None:
    if hub.agent.refusal is not None:
        hub.reset()
    before = hub.module.config
    version = hub.patch({"config": body})
    assert_applied(hub, version)
    if hub.module.config != before:
        assert hub.module.config is not before


@settings(max_examples=40, deadline=None, database=None)
@given(data=st.data())
def test_any_twin_update_is_applied_whole_or_refused_whole(hub: Hub, data: st.DataObject) -> None:
    hub.reset()
    bad = twin_json(data.draw(mutated(twin_json(BASELINE), count=2)))
    before = running(hub)
    version = hub.patch({"config": diff(BASELINE, bad)})
    try:  # what validation says of the document the twin now holds
        verdict: Any = parse_desired(hub.document, base_dir=hub.module.options.data_dir)
    except Exception as exc:
        verdict = exc
    refusal = hub.agent.refusal
    if refusal is None:  # applied (or the same configuration, kept)
        assert not isinstance(verdict, Exception), verdict
        assert_applied(hub, version)
        return
    assert_refused_and_kept(hub, before, version)
    assert not refusal.reason.startswith("internal error"), refusal.reason
    if isinstance(verdict, ConfigError):  # refused by validation, as validation says
        assert (refusal.field, refusal.reason) == (verdict.field, verdict.reason)
    else:  # valid, but refused by applying it: naming a field all the same
        assert not isinstance(verdict, Exception), verdict
    assert refusal.field == "config" or refusal.field.startswith("config.")
    config = hub.document["config"]
    assert located(refusal.field.removeprefix("config").removeprefix("."), config)


@FAST
@given(key=st.text(max_size=12).filter(lambda k: k != "config" and not k.startswith("$")))
def test_an_unknown_desired_property_is_refused_naming_it(hub: Hub, key: str) -> None:
    hub.reset()
    before = running(hub)
    version = hub.patch({key: {"a": 1}})
    refusal = assert_refused_and_kept(hub, before, version)
    assert refusal.field == (key or '""')
    version = hub.patch({key: None})  # deleted: the twin is fine again
    assert_applied(hub, version)
    assert hub.module.config is before[0]  # the same configuration: not applied again


# -- bugs found (minimal reproducers) -------------------------------------------------------------

BUS = {"name": "can0", "dbc": "car.dbc"}


def refused_by_parse(doc: dict[str, Any], base: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(doc, base_dir=str(base))
    return info.value


def test_bug_a_non_ascii_shared_access_key_is_a_config_error(base: Path) -> None:
    connection = "HostName=h;DeviceId=d;SharedAccessKey=é"
    error = refused_by_parse(
        {"buses": [BUS], "uplink": {"type": "azure-device", "connection_string": connection}},
        base,
    )
    assert error.field == "uplink.connection_string"


@pytest.mark.parametrize(
    "doc",
    [
        {"buses": [BUS], "campaigns": [{"name": "c", "condition": DEEP_EXPRESSION}]},
        {
            "buses": [BUS],
            "diagnostics": {"buses": [{"bus": "can0", "when": DEEP_EXPRESSION, "j1939": {}}]},
        },
    ],
    ids=["campaign-condition", "diagnostics-when"],
)
def test_bug_b_a_deeply_nested_condition_is_a_config_error(doc: dict[str, Any], base: Path) -> None:
    error = refused_by_parse(doc, base)
    assert error.field in ("campaigns[0].condition", "diagnostics.buses[0].when")


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"buses": [{**BUS, "vss_mapping": "m" * 256}]}, "buses[0].vss_mapping"),
        (
            {"buses": [BUS], "uplink": {"type": "mqtt", "host": "h", "ca_file": "c" * 256}},
            "uplink.ca_file",
        ),
    ],
    ids=["vss_mapping", "ca_file"],
)
def test_bug_c_a_too_long_file_name_is_a_config_error(
    doc: dict[str, Any], field: str, base: Path
) -> None:
    """Refused naming the field, when parsed or, for a mapping (a bare name may be a bundled
    one), when loaded at start-up."""
    try:
        config = parse_config(doc, base_dir=str(base))
    except ConfigError as exc:
        assert exc.field == field
        return
    with pytest.raises(ConfigError) as info:
        load_vss_mapping(config, [cantools.database.Database()])  # no database to link to
    assert info.value.field == field


def test_bug_c_twin_a_too_long_database_name_is_refused_naming_it(hub: Hub) -> None:
    hub.reset()
    before = running(hub)
    bus = {**BASELINE["buses"][0], "dbc": "d" * 256}
    version = hub.patch({"config": {"buses": [bus]}})
    refusal = assert_refused_and_kept(hub, before, version)
    assert refusal.field == "config.buses[0].dbc", refusal.reason


def test_bug_g_an_empty_unknown_key_is_named(base: Path) -> None:
    error = refused_by_parse({"buses": [BUS], "": 1}, base)
    assert error.field


def test_bug_h_a_lower_case_z_rfc3339_time_is_accepted(base: Path) -> None:
    campaign = {"name": "c", "condition": "a > 1", "expiry": "2026-12-31T00:00:00z"}
    config = parse_config({"buses": [BUS], "campaigns": [campaign]}, base_dir=str(base))
    assert config.campaigns[0].expiry == dt.datetime(2026, 12, 31, tzinfo=dt.UTC).timestamp()


def test_bug_d_a_refused_uplink_path_keeps_the_running_config(tmp_path: Path) -> None:
    hub = start_module(tmp_path)  # spool.db is a file there now
    try:
        before = running(hub)
        version = hub.patch({"config": {"uplink": {"path": "spool.db"}}})
        refusal = hub.agent.refusal
        assert refusal is not None and refusal.desired_version == version
        assert refusal.field == "config.uplink.path"
        assert hub.module.config is before[0], "the refused update stopped the running config"
        hub.patch({"config": {"uplink": {"path": "outbox"}}})
        assert hub.module.config is not None, "the reverted update is not applied either"
    finally:
        hub.module.stop(drain_timeout=0)
        gc.collect()


def test_bug_e_equal_obd_ids_are_refused(base: Path) -> None:
    obd = {"request_id": 0x7E0, "response_id": 0x7E0}
    diagnostics = {"buses": [{"bus": "can0", "obd": obd}]}
    error = refused_by_parse({"buses": [BUS], "diagnostics": diagnostics}, base)
    assert error.field == "diagnostics.buses[0].obd.response_id"


def test_bug_f_a_front_that_fails_to_start_keeps_the_running_pipeline(tmp_path: Path) -> None:
    channel = f"props-f-{uuid.uuid4().hex[:8]}"
    hub = start_module(
        tmp_path, {**BASELINE, "buses": [{**BASELINE["buses"][0], "channel": channel}]}
    )
    try:
        before = running(hub)
        entry = {
            "bus": "vehicle",
            "obd": {"request_id": 0x7E0, "response_id": 0x7E0},
            "uds": [{"name": "BMS", "request_id": 0x7E1, "response_id": 0x7E9}],
        }
        version = hub.patch({"config": {"diagnostics": {"buses": [entry]}}})
        assert_refused_and_kept(hub, before, version)  # as far as the module says
        stats = hub.module.stats()
        assert stats is not None
        with can.Bus(interface="virtual", channel=channel) as bus:
            for _ in range(10):
                bus.send(can.Message(arbitration_id=0x130, data=bytes(8), is_extended_id=False))
        wait_for(
            lambda: (now := hub.module.stats()) is not None and now.frames >= stats.frames + 10,
            timeout=1.0,
            what="the running configuration to count the frames",
        )
    finally:
        hub.module.stop(drain_timeout=0)
        gc.collect()


@pytest.mark.parametrize(
    ("failing", "update"),
    [
        ("front", {"signals": {"include": ["ESC_*"]}}),  # the same back end, a new front
        ("backend", {"uplink": {"fsync": True}}),  # a new back end: the old one closed first
    ],
)
def test_a_configuration_that_fails_to_start_gives_way_to_the_running_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failing: str, update: dict[str, Any]
) -> None:
    """Whatever makes a valid configuration fail once the running one is stopped (here a fault
    injected into the first start of the new front, or the first opening of the new back end:
    nothing in validation can foresee them), the running configuration comes back and counts
    frames again, and the update is refused."""
    channel = f"props-r-{uuid.uuid4().hex[:8]}"
    hub = start_module(
        tmp_path, {**BASELINE, "buses": [{**BASELINE["buses"][0], "channel": channel}]}
    )
    calls: list[str] = []
    target: Any = module_module._Front if failing == "front" else module_module.Backend
    name = "start" if failing == "front" else "open"
    real = getattr(target, name)

    def once(*args: Any, **kwargs: Any) -> Any:
        calls.append(name)
        if len(calls) == 1:
            raise RuntimeError(f"injected: the new {failing} fails")
        return real(*args, **kwargs)

    try:
        before = running(hub)
        stats = hub.module.stats()
        assert stats is not None
        monkeypatch.setattr(target, name, once if failing == "front" else staticmethod(once))
        version = hub.patch({"config": update})
        refusal = assert_refused_and_kept(hub, before, version)
        assert "injected" in refusal.reason and len(calls) == 2  # failed, then restored
        with can.Bus(interface="virtual", channel=channel) as bus:
            frame = can.Message(arbitration_id=0x130, data=bytes(8), is_extended_id=False)

            def counted() -> bool:  # sent until counted: the restored source may be connecting
                bus.send(frame)
                now = hub.module.stats()
                return now is not None and now.frames > stats.frames

            wait_for(counted, timeout=5.0, what="the restored configuration to count frames")
    finally:
        hub.module.stop(drain_timeout=0)
        gc.collect()
