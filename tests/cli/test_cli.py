"""The ``can-telemetry`` command, run as a real process."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import can
import pytest

from edge.cli import main
from edge.simulator.vehicle import DEMO_DBC, VehicleSimulator
from tests.support.mosquitto import free_port
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def write_config(tmp_path: Path, extra: str = "") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
vehicle_id = "cli-car"

[[buses]]
name = "can0"
dbc = ["{DEMO_DBC}"]
j1939 = true

[spool]
path = "spool/spool.db"

[uplink]
type = "file"
path = "outbox"
{extra}
""",
        encoding="utf-8",
    )
    return path


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


def test_run_replay_then_decode_to_jsonl_and_csv(tmp_path: Path) -> None:
    log = tmp_path / "drive.log"
    with can.Logger(str(log)) as writer:
        for msg in VehicleSimulator(seed=2, start_time=1_700_000_000.0).frames(20):
            writer.on_message_received(msg)
    config = write_config(tmp_path)
    result = cli("run", "--config", str(config), "--replay", str(log), "--speed", "max")
    assert result.returncode == 0, result.stderr
    outbox = tmp_path / "outbox"
    jsonl = cli("decode", str(outbox))
    assert jsonl.returncode == 0, jsonl.stderr
    rows = [json.loads(line) for line in jsonl.stdout.splitlines()]
    assert rows and set(rows[0]) == {
        "time",
        "bus",
        "message",
        "signal",
        "value",
        "unit",
        "choice",
        "source",
        "vss_path",
        "ecu",
        "first_seen",
        "campaign",
    }
    assert all(r["bus"] == "can0" for r in rows)
    as_csv = cli("decode", str(outbox), "--format", "csv")
    table = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert len(table) == len(rows)


def test_decode_refuses_malformed_payloads_clearly(tmp_path: Path) -> None:
    bad = tmp_path / "bad.ctl"
    bad.write_bytes(b"CT\x01\x00\x02garbage")
    result = cli("decode", str(bad))
    assert result.returncode == 3
    assert "bad.ctl" in result.stderr and "Traceback" not in result.stderr


def test_bad_config_stops_startup_naming_the_field(tmp_path: Path) -> None:
    config = write_config(tmp_path, "\n[batch]\nmax_age = -1\n")
    result = cli("run", "--config", str(config))
    assert result.returncode == 2
    assert "batch.max_age" in result.stderr


def run_real_time_replay(config: Path, tmp_path: Path) -> subprocess.Popen[str]:
    """``can-telemetry run`` replaying 30 s of driving in real time (a stand-in for a live bus)."""
    log = tmp_path / "slow.log"
    with can.Logger(str(log)) as writer:
        for msg in VehicleSimulator(seed=4, start_time=1_700_000_000.0).frames(30):
            writer.on_message_received(msg)
    return subprocess.Popen(
        [sys.executable, "-m", "edge", "run", "--config", str(config), "--replay", str(log)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigterm_stops_cleanly_and_closes_the_open_batch(tmp_path: Path) -> None:
    config = write_config(tmp_path, "\n[batch]\nmax_age = 3600\n")
    # A replay paced in real time stands for a live bus: only SIGTERM can close this batch.
    proc = run_real_time_replay(config, tmp_path)
    time.sleep(3)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr
    outbox = tmp_path / "outbox"
    assert any(outbox.glob("*.data.ctl")), "the open batch was not closed on SIGTERM"


def test_run_serves_metrics_and_liveness_when_metrics_port_is_set(tmp_path: Path) -> None:
    port = free_port()
    config = write_config(tmp_path)
    config.write_text(f"metrics_port = {port}\n" + config.read_text())  # a top-level key
    proc = run_real_time_replay(config, tmp_path)
    try:
        metrics = wait_for(lambda: _get(port, "/metrics"), timeout=20, what="/metrics")
        assert "can_telemetry_frames_total" in metrics
        assert _get(port, "/healthz") is not None
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr


def _get(port: int, path: str) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as response:
            text: str = response.read().decode()
            return text if "frames_total" in text or path == "/healthz" else None
    except OSError:
        return None


# --------------------------------------------------------------------------------------------
# Issue 12: clear messages, not tracebacks (in-process: main() returns the exit status)


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        status = main(list(args))
    except SystemExit as exc:  # argparse refusing an argument
        status = int(exc.code or 0)
    # A command refused at start-up must not have taken over this process's signals.
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return status, err


def test_an_outbox_path_that_is_a_file_is_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "afile").write_text("")
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace('path = "outbox"', 'path = "afile/outbox"'))
    status, err = run_main(capsys, "run", "--config", str(config))
    assert status == 2
    assert "uplink.path: cannot use" in err and "Not a directory" in err


def test_a_taken_metrics_port_is_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(tmp_path)
        config.write_text(f"metrics_port = {port}\n" + config.read_text())
        status, err = run_main(capsys, "run", "--config", str(config))
    assert status == 2
    assert f"metrics_port: cannot serve on port {port}" in err


def test_a_missing_replay_log_is_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path)
    status, err = run_main(capsys, "run", "--config", str(config), "--replay", "nosuch.log")
    assert status == 2
    assert "replay.log: no such file: nosuch.log" in err


@pytest.mark.parametrize("duration", ["0", "nan", "inf", "-5", "soon"])
def test_demo_refuses_a_duration_that_is_not_a_positive_number(
    duration: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, err = run_main(capsys, "demo", "--duration", duration, "--no-progress")
    assert status == 2
    assert "argument --duration:" in err


def test_simulate_on_an_unknown_interface_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    status, err = run_main(capsys, "simulate", "--interface", "nosuch", "--duration", "1")
    assert status == 2
    assert "configuration error: --interface: cannot open nosuch:vcan0: Unknown interface" in err


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


def write_float_payloads(folder: Path) -> None:
    """A schema and a data payload whose float signal is NaN, +inf, -inf and 1.5."""
    from edge.processing.batch import Batch
    from edge.wire.codec import KIND_DATA, KIND_SCHEMA, Codec
    from edge.wire.schema import MessageInfo, Schema, SignalInfo

    schema = Schema(
        ("can0",),
        (MessageInfo(0, "F", 1, False, False, (SignalInfo("x", is_float=True),)),),
    )
    batch = Batch(0.0)
    for tick, value in enumerate([math.nan, math.inf, -math.inf, 1.5]):
        batch.add(0, None, 1_700_000_000_000 + tick, [(0, value)])
    codec = Codec("zstd", 3, 0.001, "car")
    stream = "ab" * 16
    schema_payload = codec.payload(
        KIND_SCHEMA, codec.envelope(None, schema), codec.schema_body(schema), stream, 0
    )
    envelope, body = codec.envelope(batch, schema), codec.data_body(batch, schema)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "1.data.ctl").write_bytes(codec.payload(KIND_DATA, envelope, body, stream, 1).body)
    (folder / "0.schema.ctl").write_bytes(schema_payload.body)


def strict_json(line: str) -> Any:
    def refuse(constant: str) -> None:
        raise ValueError(f"not JSON: {constant}")

    return json.loads(line, parse_constant=refuse)


def test_decode_writes_valid_json_for_nan_and_infinities(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_float_payloads(tmp_path / "outbox")
    assert main(["decode", str(tmp_path / "outbox")]) == 0
    rows = [strict_json(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["value"] for r in rows] == ["NaN", "Infinity", "-Infinity", 1.5]


def test_decode_skips_and_reports_foreign_files_in_a_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outbox = tmp_path / "outbox"
    write_float_payloads(outbox)
    (outbox / "notes.txt").write_text("not a payload")
    (outbox / "broken.ctl").write_bytes(b"CT\x02\x00\x00\x93")
    status = main(["decode", str(outbox)])
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 4  # every row of the real payloads
    assert "skipped " + str(outbox / "notes.txt") + ": not a can-telemetry payload" in captured.err
    assert "broken.ctl: bad payload" in captured.err
    assert status == 3  # a malformed payload is an error; a foreign file only a notice
    (outbox / "broken.ctl").unlink()
    assert main(["decode", str(outbox)]) == 0


def test_decode_to_a_bad_output_path_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_float_payloads(tmp_path / "outbox")
    status, err = run_main(
        capsys, "decode", str(tmp_path / "outbox"), "-o", str(tmp_path / "nosuch" / "rows.jsonl")
    )
    assert status == 2
    assert "--output: cannot write" in err and "No such file or directory" in err


def test_run_summary_counts_every_payload_the_spool_lost_or_refused(tmp_path: Path) -> None:
    log = tmp_path / "drive.log"
    with can.Logger(str(log)) as writer:
        for msg in VehicleSimulator(seed=2, start_time=1_700_000_000.0).frames(5):
            writer.on_message_received(msg)
    config = write_config(tmp_path)
    (tmp_path / "spool").mkdir()
    (tmp_path / "spool" / "spool.db").write_bytes(b"not a database" * 100)  # moved aside
    result = cli("run", "--config", str(config), "--replay", str(log), "--speed", "max")
    assert result.returncode == 0, result.stderr
    summary = next(line for line in result.stderr.splitlines() if "(spool_errors)" in line)
    assert "0 refused (spool_errors), dropped 0 (full) and 0 (ttl)" in summary
    assert "corrupt files: 1 recovered, 0 deleted" in summary


def test_run_summary_counts_what_the_replay_skipped(tmp_path: Path) -> None:
    log = tmp_path / "poison.log"
    log.write_text("(1.0) can0 100#01\n(nan) can0 100#02\ngarbage\n(1.1) can0 100#03\n")
    result = cli("run", "--config", str(write_config(tmp_path)), "--replay", str(log))
    assert result.returncode == 0, result.stderr
    assert "sources: 1 frames skipped for a bad timestamp, 1 log lines unreadable" in result.stderr


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
