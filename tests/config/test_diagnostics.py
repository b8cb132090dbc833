"""edge.config.diagnostics: the [diagnostics] table, through edge.config.model.parse_config (the
same parser serves the TOML file and the twin)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from edge.config.diagnostics import DiagBusConfig, ObdPid
from edge.config.model import parse_config
from edge.errors import ConfigError
from edge.simulator.vehicle import DEMO_DBC


def config(diagnostics: Any) -> Any:
    return parse_config(
        {
            "buses": [
                {"name": "can0", "dbc": str(DEMO_DBC)},
                {"name": "can1", "dbc": str(DEMO_DBC)},
            ],
            "diagnostics": diagnostics,
        }
    )


def test_absent_means_listen_only_everywhere() -> None:
    parsed = parse_config({"buses": [{"name": "can0", "dbc": str(DEMO_DBC)}]})
    assert parsed.diagnostics.buses == ()
    assert parsed.diagnostics.for_bus("can0") is None


def test_a_full_table() -> None:
    parsed = config(
        {
            "buses": [
                {
                    "bus": "can1",
                    "max_requests_per_second": 2,
                    "when": "ECM_EngineStatus.ECM_EngineSpeed > 0",
                    "allow_clear": True,
                    "obd": {"pids": [{"pid": 0x0C, "period": 1}], "discover": False},
                    "uds": [
                        {
                            "name": "BMS",
                            "request_id": 0x7E4,
                            "response_id": 0x7EC,
                            "dtc_status_mask": 0x09,
                            "dids": [{"did": 0xF190, "name": "VIN", "kind": "ascii"}],
                        }
                    ],
                    "j1939": {"source_address": 0xF1},
                }
            ]
        }
    )
    bus = parsed.diagnostics.for_bus("can1")
    assert isinstance(bus, DiagBusConfig)
    assert parsed.diagnostics.for_bus("can0") is None
    assert bus.max_requests_per_second == 2.0 and bus.allow_clear
    assert bus.obd is not None and bus.obd.pids == (ObdPid(0x0C, 1.0),)
    assert (bus.obd.request_id, bus.obd.response_id, bus.obd.discover) == (0x7E0, 0x7E8, False)
    assert bus.ecu("BMS").dtc_status_mask == 0x09 and bus.ecu("BMS").dids[0].kind == "ascii"
    assert bus.j1939 is not None and bus.j1939.source_address == 0xF1


@pytest.mark.parametrize(
    ("table", "error"),
    [
        (
            {"buses": [{"bus": "can9", "j1939": {}}]},
            "diagnostics.buses[0].bus: no bus named 'can9'",
        ),
        ({"buses": [{"bus": "can0"}]}, "diagnostics.buses[0].bus: enables diagnostics but asks"),
        (
            {"buses": [{"bus": "can0", "j1939": {}}, {"bus": "can0", "j1939": {}}]},
            "diagnostics.buses[1].bus: diagnostics for bus 'can0' given twice",
        ),
        (
            {"buses": [{"bus": "can0", "j1939": {}, "max_requests_per_second": 0}]},
            "diagnostics.buses[0].max_requests_per_second: must be greater than 0",
        ),
        (
            {"buses": [{"bus": "can0", "j1939": {}, "when": "Speed >"}]},
            "diagnostics.buses[0].when: column 8: syntax error",
        ),
        (
            {"buses": [{"bus": "can0", "obd": {"pids": [{"pid": 0x100, "period": 1}]}}]},
            "diagnostics.buses[0].obd.pids[0].pid: must be at most 255",
        ),
        (
            {
                "buses": [
                    {"bus": "can0", "uds": [{"name": "A", "request_id": 0x800, "response_id": 1}]}
                ]
            },
            "diagnostics.buses[0].uds[0].request_id: must be at most 2047",
        ),
        (
            {"buses": [{"bus": "can0", "uds": [{"name": "A", "request_id": 1, "response_id": 1}]}]},
            "diagnostics.buses[0].uds[0].response_id: must differ from request_id",
        ),
        (
            {
                "buses": [
                    {
                        "bus": "can0",
                        "uds": [
                            {
                                "name": "A",
                                "request_id": 1,
                                "response_id": 2,
                                "dids": [{"did": 1, "kind": "utf16"}],
                            }
                        ],
                    }
                ]
            },
            "diagnostics.buses[0].uds[0].dids[0].kind: must be one of ascii, hex, uint",
        ),
        (
            {"buses": [{"bus": "can0", "j1939": {"adress": 1}}]},
            "diagnostics.buses[0].j1939.adress: unknown option",
        ),
        (
            {"buses": [{"bus": "can0", "obd": {"functional": True, "request_id": 0x7E0}}]},
            "diagnostics.buses[0].obd.request_id: not with functional = true (requests go to 0x7DF",
        ),
        ({"bus": "can0"}, "diagnostics.bus: unknown option"),
    ],
)
def test_a_bad_table_names_the_field(table: Any, error: str) -> None:
    with pytest.raises(ConfigError) as info:
        config(table)
    assert str(info.value).startswith(error)


ROOT = Path(__file__).resolve().parents[2]


def test_the_example_loads_and_its_gate_compiles() -> None:
    from edge.config.model import load_config
    from edge.diagnostics.service import Diagnostics

    parsed = load_config(ROOT / "examples" / "diagnostics.toml")
    bus = parsed.diagnostics.for_bus("powertrain")
    assert bus is not None and bus.when and parsed.diagnostics.for_bus("body") is None
    assert [e.name for e in bus.uds] == ["TCM", "BMS"]
    diagnostics = Diagnostics(parsed, lambda records: None)  # builds, opens nothing
    assert diagnostics.buses[0].condition is not None


def test_the_toml_in_the_docs_is_valid() -> None:
    text = (ROOT / "docs" / "diagnostics.md").read_text(encoding="utf-8")
    snippet = text.split("```toml\n", 1)[1].split("```", 1)[0]
    data = tomllib.loads(snippet)
    data["buses"] = [{"name": "powertrain", "dbc": str(DEMO_DBC)}]
    parsed = parse_config(data)
    assert parsed.diagnostics.buses[0].ecu("BMS").dids[1].name == "software"


def test_functional_obd() -> None:
    bus = config({"buses": [{"bus": "can0", "obd": {"functional": True}}]}).diagnostics.buses[0]
    assert bus.obd is not None and bus.obd.functional
    plain = config({"buses": [{"bus": "can0", "obd": {}}]}).diagnostics.buses[0]
    assert plain.obd is not None and not plain.obd.functional  # physical unless asked
