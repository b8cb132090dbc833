"""Running ``can-telemetry``: as a real process (``cli``) or in-process (``run_main``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import can
import pytest

from edge.cli import main
from edge.simulator.vehicle import DEMO_DBC, VehicleSimulator

ROOT = Path(__file__).resolve().parents[2]


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m edge *args`` in a process of its own, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "edge", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def record_drive(path: Path, seconds: float, seed: int) -> Path:
    """``seconds`` of the simulated demo vehicle's traffic recorded to ``path`` (a candump log)."""
    with can.Logger(str(path)) as writer:
        for msg in VehicleSimulator(seed=seed, start_time=1_700_000_000.0).frames(seconds):
            writer.on_message_received(msg)
    return path


def write_config(tmp_path: Path, extra: str = "") -> Path:
    """A configuration of one virtual bus of the demo vehicle into an outbox, plus ``extra``."""
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


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    """``main(args)`` in this process: its exit status and its stderr, which has no traceback."""
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
