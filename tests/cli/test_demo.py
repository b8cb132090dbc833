"""``can-telemetry demo``."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.cli.helpers import cli, run_main


def test_demo_runs_the_whole_pipeline_and_decodes_what_it_sent(tmp_path: Path) -> None:
    result = cli("demo", "--duration", "60", "--outbox", str(tmp_path), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "decoded back" in result.stdout and "OK" in result.stdout
    assert "x smaller than raw" in result.stdout
    # Diagnostics: the simulated ECUs answered the demo's requests (edge/simulator/ecus.py).
    assert "WDEMO00CANTELEM01" in result.stdout and "TCM P0700" in result.stdout
    assert any((tmp_path / "outbox").glob("*.data.ctl"))
    # Campaigns (examples/campaigns.toml): the drive brakes hard at about 52 s.
    assert re.search(r"harsh-braking +1 captures +campaign: [1-9]", result.stdout)
    decoded = cli("decode", str(tmp_path / "outbox"), "--format", "jsonl")
    rows = [json.loads(line) for line in decoded.stdout.splitlines()]
    assert {row["campaign"] for row in rows} >= {None, "harsh-braking"}


@pytest.mark.parametrize("duration", ["0", "nan", "inf", "-5", "soon"])
def test_demo_refuses_a_duration_that_is_not_a_positive_number(
    duration: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, err = run_main(capsys, "demo", "--duration", duration, "--no-progress")
    assert status == 2
    assert "argument --duration:" in err
