"""``can-telemetry demo``: a simulated drive through the whole pipeline into a local outbox,
read back, and what it cost."""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from edge.cli.arguments import seconds
from edge.cli.decode import read_payload_files

__all__ = ["add_subparser", "demo_config"]


def add_subparser(subparsers: Any) -> None:
    """Add ``demo`` to the CLI's subparsers."""
    demo = subparsers.add_parser(
        "demo", help="simulated drive through the full pipeline (no car, no cloud needed)"
    )
    demo.add_argument(
        "--duration", type=seconds, default=600.0, help="simulated seconds of driving"
    )
    demo.add_argument("--outbox", help="folder for the payloads (default: a temporary folder)")
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.set_defaults(func=_do_demo)


def demo_config(workdir: Path, channel: str) -> dict[str, Any]:
    """The embedded default: the demo vehicle on a virtual bus, into a local outbox, with
    diagnostics enabled (OBD-II PIDs and VIN, UDS DTCs and DIDs, J1939 DM1)."""
    from edge.bundled import DEMO_DBC, OBD2_DBC

    return {
        "vehicle_id": "demo-vehicle",
        "buses": [
            {
                "name": "vehicle",
                "interface": "virtual",
                "channel": channel,
                "fd": True,
                "dbc": [str(DEMO_DBC), str(OBD2_DBC)],
                "j1939": True,
            }
        ],
        "spool": {"path": str(workdir / "spool.db")},
        "uplink": {"type": "file", "path": str(workdir / "outbox")},
        "diagnostics": {"buses": [_DEMO_DIAGNOSTICS]},
        "campaigns": _demo_campaigns(),
    }


def _demo_campaigns() -> list[Any]:
    """The example campaign set (examples/campaigns.toml: a harsh braking, a reverse manoeuvre,
    a periodic battery snapshot); none when the examples are not beside the package."""
    import tomllib

    path = Path(__file__).resolve().parents[2] / "examples" / "campaigns.toml"
    if not path.is_file():
        return []
    campaigns: list[Any] = tomllib.loads(path.read_text(encoding="utf-8")).get("campaigns", [])
    return campaigns


#: The demo's diagnostics: the simulated ECUs of edge/simulator/ecus.py answer them.
_DEMO_DIAGNOSTICS: dict[str, Any] = {
    "bus": "vehicle",
    "max_requests_per_second": 10,
    "obd": {"pids": [{"pid": p, "period": 1.0} for p in (0x05, 0x0C, 0x0D, 0x11)]},
    "uds": [
        {"name": "TCM", "request_id": 0x7E1, "response_id": 0x7E9},
        {
            "name": "BMS",
            "request_id": 0x7E4,
            "response_id": 0x7EC,
            "dids": [{"did": 0xF195, "name": "software", "kind": "ascii"}],
        },
    ],
    "j1939": {},
}


_BAR = "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total} s [{elapsed}<{remaining}]"


def _do_demo(args: argparse.Namespace) -> int:
    import can
    from tqdm import tqdm

    from edge.config.model import parse_config
    from edge.pipeline import Pipeline
    from edge.simulator.vehicle import VehicleSimulator, run_simulation, simulated_ecus

    workdir = Path(args.outbox or tempfile.mkdtemp(prefix="can-telemetry-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    channel = f"can-telemetry-demo-{os.getpid()}"
    config = parse_config(demo_config(workdir, channel))
    duration = float(args.duration)
    started = time.monotonic()
    start_time = time.time() - duration
    simulator = VehicleSimulator(seed=args.seed, start_time=start_time, channel=channel)
    # The diagnostic ECUs answer from before the first request (OBD-II, UDS, J1939).
    # Their answers carry the drive's simulated time (preserved), as every other frame does.
    ecu_bus = can.Bus(interface="virtual", channel=channel, preserve_timestamps=True)
    ecus = simulated_ecus(ecu_bus, simulator)
    ecus.start()
    pipeline = Pipeline(config)
    pipeline.start()
    sent: list[int] = []
    with can.Bus(interface="virtual", channel=channel, preserve_timestamps=True) as bus:
        sender = threading.Thread(
            target=lambda: sent.append(run_simulation(bus, simulator, duration, speed=None)),
            daemon=True,
        )
        sender.start()
        processor = pipeline.processor
        with tqdm(
            total=round(duration),
            unit="s",
            desc="simulated drive",
            disable=args.no_progress,
            bar_format=_BAR,
        ) as progress:
            while sender.is_alive() or processor.decoder.frames < (sent[0] if sent else 0):
                time.sleep(0.1)
                progress.n = min(duration, max(0.0, processor.last_time - start_time))
                progress.refresh()
            progress.n = duration
            progress.refresh()
        pipeline.stop(drain_timeout=30)
    ecus.stop()
    ecu_bus.shutdown()
    stats = pipeline.stats()
    elapsed = time.monotonic() - started
    _print_demo_summary(workdir / "outbox", stats, duration, elapsed, pipeline.processor.schema)
    return 0


def _print_demo_summary(
    outbox: Path, stats: Any, duration: float, elapsed: float, schema: Any
) -> None:
    from edge.wire.codec import PayloadReader

    files = sorted(outbox.glob("*.ctl"))
    decoder = PayloadReader()
    rows = 0
    last: dict[str, Any] = {}
    diagnostics: list[Any] = []  # DTC/VIN/DID rows (edge/diagnostics/), not sampled values
    campaign_rows: dict[str, int] = {}  # rows of captures and snapshots (edge/campaigns/)
    for _, payload_rows in read_payload_files(decoder, files, []):
        for row in payload_rows:
            if row.ecu is not None:
                diagnostics.append(row)
                continue
            if row.campaign is not None:
                campaign_rows[row.campaign] = campaign_rows.get(row.campaign, 0) + 1
                continue
            rows += 1
            last[row.signal] = row
    sent = sum(f.stat().st_size for f in files)
    data_files = sum(".data." in f.name for f in files)
    raw = stats.raw_bytes
    skipped = ", ".join(f"{k} {v:,}" for k, v in sorted(stats.decode.skipped.items())) or "none"
    lines = [
        ("frames read", f"{stats.frames:,}", f"skipped: {skipped}"),
        ("signals selected", f"{schema.signal_count:,}", f"in {len(schema.messages)} messages"),
        ("values sent", f"{stats.samples:,}", "every change of every signal + heartbeats"),
        ("payloads", f"{len(files):,}", f"{data_files} data, {len(files) - data_files} schema"),
        ("raw CAN bytes", f"{raw:,}", "as 16-byte SocketCAN frames"),
        ("bytes sent", f"{sent:,}", f"{raw / max(1, sent):.1f}x smaller than raw"),
        ("per vehicle-hour", f"{sent * 3600 / duration / 1e6:.2f} MB", "at this drive's rate"),
        ("decoded back", f"{rows:,} rows", "OK" if rows == stats.samples else "MISMATCH"),
    ]
    print(f"\nSimulated {duration:.0f} s of driving in {elapsed:.1f} s, outbox: {outbox}")
    for label, value, note in lines:
        print(f"  {label:18} {value:>14}   {note}")
    wanted = ("ESC_VehicleSpeed", "ECM_EngineSpeed", "BMS_SOC", "TCM_GearLever")
    shown = [_fmt(last[name]) for name in wanted if name in last]
    if shown:
        print("  last values        " + ", ".join(shown))
    _print_campaigns(stats.campaigns, campaign_rows)
    _print_diagnostics(diagnostics)


def _print_campaigns(counters: dict[str, dict[str, int]], rows: dict[str, int]) -> None:
    """What each campaign sent: captures (or snapshots), rows decoded back, bytes."""
    for name, counts in sorted(counters.items()):
        if name == "history" or (name == "adhoc" and not counts["triggers"]):
            continue
        kind = "captures" if counts["triggers"] or not counts["captures"] else "snapshots"
        what = f"{counts['captures']} {kind}"
        note = f"campaign: {rows.get(name, 0):,} rows decoded, {counts['bytes']:,} bytes"
        if counts["suppressed"] or counts["budgetDropped"]:
            note += f", {counts['suppressed'] + counts['budgetDropped']} held back"
        print(f"  {name:18} {what:>14}   {note}")


def _print_diagnostics(rows: list[Any]) -> None:
    """The VIN and the DTCs the demo read (rows of diagnostics payloads)."""
    vin = next((r for r in rows if r.message == "VIN"), None)
    if vin is not None:
        print(f"  VIN                {vin.choice:>14}   read from {vin.ecu} on {vin.bus}")
    active: dict[tuple[str, str], Any] = {}
    for row in rows:
        if row.message == "DTC":
            if row.choice == "cleared":
                active.pop((row.ecu, row.signal), None)
            else:
                active[(row.ecu, row.signal)] = row
    if active:
        dtcs = ", ".join(f"{ecu} {code}" for ecu, code in sorted(active))
        print(f"  DTCs {len(active):>28}   {dtcs}")


def _fmt(row: Any) -> str:
    if row.choice is not None:
        return f"{row.signal}={row.choice}"
    value = f"{row.value:.2f}" if isinstance(row.value, float) else str(row.value)
    return f"{row.signal}={value}{' ' + row.unit if row.unit else ''}"
