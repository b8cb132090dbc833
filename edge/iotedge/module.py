"""The Azure IoT Edge module: the pipeline, configured and watched from the cloud. Its life
cycle: start, run, stop, and live reconfiguration.

``python -m edge.iotedge.module`` (the container's entry point) runs :class:`EdgeModule`:

* the **pipeline** (sources -> processing -> spool -> forwarder -> uplink), rebuilt live when the
  configuration changes;
* the **connection** to the IoT Edge hub (:mod:`edge.iotedge.connection`): one SDK client shared
  by the twin, the methods and the ``azure-edge`` uplink;
* the **module twin** (:mod:`edge.iotedge.twin`): desired properties carry the configuration,
  reported properties the configuration in effect, refusals, state and counters
  (:mod:`edge.iotedge.reporting`);
* **direct methods** (:mod:`edge.iotedge.methods`): ``getStats``, ``flush``, ``getConfig``...;
* **metrics and liveness** (:mod:`edge.metrics`) on ``http://0.0.0.0:9600``.

Where the configuration comes from, in order: the last configuration applied from the twin (kept
in ``<data dir>/twin-config.json``, so a vehicle that starts without connectivity collects data
at once), else the TOML file of ``--config``; then, once connected, the twin's desired properties.
Without any, the module waits for the twin (state ``unconfigured``).

Live reconfiguration (:meth:`EdgeModule.apply_config`) never loses data:

1. everything that can fail is built first (databases loaded, schema built, uplink options
   checked); a failure leaves the running pipeline untouched;
2. the sources and the processing stage stop, frames already read are processed, and the open
   batch is closed into the spool (:meth:`~edge.processing.processor.Processor.flush`);
3. only if the spool, forwarder or uplink settings changed, the back end
   (:class:`~edge.delivery.backend.Backend`) closes and a new one opens on the same spool file
   with the new limits; otherwise the very same Spool, Forwarder and uplink objects go on (a
   payload being sent is not interrupted);
4. new sources and a new processing stage start, appending to that spool.

What fails after step 2 (a back end that does not open, a source or a diagnostics stack that
does not start: nothing step 1 can foresee) brings the running configuration back, on its own
back end opened again if it was closed, and the update is refused; only if that fails too does
the module run nothing (logged, state ``unconfigured``).

Counters are carried over, so metrics stay monotonic across reconfigurations. Changing
``spool.path`` while running is refused (the pending payloads would be stranded in the old file);
frames that arrive on a live bus during the switch (milliseconds) are not read.

The rebuilt half is an :class:`edge.pipeline.Pipeline` in front of the running back end
(:class:`_Front`).
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from edge import __version__
from edge.campaigns.engine import CampaignEngine
from edge.clock import Clock, SystemClock
from edge.config.model import Config, UplinkConfig, load_config
from edge.delivery.backend import Backend, BackendSettings, configured_uplink
from edge.delivery.spool import Spool
from edge.delivery.uplinks import uplink_class
from edge.delivery.uplinks.base import Uplink
from edge.errors import ConfigError, SecretsFilter, SpoolError, TelemetryError, scrub_secrets
from edge.ingest.source import FrameSource
from edge.iotedge.connection import EdgeConnection, SharedClientUplink, create_module_client
from edge.iotedge.methods import DirectMethods, MethodServer, config_answer
from edge.iotedge.reporting import ModuleCounters, module_state, summary
from edge.iotedge.twin import ConfigOrigin, TwinAgent, config_digest, save_config, saved_config
from edge.metrics import (
    DEFAULT_METRICS_PORT,
    Health,
    MetricsServer,
    ProgressWatch,
    QueueLevel,
    TelemetryCollector,
)
from edge.pipeline import Pipeline
from edge.processing.processor import PipelineStats, Processor
from edge.runloop import run_until_stopped

__all__ = ["DEFAULT_DATA_DIR", "EdgeModule", "ModuleOptions", "main_module"]

log = logging.getLogger(__name__)

#: The module's data folder in the container (bind-mounted from the host): spool, saved config.
DEFAULT_DATA_DIR = "/var/lib/can-telemetry"


# -- the pipeline, in two parts ----------------------------------------------------------------


class _Front(Pipeline):
    """The half rebuilt on every configuration change: sources, frame queue, processing stage,
    in front of the running back end (which ``stop`` leaves running)."""

    def counters(self) -> PipelineStats:
        """Counters of the sources and the processing stage (the back end counts its own)."""
        return replace(self.stats(), spool=None, forwarder=None)


# -- the module -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ModuleOptions:
    """Settings of the module itself (command line), not of the pipeline."""

    data_dir: str = DEFAULT_DATA_DIR
    edge: bool = True
    metrics_host: str = "0.0.0.0"
    metrics_port: int = DEFAULT_METRICS_PORT
    report_interval: float = 60.0
    stall_after: float = 30.0
    keep_alive: int = 60
    #: Whether ``log_level`` of the configuration may set the log level (not when the command
    #: line did).
    config_log_level: bool = True


class EdgeModule:
    """The running module. ``start(initial)``, then ``stop()``. See the module docstring."""

    def __init__(
        self,
        options: ModuleOptions | None = None,
        *,
        create_client: Callable[[], Any] | None = None,
        clock: Clock | None = None,
        sources: Callable[[Config], Sequence[FrameSource] | None] | None = None,
    ) -> None:
        """``create_client`` makes a connected SDK client (default:
        :func:`~edge.iotedge.connection.create_module_client`); ``sources(config)`` may supply
        the frame sources (tests), None for the configured ones."""
        self.options = options or ModuleOptions()
        self._clock: Clock = clock or SystemClock()
        self._sources = sources
        self._lock = threading.Lock()  # guards the swap of front/backend and the carried counters
        self._apply_lock = threading.Lock()  # one reconfiguration at a time
        self._front: _Front | None = None
        self._backend: Backend | None = None
        self._config: Config | None = None
        self._origin: ConfigOrigin | None = None
        self._carried = ModuleCounters()
        self._stopping = False
        self._metrics: MetricsServer | None = None
        self._metrics_error: str | None = None
        self._watch = ProgressWatch(self.options.stall_after, time.monotonic)
        self.methods = DirectMethods(self)
        self._method_server = MethodServer(self.methods)
        self.connection: EdgeConnection | None = None
        self.twin: TwinAgent | None = None
        if self.options.edge:
            keep_alive = self.options.keep_alive
            self.connection = EdgeConnection(
                create_client or functools.partial(create_module_client, keep_alive), self._attach
            )
            self.twin = TwinAgent(
                self,
                base_dir=self.options.data_dir,
                client=self.connection.current,
                report_interval=self.options.report_interval,
            )

    # -- life cycle --------------------------------------------------------------------------

    def start(self, initial: tuple[Config, ConfigOrigin] | None = None) -> None:
        """Apply ``initial`` (if any), serve metrics, and connect to the IoT Edge hub."""
        if initial is not None:
            self.apply_config(*initial)
            if self.twin is not None:
                self.twin.adopt(self._origin)
        if self._metrics is None:
            self._restart_metrics(self._metrics_port(self._config))
        self._method_server.start()
        if self.twin is not None and self.connection is not None:
            self.twin.start()
            self.connection.start()

    def wait(self, stop: threading.Event) -> None:
        """Block until ``stop`` is set (the module never finishes by itself)."""
        while not stop.wait(1.0):
            pass
        log.warning("stopping")

    def stop(self, drain_timeout: float = 2.0) -> None:
        """Close the open batch into the spool, send for up to ``drain_timeout`` s, and stop."""
        if self._stopping:
            return
        self._stopping = True
        if self.twin is not None:
            self.twin.stop()
        self._method_server.stop()
        with self._apply_lock:
            front, backend = self._front, self._backend
            if front is not None:
                front.stop()
            if backend is not None:
                self._carry_backend(backend)
                backend.close(drain_timeout)
        if self.connection is not None:
            self.connection.stop()
        if self._metrics is not None:
            self._metrics.stop()
            self._metrics = None

    # -- configuration (edge.iotedge.twin.ConfigTarget) ---------------------------------------

    @property
    def config(self) -> Config | None:
        """The configuration in effect."""
        return self._config

    @property
    def spool(self) -> Spool | None:
        """The spool in use."""
        backend = self._backend
        return backend.spool if backend is not None else None

    def apply_config(self, config: Config, origin: ConfigOrigin) -> None:
        """Run ``config`` from now on, without losing data (see the module docstring); raise and
        keep the running configuration if it cannot be applied."""
        with self._apply_lock:
            if self._stopping:
                raise TelemetryError("the module is stopping")
            current = self._config
            if current is not None and config.spool.path != current.spool.path:
                raise ConfigError(
                    "spool.path",
                    f"cannot change while the module runs (the payloads waiting in "
                    f"{current.spool.path} would stay behind); keep {current.spool.path!r}",
                )
            backend = self._backend
            new_backend = backend is None or backend.settings != BackendSettings.of(config)
            front = None
            if new_backend:
                # Fail here, before anything stops: databases, schema, uplink options.
                Processor(config, lambda build: 0, clock=self._clock, campaigns=CampaignEngine)
                uplink_class(config.uplink.kind)
                if config.diagnostics.buses:  # a gate on a signal the bus does not have
                    from edge.diagnostics.service import Diagnostics

                    Diagnostics(config, lambda records: None, clock=self._clock)
            else:
                assert backend is not None
                front = self._new_front(config, backend)
            old_front = self._front
            if old_front is not None:
                old_front.stop()  # the open batch goes to the spool
            try:
                if new_backend and backend is not None:
                    self._carry_backend(backend)
                    backend.close()
                front = self._start(config, None if new_backend else backend, front)
            except BaseException:
                # The old pipeline is down: bring the running configuration back, then refuse.
                self._restore(current, backend, old_front, reopen=new_backend)
                raise
            with self._lock:
                if old_front is not None:
                    self._carried.carry_front(old_front.counters())
                self._front, self._backend = front, front.backend
                self._config, self._origin = config, replace(origin, applied_at=self._clock.time())
            self._watch = ProgressWatch(self.options.stall_after, time.monotonic)
        log.warning(
            "configuration from %s applied: %d bus(es), %d signals, uplink %s, spool %s",
            origin.source,
            len(config.buses),
            front.processor.schema.signal_count,
            config.uplink.kind,
            config.spool.path,
        )
        if self.options.config_log_level:
            logging.getLogger().setLevel(config.log_level)
        if self._metrics is not None and self._metrics_port(config) != self._metrics_port(current):
            self._restart_metrics(self._metrics_port(config))
        if origin.source == "twin":
            save_config(self.options.data_dir, origin)
        if self.twin is not None:
            self.twin.request_report()

    def _restore(
        self,
        config: Config | None,
        backend: Backend | None,
        old_front: _Front | None,
        *,
        reopen: bool,
    ) -> None:
        """After a configuration failed to start: run ``config`` again on ``backend`` (closed
        and opened again when ``reopen``), or nothing when that fails too (logged)."""
        with self._lock:
            if old_front is not None:
                self._carried.carry_front(old_front.counters())
            self._front = None
        try:
            if config is None or backend is None:
                raise TelemetryError("no configuration ran before")
            front = self._start(config, None if reopen else backend, None)
        except BaseException as exc:
            log.error("the running configuration could not be restored (%r): nothing runs", exc)
            with self._lock:
                self._front = self._backend = None
                self._config = self._origin = None
            return
        with self._lock:
            self._front, self._backend = front, front.backend

    def _start(self, config: Config, backend: Backend | None, front: _Front | None) -> _Front:
        """Start ``front`` (None: a new one for ``config``) on ``backend`` (None: a new one, opened
        with ``config``'s settings); if that fails, stop what started, and raise."""
        opened: Backend | None = None
        try:
            if backend is None:
                settings = BackendSettings.of(config)
                backend = opened = Backend.open(settings, clock=self._clock, uplink=self._uplink)
                opened.start()
            if front is None:
                front = self._new_front(config, backend)
            front.start()
            return front
        except BaseException:
            try:
                if front is not None:
                    front.stop()
                if opened is not None:
                    opened.close()
            except Exception as exc:  # what failed to start may fail to stop too
                log.warning("stopping what failed to start: %r", exc)
            raise

    def _uplink(self, settings: UplinkConfig) -> Uplink:
        """The back end's uplink: ``azure-edge`` sends through the module's one connection."""
        if settings.kind == "azure-edge" and self.connection is not None:
            return SharedClientUplink(settings.options, self.connection)
        return configured_uplink(settings)

    def _new_front(self, config: Config, backend: Backend) -> _Front:
        sources = self._sources(config) if self._sources is not None else None
        return _Front(config, sources=sources, clock=self._clock, backend=backend)

    def _carry_backend(self, backend: Backend) -> None:
        with self._lock:
            self._carried.carry_forwarder(backend.forwarder_stats())

    def saved_config(self) -> tuple[Config, ConfigOrigin] | None:
        """The last configuration applied from the twin, if it is saved and still valid."""
        return saved_config(self.options.data_dir)

    # -- metrics and liveness -----------------------------------------------------------------

    def _metrics_port(self, config: Config | None) -> int:
        if config is not None and config.metrics_port is not None:
            return config.metrics_port
        return self.options.metrics_port

    @property
    def metrics_port(self) -> int | None:
        """The port /metrics and /healthz are served on (None if not serving)."""
        server = self._metrics
        return server.port if server is not None else None

    def _restart_metrics(self, port: int) -> None:
        if self._metrics is not None:
            self._metrics.stop()
            self._metrics = None
        server = MetricsServer(
            TelemetryCollector(
                self.stats,
                self.queue_level,
                lambda: d.stats() if (d := self.diagnostics()) is not None else None,
            ),
            self.health,
            host=self.options.metrics_host,
            port=port,
        )
        try:
            server.start()
        except OSError as exc:
            self._metrics_error = f"cannot serve metrics on port {port}: {exc}"
            log.error("%s", self._metrics_error)
            return
        self._metrics, self._metrics_error = server, None

    def stats(self) -> PipelineStats | None:
        """Every counter since the module started (None before the first configuration)."""
        # Under the apply lock: a spool being replaced is closed for a moment.
        with self._apply_lock, self._lock:
            front, backend = self._front, self._backend
            if front is None or backend is None:
                return None
            return self._carried.total(
                front.counters(), backend.spool_stats(), backend.forwarder_stats()
            )

    def queue_level(self) -> QueueLevel | None:
        """The frame queue's level."""
        front = self._front
        return front.queue_level() if front is not None else None

    def health(self) -> Health:
        """Liveness: problems a restart may cure (dead or stuck threads)."""
        front = self._front
        if front is None or self._stopping:
            return Health()
        return Health(tuple(front.problems(self._watch)))

    # -- reported properties (edge.iotedge.reporting) and direct methods (ModuleApi) ----------

    def reported_state(self) -> dict[str, Any]:
        """``state``, ``stateReason`` and ``stats`` for the twin."""
        state, reason = module_state(
            stopping=self._stopping,
            configured=self._front is not None,
            problems=self.health().problems,
            stats=self.stats(),
            metrics_error=self._metrics_error,
        )
        return {"state": state, "stateReason": reason, "stats": self.summary()}

    def summary(self) -> dict[str, Any]:
        """The counters as JSON (reported ``stats`` and ``getStats``)."""
        return summary(self.stats(), self._clock.time(), self.diagnostics())

    def diagnostics(self) -> Any:
        """The running diagnostics (edge.diagnostics.service), None when every bus is
        listen-only or nothing is configured yet."""
        front = self._front
        return None if front is None else front.diagnostics

    def campaigns(self) -> Any:
        """The running campaign engine (edge.campaigns.engine), None without campaigns."""
        front = self._front
        return None if front is None else front.processor.campaigns

    def signals(self, globs: Sequence[str]) -> dict[str, Any] | None:
        """The last-known state of the signals matching ``globs`` (Processor.signals), with or
        without campaigns; None before the pipeline runs."""
        front = self._front
        return None if front is None else front.processor.signals(globs)

    def flush(self) -> None:
        """Close the open batch into the spool and wake the forwarder."""
        with self._apply_lock:  # not into a pipeline being replaced
            front = self._front
            if front is None:
                raise TelemetryError("no configuration yet: nothing to flush")
            front.processor.flush()
            front.forwarder.wake()

    def spool_depth(self) -> int:
        """Payloads waiting in the spool."""
        spool = self.spool
        return spool.stats().depth if spool is not None else 0

    def config_info(self) -> dict[str, Any]:
        """The configuration in effect and where it came from (may hold secrets)."""
        origin = self.twin.origin if self.twin is not None else None
        refusal = self.twin.refusal if self.twin is not None else None
        return config_answer(origin or self._origin, refusal)

    # -- SDK wiring ----------------------------------------------------------------------------

    def _attach(self, client: Any) -> None:
        """Hand a new client's events to our threads (never work in the SDK's threads)."""
        assert self.twin is not None and self.connection is not None
        client.on_twin_desired_properties_patch_received = self.twin.on_patch
        client.on_method_request_received = functools.partial(self._method_server.submit, client)
        client.on_connection_state_change = self.connection.wake
        self.twin.on_connected(client)


# -- entry point ------------------------------------------------------------------------------


def _file_config(path: str) -> tuple[Config, ConfigOrigin]:
    import tomllib

    config = load_config(path)
    document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    return config, ConfigOrigin("file", None, config_digest(document), document)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m edge.iotedge.module",
        description="Run can-telemetry as an Azure IoT Edge module: configured by the module "
        "twin, controlled by direct methods, watched through /metrics and /healthz.",
    )
    env = os.environ.get
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--config", help="TOML configuration used until the twin provides one (optional)"
    )
    parser.add_argument(
        "--data-dir",
        default=env("CAN_TELEMETRY_DATA_DIR", DEFAULT_DATA_DIR),
        help="folder for the spool and saved configuration; relative paths of the twin's "
        "configuration are relative to it (default: $CAN_TELEMETRY_DATA_DIR, then %(default)s)",
    )
    parser.add_argument(
        "--metrics-host", default="0.0.0.0", help="address of /metrics and /healthz"
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=env("CAN_TELEMETRY_METRICS_PORT", str(DEFAULT_METRICS_PORT)),  # type applies
        help="port of /metrics and /healthz unless the configuration sets metrics_port "
        "(default: $CAN_TELEMETRY_METRICS_PORT, then %(default)s)",
    )
    parser.add_argument(
        "--report-interval", type=float, default=60.0, help="seconds between twin reports"
    )
    parser.add_argument(
        "--stall-after",
        type=float,
        default=30.0,
        help="seconds without processing progress (with frames queued) before /healthz fails",
    )
    parser.add_argument(
        "--no-edge",
        action="store_true",
        help="do not connect to IoT Edge (no twin, no methods): run --config only",
    )
    parser.add_argument(
        "--log-level",
        default=env("CAN_TELEMETRY_LOG_LEVEL"),
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        help="log level (default: $CAN_TELEMETRY_LOG_LEVEL, then the configuration's log_level)",
    )
    return parser


def main_module(argv: Sequence[str] | None = None) -> int:
    """Entry point of the IoT Edge module (``python -m edge.iotedge.module``); returns the exit
    status.

    Runs until SIGTERM or SIGINT, in the run loop ``can-telemetry run`` uses too
    (:func:`edge.runloop.run_until_stopped`). Exit status 2: the ``--config`` file is invalid; 1:
    the spool cannot be opened (a file system problem, not a configuration error).
    """
    args = _parser().parse_args(argv)
    logging.basicConfig(  # a no-op when can-telemetry's main() configured logging already
        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, SecretsFilter) for f in handler.filters):
            handler.addFilter(SecretsFilter())
    logging.getLogger().setLevel(args.log_level or "INFO")
    logging.getLogger("azure.iot.device").setLevel(logging.WARNING)  # per-operation INFO lines
    options = ModuleOptions(
        data_dir=args.data_dir,
        edge=not args.no_edge,
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        report_interval=args.report_interval,
        stall_after=args.stall_after,
        config_log_level=not args.log_level,
    )
    module = EdgeModule(options)

    def start() -> None:
        module.start(initial)
        log.warning("module running (version %s), data in %s", __version__, options.data_dir)

    def stop(drain_timeout: float) -> None:
        module.stop(drain_timeout=drain_timeout)

    try:
        initial = module.saved_config() if options.edge else None
        if initial is None and args.config:
            initial = _file_config(args.config)
        if initial is None and not options.edge:
            print("can-telemetry module: --no-edge needs --config", file=sys.stderr)
            return 2
        # The module serves its own metrics (their port may change with the configuration).
        run_until_stopped(start, module.wait, stop, drain_timeout=2.0)
    except SpoolError as exc:
        # Not the configuration's fault (a disk or file problem): exit 1, so that the restart
        # policy tries again once the disk is back, and the message says what is wrong.
        print(f"can-telemetry module: cannot use the spool: {exc}", file=sys.stderr)
        module.stop(drain_timeout=0)
        return 1
    except TelemetryError as exc:
        message = scrub_secrets(str(exc))
        print(f"can-telemetry module: configuration error: {message}", file=sys.stderr)
        module.stop(drain_timeout=0)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main_module())
