"""Prometheus metrics and the liveness endpoint, on one small HTTP server.

``GET /metrics`` is the Prometheus text format; ``GET /healthz`` answers ``200 ok`` or
``503`` with one problem per line. The Docker ``HEALTHCHECK`` of the image and the Azure Monitor
metrics-collector module (``http://<host>:9600/metrics``) read them.

No double bookkeeping: :class:`TelemetryCollector` is a custom collector that reads the
pipeline's own counters (``stats()``) at scrape time and turns them into metric families
(all prefixed ``can_telemetry_``):

* counters: ``frames_total{bus}`` (read by each source; ``replay`` for a replay),
  ``processed_frames_total``, ``decoded_frames_total``, ``repeated_frames_total``,
  ``decode_skipped_total{reason}`` (``unknown_id``, ``not_selected``, ``decode_error``, ...),
  ``samples_total``, ``batches_total``, ``schema_payloads_total``, ``batch_splits_total``,
  ``raw_bytes_total`` (frames x 16 bytes, a SocketCAN ``struct can_frame``),
  ``payload_bytes_total`` (encoded), ``spool_dropped_total{reason}`` (``full``, ``ttl``),
  ``spool_recovered_corrupt_total``, ``spool_corrupt_deleted_total``, ``uplink_sent_total``,
  ``uplink_retries_total``,
  ``uplink_errors_total{kind}`` (``transient``, ``permanent``), ``bus_errors_total{bus}``;
* gauges: ``spool_depth``, ``spool_bytes``, ``spool_file_bytes``, ``spool_corrupt_files``,
  ``spool_oldest_age_seconds``, ``spool_dead_letters``, ``last_send_timestamp_seconds``
  (0 before the first send), ``queue_chunks`` and ``queue_capacity_chunks`` (the frame queue),
  ``bus_up{bus}`` (1 while a live bus is open), ``build_info{version}`` (always 1);
* campaigns (issue 11): ``campaign_events_total{campaign,event}`` (``triggers``, ``suppressed``,
  ``captures``, ``payloads``, ``rows``, ``budget_dropped``, ``truncated``, ``spool_errors``),
  ``campaign_bytes_total{campaign}``, ``campaign_history_frames`` and
  ``campaign_history_bytes`` (gauges: frames of pre-trigger history, recent chunks and packed
  rings; bytes of the rings), ``campaign_history_overflow_total``.

Liveness. :class:`ProgressWatch` tells a stuck pipeline from an idle one: it is stuck when frames
wait in the queue and the processing stage has not taken any for ``stall_after`` seconds. The
module adds its own checks (a dead processing or source thread) through the ``health``
callable.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from edge import __version__
from edge.processing.processor import PipelineStats

__all__ = [
    "DEFAULT_METRICS_PORT",
    "Health",
    "LossWatch",
    "MetricsServer",
    "ProgressWatch",
    "QueueLevel",
    "TelemetryCollector",
]

log = logging.getLogger(__name__)

#: Port of /metrics and /healthz when the configuration sets no ``metrics_port``.
DEFAULT_METRICS_PORT = 9600

_PREFIX = "can_telemetry_"


@dataclass(frozen=True, slots=True)
class Health:
    """The liveness verdict: ok, or the problems found."""

    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems


@dataclass(frozen=True, slots=True)
class QueueLevel:
    """The frame queue between the sources and the processing stage."""

    chunks: int
    capacity: int


class LossWatch:
    """Fails liveness while frames are being lost: for ``window`` seconds after the count of
    frames lost to processing faults last grew (a fault that keeps recurring keeps it failing;
    one that stopped clears after the window, the counter stays)."""

    def __init__(self, window: float, monotonic: Callable[[], float]) -> None:
        self._window = window
        self._monotonic = monotonic
        self._lost = 0
        self._grew_at: float | None = None
        self._lock = threading.Lock()

    def check(self, lost: int) -> str | None:
        """A problem description while losses are recent, or None."""
        now = self._monotonic()
        with self._lock:
            if lost > self._lost:
                self._lost, self._grew_at = lost, now
            if self._grew_at is None or now - self._grew_at >= self._window:
                return None
            ago = now - self._grew_at
        return f"frames lost to processing faults: {lost} so far, the last {ago:.0f} s ago"


class ProgressWatch:
    """Detects a processing stage that no longer takes frames although some are waiting.

    Call :meth:`check` with the processing stage's progress counter (frames processed) and the
    number of chunks waiting; it returns a problem once the counter has not moved for
    ``stall_after`` seconds while work was waiting the whole time.
    """

    def __init__(self, stall_after: float, monotonic: Callable[[], float]) -> None:
        self._stall_after = stall_after
        self._monotonic = monotonic
        self._progress: int | None = None
        self._since = 0.0
        self._lock = threading.Lock()

    def check(self, progress: int, waiting: int) -> str | None:
        """A problem description, or None."""
        now = self._monotonic()
        with self._lock:
            if progress != self._progress or waiting == 0:
                self._progress = progress
                self._since = now
                return None
            stalled = now - self._since
        if stalled >= self._stall_after:
            return (
                f"processing stalled: no frame taken for {stalled:.0f} s "
                f"with {waiting} chunk(s) queued"
            )
        return None


class _Families:
    """Metric families of one scrape, in the order they are first named."""

    def __init__(self) -> None:
        self.items: dict[str, Metric] = {}

    def counter(self, name: str, doc: str, value: float, **labels: str) -> None:
        self._add(CounterMetricFamily, name, doc, value, labels)

    def gauge(self, name: str, doc: str, value: float, **labels: str) -> None:
        self._add(GaugeMetricFamily, name, doc, value, labels)

    def _add(
        self, kind: type[Metric], name: str, doc: str, value: float, labels: dict[str, str]
    ) -> None:
        family = self.items.get(name)
        if family is None:
            family = kind(_PREFIX + name, doc, labels=sorted(labels))  # type: ignore[call-arg]
            self.items[name] = family
        family.add_metric([labels[k] for k in sorted(labels)], float(value))  # type: ignore[attr-defined]


class TelemetryCollector(Collector):
    """Reads the pipeline's counters at scrape time (see the module docstring)."""

    def __init__(
        self,
        stats: Callable[[], PipelineStats | None],
        queue: Callable[[], QueueLevel | None] | None = None,
        diagnostics: Callable[[], dict[str, dict[str, Any]] | None] | None = None,
    ) -> None:
        """``stats()`` returns the counters, None while nothing runs; ``queue()`` the frame
        queue's level; ``diagnostics()`` the diagnostics' counters by bus (edge/diagnostics/),
        None when every bus is listen-only."""
        self._stats = stats
        self._queue = queue
        self._diagnostics = diagnostics

    def describe(self) -> Iterable[Metric]:
        """Nothing: the registry must not call :meth:`collect` at registration."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The metric families, read from the pipeline now."""
        f = _Families()
        f.gauge("build_info", "can-telemetry build", 1, version=__version__)
        stats = self._stats()
        if stats is not None:
            _pipeline_metrics(f, stats)
        level = self._queue() if self._queue is not None else None
        if level is not None:
            f.gauge("queue_chunks", "frame chunks waiting for the processing stage", level.chunks)
            f.gauge("queue_capacity_chunks", "size of the frame queue", level.capacity)
        diagnostics = self._diagnostics() if self._diagnostics is not None else None
        if diagnostics:
            _diagnostics_metrics(f, diagnostics)
        yield from f.items.values()


def _pipeline_metrics(f: _Families, stats: PipelineStats) -> None:
    for bus, source in sorted(stats.sources.items()):
        f.counter("frames", "CAN frames read, by bus (or replay)", source.get("frames", 0), bus=bus)
    for bus, source in sorted(stats.sources.items()):
        for reason, key in (("bad_timestamp", "bad_timestamp"), ("bad_line", "bad_lines")):
            if key in source:  # edge/ingest/source.py: dropped before the processing stage
                f.counter(
                    "source_skipped",
                    "frames skipped by a source, by reason",
                    source[key],
                    bus=bus,
                    reason=reason,
                )
        if "time_steps_back" in source:
            f.counter(
                "time_steps_back",
                "times frame time stepped back (NTP, a replay loop)",
                source["time_steps_back"],
                bus=bus,
            )
        if "connected" in source:
            f.gauge("bus_up", "1 while a live bus is open", bool(source["connected"]), bus=bus)
            f.counter(
                "bus_errors", "failures opening or reading a bus", source.get("errors", 0), bus=bus
            )
        if "kernel_dropped" in source:  # SocketCAN
            f.gauge("link_up", "1 while the CAN interface is up", bool(source["link_up"]), bus=bus)
            f.counter(
                "link_down_events",
                "times the interface went down",
                source["link_down_events"],
                bus=bus,
            )
            f.counter(
                "kernel_dropped_frames",
                "frames the kernel dropped for a full receive buffer (SO_RXQ_OVFL)",
                source["kernel_dropped"],
                bus=bus,
            )
    decode = stats.decode
    f.counter("processed_frames", "frames taken by the processing stage", decode.frames)
    f.counter("decoded_frames", "frames decoded (not repeats, not skipped)", decode.decoded)
    f.counter("repeated_frames", "frames equal to their predecessor", decode.repeated)
    for reason, count in sorted(decode.skipped.items()):
        f.counter("decode_skipped", "frames skipped, by reason", count, reason=reason)
    # Always present (0 too), so an alert on it works from the first scrape.
    f.counter(
        "lost_frames", "frames lost to a processing fault of ours (any > 0 is a bug)", decode.lost
    )
    for reason, count in sorted(decode.lost_reasons.items()):
        f.counter("lost_frames_by_reason", "lost frames, by exception type", count, reason=reason)
    f.counter("lost_rows", "decoded rows that could not be encoded (a bug)", stats.lost_rows)
    f.counter("samples", "signal values kept by sampling", stats.samples)
    f.counter("batches", "data payloads closed", stats.batches)
    f.counter("schema_payloads", "schema payloads written", stats.schemas)
    f.counter("batch_splits", "batches split to fit max_bytes", stats.splits)
    f.counter(
        "spool_errors", "payloads the spool refused (disk full, I/O error)", stats.spool_errors
    )
    f.counter("raw_bytes", "bytes of the frames read, as 16-byte SocketCAN frames", stats.raw_bytes)
    f.counter("payload_bytes", "bytes of the encoded payloads", stats.payload_bytes)
    _campaign_metrics(f, stats.campaigns)
    spool = stats.spool
    if spool is not None:
        f.gauge("spool_depth", "payloads waiting in the spool", spool.depth)
        f.gauge("spool_bytes", "bytes of the payloads waiting in the spool", spool.bytes)
        f.gauge("spool_file_bytes", "size of the spool database and WAL", spool.file_bytes)
        f.gauge(
            "spool_oldest_age_seconds",
            "age of the oldest waiting payload (0 when empty)",
            spool.oldest_age or 0.0,
        )
        dropped = "payloads the spool dropped, by reason"
        f.counter("spool_dropped", dropped, spool.dropped_full, reason="full")
        f.counter("spool_dropped", dropped, spool.dropped_ttl, reason="ttl")
        f.gauge("spool_dead_letters", "payloads refused for good, kept aside", spool.dead_letters)
        f.counter(
            "spool_recovered_corrupt",
            "spool files found corrupt and replaced",
            spool.recovered_corrupt,
        )
        f.gauge("spool_corrupt_files", "corrupt spool files kept aside", spool.corrupt_files)
        f.counter(
            "spool_corrupt_deleted",
            "corrupt spool files deleted to bound them",
            spool.corrupt_deleted,
        )
    forwarder = stats.forwarder
    if forwarder is not None:
        f.counter("uplink_sent", "payloads confirmed by the uplink", forwarder.sent)
        f.counter("uplink_retries", "backoff waits of the forwarder", forwarder.retries)
        errors = "failed sends, by kind"
        f.counter("uplink_errors", errors, forwarder.transient_errors, kind="transient")
        f.counter("uplink_errors", errors, forwarder.permanent_errors, kind="permanent")
        f.gauge(
            "last_send_timestamp_seconds",
            "wall-clock time of the last confirmed send (0 before the first)",
            forwarder.last_success_time or 0.0,
        )


def _diagnostics_metrics(f: _Families, buses: dict[str, dict[str, Any]]) -> None:
    """docs/diagnostics.md, Counters: requests and their outcomes, ISO-TP errors, J1939."""
    for bus, counters in sorted(buses.items()):
        for event, value in sorted(counters.items()):
            if isinstance(value, int):
                f.counter(
                    "diagnostics_events",
                    "diagnostic requests, their outcomes and the schedule's events, by bus",
                    value,
                    bus=bus,
                    event=event,
                )
        for error, value in sorted(counters.get("isotp_errors", {}).items()):
            f.counter(
                "diagnostics_isotp_errors", "ISO-TP errors, by bus", value, bus=bus, error=error
            )
        for event, value in sorted(counters.get("j1939", {}).items()):
            f.counter(
                "diagnostics_j1939_events",
                "J1939 transport events, by bus",
                value,
                bus=bus,
                event=event,
            )


def _campaign_metrics(f: _Families, campaigns: dict[str, dict[str, int]]) -> None:
    events = {
        "triggers": "triggers",
        "suppressed": "suppressed",
        "captures": "captures",
        "payloads": "payloads",
        "rows": "rows",
        "budgetDropped": "budget_dropped",
        "truncated": "truncated",
        "spoolErrors": "spool_errors",
    }
    for name, counters in sorted(campaigns.items()):
        if name == "history":
            f.gauge("campaign_history_frames", "frames kept for captures", counters["frames"])
            f.gauge("campaign_history_bytes", "bytes packed for captures", counters["bytes"])
            f.counter(
                "campaign_history_overflow",
                "frames pushed out of the capture history by its caps",
                counters["overflow"],
            )
            continue
        for key, event in events.items():
            f.counter(
                "campaign_events",
                "campaign events, by campaign",
                counters.get(key, 0),
                campaign=name,
                event=event,
            )
        spooled = counters.get("bytes", 0)
        f.counter("campaign_bytes", "payload bytes spooled, by campaign", spooled, campaign=name)


class MetricsServer:
    """``/metrics`` and ``/healthz`` over HTTP, on a thread of its own."""

    def __init__(
        self,
        collector: Collector,
        health: Callable[[], Health],
        *,
        host: str = "0.0.0.0",
        port: int = DEFAULT_METRICS_PORT,
    ) -> None:
        """Serve ``collector`` and ``health`` on ``host:port`` (port 0: any free port)."""
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(collector)
        self._health = health
        self._host = host
        self._requested_port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The port listened on (after :meth:`start`)."""
        if self._server is None:
            return self._requested_port
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Bind and serve. Raises OSError when the port cannot be bound."""
        handler = _handler_class(self.registry, self._health)
        self._server = ThreadingHTTPServer((self._host, self._requested_port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="metrics"
        )
        self._thread.daemon = True
        self._thread.start()
        log.info("metrics on http://%s:%d/metrics, liveness on /healthz", self._host, self.port)

    def stop(self) -> None:
        """Stop serving and release the port."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(5)


def _handler_class(
    registry: CollectorRegistry, health: Callable[[], Health]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                try:
                    self._send(200, CONTENT_TYPE_LATEST, generate_latest(registry))
                except Exception as exc:  # a scrape must not kill the server thread
                    log.exception("metrics: scrape failed")
                    self._send(500, "text/plain; charset=utf-8", f"{exc}\n".encode())
            elif path == "/healthz":
                try:
                    verdict = health()
                except Exception as exc:
                    log.exception("metrics: health check failed")
                    verdict = Health((f"health check failed: {type(exc).__name__}: {exc}",))
                body = "ok\n" if verdict.ok else "".join(f"{p}\n" for p in verdict.problems)
                self._send(200 if verdict.ok else 503, "text/plain; charset=utf-8", body.encode())
            else:
                self._send(404, "text/plain; charset=utf-8", b"not found: try /metrics\n")

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("metrics: %s", format % args)

    return Handler
