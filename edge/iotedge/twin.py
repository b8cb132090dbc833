"""The module twin: desired properties in, a validated configuration out; reported properties back.

Desired properties carry the configuration in one object, ``config``, with the same keys and the
same validation as the TOML file (:func:`edge.config.model.parse_config`)::

    {"config": {"buses": [{"name": "vehicle", "interface": "socketcan", "channel": "can0",
                           "dbc": "demo_vehicle.dbc"}],
                "uplink": {"type": "azure-edge"}}}

Relative paths are relative to the module's data folder (``/var/lib/can-telemetry`` in the
container). A ``dbc`` entry that is a bare file name and is not in that folder names one of the
databases bundled with the package (the repository's ``dbc/`` folder, installed as ``edge.dbc``).
Every database must exist and load, and a replay log must exist: a twin cannot ask for a file
the vehicle does not have. Any other top-level key is refused (a typo must not pass silently);
``$version`` and other ``$`` keys are the hub's.

How the desired document is tracked. IoT Hub sends *patches* (RFC 7386 merge patches of the
desired document, ``$version`` incremented by one each time). :class:`DesiredProperties` keeps
the full document: a patch whose ``$version`` follows the known one is merged; an older one is
ignored; after a gap (a patch lost while the module was offline, or the first patch before any
full twin) the agent fetches the whole twin instead. The SDK's own "ensure desired properties"
re-fetch is turned off by the module (it delivers a full document as if it were a patch, which
a merge cannot tell apart); the agent fetches the twin itself on every new connection.

Applying. A new desired version is parsed and validated completely before anything changes; a
valid one goes to the :class:`ConfigTarget` (the running module), which either applies it as a
whole or raises. A refused version leaves the running configuration as it is, and the reason
(the field's dotted path and why) is written to the reported properties under
``config.refused``, until a later version is applied. A refused version stays refused: with
merge patches the desired document keeps the bad value until the operator changes it.

Reported properties (all keys always present, ``null`` clears a stale value)::

    {"software": {"name": "can-telemetry", "version": "0.1.0"},
     "state": "running", "stateReason": null,
     "config": {"source": "twin", "desiredVersion": 7, "sha256": "...", "appliedAt": "...Z",
                "refused": null},
     "stats": {...}}

``state`` and ``stats`` come from the target (``reported_state``); the agent adds the rest.
They are written after every change and every ``report_interval`` seconds.

Saved. The last configuration applied from the twin is kept in ``<data dir>/twin-config.json``
(:func:`save_config`, readable by the module's user only: it may hold connection strings), so a
vehicle that starts without connectivity collects data at once (:func:`saved_config`).

Threads. SDK callbacks (:meth:`TwinAgent.on_patch`, :meth:`TwinAgent.on_connected`) only queue
the event; one thread of the agent's own does the work (fetching the twin, applying, reporting),
so a slow reconfiguration never holds the SDK's handler threads.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, Protocol, TypeGuard

from edge import __version__
from edge.bundled import bundled_databases_dir
from edge.config.files import is_file
from edge.config.model import Config, parse_config
from edge.errors import ConfigError, DatabaseLoadError, TelemetryError, scrub_secrets
from edge.processing.database import load_databases, load_vss_mapping

__all__ = [
    "ConfigOrigin",
    "ConfigTarget",
    "DesiredConfig",
    "DesiredProperties",
    "Refusal",
    "TwinAgent",
    "bundled_databases_dir",
    "config_digest",
    "iso_time",
    "merge_patch",
    "parse_desired",
    "save_config",
    "saved_config",
]

log = logging.getLogger(__name__)

#: The one key of the desired properties this module reads.
CONFIG_KEY = "config"
#: The last configuration applied from the twin, in the module's data folder.
SAVED_CONFIG = "twin-config.json"

_DATABASE_SUFFIXES = (".dbc", ".arxml", ".kcd", ".sym")

ConfigSource = Literal["twin", "saved", "file"]


def iso_time(timestamp: float) -> str:
    """``2024-05-01T12:00:00Z``: wall-clock seconds as UTC, the way twins show times."""
    text = datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")
    return text.replace("+00:00", "Z")


def config_digest(document: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of a configuration mapping in canonical JSON (sorted keys, no spaces), so
    the same settings have the same digest whether they came from a TOML file or the twin."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def merge_patch(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """``target`` with the JSON merge patch (RFC 7386) ``patch`` applied; neither is modified.

    Objects merge key by key, ``null`` deletes, anything else (arrays included) replaces.
    Top-level keys starting with ``$`` (``$version``) are metadata and left out.
    """
    merged = _merge(target, patch)
    return {k: v for k, v in merged.items() if not k.startswith("$")}


def _merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result: dict[str, Any] = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge(result.get(key), value)
    return result


PatchResult = Literal["merged", "stale", "gap"]


class DesiredProperties:
    """The desired document as far as the module knows it: the last full twin, with the patches
    received since merged in."""

    def __init__(self) -> None:
        #: ``$version`` of :attr:`document`; None before the first full twin.
        self.version: int | None = None
        #: The document, without ``$`` keys.
        self.document: dict[str, Any] = {}

    def replace(self, desired: Mapping[str, Any]) -> None:
        """Take the desired section of a full twin."""
        version = desired.get("$version")
        self.version = version if _is_int(version) else None
        self.document = merge_patch({}, desired)

    def apply_patch(self, patch: Mapping[str, Any]) -> PatchResult:
        """Merge ``patch`` if it is the next version (``"merged"``); ``"stale"`` if it is not
        newer than the document; ``"gap"`` if versions were missed (fetch the full twin)."""
        version = patch.get("$version")
        if self.version is None or not _is_int(version):
            return "gap"
        if version <= self.version:
            return "stale"
        if version != self.version + 1:
            return "gap"
        self.document = merge_patch(self.document, patch)
        self.version = version
        return "merged"


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class DesiredConfig:
    """A configuration read from desired properties and validated."""

    config: Config
    #: The ``config`` object as the twin holds it (JSON).
    document: Mapping[str, Any]
    #: :func:`config_digest` of :attr:`document`.
    sha256: str


@dataclass(frozen=True, slots=True)
class ConfigOrigin:
    """Where the configuration in effect came from."""

    #: ``twin``: desired properties; ``saved``: the last twin configuration, kept on disk for a
    #: start without connectivity; ``file``: the TOML file given with ``--config``.
    source: ConfigSource
    #: ``$version`` of the desired properties it came from (None for a file).
    desired_version: int | None
    #: :func:`config_digest` of :attr:`document`.
    sha256: str
    #: The configuration mapping as given (JSON-compatible; may hold secrets: never report it).
    document: Mapping[str, Any]
    #: Wall-clock time it was applied.
    applied_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Refusal:
    """A desired version that was refused, and why."""

    desired_version: int | None
    field: str
    reason: str
    at: float


def parse_desired(
    desired: Mapping[str, Any], *, base_dir: str, databases_dir: Path | None = None
) -> DesiredConfig | None:
    """The configuration in ``desired`` (the twin's desired properties), validated; None when
    they carry no ``config``.

    Raises ConfigError whose field is named as in the twin (``config.batch.max_age``).
    """
    for key in desired:
        if key != CONFIG_KEY and not str(key).startswith("$"):
            raise ConfigError(str(key) or '""', f"unknown option (only {CONFIG_KEY!r} is read)")
    if CONFIG_KEY not in desired:
        return None
    raw = desired[CONFIG_KEY]
    if not isinstance(raw, Mapping):
        raise ConfigError(CONFIG_KEY, f"expected an object, got {type(raw).__name__}")
    bundled = databases_dir if databases_dir is not None else bundled_databases_dir()
    data = _with_bundled_databases(copy.deepcopy(dict(raw)), Path(base_dir), bundled)
    try:
        config = parse_config(data, base_dir=base_dir)
    except ConfigError as exc:
        raise _in_twin(exc) from exc
    _check_files(config, Path(base_dir), bundled)
    return DesiredConfig(config=config, document=raw, sha256=config_digest(raw))


def _in_twin(exc: ConfigError) -> ConfigError:
    """``exc`` with its field named as in the twin's desired properties."""
    field = f"{CONFIG_KEY}.{exc.field}" if exc.field and exc.field != "<root>" else CONFIG_KEY
    return ConfigError(field, exc.reason)


def _with_bundled_databases(data: dict[str, Any], base: Path, bundled: Path) -> dict[str, Any]:
    """Bare database file names that are not in ``base`` but bundled, as absolute paths."""
    buses = data.get("buses")
    if not isinstance(buses, list):
        return data
    for bus in buses:
        if not isinstance(bus, dict):
            continue
        names = bus.get("dbc")
        if isinstance(names, str):
            bus["dbc"] = _bundled(names, base, bundled)
        elif isinstance(names, list):
            bus["dbc"] = [_bundled(n, base, bundled) if isinstance(n, str) else n for n in names]
    return data


def _bundled(name: str, base: Path, bundled: Path) -> str:
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        return name
    if is_file(base / name) or not is_file(bundled / name):
        return name
    return str(bundled / name)


def _check_files(config: Config, base: Path, bundled: Path) -> None:
    for i, bus in enumerate(config.buses):
        field = f"{CONFIG_KEY}.buses[{i}].dbc"
        for path in bus.databases:
            if not is_file(path):
                available = ", ".join(
                    sorted(p.name for p in bundled.iterdir() if p.suffix in _DATABASE_SUFFIXES)
                )
                raise ConfigError(
                    field,
                    f"no such CAN database: {path} (relative names are looked up in {base}, "
                    f"then among the bundled databases: {available or 'none'})",
                )
        try:
            load_databases(bus.databases, strict=bus.strict)
        except DatabaseLoadError as exc:
            raise ConfigError(field, str(exc)) from exc
    try:  # VSS mappings against the databases and tree (edge/vss/mapping.py)
        load_vss_mapping(config)
    except ConfigError as exc:
        raise ConfigError(f"{CONFIG_KEY}.{exc.field}", exc.reason) from exc
    if config.replay is not None and not is_file(config.replay.path):
        raise ConfigError(f"{CONFIG_KEY}.replay.log", f"no such file: {config.replay.path}")


class ConfigTarget(Protocol):
    """What the twin configures: the running module."""

    def apply_config(self, config: Config, origin: ConfigOrigin) -> None:
        """Apply ``config`` as a whole, or raise (ConfigError naming the field, or another
        TelemetryError) and keep the configuration in effect."""
        ...

    def reported_state(self) -> dict[str, Any]:
        """``state``, ``stateReason`` and ``stats`` for the reported properties."""
        ...


class TwinAgent:
    """Keeps the module's configuration in line with the twin's desired properties and reports
    back. See the module docstring."""

    def __init__(
        self,
        target: ConfigTarget,
        *,
        base_dir: str,
        client: Callable[[], Any],
        report_interval: float = 60.0,
        databases_dir: Path | None = None,
        origin: ConfigOrigin | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """``client()`` returns the SDK client to report through (None while disconnected);
        ``origin`` describes the configuration the target already runs, if any."""
        self._target = target
        self._base_dir = base_dir
        self._client = client
        self._report_interval = report_interval
        self._databases_dir = databases_dir
        self._time = wall_clock
        self._desired = DesiredProperties()
        self._origin = origin
        self._refusal: Refusal | None = None
        self._seen_version: int | None = None  # the last desired version evaluated
        self._events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._dirty = True  # the reported properties need writing

    # -- state, for getConfig and tests -----------------------------------------------------

    @property
    def origin(self) -> ConfigOrigin | None:
        """The configuration in effect and where it came from."""
        with self._lock:
            return self._origin

    @property
    def refusal(self) -> Refusal | None:
        """The last refused desired version, until a later one is applied."""
        with self._lock:
            return self._refusal

    @property
    def desired_version(self) -> int | None:
        """``$version`` of the desired document as known here."""
        return self._desired.version

    def adopt(self, origin: ConfigOrigin | None) -> None:
        """The target runs ``origin`` (applied outside the twin: a file, the saved config)."""
        with self._lock:
            self._origin = origin

    # -- SDK callbacks: queue, never work ----------------------------------------------------

    def on_patch(self, patch: object) -> None:
        """The SDK's desired-properties patch handler."""
        self._events.put(("patch", patch))

    def on_connected(self, client: Any) -> None:
        """A new client is connected: fetch the whole twin and report everything."""
        self._events.put(("connected", client))

    def request_report(self) -> None:
        """Write the reported properties soon (the state changed)."""
        self._events.put(("report", None))

    # -- synchronous handling (the thread calls these; tests may too) -------------------------

    def receive_twin(self, twin: Mapping[str, Any]) -> None:
        """A full twin (``{"desired": ..., "reported": ...}``) was fetched."""
        desired = twin.get("desired")
        if not isinstance(desired, Mapping):
            log.warning("twin without desired properties: ignored")
            return
        self._desired.replace(desired)
        self._evaluate()

    def receive_patch(
        self, patch: object, fetch_twin: Callable[[], Mapping[str, Any]] | None = None
    ) -> None:
        """A desired-properties patch arrived; ``fetch_twin`` gets the full twin after a gap."""
        if not isinstance(patch, Mapping):
            log.warning("desired properties patch is not an object: ignored")
            return
        result = self._desired.apply_patch(patch)
        if result == "stale":
            return
        if result == "gap":
            if fetch_twin is not None:
                self.receive_twin(fetch_twin())
                return
            # Nothing to fetch from: take the patch as it is rather than lose it.
            self._desired.document = merge_patch(self._desired.document, patch)
            version = patch.get("$version")
            self._desired.version = version if _is_int(version) else None
        self._evaluate()

    def reported(self) -> dict[str, Any]:
        """The reported properties as they stand now."""
        with self._lock:
            origin, refusal = self._origin, self._refusal
        document: dict[str, Any] = {
            "software": {"name": "can-telemetry", "version": __version__},
            "state": None,
            "stateReason": None,
            "config": {
                "source": origin.source if origin else None,
                "desiredVersion": origin.desired_version if origin else None,
                "sha256": origin.sha256 if origin else None,
                "appliedAt": iso_time(origin.applied_at) if origin else None,
                "refused": None,
            },
            "stats": None,
        }
        if refusal is not None:
            document["config"]["refused"] = {
                "desiredVersion": refusal.desired_version,
                "field": refusal.field,
                "reason": refusal.reason,
                "at": iso_time(refusal.at),
            }
        try:
            document.update(self._target.reported_state())
        except Exception:  # a broken summary must not stop the configuration report
            log.exception("twin: cannot build the module state for the reported properties")
            document["state"] = "degraded"
            document["stateReason"] = "internal error while summarising the module state"
        return document

    def _evaluate(self) -> None:
        version = self._desired.version
        if version is not None and version == self._seen_version:
            return
        self._seen_version = version
        self._dirty = True
        try:
            desired = parse_desired(
                self._desired.document,
                base_dir=self._base_dir,
                databases_dir=self._databases_dir,
            )
        except ConfigError as exc:
            self._refuse(version, exc.field, exc.reason)
            return
        except Exception as exc:  # a bug in a validator must not take the module down
            log.exception("twin: validating desired version %s failed", version)
            self._refuse(version, CONFIG_KEY, f"internal error: {type(exc).__name__}: {exc}")
            return
        if desired is None:
            log.info("desired properties version %s carry no config: keeping the current", version)
            with self._lock:
                self._refusal = None
            return
        with self._lock:
            current = self._origin
        if current is not None and current.sha256 == desired.sha256:
            log.info("desired properties version %s: configuration unchanged", version)
            applied_at = current.applied_at
        else:
            applied_at = self._time()
            origin = ConfigOrigin("twin", version, desired.sha256, desired.document, applied_at)
            try:
                self._target.apply_config(desired.config, origin)
            except ConfigError as exc:
                self._refuse(version, _in_twin(exc).field, exc.reason)
                return
            except TelemetryError as exc:
                self._refuse(version, CONFIG_KEY, str(exc))
                return
            except Exception as exc:
                log.exception("twin: applying desired version %s failed", version)
                self._refuse(version, CONFIG_KEY, f"internal error: {type(exc).__name__}: {exc}")
                return
            log.info("desired properties version %s applied (%s)", version, desired.sha256)
        with self._lock:
            self._origin = ConfigOrigin(
                "twin", version, desired.sha256, desired.document, applied_at
            )
            self._refusal = None

    def _refuse(self, version: int | None, field: str, reason: str) -> None:
        reason = scrub_secrets(reason)  # reported and logged: never with a pasted key in it
        log.warning("desired properties version %s refused: %s: %s", version, field, reason)
        with self._lock:
            self._refusal = Refusal(version, field, reason, self._time())

    # -- the thread ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the agent's thread."""
        if self._thread is not None:
            raise RuntimeError("twin agent already started")
        self._thread = threading.Thread(target=self._run, name="twin", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread (after the event it is handling)."""
        self._events.put(("stop", None))
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        next_report = time.monotonic() + self._report_interval
        while True:
            try:
                kind, value = self._events.get(timeout=max(0.0, next_report - time.monotonic()))
            except queue.Empty:
                kind, value = "report", None
            if kind == "stop":
                return
            try:
                self._handle(kind, value)
            except Exception:  # the thread must outlive any single event
                log.exception("twin: handling %s failed", kind)
            if kind == "report":
                self._dirty = True
            if self._dirty and self._events.empty():
                # On failure (offline) the next try is the next interval or the next connection.
                self._report()
                next_report = time.monotonic() + self._report_interval

    def _handle(self, kind: str, value: Any) -> None:
        if kind == "connected":
            self._dirty = True
            self.receive_twin(value.get_twin())
        elif kind == "patch":
            client = self._client()
            self.receive_patch(value, client.get_twin if client is not None else None)

    def _report(self) -> bool:
        client = self._client()
        if client is None:
            return False
        try:
            client.patch_twin_reported_properties(self.reported())
        except Exception as exc:
            log.warning("twin: cannot write reported properties: %s: %s", type(exc).__name__, exc)
            return False
        self._dirty = False
        return True


# -- the saved configuration -------------------------------------------------------------------


def save_config(data_dir: str, origin: ConfigOrigin) -> None:
    """Keep the twin's configuration ``origin`` in ``data_dir`` for a start without
    connectivity (atomically, mode 0600); a failure is logged, never raised."""
    path = Path(data_dir) / SAVED_CONFIG
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


def saved_config(data_dir: str) -> tuple[Config, ConfigOrigin] | None:
    """The last configuration applied from the twin, if it is saved in ``data_dir`` and still
    valid (an invalid one is logged and ignored)."""
    path = Path(data_dir) / SAVED_CONFIG
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        desired = parse_desired({"config": document["config"]}, base_dir=data_dir)
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
