"""Kuksa-format mapping files: checked against the databases and the VSS tree (every bad entry
refused naming file, path and reason), applied end to end through the real processor and payload
decoder: Kuksa's own Tesla mapping on the Tesla corpus log gives exactly the values Kuksa's
transforms define, and Vehicle.Speed reads the same from every bundled platform."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import can
import cantools
import msgpack
import pytest
from cantools.database.namedsignalvalue import NamedSignalValue

from edge.config.model import ReplayConfig, parse_config
from edge.errors import ConfigError
from edge.ingest.source import ReplaySource
from edge.iotedge.twin import parse_desired
from edge.processing.database import load_databases, load_vss_mapping
from edge.processing.processor import Processor
from edge.processing.sample import Selection
from edge.simulator.vehicle import DEMO_DBC
from edge.vss.mapping import (
    VssMappingError,
    bundled_mappings_dir,
    link_mapping,
    read_mapping,
)
from edge.vss.tree import default_tree, load_tree
from edge.wire.codec import PayloadReader, Row, unpack
from edge.wire.payload import Payload
from edge.wire.schema import Schema
from tests.support.corpus import require_corpus
from tests.support.vss import small_vspec_tree

SMALL_DBC = """\
VERSION ""
NS_ :
BS_:
BU_: ECU
BO_ 256 Drive: 8 ECU
 SG_ Speed : 0|16@1+ (0.01,0) [0|300] "km/h" ECU
 SG_ Gear : 16|3@1+ (1,0) [0|7] "" ECU
 SG_ Flag : 19|1@1+ (1,0) [0|1] "" ECU
 SG_ Pedal : 24|8@1+ (0.4,0) [0|100] "%" ECU
 SG_ Rpm : 32|16@1+ (0.25,0) [0|16000] "rpm" ECU
BO_ 257 Other: 8 ECU
 SG_ Dup : 0|8@1+ (1,0) [0|255] "" ECU
 SG_ Same : 8|8@1+ (1,0) [0|255] "" ECU
BO_ 258 Third: 8 ECU
 SG_ Dup : 0|8@1+ (2,0) [0|510] "" ECU
 SG_ Same : 8|8@1+ (1,0) [0|255] "" ECU
VAL_ 256 Gear 0 "P" 1 "R" 2 "N" 3 "D" ;
"""
GEAR = {"mapping": [{"from": "P", "to": 126}, {"from": "R", "to": -1}, {"from": "D", "to": 127}]}
GOOD = {
    "Vehicle.Speed": {"signal": "Speed", "interval_ms": 100},
    "Vehicle.Powertrain.Transmission.SelectedGear": {"signal": "Gear", "transform": GEAR},
    "Vehicle.Chassis.ParkingBrake.IsEngaged": {"signal": "Flag"},
    "Vehicle.Chassis.Accelerator.PedalPosition": {
        "signal": "Pedal",
        "transform": {"math": "floor(x+0.5)"},
    },
    "Vehicle.Powertrain.CombustionEngine.Speed": {"signal": "Drive.Rpm", "on_change": True},
    "Vehicle.Powertrain.ElectricMotor.Speed": {"signal": "Same"},
}


def kuksa_tree(entries: dict[str, dict[str, Any]], tree: Any = None) -> dict[str, Any]:
    """A mapping file's content in Kuksa's layout: a nested VSS tree with dbc2vss blocks."""
    tree = tree or default_tree()
    root: dict[str, Any] = {}
    for path, block in entries.items():
        parts = path.split(".")
        level = root
        for part in parts[:-1]:
            level = level.setdefault(part, {"type": "branch", "children": {}})["children"]
        node = tree.node(path)
        leaf: dict[str, Any] = {"type": "sensor", "dbc2vss": block}
        if node is not None:
            leaf["datatype"] = node.datatype
        level[parts[-1]] = leaf
    return root


def write_mapping(folder: Path, entries: dict[str, dict[str, Any]], name: str = "car.json") -> Path:
    path = folder / name
    path.write_text(json.dumps(kuksa_tree(entries)))
    return path


@pytest.fixture
def small_dbc(tmp_path: Path) -> Path:
    path = tmp_path / "small.dbc"
    path.write_text(SMALL_DBC)
    return path


def link(small_dbc: Path, entries: dict[str, dict[str, Any]], tree: Any = None) -> list[Any]:
    mapping = write_mapping(small_dbc.parent, entries)
    db = load_databases([str(small_dbc)])
    return link_mapping(read_mapping(str(mapping)), "can0", db, tree or default_tree())


def test_a_good_mapping_links_every_path(small_dbc: Path) -> None:
    links = {x.path: x for x in link(small_dbc, GOOD)}
    assert set(links) == set(GOOD)
    speed = links["Vehicle.Speed"]
    assert (speed.message, speed.signal, speed.unit, speed.interval_ms) == (
        "Drive",
        "Speed",
        "km/h",
        100,
    )
    assert speed.transform.spec == {} and speed.transform.lossless
    gear = links["Vehicle.Powertrain.Transmission.SelectedGear"].transform
    assert gear.apply(3, "D") == 127 and gear.apply(2, "N") is None
    assert links["Vehicle.Chassis.ParkingBrake.IsEngaged"].transform.apply(1, None) is True
    assert links["Vehicle.Powertrain.CombustionEngine.Speed"].on_change


def test_same_signal_defined_alike_in_two_messages_feeds_from_both(small_dbc: Path) -> None:
    links = link(small_dbc, {"Vehicle.Powertrain.ElectricMotor.Speed": {"signal": "Same"}})
    assert sorted(x.message for x in links) == ["Other", "Third"]


BAD = [
    ({"Vehicle.Speed": {"signal": "Nope"}}, "Vehicle.Speed: unknown DBC signal 'Nope'"),
    ({"Vehicle.Speed": {"signal": "Drive.Nope"}}, "unknown DBC signal 'Drive.Nope'"),
    ({"Vehicle.Sped": {"signal": "Speed"}}, r"Vehicle.Sped: unknown VSS path \(not in .*vss-6.0"),
    (
        {"Vehicle.Chassis.Accelerator.PedalPosition": {"signal": "Pedal"}},
        r"PedalPosition: incompatible type: Pedal has fractional values \(scale 0.4\); VSS "
        r"datatype uint8 needs a math transform",
    ),
    (
        {"Vehicle.Powertrain.Transmission.CurrentGear": {"signal": "Third.Dup"}},
        r"incompatible type: Dup spans 0..510, beyond int8",
    ),
    (
        {"Vehicle.Chassis.ParkingBrake.IsEngaged": {"signal": "Gear"}},
        "incompatible type: Gear is not a 0/1 signal, boolean needs a mapping",
    ),
    (
        {"Vehicle.Speed": {"signal": "Speed", "transform": {"math": "floor(x+"}}},
        r"Vehicle.Speed: math 'floor\(x\+': '\(' was never closed at column 6",
    ),
    (
        {"Vehicle.Speed": {"signal": "Speed", "transform": {"math": "system(x)"}}},
        "unknown function 'system'",
    ),
    (
        {"Vehicle.Speed": {"signal": "Speed", "transform": {"lookup": {}}}},
        "unknown transform key",
    ),
    (
        {
            "Vehicle.Powertrain.Transmission.SelectedGear": {
                "signal": "Gear",
                "transform": {"mapping": [{"from": "Drive", "to": 127}]},
            }
        },
        r"mapping from 'Drive' is not a value name of Gear \(D, N, P, R\)",
    ),
    (
        {
            "Vehicle.Body.Lights.Brake.IsActive": {
                "signal": "Flag",
                "transform": {"mapping": [{"from": 1, "to": "ON"}]},
            }
        },
        r"mapping to 'ON' is not allowed \(\['INACTIVE', 'ACTIVE', 'ADAPTIVE'\]\)",
    ),
    (
        {
            "Vehicle.Chassis.ParkingBrake.IsEngaged": {
                "signal": "Flag",
                "transform": {"mapping": [{"from": 1, "to": "yes"}]},
            }
        },
        "mapping to 'yes' is not a boolean value",
    ),
    (
        {"Vehicle.Body.Lights.Brake.IsActive": {"signal": "Flag", "transform": {"math": "x"}}},
        "math gives numbers; VSS datatype string needs a mapping",
    ),
    (
        {"Vehicle.Powertrain.CombustionEngine.Speed": {"signal": "Speed"}},
        "DBC unit 'km/h' and VSS unit 'rpm' measure different quantities",
    ),
    (
        {"Vehicle.Speed": {"signal": "Dup"}},
        r"ambiguous DBC signal 'Dup': defined differently in messages Other, Third; write it "
        r"as Message.Signal",
    ),
    ({"Vehicle.Speed": {"signal": "Speed", "interval_ms": -5}}, "interval_ms -5 is not >= 0"),
    ({"Vehicle.Speed": {"signal": "Speed", "every": 1}}, "unknown dbc2vss key"),
    ({"Vehicle.Speed": {"signal": ""}}, "dbc2vss.signal must name a DBC signal"),
    ({"Vehicle.Cabin.Seat": {"signal": "Speed"}}, "unknown VSS path"),  # a branch
]


@pytest.mark.parametrize(("entries", "reason"), BAD)
def test_bad_mappings_are_refused_naming_file_path_and_reason(
    small_dbc: Path, entries: dict[str, dict[str, Any]], reason: str
) -> None:
    with pytest.raises(VssMappingError, match=reason) as info:
        link(small_dbc, entries)
    message = str(info.value)
    assert message.startswith(f"vss_mapping: {small_dbc.parent / 'car.json'}: ")
    (path,) = entries
    assert f": {path}: " in message


def test_declared_datatype_must_match_the_tree(small_dbc: Path) -> None:
    content = kuksa_tree({"Vehicle.Speed": {"signal": "Speed"}})
    content["Vehicle"]["children"]["Speed"]["datatype"] = "int32"
    path = small_dbc.parent / "car.json"
    path.write_text(json.dumps(content))
    db = load_databases([str(small_dbc)])
    with pytest.raises(VssMappingError, match="datatype int32 differs from the tree's float"):
        link_mapping(read_mapping(str(path)), "can0", db, default_tree())


def test_unreadable_mapping_files_are_refused(tmp_path: Path) -> None:
    with pytest.raises(VssMappingError, match=r"missing.json: no such file"):
        read_mapping(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(VssMappingError, match=r"bad\.json: not JSON"):
        read_mapping(str(bad))
    empty = tmp_path / "empty.json"
    empty.write_text('{"Vehicle": {"type": "branch", "children": {}}}')
    with pytest.raises(VssMappingError, match="no dbc2vss entry"):
        read_mapping(str(empty))


def test_units_convert_with_vss_unit_definitions(small_dbc: Path, tmp_path: Path) -> None:
    tree = load_tree(small_vspec_tree(tmp_path))  # Vehicle.Speed in m/s here
    (speed,) = link(small_dbc, {"Vehicle.Speed": {"signal": "Speed"}}, tree)
    assert speed.unit == "m/s" and speed.transform.lossless
    assert speed.transform.spec == {"math": f"x * {1000 / 3600!r}"}
    assert speed.transform.apply(36.0, None) == pytest.approx(10.0, rel=1e-15)


def small_config(small_dbc: Path, mapping: Path, **extra: Any) -> dict[str, Any]:
    return {
        "buses": [{"name": "can0", "dbc": [str(small_dbc)], "vss_mapping": [str(mapping)]}],
        "uplink": {"type": "file", "path": str(small_dbc.parent / "outbox")},
        **extra,
    }


def test_a_bad_mapping_stops_start_up_and_is_refused_by_the_twin(small_dbc: Path) -> None:
    mapping = write_mapping(small_dbc.parent, {"Vehicle.Speed": {"signal": "Nope"}})
    config = parse_config(small_config(small_dbc, mapping))
    with pytest.raises(ConfigError, match=r"^buses\[0\]\.vss_mapping: .*unknown DBC signal"):
        Processor(config, lambda build: 0)
    desired = {"config": small_config(small_dbc, mapping)}
    with pytest.raises(ConfigError) as info:
        parse_desired(desired, base_dir=str(small_dbc.parent))
    assert info.value.field == "config.buses[0].vss_mapping"
    assert "Vehicle.Speed: unknown DBC signal 'Nope'" in info.value.reason


def test_resolver_gives_bus_message_signal_and_transform(small_dbc: Path) -> None:
    mapping = write_mapping(small_dbc.parent, GOOD)
    vss = load_vss_mapping(parse_config(small_config(small_dbc, mapping)))
    (gear,) = vss.resolve("Vehicle.Powertrain.Transmission.SelectedGear")
    assert (gear.bus, gear.message, gear.signal) == ("can0", "Drive", "Gear")
    assert gear.transform.apply(0, "P") == 126
    assert vss.resolve("Vehicle.Cabin.Door") == ()
    assert "Vehicle.Speed" in vss.paths()


def test_selection_accepts_vss_paths_and_mapping_intervals(small_dbc: Path) -> None:
    mapping = write_mapping(small_dbc.parent, GOOD)
    config = parse_config(
        small_config(
            small_dbc,
            mapping,
            signals={
                "include": ["Vehicle.Speed", "Vehicle.Powertrain.*", "Drive.Flag"],
                "rules": [{"match": ["Vehicle.Powertrain.*"], "mode": "every"}],
            },
        )
    )
    vss = load_vss_mapping(config)
    db = load_databases([str(small_dbc)])
    selection = Selection(config.signals, vss)
    drive = db.get_message_by_name("Drive")

    def policy(name: str) -> Any:
        return selection.policy("can0", drive, drive.get_signal_by_name(name))

    speed = policy("Speed")  # mapped with interval_ms = 100, no rule: a rate limit
    assert speed is not None and (speed.mode, speed.interval) == ("min_interval", 0.1)
    assert policy("Rpm").mode == "every"  # matched by its VSS path's rule
    assert policy("Gear").mode == "every"
    assert policy("Flag").mode == "on_change"  # selected by name
    assert policy("Pedal") is None  # neither its name nor its path is included


def drive_frames(db: cantools.database.Database, speeds: list[float]) -> list[can.Message]:
    message = db.get_message_by_name("Drive")
    frames = []
    for i, speed in enumerate(speeds):
        values = {"Speed": speed, "Gear": i % 4, "Flag": i % 2, "Pedal": 40.0, "Rpm": 800.0}
        frames.append(
            can.Message(
                timestamp=1_700_000_000 + i * 0.2,  # beyond Vehicle.Speed's 100 ms limit
                arbitration_id=message.frame_id,
                data=message.encode(values),
                is_extended_id=False,
                channel="can0",
            )
        )
    return frames


class Collector:
    """The spool's ``append`` contract, in memory."""

    def __init__(self) -> None:
        self.payloads: list[Payload] = []

    def __call__(self, build: Any) -> int:
        self.payloads.append(build("7e57" * 8, len(self.payloads)))
        return len(self.payloads) - 1

    def rows(self, **options: Any) -> list[Row]:
        decoder = PayloadReader(**options)
        return [row for p in self.payloads for row in decoder.rows(p.body)]


def test_payloads_carry_vss_rows_and_old_readers_see_the_same_schema(small_dbc: Path) -> None:
    mapping = write_mapping(small_dbc.parent, GOOD)
    config = parse_config(small_config(small_dbc, mapping))
    collector = Collector()
    processor = Processor(config, collector)
    db = load_databases([str(small_dbc)])
    processor.process(drive_frames(db, [0.0, 12.34, 12.34, 50.0]))
    processor.flush()

    rows = collector.rows()
    speed = [(r.value, r.unit) for r in rows if r.vss_path == "Vehicle.Speed"]
    assert speed == [(0.0, "km/h"), (12.34, "km/h"), (50.0, "km/h")]
    gears = [(r.value, r.choice) for r in rows if r.vss_path and r.vss_path.endswith("Gear")]
    assert gears == [(126, None), (-1, None), (127, None)]  # N (2) maps to nothing
    dbc_rows = collector.rows(vss=False)
    assert dbc_rows == [r for r in rows if r.vss_path is None]

    # What a reader that knows nothing of VSS does: the body alone gives the same schema id.
    schema_payload = unpack(collector.payloads[0].body)
    assert schema_payload.kind == "schema"
    assert set(schema_payload.body) == {"buses", "messages"}
    old = Schema.from_wire(schema_payload.body)
    assert old.schema_id == schema_payload.envelope["schema"] == processor.schema.schema_id
    assert old.vss == () and len(processor.schema.vss) == len(GOOD) + 1  # Same: two messages
    ext = schema_payload.envelope["ext"]["vss"]
    assert ["Vehicle.Speed", "float", "km/h", {}] in [entry[2:] for entry in ext]


def test_bundled_demo_mapping_is_valid() -> None:
    config = parse_config(
        {"buses": [{"name": "can0", "dbc": [str(DEMO_DBC)], "vss_mapping": ["demo_vehicle.json"]}]}
    )
    assert config.buses[0].vss_mapping == ("demo_vehicle.json",)  # found among the bundled
    vss = load_vss_mapping(config)
    assert {x.signal for x in vss.resolve("Vehicle.Speed")} == {"ESC_VehicleSpeed"}
    assert len(vss.links) == 10


# --------------------------------------------------------------------------------------------
# One query, every platform: Vehicle.Speed from generated traffic of each bundled mapping


PLATFORMS = {
    "demo": (lambda: DEMO_DBC, "demo_vehicle.json"),
    "vw_mqb": (lambda: require_corpus() / "dbc_corpus" / "opendbc" / "vw_mqb.dbc", "vw_mqb.json"),
    "vw_pq": (lambda: require_corpus() / "dbc_corpus" / "opendbc" / "vw_pq.dbc", "vw_pq.json"),
}
#: A drive's speed (km/h), on the 0.01 km/h grid every platform's speed signal has.
SPEEDS = [round(min(250.0, 0.37 * i + 3.0 * math.sin(i / 9)), 2) for i in range(400)]


def platform_frames(db: cantools.database.Database, signal: str) -> list[can.Message]:
    """Traffic of the message carrying ``signal``: the drive's speed, every other signal at its
    lowest value (what the database allows)."""
    (message,) = [m for m in db.messages if any(s.name == signal for s in m.signals)]
    frames = []
    for i, speed in enumerate(SPEEDS):
        values: dict[str, Any] = {}
        for s in message.signals:
            low = s.minimum if s.minimum is not None else s.offset
            values[s.name] = speed if s.name == signal else low
        frames.append(
            can.Message(
                timestamp=1_700_000_000 + 0.02 * i,
                arbitration_id=message.frame_id,
                is_extended_id=message.is_extended_frame,
                data=message.encode(values, strict=False),
                channel="can0",
            )
        )
    return frames


def vehicle_speed(platform: str, tmp_path: Path) -> list[tuple[float, Any]]:
    """Generated traffic of ``platform`` through the processor and the payload decoder, queried
    for Vehicle.Speed."""
    dbc, mapping = PLATFORMS[platform]
    config = parse_config(
        {
            "buses": [
                {"name": "can0", "dbc": [str(dbc())], "strict": False, "vss_mapping": [mapping]}
            ],
            "uplink": {"type": "file", "path": str(tmp_path / "outbox")},
        }
    )
    processor = Processor(config, collector := Collector())
    (link,) = processor.vss.resolve("Vehicle.Speed")
    db = load_databases([str(dbc())], strict=False)
    processor.process(platform_frames(db, link.signal))
    processor.flush()
    return [(r.time, r.value) for r in collector.rows() if r.vss_path == "Vehicle.Speed"]


def test_vehicle_speed_reads_the_same_from_every_platform(tmp_path: Path) -> None:
    require_corpus()
    results = {platform: vehicle_speed(platform, tmp_path) for platform in PLATFORMS}
    changes = [(1_700_000_000 + 0.02 * i, s) for i, s in enumerate(SPEEDS)]
    expected = [c for i, c in enumerate(changes) if i == 0 or c[1] != changes[i - 1][1]]
    for platform, query in results.items():
        assert [t for t, _ in query] == pytest.approx([t for t, _ in expected], abs=1e-3)
        assert [v for _, v in query] == pytest.approx([v for _, v in expected], abs=1e-9)
        # the same floats, exactly, from ESC_VehicleSpeed, ESP_v_Signal and Kombi_1's speed
        assert query == results["demo"], platform


# --------------------------------------------------------------------------------------------
# Kuksa's own mapping of the Tesla Model 3, on the corpus's Tesla log


def kuksa_value(block: dict[str, Any], datatype: str, value: Any) -> Any:
    """What Kuksa's dbc2vssmapper makes of ``value`` as cantools decodes it by default (choice
    values as NamedSignalValue), written here from Kuksa's rules: no transform passes the value
    (its name for a string datatype, its number otherwise), ``mapping`` takes the first item
    whose ``from`` equals it, ``math`` evaluates the expression (None on failure)."""
    transform = block.get("transform")
    named = isinstance(value, NamedSignalValue)
    if transform is None:
        if named:
            return value.name if datatype == "string" else value.value
        return str(value) if datatype == "string" else value
    if "mapping" in transform:
        for item in transform["mapping"]:
            if item["from"] == value:  # a NamedSignalValue equals its name only
                return item["to"]
        return None
    if named:  # py_expression_eval fails on a NamedSignalValue: Kuksa sends nothing
        return None
    expressions = {
        "floor(x+0.5)": lambda x: math.floor(x + 0.5),
        "floor((x*40)-100)": lambda x: math.floor(x * 40 - 100),
        "floor(abs(x/5))": lambda x: math.floor(abs(x / 5)),
    }
    return expressions[transform["math"]](value)


def test_kuksa_tesla_mapping_gives_exactly_kuksas_values(tmp_path: Path) -> None:
    corpus = require_corpus() / "tesla_model3"
    mapping_file = corpus / "kuksa_vss_4.2_dbc_mapping.json"
    dbc = corpus / "Model3CAN_kuksa.dbc"
    log = corpus / "candump_Manual_SOC_DogMode_CabinTemp.log"
    config = parse_config(
        {
            "buses": [{"name": "vcan0", "dbc": [str(dbc)], "vss_mapping": [str(mapping_file)]}],
            "vss_tree": str(mapping_file),  # Kuksa's file is a VSS 4.2 tree itself
            # every decoded value (rather than the changes, and rather than the mapping's
            # interval_ms), to compare frame by frame
            "signals": {"rules": [{"match": ["*"], "mode": "every"}]},
            "uplink": {"type": "file", "path": str(tmp_path / "outbox")},
        }
    )
    frames = list(ReplaySource(ReplayConfig(str(log), None), ["vcan0"]).messages())
    processor = Processor(config, collector := Collector())
    processor.process(frames)
    processor.flush()
    got: dict[str, list[tuple[int, Any]]] = defaultdict(list)
    for row in collector.rows():
        if row.vss_path is not None:
            value = row.choice if row.choice is not None else row.value
            got[row.vss_path].append((round(row.time * 1000), value))  # ms ticks

    # Independently: the file's dbc2vss blocks, cantools' decode of every frame, Kuksa's rules.
    blocks: dict[str, list[tuple[str, dict[str, Any], str]]] = defaultdict(list)

    def visit(node: dict[str, Any], path: str) -> None:
        if "dbc2vss" in node:
            block = node["dbc2vss"]
            blocks[block["signal"]].append((path, block, node["datatype"]))
        for name, child in node.get("children", {}).items():
            visit(child, f"{path}.{name}")

    for name, node in json.loads(mapping_file.read_text()).items():
        visit(node, name)
    db = cantools.database.load_file(str(dbc))
    ids = {m.frame_id for m in db.messages}
    expected: dict[str, list[tuple[int, Any]]] = defaultdict(list)
    for frame in frames:
        if frame.arbitration_id not in ids:
            continue
        try:
            decoded = db.decode_message(frame.arbitration_id, frame.data)
        except Exception:  # our decoder counts these as decode errors: no values
            continue
        for signal, value in decoded.items():
            for path, block, datatype in blocks.get(signal, ()):
                vss = kuksa_value(block, datatype, value)
                if vss is not None:
                    expected[path].append((round(frame.timestamp * 1000), vss))

    assert len(expected) >= 8  # the mapped messages this log has
    assert set(got) == set(expected)
    for path in expected:
        assert sorted(got[path], key=repr) == sorted(expected[path], key=repr), path
        # bool stays bool, int stays int: compare types too
        assert sorted(map(repr, got[path])) == sorted(map(repr, expected[path])), path


def test_kuksa_vspec_overlay_reads_the_same_entries() -> None:
    corpus = require_corpus() / "tesla_model3"
    from_json = read_mapping(str(corpus / "kuksa_vss_4.2_dbc_mapping.json"))
    from_vspec = read_mapping(str(corpus / "kuksa_dbc_overlay.vspec"))

    def key(entries: Any) -> list[tuple[Any, ...]]:
        return sorted((e.path, e.signal, json.dumps(e.transform), e.interval_ms) for e in entries)

    assert key(from_json) == key(from_vspec)


def test_bundled_mappings_are_in_the_package_folder() -> None:
    names = sorted(p.name for p in bundled_mappings_dir().glob("*.json"))
    assert names == ["demo_vehicle.json", "vw_mqb.json", "vw_pq.json"]
    for name in names:  # found by bare name; every block names a signal
        assert all(e.signal for e in read_mapping(name))


def test_lake_rows_carry_the_vss_path_column(small_dbc: Path) -> None:
    pa = pytest.importorskip("pyarrow", reason="the lake extra is not installed")
    from edge.lake.arrow import SchemaBook, decode
    from edge.lake.tables import PAYLOAD_INPUT

    mapping = write_mapping(small_dbc.parent, GOOD)
    collector = Collector()
    processor = Processor(parse_config(small_config(small_dbc, mapping)), collector)
    processor.process(drive_frames(load_databases([str(small_dbc)]), [0.0, 12.34, 50.0]))
    processor.flush()
    bodies = [p.body for p in collector.payloads]
    n = len(bodies)
    batch = pa.RecordBatch.from_pydict(
        {
            "body": bodies,
            "device": ["car"] * n,
            "vehicle": ["car"] * n,
            "enqueued": [None] * n,
            "origin": [f"test#{i}" for i in range(n)],
        },
        schema=PAYLOAD_INPUT,
    )
    rows = decode(batch, SchemaBook()).rows.to_pylist()
    speed = [(r["value"], r["raw"], r["signal"]) for r in rows if r["vss_path"] == "Vehicle.Speed"]
    assert speed == [(0.0, None, "Speed"), (12.34, None, "Speed"), (50.0, None, "Speed")]
    dbc_speed = [r["raw"] for r in rows if r["vss_path"] is None and r["signal"] == "Speed"]
    assert dbc_speed == [0, 1234, 5000]


def test_a_stored_schema_keeps_its_vss_table(small_dbc: Path) -> None:
    mapping = write_mapping(small_dbc.parent, GOOD)
    collector = Collector()
    processor = Processor(parse_config(small_config(small_dbc, mapping)), collector)
    processor.process(drive_frames(load_databases([str(small_dbc)]), [0.0, 12.34]))
    processor.flush()
    stored = msgpack.unpackb(msgpack.packb(processor.schema.to_stored()), strict_map_key=False)
    schema = Schema.from_wire(stored)
    assert schema == processor.schema and schema.schema_id == processor.schema.schema_id
    decoder = PayloadReader()
    decoder.add_schema(schema)  # as the lake's book does, without the schema payload
    rows = decoder.rows(collector.payloads[-1].body)
    assert [r.value for r in rows if r.vss_path == "Vehicle.Speed"] == [0.0, 12.34]
