"""The Azure IoT Edge module: the pipeline, configured and watched from the cloud.

``python -m edge.iotedge.module`` (the container's entry point) runs :class:`EdgeModule`:

* the **pipeline** (sources -> processing -> spool -> forwarder -> uplink), rebuilt live when the
  configuration changes;
* the **module twin** (:mod:`edge.iotedge.twin`): desired properties carry the configuration,
  reported
  properties the configuration in effect, refusals, state and counters;
* **direct methods** (:mod:`edge.iotedge.methods`): ``getStats``, ``flush``, ``getConfig``;
* **metrics and liveness** (:mod:`edge.metrics`) on ``http://0.0.0.0:9600``.

Where the configuration comes from, in order: the last configuration applied from the twin (kept
in ``<data dir>/twin-config.json``, so a vehicle that starts without connectivity collects data
at once), else the TOML file of ``--config``; then, once connected, the twin's desired properties.
Without any, the module waits for the twin (state ``unconfigured``).

One connection. edgeHub (like IoT Hub) accepts one connection per module identity: a second one
with the same identity takes over and the first is dropped. So the twin, the methods and the
``azure-edge`` uplink share the one SDK client of :class:`EdgeConnection`, which connects,
attaches the twin and method handlers, and replaces a client that lost its connection (the SDK's
own reconnection is off, as in the uplink: a fresh client is the cure for paho's stale state).
With another uplink (``file``, ``mqtt``) the connection serves the twin and methods only.

Live reconfiguration (:meth:`EdgeModule.apply_config`) never loses data:

1. everything that can fail is built first (databases loaded, schema built, uplink options
   checked); a failure leaves the running pipeline untouched;
2. the sources and the processing stage stop, frames already read are processed, and the open
   batch is closed into the spool (:meth:`~edge.processing.processor.Processor.flush`);
3. only if the spool, forwarder or uplink settings changed, the forwarder stops and the same
   spool file is opened again with the new limits; otherwise the very same Spool, Forwarder and
   uplink objects go on (a payload being sent is not interrupted);
4. new sources and a new processing stage start, appending to that spool.

Counters are carried over, so metrics stay monotonic across reconfigurations. Changing
``spool.path`` while running is refused (the pending payloads would be stranded in the old file);
frames that arrive on a live bus during the switch (milliseconds) are not read.

The rebuilt half is an :class:`edge.pipeline.Pipeline` whose spool, uplink and forwarder are
handed in instead of created (:class:`_Front`).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from edge import __version__
from edge.clock import Clock, SystemClock
from edge.config.model import Config, load_config
from edge.delivery.forwarder import ForwarderStats
from edge.delivery.spool import Spool
from edge.delivery.uplinks import uplink_class
from edge.delivery.uplinks.azure import AzureEdgeOptions, AzureEdgeUplink
from edge.delivery.uplinks.base import Uplink
from edge.errors import (
    ConfigError,
    PermanentUplinkError,
    SecretsFilter,
    SpoolError,
    TelemetryError,
    TransientUplinkError,
    scrub_secrets,
)
from edge.ingest.source import FrameSource
from edge.iotedge.methods import DirectMethods, MethodServer
from edge.iotedge.twin import ConfigOrigin, TwinAgent, config_digest, iso_time, parse_desired
from edge.metrics import (
    DEFAULT_METRICS_PORT,
    Health,
    MetricsServer,
    ProgressWatch,
    QueueLevel,
    TelemetryCollector,
)
from edge.pipeline import Pipeline, new_forwarder, open_spool
from edge.processing.processor import PipelineStats, Processor

__all__ = ["DEFAULT_DATA_DIR", "EdgeConnection", "EdgeModule", "main_module"]

log = logging.getLogger(__name__)

#: The module's data folder in the container (bind-mounted from the host): spool, saved config.
DEFAULT_DATA_DIR = "/var/lib/can-telemetry"
#: The last configuration applied from the twin, in the data folder.
SAVED_CONFIG = "twin-config.json"

_SHUTDOWN_TIMEOUT = 5.0


# -- the shared connection --------------------------------------------------------------------


def create_module_client(keep_alive: int = 60) -> Any:
    """A connected IoTHubModuleClient from the IoT Edge environment (outside IoT Edge:
    ``EdgeHubConnectionString`` and ``EdgeModuleCACertificateFile``), with the SDK's own
    reconnection and desired-properties re-fetch off (see the module docstring)."""
    from azure.iot.device import IoTHubModuleClient

    try:
        client = IoTHubModuleClient.create_from_edge_environment(
            keep_alive=keep_alive, connection_retry=False, ensure_desired_properties=False
        )
    except (OSError, ValueError) as exc:
        if isinstance(exc, ValueError) or isinstance(exc.__cause__, KeyError):
            raise PermanentUplinkError(f"IoT Edge environment: {_describe(exc)}") from exc
        raise TransientUplinkError(f"IoT Edge environment: {_describe(exc)}") from exc
    try:
        client.connect()
    except BaseException:
        _shutdown_client(client)
        raise
    return client


def _shutdown_client(client: Any) -> None:
    """Shut an SDK client down; never raises (a half-down transport makes the first try fail)."""
    for _ in range(2):
        try:
            client.shutdown()
            return
        except Exception as exc:
            log.debug("SDK client shutdown failed (%s: %s)", type(exc).__name__, exc)


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    root = exc
    while root.__cause__ is not None:
        root = root.__cause__
    if root is not exc and str(root):
        text += f" ({type(root).__name__}: {root})"
    return text


class EdgeConnection:
    """The module's one SDK client, shared by the twin, the methods and the ``azure-edge`` uplink.

    :meth:`client` returns the connected client, creating one (and attaching the handlers through
    ``attach``) when there is none or the last one lost its connection. A thread of its own keeps
    a client connected, with a growing delay after failures, so the twin and the methods work
    even while nothing is being sent.
    """

    def __init__(
        self,
        create: Callable[[], Any],
        attach: Callable[[Any], None],
        *,
        retry_initial: float = 1.0,
        retry_max: float = 60.0,
        poll: float = 1.0,
    ) -> None:
        self._create = create
        self._attach = attach
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._poll = poll
        self._lock = threading.Lock()  # guards _current
        self._create_lock = threading.Lock()  # one client is created at a time
        self._current: Any = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._retiring: list[threading.Thread] = []
        #: Clients created so far (each one is a new connection).
        self.connects = 0
        #: The last failure to connect, None once connected.
        self.last_error: str | None = None

    @property
    def connected(self) -> bool:
        """Whether a client is connected now."""
        return self.current() is not None

    def current(self) -> Any:
        """The connected client, or None; never connects."""
        with self._lock:
            client = self._current
        return client if client is not None and client.connected else None

    def client(self) -> Any:
        """The connected client, connecting now if needed (blocking; raises the SDK's or our
        uplink errors when that fails)."""
        with self._create_lock:
            with self._lock:
                client = self._current
            if client is not None:
                if client.connected:
                    return client
                self.forget(client)
                self._retire(client)
            if self._stop.is_set():
                raise TransientUplinkError("the module is stopping")
            client = self._create()
            try:
                self._attach(client)
            except Exception as exc:
                self._retire(client)
                raise TransientUplinkError(f"cannot attach handlers: {_describe(exc)}") from exc
            with self._lock:
                self._current = client
            self.connects += 1
            self.last_error = None
            log.info("connected to the IoT Edge hub (connection %d)", self.connects)
            return client

    def forget(self, client: Any) -> None:
        """``client`` is no longer usable (its owner shuts it down): the next :meth:`client`
        creates a new one."""
        with self._lock:
            if self._current is client:
                self._current = None
        self._wake.set()

    def wake(self) -> None:
        """Look at the connection now (the SDK's ``on_connection_state_change`` handler)."""
        self._wake.set()

    def start(self) -> None:
        """Start keeping a client connected."""
        self._thread = threading.Thread(target=self._run, name="edge-connection", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop, and shut the client down (waiting up to a few seconds)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(_SHUTDOWN_TIMEOUT)
        with self._lock:
            client, self._current = self._current, None
        if client is not None:
            self._retire(client)
        end = time.monotonic() + _SHUTDOWN_TIMEOUT
        for thread in self._retiring:
            thread.join(max(0.0, end - time.monotonic()))

    def _retire(self, client: Any) -> None:
        thread = threading.Thread(
            target=_shutdown_client, args=(client,), name="edge-connection-retire", daemon=True
        )
        thread.start()
        self._retiring = [t for t in self._retiring if t.is_alive()] + [thread]

    def _run(self) -> None:
        delay = self._retry_initial
        while not self._stop.is_set():
            self._wake.clear()
            try:
                self.client()
            except Exception as exc:
                message = _describe(exc)
                if message != self.last_error:
                    log.warning("cannot connect to the IoT Edge hub (retrying): %s", message)
                self.last_error = message
                self._stop.wait(delay)
                delay = min(delay * 2, self._retry_max)
                continue
            delay = self._retry_initial
            self._wake.wait(self._poll)


class _SharedClientUplink(AzureEdgeUplink):
    """The ``azure-edge`` uplink sending through the module's :class:`EdgeConnection` instead of
    a client of its own (the module identity may connect only once)."""

    def __init__(self, options: AzureEdgeOptions, connection: EdgeConnection) -> None:
        super().__init__(options)
        self._connection = connection

    def _create_client(self) -> Any:
        return self._connection.client()

    def _retire(self, client: Any) -> None:
        super()._retire(client)  # shut down after a failure, as the uplink always does
        self._connection.forget(client)

    def _release(self, client: Any) -> None:
        """At close, let go of the client without shutting it down: the connection owns it."""


# -- the pipeline, in two parts ----------------------------------------------------------------


def _backend_settings(config: Config) -> tuple[Any, ...]:
    """The settings whose change needs a new spool, forwarder or uplink."""
    return (config.spool, config.forwarder, config.uplink)


class _Backend:
    """The long-lived half: spool, uplink and forwarder."""

    def __init__(self, config: Config, connection: EdgeConnection | None, clock: Clock) -> None:
        kind, options = config.uplink.kind, config.uplink.options
        if kind == "azure-edge" and connection is not None:
            uplink: Uplink = _SharedClientUplink(options, connection)
        else:
            uplink = uplink_class(kind).from_options(options)
        self.settings = _backend_settings(config)
        self.spool = open_spool(config, clock)
        self.uplink = uplink
        self.forwarder = new_forwarder(config, self.spool, uplink, clock)
        self.forwarder.start()

    def close(self, drain_timeout: float = 0.0) -> None:
        """Stop the forwarder (after up to ``drain_timeout`` s of sending), close the uplink and
        the spool."""
        if drain_timeout > 0:
            self.forwarder.drain(drain_timeout)
        self.forwarder.stop(timeout=10)
        self.uplink.close()
        self.spool.close()


class _Front(Pipeline):
    """The half rebuilt on every configuration change: sources, frame queue, processing stage,
    in front of the backend's running spool, forwarder and uplink (which ``stop`` leaves
    running)."""

    def __init__(
        self,
        config: Config,
        backend: _Backend,
        *,
        sources: Sequence[FrameSource] | None = None,
        clock: Clock | None = None,
    ) -> None:
        super().__init__(
            config,
            uplink=backend.uplink,
            sources=sources,
            clock=clock,
            spool=backend.spool,
            forwarder=backend.forwarder,
        )

    def counters(self) -> PipelineStats:
        """Counters of the sources and the processing stage (the backend counts its own)."""
        return replace(self.stats(), spool=None, forwarder=None)


# -- counters across reconfigurations ---------------------------------------------------------


def _add_sources(
    a: Mapping[str, Mapping[str, Any]], b: Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    merged = {name: dict(values) for name, values in a.items()}
    for name, values in b.items():
        entry = merged.setdefault(name, {})
        for key, value in values.items():
            if isinstance(value, bool):
                entry[key] = value
            else:
                entry[key] = entry.get(key, 0) + value
    for name in set(a) - set(b):  # a bus no longer configured is not "connected"
        merged[name].pop("connected", None)
        merged[name].pop("link_up", None)
    return merged


_Counters = TypeVar("_Counters")


def _add_counters(a: PipelineStats | None, b: PipelineStats) -> PipelineStats:
    """Counters of ``a`` (retired stages) plus ``b`` (the running one)."""
    return b if a is None else _summed(a, b)


def _summed(a: _Counters, b: _Counters) -> _Counters:
    """Field by field: integers and per-reason counts add up, nested counters recursively,
    sources by bus name; anything else is ``b``'s."""
    values: dict[str, Any] = {}
    for f in fields(a):  # type: ignore[arg-type]
        x, y = getattr(a, f.name), getattr(b, f.name)
        if f.name in ("sources", "campaigns"):  # counters by bus, by campaign
            values[f.name] = _add_sources(x, y)
        elif is_dataclass(x) and is_dataclass(y):
            values[f.name] = _summed(x, y)
        elif type(x) is int and type(y) is int:
            values[f.name] = x + y
        elif isinstance(x, Mapping) and isinstance(y, Mapping):
            values[f.name] = {k: x.get(k, 0) + y.get(k, 0) for k in {*x, *y}}
        else:
            values[f.name] = y
    return replace(a, **values)  # type: ignore[type-var]


def _add_forwarder(a: ForwarderStats | None, b: ForwarderStats) -> ForwarderStats:
    if a is None:
        return b
    times = [t for t in (a.last_success_time, b.last_success_time) if t is not None]
    return ForwarderStats(
        sent=a.sent + b.sent,
        retries=a.retries + b.retries,
        transient_errors=a.transient_errors + b.transient_errors,
        permanent_errors=a.permanent_errors + b.permanent_errors,
        last_success_time=max(times) if times else None,
        last_error=b.last_error or a.last_error,
    )


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
        """``create_client`` makes a connected SDK client (default: :func:`create_module_client`);
        ``sources(config)`` may supply the frame sources (tests), None for the configured ones."""
        self.options = options or ModuleOptions()
        self._clock: Clock = clock or SystemClock()
        self._sources = sources
        self._lock = threading.Lock()  # guards the swap of front/backend and the carried counters
        self._apply_lock = threading.Lock()  # one reconfiguration at a time
        self._front: _Front | None = None
        self._backend: _Backend | None = None
        self._config: Config | None = None
        self._origin: ConfigOrigin | None = None
        self._carried: PipelineStats | None = None
        self._carried_forwarder: ForwarderStats | None = None
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

    # -- configuration (edge.iotedge.twin.ConfigTarget)
    # ------------------------------------------------

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
            new_backend = backend is None or backend.settings != _backend_settings(config)
            if new_backend:
                # Fail here, before anything stops: databases, schema, uplink options.
                Processor(config, lambda build: 0, clock=self._clock)
                uplink_class(config.uplink.kind)
                if config.diagnostics.buses:  # a gate on a signal the bus does not have
                    from edge.diagnostics.service import Diagnostics

                    Diagnostics(config, lambda records: None, clock=self._clock)
                front = None
            else:
                assert backend is not None
                front = self._new_front(config, backend)
            old_front = self._front
            if old_front is not None:
                old_front.stop()  # the open batch goes to the spool
            if new_backend:
                if backend is not None:
                    self._carry_backend(backend)
                    backend.close()
                try:
                    backend = _Backend(config, self.connection, self._clock)
                    front = self._new_front(config, backend)
                except BaseException:
                    # The old pipeline is already down: run nothing rather than half of it.
                    with self._lock:
                        if old_front is not None:
                            self._carried = _add_counters(self._carried, old_front.counters())
                        self._front = self._backend = None
                        self._config = self._origin = None
                    raise
            assert front is not None and backend is not None
            front.start()
            with self._lock:
                if old_front is not None:
                    self._carried = _add_counters(self._carried, old_front.counters())
                self._front, self._backend = front, backend
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
            self._save(origin)
        if self.twin is not None:
            self.twin.request_report()

    def _new_front(self, config: Config, backend: _Backend) -> _Front:
        sources = self._sources(config) if self._sources is not None else None
        return _Front(config, backend, sources=sources, clock=self._clock)

    def _carry_backend(self, backend: _Backend) -> None:
        with self._lock:
            self._carried_forwarder = _add_forwarder(
                self._carried_forwarder, backend.forwarder.stats()
            )

    def _save(self, origin: ConfigOrigin) -> None:
        """Keep the twin's configuration for a start without connectivity."""
        path = Path(self.options.data_dir) / SAVED_CONFIG
        document = {
            "desiredVersion": origin.desired_version,
            "sha256": origin.sha256,
            "config": origin.document,
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(".tmp")
            temporary.unlink(missing_ok=True)
            # 0600 from the start: the configuration may hold connection strings and passwords.
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with open(descriptor, "w", encoding="utf-8") as file:
                json.dump(document, file)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, path)
        except OSError as exc:
            log.warning("cannot save the configuration to %s: %s", path, exc)

    def saved_config(self) -> tuple[Config, ConfigOrigin] | None:
        """The last configuration applied from the twin, if it is saved and still valid."""
        path = Path(self.options.data_dir) / SAVED_CONFIG
        try:
            document = json.loads(path.read_text(encoding="utf-8"))
            desired = parse_desired({"config": document["config"]}, base_dir=self.options.data_dir)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, TelemetryError) as exc:
            log.warning("ignoring the saved configuration %s: %s", path, exc)
            return None
        if desired is None:
            return None
        version = document.get("desiredVersion")
        origin = ConfigOrigin(
            "saved",
            version if isinstance(version, int) else None,
            desired.sha256,
            desired.document,
        )
        return desired.config, origin

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
        with self._apply_lock:  # a spool being replaced is closed for a moment
            with self._lock:
                front, backend = self._front, self._backend
                carried, carried_forwarder = self._carried, self._carried_forwarder
            if front is None or backend is None:
                return None
            counters = _add_counters(carried, front.counters())
            return replace(
                counters,
                spool=backend.spool.stats(),
                forwarder=_add_forwarder(carried_forwarder, backend.forwarder.stats()),
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

    # -- reported properties and direct methods (edge.iotedge.methods.ModuleApi)
    # -----------------------

    def reported_state(self) -> dict[str, Any]:
        """``state``, ``stateReason`` and ``stats`` for the twin."""
        state, reason = self._state()
        return {"state": state, "stateReason": reason, "stats": self.summary()}

    def _state(self) -> tuple[str, str | None]:
        if self._stopping:
            return "stopping", None
        if self._front is None:
            return "unconfigured", "no configuration yet: set the desired property 'config'"
        problems = list(self.health().problems)
        stats = self.stats()
        if stats is not None:
            for bus, source in sorted(stats.sources.items()):
                if source.get("connected") is False and source.get("errors", 0) > 0:
                    problems.append(f"bus {bus} is not open")
        if self._metrics_error:
            problems.append(self._metrics_error)
        if problems:
            return "degraded", "; ".join(problems)
        return "running", None

    def summary(self) -> dict[str, Any]:
        """The counters as JSON (reported ``stats`` and ``getStats``)."""
        stats = self.stats()
        now = self._clock.time()
        if stats is None:
            return {"at": iso_time(now)}
        spool, forwarder = stats.spool, stats.forwarder
        buses = []
        for name, source in sorted(stats.sources.items()):
            entry = {"bus": name, "frames": int(source.get("frames", 0))}
            if "connected" in source:
                entry["connected"] = bool(source["connected"])
                entry["errors"] = int(source.get("errors", 0))
            buses.append(entry)
        return {
            "at": iso_time(now),
            "frames": stats.frames,
            "buses": buses,
            "decodedFrames": stats.decode.decoded,
            "repeatedFrames": stats.decode.repeated,
            "decodeSkipped": dict(sorted(stats.decode.skipped.items())),
            "lostFrames": stats.decode.lost,
            "lostReasons": dict(sorted(stats.decode.lost_reasons.items())),
            "lostRows": stats.lost_rows,
            "samples": stats.samples,
            "batches": stats.batches,
            "schemaPayloads": stats.schemas,
            "rawBytes": stats.raw_bytes,
            "payloadBytes": stats.payload_bytes,
            "sent": forwarder.sent,
            "retries": forwarder.retries,
            "uplinkErrors": {
                "transient": forwarder.transient_errors,
                "permanent": forwarder.permanent_errors,
            },
            "lastError": forwarder.last_error,
            "lastSendTime": (
                iso_time(forwarder.last_success_time) if forwarder.last_success_time else None
            ),
            "spoolDepth": spool.depth,
            "spoolBytes": spool.bytes,
            "droppedBatches": spool.dropped_full + spool.dropped_ttl,
            "spoolDropped": {"full": spool.dropped_full, "ttl": spool.dropped_ttl},
            "spoolErrors": stats.spool_errors,
            "spoolCorrupt": {
                "recovered": spool.recovered_corrupt,
                "kept": spool.corrupt_files,
                "deleted": spool.corrupt_deleted,
            },
            "deadLetters": spool.dead_letters,
            **self._diagnostics_summary(),
            **self._campaigns_summary(),
        }

    def _campaigns_summary(self) -> dict[str, Any]:
        """Per-campaign counters (issue 11), when campaigns run."""
        stats = self.stats()  # summed over reconfigurations: a campaign's counters go on
        if stats is None or not stats.campaigns:
            return {}
        counters = dict(stats.campaigns)
        return {"campaignHistory": counters.pop("history", {}), "campaigns": counters}

    def _diagnostics_summary(self) -> dict[str, Any]:
        diagnostics = self.diagnostics()
        return {} if diagnostics is None else {"diagnostics": diagnostics.stats()}

    def diagnostics(self) -> Any:
        """The running diagnostics (edge.diagnostics.service), None when every bus is
        listen-only or nothing is configured yet."""
        front = self._front
        return None if front is None else front.diagnostics

    def campaigns(self) -> Any:
        """The running campaign engine (edge.campaigns.engine), None without campaigns."""
        front = self._front
        return None if front is None else front.processor.campaigns

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
        origin = origin or self._origin
        refusal = self.twin.refusal if self.twin is not None else None
        return {
            "source": origin.source if origin else None,
            "desiredVersion": origin.desired_version if origin else None,
            "sha256": origin.sha256 if origin else None,
            "appliedAt": iso_time(origin.applied_at) if origin else None,
            "refused": (
                {
                    "desiredVersion": refusal.desired_version,
                    "field": refusal.field,
                    "reason": refusal.reason,
                }
                if refusal
                else None
            ),
            "config": dict(origin.document) if origin else None,
        }

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

    Runs until SIGTERM or SIGINT. Exit status 2: the ``--config`` file is invalid; 1: the spool
    cannot be opened (a file system problem, not a configuration error).
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
    try:
        initial = module.saved_config() if options.edge else None
        if initial is None and args.config:
            initial = _file_config(args.config)
        if initial is None and not options.edge:
            print("can-telemetry module: --no-edge needs --config", file=sys.stderr)
            return 2
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        signal.signal(signal.SIGINT, lambda *_: stop.set())
        module.start(initial)
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
    log.warning("module running (version %s), data in %s", __version__, options.data_dir)
    while not stop.wait(1.0):
        pass
    log.warning("stopping")
    module.stop(drain_timeout=2.0)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main_module())
