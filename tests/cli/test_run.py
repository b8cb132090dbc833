"""``can-telemetry run``, run as a real process (and in-process for refusals at start-up)."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.cli.helpers import ROOT, cli, record_drive, run_main, write_config
from tests.support.mosquitto import free_port
from tests.support.waiting import wait_for


def test_run_replay_then_decode_to_jsonl_and_csv(tmp_path: Path) -> None:
    log = record_drive(tmp_path / "drive.log", 20, seed=2)
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


def test_bad_config_stops_startup_naming_the_field(tmp_path: Path) -> None:
    config = write_config(tmp_path, "\n[batch]\nmax_age = -1\n")
    result = cli("run", "--config", str(config))
    assert result.returncode == 2
    assert "batch.max_age" in result.stderr


def run_real_time_replay(config: Path, tmp_path: Path) -> subprocess.Popen[str]:
    """``can-telemetry run`` replaying 30 s of driving in real time (a stand-in for a live bus)."""
    log = record_drive(tmp_path / "slow.log", 30, seed=4)
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
        # 200 once the run is healthy (a loaded machine may hold the queue past stall_after)
        wait_for(lambda: _get(port, "/healthz"), timeout=20, what="/healthz answering 200")
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


def test_an_outbox_path_that_is_a_file_is_a_configuration_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "afile").write_text("")
    config = write_config(tmp_path)
    config.write_text(config.read_text().replace('path = "outbox"', 'path = "afile/outbox"'))
    status, err = run_main(capsys, "run", "--config", str(config))
    assert status == 2
    assert "uplink.path:" in err and "afile exists and is not a folder" in err


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


def test_run_summary_counts_every_payload_the_spool_lost_or_refused(tmp_path: Path) -> None:
    log = record_drive(tmp_path / "drive.log", 5, seed=2)
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
