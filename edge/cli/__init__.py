"""The ``can-telemetry`` command. The only place that configures logging."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import math
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from edge import __version__
from edge.errors import (
    ConfigError,
    DatabaseLoadError,
    PayloadError,
    SecretsFilter,
    TelemetryError,
    scrub_secrets,
)

__all__ = ["main"]

log = logging.getLogger("edge")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``can-telemetry``; returns the exit status."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "module":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.module_args = extra
    logging.basicConfig(
        level=getattr(logging, args.log_level or "WARNING"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(SecretsFilter())
    try:
        result: int = args.func(args)
        return result
    except (ConfigError, DatabaseLoadError) as exc:
        message = printable(scrub_secrets(str(exc)))
        print(f"can-telemetry: configuration error: {message}", file=sys.stderr)
        return 2
    except PayloadError as exc:
        print(f"can-telemetry: bad payload: {printable(str(exc))}", file=sys.stderr)
        return 3
    except TelemetryError as exc:
        print(f"can-telemetry: {printable(scrub_secrets(str(exc)))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


def printable(text: str) -> str:
    """``text`` with every character a terminal would act on or not show (control characters,
    raw bytes read as text) written as a Python escape, e.g. ``\\x1b``."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


class _PrintableWriter:
    """A text stream that writes :func:`printable` text (a lone newline from ``print`` as is)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        return self._stream.write(text if text == "\n" else printable(text))


def _seconds(text: str) -> float:
    """A command-line duration: a finite number of seconds greater than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a number of seconds above 0, got {text}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="can-telemetry",
        description="In-vehicle CAN telemetry for Azure IoT Edge: CAN frames -> DBC decode -> "
        "signal selection -> compact batches -> durable spool -> cloud.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("CAN_TELEMETRY_LOG_LEVEL"),
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="log level (default: $CAN_TELEMETRY_LOG_LEVEL, then the config's log_level for "
        "run, WARNING otherwise)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the pipeline until SIGINT/SIGTERM")
    run.add_argument("--config", required=True, help="TOML configuration file")
    run.add_argument("--replay", help="use this recorded log as the source instead of the buses")
    run.add_argument(
        "--speed", help="replay speed: a factor (1 = real time) or max (default: the config's, 1)"
    )
    run.add_argument("--vehicle-id", help="override vehicle_id")
    run.set_defaults(func=_cmd_run)

    demo = sub.add_parser(
        "demo", help="simulated drive through the full pipeline (no car, no cloud needed)"
    )
    demo.add_argument(
        "--duration", type=_seconds, default=600.0, help="simulated seconds of driving"
    )
    demo.add_argument("--outbox", help="folder for the payloads (default: a temporary folder)")
    demo.add_argument("--seed", type=int, default=1)
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.set_defaults(func=_cmd_demo)

    sim = sub.add_parser("simulate", help="put simulated vehicle traffic on a python-can bus")
    sim.add_argument("--interface", default="socketcan", help="python-can interface")
    sim.add_argument("--channel", default="vcan0", help="python-can channel")
    sim.add_argument("--dbc", help="database to drive (default: the demo vehicle)")
    sim.add_argument("--duration", type=_seconds, default=60.0, help="seconds of driving")
    sim.add_argument("--speed", default="1", help="a factor (1 = real time) or max")
    sim.add_argument("--fd", action="store_true", help="open the bus in CAN FD mode")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument(
        "--ecus",
        action="store_true",
        help="also answer diagnostic requests (OBD-II, UDS, J1939) as the demo vehicle's ECUs",
    )
    sim.set_defaults(func=_cmd_simulate)

    dbc = sub.add_parser("dbc", help="list the messages and signals of a CAN database")
    dbc.add_argument("file")
    dbc.add_argument(
        "--no-strict",
        action="store_true",
        help="load as a bus with strict = false does: repair the quirks real DBC files have"
        " and list each repair",
    )
    dbc.add_argument("--signals", action="store_true", help="also list every signal")
    dbc.set_defaults(func=_cmd_dbc)

    dec = sub.add_parser("decode", help="turn payload files (or folders of them) into rows")
    dec.add_argument("paths", nargs="+", help="payload files or folders")
    dec.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    dec.add_argument("--output", "-o", help="write here instead of stdout")
    dec.set_defaults(func=_cmd_decode)

    man = sub.add_parser("manifest", help="expand deployment.template.json for az iot edge")
    man.add_argument("--template", default="deployment.template.json")
    man.add_argument("--module", default="modules/CanTelemetry/module.json")
    man.add_argument("--platform", default="amd64")
    man.add_argument("--output", "-o", default="config/deployment.amd64.json")
    man.set_defaults(func=_cmd_manifest)

    mod = sub.add_parser(
        "module",
        add_help=False,  # `can-telemetry module --help` shows the module's own options
        help="run as an Azure IoT Edge module: module twin, direct methods, /metrics, /healthz",
    )
    mod.set_defaults(func=_cmd_module)

    # `lake ingest|stream` and `plot` (edge/lake/commands.py; their libraries load when run).
    from edge.lake.commands import register as register_lake

    register_lake(sub)
    return parser


# --- run -----------------------------------------------------------------------------------------


def _cmd_run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from edge.config.model import ReplayConfig, load_config, parse_speed
    from edge.pipeline import Pipeline

    config = load_config(args.config)
    if not args.log_level:  # the command line wins over the file
        logging.getLogger().setLevel(config.log_level)
    if args.vehicle_id:
        config = replace(config, vehicle_id=args.vehicle_id)
    if args.speed and not (args.replay or config.replay):
        raise ConfigError("--speed", "applies to a replay only (--replay or [replay])")
    if args.replay or (config.replay and args.speed):
        base = config.replay or ReplayConfig(path=args.replay)
        speed = parse_speed(args.speed) if args.speed else base.speed
        config = config.with_replay(replace(base, path=args.replay or base.path, speed=speed))
    pipeline = Pipeline(config)
    try:  # before anything runs: a port that cannot be served is a configuration error
        server = _metrics_server(pipeline, config.metrics_port)
    except OSError as exc:
        pipeline.uplink.close()
        pipeline.spool.close()
        raise ConfigError(
            "metrics_port", f"cannot serve on port {config.metrics_port}: {exc.strerror or exc}"
        ) from exc
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    pipeline.start()
    log.warning(
        "running: %d bus(es), %d signals selected, uplink %s, spool %s",
        len(config.buses),
        pipeline.processor.schema.signal_count,
        config.uplink.kind,
        config.spool.path,
    )
    pipeline.wait(stop)
    pipeline.stop(drain_timeout=5.0 if not stop.is_set() else 2.0)
    if server is not None:
        server.stop()
    stats = pipeline.stats()
    decode = stats.decode
    log.warning(
        "stopped: %d frames, %d samples, %d batches, %d payload bytes",
        stats.frames,
        stats.samples,
        stats.batches,
        stats.payload_bytes,
    )
    log.log(  # the accounting identity (docs/counters.md): read = decoded + repeated + ...
        logging.ERROR if decode.lost or stats.lost_rows else logging.WARNING,
        "frames: %d read = %d decoded + %d repeated + %d skipped (%s) + %d lost%s",
        decode.frames,
        decode.decoded,
        decode.repeated,
        sum(decode.skipped.values()),
        ", ".join(f"{k} {v}" for k, v in sorted(decode.skipped.items())) or "none",
        decode.lost,
        f" ({', '.join(f'{k} {v}' for k, v in sorted(decode.lost_reasons.items()))};"
        f" {stats.lost_rows} rows not encodable)"
        if decode.lost or stats.lost_rows
        else "",
    )
    sources = stats.sources.values()
    log.warning(  # frames skipped before processing, and clock steps, over every source
        "sources: %d frames skipped for a bad timestamp, %d log lines unreadable; "
        "clock stepped back %d times, jumped forwards %d times",
        sum(s.get("bad_timestamp", 0) for s in sources),
        sum(s.get("bad_lines", 0) for s in sources),
        sum(s.get("time_steps_back", 0) for s in sources),
        sum(s.get("time_jumps", 0) for s in sources),
    )
    spool = stats.spool
    if spool is not None:  # every payload lost or refused on the way, by reason
        log.warning(
            "spool: %d pending, %d refused (spool_errors), dropped %d (full) and %d (ttl),"
            " %d dead letters; corrupt files: %d recovered, %d deleted",
            spool.depth,
            stats.spool_errors,
            spool.dropped_full,
            spool.dropped_ttl,
            spool.dead_letters,
            spool.recovered_corrupt,
            spool.corrupt_deleted,
        )
    return 0


def _metrics_server(pipeline: Any, port: int | None) -> Any:
    """Prometheus ``/metrics`` and ``/healthz`` for ``run`` when ``metrics_port`` is set."""
    if port is None:
        return None
    from edge.metrics import Health, MetricsServer, ProgressWatch, TelemetryCollector

    watch = ProgressWatch(30.0, time.monotonic)
    server = MetricsServer(
        TelemetryCollector(
            pipeline.stats,
            pipeline.queue_level,
            lambda: pipeline.diagnostics.stats() if pipeline.diagnostics is not None else None,
        ),
        lambda: Health(tuple(pipeline.problems(watch))),
        port=port,
    )
    server.start()
    log.warning("metrics on http://0.0.0.0:%d/metrics, liveness on /healthz", server.port)
    return server


# --- demo ----------------------------------------------------------------------------------------


def demo_config(workdir: Path, channel: str) -> dict[str, Any]:
    """The embedded default: the demo vehicle on a virtual bus, into a local outbox, with
    diagnostics enabled (OBD-II PIDs and VIN, UDS DTCs and DIDs, J1939 DM1)."""
    from edge.simulator.vehicle import DEMO_DBC, OBD2_DBC

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


def _cmd_demo(args: argparse.Namespace) -> int:
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
    ecu_bus = can.Bus(interface="virtual", channel=channel)
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
    for _, payload_rows in _decode_files(decoder, files, []):
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


# --- simulate ------------------------------------------------------------------------------------


def _cmd_simulate(args: argparse.Namespace) -> int:
    import can

    from edge.config.model import parse_speed
    from edge.processing.database import load_database
    from edge.simulator.vehicle import VehicleSimulator, run_simulation, simulated_ecus

    speed = parse_speed(args.speed)
    database = load_database(args.dbc) if args.dbc else None
    simulator = VehicleSimulator(database, seed=args.seed, start_time=time.time())
    kwargs: dict[str, Any] = {"fd": True} if args.fd else {}
    try:
        bus = can.Bus(interface=args.interface, channel=args.channel, **kwargs)
    except (can.CanError, OSError, ValueError, ImportError) as exc:
        raise ConfigError(
            "--interface", f"cannot open {args.interface}:{args.channel}: {exc}"
        ) from exc
    stop = threading.Event()
    with contextlib.ExitStack() as stack:
        stack.enter_context(_stopping_on_signals(stop))
        stack.enter_context(bus)
        if args.ecus:  # on a connection of their own: they filter what they read
            ecu_bus = stack.enter_context(can.Bus(interface=args.interface, channel=args.channel))
            stack.enter_context(simulated_ecus(ecu_bus, simulator))
        sent = run_simulation(bus, simulator, args.duration, speed=speed, stop=stop)
    print(f"sent {sent} frames on {args.interface}:{args.channel}", file=sys.stderr)
    return 0


@contextlib.contextmanager
def _stopping_on_signals(stop: threading.Event) -> Iterator[None]:
    """SIGTERM and SIGINT set ``stop`` while inside; the caller's handlers come back after (a
    command run from Python, as the tests do, leaves the process as it found it)."""
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


# --- dbc -----------------------------------------------------------------------------------------


def _cmd_dbc(args: argparse.Namespace) -> int:
    from edge.processing.database import load_database_repaired

    db, repairs = load_database_repaired(args.file, strict=not args.no_strict)
    out: Any = _PrintableWriter(sys.stdout)  # names come from the file: no escape sequences
    print(
        f"{args.file}: {len(db.messages)} messages, "
        f"{sum(len(m.signals) for m in db.messages)} signals",
        file=out,
    )
    if repairs:
        print(f"repaired to load ({len(repairs)}; see docs/databases.md):", file=out)
        for repair in repairs:
            print(f"  {repair.describe(args.file)}", file=out)
    print(f"{'id':>10}  {'ext':3} {'fd':2} {'len':>3} {'cycle':>6}  {'name':32} senders", file=out)
    for m in sorted(db.messages, key=lambda m: m.frame_id):
        cycle = f"{m.cycle_time}ms" if m.cycle_time else "-"
        print(
            f"{m.frame_id:>#10x}  {'x' if m.is_extended_frame else '':3} "
            f"{'x' if m.is_fd else '':2} {m.length:>3} {cycle:>6}  {m.name:32} "
            f"{','.join(m.senders)}",
            file=out,
        )
        if args.signals:
            for s in m.signals:
                mux = (
                    "M"
                    if s.is_multiplexer
                    else (f"m{s.multiplexer_ids}" if s.multiplexer_ids else "")
                )
                kind = "float" if s.is_float else ("signed" if s.is_signed else "unsigned")
                order = "BE" if s.byte_order == "big_endian" else "LE"
                choices = f" choices={len(s.choices)}" if s.choices else ""
                print(
                    f"{'':14}{s.name:30} {s.start:>3}|{s.length:<2} {order} {kind:8} "
                    f"x{s.scale:g}+{s.offset:g} [{s.minimum}..{s.maximum}] {s.unit or ''}"
                    f"{choices} {mux}".rstrip(),
                    file=out,
                )
    return 0


# --- decode --------------------------------------------------------------------------------------


def _payload_files(paths: Iterable[str]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(
                sorted(f for f in p.iterdir() if f.is_file() and not f.name.startswith("."))
            )
        elif p.exists():
            files.append(p)
        else:
            raise PayloadError(f"{p}: no such file or folder")
    return files


def _decode_files(
    decoder: Any, files: Sequence[Path], skipped: list[str]
) -> Iterator[tuple[Path, Iterator[Any]]]:
    """Payload files in stream order (schemas first, then data by stream and seq), each with
    its rows as they are decoded (a malformed payload raises PayloadError while they are read).
    A file that is not a payload, or whose envelope is malformed, is left out and described in
    ``skipped``."""
    from edge.wire.codec import MAGIC, peek

    entries = []
    for f in files:
        try:
            with f.open("rb") as file:
                head = file.read(len(MAGIC))
                if head != MAGIC:
                    skipped.append(f"{f}: not a can-telemetry payload")
                    continue
                payload = peek(head + file.read())
        except OSError as exc:
            skipped.append(f"{f}: cannot read: {exc.strerror or exc}")
            continue
        except PayloadError as exc:
            skipped.append(f"{f}: bad payload: {exc}")
            continue
        env = payload.envelope
        entries.append((payload.kind != "schema", str(env["stream"]), int(env["seq"]), f))
    entries.sort(key=lambda e: e[:3])
    for *_, f in entries:
        yield f, decoder.iter_rows(f.read_bytes())


_NON_FINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}


def _json_row(row: Any) -> str:
    """A row as one line of JSON. JSON has no NaN or infinity: a float that is one is written
    as the string ``"NaN"``, ``"Infinity"`` or ``"-Infinity"``."""
    fields = row._asdict()
    for key, value in fields.items():
        if type(value) is float and not math.isfinite(value):
            fields[key] = _NON_FINITE[repr(value)]
    return json.dumps(fields, separators=(",", ":"), allow_nan=False)


def _cmd_decode(args: argparse.Namespace) -> int:
    from edge.wire.codec import PayloadReader, Row

    files = _payload_files(args.paths)
    decoder = PayloadReader()
    out: TextIO = sys.stdout
    if args.output:
        try:
            out = open(args.output, "w", newline="", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise ConfigError(
                "--output", f"cannot write {args.output}: {exc.strerror or exc}"
            ) from exc
    skipped: list[str] = []
    bad = 0
    try:
        writer = csv.writer(out) if args.format == "csv" else None
        if writer is not None:
            writer.writerow(Row._fields)
        for f, rows in _decode_files(decoder, files, skipped):
            try:
                for row in rows:
                    if writer is not None:
                        writer.writerow(row)
                    else:
                        out.write(_json_row(row) + "\n")
            except PayloadError as exc:  # rows before the fault were written
                bad += 1
                print(f"can-telemetry: bad payload: {f}: {printable(str(exc))}", file=sys.stderr)
    finally:
        if out is not sys.stdout:
            out.close()
    for line in skipped:
        print(f"can-telemetry: skipped {printable(line)}", file=sys.stderr)
        bad += "bad payload:" in line
    return 3 if bad else 0


# --- module --------------------------------------------------------------------------------------


def _cmd_module(args: argparse.Namespace) -> int:
    from edge.iotedge.module import main_module

    module_args = list(args.module_args)
    if args.log_level and "--log-level" not in module_args:
        module_args = ["--log-level", args.log_level, *module_args]
    return main_module(module_args)


# --- manifest ------------------------------------------------------------------------------------


def _cmd_manifest(args: argparse.Namespace) -> int:
    from edge.iotedge.manifest import expand_manifest

    path = expand_manifest(args.template, args.module, args.platform, args.output)
    print(path)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
