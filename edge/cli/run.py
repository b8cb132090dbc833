"""``can-telemetry run``: the pipeline until SIGINT/SIGTERM, then the accounting of its frames."""

from __future__ import annotations

import argparse
import logging
import time
from typing import Any

from edge.errors import ConfigError

__all__ = ["add_subparser"]

log = logging.getLogger("edge")


def add_subparser(subparsers: Any) -> None:
    """Add ``run`` to the CLI's subparsers."""
    run = subparsers.add_parser("run", help="run the pipeline until SIGINT/SIGTERM")
    run.add_argument("--config", required=True, help="TOML configuration file")
    run.add_argument("--replay", help="use this recorded log as the source instead of the buses")
    run.add_argument(
        "--speed", help="replay speed: a factor (1 = real time) or max (default: the config's, 1)"
    )
    run.add_argument("--vehicle-id", help="override vehicle_id")
    run.set_defaults(func=_do_run)


def _do_run(args: argparse.Namespace) -> int:
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
    from edge.runloop import run_until_stopped

    pipeline = Pipeline(config)
    server = _metrics_server(pipeline, config.metrics_port)

    def start() -> None:
        if server is not None:
            log.warning("metrics on http://0.0.0.0:%d/metrics, liveness on /healthz", server.port)
        pipeline.start()
        log.warning(
            "running: %d bus(es), %d signals selected, uplink %s, spool %s",
            len(config.buses),
            pipeline.processor.schema.signal_count,
            config.uplink.kind,
            config.spool.path,
        )

    try:
        run_until_stopped(start, pipeline.wait, pipeline.stop, metrics=server)
    finally:  # closed already by stop; not when the metrics port was refused before the start
        pipeline.backend.close()
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
    """Prometheus ``/metrics`` and ``/healthz`` for ``run`` when ``metrics_port`` is set (not
    started yet: the run loop starts it first)."""
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
    return server
