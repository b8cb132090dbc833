"""``can-telemetry dbc``."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.cli import main
from edge.simulator.vehicle import DEMO_DBC
from tests.cli.helpers import cli, run_main


def test_dbc_lists_messages_and_signals() -> None:
    result = cli("dbc", str(DEMO_DBC), "--signals")
    assert result.returncode == 0, result.stderr
    assert "messages" in result.stdout.splitlines()[0]
    assert "km/h" in result.stdout


def test_dbc_refuses_a_broken_database_with_its_name(tmp_path: Path) -> None:
    bad = tmp_path / "broken.dbc"
    bad.write_text('VERSION ""\nBO_ 1 X: 8 Y\n SG_ A : 0|80@1+ (1,0) [0|1] "" Z\n')
    result = cli("dbc", str(bad))
    assert result.returncode == 2
    assert "broken.dbc" in result.stderr and "Traceback" not in result.stderr


def test_dbc_no_strict_lists_the_repairs_a_database_needed(tmp_path: Path) -> None:
    quirky = tmp_path / "quirky.dbc"
    quirky.write_text(
        'VERSION ""\n\nNS_ :\n\nBS_:\n\nBU_: ECU\n\n'
        "BO_ 316495015 VZE_04: 8 ECU\n"
        ' SG_ Limit : 0|8@1+ (.5,0) [0|127.5] "km/h" ECU\n'
    )
    strict = cli("dbc", str(quirky))
    assert strict.returncode == 2 and "loads with strict = false" in strict.stderr
    result = cli("dbc", "--no-strict", str(quirky))
    assert result.returncode == 0, result.stderr
    assert "repaired to load (2;" in result.stdout
    assert f"{quirky}:9: frame id 0x12dd54a7 has more than 11 bits" in result.stdout
    assert f"{quirky}:10: number written without its leading zero" in result.stdout
    assert "0x12dd54a7  x" in result.stdout  # listed as an extended message


def test_control_characters_from_a_database_are_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = tmp_path / "binary.dbc"
    binary.write_bytes(b"\x1b[2J\x07\x00garbage")
    status, err = run_main(capsys, "dbc", str(binary))
    assert status == 2
    assert "\x1b" not in err and "\x07" not in err and "\\x1b" in err
    unit = tmp_path / "unit.dbc"
    unit.write_text(
        'VERSION ""\nBS_:\nBU_: ECU\nBO_ 1 M: 1 ECU\n SG_ S : 0|8@1+ (1,0) [0|1] "\x1b[2J" ECU\n'
    )
    status = main(["dbc", str(unit), "--signals"])
    out = capsys.readouterr().out
    assert status == 0
    assert "\x1b" not in out and "\\x1b[2J" in out
