"""``can-telemetry simulate``."""

from __future__ import annotations

import os

import pytest

from edge.simulator.vehicle import DEMO_DBC
from tests.cli.helpers import run_main


def test_simulate_on_an_unknown_interface_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    status, err = run_main(capsys, "simulate", "--interface", "nosuch", "--duration", "1")
    assert status == 2
    assert "configuration error: --interface: cannot open nosuch:vcan0: Unknown interface" in err


def test_simulate_with_ecus_answers_diagnostic_requests(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from edge.config.model import parse_config
    from edge.diagnostics.service import Diagnostics
    from edge.simulator.ecus import DEMO_VIN

    channel = f"cli-ecus-{os.getpid()}"
    config = parse_config(
        {
            "buses": [{"name": "car", "channel": channel, "dbc": str(DEMO_DBC)}],
            "diagnostics": {"buses": [{"bus": "car", "obd": {}, "timeout": 0.5}]},
        }
    )
    diagnostics = Diagnostics(config, lambda records: None)
    diagnostics.start()  # asks for the VIN until the simulated engine ECU answers
    try:
        # 8 s: a VIN asked before the ECUs answered is asked again after 5 s.
        args = ["--interface", "virtual", "--channel", channel, "--duration", "8", "--ecus"]
        status, err = run_main(capsys, "simulate", *args)
        assert status == 0, err
        assert diagnostics.buses[0].vin == DEMO_VIN
    finally:
        diagnostics.stop()
